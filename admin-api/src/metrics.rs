//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of this replica's counters and a few
//! gauges read from the database. A small registry of our own rather than a metrics crate: the set is
//! fixed and small, the text format is simple, and it keeps the dependency tree and build time down.
//! Requests are counted by a route layer, labelled with the route template (bounded cardinality).
//! Counters are per replica (sum them in Prometheus); gauges read from the database are cluster-wide.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sqlx::Row as _;

use crate::auth::{Principal, Role};
use crate::error::ApiResult;
use crate::AppState;

/// Route template of the revocation feed, whose polls and 304s get their own counters.
const FEED_PATH: &str = "/api/v1/revocations/feed";

/// Per-route request statistics.
#[derive(Debug, Default, Clone, Copy)]
struct RouteStats {
    count: u64,
    seconds: f64,
}

/// This replica's counters.
#[derive(Debug)]
pub struct Metrics {
    /// (method, route template, status) -> stats.
    requests: Mutex<BTreeMap<(String, String, u16), RouteStats>>,
    usage_events: AtomicU64,
    usage_failures: AtomicU64,
    usage_batches: AtomicU64,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            usage_events: AtomicU64::new(0),
            usage_failures: AtomicU64::new(0),
            usage_batches: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Counts one ingested usage batch with `events` decisions and `failures` samples.
    pub fn usage_ingested(&self, events: u64, failures: u64) {
        self.usage_events.fetch_add(events, Ordering::Relaxed);
        self.usage_failures.fetch_add(failures, Ordering::Relaxed);
        self.usage_batches.fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let stats = requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default();
        stats.count += 1;
        stats.seconds += seconds;
    }

    /// Requests answered for `route` with `status` (any method), for tests and figures.
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests
            .iter()
            .filter(|((_, r, s), _)| r == route && *s == status)
            .map(|(_, v)| v.count)
            .sum()
    }
}

/// Route layer counting every request that matched a route.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Escapes a label value for the text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

async fn metrics(State(state): State<AppState>, principal: Principal) -> ApiResult<Response> {
    principal.require(&[Role::Admin, Role::Auditor], "read metrics")?;
    let m = &state.metrics;
    let mut out = String::with_capacity(4096);

    family(
        &mut out,
        "edgewarden_http_requests_total",
        "counter",
        "HTTP requests answered, by method, route template and status.",
    );
    let requests = m.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for ((method, route, status), stats) in &requests {
        let _ = writeln!(out, "edgewarden_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {}", label(route), stats.count);
    }
    family(
        &mut out,
        "edgewarden_http_request_duration_seconds_sum",
        "counter",
        "Total seconds spent answering requests, by route template.",
    );
    let mut per_route: BTreeMap<&str, f64> = BTreeMap::new();
    for ((_, route, _), stats) in &requests {
        *per_route.entry(route).or_default() += stats.seconds;
    }
    for (route, seconds) in &per_route {
        let _ = writeln!(
            out,
            "edgewarden_http_request_duration_seconds_sum{{route=\"{}\"}} {seconds:.6}",
            label(route)
        );
    }

    let feed = |status: Option<u16>| {
        requests
            .iter()
            .filter(|((_, r, s), _)| r == FEED_PATH && status.is_none_or(|st| st == *s))
            .map(|(_, v)| v.count)
            .sum::<u64>()
    };
    family(
        &mut out,
        "edgewarden_feed_polls_total",
        "counter",
        "Revocation feed requests answered.",
    );
    let _ = writeln!(out, "edgewarden_feed_polls_total {}", feed(None));
    family(
        &mut out,
        "edgewarden_feed_not_modified_total",
        "counter",
        "Revocation feed requests answered 304 Not Modified.",
    );
    let _ = writeln!(
        out,
        "edgewarden_feed_not_modified_total {}",
        feed(Some(304))
    );
    family(
        &mut out,
        "edgewarden_feed_cursor",
        "gauge",
        "Newest revocation feed cursor this replica knows.",
    );
    let _ = writeln!(out, "edgewarden_feed_cursor {}", state.feed.current());
    family(
        &mut out,
        "edgewarden_edges_seen",
        "gauge",
        "Edges seen polling this replica since it started.",
    );
    let _ = writeln!(out, "edgewarden_edges_seen {}", state.feed.edges().len());

    let recorded = state.events.recorded_counts();
    let count_of = |kinds: &[&str]| {
        recorded
            .iter()
            .filter(|(k, _)| kinds.contains(k))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    family(
        &mut out,
        "edgewarden_tokens_issued_total",
        "counter",
        "Access tokens issued by this replica (API, client credentials and refresh).",
    );
    let _ = writeln!(
        out,
        "edgewarden_tokens_issued_total {}",
        count_of(&["token.issued"])
    );
    family(
        &mut out,
        "edgewarden_tokens_refreshed_total",
        "counter",
        "Refresh-token rotations by this replica.",
    );
    let _ = writeln!(
        out,
        "edgewarden_tokens_refreshed_total {}",
        count_of(&["token.refreshed"])
    );
    family(
        &mut out,
        "edgewarden_revocations_total",
        "counter",
        "Revocations (token, subject, client or refresh family) made by this replica.",
    );
    let _ = writeln!(
        out,
        "edgewarden_revocations_total {}",
        count_of(&["revocation.created", "refresh_family.revoked"])
    );
    family(
        &mut out,
        "edgewarden_events_recorded_total",
        "counter",
        "Events recorded by this replica, by kind.",
    );
    for (kind, n) in &recorded {
        let _ = writeln!(
            out,
            "edgewarden_events_recorded_total{{kind=\"{kind}\"}} {n}"
        );
    }
    family(
        &mut out,
        "edgewarden_events_dispatched_total",
        "counter",
        "Events fanned out to streams and webhooks by this replica.",
    );
    let _ = writeln!(
        out,
        "edgewarden_events_dispatched_total {}",
        state.events.dispatched()
    );

    family(
        &mut out,
        "edgewarden_usage_events_ingested_total",
        "counter",
        "Edge decisions ingested from usage reports.",
    );
    let _ = writeln!(
        out,
        "edgewarden_usage_events_ingested_total {}",
        m.usage_events.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "edgewarden_usage_failure_samples_ingested_total",
        "counter",
        "Failure samples ingested from usage reports.",
    );
    let _ = writeln!(
        out,
        "edgewarden_usage_failure_samples_ingested_total {}",
        m.usage_failures.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "edgewarden_usage_batches_total",
        "counter",
        "Usage reports ingested.",
    );
    let _ = writeln!(
        out,
        "edgewarden_usage_batches_total {}",
        m.usage_batches.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "edgewarden_usage_journal_batches",
        "gauge",
        "Usage batches acknowledged and waiting in the usage journal to be stored and examined (all replicas; serve --usage-journal).",
    );
    let waiting: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_journal")
        .fetch_one(&state.db.pool)
        .await?;
    let _ = writeln!(out, "edgewarden_usage_journal_batches {waiting}");

    family(
        &mut out,
        "edgewarden_anomalies_open",
        "gauge",
        "Open anomalies, by kind (all replicas).",
    );
    let open = crate::anomalies::open_counts(&state).await?;
    for kind in crate::anomalies::KINDS {
        let n = open
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let _ = writeln!(out, "edgewarden_anomalies_open{{kind=\"{kind}\"}} {n}");
    }
    family(
        &mut out,
        "edgewarden_webhook_deliveries",
        "gauge",
        "Webhook deliveries by state (all replicas).",
    );
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM webhook_deliveries GROUP BY state")
        .fetch_all(&state.db.pool)
        .await?;
    let mut deliveries: BTreeMap<String, i64> = ["pending", "delivered", "failed"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    for r in rows {
        deliveries.insert(r.try_get("state")?, r.try_get("n")?);
    }
    for (s, n) in deliveries {
        let _ = writeln!(out, "edgewarden_webhook_deliveries{{state=\"{s}\"}} {n}");
    }
    family(
        &mut out,
        "edgewarden_uptime_seconds",
        "gauge",
        "Seconds since this replica started.",
    );
    let _ = writeln!(
        out,
        "edgewarden_uptime_seconds {:.0}",
        m.started.elapsed().as_secs_f64()
    );

    let mut response = (StatusCode::OK, out).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}
