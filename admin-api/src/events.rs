//! The event log: every token lifecycle event (issued, refreshed, revoked, first and last use) and
//! every admin action, written with [`record`] inside the caller's transaction so an event exists
//! exactly when its change committed. `GET /api/v1/events` queries it; `GET /api/v1/events/stream`
//! streams new events as server-sent events. A dispatcher task tails the table (woken locally and, with
//! PostgreSQL, by NOTIFY from other replicas) and fans events out to SSE subscribers and webhooks.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;

use crate::auth::{Principal, Role};
use crate::db::{now, Db, DbKind};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::revocations::{page_params, Page};
use crate::AppState;
pub use edgewarden_api_types::StoredEvent;

/// PostgreSQL NOTIFY channel that tells other replicas' dispatchers a new event committed.
pub const EVENTS_CHANNEL: &str = "edgewarden_events";

/// Every event kind the service records; webhooks subscribe to these names.
pub const KINDS: &[&str] = edgewarden_api_types::EVENT_KINDS;

/// An event about to be recorded.
#[derive(Clone, Debug)]
pub struct Event {
    kind: &'static str,
    actor: String,
    subject: Option<String>,
    client_id: Option<String>,
    jti: Option<String>,
    details: Value,
}

impl Event {
    /// An event of `kind` (one of [`KINDS`]) done by `actor` (`Principal::actor()`, `client:<id>` or `system:<what>`).
    pub fn new(kind: &'static str, actor: impl Into<String>) -> Event {
        debug_assert!(KINDS.contains(&kind), "unknown event kind {kind}");
        Event {
            kind,
            actor: actor.into(),
            subject: None,
            client_id: None,
            jti: None,
            details: Value::Object(Default::default()),
        }
    }

    /// The token subject (`sub`) the event concerns.
    pub fn subject(mut self, subject: impl Into<String>) -> Event {
        self.subject = Some(subject.into());
        self
    }

    /// The client the event concerns.
    pub fn client(mut self, client_id: impl Into<String>) -> Event {
        self.client_id = Some(client_id.into());
        self
    }

    /// The token (`jti`) the event concerns.
    pub fn jti(mut self, jti: impl Into<String>) -> Event {
        self.jti = Some(jti.into());
        self
    }

    /// Free-form details (a JSON object); never a token or secret.
    pub fn details(mut self, details: Value) -> Event {
        self.details = details;
        self
    }
}

/// Shared state of the event machinery: the live broadcast for SSE, the dispatcher's wake-up, and
/// per-kind counters for `/metrics`.
#[derive(Debug)]
pub struct EventBus {
    live: broadcast::Sender<Arc<StoredEvent>>,
    wake: Notify,
    recorded: std::sync::Mutex<HashMap<&'static str, u64>>,
    dispatched: AtomicU64,
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new()
    }
}

impl EventBus {
    /// A bus with room for 1,024 undelivered events per SSE subscriber.
    pub fn new() -> EventBus {
        EventBus {
            live: broadcast::channel(1024).0,
            wake: Notify::new(),
            recorded: std::sync::Mutex::new(HashMap::new()),
            dispatched: AtomicU64::new(0),
        }
    }

    /// A receiver of every event committed from now on (on any replica).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.live.subscribe()
    }

    /// Wakes the dispatcher: a new event may have committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Events recorded by this replica, per kind (for `/metrics`).
    pub fn recorded_counts(&self) -> Vec<(&'static str, u64)> {
        let map = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map.iter().map(|(k, v)| (*k, *v)).collect();
        out.sort();
        out
    }

    /// Events this replica's dispatcher has fanned out.
    pub fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Relaxed)
    }
}

/// A new time-ordered event id: 14 hex digits of Unix microseconds, then 8 random hex digits.
pub fn new_event_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!("evt_{micros:014x}{:08x}", rand::rngs::OsRng.next_u32())
}

/// The smallest id an event recorded at Unix second `at` can have.
fn id_floor(at: i64) -> String {
    format!("evt_{:014x}", (at.max(0) as u64).saturating_mul(1_000_000))
}

/// Records `event` on `conn` (a transaction, `&mut *tx`, or a pooled connection): it becomes visible,
/// streamed and delivered to webhooks only if that transaction commits. Returns the event id.
pub async fn record(
    bus: &EventBus,
    db: &Db,
    conn: &mut AnyConnection,
    event: Event,
) -> Result<String, sqlx::Error> {
    let id = new_event_id();
    sqlx::query("INSERT INTO events (id, at, kind, actor, subject, client_id, jti, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&id)
        .bind(now())
        .bind(event.kind)
        .bind(&event.actor)
        .bind(&event.subject)
        .bind(&event.client_id)
        .bind(&event.jti)
        .bind(event.details.to_string())
        .execute(&mut *conn)
        .await?;
    if db.kind == DbKind::Postgres {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(EVENTS_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    *bus.recorded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(event.kind)
        .or_default() += 1;
    bus.wake();
    Ok(id)
}

/// [`record`] on its own connection from the pool, for actions that have no transaction.
pub async fn record_now(state: &AppState, event: Event) -> Result<String, sqlx::Error> {
    let mut conn = state.db.pool.acquire().await?;
    record(&state.events, &state.db, &mut conn, event).await
}

/// [`record_now`] for call sites where a failure to log must not fail the action: logs and moves on.
pub async fn record_or_log(state: &AppState, event: Event) {
    let kind = event.kind;
    if let Err(e) = record_now(state, event).await {
        tracing::error!(error = %e, kind, "cannot record event");
    }
}

fn stored(row: &AnyRow) -> Result<StoredEvent, sqlx::Error> {
    let details: String = row.try_get("details")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        subject: row.try_get("subject")?,
        client_id: row.try_get("client_id")?,
        jti: row.try_get("jti")?,
        details: serde_json::from_str(&details).unwrap_or(Value::Null),
    })
}

const COLUMNS: &str = "id, at, kind, actor, subject, client_id, jti, details";

/// Events a late-committing transaction may still add behind the newest id seen: every
/// [`SWEEP_EVERY`] the dispatcher re-reads this many seconds back and skips ids it already delivered.
const LOOKBACK_SECONDS: i64 = 10;
/// How often the dispatcher sweeps the lookback window; between sweeps it reads only newer ids.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Most events read per query.
const BATCH: usize = 2000;

/// Starts the dispatcher: tails the events table and hands each new event, once, to the SSE
/// broadcast and the webhook queue. Woken by [`EventBus::wake`] (called by [`record`] on this replica
/// and by the listen loop on a NOTIFY from another), and at least once a second.
/// Ids are generated before commit, so an event can become visible behind newer ones; the periodic
/// sweep of the last [`LOOKBACK_SECONDS`] catches those, and a set of delivered ids prevents repeats.
pub fn spawn_dispatcher(
    db: Db,
    bus: Arc<EventBus>,
    webhooks: Arc<crate::webhooks::Dispatcher>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Only events recorded after start are streamed; older ones are in GET /api/v1/events.
        let mut newest = id_floor(now() - 1);
        let mut seen: VecDeque<String> = VecDeque::new();
        let mut seen_set: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut last_sweep = tokio::time::Instant::now();
        let mut more = false;
        loop {
            if !more {
                let _ = tokio::time::timeout(Duration::from_secs(1), bus.wake.notified()).await;
                // Let a transaction that just recorded an event commit before we look.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let sweep = last_sweep.elapsed() >= SWEEP_EVERY;
            let from = if sweep {
                id_floor(now() - LOOKBACK_SECONDS).min(newest.clone())
            } else {
                newest.clone()
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT {BATCH}"
            )))
            .bind(&from)
            .fetch_all(&db.pool)
            .await;
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "event dispatcher cannot read events");
                    more = false;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            more = rows.len() == BATCH;
            for row in &rows {
                let Ok(event) = stored(row) else { continue };
                if event.id > newest {
                    newest = event.id.clone();
                }
                if !seen_set.insert(event.id.clone()) {
                    continue;
                }
                seen.push_back(event.id.clone());
                let event = Arc::new(event);
                webhooks.enqueue(&db, &event).await;
                let _ = bus.live.send(event);
                bus.dispatched.fetch_add(1, Ordering::Relaxed);
            }
            if sweep && !more {
                last_sweep = tokio::time::Instant::now();
                // Ids older than the lookback (plus a margin) can no longer be returned by a sweep.
                let forget_below = id_floor(now() - LOOKBACK_SECONDS - 5);
                while seen.front().is_some_and(|id| *id < forget_below) {
                    if let Some(id) = seen.pop_front() {
                        seen_set.remove(&id);
                    }
                }
            }
        }
    })
}

/// Deletes events older than `retention_seconds`, then the oldest beyond `max_rows`, in short chunks.
pub async fn prune(db: &Db, retention_seconds: i64, max_rows: i64) -> Result<(), sqlx::Error> {
    crate::db::delete_in_chunks(db, "events", "at < $1", now() - retention_seconds).await?;
    let cut: Option<i64> =
        sqlx::query_scalar("SELECT at FROM events ORDER BY at DESC LIMIT 1 OFFSET $1")
            .bind(max_rows)
            .fetch_optional(&db.pool)
            .await?;
    if let Some(cut) = cut {
        crate::db::delete_in_chunks(db, "events", "at <= $1", cut).await?;
    }
    Ok(())
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/events", get(list))
        .route("/api/v1/events/stream", get(stream))
}

/// Filters of `GET /api/v1/events` (all optional, combined with AND).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Exact kind, or a prefix ending in `.*` (`token.*`).
    pub kind: Option<String>,
    /// Token subject.
    pub subject: Option<String>,
    /// Client id.
    pub client_id: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// Exact actor string.
    pub actor: Option<String>,
    /// Only events at or after this Unix second.
    pub since: Option<i64>,
    /// Only events before this Unix second.
    pub until: Option<i64>,
    /// Page size (1..=500, default 50).
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// Validates an event kind filter: a known kind or `<prefix>.*`.
fn kind_filter(kind: &str) -> ApiResult<(String, String)> {
    if let Some(prefix) = kind.strip_suffix(".*") {
        if KINDS.iter().any(|k| k.starts_with(&format!("{prefix}."))) {
            return Ok((String::new(), format!("{prefix}.")));
        }
    } else if KINDS.contains(&kind) {
        return Ok((kind.to_owned(), String::new()));
    }
    Err(ApiError::field(
        "kind",
        format!("kind: {kind:?} is not a known event kind or prefix like token.*"),
    ))
}

/// Reads a page of events matching `q`, newest first.
pub async fn query_events(db: &Db, q: &EventQuery) -> ApiResult<Page<StoredEvent>> {
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let (kind, prefix) = match q.kind.as_deref() {
        None | Some("") => (String::new(), String::new()),
        Some(k) => kind_filter(k)?,
    };
    if let (Some(since), Some(until)) = (q.since, q.until) {
        if until < since {
            return Err(ApiError::field(
                "until",
                format!("until: {until} is before since {since}"),
            ));
        }
    }
    let since = q.since.map(id_floor).unwrap_or_default();
    // Ids hold only hex digits after the prefix, so comparisons agree under any collation; an
    // open end is a time far in the future rather than a punctuation sentinel.
    let until = id_floor(q.until.unwrap_or(now() + 100 * 365 * 86_400));
    let binds = [
        kind,
        prefix,
        q.subject.clone().unwrap_or_default(),
        q.client_id.clone().unwrap_or_default(),
        q.jti.clone().unwrap_or_default(),
        q.actor.clone().unwrap_or_default(),
        since,
        until,
    ];
    // Every placeholder stays in the text so one binding order serves every combination; an unused
    // filter compares its placeholder with itself rather than `($5 = '' OR jti = $5)`, which SQLite
    // cannot answer from an index (it would scan the whole log).
    let clauses = [
        "kind = $1",
        "kind LIKE $2 || '%'",
        "subject = $3",
        "client_id = $4",
        "jti = $5",
        "actor = $6",
    ];
    // Without since or until the id range holds every event: leaving it out lets PostgreSQL count the
    // log over its narrowest index (`events_at`) instead of the table, the one cost of a first page.
    let mut filter = if q.since.is_none() && q.until.is_none() {
        String::from("WHERE $7 = $7 AND $8 = $8")
    } else {
        String::from("WHERE id >= $7 AND id < $8")
    };
    for (i, clause) in clauses.iter().enumerate() {
        if binds[i].is_empty() {
            filter.push_str(&format!(" AND ${n} = ${n}", n = i + 1));
        } else {
            filter.push_str(&format!(" AND {clause}"));
        }
    }
    let mut count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM events {filter}"
    )));
    for b in &binds {
        count = count.bind(b.clone());
    }
    let total = count.fetch_one(&db.pool).await?;
    let mut select = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM events {filter} ORDER BY id DESC LIMIT $9 OFFSET $10"
    )));
    for b in &binds {
        select = select.bind(b.clone());
    }
    let rows = select.bind(limit).bind(offset).fetch_all(&db.pool).await?;
    let items = rows.iter().map(stored).collect::<Result<Vec<_>, _>>()?;
    Ok(Page {
        items,
        total,
        limit,
        offset,
    })
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<Page<StoredEvent>>> {
    principal.require(&[Role::Admin, Role::Auditor], "read events")?;
    Ok(Json(query_events(&state.db, &q).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    kind: Option<String>,
}

/// Most events replayed to a stream that reconnects with `Last-Event-ID`.
const REPLAY_LIMIT: usize = 500;

/// `GET /api/v1/events/stream`: `event: <kind>`, `id: <event id>`, `data: <StoredEvent JSON>` for every
/// event committed from now on; `event: lagged` when this subscriber fell more than 1,024 events behind.
/// A client reconnecting with `Last-Event-ID` (browsers' EventSource does this) first gets the up to
/// 500 matching events recorded after that id, then the live ones. The stream ends within a second of
/// its credential's deletion, logout, expiry or role change. With every held-request slot taken (nine
/// tenths of `--max-connections`, shared with feed long-polls) it is refused with 429 and `Retry-After`.
async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Sse<impl futures_core::Stream<Item = Result<SseEvent, Infallible>>>> {
    principal.require(&[Role::Admin, Role::Auditor], "stream events")?;
    // Streams hold their connection: at most nine tenths of the connection bound, with the feed's long-polls.
    let held = state
        .held_requests
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::RateLimited { retry_after: 5 })?;
    let (kind, prefix) = match q.kind.as_deref() {
        None | Some("") => (String::new(), String::new()),
        Some(k) => kind_filter(k)?,
    };
    let matches = move |e: &StoredEvent| {
        (kind.is_empty() || e.kind == kind) && (prefix.is_empty() || e.kind.starts_with(&prefix))
    };
    // Subscribe before reading the backlog, so nothing committed in between is lost; events
    // that are in both are sent once.
    let rx = state.events.subscribe();
    let mut backlog: VecDeque<Arc<StoredEvent>> = VecDeque::new();
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        let valid = last.len() <= 40
            && last
                .strip_prefix("evt_")
                .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
        if !valid {
            return Err(ApiError::field(
                "last-event-id",
                format!("last-event-id: {last:?} is not an event id"),
            ));
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT {REPLAY_LIMIT}"
        )))
        .bind(last)
        .fetch_all(&state.db.pool)
        .await?;
        for row in &rows {
            let event = stored(row)?;
            if matches(&event) {
                backlog.push_back(Arc::new(event));
            }
        }
    }
    let replayed: std::collections::HashSet<String> =
        backlog.iter().map(|e| e.id.clone()).collect();
    let to_sse = |event: &StoredEvent| {
        SseEvent::default()
            .event(event.kind.clone())
            .id(event.id.clone())
            .data(serde_json::to_string(event).unwrap_or_default())
    };
    let state_for_recheck = state.clone();
    let state = (backlog, replayed, rx, matches);
    let stream = futures_util::stream::unfold(
        state,
        move |(mut backlog, replayed, mut rx, matches)| async move {
            if let Some(event) = backlog.pop_front() {
                return Some((Ok(to_sse(&event)), (backlog, replayed, rx, matches)));
            }
            loop {
                match rx.recv().await {
                    Ok(event) if matches(&event) && !replayed.contains(&event.id) => {
                        return Some((Ok(to_sse(&event)), (backlog, replayed, rx, matches)));
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let sse = SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}"));
                        return Some((Ok(sse), (backlog, replayed, rx, matches)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    // Ends within a second of the credential's deletion, logout, expiry or role change.
    let revoked = crate::auth::credential_revoked(
        state_for_recheck,
        headers,
        principal,
        crate::auth::Recheck::Database,
    );
    let stream = futures_util::StreamExt::take_until(stream, Box::pin(revoked));
    // The slot is released when the stream is dropped.
    let stream = futures_util::StreamExt::map(stream, move |event| {
        let _slot = &held;
        event
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
