//! `GET /api/v1/edges`: every edge known by name, with its last feed poll, the cursor it polled with,
//! staleness and its last usage report, and under each name every Envoy instance that polled as it, with
//! its own poll, cursor, staleness and the hash of the configuration it runs.
//! Polls are tracked in each replica's memory (cheap enough for thousands of edges polling every second)
//! and flushed to the `edges` and `edge_instances` tables periodically, in one transaction per flush; a poll
//! itself never writes (a 304 touches no database, and the burst of advancing polls after a revocation does
//! not queue behind SQLite's writer). This view merges the tables with this replica's memory, so it is right
//! on any replica.
//!
//! Edges report the configuration they run, secrets left out (`edgewarden_core::config::redacted_config`):
//! its hash on every poll and every usage report (`x-edgewarden-config-hash`), and the document itself with
//! `POST /api/v1/edges/config` when a poll's or a usage report's answer says the hash is unknown
//! (`x-edgewarden-config: unknown`). `GET /api/v1/edges/configs/{hash}` answers the document.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use edgewarden_core::config::{config_hash, unredacted_secrets};
use serde::Deserialize;
use sqlx::Row as _;
use tokio::task::JoinHandle;

use crate::auth::{Principal, Role};
use crate::db::{now, Db};
use crate::error::{ApiError, ApiResult};
use crate::extract::{read_limited, require_json, Json, Query};
use crate::revocations::{page_params, Page, EDGE_HEADER};
use crate::AppState;
pub use edgewarden_api_types::{
    Edge, EdgeConfig, EdgeConfigAccepted, EdgeInstance, EDGE_CONFIG_MAX_BYTES,
};

/// Seconds without a feed poll after which an edge counts as stale (overview, propagation). A healthy
/// edge long-polls (at most `--feed-max-wait`, 30 s by default) and other replicas see its polls within
/// `--edge-flush` (10 s), so 120 s is well past a healthy cycle and well before an edge's own staleness
/// limit (`max_staleness_seconds`, 300 s by default) makes it refuse requests.
/// The bound lives in `api-types` so the dashboard colours edges by the same numbers.
pub const STALE_AFTER_SECONDS: i64 = edgewarden_api_types::EDGE_STALE_AFTER_SECONDS;
/// Seconds without a feed poll after which a stale edge counts as silent: ten stale bounds.
pub const SILENT_AFTER_SECONDS: i64 = edgewarden_api_types::EDGE_SILENT_AFTER_SECONDS;

/// Header an edge sends its instance id in: the id its Envoy process made at start, shared by its worker VMs.
pub const INSTANCE_HEADER: &str = "x-edgewarden-instance";
/// Header an edge sends Envoy's node id in (`--service-node`), for people to recognise the instance.
pub const NODE_HEADER: &str = "x-edgewarden-node";
/// Header an edge sends the hash of its configuration in (lower-case hex SHA-256 of the redacted document).
pub const CONFIG_HASH_HEADER: &str = "x-edgewarden-config-hash";
/// Header of a feed answer that asks the edge for its configuration: `unknown` when the admin API has no
/// document for the hash the poll carried.
pub const CONFIG_HINT_HEADER: &str = "x-edgewarden-config";
/// The feed's path, whose answers carry [`CONFIG_HINT_HEADER`].
const FEED_PATH: &str = "/api/v1/revocations/feed";
/// The usage reports' path, whose answers carry [`CONFIG_HINT_HEADER`] too.
const USAGE_PATH: &str = "/api/v1/usage";
/// Instances one replica tracks in memory; past it, new ones are neither tracked nor written.
const MAX_INSTANCES: usize = 100_000;
/// Hashes one replica remembers as known or as looked up and missing.
const MAX_HASHES: usize = 10_000;
/// How long a hash looked up and missing is answered as unknown without looking again (another replica may
/// have received the document meanwhile).
const UNKNOWN_RECHECK_SECONDS: i64 = 5;
/// Rows per statement when the periodic flush writes instances' polls.
const FLUSH_CHUNK: usize = 400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeQuery {
    /// Only edges whose last poll is older than this many seconds (or that never polled).
    stale_after: Option<i64>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// The last poll this replica saw from one instance of an edge.
#[derive(Clone, Debug, PartialEq, Eq)]
struct InstancePoll {
    node: Option<String>,
    address: String,
    first_seen: i64,
    last_poll: i64,
    cursor: i64,
    config_hash: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    polls: HashMap<(String, String), InstancePoll>,
    known: HashSet<String>,
    /// Hashes looked up and not found, with when (Unix seconds).
    unknown: HashMap<String, i64>,
}

/// This replica's view of edge instances and of which configuration hashes the database holds.
#[derive(Debug, Default)]
pub struct Instances {
    inner: Mutex<Inner>,
}

impl Instances {
    /// An empty view.
    pub fn new() -> Instances {
        Instances::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a poll; true when it changed what the database should hold (an instance new to this replica, a
    /// cursor that advanced, a changed configuration or node); the periodic flush writes it.
    fn record(&self, edge: &str, instance: &str, poll: InstancePoll) -> bool {
        let mut inner = self.lock();
        let key = (edge.to_owned(), instance.to_owned());
        let room = inner.polls.len() < MAX_INSTANCES;
        match inner.polls.get_mut(&key) {
            Some(previous) => {
                let write = poll.cursor > previous.cursor
                    || poll.config_hash != previous.config_hash
                    || poll.node != previous.node;
                let first_seen = previous.first_seen;
                *previous = InstancePoll { first_seen, ..poll };
                write
            }
            None if room => {
                inner.polls.insert(key, poll);
                true
            }
            None => false,
        }
    }

    /// Whether the database is known to hold `hash`: `Some(true)` known, `Some(false)` looked up and missing
    /// moments ago, `None` not known either way (look it up).
    fn hash_state(&self, hash: &str, now: i64) -> Option<bool> {
        let inner = self.lock();
        if inner.known.contains(hash) {
            return Some(true);
        }
        inner
            .unknown
            .get(hash)
            .filter(|at| now - **at < UNKNOWN_RECHECK_SECONDS)
            .map(|_| false)
    }

    fn set_known(&self, hash: &str, known: bool, now: i64) {
        let mut inner = self.lock();
        if known {
            inner.unknown.remove(hash);
            if inner.known.len() < MAX_HASHES {
                inner.known.insert(hash.to_owned());
            }
        } else {
            if inner.unknown.len() >= MAX_HASHES {
                inner
                    .unknown
                    .retain(|_, at| now - *at < UNKNOWN_RECHECK_SECONDS);
            }
            if inner.unknown.len() < MAX_HASHES {
                inner.unknown.insert(hash.to_owned(), now);
            }
        }
    }

    /// Takes `hash` as the configuration of an instance this replica tracks (from a usage report, which says
    /// nothing about polls); an instance it does not track is left to its polls. True when it changed; the
    /// periodic flush writes it with the instance's next poll.
    fn note_config(&self, edge: &str, instance: &str, hash: &str) -> bool {
        let mut inner = self.lock();
        let key = (edge.to_owned(), instance.to_owned());
        match inner.polls.get_mut(&key) {
            Some(poll) if poll.config_hash.as_deref() != Some(hash) => {
                poll.config_hash = Some(hash.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Whether a poll carrying `hash` is to be told the admin API lacks its document: looked up and missing,
    /// and not stored since.
    fn asks_for(&self, hash: &str) -> bool {
        let inner = self.lock();
        !inner.known.contains(hash) && inner.unknown.contains_key(hash)
    }

    fn snapshot(&self) -> Vec<((String, String), InstancePoll)> {
        let inner = self.lock();
        inner
            .polls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/edges", get(list))
        .route("/api/v1/edges/config", post(upload_config))
        .route("/api/v1/edges/configs/{hash}", get(get_config))
}

/// An instance id as edges send it: 1 to 64 letters, digits, `.`, `_` or `-`; anything else counts as none.
fn instance_of(headers: &HeaderMap) -> String {
    headers
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .unwrap_or_default()
        .to_owned()
}

/// Envoy's node id as the edge sent it: at most 200 visible characters, else none.
fn node_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200 && !v.chars().any(char::is_control))
        .map(str::to_owned)
}

/// Whether `hash` is a configuration hash: 64 lower-case hex digits.
fn is_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hash_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONFIG_HASH_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|h| is_hash(h))
        .map(str::to_owned)
}

/// The feed handler's hook, after the poll's edge name was checked against its key: records the instance
/// in this replica's memory (the periodic flush writes it) and,
/// when its configuration hash is not known to be stored, looks the hash up (at most every few seconds),
/// so the answer can ask for the document. Failures are logged; the poll is answered regardless.
pub async fn record_poll(
    state: &AppState,
    edge: &str,
    headers: &HeaderMap,
    since: i64,
    address: &str,
    at_ms: i64,
) {
    let at = at_ms / 1000;
    let instance = instance_of(headers);
    let poll = InstancePoll {
        node: node_of(headers),
        address: address.to_owned(),
        first_seen: at,
        last_poll: at,
        cursor: since,
        config_hash: hash_of(headers),
    };
    let hash = poll.config_hash.clone();
    // Written by the periodic flush (`spawn_flush`), never by the poll itself: after a revocation every
    // edge's next poll advances its cursor, and ten thousand single-row writes in that second kept the
    // next revocation waiting for SQLite's writer for seconds (the fleet bench, issue 12).
    let _ = state.edge_instances.record(edge, &instance, poll.clone());
    if let Some(hash) = hash {
        look_hash_up(state, edge, &hash, at).await;
    }
}

/// Looks `hash` up in the database unless this replica knows, or looked moments ago, whether it is there;
/// failures are logged and leave it unknown either way.
async fn look_hash_up(state: &AppState, edge: &str, hash: &str, at: i64) {
    if state.edge_instances.hash_state(hash, at).is_none() {
        match config_stored(&state.db, hash).await {
            Ok(known) => state.edge_instances.set_known(hash, known, at),
            Err(e) => {
                tracing::warn!(error = %e, edge, "cannot look the edge's configuration hash up")
            }
        }
    }
}

async fn config_stored(db: &Db, hash: &str) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM edge_configs WHERE hash = $1")
        .bind(hash)
        .fetch_optional(&db.pool)
        .await?;
    Ok(found.is_some())
}

/// Middleware on the feed: a successful answer to a poll whose configuration hash the admin API lacks
/// carries `x-edgewarden-config: unknown`, and the edge then posts the document once. Decided from
/// memory ([`record_poll`] looked the hash up when the poll arrived).
pub async fn feed_config_hint(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let hash = (request.uri().path() == FEED_PATH)
        .then(|| hash_of(request.headers()))
        .flatten();
    let mut response = next.run(request).await;
    if let Some(hash) = hash {
        let answered = response.status().is_success() || response.status().as_u16() == 304;
        if answered && state.edge_instances.asks_for(&hash) {
            response
                .headers_mut()
                .insert(CONFIG_HINT_HEADER, HeaderValue::from_static("unknown"));
        }
    }
    response
}

/// Middleware on the usage routes: an accepted usage report carries the edge's configuration hash like a
/// poll (`x-edgewarden-config-hash`, with `x-edgewarden-edge` and `x-edgewarden-instance`). The hash is
/// looked up as a poll's is; an instance this replica tracks takes it as its configuration (its poll, cursor
/// and node stay the poll's); and when the admin API lacks the document the answer carries
/// `x-edgewarden-config: unknown`, so the edge posts it. A report the handler refused, or whose key may not
/// act as the edge it names, changes nothing.
pub async fn usage_config_hint(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let reported = (request.method() == axum::http::Method::POST
        && request.uri().path() == USAGE_PATH)
        .then(|| {
            let headers = request.headers();
            let edge = headers
                .get(EDGE_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|n| !n.is_empty() && n.len() <= 200)?
                .to_owned();
            // Set by `auth::enforce_roles`, which runs before this route layer.
            let principal = request.extensions().get::<Principal>()?;
            principal.require_edge(&edge).ok()?;
            Some((edge, instance_of(headers), hash_of(headers)?))
        })
        .flatten();
    let mut response = next.run(request).await;
    let Some((edge, instance, hash)) = reported else {
        return response;
    };
    if !response.status().is_success() {
        return response;
    }
    let at = now();
    state.edge_instances.note_config(&edge, &instance, &hash);
    look_hash_up(&state, &edge, &hash, at).await;
    if state.edge_instances.asks_for(&hash) {
        response
            .headers_mut()
            .insert(CONFIG_HINT_HEADER, HeaderValue::from_static("unknown"));
    }
    response
}

/// Upserts instances' polls; a row keeps the newest poll's address, node, cursor and configuration.
async fn write_instances(
    db: &Db,
    rows: &[((&str, &str), &InstancePoll)],
) -> Result<(), sqlx::Error> {
    // A short transaction per chunk in a bulk writer's turn: ten thousand edges' polls in one transaction
    // held SQLite's writer for a quarter of a second, and a revocation waited for it (the fleet bench).
    for chunk in rows.chunks(FLUSH_CHUNK) {
        let newer =
            "edge_instances.last_poll IS NULL OR excluded.last_poll >= edge_instances.last_poll";
        let sql = format!(
            "INSERT INTO edge_instances (edge, instance, node, address, first_seen, last_poll, feed_cursor, config_hash) \
             VALUES {} ON CONFLICT (edge, instance) DO UPDATE SET \
             node = CASE WHEN {newer} THEN excluded.node ELSE edge_instances.node END, \
             address = CASE WHEN {newer} THEN excluded.address ELSE edge_instances.address END, \
             feed_cursor = CASE WHEN {newer} THEN excluded.feed_cursor ELSE edge_instances.feed_cursor END, \
             config_hash = CASE WHEN {newer} THEN excluded.config_hash ELSE edge_instances.config_hash END, \
             first_seen = CASE WHEN excluded.first_seen < edge_instances.first_seen THEN excluded.first_seen ELSE edge_instances.first_seen END, \
             last_poll = CASE WHEN {newer} THEN excluded.last_poll ELSE edge_instances.last_poll END",
            crate::feed_marks::row_placeholders(db.kind, chunk.len(), 8)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((edge, instance), poll) in chunk {
            query = query
                .bind(*edge)
                .bind(*instance)
                .bind(poll.node.clone())
                .bind(poll.address.clone())
                .bind(poll.first_seen)
                .bind(poll.last_poll)
                .bind(poll.cursor)
                .bind(poll.config_hash.clone());
        }
        let _turn = db.bulk_write_turn().await;
        query.execute(&db.pool).await?;
    }
    Ok(())
}

/// Writes, every `every`, the polls this replica saw since it last wrote them, so other replicas see the
/// instances' last polls within that time (the `--edge-flush` of the `edges` table).
pub fn spawn_flush(db: Db, instances: Arc<Instances>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written: HashMap<(String, String), i64> = HashMap::new();
        loop {
            tick.tick().await;
            let due: Vec<((String, String), InstancePoll)> = instances
                .snapshot()
                .into_iter()
                .filter(|(key, poll)| written.get(key).is_none_or(|at| poll.last_poll > *at))
                .collect();
            if due.is_empty() {
                continue;
            }
            let rows: Vec<((&str, &str), &InstancePoll)> = due
                .iter()
                .map(|((edge, instance), poll)| ((edge.as_str(), instance.as_str()), poll))
                .collect();
            match write_instances(&db, &rows).await {
                Ok(()) => {
                    for (key, poll) in due {
                        written.insert(key, poll.last_poll);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot flush the edge instances' polls"),
            }
        }
    })
}

fn instance_from(instance: String, poll: &InstancePoll) -> EdgeInstance {
    EdgeInstance {
        instance,
        node: poll.node.clone(),
        address: Some(poll.address.clone()),
        last_poll: Some(poll.last_poll),
        feed_cursor: Some(poll.cursor),
        cursor_lag: None,
        staleness_seconds: None,
        config_hash: poll.config_hash.clone(),
        config_known: false,
        first_seen: poll.first_seen,
    }
}

/// Every edge, merged from the database and this replica's memory, sorted by name, each with its instances.
pub async fn all(state: &AppState) -> Result<Vec<Edge>, sqlx::Error> {
    let now = now();
    let current = state.feed.current();
    let rows = sqlx::query("SELECT name, address, last_poll, feed_cursor, last_report, reports, events, first_seen FROM edges")
        .fetch_all(&state.db.pool)
        .await?;
    let mut edges: BTreeMap<String, Edge> = BTreeMap::new();
    let empty = |name: String, first_seen: i64| Edge {
        name,
        address: None,
        last_poll: None,
        feed_cursor: None,
        cursor_lag: None,
        staleness_seconds: None,
        last_report: None,
        reports: 0,
        usage_events: 0,
        first_seen,
        instances: Vec::new(),
        configs_differ: false,
    };
    for r in rows {
        let edge = Edge {
            name: r.try_get("name")?,
            address: r.try_get("address")?,
            last_poll: r.try_get("last_poll")?,
            feed_cursor: r.try_get("feed_cursor")?,
            last_report: r.try_get("last_report")?,
            reports: r.try_get("reports")?,
            usage_events: r.try_get("events")?,
            ..empty(String::new(), r.try_get("first_seen")?)
        };
        edges.insert(edge.name.clone(), edge);
    }
    for poll in state.feed.edges() {
        let edge = edges
            .entry(poll.name.clone())
            .or_insert_with(|| empty(poll.name.clone(), poll.last_poll));
        if edge.last_poll.is_none_or(|at| poll.last_poll >= at) {
            edge.last_poll = Some(poll.last_poll);
            edge.feed_cursor = Some(poll.cursor);
            edge.address = Some(poll.address.clone());
        }
    }
    // Instances: the table, overridden by this replica's newer polls.
    let mut instances: BTreeMap<(String, String), EdgeInstance> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT edge, instance, node, address, first_seen, last_poll, feed_cursor, config_hash FROM edge_instances",
    )
    .fetch_all(&state.db.pool)
    .await?;
    for r in rows {
        let key: (String, String) = (r.try_get("edge")?, r.try_get("instance")?);
        instances.insert(
            key.clone(),
            EdgeInstance {
                instance: key.1,
                node: r.try_get("node")?,
                address: r.try_get("address")?,
                last_poll: r.try_get("last_poll")?,
                feed_cursor: r.try_get("feed_cursor")?,
                cursor_lag: None,
                staleness_seconds: None,
                config_hash: r.try_get("config_hash")?,
                config_known: false,
                first_seen: r.try_get("first_seen")?,
            },
        );
    }
    for ((edge, instance), poll) in state.edge_instances.snapshot() {
        let key = (edge, instance.clone());
        match instances.get_mut(&key) {
            Some(row) if row.last_poll.is_some_and(|at| at > poll.last_poll) => {}
            Some(row) => {
                let first_seen = row.first_seen.min(poll.first_seen);
                *row = EdgeInstance {
                    first_seen,
                    ..instance_from(instance, &poll)
                };
            }
            None => {
                instances.insert(key, instance_from(instance, &poll));
            }
        }
    }
    let known: HashSet<String> = sqlx::query_scalar("SELECT hash FROM edge_configs")
        .fetch_all(&state.db.pool)
        .await?
        .into_iter()
        .collect();
    for ((name, _), instance) in instances {
        let edge = edges
            .entry(name.clone())
            .or_insert_with(|| empty(name, instance.first_seen));
        // A poll another replica wrote to the instances table but not yet to the edges table.
        if let Some(at) = instance.last_poll {
            if edge.last_poll.is_none_or(|seen| at > seen) {
                edge.last_poll = Some(at);
                edge.feed_cursor = instance.feed_cursor;
                edge.address = instance.address.clone();
            }
        }
        edge.instances.push(instance);
    }
    Ok(edges
        .into_values()
        .map(|mut e| {
            e.staleness_seconds = e.last_poll.map(|at| (now - at).max(0));
            e.cursor_lag = e.feed_cursor.map(|c| (current - c).max(0));
            if e.instances.is_empty() && e.last_poll.is_some() {
                // Polls seen only by name (a filter that sends no instance id, seen before instances were
                // recorded): one unnamed instance.
                e.instances.push(EdgeInstance {
                    instance: String::new(),
                    node: None,
                    address: e.address.clone(),
                    last_poll: e.last_poll,
                    feed_cursor: e.feed_cursor,
                    cursor_lag: None,
                    staleness_seconds: None,
                    config_hash: None,
                    config_known: false,
                    first_seen: e.first_seen,
                });
            }
            for i in &mut e.instances {
                i.staleness_seconds = i.last_poll.map(|at| (now - at).max(0));
                i.cursor_lag = i.feed_cursor.map(|c| (current - c).max(0));
                i.config_known = i.config_hash.as_ref().is_some_and(|h| known.contains(h));
            }
            e.instances
                .sort_by(|a, b| (a.first_seen, &a.instance).cmp(&(b.first_seen, &b.instance)));
            let hashes: HashSet<&str> = e
                .instances
                .iter()
                .filter_map(|i| i.config_hash.as_deref())
                .collect();
            e.configs_differ = hashes.len() > 1;
            e
        })
        .collect())
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<EdgeQuery>,
) -> ApiResult<Json<Page<Edge>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list edges")?;
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let mut edges = all(&state).await?;
    if let Some(after) = q.stale_after {
        edges.retain(|e| e.staleness_seconds.is_none_or(|s| s > after));
    }
    let total = edges.len() as i64;
    let items = edges
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}

/// `POST /api/v1/edges/config`: an edge reports the configuration it runs, secrets left out. The body is
/// the redacted plugin configuration exactly as the edge hashed it; `x-edgewarden-edge` names the edge
/// (checked against the key like a feed poll) and `x-edgewarden-instance` the instance. A document that still
/// carries `control_plane.api_key` or inline key material is refused, so no secret is ever stored.
async fn upload_config(
    State(state): State<AppState>,
    principal: Principal,
    request: Request,
) -> ApiResult<Json<EdgeConfigAccepted>> {
    principal.require(&[Role::Admin, Role::Edge], "report an edge configuration")?;
    let headers = request.headers().clone();
    let edge = headers
        .get(EDGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| !n.is_empty() && n.len() <= 200)
        .ok_or_else(|| {
            ApiError::field(
                EDGE_HEADER,
                format!("{EDGE_HEADER}: required, the edge name the configuration runs under (1 to 200 characters)"),
            )
        })?
        .to_owned();
    principal.require_edge(&edge)?;
    require_json(&headers)?;
    let body = read_limited(request, EDGE_CONFIG_MAX_BYTES, "edge configuration").await?;
    let document: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the edge configuration is not JSON ({e}): send the plugin configuration the filter reports"
        ))
    })?;
    if !document.is_object() {
        return Err(ApiError::bad_request(
            "the edge configuration must be a JSON object (the plugin configuration)",
        ));
    }
    let secrets = unredacted_secrets(&document);
    if !secrets.is_empty() {
        return Err(ApiError::bad_request(format!(
            "the edge configuration carries secrets at {}: replace each with \"{}\" before sending (the filter does)",
            secrets.join(", "),
            edgewarden_core::config::REDACTED
        )));
    }
    let hash = config_hash(&body);
    if let Some(claimed) = headers.get(CONFIG_HASH_HEADER) {
        if claimed.to_str().ok().map(str::trim) != Some(hash.as_str()) {
            return Err(ApiError::field(
                CONFIG_HASH_HEADER,
                format!("{CONFIG_HASH_HEADER}: does not match the body, whose SHA-256 is {hash}; send the document exactly as hashed"),
            ));
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let stored = sqlx::query(
        "INSERT INTO edge_configs (hash, document, first_seen, edge, instance) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (hash) DO NOTHING",
    )
    .bind(&hash)
    .bind(text)
    .bind(now())
    .bind(&edge)
    .bind(instance_of(&headers))
    .execute(&state.db.pool)
    .await?
    .rows_affected()
        > 0;
    state.edge_instances.set_known(&hash, true, now());
    if stored {
        tracing::info!(edge, hash, "edge reported a new configuration");
    }
    Ok(Json(EdgeConfigAccepted { hash, stored }))
}

/// `GET /api/v1/edges/configs/{hash}`: a configuration an edge reported.
async fn get_config(
    State(state): State<AppState>,
    principal: Principal,
    Path(hash): Path<String>,
) -> ApiResult<Json<EdgeConfig>> {
    principal.require(&[Role::Admin, Role::Auditor], "read edge configurations")?;
    if !is_hash(&hash) {
        return Err(ApiError::field(
            "hash",
            "hash: expected 64 lower-case hex digits, the config_hash of an instance in GET /api/v1/edges",
        ));
    }
    let row = sqlx::query("SELECT hash, document, first_seen, edge, instance FROM edge_configs WHERE hash = $1")
        .bind(&hash)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no edge reported a configuration with hash {hash}: an edge sends its document after the first poll that names the hash"
            ))
        })?;
    let text: String = row.try_get("document")?;
    let document = serde_json::from_str(&text).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "stored edge configuration {hash} is not JSON: {e}"
        ))
    })?;
    Ok(Json(EdgeConfig {
        hash: row.try_get("hash")?,
        document,
        first_seen: row.try_get("first_seen")?,
        edge: row.try_get("edge")?,
        instance: row.try_get("instance")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(cursor: i64, hash: Option<&str>, at: i64) -> InstancePoll {
        InstancePoll {
            node: None,
            address: "127.0.0.1".into(),
            first_seen: at,
            last_poll: at,
            cursor,
            config_hash: hash.map(str::to_owned),
        }
    }

    #[test]
    fn an_instance_is_written_when_new_advanced_or_reconfigured_only() {
        let instances = Instances::new();
        assert!(instances.record("e", "a", poll(3, Some("h1"), 10)));
        assert!(
            !instances.record("e", "a", poll(3, Some("h1"), 11)),
            "same cursor"
        );
        assert!(
            !instances.record("e", "a", poll(2, Some("h1"), 12)),
            "cursor went back"
        );
        assert!(
            instances.record("e", "a", poll(4, Some("h1"), 13)),
            "cursor advanced"
        );
        assert!(
            instances.record("e", "a", poll(4, Some("h2"), 14)),
            "new configuration"
        );
        assert!(
            instances.record("e", "b", poll(4, Some("h2"), 15)),
            "another instance"
        );
        let snapshot = instances.snapshot();
        let a = snapshot.iter().find(|(k, _)| k.1 == "a").unwrap();
        assert_eq!((a.1.first_seen, a.1.last_poll), (10, 14));
    }

    #[test]
    fn a_hash_looked_up_and_missing_is_asked_for_until_stored() {
        let instances = Instances::new();
        assert_eq!(instances.hash_state("h", 100), None);
        assert!(!instances.asks_for("h"));
        instances.set_known("h", false, 100);
        assert_eq!(instances.hash_state("h", 101), Some(false));
        assert!(instances.asks_for("h"));
        assert_eq!(
            instances.hash_state("h", 100 + UNKNOWN_RECHECK_SECONDS),
            None
        );
        instances.set_known("h", true, 106);
        assert_eq!(instances.hash_state("h", 107), Some(true));
        assert!(!instances.asks_for("h"));
    }

    #[test]
    fn malformed_instance_ids_and_hashes_count_as_none() {
        let mut headers = HeaderMap::new();
        headers.insert(INSTANCE_HEADER, HeaderValue::from_static("a b"));
        headers.insert(CONFIG_HASH_HEADER, HeaderValue::from_static("ABC"));
        assert_eq!(instance_of(&headers), "");
        assert_eq!(hash_of(&headers), None);
        headers.insert(INSTANCE_HEADER, HeaderValue::from_static("0123abcd"));
        let hash = "a".repeat(64);
        headers.insert(CONFIG_HASH_HEADER, HeaderValue::from_str(&hash).unwrap());
        assert_eq!(instance_of(&headers), "0123abcd");
        assert_eq!(hash_of(&headers), Some(hash));
    }
}
