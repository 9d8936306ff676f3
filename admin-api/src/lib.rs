//! EdgeWarden's admin API: the control plane that issues, refreshes, revokes and introspects tokens,
//! keeps the signing keys, and publishes the revocation feed the edges poll.
//! [`app`] builds the whole axum router from an [`AppState`]; `main.rs` only parses flags and serves it,
//! and tests drive it with `tower::ServiceExt::oneshot` without a socket.

pub mod anomalies;
pub mod api_keys;
pub mod auth;
pub mod clients;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod edges;
pub mod error;
pub mod events;
pub mod extract;
pub mod feed_cache;
pub mod feed_marks;
pub mod health;
pub mod held;
pub mod issuers;
pub mod keys;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod overview;
pub mod ratelimit;
pub mod revocations;
pub mod secrets;
pub mod serve;
pub mod session;
pub mod snapshot;
pub mod tokens;
pub mod usage;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::task::JoinHandle;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{ApiKeyCache, Role};
use crate::config::Config;
use crate::db::{Db, DbKind};
use crate::error::ApiError;
use crate::keys::KeyManager;
use crate::ratelimit::RateLimiter;
use crate::revocations::Feed;

/// Everything a handler can reach, behind one `Arc`: axum clones the state for every extractor of every
/// request, and ten thousand long-polling edges made the clone of a struct of twenty `Arc`s and a `String`
/// (and its drop) a measurable share of the replica's CPU in the fleet bench.
#[derive(Clone, Debug)]
pub struct AppState(Arc<AppShared>);

impl std::ops::Deref for AppState {
    type Target = AppShared;

    fn deref(&self) -> &AppShared {
        &self.0
    }
}

/// What [`AppState`] shares.
#[derive(Debug)]
pub struct AppShared {
    /// The configuration the process started with.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// Signing keys, JWKS and the introspection engine.
    pub keys: Arc<KeyManager>,
    /// The revocation feed's cursor and long-poll signal.
    pub feed: Arc<Feed>,
    /// Feed answers shared by the polls a change wakes together.
    pub feed_cache: Arc<feed_cache::FeedCache>,
    /// Edges' cursor marks waiting for their batch write.
    pub cursor_marks: Arc<feed_marks::CursorMarks>,
    /// The database's health as the replica's own probe last found it (`/healthz`).
    pub health: Arc<health::Health>,
    /// Credentials of held requests (long-polls, event streams), re-checked once each per tick.
    pub held_credentials: Arc<held::HeldCredentials>,
    /// Validated API keys, cached briefly.
    pub api_keys: Arc<ApiKeyCache>,
    /// Rate limit of dashboard logins, per address.
    pub login_limiter: Arc<RateLimiter>,
    /// Rate limit of the token endpoints, per caller.
    pub token_limiter: Arc<RateLimiter>,
    /// Bound on concurrent password hash computations.
    pub password_gate: Arc<ratelimit::PasswordGate>,
    /// Back-off per account after repeated wrong passwords.
    pub login_lockout: Arc<ratelimit::AccountLockout>,
    /// Slots for requests held open (event streams, waiting long-polls), fewer than the connection bound.
    pub held_requests: Arc<tokio::sync::Semaphore>,
    /// An argon2id hash that matches nothing, to make unknown-user logins as slow as known ones.
    pub dummy_hash: String,
    /// Bounds how many woken long-polls are answered at once (see `held::WakeGate`).
    pub wake_gate: held::WakeGate,
    /// The event log's live stream and dispatcher wake-up.
    pub events: Arc<events::EventBus>,
    /// Webhook secrets, delivery queue and worker wake-up.
    pub webhooks: Arc<webhooks::Dispatcher>,
    /// This replica's Prometheus counters.
    pub metrics: Arc<metrics::Metrics>,
    /// The usage ingestion queue, writer and detector of this replica.
    pub usage: Arc<usage::Ingestor>,
    /// The edge instances this replica saw polling, and which configuration hashes are stored.
    pub edge_instances: Arc<edges::Instances>,
    /// Background tasks (cursor refresh, LISTEN); aborted when the last clone of the state is dropped.
    _tasks: TaskGuard,
}

#[derive(Debug)]
struct TaskGuard(Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl AppState {
    /// Opens and migrates the database, loads or creates the signing keys, reads the feed cursor and
    /// starts the background tasks (periodic refresh; LISTEN/NOTIFY with PostgreSQL).
    pub async fn new(config: Config) -> anyhow::Result<AppState> {
        let db = Db::connect(&config).await?;
        let keys = Arc::new(KeyManager::init(&db, &config).await?);
        let feed = Arc::new(Feed::new(revocations::db_cursor(&db).await?));
        let mut tasks = vec![tokio::spawn(refresh_loop(
            db.clone(),
            keys.clone(),
            feed.clone(),
            config.refresh_interval_seconds,
        ))];
        let events = Arc::new(events::EventBus::new());
        let webhooks = Arc::new(webhooks::Dispatcher::new(
            keys::load_master_key(&config.master_key)?,
            config.webhooks.clone(),
        )?);
        tasks.push(events::spawn_dispatcher(
            db.clone(),
            events.clone(),
            webhooks.clone(),
        ));
        tasks.push(webhooks::spawn_worker(db.clone(), webhooks.clone()));
        tasks.push(usage::spawn_maintenance(
            db.clone(),
            feed.clone(),
            events.clone(),
            config.usage.clone(),
        ));
        let cursor_marks = Arc::new(feed_marks::CursorMarks::default());
        tasks.push(feed_marks::spawn_flusher(db.clone(), cursor_marks.clone()));
        let metrics = Arc::new(metrics::Metrics::new());
        let (usage, usage_tasks) = usage::Ingestor::start(
            db.clone(),
            events.clone(),
            feed.clone(),
            metrics.clone(),
            &config,
        );
        tasks.extend(usage_tasks);
        let edge_instances = Arc::new(edges::Instances::new());
        tasks.push(edges::spawn_flush(
            db.clone(),
            edge_instances.clone(),
            Duration::from_secs(config.usage.edge_flush_seconds),
        ));
        if db.kind == DbKind::Postgres {
            tasks.push(listen_loop(&db, keys.clone(), feed.clone(), events.clone()).await?);
        }
        let feed_cache = Arc::new(feed_cache::FeedCache::default());
        tasks.push(snapshot::spawn_keeper(
            db.clone(),
            feed.clone(),
            feed_cache.clone(),
        ));
        let health = Arc::new(health::Health::default());
        // The first health check finds a fresh result: the store was just opened, so this answers at once.
        if let Err(e) = health.probe(&db).await {
            tracing::warn!(error = %e, "the database did not answer the first health probe");
        }
        tasks.push(health::spawn_prober(db.clone(), health.clone()));
        tasks.extend(db.spawn_checkpointer());
        let argon = config.argon2.clone();
        let dummy_hash = tokio::task::spawn_blocking(move || secrets::dummy_hash(&argon)).await?;
        Ok(AppState(Arc::new(AppShared {
            wake_gate: held::WakeGate::new(config.serve.max_held_requests()),
            health,
            api_keys: Arc::new(ApiKeyCache::new(Duration::from_secs(
                config.api_key_cache_seconds,
            ))),
            login_limiter: Arc::new(RateLimiter::new(config.login_rate_limit)),
            token_limiter: Arc::new(RateLimiter::new(config.token_rate_limit)),
            feed_cache,
            cursor_marks,
            held_credentials: Arc::new(held::HeldCredentials::default()),
            held_requests: Arc::new(tokio::sync::Semaphore::new(
                config.serve.max_held_requests(),
            )),
            password_gate: Arc::new(ratelimit::PasswordGate::new(
                config.password_concurrency,
                config.password_wait,
            )),
            login_lockout: Arc::new(ratelimit::AccountLockout::new(
                config.login_lockout_failures,
                config.login_lockout,
                config.login_lockout_max,
            )),
            config: Arc::new(config),
            db,
            keys,
            feed,
            dummy_hash,
            events,
            webhooks,
            metrics,
            usage: Arc::new(usage),
            edge_instances,
            _tasks: TaskGuard(tasks),
        })))
    }

    /// When no admin user exists, creates `admin` with a random password and returns the password
    /// (to be printed once); otherwise `None`.
    pub async fn bootstrap_admin(&self) -> anyhow::Result<Option<String>> {
        let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
            .fetch_one(&self.db.pool)
            .await?;
        if admins > 0 {
            return Ok(None);
        }
        let password = secrets::random_secret("");
        match auth::create_user(
            &self.db,
            &self.config.argon2,
            "admin",
            &password,
            Role::Admin,
        )
        .await
        {
            Ok(_) => Ok(Some(password)),
            // Another replica bootstrapped at the same moment.
            Err(ApiError::Conflict(_)) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot create the first admin: {e}")),
        }
    }
}

/// Re-reads the feed cursor and signing keys periodically: the safety net under LISTEN/NOTIFY, and
/// how retired keys leave the JWKS once their last token has expired.
async fn refresh_loop(db: Db, keys: Arc<KeyManager>, feed: Arc<Feed>, every: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(every.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tick.tick().await;
        rounds += 1;
        match revocations::db_cursor(&db).await {
            Ok(cursor) => feed.advance(cursor),
            Err(e) => tracing::warn!(error = %e, "cannot refresh the feed cursor"),
        }
        // Keys change rarely; every 12th round is enough (a minute with the default 5 s).
        if rounds % 12 == 0 {
            if let Err(e) = keys.reload(&db).await {
                tracing::warn!(error = format!("{e:#}"), "cannot reload signing keys");
            }
            // Feed entries whose tokens have all expired are gone from snapshots; delete them a day later.
            let cutoff = db::now() - 86_400;
            if let Err(e) = sqlx::query("DELETE FROM revocations WHERE expires_at < $1")
                .bind(cutoff)
                .execute(&db.pool)
                .await
            {
                tracing::warn!(error = %e, "cannot prune expired revocations");
            }
        }
    }
}

/// Subscribes to the PostgreSQL channels other replicas notify on, and wakes long-polls at once.
async fn listen_loop(
    db: &Db,
    keys: Arc<KeyManager>,
    feed: Arc<Feed>,
    events: Arc<events::EventBus>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await?;
    listener
        .listen_all([
            revocations::FEED_CHANNEL,
            keys::KEYS_CHANNEL,
            events::EVENTS_CHANNEL,
        ])
        .await?;
    let db = db.clone();
    Ok(tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(n) if n.channel() == revocations::FEED_CHANNEL => {
                    if let Ok(cursor) = n.payload().parse::<i64>() {
                        feed.advance(cursor);
                    }
                }
                Ok(n) if n.channel() == events::EVENTS_CHANNEL => events.wake(),
                Ok(_) => {
                    if let Err(e) = keys.reload(&db).await {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "cannot reload signing keys after notification"
                        );
                    }
                }
                Err(e) => {
                    // PgListener reconnects on the next recv; notifications sent meanwhile are caught by refresh_loop.
                    tracing::warn!(error = %e, "postgres listener error");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(cursor) = revocations::db_cursor(&db).await {
                        feed.advance(cursor);
                    }
                }
            }
        }
    }))
}

/// The complete HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .merge(keys::router())
        .merge(session::router())
        .merge(api_keys::router())
        .merge(clients::router())
        .merge(tokens::router())
        .merge(revocations::router())
        .merge(snapshot::router())
        .merge(issuers::router())
        .merge(oauth::router())
        .merge(events::router())
        .merge(usage::router().route_layer(axum::middleware::from_fn_with_state(state.clone(), edges::usage_config_hint)))
        .merge(edges::router())
        .merge(anomalies::router())
        .merge(webhooks::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .merge(overview::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), edges::feed_config_hint))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::enforce_roles))
        .route_layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        // Everything no route matched: the dashboard's files and client routes, or the JSON 404 under the
        // API prefixes. A fallback, not routes, so it is outside both route layers above: the dashboard is
        // public (no row in `openapi::OPERATIONS`, which lists API operations only) and the metrics get no
        // label per arbitrary path.
        .fallback(dashboard::fallback)
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, axum::Json(json!({"error": {"code": "method_not_allowed", "message": "method not allowed on this route"}})))
        })
        // gzip or brotli when the client accepts it; the default predicate leaves alone small bodies, images
        // and `text/event-stream`, so the event stream still flushes event by event.
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(axum::middleware::from_fn(no_store_for_mutations))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(state)
}

/// `Cache-Control: no-store` on every answer to a mutation that sets none: those are the answers that
/// carry a secret (a token, an API key, a client or webhook secret, a session's CSRF token), which no
/// browser or proxy cache may keep.
async fn no_store_for_mutations(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mutation = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let mut response = next.run(request).await;
    if mutation && !response.headers().contains_key(header::CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    // The probe's last result (`health.rs`); only when it is stale does this request ask the database.
    let healthy = state.health.healthy_at(std::time::Instant::now())
        || match state.health.probe(&state.db).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "health check failed");
                false
            }
        };
    if healthy {
        (
            StatusCode::OK,
            axum::Json(json!({"status": "ok", "feed_cursor": state.feed.current()})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "unavailable"})),
        )
    }
}
