//! Webhooks: admins register URLs for chosen event kinds; every matching event is POSTed as JSON,
//! signed `x-edgewarden-signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, and retried
//! with exponential backoff up to a bounded number of attempts, each delivery's state recorded.
//! The secret is shown once at creation and stored AES-256-GCM encrypted under the master key (it is
//! needed to sign, so it cannot be hashed). Deliveries are rows keyed by (webhook, event), so the
//! dispatchers of several replicas enqueue each one once, and a lease column lets one worker send it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use sqlx::any::AnyRow;
use sqlx::Row as _;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::auth::{Principal, Role};
use crate::db::{now, Db};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Event, StoredEvent, KINDS};
use crate::extract::{Json, Query};
use crate::revocations::{page_params, Page};
use crate::secrets::{random_id, random_secret, sha256_hex};
use crate::AppState;
use edgewarden_api_types::NewWebhookRequest as CreateRequest;
pub use edgewarden_api_types::Webhook;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-edgewarden-signature";
/// Prefix of webhook secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Delivery knobs.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Attempts before a delivery is marked failed.
    pub max_attempts: i64,
    /// Delay before the second attempt; doubles after each failure (capped at an hour).
    pub backoff_base_seconds: i64,
    /// Timeout of one attempt.
    pub timeout_seconds: u64,
    /// Deliveries sent at once by one replica.
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            max_attempts: 8,
            backoff_base_seconds: 5,
            timeout_seconds: 10,
            concurrency: 8,
        }
    }
}

/// `serve` flags for webhook delivery.
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Attempts per webhook delivery before it is marked failed.
    #[arg(long, env = "EDGEWARDEN_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: i64,
    /// Seconds before the first retry of a failed delivery; doubles after each failure, at most an hour.
    #[arg(long, env = "EDGEWARDEN_WEBHOOK_BACKOFF", default_value_t = 5)]
    pub webhook_backoff: i64,
    /// Timeout of one delivery attempt, in seconds.
    #[arg(long, env = "EDGEWARDEN_WEBHOOK_TIMEOUT", default_value_t = 10)]
    pub webhook_timeout: u64,
}

impl WebhookArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> WebhookConfig {
        WebhookConfig {
            max_attempts: self.webhook_max_attempts.max(1),
            backoff_base_seconds: self.webhook_backoff.max(1),
            timeout_seconds: self.webhook_timeout.max(1),
            ..WebhookConfig::default()
        }
    }
}

/// The delay after `attempts` failed attempts: base * 2^(attempts-1), at most an hour.
pub fn backoff_seconds(base: i64, attempts: i64) -> i64 {
    let exp = (attempts - 1).clamp(0, 20) as u32;
    base.saturating_mul(1_i64 << exp).min(3600)
}

/// `t=<unix>,v1=<hex>` for `body` signed at `t` with `secret`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("hmac accepts keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Active webhooks as (id, subscribed kinds).
type HookList = Arc<Vec<(String, Vec<String>)>>;

/// Enqueues deliveries for committed events and sends them; shared by the event dispatcher and the worker.
pub struct Dispatcher {
    cipher: Aes256Gcm,
    config: WebhookConfig,
    /// (loaded at, [(webhook id, kinds)]) of active webhooks, re-read every few seconds.
    hooks: Mutex<Option<(Instant, HookList)>>,
    wake: Notify,
    client: reqwest::Client,
}

impl Dispatcher {
    /// A dispatcher encrypting secrets under `master_key`.
    pub fn new(master_key: [u8; 32], config: WebhookConfig) -> anyhow::Result<Dispatcher> {
        let cipher = Aes256Gcm::new_from_slice(&master_key)
            .map_err(|_| anyhow::anyhow!("master key must be 32 bytes"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_seconds))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Dispatcher {
            cipher,
            config,
            hooks: Mutex::new(None),
            wake: Notify::new(),
            client,
        })
    }

    fn encrypt(&self, id: &str, secret: &str) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("encryption of webhook {id} secret failed"))?;
        Ok([nonce.as_slice(), &ct].concat())
    }

    fn decrypt(&self, id: &str, blob: &[u8]) -> anyhow::Result<String> {
        let (nonce, ct) = blob
            .split_at_checked(12)
            .ok_or_else(|| anyhow::anyhow!("webhook {id} secret blob too short"))?;
        let nonce: [u8; 12] = nonce.try_into()?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot decrypt webhook {id} secret: wrong master key or corrupted row"
                )
            })?;
        Ok(String::from_utf8(plain)?)
    }

    /// Forgets the cached webhook list (after a change on this replica).
    fn invalidate(&self) {
        *self.hooks.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn active_hooks(&self, db: &Db) -> Result<HookList, sqlx::Error> {
        if let Some((at, hooks)) = self
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if at.elapsed() < Duration::from_secs(5) {
                return Ok(hooks.clone());
            }
        }
        let rows = sqlx::query("SELECT id, kinds FROM webhooks WHERE active = 1")
            .fetch_all(&db.pool)
            .await?;
        let hooks = rows
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("id")?, split(r.try_get("kinds")?))))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let hooks = Arc::new(hooks);
        *self.hooks.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), hooks.clone()));
        Ok(hooks)
    }

    /// Creates a pending delivery of `event` for every active webhook subscribed to its kind.
    pub async fn enqueue(&self, db: &Db, event: &StoredEvent) {
        let hooks = match self.active_hooks(db).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read webhooks");
                return;
            }
        };
        let now = now();
        let mut any = false;
        for (id, _) in hooks
            .iter()
            .filter(|(_, kinds)| kinds.iter().any(|k| kind_matches(k, &event.kind)))
        {
            let delivery = format!("dlv_{}", &sha256_hex(&format!("{id}/{}", event.id))[..24]);
            let result = sqlx::query(
                "INSERT INTO webhook_deliveries (id, webhook_id, event_id, state, attempts, next_attempt_at, locked_until, created_at) \
                 VALUES ($1, $2, $3, 'pending', 0, $4, 0, $4) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&delivery)
            .bind(id)
            .bind(&event.id)
            .bind(now)
            .execute(&db.pool)
            .await;
            match result {
                Ok(_) => any = true,
                Err(e) => {
                    tracing::warn!(error = %e, webhook = %id, "cannot enqueue webhook delivery")
                }
            }
        }
        if any {
            self.wake.notify_one();
        }
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the cipher (it holds the master key).
        f.debug_struct("Dispatcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn split(s: String) -> Vec<String> {
    s.split(' ')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Starts the delivery worker: sends due deliveries, at most `concurrency` at once.
pub fn spawn_worker(db: Db, dispatcher: Arc<Dispatcher>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(dispatcher.config.concurrency.max(1)));
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(1), dispatcher.wake.notified()).await;
            let now = now();
            let due = sqlx::query(
                "SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= $1 AND locked_until < $1 \
                 ORDER BY next_attempt_at LIMIT 50",
            )
            .bind(now)
            .fetch_all(&db.pool)
            .await;
            let due: Vec<String> = match due {
                Ok(rows) => rows.iter().filter_map(|r| r.try_get("id").ok()).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "webhook worker cannot read deliveries");
                    continue;
                }
            };
            for id in due {
                // A lease, so a delivery is sent by one replica at a time; it outlives the attempt's timeout.
                let lease = now + dispatcher.config.timeout_seconds as i64 + 30;
                let claimed = sqlx::query("UPDATE webhook_deliveries SET locked_until = $1 WHERE id = $2 AND state = 'pending' AND locked_until < $3")
                    .bind(lease)
                    .bind(&id)
                    .bind(now)
                    .execute(&db.pool)
                    .await;
                if !matches!(claimed, Ok(r) if r.rows_affected() == 1) {
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (db, dispatcher) = (db.clone(), dispatcher.clone());
                tokio::spawn(async move {
                    if let Err(e) = attempt(&db, &dispatcher, &id).await {
                        tracing::warn!(error = format!("{e:#}"), delivery = %id, "webhook delivery attempt failed to run");
                    }
                    drop(permit);
                });
            }
        }
    })
}

/// Sends one delivery and records the outcome.
async fn attempt(db: &Db, dispatcher: &Dispatcher, id: &str) -> anyhow::Result<()> {
    let row = sqlx::query(
        "SELECT d.attempts, d.event_id, w.id AS webhook_id, w.url, w.secret_enc FROM webhook_deliveries d \
         JOIN webhooks w ON w.id = d.webhook_id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let attempts: i64 = row.try_get::<i64, _>("attempts")? + 1;
    let event_id: String = row.try_get("event_id")?;
    let webhook_id: String = row.try_get("webhook_id")?;
    let url: String = row.try_get("url")?;
    let secret = dispatcher.decrypt(&webhook_id, &row.try_get::<Vec<u8>, _>("secret_enc")?)?;
    let event = sqlx::query(
        "SELECT id, at, kind, actor, subject, client_id, jti, details FROM events WHERE id = $1",
    )
    .bind(&event_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(event) = event else {
        finish(
            db,
            id,
            "failed",
            attempts,
            None,
            Some("event no longer exists"),
        )
        .await?;
        return Ok(());
    };
    let details: String = event.try_get("details")?;
    let body = serde_json::to_vec(&StoredEvent {
        id: event.try_get("id")?,
        at: event.try_get("at")?,
        kind: event.try_get("kind")?,
        actor: event.try_get("actor")?,
        subject: event.try_get("subject")?,
        client_id: event.try_get("client_id")?,
        jti: event.try_get("jti")?,
        details: serde_json::from_str(&details).unwrap_or_default(),
    })?;
    let kind: String = event.try_get("kind")?;
    let t = now();
    let outcome = dispatcher
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("user-agent", "edgewarden-webhooks")
        .header(SIGNATURE_HEADER, signature(&secret, t, &body))
        .header("x-edgewarden-event", kind)
        .header("x-edgewarden-delivery", id)
        .body(body)
        .send()
        .await;
    match outcome {
        Ok(response) if response.status().is_success() => {
            finish(
                db,
                id,
                "delivered",
                attempts,
                Some(i64::from(response.status().as_u16())),
                None,
            )
            .await?;
        }
        other => {
            let (status, error) = match other {
                Ok(r) => (
                    Some(i64::from(r.status().as_u16())),
                    format!("endpoint answered {}", r.status()),
                ),
                Err(e) => (None, format!("request failed: {e}")),
            };
            if attempts >= dispatcher.config.max_attempts {
                finish(db, id, "failed", attempts, status, Some(&error)).await?;
            } else {
                let next =
                    now() + backoff_seconds(dispatcher.config.backoff_base_seconds, attempts);
                sqlx::query(
                    "UPDATE webhook_deliveries SET attempts = $1, next_attempt_at = $2, locked_until = 0, last_status = $3, last_error = $4 WHERE id = $5",
                )
                .bind(attempts)
                .bind(next)
                .bind(status)
                .bind(&error)
                .bind(id)
                .execute(&db.pool)
                .await?;
            }
        }
    }
    Ok(())
}

async fn finish(
    db: &Db,
    id: &str,
    state: &str,
    attempts: i64,
    status: Option<i64>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    let delivered_at = (state == "delivered").then(now);
    sqlx::query(
        "UPDATE webhook_deliveries SET state = $1, attempts = $2, last_status = $3, last_error = $4, delivered_at = $5, locked_until = 0 WHERE id = $6",
    )
    .bind(state)
    .bind(attempts)
    .bind(status)
    .bind(error)
    .bind(delivered_at)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/webhooks", get(list).post(create))
        .route(
            "/api/v1/webhooks/{id}",
            get(show).patch(update).delete(delete),
        )
        .route("/api/v1/webhooks/{id}/deliveries", get(deliveries))
}

fn webhook(row: &AnyRow) -> Result<Webhook, sqlx::Error> {
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        kinds: split(row.try_get("kinds")?),
        description: row.try_get("description")?,
        active: row.try_get::<i64, _>("active")? != 0,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        secret: None,
    })
}

const COLUMNS: &str = "id, url, kinds, description, active, created_at, created_by";

fn check_url(url: &str) -> ApiResult<()> {
    let parsed = url::Url::parse(url).map_err(|e| ApiError::field("url", format!("url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ApiError::field(
            "url",
            format!("url: {url:?} must be an http or https url with a host"),
        ));
    }
    if url.len() > 2000 {
        return Err(ApiError::field(
            "url",
            format!("url: {} characters, maximum 2000", url.len()),
        ));
    }
    Ok(())
}

/// The URL as events show it to auditors: a user name, password or query string (where webhook
/// receivers often take their credentials) is replaced by `redacted`.
pub fn redacted_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "redacted".to_owned();
    };
    if !parsed.username().is_empty() {
        let _ = parsed.set_username("redacted");
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("redacted"));
    }
    if parsed.query().is_some() {
        parsed.set_query(Some("redacted"));
    }
    parsed.set_fragment(None);
    parsed.to_string()
}

/// Whether a webhook subscribed to `pattern` gets an event of `kind`: `*` for every kind, an exact kind,
/// or `<prefix>.*` for every kind under the prefix (`token.*`), as the event stream's `kind` filter reads it.
fn kind_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix(".*") {
        _ if pattern == "*" => true,
        Some(prefix) => kind
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == kind,
    }
}

fn check_kinds(kinds: &[String]) -> ApiResult<()> {
    if kinds.is_empty() {
        return Err(ApiError::field(
            "kinds",
            "kinds: name at least one event kind, a prefix like \"token.*\", or \"*\"",
        ));
    }
    for (i, kind) in kinds.iter().enumerate() {
        let known = kind == "*"
            || KINDS.contains(&kind.as_str())
            || kind.strip_suffix(".*").is_some_and(|prefix| {
                KINDS
                    .iter()
                    .any(|k| kind_matches(&format!("{prefix}.*"), k))
            });
        if !known {
            return Err(ApiError::field(
                format!("kinds[{i}]"),
                format!(
                    "kinds[{i}]: {kind:?} is not a known event kind or prefix: use \"*\", a prefix like \"token.*\", or one of {}",
                    KINDS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateRequest>,
) -> ApiResult<Response> {
    principal.require(&[Role::Admin], "manage webhooks")?;
    check_url(&req.url)?;
    check_kinds(&req.kinds)?;
    if req.description.len() > 1000 {
        return Err(ApiError::field(
            "description",
            format!(
                "description: {} characters, maximum 1000",
                req.description.len()
            ),
        ));
    }
    let id = random_id("whk_");
    let secret = random_secret(SECRET_PREFIX);
    let encrypted = state.webhooks.encrypt(&id, &secret)?;
    let now = now();
    let mut tx = state.db.pool.begin().await?;
    sqlx::query(
        "INSERT INTO webhooks (id, url, kinds, secret_enc, description, active, created_at, created_by) VALUES ($1, $2, $3, $4, $5, 1, $6, $7)",
    )
    .bind(&id)
    .bind(&req.url)
    .bind(req.kinds.join(" "))
    .bind(encrypted)
    .bind(&req.description)
    .bind(now)
    .bind(principal.actor())
    .execute(&mut *tx)
    .await?;
    let event = Event::new("webhook.created", principal.actor())
        .details(json!({"webhook_id": id, "url": redacted_url(&req.url), "kinds": req.kinds}));
    events::record(&state.events, &state.db, &mut tx, event).await?;
    tx.commit().await?;
    state.webhooks.invalidate();
    let hook = Webhook {
        id,
        url: req.url,
        kinds: req.kinds,
        description: req.description,
        active: true,
        created_at: now,
        created_by: principal.actor(),
        secret: Some(secret),
    };
    Ok((StatusCode::CREATED, Json(hook)).into_response())
}

async fn find(state: &AppState, id: &str) -> ApiResult<Webhook> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhooks WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no webhook {id:?}")))?;
    Ok(webhook(&row)?)
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<Webhook>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list webhooks")?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhooks ORDER BY created_at, id"
    )))
    .fetch_all(&state.db.pool)
    .await?;
    Ok(Json(
        rows.iter().map(webhook).collect::<Result<Vec<_>, _>>()?,
    ))
}

async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Webhook>> {
    principal.require(&[Role::Admin, Role::Auditor], "read webhooks")?;
    Ok(Json(find(&state, &id).await?))
}

/// `PATCH /api/v1/webhooks/{id}`: the fields to change; absent fields keep their value.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "WebhookUpdate")]
pub(crate) struct UpdateRequest {
    /// Where events are POSTed (https, or http to a loopback address).
    url: Option<String>,
    /// Event kinds delivered (`*` for all, a kind such as `token.revoked`, or a `prefix.*` such as `token.*`).
    kinds: Option<Vec<String>>,
    /// Free text.
    description: Option<String>,
    /// False pauses deliveries, true resumes them.
    active: Option<bool>,
}

async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(req): Json<UpdateRequest>,
) -> ApiResult<Json<Webhook>> {
    principal.require(&[Role::Admin], "manage webhooks")?;
    let mut hook = find(&state, &id).await?;
    if let Some(url) = req.url {
        check_url(&url)?;
        hook.url = url;
    }
    if let Some(kinds) = req.kinds {
        check_kinds(&kinds)?;
        hook.kinds = kinds;
    }
    if let Some(description) = req.description {
        if description.len() > 1000 {
            return Err(ApiError::field(
                "description",
                format!(
                    "description: {} characters, maximum 1000",
                    description.len()
                ),
            ));
        }
        hook.description = description;
    }
    if let Some(active) = req.active {
        hook.active = active;
    }
    let mut tx = state.db.pool.begin().await?;
    sqlx::query(
        "UPDATE webhooks SET url = $1, kinds = $2, description = $3, active = $4 WHERE id = $5",
    )
    .bind(&hook.url)
    .bind(hook.kinds.join(" "))
    .bind(&hook.description)
    .bind(i64::from(hook.active))
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    let event = Event::new("webhook.updated", principal.actor()).details(
        json!({"webhook_id": id, "url": hook.url, "kinds": hook.kinds, "active": hook.active}),
    );
    events::record(&state.events, &state.db, &mut tx, event).await?;
    tx.commit().await?;
    state.webhooks.invalidate();
    Ok(Json(hook))
}

async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(&[Role::Admin], "manage webhooks")?;
    let mut tx = state.db.pool.begin().await?;
    // Deliveries first: SQLite enforces the foreign key only with a pragma, PostgreSQL always.
    sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let gone = sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if gone.rows_affected() == 0 {
        return Err(ApiError::NotFound(format!("no webhook {id:?}")));
    }
    events::record(
        &state.events,
        &state.db,
        &mut tx,
        Event::new("webhook.deleted", principal.actor()).details(json!({"webhook_id": id})),
    )
    .await?;
    tx.commit().await?;
    state.webhooks.invalidate();
    Ok(StatusCode::NO_CONTENT)
}

/// One delivery of an event to a webhook.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[schemars(rename = "WebhookDelivery")]
pub struct Delivery {
    /// Id (`dlv_...`).
    pub id: String,
    /// The event delivered.
    pub event_id: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: i64,
    /// HTTP status of the last attempt, if one was answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// When it succeeded.
    pub delivered_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryQuery {
    state: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<DeliveryQuery>,
) -> ApiResult<Json<Page<Delivery>>> {
    principal.require(&[Role::Admin, Role::Auditor], "read webhook deliveries")?;
    find(&state, &id).await?;
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let filter = q.state.unwrap_or_default();
    if !["", "pending", "delivered", "failed"].contains(&filter.as_str()) {
        return Err(ApiError::field(
            "state",
            format!("state: {filter:?} is not one of pending, delivered, failed"),
        ));
    }
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 AND ($2 = '' OR state = $2)",
    )
    .bind(&id)
    .bind(&filter)
    .fetch_one(&state.db.pool)
    .await?;
    let rows = sqlx::query(
        "SELECT id, event_id, state, attempts, next_attempt_at, last_status, last_error, created_at, delivered_at FROM webhook_deliveries \
         WHERE webhook_id = $1 AND ($2 = '' OR state = $2) ORDER BY created_at DESC, id LIMIT $3 OFFSET $4",
    )
    .bind(&id)
    .bind(&filter)
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(Delivery {
                id: r.try_get("id")?,
                event_id: r.try_get("event_id")?,
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                next_attempt_at: r.try_get("next_attempt_at")?,
                last_status: r.try_get("last_status")?,
                last_error: r.try_get("last_error")?,
                created_at: r.try_get("created_at")?,
                delivered_at: r.try_get("delivered_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_take_the_prefix_form_the_event_stream_takes() {
        let kinds = |k: &[&str]| check_kinds(&k.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(kinds(&["token.*"]).is_ok());
        assert!(kinds(&["*", "anomaly.*", "revocation.created"]).is_ok());
        let err = kinds(&["token.issued", "tok.*"]).unwrap_err().to_string();
        assert!(err.contains("kinds[1]") && err.contains("token.*"), "{err}");
        assert!(kinds(&["nope.*"]).is_err());
        assert!(kinds(&[]).is_err());
        assert!(kind_matches("token.*", "token.revoked"));
        assert!(kind_matches("*", "anomaly.opened"));
        assert!(kind_matches("token.issued", "token.issued"));
        assert!(!kind_matches("token.*", "tokens.revoked"));
        assert!(!kind_matches("token.*", "refresh_family.revoked"));
        assert!(!kind_matches("token.issued", "token.revoked"));
    }

    #[test]
    fn credentials_in_a_webhook_url_are_redacted_in_events() {
        assert_eq!(
            redacted_url("https://bot:s3cret@hooks.example/in?token=abc#x"),
            "https://redacted:redacted@hooks.example/in?redacted"
        );
        assert_eq!(
            redacted_url("https://hooks.example/in"),
            "https://hooks.example/in"
        );
    }

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Expected value computed with Python's hmac module.
        let sig = signature("whsec_k", 10, b"{}");
        assert_eq!(
            sig,
            "t=10,v1=6a7eb2c28543f292244ff91a693e6f95e17a251b2b9a7beeca38f07a4271d81a"
        );
        assert_ne!(sig, signature("whsec_other", 10, b"{}"));
        assert_ne!(sig, signature("whsec_k", 11, b"{}"));
    }

    #[test]
    fn backoff_doubles_and_is_capped_at_an_hour() {
        assert_eq!(backoff_seconds(5, 1), 5);
        assert_eq!(backoff_seconds(5, 2), 10);
        assert_eq!(backoff_seconds(5, 4), 40);
        assert_eq!(backoff_seconds(5, 30), 3600);
    }

    #[test]
    fn secrets_round_trip_through_encryption_bound_to_the_webhook_id() {
        let d = Dispatcher::new([7; 32], WebhookConfig::default()).unwrap();
        let blob = d.encrypt("whk_1", "whsec_abc").unwrap();
        assert!(
            !blob.windows(9).any(|w| w == b"whsec_abc"),
            "secret must not be stored in the clear"
        );
        assert_eq!(d.decrypt("whk_1", &blob).unwrap(), "whsec_abc");
        assert!(d.decrypt("whk_2", &blob).is_err());
    }
}
