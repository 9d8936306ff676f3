//! `GET /api/v1/edges`: every edge known by name, with its last feed poll, the cursor it polled with,
//! staleness and its last usage report. Polls are tracked in each replica's memory (cheap enough for
//! thousands of edges polling every second) and flushed to the `edges` table periodically and with each
//! usage report; this view merges the table with this replica's memory, so it is right on any replica.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use sqlx::Row as _;

use crate::auth::{Principal, Role};
use crate::db::now;
use crate::error::ApiResult;
use crate::extract::{Json, Query};
use crate::revocations::{page_params, Page};
use crate::AppState;
pub use edgewarden_api_types::Edge;

/// Seconds without a feed poll after which an edge counts as stale (overview, propagation). A healthy
/// edge long-polls (at most `--feed-max-wait`, 30 s by default) and other replicas see its polls within
/// `--edge-flush` (10 s), so 120 s is well past a healthy cycle and well before an edge's own staleness
/// limit (`max_staleness_seconds`, 300 s by default) makes it refuse requests.
/// The bound lives in `api-types` so the dashboard colours edges by the same numbers.
pub const STALE_AFTER_SECONDS: i64 = edgewarden_api_types::EDGE_STALE_AFTER_SECONDS;
/// Seconds without a feed poll after which a stale edge counts as silent: ten stale bounds.
pub const SILENT_AFTER_SECONDS: i64 = edgewarden_api_types::EDGE_SILENT_AFTER_SECONDS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeQuery {
    /// Only edges whose last poll is older than this many seconds (or that never polled).
    stale_after: Option<i64>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/edges", get(list))
}

/// Every edge, merged from the database and this replica's memory, sorted by name.
pub async fn all(state: &AppState) -> Result<Vec<Edge>, sqlx::Error> {
    let now = now();
    let current = state.feed.current();
    let rows = sqlx::query("SELECT name, address, last_poll, feed_cursor, last_report, reports, events, first_seen FROM edges")
        .fetch_all(&state.db.pool)
        .await?;
    let mut edges: std::collections::BTreeMap<String, Edge> = std::collections::BTreeMap::new();
    for r in rows {
        let edge = Edge {
            name: r.try_get("name")?,
            address: r.try_get("address")?,
            last_poll: r.try_get("last_poll")?,
            feed_cursor: r.try_get("feed_cursor")?,
            cursor_lag: None,
            staleness_seconds: None,
            last_report: r.try_get("last_report")?,
            reports: r.try_get("reports")?,
            usage_events: r.try_get("events")?,
            first_seen: r.try_get("first_seen")?,
        };
        edges.insert(edge.name.clone(), edge);
    }
    for poll in state.feed.edges() {
        let edge = edges.entry(poll.name.clone()).or_insert_with(|| Edge {
            name: poll.name.clone(),
            address: None,
            last_poll: None,
            feed_cursor: None,
            cursor_lag: None,
            staleness_seconds: None,
            last_report: None,
            reports: 0,
            usage_events: 0,
            first_seen: poll.last_poll,
        });
        if edge.last_poll.is_none_or(|at| poll.last_poll >= at) {
            edge.last_poll = Some(poll.last_poll);
            edge.feed_cursor = Some(poll.cursor);
            edge.address = Some(poll.address.clone());
        }
    }
    Ok(edges
        .into_values()
        .map(|mut e| {
            e.staleness_seconds = e.last_poll.map(|at| (now - at).max(0));
            e.cursor_lag = e.feed_cursor.map(|c| (current - c).max(0));
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
