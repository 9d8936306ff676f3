//! Revocation: `POST /api/v1/revocations` (one token by `jti`, every token of a `subject`, or every
//! token of a `client_id`), `GET /api/v1/revocations` (the active list), and the feed edges poll.
//!
//! # The feed: `GET /api/v1/revocations/feed?since=<cursor>&wait=<seconds>`
//! Roles admin, auditor and edge. Edges should identify themselves with an `x-edgewarden-edge: <name>` header.
//! The answer is one JSON object:
//! ```json
//! {
//!   "cursor": 42,
//!   "full": false,
//!   "now": 1767000000,
//!   "revoked_jtis": [{"jti": "q9L...", "exp": 1767003600, "iss": "https://auth.example.com"}],
//!   "revoked_subjects": [{"subject": "alice", "revoked_at": 1767000000, "expires_at": 1767003600, "iss": "https://auth.example.com"}],
//!   "revoked_clients": [{"client_id": "billing", "revoked_at": 1767000000, "expires_at": 1767003600, "iss": "https://idp.example.com/realms/x"}]
//! }
//! ```
//! - `iss` says which issuer's tokens an entry applies to: a `sub`, `client_id` or `jti` is unique only
//!   within its issuer. Entries recorded before revocations named their issuer have no `iss` and apply
//!   to every issuer. Two revocations of the same value for different issuers are two entries.
//! - `cursor` is what to send as `since` next time; it only grows. `since=0` (or a cursor this
//!   database never produced) yields `"full": true`: a complete snapshot that replaces the edge's state.
//!   Otherwise `"full": false` and the lists hold only entries added or changed after `since`, to merge in
//!   (a later entry for the same subject or client and issuer replaces the earlier one).
//! - A token is revoked when its `jti` is listed, or when its `sub` (or `client_id`) is listed with
//!   `revoked_at >= iat` (tokens issued in the same second as the revocation are refused too).
//! - Entries are never removed by a delta: each carries the time after which everything it covers has
//!   expired (`exp` / `expires_at`), and the edge drops it then (plus its clock leeway). Snapshots omit
//!   entries that expired more than [`EXPIRED_GRACE_SECONDS`] ago.
//! - `ETag: "c<cursor>"`. With `If-None-Match` equal to the current tag and `since` equal to the current
//!   cursor, the answer is `304 Not Modified`, decided from memory without touching the database.
//! - `wait=<seconds>` (at most `--feed-max-wait`, 30 s by default) long-polls: when nothing is newer
//!   than `since`, the request is held until a revocation arrives (on any replica, through PostgreSQL
//!   LISTEN/NOTIFY) or the wait ends, then answered as above. A held poll whose key is deleted (or
//!   whose session ends) meanwhile answers 401 within a second. When every held-request slot is taken
//!   (nine tenths of `--max-connections`), the poll is answered at once as without `wait`.
//!
//! # Paging: `&limit=<n>` and `&after=<next>`
//! Envoy's HTTP client refuses bodies over 32 MiB (about 700,000 jtis), so a listing can be cut into pages.
//! With `limit` (1 to [`MAX_FEED_PAGE`]) the same listing (snapshot or delta, as above) comes in pages of
//! at most `limit` entries across the three lists, ordered by `(kind, value, issuer)`, each with the listing's
//! `cursor` and `full`. A page that is not the last carries `"next"`: repeat the request (same `since`
//! and `limit`) with `after=<next>` until a page has none. The first page also carries
//! `"total": {"jtis", "subjects", "clients"}`, the size of the whole listing.
//! `next` is opaque (base64url of `<cursor>:<kind>:<value>` or `<cursor>:<kind>@<n>:<issuer><value>`, see
//! [`Continuation`]); later pages skip the
//! 304 and long-poll shortcuts, are not counted as edge polls, and still carry the listing's `ETag`.
//! Without `limit` the answer is the whole listing in one body, as before paging existed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row as _, Transaction};
use tokio::sync::watch;

use crate::auth::{ClientAddr, Principal, Role};
use crate::db::{now, Db, DbKind};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::AppState;
pub use edgewarden_api_types::{Page, Revocation, RevokeRequest as CreateRequest};

/// PostgreSQL NOTIFY channel carrying new feed cursors between replicas.
pub const FEED_CHANNEL: &str = "edgewarden_feed";
/// Header edges name themselves with.
pub const EDGE_HEADER: &str = "x-edgewarden-edge";

/// This replica's view of the feed cursor, and the wake-up signal for long-polls.
#[derive(Debug)]
pub struct Feed {
    cursor: watch::Sender<i64>,
    edges: Mutex<HashMap<String, EdgePoll>>,
}

/// The last poll seen from one edge (kept in memory; cheap enough for every poll).
#[derive(Clone, Debug, Serialize)]
pub struct EdgePoll {
    /// Edge name from the `x-edgewarden-edge` header.
    pub name: String,
    /// Unix seconds of the last poll.
    pub last_poll: i64,
    /// Cursor the edge sent as `since`.
    pub cursor: i64,
    /// Address the poll came from.
    pub address: String,
}

impl Feed {
    /// A feed starting at `cursor`.
    pub fn new(cursor: i64) -> Feed {
        Feed {
            cursor: watch::channel(cursor).0,
            edges: Mutex::new(HashMap::new()),
        }
    }

    /// The newest cursor this replica knows of.
    pub fn current(&self) -> i64 {
        *self.cursor.borrow()
    }

    /// Moves the cursor forward (never back) and wakes long-polls if it moved.
    pub fn advance(&self, cursor: i64) {
        self.cursor.send_if_modified(|current| {
            if cursor > *current {
                *current = cursor;
                true
            } else {
                false
            }
        });
    }

    /// A receiver that wakes when the cursor moves.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.cursor.subscribe()
    }

    /// Records a poll from a named edge and returns the cursor of its previous poll seen by this replica.
    pub fn record_poll(&self, poll: EdgePoll) -> Option<i64> {
        let mut edges = self.edges.lock().unwrap_or_else(|p| p.into_inner());
        if edges.len() < 100_000 || edges.contains_key(&poll.name) {
            edges
                .insert(poll.name.clone(), poll)
                .map(|previous| previous.cursor)
        } else {
            None
        }
    }

    /// Every edge seen polling by this replica since it started.
    pub fn edges(&self) -> Vec<EdgePoll> {
        let edges = self.edges.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<EdgePoll> = edges.values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Reads the committed feed cursor from the database.
pub async fn db_cursor(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT current_cursor FROM feed_state WHERE id = 1")
        .fetch_one(&db.pool)
        .await
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/revocations", post(create).get(list))
        .route("/api/v1/revocations/feed", get(feed))
        .route("/api/v1/revocations/propagation", get(propagation))
}

/// Current time in Unix milliseconds: propagation takes milliseconds, seconds would hide it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How long the start of each feed change (`feed_changes`) is kept, and with it the edges' cursor marks
/// (`edge_cursor_marks`) at or past it: the history `GET /api/v1/revocations/propagation` answers from.
/// A day: propagation is watched right after a revocation, and marks grow with edges times changes.
pub const PROPAGATION_HISTORY_MS: i64 = 86_400 * 1000;

/// What a revocation targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One access token.
    Jti(String),
    /// Every token of a subject issued up to now.
    Subject(String),
    /// Every token of a client issued up to now.
    Client(String),
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Target::Jti(_) => "jti",
            Target::Subject(_) => "subject",
            Target::Client(_) => "client",
        }
    }

    fn value(&self) -> &str {
        match self {
            Target::Jti(v) | Target::Subject(v) | Target::Client(v) => v,
        }
    }
}

/// Opens a feed change: bumps the cursor inside `tx`, which serialises writers so cursors commit in order.
/// It also records when the change was made, in milliseconds, where propagation is measured from.
pub async fn begin_change(tx: &mut Transaction<'static, Any>) -> Result<i64, sqlx::Error> {
    let seq: i64 = sqlx::query_scalar("UPDATE feed_state SET current_cursor = current_cursor + 1 WHERE id = 1 RETURNING current_cursor")
        .fetch_one(&mut **tx)
        .await?;
    let at_ms = now_ms();
    sqlx::query("INSERT INTO feed_changes (cursor, at_ms) VALUES ($1, $2)")
        .bind(seq)
        .bind(at_ms)
        .execute(&mut **tx)
        .await?;
    // Propagation history past its retention goes every 64th change: two index probes, rarely any rows.
    if seq % 64 == 0 {
        sqlx::query("DELETE FROM feed_changes WHERE at_ms < $1")
            .bind(at_ms - PROPAGATION_HISTORY_MS)
            .execute(&mut **tx)
            .await?;
        // A mark before the oldest kept change answers for no revocation that can still be asked about.
        sqlx::query(
            "DELETE FROM edge_cursor_marks WHERE cursor < (SELECT MIN(cursor) FROM feed_changes)",
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(seq)
}

/// Finishes a feed change inside `tx`: PostgreSQL delivers the NOTIFY only if the transaction commits.
pub async fn notify_change(
    db: &Db,
    tx: &mut Transaction<'static, Any>,
    cursor: i64,
) -> Result<(), sqlx::Error> {
    if db.kind == DbKind::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(FEED_CHANNEL)
            .bind(cursor.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// One row of the `revocations` table.
struct Entry<'a> {
    kind: &'a str,
    value: &'a str,
    /// The issuer it applies to; '' only in rows from before revocations named their issuer.
    issuer: &'a str,
    seq: i64,
    reason: &'a str,
    actor: &'a str,
    revoked_at: i64,
    expires_at: i64,
}

/// Upserts one feed entry; a repeated revocation of the same target moves it to the new cursor.
async fn upsert_entry(tx: &mut Transaction<'static, Any>, e: Entry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO revocations (kind, value, issuer, seq, reason, actor, revoked_at, expires_at) VALUES ($1, $2, $8, $3, $4, $5, $6, $7) \
         ON CONFLICT (kind, value, issuer) DO UPDATE SET seq = excluded.seq, reason = excluded.reason, actor = excluded.actor, \
         revoked_at = excluded.revoked_at, \
         expires_at = CASE WHEN excluded.expires_at > revocations.expires_at THEN excluded.expires_at ELSE revocations.expires_at END",
    )
    .bind(e.kind)
    .bind(e.value)
    .bind(e.seq)
    .bind(e.reason)
    .bind(e.actor)
    .bind(e.revoked_at)
    .bind(e.expires_at)
    .bind(e.issuer)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Revokes every token of a refresh family inside `tx`: its refresh tokens and the access tokens they
/// produced (each listed by jti in the feed). Returns how many access tokens were revoked.
pub async fn revoke_family_in(
    tx: &mut Transaction<'static, Any>,
    issuer: &str,
    family_id: &str,
    seq: i64,
    reason: &str,
    actor: &str,
) -> Result<u64, sqlx::Error> {
    let now = now();
    sqlx::query(
        "UPDATE refresh_tokens SET state = 'revoked' WHERE family_id = $1 AND state <> 'revoked'",
    )
    .bind(family_id)
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query("SELECT jti, expires_at FROM tokens WHERE family_id = $1 AND revoked_at IS NULL AND expires_at > $2")
        .bind(family_id)
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
    for row in &rows {
        let jti: String = row.try_get("jti")?;
        let exp: i64 = row.try_get("expires_at")?;
        upsert_entry(
            tx,
            Entry {
                kind: "jti",
                value: &jti,
                issuer,
                seq,
                reason,
                actor,
                revoked_at: now,
                expires_at: exp,
            },
        )
        .await?;
    }
    sqlx::query("UPDATE tokens SET revoked_at = $1, revoke_reason = $2 WHERE family_id = $3 AND revoked_at IS NULL")
        .bind(now)
        .bind(reason)
        .bind(family_id)
        .execute(&mut **tx)
        .await?;
    Ok(rows.len() as u64)
}

/// Whose identifiers a revocation names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issuer {
    /// The admin API's own: jtis and clients must exist here, and its tokens are marked revoked.
    Own,
    /// A trusted foreign issuer (checked by the caller); nothing of it is stored here but the entry.
    Foreign {
        /// The issuer's `iss`.
        issuer: String,
        /// When the entry may leave the feed: a foreign jti's expiry (required), or for a subject or
        /// client the issuer's longest token lifetime (default [`FOREIGN_TOKEN_LIFETIME_SECONDS`]).
        expires_at: Option<i64>,
    },
}

/// How long a foreign subject or client revocation stays in the feed when neither the request nor the
/// issuer's registration says (the handler fills in the issuer's `max_token_lifetime_seconds`).
pub const FOREIGN_TOKEN_LIFETIME_SECONDS: i64 = crate::issuers::DEFAULT_TOKEN_LIFETIME_SECONDS;

/// Latest `expires_at` accepted for a foreign revocation, from now: a year. The feed keeps an entry until
/// then, so a typo in a Unix time must not pin it for centuries.
pub const MAX_FOREIGN_EXPIRY_SECONDS: i64 = 366 * 86_400;

/// Revokes `target` of the admin API's own issuer; see [`revoke_for`].
pub async fn revoke(
    state: &AppState,
    target: &Target,
    reason: &str,
    actor: &str,
) -> ApiResult<Revocation> {
    revoke_for(state, target, &Issuer::Own, reason, actor).await
}

/// Revokes `target` of `issuer`, records `reason` and `actor`, publishes the change to the feed and returns
/// it. For the own issuer unknown jtis and clients are 404s; subjects need not exist (a subject is just a
/// string in tokens). A foreign issuer's identifiers are recorded as given (the edge matches by claim).
pub async fn revoke_for(
    state: &AppState,
    target: &Target,
    issuer: &Issuer,
    reason: &str,
    actor: &str,
) -> ApiResult<Revocation> {
    let now = now();
    // With SQLite, wait in line behind at most one usage transaction instead of polling for the lock.
    let _turn = state.db.write_turn().await;
    let mut tx = state.db.pool.begin().await?;
    let seq = begin_change(&mut tx).await?;
    let value = target.value();
    let issuer_name = match issuer {
        Issuer::Own => state.keys.issuer().to_owned(),
        Issuer::Foreign { issuer, .. } => issuer.clone(),
    };
    let expires_at = match (target, issuer) {
        (Target::Jti(_), Issuer::Foreign { expires_at, .. }) => expires_at.ok_or_else(|| {
            ApiError::field(
                "expires_at",
                "expires_at: required with a foreign jti, the token's exp",
            )
        })?,
        (_, Issuer::Foreign { expires_at, .. }) => {
            expires_at.unwrap_or(now + FOREIGN_TOKEN_LIFETIME_SECONDS)
        }
        (Target::Jti(jti), Issuer::Own) => {
            let exp: Option<i64> =
                sqlx::query_scalar("SELECT expires_at FROM tokens WHERE jti = $1")
                    .bind(jti)
                    .fetch_optional(&mut *tx)
                    .await?;
            let exp =
                exp.ok_or_else(|| ApiError::NotFound(format!("no token with jti {jti:?}")))?;
            sqlx::query("UPDATE tokens SET revoked_at = $1, revoke_reason = $2 WHERE jti = $3 AND revoked_at IS NULL")
                .bind(now)
                .bind(reason)
                .bind(jti)
                .execute(&mut *tx)
                .await?;
            exp
        }
        (Target::Subject(_) | Target::Client(_), Issuer::Own) => {
            let column = if matches!(target, Target::Subject(_)) {
                "subject"
            } else {
                "client_id"
            };
            if let Target::Client(id) = target {
                let exists: Option<String> =
                    sqlx::query_scalar("SELECT client_id FROM clients WHERE client_id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    return Err(ApiError::NotFound(format!("no client {id:?}")));
                }
            }
            // The column name comes from the match above, never from input.
            let max_exp: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT MAX(expires_at) FROM tokens WHERE {column} = $1 AND issued_at <= $2"
            )))
            .bind(value)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tokens SET revoked_at = $1, revoke_reason = $2 WHERE {column} = $3 AND revoked_at IS NULL AND issued_at <= $1"
            )))
            .bind(now)
            .bind(reason)
            .bind(value)
            .execute(&mut *tx)
            .await?;
            // Refresh tokens would mint fresh access tokens after the revocation: they go too.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE refresh_tokens SET state = 'revoked' WHERE {column} = $1 AND state <> 'revoked'"
            )))
            .bind(value)
            .execute(&mut *tx)
            .await?;
            // A token signed in this very second on another replica is covered too (iat <= revoked_at):
            // keep the entry for at least the longest lifetime any such token may have.
            max_exp
                .unwrap_or(0)
                .max(now + state.config.max_token_lifetime_seconds as i64)
        }
    };
    upsert_entry(
        &mut tx,
        Entry {
            kind: target.kind(),
            value,
            issuer: &issuer_name,
            seq,
            reason,
            actor,
            revoked_at: now,
            expires_at,
        },
    )
    .await?;
    let event = match target {
        Target::Jti(j) => crate::events::Event::new("token.revoked", actor).jti(j),
        Target::Subject(s) => crate::events::Event::new("revocation.created", actor).subject(s),
        Target::Client(c) => crate::events::Event::new("revocation.created", actor).client(c),
    };
    crate::events::record(&state.events, &state.db, &mut tx, event.details(serde_json::json!({"kind": target.kind(), "value": value, "issuer": issuer_name, "reason": reason, "cursor": seq}))).await?;
    notify_change(&state.db, &mut tx, seq).await?;
    tx.commit().await?;
    state.feed.advance(seq);
    tracing::info!(kind = target.kind(), issuer = %issuer_name, cursor = seq, actor = %actor, "revocation recorded");
    Ok(Revocation {
        kind: target.kind().to_owned(),
        value: value.to_owned(),
        issuer: Some(issuer_name),
        reason: reason.to_owned(),
        actor: actor.to_owned(),
        revoked_at: now,
        expires_at,
        cursor: seq,
    })
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateRequest>,
) -> ApiResult<Response> {
    principal.require(&[Role::Admin, Role::Service], "revoke tokens")?;
    let reason = req.reason.clone().unwrap_or_default();
    if reason.trim().is_empty() {
        return Err(ApiError::field(
            "reason",
            "reason: required, say why the token is revoked",
        ));
    }
    if reason.len() > 1000 {
        return Err(ApiError::field(
            "reason",
            format!("reason: {} characters, maximum 1000", reason.len()),
        ));
    }
    if let Some(token) = &req.token {
        return create_from_token(&state, &principal, &req, token, reason.trim()).await;
    }
    let target = match (req.jti, req.subject, req.client_id) {
        (Some(jti), None, None) => Target::Jti(jti),
        (None, Some(subject), None) => Target::Subject(subject),
        (None, None, Some(client)) => Target::Client(client),
        _ => {
            return Err(ApiError::bad_request(
                "exactly one of jti, subject, client_id or token is required",
            ))
        }
    };
    crate::extract::check_identifier(target.kind_field(), target.value(), 512)?;
    let issuer = match req.issuer {
        None => Issuer::Own,
        Some(issuer) if issuer == state.keys.issuer() => Issuer::Own,
        Some(issuer) => {
            crate::extract::check_identifier("issuer", &issuer, crate::issuers::MAX_ISSUER_LEN)?;
            let Some(lifetime) = crate::issuers::token_lifetime(&state.db, &issuer).await? else {
                return Err(ApiError::field(
                    "issuer",
                    format!("issuer: {issuer:?} is not a trusted issuer; register it with POST /api/v1/issuers"),
                ));
            };
            // A subject or client entry covers every token issued before it, so it stays as long as
            // the issuer's tokens live; a jti entry needs the token's own exp (checked below).
            let default_expiry = (!matches!(target, Target::Jti(_))).then(|| now() + lifetime);
            Issuer::Foreign {
                issuer,
                expires_at: req.expires_at.or(default_expiry),
            }
        }
    };
    match (&issuer, req.expires_at, &target) {
        (Issuer::Own, Some(_), _) => {
            return Err(ApiError::field(
                "expires_at",
                "expires_at: only with a foreign issuer; the admin API knows when its own tokens expire",
            ))
        }
        (Issuer::Foreign { .. }, None, Target::Jti(_)) => {
            return Err(ApiError::field(
                "expires_at",
                "expires_at: required with a foreign jti, the token's exp (Unix seconds)",
            ))
        }
        (Issuer::Foreign { .. }, Some(at), _) => check_foreign_expiry(at)?,
        _ => {}
    }
    if principal.role == Role::Service {
        // A service may revoke only what belongs to its own client.
        let own = principal.client_id.clone().unwrap_or_default();
        if issuer != Issuer::Own {
            return Err(ApiError::Forbidden(
                "a service key may revoke only its own client's tokens, not a foreign issuer's"
                    .into(),
            ));
        }
        match &target {
            Target::Client(id) => principal.require_client(id, "revoke tokens")?,
            Target::Jti(jti) => {
                let client: Option<String> =
                    sqlx::query_scalar("SELECT client_id FROM tokens WHERE jti = $1")
                        .bind(jti)
                        .fetch_optional(&state.db.pool)
                        .await?;
                match client {
                    Some(c) if c == own => {}
                    Some(_) => {
                        return Err(ApiError::Forbidden(
                            "token belongs to another client".into(),
                        ))
                    }
                    None => return Err(ApiError::NotFound(format!("no token with jti {jti:?}"))),
                }
            }
            Target::Subject(_) => {
                return Err(ApiError::Forbidden(
                    "a service key may not revoke a subject across clients".into(),
                ))
            }
        }
    }
    let revocation =
        revoke_for(&state, &target, &issuer, reason.trim(), &principal.actor()).await?;
    Ok((StatusCode::CREATED, Json(revocation)).into_response())
}

/// A foreign `expires_at` must lie ahead, and within [`MAX_FOREIGN_EXPIRY_SECONDS`].
fn check_foreign_expiry(at: i64) -> ApiResult<()> {
    let now = now();
    if at <= now {
        return Err(ApiError::field(
            "expires_at",
            format!("expires_at: {at} is not in the future (now {now}); an expired token needs no revocation"),
        ));
    }
    if at > now + MAX_FOREIGN_EXPIRY_SECONDS {
        return Err(ApiError::field(
            "expires_at",
            format!(
                "expires_at: {at} is more than {} days ahead; give the token's exp in Unix seconds",
                MAX_FOREIGN_EXPIRY_SECONDS / 86_400
            ),
        ));
    }
    Ok(())
}

/// `{"token": ..., "reason": ...}`: verifies the token and revokes its jti under its own `iss`.
async fn create_from_token(
    state: &AppState,
    principal: &Principal,
    req: &CreateRequest,
    token: &str,
    reason: &str,
) -> ApiResult<Response> {
    if req.jti.is_some()
        || req.subject.is_some()
        || req.client_id.is_some()
        || req.issuer.is_some()
        || req.expires_at.is_some()
    {
        return Err(ApiError::bad_request(
            "exactly one of jti, subject, client_id or token is required; a token carries its own issuer and expiry",
        ));
    }
    let verified = crate::issuers::verify_presented(state, token).await?;
    if principal.role == Role::Service {
        let own_issuer = verified.iss == state.keys.issuer();
        if !own_issuer || verified.client_id != principal.client_id {
            return Err(ApiError::Forbidden(
                "a service key may revoke only its own client's tokens".into(),
            ));
        }
    }
    let revocation = revoke_verified(state, &verified, reason, &principal.actor()).await?;
    Ok((StatusCode::CREATED, Json(revocation)).into_response())
}

/// Revokes a token the engine verified (see [`crate::issuers::verify_presented`]) by its `jti`, under its
/// `iss` and until its `exp`. The token itself is neither stored nor logged.
pub async fn revoke_verified(
    state: &AppState,
    verified: &edgewarden_core::VerifiedToken,
    reason: &str,
    actor: &str,
) -> ApiResult<Revocation> {
    let bad = |why: &str| ApiError::field("token", format!("token: {why}"));
    let jti = verified
        .jti
        .clone()
        .ok_or_else(|| bad("has no jti claim; revoke its subject or client instead"))?;
    if jti.is_empty() || jti.len() > 512 || jti.chars().any(char::is_control) {
        return Err(bad(
            "its jti is empty, longer than 512 characters or holds control characters",
        ));
    }
    if verified.iss == state.keys.issuer() {
        return revoke(state, &Target::Jti(jti), reason, actor).await;
    }
    let exp = verified
        .exp
        .and_then(|e| i64::try_from(e).ok())
        .ok_or_else(|| bad("has no exp claim"))?
        // An entry far in the future would pin the feed: the same bound as a given expires_at.
        .min(now() + MAX_FOREIGN_EXPIRY_SECONDS);
    let issuer = Issuer::Foreign {
        issuer: verified.iss.clone(),
        expires_at: Some(exp),
    };
    revoke_for(state, &Target::Jti(jti), &issuer, reason, actor).await
}

impl Target {
    fn kind_field(&self) -> &'static str {
        match self {
            Target::Jti(_) => "jti",
            Target::Subject(_) => "subject",
            Target::Client(_) => "client_id",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    kind: Option<String>,
    /// Only entries for this exact value (a jti, subject or client id), of any issuer.
    value: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Clamps pagination parameters: limit 1..=500 (default 50), offset >= 0.
pub fn page_params(limit: Option<i64>, offset: Option<i64>) -> ApiResult<(i64, i64)> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("limit: {limit} is out of range 1..=500"),
        ));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::field(
            "offset",
            format!("offset: {offset} is negative"),
        ));
    }
    Ok((limit, offset))
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Revocation>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list revocations")?;
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let kind = q.kind.unwrap_or_default();
    if !["", "jti", "subject", "client"].contains(&kind.as_str()) {
        return Err(ApiError::field(
            "kind",
            format!("kind: {kind:?} is not one of jti, subject, client"),
        ));
    }
    let value = q.value.unwrap_or_default();
    let now = now();
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM revocations WHERE expires_at > $1 AND ($2 = '' OR kind = $2) AND ($3 = '' OR value = $3)",
    )
    .bind(now)
    .bind(&kind)
    .bind(&value)
    .fetch_one(&state.db.pool)
    .await?;
    let rows = sqlx::query(
        "SELECT kind, value, issuer, reason, actor, revoked_at, expires_at, seq FROM revocations \
         WHERE expires_at > $1 AND ($2 = '' OR kind = $2) AND ($5 = '' OR value = $5) ORDER BY seq DESC, kind, value, issuer LIMIT $3 OFFSET $4",
    )
    .bind(now)
    .bind(&kind)
    .bind(limit)
    .bind(offset)
    .bind(&value)
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(Revocation {
                kind: r.try_get("kind")?,
                value: r.try_get("value")?,
                issuer: Some(r.try_get::<String, _>("issuer")?).filter(|i| !i.is_empty()),
                reason: r.try_get("reason")?,
                actor: r.try_get("actor")?,
                revoked_at: r.try_get("revoked_at")?,
                expires_at: r.try_get("expires_at")?,
                cursor: r.try_get("seq")?,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    since: Option<i64>,
    wait: Option<u64>,
    limit: Option<i64>,
    after: Option<String>,
}

/// Largest `limit` a paged feed request may ask for.
pub const MAX_FEED_PAGE: i64 = 1_000_000;

/// Where a paged listing stopped: the listing's cursor (fixed when its first page was served) and the
/// last `(kind, value, issuer)` served. Sent to the edge as `next` and back as `after`, base64url (no
/// padding) of `<cursor>:<kind>:<value>` when the issuer is '' (rows from before revocations named their
/// issuer, and every continuation made before), else `<cursor>:<kind>@<n>:<issuer><value>` where `<n>` is
/// the issuer's length in bytes; `value` and `issuer` may contain `:`, so only the first two separate fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Continuation {
    /// The listing's cursor: later pages list only rows with `seq <= cursor`.
    pub cursor: i64,
    /// Kind of the last entry served (`client`, `jti` or `subject`).
    pub kind: String,
    /// Value of the last entry served.
    pub value: String,
    /// Issuer of the last entry served ('' for an entry that applies to every issuer).
    pub issuer: String,
}

impl Continuation {
    /// The opaque string an edge sends back as `after`.
    pub fn encode(&self) -> String {
        if self.issuer.is_empty() {
            URL_SAFE_NO_PAD.encode(format!("{}:{}:{}", self.cursor, self.kind, self.value))
        } else {
            URL_SAFE_NO_PAD.encode(format!(
                "{}:{}@{}:{}{}",
                self.cursor,
                self.kind,
                self.issuer.len(),
                self.issuer,
                self.value
            ))
        }
    }

    /// Parses an `after` parameter; a string this endpoint did not produce is a 400 naming `after`.
    pub fn decode(after: &str) -> ApiResult<Continuation> {
        let invalid = |why: &str| {
            ApiError::field(
                "after",
                format!("after: {why}; restart the listing without after"),
            )
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(after)
            .map_err(|_| invalid("not a continuation this feed produced (not base64url)"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| invalid("not a continuation this feed produced (not utf-8)"))?;
        let mut parts = text.splitn(3, ':');
        let (Some(cursor), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a continuation this feed produced"));
        };
        let cursor = cursor
            .parse::<i64>()
            .ok()
            .filter(|c| *c >= 0)
            .ok_or_else(|| invalid("not a continuation this feed produced (bad cursor)"))?;
        let (kind, issuer, value) = match kind.split_once('@') {
            None => (kind, "", value),
            Some((kind, len)) => {
                let len = len
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0 && value.is_char_boundary(*n))
                    .ok_or_else(|| invalid("not a continuation this feed produced (bad issuer)"))?;
                let (issuer, value) = value.split_at(len);
                (kind, issuer, value)
            }
        };
        if !["client", "jti", "subject"].contains(&kind) {
            return Err(invalid("not a continuation this feed produced (bad kind)"));
        }
        Ok(Continuation {
            cursor,
            kind: kind.to_owned(),
            value: value.to_owned(),
            issuer: issuer.to_owned(),
        })
    }
}

/// A revoked token in the feed.
#[derive(Serialize)]
pub struct FeedJti {
    /// Token id.
    pub jti: String,
    /// The token's own expiry; drop the entry after it.
    pub exp: i64,
    /// The issuer whose token it is; absent (entries from before revocations named their issuer) means any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// A revoked subject in the feed.
#[derive(Serialize)]
pub struct FeedSubject {
    /// The `sub` claim.
    pub subject: String,
    /// Tokens with `iat <= revoked_at` are revoked.
    pub revoked_at: i64,
    /// Drop the entry after this time.
    pub expires_at: i64,
    /// The issuer whose tokens it covers; absent (entries from before revocations named their issuer) means any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// A revoked client in the feed.
#[derive(Serialize)]
pub struct FeedClient {
    /// The `client_id` claim.
    pub client_id: String,
    /// Tokens with `iat <= revoked_at` are revoked.
    pub revoked_at: i64,
    /// Drop the entry after this time.
    pub expires_at: i64,
    /// The issuer whose tokens it covers; absent (entries from before revocations named their issuer) means any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// How many entries a whole paged listing holds, per list (on its first page).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct FeedTotal {
    /// Entries in `revoked_jtis` across all pages.
    pub jtis: i64,
    /// Entries in `revoked_subjects` across all pages.
    pub subjects: i64,
    /// Entries in `revoked_clients` across all pages.
    pub clients: i64,
}

/// The feed document (see the module docs).
#[derive(Serialize)]
pub struct FeedBody {
    /// Send this as `since` next time.
    pub cursor: i64,
    /// True for a complete snapshot that replaces the edge's state.
    pub full: bool,
    /// Server time (Unix seconds).
    pub now: i64,
    /// Size of the whole listing; only on the first page of a paged listing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<FeedTotal>,
    /// Send this as `after` to get the next page; absent on the last page and on unpaged answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Revoked tokens.
    pub revoked_jtis: Vec<FeedJti>,
    /// Revoked subjects.
    pub revoked_subjects: Vec<FeedSubject>,
    /// Revoked clients.
    pub revoked_clients: Vec<FeedClient>,
}

impl FeedBody {
    fn empty(cursor: i64, full: bool, now: i64) -> FeedBody {
        FeedBody {
            cursor,
            full,
            now,
            total: None,
            next: None,
            revoked_jtis: vec![],
            revoked_subjects: vec![],
            revoked_clients: vec![],
        }
    }

    /// Appends one `revocations` row to the list of its kind; issuer '' is emitted without `iss`.
    fn push(
        &mut self,
        kind: &str,
        value: String,
        issuer: String,
        revoked_at: i64,
        expires_at: i64,
    ) {
        let iss = Some(issuer).filter(|i| !i.is_empty());
        match kind {
            "jti" => self.revoked_jtis.push(FeedJti {
                jti: value,
                exp: expires_at,
                iss,
            }),
            "subject" => self.revoked_subjects.push(FeedSubject {
                subject: value,
                revoked_at,
                expires_at,
                iss,
            }),
            _ => self.revoked_clients.push(FeedClient {
                client_id: value,
                revoked_at,
                expires_at,
                iss,
            }),
        }
    }
}

fn etag(cursor: i64) -> String {
    format!("\"c{cursor}\"")
}

fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
}

async fn feed(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
    ClientAddr(address): ClientAddr,
) -> ApiResult<Response> {
    principal.require(
        &[Role::Admin, Role::Auditor, Role::Edge],
        "read the revocation feed",
    )?;
    let since = q.since.unwrap_or(0);
    if since < 0 {
        return Err(ApiError::field(
            "since",
            format!("since: {since} is negative"),
        ));
    }
    if let Some(limit) = q.limit.filter(|l| !(1..=MAX_FEED_PAGE).contains(l)) {
        return Err(ApiError::field(
            "limit",
            format!("limit: {limit} is out of range 1..={MAX_FEED_PAGE}"),
        ));
    }
    let after = q.after.as_deref().map(Continuation::decode).transpose()?;
    if let Some(after) = after {
        let Some(limit) = q.limit else {
            return Err(ApiError::field(
                "limit",
                "limit: required with after, repeat the limit of the listing's first page",
            ));
        };
        return next_page(&state, since, limit, &after).await;
    }
    if let Some(name) = headers
        .get(EDGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| !n.is_empty() && n.len() <= 200)
    {
        principal.require_edge(name)?;
        let at_ms = now_ms();
        // Per Envoy instance, and whether the admin API has the configuration it reports (crate::edges).
        crate::edges::record_poll(&state, name, &headers, since, &address, at_ms).await;
        let previous = state.feed.record_poll(EdgePoll {
            name: name.to_owned(),
            last_poll: at_ms / 1000,
            cursor: since,
            address,
        });
        // Only an advance is noted, so the 304 answered from memory stays free of database writes
        // while nothing changes; a replica that has not seen the edge yet notes it once (the earliest
        // wins). Notes are written in batches (`feed_marks`), never by the poll itself.
        if since > 0 && previous.is_none_or(|p| since > p) {
            state.cursor_marks.record(name, since, at_ms);
        }
    }
    let mut current = state.feed.current();
    if since > current {
        // Another replica may have acknowledged a change whose NOTIFY has not reached us yet.
        state.feed.advance(db_cursor(&state.db).await?);
        current = state.feed.current();
    }
    let wait = q.wait.unwrap_or(0).min(state.config.feed_max_wait_seconds);
    // With every held-request slot taken the poll is answered at once, as without `wait`: the edge polls
    // again, and held requests never fill the connection bound.
    let held = (since == current && wait > 0)
        .then(|| state.held_requests.clone().try_acquire_owned().ok())
        .flatten();
    let mut _turn = None;
    if let Some(_held) = held {
        let mut rx = state.feed.subscribe();
        // Up to a quarter shorter than asked, at random: a change answers every held poll at once, the
        // edges poll again within the same second, and without the spread all their waits would also run
        // out within one second, every `wait` seconds after each change (ten thousand 304s at once in the
        // fleet bench). An edge whose wait ends early simply polls again.
        let spread = rand::random::<f64>() * 0.25;
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(wait).mul_f64(1.0 - spread);
        // A held poll answers 401 within a second of its key's deletion (or its session's end).
        let revoked = crate::auth::credential_revoked(
            state.clone(),
            headers.clone(),
            principal.clone(),
            crate::auth::Recheck::Cached,
        );
        tokio::pin!(revoked);
        while *rx.borrow_and_update() <= since {
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, rx.changed()) => match changed {
                    Ok(Ok(())) => {}
                    _ => break,
                },
                () = &mut revoked => {
                    return Err(ApiError::Unauthorized(
                        "credential deleted or expired while the poll was held".into(),
                    ));
                }
            }
        }
        current = state.feed.current();
        // Woken by a change with every other held poll, or at the end of a wait that many share: answer in
        // turn (`held::WakeGate`).
        _turn = state.wake_gate.turn().await;
    }
    let tag = etag(current);
    if since == current {
        if if_none_match(&headers, &tag) {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            set_feed_headers(response.headers_mut(), &tag);
            return Ok(response);
        }
        if since != 0 {
            let mut body = FeedBody::empty(current, false, now());
            if q.limit.is_some() {
                body.total = Some(FeedTotal::default());
            }
            let mut response = Json(body).into_response();
            set_feed_headers(response.headers_mut(), &tag);
            return Ok(response);
        }
    }
    let Some(limit) = q.limit else {
        // Unpaged: every poll woken by the same change shares one read (`feed_cache`).
        let cached = state.feed_cache.delta(&state.db, since, current).await?;
        state.feed.advance(cached.cursor);
        let mut response = (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            cached.body,
        )
            .into_response();
        set_feed_headers(response.headers_mut(), &etag(cached.cursor));
        return Ok(response);
    };
    let body = load_feed_page(&state.db, since, limit, None).await?;
    let tag = etag(body.cursor);
    state.feed.advance(body.cursor);
    let mut response = Json(body).into_response();
    set_feed_headers(response.headers_mut(), &tag);
    Ok(response)
}

/// Serves a page after the first of a paged listing: no 304, no long-poll (the edge is mid-listing and
/// wants the rest now), and no edge tracking (the first page counted the listing as one poll).
async fn next_page(
    state: &AppState,
    since: i64,
    limit: i64,
    after: &Continuation,
) -> ApiResult<Response> {
    if after.cursor > state.feed.current() {
        state.feed.advance(db_cursor(&state.db).await?);
        if after.cursor > state.feed.current() {
            return Err(ApiError::field(
                "after",
                format!(
                    "after: cursor {} was never produced by this feed; restart the listing without after",
                    after.cursor
                ),
            ));
        }
    }
    let body = load_feed_page(&state.db, since, limit, Some(after)).await?;
    let mut response = Json(body).into_response();
    set_feed_headers(response.headers_mut(), &etag(after.cursor));
    Ok(response)
}

fn set_feed_headers(headers: &mut HeaderMap, tag: &str) {
    if let Ok(v) = HeaderValue::from_str(tag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// How long after its expiry an entry stays in the feed. Edges accept a token until `exp` plus their clock
/// leeway (`clock_skew_seconds`, 60 s by default), so an entry dropped at `exp` would let a revoked token
/// through that window after an edge resynced from a snapshot; edges prune the entries themselves at
/// `exp` plus their own leeway.
pub const EXPIRED_GRACE_SECONDS: i64 = 600;

/// Reads the feed from the database: a snapshot when `since` is 0 or unknown, else the delta after it.
pub async fn load_feed(db: &Db, since: i64) -> Result<FeedBody, sqlx::Error> {
    let now = now();
    // Read the committed cursor first: every seq up to it is committed (writers are serialised), and
    // rows committed after this read are left for the next poll.
    let cursor = db_cursor(db).await?;
    let full = since == 0 || since > cursor;
    let from = if full { 0 } else { since };
    let rows = sqlx::query(
        "SELECT kind, value, issuer, revoked_at, expires_at FROM revocations WHERE seq > $1 AND seq <= $2 AND expires_at > $3 ORDER BY seq, kind, value, issuer",
    )
    .bind(from)
    .bind(cursor)
    .bind(now - EXPIRED_GRACE_SECONDS)
    .fetch_all(&db.pool)
    .await?;
    let mut body = FeedBody::empty(cursor, full, now);
    for row in rows {
        body.push(
            &row.try_get::<String, _>("kind")?,
            row.try_get("value")?,
            row.try_get("issuer")?,
            row.try_get("revoked_at")?,
            row.try_get("expires_at")?,
        );
    }
    Ok(body)
}

/// Reads one page of at most `limit` entries of the listing `load_feed(db, since)` would answer, in
/// `(kind, value, issuer)` order: the first page when `after` is `None` (with the listing's `total`), else the
/// page following `after`. `next` is set when more entries follow.
pub async fn load_feed_page(
    db: &Db,
    since: i64,
    limit: i64,
    after: Option<&Continuation>,
) -> Result<FeedBody, sqlx::Error> {
    let now = now();
    // The listing's cursor is read once, for its first page, and travels in `next` from then on.
    let cursor = match after {
        Some(after) => after.cursor,
        None => db_cursor(db).await?,
    };
    let full = since == 0 || since > cursor;
    let from = if full { 0 } else { since };
    let min_expiry = now - EXPIRED_GRACE_SECONDS;
    // '' sorts before every kind, so the first page starts at the beginning of the listing.
    let (last_kind, last_value, last_issuer) = after.map_or(("", "", ""), |a| {
        (a.kind.as_str(), a.value.as_str(), a.issuer.as_str())
    });
    // A row revoked again (or changed) after the listing's cursor has moved to `seq > cursor`: it is left
    // out of the remaining pages and arrives in the next delta, `since=<cursor>`, so nothing is lost.
    // One more row than asked tells whether there is a next page. The row-value comparison (SQLite 3.15+,
    // PostgreSQL) lets PostgreSQL range-scan the primary key: 37 ms for a page deep into a million rows,
    // where the equivalent `kind > $4 OR (kind = $4 AND value > $5)` rescans from the start (1 s).
    let mut rows = sqlx::query(
        "SELECT kind, value, issuer, revoked_at, expires_at FROM revocations \
         WHERE seq > $1 AND seq <= $2 AND expires_at > $3 AND (kind, value, issuer) > ($4, $5, $7) \
         ORDER BY kind, value, issuer LIMIT $6",
    )
    .bind(from)
    .bind(cursor)
    .bind(min_expiry)
    .bind(last_kind)
    .bind(last_value)
    .bind(limit + 1)
    .bind(last_issuer)
    .fetch_all(&db.pool)
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let mut body = FeedBody::empty(cursor, full, now);
    if after.is_none() {
        body.total = Some(listing_total(db, from, cursor, min_expiry).await?);
    }
    let mut last = None;
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let value: String = row.try_get("value")?;
        let issuer: String = row.try_get("issuer")?;
        body.push(
            &kind,
            value.clone(),
            issuer.clone(),
            row.try_get("revoked_at")?,
            row.try_get("expires_at")?,
        );
        last = Some((kind, value, issuer));
    }
    if let (true, Some((kind, value, issuer))) = (more, last) {
        body.next = Some(
            Continuation {
                cursor,
                kind,
                value,
                issuer,
            }
            .encode(),
        );
    }
    Ok(body)
}

/// Counts the entries of a whole listing per kind, with the filters of its pages but no `after`.
async fn listing_total(
    db: &Db,
    from: i64,
    cursor: i64,
    min_expiry: i64,
) -> Result<FeedTotal, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT kind, COUNT(*) AS n FROM revocations WHERE seq > $1 AND seq <= $2 AND expires_at > $3 GROUP BY kind",
    )
    .bind(from)
    .bind(cursor)
    .bind(min_expiry)
    .fetch_all(&db.pool)
    .await?;
    let mut total = FeedTotal::default();
    for row in rows {
        let n: i64 = row.try_get("n")?;
        match row.try_get::<String, _>("kind")?.as_str() {
            "jti" => total.jtis = n,
            "subject" => total.subjects = n,
            _ => total.clients = n,
        }
    }
    Ok(total)
}

/// Checks the database revocation state for a verified token of issuer `iss`: by jti, subject or client,
/// among the entries for that issuer and those for every issuer (recorded before entries named one).
pub async fn is_revoked(
    db: &Db,
    iss: &str,
    jti: Option<&str>,
    sub: Option<&str>,
    client_id: Option<&str>,
    iat: i64,
) -> Result<bool, sqlx::Error> {
    let row: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM revocations WHERE (issuer = '' OR issuer = $5) AND ((kind = 'jti' AND value = $1) \
         OR (kind = 'subject' AND value = $2 AND revoked_at >= $4) \
         OR (kind = 'client' AND value = $3 AND revoked_at >= $4)) LIMIT 1",
    )
    .bind(jti)
    .bind(sub)
    .bind(client_id)
    .bind(iat)
    .bind(iss)
    .fetch_optional(&db.pool)
    .await?;
    Ok(row.is_some())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PropagationQuery {
    cursor: Option<i64>,
}

/// `GET /api/v1/revocations/propagation?cursor=N`: which edges have applied the feed change at `N`,
/// and how long after it each first polled with a cursor at or past it. Answered from the database
/// (`feed_changes`, `edge_cursor_marks`) merged with the edge list, so every replica gives the same answer.
async fn propagation(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PropagationQuery>,
) -> ApiResult<Json<edgewarden_api_types::Propagation>> {
    use edgewarden_api_types::{EdgePropagation, Propagation};

    principal.require(&[Role::Admin, Role::Auditor], "read revocation propagation")?;
    // Marks still waiting for their batch are written first, so the answer includes every poll seen.
    if let Err(e) = state.cursor_marks.flush(&state.db).await {
        tracing::warn!(error = %e, "cannot write the edges' cursor marks");
    }
    let cursor = match q.cursor {
        Some(c) if c > 0 => c,
        Some(c) => {
            return Err(ApiError::field(
                "cursor",
                format!("cursor: {c} is not a feed cursor (they start at 1)"),
            ))
        }
        None => {
            return Err(ApiError::field(
                "cursor",
                "cursor: required, the feed cursor of the revocation",
            ))
        }
    };
    let at_ms: Option<i64> = sqlx::query_scalar("SELECT at_ms FROM feed_changes WHERE cursor = $1")
        .bind(cursor)
        .fetch_optional(&state.db.pool)
        .await?;
    let at_ms = at_ms.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no feed change at cursor {cursor} (not made yet, or older than the {} h of propagation history)",
            PROPAGATION_HISTORY_MS / 3_600_000
        ))
    })?;
    let rows = sqlx::query(
        "SELECT edge, MIN(first_seen_ms) AS first_ms, MAX(cursor) AS last_cursor, MAX(first_seen_ms) AS last_ms \
         FROM edge_cursor_marks WHERE cursor >= $1 GROUP BY edge",
    )
    .bind(cursor)
    .fetch_all(&state.db.pool)
    .await?;
    // Per edge: first time at or past the cursor, newest cursor, and when it reached that one.
    let mut marks: HashMap<String, (i64, i64, i64)> = HashMap::new();
    for row in rows {
        marks.insert(
            row.try_get("edge")?,
            (
                row.try_get("first_ms")?,
                row.try_get("last_cursor")?,
                row.try_get("last_ms")?,
            ),
        );
    }
    let now_ms = now_ms();
    let now_s = now_ms / 1000;
    let row = |edge: String,
               feed_cursor: Option<i64>,
               last_poll: Option<i64>,
               mark: Option<(i64, i64, i64)>| {
        // Marks are written at once by whichever replica the edge polled; the edge list may lag by a flush.
        let feed_cursor = match (feed_cursor, mark) {
            (Some(c), Some((_, m, _))) => Some(c.max(m)),
            (c, m) => c.or(m.map(|m| m.1)),
        };
        let last_poll = match (last_poll, mark) {
            (Some(p), Some((_, _, ms))) => Some(p.max(ms / 1000)),
            (p, m) => p.or(m.map(|m| m.2 / 1000)),
        };
        let staleness_seconds = last_poll.map(|at| (now_s - at).max(0));
        EdgePropagation {
            applied: feed_cursor.is_some_and(|c| c >= cursor),
            applied_after_seconds: mark.map(|(first, _, _)| (first - at_ms).max(0) as f64 / 1000.0),
            feed_cursor,
            staleness_seconds,
            stale: staleness_seconds.is_none_or(|s| s > crate::edges::STALE_AFTER_SECONDS),
            edge,
        }
    };
    let mut edges: Vec<EdgePropagation> = Vec::new();
    for edge in crate::edges::all(&state).await? {
        let mark = marks.remove(&edge.name);
        edges.push(row(edge.name, edge.feed_cursor, edge.last_poll, mark));
    }
    // An edge that polled another replica since that replica last flushed its polls is known only by its marks.
    for (name, mark) in marks {
        edges.push(row(name, None, None, Some(mark)));
    }
    edges.sort_by(|a, b| a.edge.cmp(&b.edge));
    Ok(Json(Propagation {
        cursor,
        revoked_at: at_ms as f64 / 1000.0,
        now: now_ms as f64 / 1000.0,
        complete: edges.iter().all(|e| e.applied || e.stale),
        edges,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_round_trips_values_containing_colons() {
        for (kind, value, issuer) in [
            ("jti", "abc", ""),
            ("subject", "urn:user:42", ""),
            ("client", "", ""),
            ("jti", "::", ""),
            (
                "subject",
                "urn:user:42",
                "https://idp.example.com:8443/realms/a",
            ),
            ("client", "", "x"),
            ("jti", "@3:", "é:@"),
        ] {
            let c = Continuation {
                cursor: 42,
                kind: kind.into(),
                value: value.into(),
                issuer: issuer.into(),
            };
            let encoded = c.encode();
            assert!(!encoded.contains('='), "no padding: {encoded}");
            assert_eq!(Continuation::decode(&encoded).unwrap(), c);
        }
    }

    #[test]
    fn malformed_continuations_are_400_naming_after() {
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for after in [
            "".to_owned(),
            "garbage!".to_owned(),
            b64("42"),
            b64("42:jti"),
            b64("x:jti:a"),
            b64("-1:jti:a"),
            b64("42:token:a"),
            b64("42:jti@:a"),
            b64("42:jti@0:a"),
            b64("42:jti@9:abc"),
            b64("42:jti@x:abc"),
            b64("42:token@1:ab"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            match Continuation::decode(&after) {
                Err(ApiError::BadRequest {
                    field: Some(field),
                    message,
                }) => {
                    assert_eq!(field, "after", "{after:?}");
                    assert!(
                        message.contains("restart the listing without after"),
                        "{message}"
                    );
                }
                other => panic!("{after:?} gave {other:?}"),
            }
        }
    }
}
