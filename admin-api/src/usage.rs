//! Usage reports from edges and the read APIs over them.
//! `POST /api/v1/usage` (edge or admin key) takes one batch of what an edge decided during an interval:
//! counts per token, subject, client, route and reason (summed into per-minute buckets) and samples of
//! failures with the client address (kept for a bounded time and number). It updates each token's first
//! and last use and the edge's last report, then runs the anomaly detectors over the batch.
//!
//! # Batch shape (JSON, `content-type: application/json`, at most 4 MiB, else 413)
//! ```json
//! {
//!   "edge": "envoy-eu-1",
//!   "interval_start": 1767000000,
//!   "interval_end": 1767000010,
//!   "dropped": 0,
//!   "counts": [
//!     {"jti": "q9L...", "token_fingerprint": "9f3a...", "subject": "alice", "client_id": "billing",
//!      "route": "/api/orders", "reason": "allowed", "count": 42, "addresses": ["10.0.0.7"]}
//!   ],
//!   "failures": [
//!     {"jti": "q9L...", "subject": "alice", "client_id": "billing", "route": "/api/orders",
//!      "reason": "expired", "client_address": "10.0.0.7", "at": 1767000004, "iat": 1766990000, "nbf": null}
//!   ]
//! }
//! ```
//! - `edge`: 1-200 characters, the same name the edge sends in `x-edgewarden-edge` when polling the feed.
//! - `interval_start <= interval_end` (Unix seconds, at most 3,600 s apart); counts go to the minute
//!   bucket containing `interval_start`.
//! - `dropped` (optional, default 0): events the edge dropped because its buffer was full.
//! - `counts` (optional, at most 10,000 entries, else 413): `route` (1-1,024 characters) and `reason` (a
//!   decision reason of `edgewarden-core`: `allowed`, `anonymous`, `missing_token`, `malformed`,
//!   `token_too_large`, `unsupported_header`, `disallowed_algorithm`, `bad_signature`, `unknown_kid`,
//!   `expired`, `not_yet_valid`, `issued_in_future`, `missing_expiry`, `wrong_issuer`, `wrong_audience`,
//!   `wrong_type`, `missing_claim`, `insufficient_scope`, `insufficient_role`, `revoked`,
//!   `stale_revocation_state`) are required; `count` is 1..=1,000,000,000; `jti`, `token_fingerprint`
//!   (a token without a jti is counted as `fp:<fingerprint>`), `subject`, `client_id` are optional
//!   strings of at most 512 characters; `addresses` (optional, at most 32) are the client addresses this
//!   entry was seen from.
//! - `failures` (optional, at most 1,000 entries, else 413): `reason` and `client_address` (1-100
//!   characters) and `at` (Unix seconds) are required; `jti`, `subject`, `client_id`, `route` optional
//!   strings; `iat` and `nbf` optional Unix seconds from the refused token (for clock-skew detection).
//! - Unknown fields are refused. Bad input is a 400 naming the field (`counts[3].reason`).
//!
//! Answer: `202 {"accepted_counts": n, "accepted_failures": m, "bucket": <minute>}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use edgewarden_core::decision::Reason;
use serde::Deserialize;
use serde_json::json;
use sqlx::Row as _;
use tokio::task::JoinHandle;

use crate::auth::{ClientAddr, Principal, Role};
use crate::db::{now, Db};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Event, EventBus, StoredEvent};
use crate::extract::{parse_json, Json, Query};
use crate::revocations::{page_params, Feed, Page};
use crate::secrets::random_id;
use crate::AppState;
pub use edgewarden_api_types::{Failure, Point, Series, Timeline, TimelineToken, TokenUsage};

/// Largest usage batch body accepted.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Most addresses listed per count entry.
pub const MAX_ADDRESSES: usize = 32;

/// Usage ingestion and retention knobs.
#[derive(Clone, Debug)]
pub struct UsageConfig {
    /// Most count entries per batch.
    pub max_counts: usize,
    /// Most failure samples per batch.
    pub max_failures: usize,
    /// How long per-minute counts are kept.
    pub count_retention_seconds: i64,
    /// How long failure samples are kept.
    pub failure_retention_seconds: i64,
    /// Most failure samples kept (the oldest go first).
    pub failure_max_rows: i64,
    /// How often each replica writes the edges' polls it saw to the database.
    pub edge_flush_seconds: u64,
    /// How long after a token expired or was revoked its last use is final and recorded as an event
    /// (edges report with a delay).
    pub last_use_grace_seconds: i64,
}

impl Default for UsageConfig {
    fn default() -> UsageConfig {
        UsageConfig {
            max_counts: 10_000,
            max_failures: 1_000,
            count_retention_seconds: 30 * 86_400,
            failure_retention_seconds: 7 * 86_400,
            failure_max_rows: 100_000,
            edge_flush_seconds: 10,
            last_use_grace_seconds: 120,
        }
    }
}

/// `serve` flags for usage retention.
#[derive(clap::Args, Debug, Clone)]
pub struct UsageArgs {
    /// Days per-minute usage counts are kept.
    #[arg(long, env = "EDGEWARDEN_USAGE_RETENTION_DAYS", default_value_t = 30)]
    pub usage_retention_days: i64,
    /// Days failure samples reported by edges are kept.
    #[arg(long, env = "EDGEWARDEN_FAILURE_RETENTION_DAYS", default_value_t = 7)]
    pub failure_retention_days: i64,
    /// Most failure samples kept; the oldest are deleted first.
    #[arg(long, env = "EDGEWARDEN_FAILURE_MAX_ROWS", default_value_t = 100_000)]
    pub failure_max_rows: i64,
    /// Seconds between writes of the edges' last polls to the database (shown by GET /api/v1/edges).
    #[arg(long, env = "EDGEWARDEN_EDGE_FLUSH", default_value_t = 10)]
    pub edge_flush: u64,
}

impl UsageArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> UsageConfig {
        UsageConfig {
            count_retention_seconds: self.usage_retention_days.max(1) * 86_400,
            failure_retention_seconds: self.failure_retention_days.max(1) * 86_400,
            failure_max_rows: self.failure_max_rows.max(100),
            edge_flush_seconds: self.edge_flush.max(1),
            ..UsageConfig::default()
        }
    }
}

/// One batch from an edge (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// Edge name.
    pub edge: String,
    /// Start of the reported interval (Unix seconds).
    pub interval_start: i64,
    /// End of the reported interval (Unix seconds).
    pub interval_end: i64,
    /// Events the edge had to drop.
    #[serde(default)]
    pub dropped: u64,
    /// Decision counts.
    #[serde(default)]
    pub counts: Vec<CountEntry>,
    /// Failure samples.
    #[serde(default)]
    pub failures: Vec<FailureEntry>,
}

/// Decisions of one kind during the interval.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountEntry {
    /// Token fingerprint, for tokens without a jti.
    pub token_fingerprint: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// Request path (without query).
    pub route: String,
    /// Decision reason.
    pub reason: String,
    /// How many.
    pub count: i64,
    /// Client addresses seen.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// One refused request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureEntry {
    /// Token id, if the token was readable.
    pub jti: Option<String>,
    /// `sub`, if readable.
    pub subject: Option<String>,
    /// `client_id`, if readable.
    pub client_id: Option<String>,
    /// Request path.
    pub route: Option<String>,
    /// Decision reason.
    pub reason: String,
    /// Address of the client.
    pub client_address: String,
    /// When (Unix seconds, edge clock).
    pub at: i64,
    /// The token's `iat`.
    pub iat: Option<i64>,
    /// The token's `nbf`.
    pub nbf: Option<i64>,
}

fn opt_str(field: String, value: &Option<String>, max: usize) -> ApiResult<()> {
    match value {
        Some(v) if v.is_empty() || v.len() > max => Err(ApiError::field(
            field.clone(),
            format!("{field}: must be 1 to {max} characters"),
        )),
        _ => Ok(()),
    }
}

fn req_str(field: String, value: &str, max: usize) -> ApiResult<()> {
    if value.is_empty() || value.len() > max {
        return Err(ApiError::field(
            field.clone(),
            format!(
                "{field}: must be 1 to {max} characters, got {}",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn check_reason(field: String, reason: &str) -> ApiResult<()> {
    if Reason::ALL.iter().any(|r| r.as_str() == reason) {
        Ok(())
    } else {
        Err(ApiError::field(
            field.clone(),
            format!("{field}: unknown reason {reason:?}"),
        ))
    }
}

fn too_large(message: String) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        axum::Json(json!({"error": {"code": "payload_too_large", "message": message}})),
    )
        .into_response()
}

/// Why a batch is too large to take (a 413), if it is.
fn oversized(batch: &UsageBatch, config: &UsageConfig) -> Option<String> {
    if batch.counts.len() > config.max_counts {
        return Some(format!(
            "counts: {} entries, maximum {}",
            batch.counts.len(),
            config.max_counts
        ));
    }
    if batch.failures.len() > config.max_failures {
        return Some(format!(
            "failures: {} entries, maximum {}",
            batch.failures.len(),
            config.max_failures
        ));
    }
    None
}

/// How far ahead of the admin API's clock a reported time may be. Moderate skew is accepted (and the
/// clock-skew detector reports it as an anomaly); a time further ahead would never age out of the store.
pub const FUTURE_ALLOWANCE_SECONDS: i64 = 900;

/// Refuses a reported time further in the future than [`FUTURE_ALLOWANCE_SECONDS`].
fn not_future(field: String, at: i64, now: i64) -> ApiResult<()> {
    if at > now + FUTURE_ALLOWANCE_SECONDS {
        return Err(ApiError::field(
            field.clone(),
            format!(
                "{field}: {at} is {}s ahead of the admin API's clock (at most {FUTURE_ALLOWANCE_SECONDS}s allowed): check the edge's clock",
                at - now
            ),
        ));
    }
    Ok(())
}

/// Checks every field of a batch; the error names the first bad one.
fn validate(batch: &UsageBatch) -> ApiResult<()> {
    let now = now();
    not_future("interval_end".into(), batch.interval_end, now)?;
    for (i, f) in batch.failures.iter().enumerate() {
        not_future(format!("failures[{i}].at"), f.at, now)?;
    }
    {
        req_str("edge".into(), &batch.edge, 200)?;
        if batch.interval_start <= 0 {
            return Err(ApiError::field(
                "interval_start",
                format!(
                    "interval_start: {} is not a unix time",
                    batch.interval_start
                ),
            ));
        }
        if batch.interval_end < batch.interval_start {
            return Err(ApiError::field(
                "interval_end",
                format!(
                    "interval_end: {} is before interval_start {}",
                    batch.interval_end, batch.interval_start
                ),
            ));
        }
        if batch.interval_end - batch.interval_start > 3600 {
            return Err(ApiError::field(
                "interval_end",
                format!(
                    "interval_end: interval is {}s long, maximum 3600s",
                    batch.interval_end - batch.interval_start
                ),
            ));
        }
        for (i, c) in batch.counts.iter().enumerate() {
            opt_str(format!("counts[{i}].jti"), &c.jti, 512)?;
            opt_str(
                format!("counts[{i}].token_fingerprint"),
                &c.token_fingerprint,
                128,
            )?;
            opt_str(format!("counts[{i}].subject"), &c.subject, 512)?;
            opt_str(format!("counts[{i}].client_id"), &c.client_id, 512)?;
            req_str(format!("counts[{i}].route"), &c.route, 1024)?;
            check_reason(format!("counts[{i}].reason"), &c.reason)?;
            if !(1..=1_000_000_000).contains(&c.count) {
                return Err(ApiError::field(
                    format!("counts[{i}].count"),
                    format!(
                        "counts[{i}].count: {} is out of range 1..=1000000000",
                        c.count
                    ),
                ));
            }
            if c.addresses.len() > MAX_ADDRESSES {
                return Err(ApiError::field(
                    format!("counts[{i}].addresses"),
                    format!(
                        "counts[{i}].addresses: {} entries, maximum {MAX_ADDRESSES}",
                        c.addresses.len()
                    ),
                ));
            }
            for (j, a) in c.addresses.iter().enumerate() {
                req_str(format!("counts[{i}].addresses[{j}]"), a, 100)?;
            }
        }
        for (i, f) in batch.failures.iter().enumerate() {
            opt_str(format!("failures[{i}].jti"), &f.jti, 512)?;
            opt_str(format!("failures[{i}].subject"), &f.subject, 512)?;
            opt_str(format!("failures[{i}].client_id"), &f.client_id, 512)?;
            opt_str(format!("failures[{i}].route"), &f.route, 1024)?;
            check_reason(format!("failures[{i}].reason"), &f.reason)?;
            req_str(
                format!("failures[{i}].client_address"),
                &f.client_address,
                100,
            )?;
            if f.at <= 0 {
                return Err(ApiError::field(
                    format!("failures[{i}].at"),
                    format!("failures[{i}].at: {} is not a unix time", f.at),
                ));
            }
        }
        Ok(())
    }
}

/// The key a count is summed under: (token, subject, client, route, reason).
pub type CountKey = (String, String, String, String, String);

/// What the detectors need to know about an ingested batch.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Edge name.
    pub edge: String,
    /// Interval reported.
    pub interval_start: i64,
    /// Interval reported.
    pub interval_end: i64,
    /// Summed counts per key.
    pub counts: BTreeMap<CountKey, i64>,
    /// Tokens seen with addresses.
    pub tokens_with_addresses: BTreeSet<String>,
    /// (address, reason, subject, client, jti, at, iat, nbf) of each failure.
    pub failures: Vec<FailureEntry>,
}

fn token_key(jti: &Option<String>, fingerprint: &Option<String>) -> String {
    match (jti, fingerprint) {
        (Some(j), _) => j.clone(),
        (None, Some(fp)) => format!("fp:{fp}"),
        (None, None) => String::new(),
    }
}

/// Rows per multi-row statement (at most 12 parameters each, well under both engines' limits).
const CHUNK: usize = 100;

/// `($s+1, $s+2, ...), (...)` for `rows` rows of `width` placeholders, numbered after `skip`.
/// Only placeholders are interpolated into SQL; every value is bound.
fn placeholders(rows: usize, width: usize, skip: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width)
                .map(|c| format!("${}", skip + r * width + c))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    ClientAddr(address): ClientAddr,
    req: Request,
) -> ApiResult<Response> {
    principal.require(&[Role::Admin, Role::Edge], "report usage")?;
    if let Some(ct) = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        if !ct.starts_with("application/json") {
            return Err(ApiError::bad_request(format!(
                "content-type must be application/json, got {ct}"
            )));
        }
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_BATCH_BYTES).await else {
        return Ok(too_large(format!(
            "usage batch is larger than {MAX_BATCH_BYTES} bytes"
        )));
    };
    let batch: UsageBatch = parse_json(&body)?;
    if let Some(message) = oversized(&batch, &state.config.usage) {
        return Ok(too_large(message));
    }
    validate(&batch)?;
    principal.require_edge(&batch.edge)?;
    let accepted_counts = batch.counts.len();
    let accepted_failures = batch.failures.len();
    let bucket = batch.interval_start - batch.interval_start.rem_euclid(60);
    let ingested = store(&state, batch, &address).await?;
    let total: i64 = ingested.counts.values().sum();
    state
        .metrics
        .usage_ingested(total as u64, accepted_failures as u64);
    if let Err(e) = crate::anomalies::detect(&state, &ingested).await {
        // The batch is stored; a detector failure must not make the edge resend it.
        tracing::error!(error = %e, edge = %ingested.edge, "anomaly detection failed for a usage batch");
    }
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"accepted_counts": accepted_counts, "accepted_failures": accepted_failures, "bucket": bucket}))).into_response())
}

/// Stores a validated batch in one transaction and returns what the detectors need.
async fn store(state: &AppState, batch: UsageBatch, address: &str) -> ApiResult<Ingested> {
    let now = now();
    let bucket = batch.interval_start - batch.interval_start.rem_euclid(60);
    let mut ingested = Ingested {
        edge: batch.edge.clone(),
        interval_start: batch.interval_start,
        interval_end: batch.interval_end,
        ..Ingested::default()
    };
    let mut addresses: BTreeSet<(String, String)> = BTreeSet::new();
    let mut used: BTreeMap<String, i64> = BTreeMap::new();
    for c in &batch.counts {
        let token = token_key(&c.jti, &c.token_fingerprint);
        let key = (
            token.clone(),
            c.subject.clone().unwrap_or_default(),
            c.client_id.clone().unwrap_or_default(),
            c.route.clone(),
            c.reason.clone(),
        );
        *ingested.counts.entry(key).or_default() += c.count;
        if !token.is_empty() {
            for a in &c.addresses {
                addresses.insert((token.clone(), a.clone()));
            }
        }
        if let (Some(jti), "allowed") = (&c.jti, c.reason.as_str()) {
            *used.entry(jti.clone()).or_default() += c.count;
        }
    }
    for f in &batch.failures {
        if let Some(jti) = &f.jti {
            addresses.insert((jti.clone(), f.client_address.clone()));
        }
    }
    let total: i64 = ingested.counts.values().sum();
    let mut tx = state.db.pool.begin().await?;
    let entries: Vec<(&CountKey, &i64)> = ingested.counts.iter().collect();
    for chunk in entries.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO usage_counts (bucket, edge, token, subject, client_id, route, reason, count) VALUES {} \
             ON CONFLICT (bucket, edge, token, subject, client_id, route, reason) DO UPDATE SET count = usage_counts.count + excluded.count",
            placeholders(chunk.len(), 8, 0)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((token, subject, client, route, reason), count) in chunk {
            query = query
                .bind(bucket)
                .bind(&batch.edge)
                .bind(token)
                .bind(subject)
                .bind(client)
                .bind(route)
                .bind(reason)
                .bind(**count);
        }
        query.execute(&mut *tx).await?;
    }
    for chunk in batch.failures.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO usage_failures (id, edge, at, received_at, jti, subject, client_id, route, reason, client_address, iat, nbf) VALUES {}",
            placeholders(chunk.len(), 12, 0)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for f in chunk {
            query = query
                .bind(random_id("uf_"))
                .bind(&batch.edge)
                .bind(f.at)
                .bind(now)
                .bind(&f.jti)
                .bind(&f.subject)
                .bind(&f.client_id)
                .bind(&f.route)
                .bind(&f.reason)
                .bind(&f.client_address)
                .bind(f.iat)
                .bind(f.nbf);
        }
        query.execute(&mut *tx).await?;
    }
    let seen_at = batch.interval_end.min(now);
    let pairs: Vec<&(String, String)> = addresses.iter().collect();
    for chunk in pairs.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO token_addresses (token, address, first_seen, last_seen) VALUES {} \
             ON CONFLICT (token, address) DO UPDATE SET last_seen = excluded.last_seen",
            placeholders(chunk.len(), 4, 0)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (token, addr) in chunk {
            query = query.bind(token).bind(addr).bind(seen_at).bind(seen_at);
            ingested.tokens_with_addresses.insert(token.clone());
        }
        query.execute(&mut *tx).await?;
    }
    let used: Vec<(&String, &i64)> = used.iter().collect();
    for chunk in used.chunks(CHUNK) {
        // First use: only rows still without one are claimed, so each token gets one event even
        // when replicas ingest reports for it at the same moment.
        let sql = format!(
            "UPDATE tokens SET first_used_at = $1 WHERE first_used_at IS NULL AND jti IN ({}) RETURNING jti, subject, client_id",
            (2..chunk.len() + 2).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(batch.interval_start);
        for (jti, _) in chunk {
            query = query.bind(*jti);
        }
        let first_uses = query.fetch_all(&mut *tx).await?;
        // VALUES columns are column1, column2 on both engines (SQLite has no column aliases there).
        let sql = format!(
            "UPDATE tokens SET use_count = use_count + v.column2, \
             last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $1 THEN $1 ELSE last_used_at END \
             FROM (VALUES {}) AS v WHERE tokens.jti = v.column1",
            placeholders(chunk.len(), 2, 1)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(batch.interval_end);
        for (jti, uses) in chunk {
            query = query.bind(*jti).bind(**uses);
        }
        query.execute(&mut *tx).await?;
        for row in first_uses {
            let jti: String = row.try_get("jti")?;
            let seen_from: Vec<&String> = addresses
                .iter()
                .filter(|(t, _)| *t == jti)
                .map(|(_, a)| a)
                .collect();
            let event = Event::new("token.first_use", format!("edge:{}", batch.edge))
                .subject(row.try_get::<String, _>("subject")?)
                .client(row.try_get::<String, _>("client_id")?)
                .details(
                    json!({"edge": batch.edge, "at": batch.interval_start, "addresses": seen_from}),
                )
                .jti(jti);
            events::record(&state.events, &state.db, &mut tx, event).await?;
        }
    }
    // The edge's poll as this replica saw it rides along, so a report also refreshes the poll columns.
    let poll = state
        .feed
        .edges()
        .into_iter()
        .find(|e| e.name == batch.edge);
    sqlx::query(
        "INSERT INTO edges (name, address, last_poll, feed_cursor, last_report, reports, events, first_seen) VALUES ($1, $2, $3, $4, $5, 1, $6, $5) \
         ON CONFLICT (name) DO UPDATE SET address = excluded.address, last_report = excluded.last_report, \
         reports = edges.reports + 1, events = edges.events + excluded.events, \
         last_poll = CASE WHEN edges.last_poll IS NULL OR excluded.last_poll > edges.last_poll THEN excluded.last_poll ELSE edges.last_poll END, \
         feed_cursor = CASE WHEN edges.last_poll IS NULL OR excluded.last_poll > edges.last_poll THEN excluded.feed_cursor ELSE edges.feed_cursor END",
    )
    .bind(&batch.edge)
    .bind(address)
    .bind(poll.as_ref().map(|p| p.last_poll))
    .bind(poll.as_ref().map(|p| p.cursor))
    .bind(now)
    .bind(total)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if batch.dropped > 0 {
        tracing::warn!(edge = %batch.edge, dropped = batch.dropped, "edge dropped usage events");
    }
    ingested.failures = batch.failures;
    Ok(ingested)
}

/// Writes the edges' polls this replica saw (newer than what it last wrote) to the `edges` table.
pub async fn flush_edges(
    db: &Db,
    feed: &Feed,
    written: &mut BTreeMap<String, i64>,
) -> Result<(), sqlx::Error> {
    for poll in feed.edges() {
        if written
            .get(&poll.name)
            .is_some_and(|at| *at >= poll.last_poll)
        {
            continue;
        }
        sqlx::query(
            "INSERT INTO edges (name, address, last_poll, feed_cursor, first_seen) VALUES ($1, $2, $3, $4, $3) \
             ON CONFLICT (name) DO UPDATE SET \
             address = CASE WHEN edges.last_poll IS NULL OR excluded.last_poll >= edges.last_poll THEN excluded.address ELSE edges.address END, \
             feed_cursor = CASE WHEN edges.last_poll IS NULL OR excluded.last_poll >= edges.last_poll THEN excluded.feed_cursor ELSE edges.feed_cursor END, \
             last_poll = CASE WHEN edges.last_poll IS NULL OR excluded.last_poll > edges.last_poll THEN excluded.last_poll ELSE edges.last_poll END",
        )
        .bind(&poll.name)
        .bind(&poll.address)
        .bind(poll.last_poll)
        .bind(poll.cursor)
        .execute(&db.pool)
        .await?;
        written.insert(poll.name, poll.last_poll);
    }
    Ok(())
}

/// Records `token.last_use` for tokens whose use is over (expired or revoked more than the grace period
/// ago) and that were used; each once, even with several replicas.
pub async fn record_last_uses(db: &Db, bus: &EventBus, grace: i64) -> Result<usize, sqlx::Error> {
    let cutoff = now() - grace;
    let rows = sqlx::query(
        "SELECT jti, subject, client_id, first_used_at, last_used_at, use_count FROM tokens \
         WHERE last_use_recorded = 0 AND last_used_at IS NOT NULL AND (expires_at < $1 OR revoked_at < $1) LIMIT 500",
    )
    .bind(cutoff)
    .fetch_all(&db.pool)
    .await?;
    let mut recorded = 0;
    for row in rows {
        let jti: String = row.try_get("jti")?;
        let mut tx = db.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE tokens SET last_use_recorded = 1 WHERE jti = $1 AND last_use_recorded = 0",
        )
        .bind(&jti)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 1 {
            let last: Option<i64> = row.try_get("last_used_at")?;
            let event = Event::new("token.last_use", "system:usage")
                .jti(jti)
                .subject(row.try_get::<String, _>("subject")?)
                .client(row.try_get::<String, _>("client_id")?)
                .details(json!({"at": last, "first_used_at": row.try_get::<Option<i64>, _>("first_used_at")?, "uses": row.try_get::<i64, _>("use_count")?}));
            events::record(bus, db, &mut tx, event).await?;
            recorded += 1;
        }
        tx.commit().await?;
    }
    Ok(recorded)
}

/// Deletes usage data past its retention.
pub async fn prune(db: &Db, config: &UsageConfig) -> Result<(), sqlx::Error> {
    let now = now();
    sqlx::query("DELETE FROM usage_counts WHERE bucket < $1")
        .bind(now - config.count_retention_seconds)
        .execute(&db.pool)
        .await?;
    sqlx::query("DELETE FROM usage_failures WHERE at < $1")
        .bind(now - config.failure_retention_seconds)
        .execute(&db.pool)
        .await?;
    let cut: Option<i64> =
        sqlx::query_scalar("SELECT at FROM usage_failures ORDER BY at DESC LIMIT 1 OFFSET $1")
            .bind(config.failure_max_rows)
            .fetch_optional(&db.pool)
            .await?;
    if let Some(cut) = cut {
        sqlx::query("DELETE FROM usage_failures WHERE at <= $1")
            .bind(cut)
            .execute(&db.pool)
            .await?;
    }
    sqlx::query("DELETE FROM token_addresses WHERE last_seen < $1")
        .bind(now - 7 * 86_400)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Starts the usage housekeeping task: edge poll flushes, last-use events, retention.
pub fn spawn_maintenance(
    db: Db,
    feed: Arc<Feed>,
    bus: Arc<EventBus>,
    config: UsageConfig,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(config.edge_flush_seconds.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written = BTreeMap::new();
        let mut last_slow = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            if let Err(e) = flush_edges(&db, &feed, &mut written).await {
                tracing::warn!(error = %e, "cannot write edge polls");
            }
            if last_slow.elapsed() >= Duration::from_secs(60) {
                last_slow = tokio::time::Instant::now();
                if let Err(e) = record_last_uses(&db, &bus, config.last_use_grace_seconds).await {
                    tracing::warn!(error = %e, "cannot record last uses");
                }
                if let Err(e) = prune(&db, &config).await {
                    tracing::warn!(error = %e, "cannot prune usage data");
                }
            }
        }
    })
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/usage", post(ingest))
        .route("/api/v1/usage/timeseries", get(timeseries))
        .route("/api/v1/usage/failures", get(failures))
        .route("/api/v1/tokens/{jti}/timeline", get(timeline))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    bucket: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    subject: Option<String>,
    client_id: Option<String>,
    jti: Option<String>,
    route: Option<String>,
    reason: Option<String>,
    edge: Option<String>,
}

async fn timeseries(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<SeriesQuery>,
) -> ApiResult<Json<Series>> {
    principal.require(&[Role::Admin, Role::Auditor], "read usage")?;
    let (width, max_points): (i64, i64) = match q.bucket.as_deref().unwrap_or("minute") {
        "minute" => (60, 1440),
        "hour" => (3600, 24 * 62),
        other => {
            return Err(ApiError::field(
                "bucket",
                format!("bucket: {other:?} is not one of minute, hour"),
            ))
        }
    };
    let now = now();
    let until = q.until.unwrap_or(now + 1);
    let since = q.since.unwrap_or(until - width * 60);
    if until <= since {
        return Err(ApiError::field(
            "until",
            format!("until: {until} is not after since {since}"),
        ));
    }
    if (until - since) / width > max_points {
        return Err(ApiError::field(
            "since",
            format!(
                "since: range covers {} buckets, maximum {max_points}",
                (until - since) / width
            ),
        ));
    }
    if let Some(reason) = &q.reason {
        check_reason("reason".into(), reason)?;
    }
    // `width` is one of two constants, never input. Hourly buckets filtered at most by reason and edge
    // read whole hours from the rollup `usage_hourly` (a week is thousands of rows, not millions) and
    // only the unfinished last hour from `usage_counts`; the branch that does not apply is a constant
    // false condition, which both databases check once instead of per row.
    let rollup = format!("{width} = 3600 AND $3 = '' AND $4 = '' AND $5 = '' AND $6 = ''");
    let sql = format!(
        "SELECT t, reason, CAST(SUM(n) AS BIGINT) AS n FROM ( \
         SELECT hour AS t, reason, count AS n FROM usage_hourly \
         WHERE {rollup} AND hour >= $1 AND hour < ($2 / 3600) * 3600 AND ($7 = '' OR reason = $7) AND ($8 = '' OR edge = $8) \
         UNION ALL \
         SELECT (bucket / {width}) * {width} AS t, reason, count AS n FROM usage_counts \
         WHERE bucket >= CASE WHEN {rollup} AND ($2 / 3600) * 3600 > $1 THEN ($2 / 3600) * 3600 ELSE $1 END \
         AND bucket < $2 AND ($3 = '' OR subject = $3) AND ($4 = '' OR client_id = $4) AND ($5 = '' OR token = $5) \
         AND ($6 = '' OR route = $6) AND ($7 = '' OR reason = $7) AND ($8 = '' OR edge = $8) \
         ) AS u GROUP BY t, reason ORDER BY t, reason"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(since - since.rem_euclid(width))
        .bind(until)
        .bind(q.subject.unwrap_or_default())
        .bind(q.client_id.unwrap_or_default())
        .bind(q.jti.unwrap_or_default())
        .bind(q.route.unwrap_or_default())
        .bind(q.reason.unwrap_or_default())
        .bind(q.edge.unwrap_or_default())
        .fetch_all(&state.db.pool)
        .await?;
    let mut points: BTreeMap<i64, Point> = BTreeMap::new();
    for row in rows {
        let t: i64 = row.try_get("t")?;
        let n: i64 = row.try_get("n")?;
        let point = points.entry(t).or_insert_with(|| Point {
            t,
            total: 0,
            by_reason: BTreeMap::new(),
        });
        point.total += n;
        *point.by_reason.entry(row.try_get("reason")?).or_default() += n;
    }
    let bucket = if width == 60 { "minute" } else { "hour" };
    Ok(Json(Series {
        bucket: bucket.to_owned(),
        since,
        until,
        points: points.into_values().collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailureQuery {
    client_address: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
    jti: Option<String>,
    reason: Option<String>,
    edge: Option<String>,
    since: Option<i64>,
    limit: Option<i64>,
    offset: Option<i64>,
}

const FAILURE_COLUMNS: &str =
    "id, edge, at, jti, subject, client_id, route, reason, client_address, iat, nbf";

fn failure(row: &sqlx::any::AnyRow) -> Result<Failure, sqlx::Error> {
    Ok(Failure {
        id: row.try_get("id")?,
        edge: row.try_get("edge")?,
        at: row.try_get("at")?,
        jti: row.try_get("jti")?,
        subject: row.try_get("subject")?,
        client_id: row.try_get("client_id")?,
        route: row.try_get("route")?,
        reason: row.try_get("reason")?,
        client_address: row.try_get("client_address")?,
        iat: row.try_get("iat")?,
        nbf: row.try_get("nbf")?,
    })
}

async fn failures(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<FailureQuery>,
) -> ApiResult<Json<Page<Failure>>> {
    principal.require(&[Role::Admin, Role::Auditor], "read usage")?;
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let filter = "WHERE ($1 = '' OR client_address = $1) AND ($2 = '' OR subject = $2) AND ($3 = '' OR client_id = $3) \
                  AND ($4 = '' OR jti = $4) AND ($5 = '' OR reason = $5) AND ($6 = '' OR edge = $6) AND at >= $7";
    let binds = [
        q.client_address.unwrap_or_default(),
        q.subject.unwrap_or_default(),
        q.client_id.unwrap_or_default(),
        q.jti.unwrap_or_default(),
        q.reason.unwrap_or_default(),
        q.edge.unwrap_or_default(),
    ];
    let since = q.since.unwrap_or(0);
    let mut count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM usage_failures {filter}"
    )));
    for b in &binds {
        count = count.bind(b.clone());
    }
    let total = count.bind(since).fetch_one(&state.db.pool).await?;
    let mut select = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FAILURE_COLUMNS} FROM usage_failures {filter} ORDER BY at DESC, id LIMIT $8 OFFSET $9"
    )));
    for b in &binds {
        select = select.bind(b.clone());
    }
    let rows = select
        .bind(since)
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.db.pool)
        .await?;
    let items = rows.iter().map(failure).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}

/// One token's history: lifecycle events, usage per minute and failure samples, oldest first.
async fn timeline(
    State(state): State<AppState>,
    principal: Principal,
    Path(jti): Path<String>,
) -> ApiResult<Json<Timeline>> {
    principal.require(&[Role::Admin, Role::Auditor], "read tokens")?;
    let token = sqlx::query(
        "SELECT subject, client_id, issued_at, expires_at, revoked_at, first_used_at, last_used_at, use_count FROM tokens WHERE jti = $1",
    )
    .bind(&jti)
    .fetch_optional(&state.db.pool)
    .await?;
    let q = events::EventQuery {
        jti: Some(jti.clone()),
        limit: Some(500),
        ..Default::default()
    };
    let mut events: Vec<StoredEvent> = events::query_events(&state.db, &q).await?.items;
    events.reverse();
    let usage = sqlx::query(
        "SELECT bucket, edge, route, reason, CAST(SUM(count) AS BIGINT) AS n FROM usage_counts WHERE token = $1 \
         GROUP BY bucket, edge, route, reason ORDER BY bucket, edge, route, reason LIMIT 2000",
    )
    .bind(&jti)
    .fetch_all(&state.db.pool)
    .await?;
    let usage = usage
        .iter()
        .map(|r| {
            Ok(TokenUsage {
                t: r.try_get("bucket")?,
                edge: r.try_get("edge")?,
                route: r.try_get("route")?,
                reason: r.try_get("reason")?,
                count: r.try_get("n")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let failures = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FAILURE_COLUMNS} FROM usage_failures WHERE jti = $1 ORDER BY at LIMIT 500"
    )))
    .bind(&jti)
    .fetch_all(&state.db.pool)
    .await?
    .iter()
    .map(failure)
    .collect::<Result<Vec<_>, _>>()?;
    let token = token
        .map(|token| -> Result<TimelineToken, sqlx::Error> {
            Ok(TimelineToken {
                subject: token.try_get("subject")?,
                client_id: token.try_get("client_id")?,
                issued_at: token.try_get("issued_at")?,
                expires_at: token.try_get("expires_at")?,
                revoked_at: token.try_get("revoked_at")?,
                first_used_at: token.try_get("first_used_at")?,
                last_used_at: token.try_get("last_used_at")?,
                use_count: token.try_get("use_count")?,
            })
        })
        .transpose()?;
    if token.is_none() && events.is_empty() && usage.is_empty() && failures.is_empty() {
        return Err(ApiError::NotFound(format!("no token with jti {jti:?}")));
    }
    Ok(Json(Timeline {
        jti,
        token,
        events,
        usage,
        failures,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_after_the_skipped_parameters() {
        assert_eq!(placeholders(2, 3, 0), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(2, 2, 1), "($2, $3), ($4, $5)");
        assert_eq!(placeholders(0, 4, 0), "");
    }

    #[test]
    fn tokens_without_a_jti_are_keyed_by_fingerprint() {
        assert_eq!(token_key(&Some("j".into()), &Some("f".into())), "j");
        assert_eq!(token_key(&None, &Some("f".into())), "fp:f");
        assert_eq!(token_key(&None, &None), "");
    }
}
