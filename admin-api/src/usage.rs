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
//! Answer: `202 {"accepted_counts": n, "accepted_failures": m, "bucket": <minute>}`, once the batch is
//! stored and examined; with `serve --usage-journal`, once it is committed to the usage journal, to be
//! stored and examined by the next fold ([`journal`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use edgewarden_core::decision::Reason;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row as _;
use tokio::task::JoinHandle;

use crate::auth::{ClientAddr, Principal, Role};
use crate::db::{self, now, Db};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Event, EventBus, StoredEvent};
use crate::extract::{parse_json, Json, Query};
use crate::feed_marks::row_placeholders;
use crate::revocations::{page_params, Feed, Page};
use crate::secrets::random_id;
use crate::AppState;
pub use edgewarden_api_types::{Failure, Point, Series, Timeline, TimelineToken, TokenUsage};

pub mod journal;

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
    /// Most per-minute count rows kept (the oldest minutes go first).
    pub count_max_rows: i64,
    /// How long failure samples are kept.
    pub failure_retention_seconds: i64,
    /// Most failure samples kept (the oldest go first).
    pub failure_max_rows: i64,
    /// How long events are kept.
    pub event_retention_seconds: i64,
    /// Most events kept (the oldest go first).
    pub event_max_rows: i64,
    /// How long resolved anomalies are kept after their last change.
    pub anomaly_retention_seconds: i64,
    /// How often each replica writes the edges' polls it saw to the database.
    pub edge_flush_seconds: u64,
    /// How long after a token expired or was revoked its last use is final and recorded as an event
    /// (edges report with a delay).
    pub last_use_grace_seconds: i64,
    /// Entries (counts plus failures) queued for the writer at most on one replica; a batch that does not
    /// fit is answered 503 with `Retry-After`.
    pub queue_entries: usize,
    /// Rows one ingestion transaction writes at most (a larger batch is stored in parts of this size,
    /// each its own transaction, with a ledger so a resent batch is not counted twice), which bounds how
    /// long it holds SQLite's write lock.
    pub max_rows_per_transaction: usize,
    /// Writer tasks storing queued batches at once with PostgreSQL (SQLite has one write lock: one).
    pub writers: usize,
    /// How often retention runs.
    pub prune_interval_seconds: u64,
    /// Acknowledge a batch once it is in the usage journal, and store and examine it afterwards in large
    /// groups ([`journal`]).
    pub journal: bool,
    /// Rows (as [`UsageConfig::max_rows_per_transaction`] counts them) one journal fold stores at most;
    /// `None`: [`journal::SQLITE_FOLD_ROWS`] or [`journal::POSTGRES_FOLD_ROWS`].
    pub fold_rows: Option<usize>,
    /// Failure samples stored per edge and minute at most by journal folds; the counts and the per-address
    /// failure rollup still count every failure.
    pub failure_samples_per_minute: usize,
}

impl Default for UsageConfig {
    fn default() -> UsageConfig {
        UsageConfig {
            max_counts: 10_000,
            max_failures: 1_000,
            count_retention_seconds: 30 * 86_400,
            count_max_rows: 20_000_000,
            failure_retention_seconds: 7 * 86_400,
            failure_max_rows: 100_000,
            event_retention_seconds: 365 * 86_400,
            event_max_rows: 5_000_000,
            anomaly_retention_seconds: 90 * 86_400,
            edge_flush_seconds: 10,
            last_use_grace_seconds: 120,
            queue_entries: 200_000,
            max_rows_per_transaction: 4_000,
            writers: 2,
            prune_interval_seconds: 60,
            journal: false,
            fold_rows: None,
            failure_samples_per_minute: 600,
        }
    }
}

/// `serve` flags for usage ingestion and retention.
#[derive(clap::Args, Debug, Clone)]
pub struct UsageArgs {
    /// Days per-minute usage counts are kept.
    #[arg(long, env = "EDGEWARDEN_USAGE_RETENTION_DAYS", default_value_t = 30)]
    pub usage_retention_days: i64,
    /// Most per-minute usage count rows kept; the oldest minutes are deleted first.
    #[arg(long, env = "EDGEWARDEN_USAGE_MAX_ROWS", default_value_t = 20_000_000)]
    pub usage_max_rows: i64,
    /// Days failure samples reported by edges are kept.
    #[arg(long, env = "EDGEWARDEN_FAILURE_RETENTION_DAYS", default_value_t = 7)]
    pub failure_retention_days: i64,
    /// Most failure samples kept; the oldest are deleted first.
    #[arg(long, env = "EDGEWARDEN_FAILURE_MAX_ROWS", default_value_t = 100_000)]
    pub failure_max_rows: i64,
    /// Days events (the audit log) are kept.
    #[arg(long, env = "EDGEWARDEN_EVENT_RETENTION_DAYS", default_value_t = 365)]
    pub event_retention_days: i64,
    /// Most events kept; the oldest are deleted first.
    #[arg(long, env = "EDGEWARDEN_EVENT_MAX_ROWS", default_value_t = 5_000_000)]
    pub event_max_rows: i64,
    /// Days resolved anomalies are kept after their last change (open and acknowledged ones stay).
    #[arg(long, env = "EDGEWARDEN_ANOMALY_RETENTION_DAYS", default_value_t = 90)]
    pub anomaly_retention_days: i64,
    /// Usage entries (counts plus failures) queued at most per replica; batches beyond get 503 and
    /// Retry-After.
    #[arg(long, env = "EDGEWARDEN_USAGE_QUEUE", default_value_t = 200_000)]
    pub usage_queue: usize,
    /// Rows one usage write transaction holds at most (bounds how long SQLite's write lock is held). The
    /// usage bench (SQLite, 60 s): 2,000 stored 176 batches/s with revocation p99 20 ms, 4,000 stored 211
    /// with revocation p99 30 ms.
    #[arg(
        long,
        env = "EDGEWARDEN_USAGE_TRANSACTION_ROWS",
        default_value_t = 4_000
    )]
    pub usage_transaction_rows: usize,
    /// Usage writer tasks with PostgreSQL, each storing its own group of queued batches in its own
    /// transaction on its own connection (with SQLite, one: its write lock takes one writer at a time).
    #[arg(long, env = "EDGEWARDEN_USAGE_WRITERS", default_value_t = 2)]
    pub usage_writers: usize,
    /// Seconds between writes of the edges' last polls to the database (shown by GET /api/v1/edges).
    #[arg(long, env = "EDGEWARDEN_EDGE_FLUSH", default_value_t = 10)]
    pub edge_flush: u64,
    /// Answer a usage batch once it is written to the usage journal (a table in the same database, so a
    /// 202 still survives a crash) and store and examine it afterwards, in large groups folded from the
    /// journal by any replica: fewer, larger writes, and batches answered in milliseconds.
    #[arg(long, env = "EDGEWARDEN_USAGE_JOURNAL")]
    pub usage_journal: bool,
    /// Rows one journal fold stores at most (default: 20000 with SQLite, where a revocation waits for the
    /// fold in progress; 1000000 with PostgreSQL, where none does).
    #[arg(long, env = "EDGEWARDEN_USAGE_FOLD_ROWS")]
    pub usage_fold_rows: Option<usize>,
    /// Failure samples stored per edge and minute at most with --usage-journal (every failure is still
    /// counted).
    #[arg(
        long,
        env = "EDGEWARDEN_USAGE_FAILURE_SAMPLES_PER_MINUTE",
        default_value_t = 600
    )]
    pub usage_failure_samples_per_minute: usize,
}

impl UsageArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> UsageConfig {
        UsageConfig {
            count_retention_seconds: self.usage_retention_days.max(1) * 86_400,
            count_max_rows: self.usage_max_rows.max(10_000),
            failure_retention_seconds: self.failure_retention_days.max(1) * 86_400,
            failure_max_rows: self.failure_max_rows.max(100),
            event_retention_seconds: self.event_retention_days.max(1) * 86_400,
            event_max_rows: self.event_max_rows.max(10_000),
            anomaly_retention_seconds: self.anomaly_retention_days.max(1) * 86_400,
            queue_entries: self.usage_queue.max(1),
            max_rows_per_transaction: self.usage_transaction_rows.max(100),
            writers: self.usage_writers.clamp(1, 16),
            edge_flush_seconds: self.edge_flush.max(1),
            journal: self.usage_journal,
            fold_rows: self.usage_fold_rows.map(|r| r.max(100)),
            failure_samples_per_minute: self.usage_failure_samples_per_minute,
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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
#[derive(Debug, Default, Deserialize, Serialize)]
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
pub(crate) fn placeholders(rows: usize, width: usize, skip: usize) -> String {
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

/// What the handler prepared from a validated batch, off the writer's path: summed counts, the
/// (token, address) pairs, the uses per jti. The usage journal stores it as it is ([`journal`]).
#[derive(Debug, Deserialize, Serialize)]
struct Prepared {
    ingested: Ingested,
    bucket: i64,
    dropped: u64,
    /// Decisions reported (sum of the counts).
    total: i64,
    /// (token, address) pairs seen.
    addresses: BTreeSet<(String, String)>,
    /// Allowed uses per jti.
    used: BTreeMap<String, i64>,
    /// The address the batch came from.
    address: String,
    /// Reports this counts for the edge (1; 0 for every part of a split batch but the last).
    reports: i64,
    /// SHA-256 of the body (hex): the key of the parts ledger when the batch is stored in parts.
    digest: Option<String>,
}

fn prepare(batch: UsageBatch, address: String) -> Prepared {
    let bucket = batch.interval_start - batch.interval_start.rem_euclid(60);
    let mut ingested = Ingested {
        edge: batch.edge,
        interval_start: batch.interval_start,
        interval_end: batch.interval_end,
        ..Ingested::default()
    };
    let mut addresses: BTreeSet<(String, String)> = BTreeSet::new();
    let mut used: BTreeMap<String, i64> = BTreeMap::new();
    for c in batch.counts {
        let token = token_key(&c.jti, &c.token_fingerprint);
        if !token.is_empty() {
            for a in c.addresses {
                addresses.insert((token.clone(), a));
            }
        }
        if let (Some(jti), "allowed") = (&c.jti, c.reason.as_str()) {
            *used.entry(jti.clone()).or_default() += c.count;
        }
        let key = (
            token,
            c.subject.unwrap_or_default(),
            c.client_id.unwrap_or_default(),
            c.route,
            c.reason,
        );
        *ingested.counts.entry(key).or_default() += c.count;
    }
    for f in &batch.failures {
        if let Some(jti) = &f.jti {
            addresses.insert((jti.clone(), f.client_address.clone()));
        }
    }
    for (token, _) in &addresses {
        ingested.tokens_with_addresses.insert(token.clone());
    }
    let total = ingested.counts.values().sum();
    ingested.failures = batch.failures;
    Prepared {
        ingested,
        bucket,
        dropped: batch.dropped,
        total,
        addresses,
        used,
        address,
        reports: 1,
        digest: None,
    }
}

/// A batch larger than `max_rows` rows cut into parts of at most `max_rows` rows each (counts, failures
/// weighing [`FAILURE_ROWS`] each, address pairs, token uses), each stored in its own transaction; only
/// the last part counts the report and its decisions for the edge.
fn split(p: &Prepared, max_rows: usize) -> Vec<Prepared> {
    let max = max_rows.max(1);
    let empty = || Prepared {
        ingested: Ingested {
            edge: p.ingested.edge.clone(),
            interval_start: p.ingested.interval_start,
            interval_end: p.ingested.interval_end,
            ..Ingested::default()
        },
        bucket: p.bucket,
        dropped: 0,
        total: 0,
        addresses: BTreeSet::new(),
        used: BTreeMap::new(),
        address: p.address.clone(),
        reports: 0,
        digest: None,
    };
    let mut pieces = vec![empty()];
    let mut rows = 0;
    let mut next = |pieces: &mut Vec<Prepared>, weight: usize| -> usize {
        if rows > 0 && rows + weight > max {
            pieces.push(empty());
            rows = 0;
        }
        rows += weight;
        pieces.len() - 1
    };
    for (key, n) in &p.ingested.counts {
        let i = next(&mut pieces, 1);
        pieces[i].ingested.counts.insert(key.clone(), *n);
    }
    for f in &p.ingested.failures {
        let i = next(&mut pieces, FAILURE_ROWS);
        pieces[i].ingested.failures.push(f.clone());
    }
    for pair in &p.addresses {
        let i = next(&mut pieces, 1);
        pieces[i].addresses.insert(pair.clone());
    }
    for (jti, n) in &p.used {
        let i = next(&mut pieces, 1);
        pieces[i].used.insert(jti.clone(), *n);
    }
    if let Some(last) = pieces.last_mut() {
        last.total = p.total;
        last.reports = p.reports;
    }
    pieces
}

/// Stores one batch larger than `max_rows` in parts, each its own short transaction taking the write turn
/// (so a revocation gets SQLite's lock between two parts instead of waiting for the whole batch). The
/// parts ledger (`usage_parts`, keyed by the body's digest, written in each part's transaction) says how
/// many parts are stored: a batch resent after a failure or a crash between parts stores only the rest,
/// and one resent after all its parts were stored stores nothing, so no part is counted twice.
async fn store_in_parts(
    db: &Db,
    bus: &EventBus,
    feed: &Feed,
    p: &Prepared,
    max_rows: usize,
    stats: Option<&IngestStats>,
) -> Result<usize, StoreError> {
    let Some(digest) = p.digest.as_deref() else {
        return store_group(db, bus, feed, &[p], None, stats)
            .await
            .map(|()| 1);
    };
    let pieces = split(p, max_rows);
    let done: Option<i64> = sqlx::query_scalar("SELECT done FROM usage_parts WHERE batch = $1")
        .bind(digest)
        .fetch_optional(&db.pool)
        .await?;
    let done = done.unwrap_or(0).max(0) as usize;
    for (k, piece) in pieces.iter().enumerate().skip(done) {
        store_group(db, bus, feed, &[piece], Some((digest, k as i64 + 1)), stats).await?;
    }
    Ok(pieces.len().saturating_sub(done))
}

/// What the anomaly detectors see of a validated batch (the pipeline's own preparation), for callers
/// that run [`crate::anomalies::Detector`] themselves.
pub fn ingested(batch: UsageBatch) -> Ingested {
    prepare(batch, String::new()).ingested
}

/// Size of a batch in the ingestion queue's unit: its entries (counts and failures), at least one.
fn entries(batch: &UsageBatch) -> u32 {
    (batch.counts.len() + batch.failures.len()).max(1) as u32
}

/// Fewest bytes one entry takes in a batch body: the shortest valid count entry,
/// `{"route":"/","reason":"allowed","count":1},` is 42 bytes (a failure sample is longer).
const MIN_ENTRY_BYTES: usize = 40;

/// How much CPU priority the parser threads give up (a nice increment; 19 is the lowest priority).
const PARSER_NICE: i32 = 10;

/// A job for the parser threads.
type ParseJob = Box<dyn FnOnce() + Send>;

/// The threads that parse, check and prepare usage batches (one per core), at a lower CPU priority
/// than the async workers and the database connections' threads, so that when a usage flood takes
/// every core, revocations, issuance and the feed still get theirs first. A batch waits for a free
/// parser in arrival order. Only these threads are lowered (Linux keeps a nice value per thread).
#[derive(Clone, Debug)]
struct Parsers {
    jobs: std::sync::mpsc::Sender<ParseJob>,
}

impl Parsers {
    fn start(threads: usize) -> Parsers {
        let (jobs, rx) = std::sync::mpsc::channel::<ParseJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("usage-parse-{i}"))
                .spawn(move || {
                    #[cfg(unix)]
                    if let Err(e) = rustix::process::nice(PARSER_NICE) {
                        tracing::warn!(error = %e, "cannot lower the usage parser's CPU priority");
                    }
                    loop {
                        // The lock is held only while waiting for the next job, never while running one.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            // A panicking job loses its answer (the handler answers 500), not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a usage parser thread");
            }
        }
        Parsers { jobs }
    }

    /// Runs `work` on a parser thread and returns its result.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: ParseJob = Box::new(move || {
            let _ = tx.send(work());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

/// Why a queued batch could not be taken: answered 503 with `Retry-After`, never dropped silently.
#[derive(Debug)]
struct Refusal {
    retry_after: u64,
    message: String,
}

fn unavailable(refusal: Refusal) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": {"code": "ingestion_busy", "message": refusal.message}})),
    )
        .into_response();
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(refusal.retry_after),
    );
    response
}

/// One batch waiting for the writer, with the slot it holds in the queue and where its answer goes.
struct Job {
    prepared: Prepared,
    /// Its journal record, with `--usage-journal`.
    journal: Option<journal::Entry>,
    _room: tokio::sync::OwnedSemaphorePermit,
    reply: tokio::sync::oneshot::Sender<Result<(), Refusal>>,
}

/// Counters of the ingestion pipeline, for logs and tests.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Batches stored and run through the detectors.
    pub stored: AtomicU64,
    /// Batches refused with 503 because the queue was full.
    pub refused_busy: AtomicU64,
    /// Write transactions (each holding one or more batches).
    pub transactions: AtomicU64,
    /// Detector runs that failed (each retried; counted per failure).
    pub detect_failures: AtomicU64,
    /// Detector runs (each over one or more batches).
    pub detect_groups: AtomicU64,
    /// Time spent in write transactions, microseconds.
    pub write_micros: AtomicU64,
    /// Time spent detecting, microseconds.
    pub detect_micros: AtomicU64,
    /// Batches written to the usage journal.
    pub journaled: AtomicU64,
    /// Time spent writing to the usage journal, microseconds.
    pub journal_micros: AtomicU64,
    /// Bytes of the records written to the usage journal.
    pub journal_bytes: AtomicU64,
    /// Time the writer spent in each stage of its transactions, microseconds, in the order of
    /// [`WRITE_STAGES`].
    pub write_stages: [AtomicU64; WRITE_STAGES.len()],
    /// `write_stages` when the last log line was written.
    stages_before: [AtomicU64; WRITE_STAGES.len()],
    /// The detector's stage times when the last log line was written.
    detect_before: [AtomicU64; crate::anomalies::DETECT_STAGES.len()],
}

/// The stages of a usage write transaction, as the ingestion log line names them: waiting for the write
/// turn and a connection, the count upserts, the hourly rollup, the failure samples, the (token,
/// address) pairs, the tokens' first and last use, and the edges' rows with the commit.
pub const WRITE_STAGES: [&str; 7] = [
    "turn",
    "counts",
    "hourly",
    "failures",
    "addresses",
    "tokens",
    "commit",
];

/// Adds the time since `*mark` to stage `stage` of `stages` (if any) and moves the mark.
pub(crate) fn lap(stages: Option<&[AtomicU64]>, stage: usize, mark: &mut std::time::Instant) {
    let now = std::time::Instant::now();
    if let Some(spent) = stages.and_then(|s| s.get(stage)) {
        spent.fetch_add((now - *mark).as_micros() as u64, Ordering::Relaxed);
    }
    *mark = now;
}

/// `name ms, name ms, ...`: each stage's time since the last line (`before`, moved to now), in ms per
/// batch (`per`).
fn stage_line(
    names: &[&str],
    stages: &[AtomicU64],
    before: &[AtomicU64],
    per: impl Fn(u64) -> f64,
) -> String {
    let mut line = String::new();
    for ((name, spent), before) in names.iter().zip(stages).zip(before) {
        let now = spent.load(Ordering::Relaxed);
        let spent = now - before.swap(now, Ordering::Relaxed);
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(&format!("{name} {:.2}", per(spent)));
    }
    line
}

impl IngestStats {
    /// The counters as one log line's figures: batches, transactions, detector runs, and the write and
    /// detection time per batch since `before` (a snapshot taken with this function's second value).
    fn since(
        &self,
        before: [u64; 5],
        detect_stages: &[AtomicU64; crate::anomalies::DETECT_STAGES.len()],
    ) -> (String, [u64; 5]) {
        let now = [
            self.stored.load(Ordering::Relaxed),
            self.transactions.load(Ordering::Relaxed),
            self.detect_groups.load(Ordering::Relaxed),
            self.write_micros.load(Ordering::Relaxed),
            self.detect_micros.load(Ordering::Relaxed),
        ];
        let d: Vec<u64> = now.iter().zip(before).map(|(a, b)| a - b).collect();
        let per = |micros: u64| micros as f64 / 1000.0 / d[0].max(1) as f64;
        let split = stage_line(&WRITE_STAGES, &self.write_stages, &self.stages_before, per);
        let detect_split = stage_line(
            &crate::anomalies::DETECT_STAGES,
            detect_stages,
            &self.detect_before,
            per,
        );
        (
            format!(
                "{} batches in {} transactions and {} detector runs; per batch: write {:.2} ms ({split}), detection {:.2} ms ({detect_split}); {} refused busy, {} detection failures",
                d[0],
                d[1],
                d[2],
                per(d[3]),
                per(d[4]),
                self.refused_busy.load(Ordering::Relaxed),
                self.detect_failures.load(Ordering::Relaxed)
            ),
            now,
        )
    }
}

/// The usage ingestion pipeline of one replica: handlers take room in the queue (bounded by entries, not
/// batches, so memory stays bounded whatever the batch sizes; taken before parsing, so a flood past the
/// bound costs no parsing), validate and prepare batches on low-priority parser threads and queue them;
/// a writer task (with PostgreSQL [`UsageConfig::writers`] of them, each gathering its own group from the
/// queue; with SQLite one) stores whole queued batches together in short transactions (group commit, at most
/// [`UsageConfig::max_rows_per_transaction`] rows; a larger batch is stored alone in parts of that size,
/// each its own transaction, see `store_in_parts`); one detector task runs
/// the anomaly detectors over every stored batch, the groups stored while it was busy together; each batch
/// is answered 202 only after both, so a 202 means stored, never only queued.
/// A full queue is answered 503 with `Retry-After` at once. Revocations and issuance never queue behind
/// usage: they use other pool connections, and with SQLite the writer and the detector take a bulk write
/// turn ([`Db::bulk_write_turn`]) before each transaction, which stands aside while a revocation waits,
/// so a revocation waits for at most the one short ingestion transaction in progress.
#[derive(Debug)]
pub struct Ingestor {
    jobs: tokio::sync::mpsc::UnboundedSender<JobBox>,
    room: Arc<tokio::sync::Semaphore>,
    capacity: u32,
    /// How fast the pipeline drained the queue lately (for `Retry-After`).
    rate: Arc<DrainRate>,
    /// The threads that parse and prepare batches, at a lower CPU priority than the rest of the service.
    parsers: Parsers,
    /// With `--usage-journal`: the journal and the fold's limits.
    journal: Option<(Arc<journal::Journal>, journal::Limits)>,
    /// Counters.
    pub stats: Arc<IngestStats>,
}

/// A boxed job, so the channel's `Debug` does not need the job's.
struct JobBox(Box<Job>);

impl std::fmt::Debug for JobBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Ingestor {
    /// Starts the writer and detector tasks; returns the ingestor and the tasks' handles.
    pub fn start(
        db: Db,
        bus: Arc<EventBus>,
        feed: Arc<Feed>,
        metrics: Arc<crate::metrics::Metrics>,
        config: &crate::config::Config,
    ) -> (Ingestor, Vec<JoinHandle<()>>) {
        let (jobs, rx) = tokio::sync::mpsc::unbounded_channel();
        // The detector's queue is small: when detection falls behind, the writer waits, the ingestion
        // queue fills and edges are told to come back, so no batch goes undetected.
        let (detect_tx, detect_rx) = tokio::sync::mpsc::channel(8);
        let capacity = config
            .usage
            .queue_entries
            .max(config.usage.max_counts + config.usage.max_failures)
            .min(u32::MAX as usize / 2) as u32;
        let stats = Arc::new(IngestStats::default());
        let writers = match db.kind {
            db::DbKind::Sqlite => 1,
            db::DbKind::Postgres => config.usage.writers.max(1),
        };
        let rate = Arc::new(DrainRate::new(writers));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let room = Arc::new(tokio::sync::Semaphore::new(capacity as usize));
        let detector_of = |db: Db, bus: Arc<EventBus>| {
            crate::anomalies::Detector::new(db, bus, config.anomalies.clone()).coalescing()
        };
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();
        let parsers = Parsers::start(std::thread::available_parallelism().map_or(2, |n| n.get()));
        let journal = if config.usage.journal {
            let limits = journal::Limits {
                fold_rows: config.usage.fold_rows.unwrap_or(match db.kind {
                    db::DbKind::Sqlite => journal::SQLITE_FOLD_ROWS,
                    db::DbKind::Postgres => journal::POSTGRES_FOLD_ROWS,
                }),
                part_rows: config.usage.max_rows_per_transaction.min(PART_ROWS),
            };
            let shared = Arc::new(journal::Journal::default());
            tasks.push(tokio::spawn(journal::writer(
                db.clone(),
                rx.clone(),
                shared.clone(),
                stats.clone(),
            )));
            // One fold and one examiner per replica: two detectors side by side can both open the same
            // anomaly (a second fold on PostgreSQL did that in the equivalence test). The fold stores the
            // next group while the examiner runs the detectors over the last one.
            let detector = detector_of(db.clone(), bus.clone());
            let (examine, stored) = tokio::sync::mpsc::channel(2);
            tasks.push(tokio::spawn(journal::folder(journal::Folder {
                db: db.clone(),
                bus: bus.clone(),
                feed: feed.clone(),
                journal: shared.clone(),
                stats: stats.clone(),
                rate: (rate.clone(), 0),
                limits,
                parsers: parsers.clone(),
                quota: Arc::new(std::sync::Mutex::new(journal::SampleQuota::new(
                    config.usage.failure_samples_per_minute,
                ))),
                examine,
                detect_stages: detector.stages.clone(),
            })));
            tasks.push(tokio::spawn(journal::examiner(
                journal::Examiner {
                    db: db.clone(),
                    detector,
                    metrics: metrics.clone(),
                    journal: shared.clone(),
                    stats: stats.clone(),
                    rate: rate.clone(),
                },
                stored,
            )));
            Some((shared, limits))
        } else {
            tasks.extend((0..writers).map(|index| {
                tokio::spawn(writer(
                    db.clone(),
                    bus.clone(),
                    feed.clone(),
                    config.usage.max_rows_per_transaction,
                    rx.clone(),
                    detect_tx.clone(),
                    stats.clone(),
                    (rate.clone(), index),
                ))
            }));
            tasks.push(tokio::spawn(detector(
                detector_of(db, bus),
                metrics,
                detect_rx,
                stats.clone(),
                (room.clone(), capacity as usize),
                rate.clone(),
            )));
            None
        };
        (
            Ingestor {
                jobs,
                room,
                capacity,
                rate,
                parsers,
                journal,
                stats,
            },
            tasks,
        )
    }

    /// The refusal for a batch that finds the queue full.
    fn refusal(&self) -> Refusal {
        self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
        let queued = u64::from(self.capacity) - self.room.available_permits() as u64
            + self.journal.as_ref().map_or(0, |(j, _)| j.backlog() as u64);
        let rate = self.rate.per_second();
        Refusal {
            retry_after: (queued / rate).clamp(1, 30),
            message: format!(
                "usage ingestion is behind ({queued} entries queued on this replica); the batch was not stored: resend it after the Retry-After delay"
            ),
        }
    }

    /// Room in the queue for a body of `bytes` bytes, taken before it is parsed: as many entries as a
    /// body that long can hold at most (see [`MIN_ENTRY_BYTES`]; the caller gives back the excess once
    /// the batch is parsed). A flood is refused before it costs any parsing, which is most of a batch's
    /// CPU: parsing batches that were then refused for want of room starved the revocations.
    fn reserve(
        &self,
        bytes: usize,
        limits: &UsageConfig,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
        let most = (bytes / MIN_ENTRY_BYTES + 1)
            .min(limits.max_counts + limits.max_failures)
            .min(self.capacity as usize) as u32;
        // With the journal, what waits in it counts against the same bound.
        if let Some((journal, _)) = &self.journal {
            if journal.backlog() + i64::from(most) > i64::from(self.capacity) {
                return Err(self.refusal());
            }
        }
        self.room
            .clone()
            .try_acquire_many_owned(most.max(1))
            .map_err(|_| self.refusal())
    }

    /// Queues a prepared batch holding its room in the queue and waits for it to be stored and detected.
    async fn submit(
        &self,
        prepared: Prepared,
        journal: Option<journal::Entry>,
        room: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), Refusal> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            prepared,
            journal,
            _room: room,
            reply,
        };
        if self.jobs.send(JobBox(Box::new(job))).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Why a group of batches was not stored.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    /// The database failed; nothing of the group was committed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Another copy of the same batch (sent again before its first answer) stored this part first; this
    /// copy rolled back and stored nothing.
    #[error("part {part} of this batch was stored meanwhile by the same batch sent again")]
    CopyStoredMeanwhile {
        /// The part the other copy stored.
        part: i64,
    },
}

/// How fast this replica's pipeline drains its queue while busy, in queue entries per second, for
/// `Retry-After`: each writer's rate over its last transaction (the writers work side by side, so their
/// rates add up) and the detector's over its last run; the slower of the two stages bounds the drain.
#[derive(Debug)]
struct DrainRate {
    writers: Vec<AtomicU64>,
    detector: AtomicU64,
}

impl DrainRate {
    fn new(writers: usize) -> Self {
        Self {
            writers: (0..writers).map(|_| AtomicU64::new(0)).collect(),
            detector: AtomicU64::new(0),
        }
    }

    /// Queue entries per second of `elapsed`.
    fn of(entries: usize, elapsed: Duration) -> u64 {
        (entries as f64 / elapsed.as_secs_f64().max(0.000_1)) as u64
    }

    /// Writer `index` stored `entries` queue entries in `elapsed`.
    fn writer_took(&self, index: usize, entries: usize, elapsed: Duration) {
        if let Some(slot) = self.writers.get(index) {
            slot.store(Self::of(entries, elapsed), Ordering::Relaxed);
        }
    }

    /// The detector examined `entries` queue entries in `elapsed`.
    fn detector_took(&self, entries: usize, elapsed: Duration) {
        self.detector
            .store(Self::of(entries, elapsed), Ordering::Relaxed);
    }

    /// Entries per second the queue drains at, at least 1.
    fn per_second(&self) -> u64 {
        let writers: u64 = self.writers.iter().map(|w| w.load(Ordering::Relaxed)).sum();
        let detector = self.detector.load(Ordering::Relaxed);
        match (writers, detector) {
            (0, d) => d,
            (w, 0) => w,
            (w, d) => w.min(d),
        }
        .max(1)
    }
}

/// The room in the queue a group of jobs holds, in entries.
fn queued_entries(group: &[Job]) -> usize {
    group.iter().map(|j| j._room.num_permits()).sum()
}

fn stopped() -> Refusal {
    Refusal {
        retry_after: 5,
        message: "usage ingestion is stopping on this replica; the batch was not stored: resend it"
            .into(),
    }
}

/// The writer task: takes every batch queued so far (up to the row bound), stores them in one
/// transaction, then hands them to the detector.
#[allow(clippy::too_many_arguments)]
async fn writer(
    db: Db,
    bus: Arc<EventBus>,
    feed: Arc<Feed>,
    max_rows: usize,
    rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<JobBox>>>,
    detect: tokio::sync::mpsc::Sender<Vec<Job>>,
    stats: Arc<IngestStats>,
    (rate, index): (Arc<DrainRate>, usize),
) {
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match rx.lock().await.recv().await {
                Some(JobBox(job)) => *job,
                None => return,
            },
        };
        let mut rows = rows_of(&first.prepared);
        let mut group = vec![first];
        // What else is queued joins the group, unless another writer holds the queue: it is waiting
        // for the next batch (so nothing is queued) or gathering its own group.
        if let Ok(mut queue) = rx.try_lock() {
            while rows < max_rows {
                match queue.try_recv() {
                    Ok(JobBox(job)) => {
                        let r = rows_of(&job.prepared);
                        if rows + r > max_rows {
                            next = Some(*job);
                            break;
                        }
                        rows += r;
                        group.push(*job);
                    }
                    Err(_) => break,
                }
            }
        }
        let started = std::time::Instant::now();
        let result = if group.len() == 1 && rows > max_rows {
            store_in_parts(
                &db,
                &bus,
                &feed,
                &group[0].prepared,
                max_rows.min(PART_ROWS),
                Some(&stats),
            )
            .await
            .map(|parts| {
                stats
                    .transactions
                    .fetch_add(parts.saturating_sub(1) as u64, Ordering::Relaxed);
            })
        } else {
            let batches: Vec<&Prepared> = group.iter().map(|j| &j.prepared).collect();
            store_group(&db, &bus, &feed, &batches, None, Some(&stats)).await
        };
        stats
            .write_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        rate.writer_took(index, queued_entries(&group), started.elapsed());
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                if detect.send(group).await.is_err() {
                    return;
                }
            }
            Err(StoreError::CopyStoredMeanwhile { part }) => {
                // Not a fault: an edge sent this batch again while its first copy was being stored, and
                // that copy stored the part first. The resend finds every stored part in the ledger.
                tracing::info!(part, "a usage batch sent twice at once: the other copy stored part {part} first; this copy is told to resend");
                for job in group {
                    let _ = job.reply.send(Err(Refusal {
                        retry_after: 1,
                        message: format!("the same usage batch is being stored by another request (it was sent again before the first answer); this copy stored nothing: resend it, and the parts already stored will not be counted twice (part {part} was stored meanwhile)"),
                    }));
                }
            }
            Err(StoreError::Database(e)) => {
                tracing::error!(error = %e, batches = group.len(), rows, "cannot store usage batches; their edges are told to resend");
                for job in group {
                    let _ = job.reply.send(Err(Refusal {
                        retry_after: 2,
                        message: "the usage batch could not be stored now (database error); it was not stored: resend it".into(),
                    }));
                }
            }
        }
    }
}

/// Rows a batch writes (counts, failures, address pairs), for the per-transaction bound; a failure
/// sample weighs [`FAILURE_ROWS`].
fn rows_of(p: &Prepared) -> usize {
    p.ingested.counts.len()
        + p.ingested.failures.len() * FAILURE_ROWS
        + p.addresses.len()
        + p.used.len()
        + 1
}

/// What one failure sample weighs against the row bounds: its row goes into the table and four indexes
/// (by time, address, subject and jti) at random places, where a count adds to one. In the admin abuse
/// bench (SQLite) a part of 500 failure samples held the write lock 35-72 ms, every other part under
/// 30 ms, and a revocation waiting behind it was the revocations' p99.
const FAILURE_ROWS: usize = 4;

/// Rows per part at most when one batch is too large for a transaction and is stored in parts: a flood of
/// batches at the documented limits is then written in transactions of ~10 ms, and a revocation waiting
/// at SQLite's lock waits for one of those (admin abuse bench, SQLite, two interleaved runs each against
/// parts of 2,000 rows: revocation p50 45/35 -> 19/11 ms, p99 171/118 -> 139/97 ms, flood batches stored
/// 30/34 -> 25/34). Groups of small batches keep the larger bound, for throughput.
const PART_ROWS: usize = 500;

/// Batches the detector examines together at most: its window queries and anomaly writes are made once
/// per group, which is what lets detection keep up with the writer.
const DETECT_GROUP: usize = 64;

/// The detector task: every stored batch, in order, through the anomaly detectors (a failure is retried,
/// never skipped silently), then the batch is answered. The groups stored while it was busy are examined
/// together ([`crate::anomalies::Detector::detect_group`], the same result as one batch at a time).
/// Refreshes of open anomalies are held back while other batches are in flight (`room`, with the queue's
/// capacity, says how many entries are: parsed, queued, stored or being detected) and written when none
/// is, or [`crate::anomalies::COALESCE`] after the last write (see
/// [`crate::anomalies::Detector::coalescing`]), so a batch that arrives alone is answered with every
/// finding written.
async fn detector(
    detector: crate::anomalies::Detector,
    metrics: Arc<crate::metrics::Metrics>,
    mut rx: tokio::sync::mpsc::Receiver<Vec<Job>>,
    stats: Arc<IngestStats>,
    (room, capacity): (Arc<tokio::sync::Semaphore>, usize),
    rate: Arc<DrainRate>,
) {
    let mut logged = (std::time::Instant::now(), [0; 5]);
    loop {
        let next = if detector.holding() {
            match tokio::time::timeout(crate::anomalies::COALESCE, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    write_held(&detector, &stats).await;
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(mut group) = next else {
            write_held(&detector, &stats).await;
            return;
        };
        while group.len() < DETECT_GROUP {
            match rx.try_recv() {
                Ok(more) => group.extend(more),
                Err(_) => break,
            }
        }
        let batches: Vec<&Ingested> = group.iter().map(|j| &j.prepared.ingested).collect();
        let started = std::time::Instant::now();
        detect_retrying(&detector, &batches, &stats).await;
        // Nothing in flight but this group: the refreshes held back are written before it is answered.
        let own = queued_entries(&group);
        if capacity.saturating_sub(room.available_permits()) <= own && detector.holding() {
            write_held(&detector, &stats).await;
        }
        rate.detector_took(queued_entries(&group), started.elapsed());
        stats
            .detect_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.detect_groups.fetch_add(1, Ordering::Relaxed);
        for job in group {
            let ingested = &job.prepared.ingested;
            metrics.usage_ingested(
                job.prepared.total as u64,
                job.prepared.ingested.failures.len() as u64,
            );
            stats.stored.fetch_add(1, Ordering::Relaxed);
            if job.prepared.dropped > 0 {
                tracing::warn!(edge = %ingested.edge, dropped = job.prepared.dropped, "edge dropped usage events");
            }
            let _ = job.reply.send(Ok(()));
        }
        // Where the time goes, every 5 s while batches arrive (the admin bench prints these lines).
        if logged.0.elapsed() >= Duration::from_secs(5) {
            let (line, now) = stats.since(logged.1, &detector.stages);
            tracing::info!("usage ingestion: {line}");
            logged = (std::time::Instant::now(), now);
        }
    }
}

/// Runs the detectors over stored batches; a failure is retried (five times), then said loudly and counted.
async fn detect_retrying(
    detector: &crate::anomalies::Detector,
    batches: &[&Ingested],
    stats: &IngestStats,
) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match detector.detect_group(batches).await {
            Ok(()) => return,
            Err(e) => {
                stats.detect_failures.fetch_add(1, Ordering::Relaxed);
                if attempt >= 5 {
                    // Stored but not fully examined: said loudly, counted, never silent.
                    tracing::error!(error = %e, batches = batches.len(), "anomaly detection failed five times for stored usage batches; giving up on them");
                    return;
                }
                tracing::warn!(error = %e, batches = batches.len(), attempt, "anomaly detection failed for usage batches; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
    }
}

/// Writes the anomaly refreshes `detector` holds back (retried like detection; a failure is logged).
async fn write_held(detector: &crate::anomalies::Detector, stats: &IngestStats) {
    for attempt in 1..=5u64 {
        match detector.write_held().await {
            Ok(()) => return,
            Err(e) => {
                stats.detect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, attempt, "cannot write the anomaly refreshes held back; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
    }
    tracing::error!("the anomaly refreshes held back could not be written five times; they are kept for the next try");
}

async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    ClientAddr(address): ClientAddr,
    req: Request,
) -> ApiResult<Response> {
    principal.require(&[Role::Admin, Role::Edge], "report usage")?;
    // The same rule as every other JSON body: a missing or other content type is a 415.
    crate::extract::require_json(req.headers())?;
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_BATCH_BYTES).await else {
        return Ok(too_large(format!(
            "usage batch is larger than {MAX_BATCH_BYTES} bytes"
        )));
    };
    let usage = state.usage.clone();
    let limits = state.config.usage.clone();
    let journal_limits = usage.journal.as_ref().map(|(_, limits)| *limits);
    // Room in the queue first: what cannot be queued is refused before any CPU goes into parsing it.
    let mut room = match usage.reserve(body.len(), &limits) {
        Ok(room) => room,
        Err(refusal) => return Ok(unavailable(refusal)),
    };
    // Parsing, checking and preparing a batch of up to 4 MiB is CPU work of milliseconds: it runs on the
    // parser threads, one batch per core at a time and at a lower priority, so the async workers and
    // the database connections stay free for revocations and the feed.
    let parsed = usage
        .parsers
        .run(move || -> ApiResult<Result<_, Response>> {
            let batch: UsageBatch = parse_json(&body)?;
            // The parts ledger's key, should the batch be too large for one transaction (the journal
            // claims parts on the batch's own row instead).
            let digest = journal_limits
                .is_none()
                .then(|| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)));
            drop(body);
            if let Some(message) = oversized(&batch, &limits) {
                return Ok(Err(too_large(message)));
            }
            validate(&batch)?;
            let shape = (
                batch.counts.len(),
                batch.failures.len(),
                batch.interval_start - batch.interval_start.rem_euclid(60),
                entries(&batch),
            );
            let prepared = Prepared {
                digest,
                ..prepare(batch, address)
            };
            let (prepared, record) = match journal_limits {
                None => (prepared, None),
                Some(limits) => {
                    let (record, prepared) = journal::Entry::new(prepared, shape.3, limits)
                        .map_err(|e| {
                            ApiError::Internal(anyhow::anyhow!(
                                "cannot encode a usage batch for the journal: {e}"
                            ))
                        })?;
                    (prepared, Some(record))
                }
            };
            Ok(Ok((prepared, record, shape)))
        })
        .await
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("usage batch parser stopped")))??;
    let (prepared, record, (accepted_counts, accepted_failures, bucket, size)) = match parsed {
        Ok(parsed) => parsed,
        Err(response) => return Ok(response),
    };
    principal.require_edge(&prepared.ingested.edge)?;
    // Give back the room the body's length reserved beyond its entries (or take the little more a
    // body denser than `MIN_ENTRY_BYTES` needs).
    let size = size as usize;
    if room.num_permits() > size {
        drop(room.split(room.num_permits() - size));
    } else if room.num_permits() < size {
        match usage
            .room
            .clone()
            .try_acquire_many_owned((size - room.num_permits()) as u32)
        {
            Ok(more) => room.merge(more),
            Err(_) => return Ok(unavailable(usage.refusal())),
        }
    }
    if let Err(refusal) = usage.submit(prepared, record, room).await {
        return Ok(unavailable(refusal));
    }
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"accepted_counts": accepted_counts, "accepted_failures": accepted_failures, "bucket": bucket}))).into_response())
}

/// Stores a group of prepared batches in one transaction: counts summed per key across the group,
/// failures, address pairs, token first/last use (one `token.first_use` event per token) and one
/// `edges` row update per edge; with `ledger` (digest, parts stored), the part of a split batch it
/// stores is recorded in the same transaction.
async fn store_group(
    db: &Db,
    bus: &EventBus,
    feed: &Feed,
    group: &[&Prepared],
    ledger: Option<(&str, i64)>,
    stats: Option<&IngestStats>,
) -> Result<(), StoreError> {
    let agg = aggregate(group, None);
    // A bulk writer: a revocation waiting for SQLite's lock goes first.
    let mut mark = std::time::Instant::now();
    let _turn = db.bulk_write_turn().await;
    let mut tx = db.begin_bulk().await?;
    lap(stats.map(|s| &s.write_stages[..]), 0, &mut mark);
    write_group(db, bus, feed, &mut tx, group, &agg, stats, &mut mark).await?;
    if let Some((digest, done)) = ledger {
        // The part is claimed only if it is the next one: the same batch sent again while this one was
        // being stored (by an edge that gave up waiting, to another writer or another replica) found the
        // same parts missing, and whichever commits second finds the ledger moved on and stores nothing.
        let claimed = if done == 1 {
            sqlx::query(
                "INSERT INTO usage_parts (batch, done, at) VALUES ($1, $2, $3) ON CONFLICT (batch) DO NOTHING",
            )
        } else {
            sqlx::query("UPDATE usage_parts SET done = $2, at = $3 WHERE batch = $1 AND done = $2 - 1")
        }
        .bind(digest)
        .bind(done)
        .bind(now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            tx.rollback().await?;
            return Err(StoreError::CopyStoredMeanwhile { part: done });
        }
    }
    tx.commit().await?;
    lap(stats.map(|s| &s.write_stages[..]), 6, &mut mark);
    Ok(())
}

/// What a group of batches writes, summed per row and sorted by key (every table is written in key
/// order, so two writers cannot deadlock). Built by [`aggregate`] without the database: a journal fold
/// builds it on the parser threads, away from the async workers that answer revocations.
#[derive(Debug, Default)]
struct Aggregate {
    /// When it was summed: address pairs are seen at most then, samples received then.
    now: i64,
    /// (minute, edge, key) -> decisions.
    counts: Vec<((i64, String, CountKey), i64)>,
    /// (hour, edge, reason) -> decisions: the rollup the pages read.
    hourly: Vec<((i64, String, String), i64)>,
    /// (edge, sample) of the failure samples stored.
    samples: Vec<(String, FailureEntry)>,
    /// (address, minute) -> failures: every failure, for the repeated-failures detector.
    per_address: Vec<((String, i64), i64)>,
    /// (token, address) -> last seen.
    pairs: Vec<((String, String), i64)>,
    /// jti -> (uses, last seen, index in the group of the first batch that used it).
    used: Vec<(String, (i64, i64, usize))>,
    /// edge -> (reports, decisions, address).
    edges: Vec<(String, (i64, i64, String))>,
}

/// Sums a group of prepared batches into the rows they write; `samples` are the failure samples stored
/// per batch (all of them without).
fn aggregate(group: &[&Prepared], samples: Option<&[Vec<FailureEntry>]>) -> Aggregate {
    let now = now();
    let mut counts: BTreeMap<(i64, &str, &CountKey), i64> = BTreeMap::new();
    let mut pairs: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut used: BTreeMap<&str, (i64, i64, usize)> = BTreeMap::new();
    let mut edges: BTreeMap<&str, (i64, i64, &str)> = BTreeMap::new();
    let mut per_address: BTreeMap<(&str, i64), i64> = BTreeMap::new();
    for (i, p) in group.iter().enumerate() {
        let edge = p.ingested.edge.as_str();
        for (key, n) in &p.ingested.counts {
            *counts.entry((p.bucket, edge, key)).or_default() += n;
        }
        let seen_at = p.ingested.interval_end.min(now);
        for (token, address) in &p.addresses {
            let at = pairs.entry((token, address)).or_insert(seen_at);
            *at = (*at).max(seen_at);
        }
        for (jti, n) in &p.used {
            let e = used.entry(jti).or_insert((0, p.ingested.interval_end, i));
            e.0 += n;
            e.1 = e.1.max(p.ingested.interval_end);
        }
        let e = edges.entry(edge).or_insert((0, 0, &p.address));
        e.0 += p.reports;
        e.1 += p.total;
        e.2 = &p.address;
        for f in &p.ingested.failures {
            *per_address
                .entry((f.client_address.as_str(), f.at - f.at.rem_euclid(60)))
                .or_default() += 1;
        }
    }
    let mut hourly: BTreeMap<(i64, &str, &str), i64> = BTreeMap::new();
    for ((bucket, edge, (_, _, _, _, reason)), n) in &counts {
        *hourly
            .entry((bucket - bucket.rem_euclid(3600), edge, reason.as_str()))
            .or_default() += n;
    }
    // The samples stored: every one, or those a journal fold keeps (its per-edge quota).
    let samples = group
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            let kept = match samples {
                None => &p.ingested.failures[..],
                Some(samples) => samples.get(i).map_or(&[][..], |s| &s[..]),
            };
            kept.iter().map(|f| (p.ingested.edge.clone(), f.clone()))
        })
        .collect();
    Aggregate {
        now,
        counts: counts
            .into_iter()
            .map(|((b, e, k), n)| ((b, e.to_owned(), k.clone()), n))
            .collect(),
        hourly: hourly
            .into_iter()
            .map(|((h, e, r), n)| ((h, e.to_owned(), r.to_owned()), n))
            .collect(),
        samples,
        per_address: per_address
            .into_iter()
            .map(|((a, m), n)| ((a.to_owned(), m), n))
            .collect(),
        pairs: pairs
            .into_iter()
            .map(|((t, a), at)| ((t.to_owned(), a.to_owned()), at))
            .collect(),
        used: used.into_iter().map(|(j, u)| (j.to_owned(), u)).collect(),
        edges: edges
            .into_iter()
            .map(|(e, (r, d, a))| (e.to_owned(), (r, d, a.to_owned())))
            .collect(),
    }
}

/// Writes the rows of `agg`, summed from `group`, into `tx` (see [`store_group`]), without committing:
/// the counts, the hourly rollup, failures, address pairs, token first/last use (one `token.first_use`
/// event per token) and the edges' rows. `mark` times the stages.
#[allow(clippy::too_many_arguments)]
async fn write_group(
    db: &Db,
    bus: &EventBus,
    feed: &Feed,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    group: &[&Prepared],
    agg: &Aggregate,
    stats: Option<&IngestStats>,
    mark: &mut std::time::Instant,
) -> Result<(), sqlx::Error> {
    let now = agg.now;
    for chunk in agg.counts.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO usage_counts (bucket, edge, token, subject, client_id, route, reason, count) VALUES {} \
             ON CONFLICT (bucket, edge, token, subject, client_id, route, reason) DO UPDATE SET count = usage_counts.count + excluded.count",
            row_placeholders(db.kind, chunk.len(), 8)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((bucket, edge, (token, subject, client, route, reason)), count) in chunk {
            query = query
                .bind(*bucket)
                .bind(edge.as_str())
                .bind(token.as_str())
                .bind(subject.as_str())
                .bind(client.as_str())
                .bind(route.as_str())
                .bind(reason.as_str())
                .bind(*count);
        }
        query.execute(&mut **tx).await?;
    }
    lap(stats.map(|s| &s.write_stages[..]), 1, mark);
    // The hourly rollup the pages read, summed per (hour, edge, reason): one multi-row upsert per group
    // instead of a trigger firing per inserted row (a third of the write's time with the trigger).
    for chunk in agg.hourly.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO usage_hourly (hour, edge, reason, count) VALUES {} \
             ON CONFLICT (hour, edge, reason) DO UPDATE SET count = usage_hourly.count + excluded.count",
            row_placeholders(db.kind, chunk.len(), 4)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((hour, edge, reason), n) in chunk {
            query = query
                .bind(*hour)
                .bind(edge.as_str())
                .bind(reason.as_str())
                .bind(*n);
        }
        query.execute(&mut **tx).await?;
    }
    lap(stats.map(|s| &s.write_stages[..]), 2, mark);
    for chunk in agg.samples.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO usage_failures (id, edge, at, received_at, jti, subject, client_id, route, reason, client_address, iat, nbf) VALUES {}",
            row_placeholders(db.kind, chunk.len(), 12)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (edge, f) in chunk {
            query = query
                .bind(random_id("uf_"))
                .bind(edge.as_str())
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
        query.execute(&mut **tx).await?;
    }
    // The repeated-failures detector's rollup: failures per client address and minute (migration 0010).
    for chunk in agg.per_address.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO address_failure_minutes (address, minute, failures) VALUES {} \
             ON CONFLICT (address, minute) DO UPDATE SET failures = address_failure_minutes.failures + excluded.failures",
            row_placeholders(db.kind, chunk.len(), 3)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((address, minute), n) in chunk {
            query = query.bind(address.as_str()).bind(*minute).bind(*n);
        }
        query.execute(&mut **tx).await?;
    }
    lap(stats.map(|s| &s.write_stages[..]), 3, mark);
    for chunk in agg.pairs.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO token_addresses (token, address, first_seen, last_seen) VALUES {} \
             ON CONFLICT (token, address) DO UPDATE SET last_seen = CASE WHEN excluded.last_seen > token_addresses.last_seen THEN excluded.last_seen ELSE token_addresses.last_seen END",
            row_placeholders(db.kind, chunk.len(), 4)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ((token, addr), at) in chunk {
            query = query
                .bind(token.as_str())
                .bind(addr.as_str())
                .bind(*at)
                .bind(*at);
        }
        query.execute(&mut **tx).await?;
    }
    lap(stats.map(|s| &s.write_stages[..]), 4, mark);
    for chunk in agg.used.chunks(CHUNK) {
        // First use: only rows still without one are claimed, so each token gets one event even
        // when replicas ingest reports for it at the same moment. VALUES columns are column1,
        // column2 on both engines (SQLite has no column aliases there).
        let sql = format!(
            "UPDATE tokens SET first_used_at = v.column2 FROM (VALUES {}) AS v \
             WHERE tokens.jti = v.column1 AND tokens.first_used_at IS NULL RETURNING jti, subject, client_id",
            row_placeholders(db.kind, chunk.len(), 2)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (jti, (_, _, first)) in chunk {
            let started = group.get(*first).map_or(now, |p| p.ingested.interval_start);
            query = query.bind(jti.as_str()).bind(started);
        }
        let first_uses = query.fetch_all(&mut **tx).await?;
        let sql = format!(
            "UPDATE tokens SET use_count = use_count + v.column2, \
             last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < v.column3 THEN v.column3 ELSE last_used_at END \
             FROM (VALUES {}) AS v WHERE tokens.jti = v.column1",
            row_placeholders(db.kind, chunk.len(), 3)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (jti, (uses, last, _)) in chunk {
            query = query.bind(jti.as_str()).bind(*uses).bind(*last);
        }
        query.execute(&mut **tx).await?;
        for row in first_uses {
            let jti: String = row.try_get("jti")?;
            let Some(p) = chunk
                .iter()
                .find(|(j, _)| *j == jti)
                .and_then(|(_, (_, _, first))| group.get(*first))
            else {
                continue;
            };
            let seen_from: Vec<&String> = p
                .addresses
                .iter()
                .filter(|(t, _)| *t == jti)
                .map(|(_, a)| a)
                .collect();
            let event = Event::new("token.first_use", format!("edge:{}", p.ingested.edge))
                .subject(row.try_get::<String, _>("subject")?)
                .client(row.try_get::<String, _>("client_id")?)
                .details(json!({"edge": p.ingested.edge, "at": p.ingested.interval_start, "addresses": seen_from}))
                .jti(jti);
            events::record(bus, db, &mut *tx, event).await?;
        }
    }
    lap(stats.map(|s| &s.write_stages[..]), 5, mark);
    // The edge's poll as this replica saw it rides along, so a report also refreshes the poll columns.
    let polls = feed.edges();
    for (edge, (reports, decisions, address)) in &agg.edges {
        let poll = polls.iter().find(|e| e.name == *edge);
        sqlx::query(
            "INSERT INTO edges (name, address, last_poll, feed_cursor, last_report, reports, events, first_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $5) \
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, last_report = excluded.last_report, \
             reports = edges.reports + excluded.reports, events = edges.events + excluded.events, \
             last_poll = CASE WHEN edges.last_poll IS NULL OR excluded.last_poll > edges.last_poll THEN excluded.last_poll ELSE edges.last_poll END, \
             feed_cursor = CASE WHEN edges.last_poll IS NULL OR excluded.last_poll > edges.last_poll THEN excluded.feed_cursor ELSE edges.feed_cursor END",
        )
        .bind(edge.as_str())
        .bind(address.as_str())
        .bind(poll.map(|p| p.last_poll))
        .bind(poll.map(|p| p.cursor))
        .bind(now)
        .bind(*reports)
        .bind(*decisions)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
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

/// Deletes usage data, events and resolved anomalies past their retention (time, then row bounds), in
/// short chunks so pruning never holds SQLite's write lock for long.
pub async fn prune(db: &Db, config: &UsageConfig) -> Result<(), sqlx::Error> {
    let now = now();
    db::delete_in_chunks(
        db,
        "usage_counts",
        "bucket < $1",
        now - config.count_retention_seconds,
    )
    .await?;
    let cut: Option<i64> = sqlx::query_scalar(
        "SELECT bucket FROM usage_counts ORDER BY bucket DESC LIMIT 1 OFFSET $1",
    )
    .bind(config.count_max_rows)
    .fetch_optional(&db.pool)
    .await?;
    if let Some(cut) = cut {
        db::delete_in_chunks(db, "usage_counts", "bucket <= $1", cut).await?;
    }
    db::delete_in_chunks(
        db,
        "usage_failures",
        "at < $1",
        now - config.failure_retention_seconds,
    )
    .await?;
    let cut: Option<i64> =
        sqlx::query_scalar("SELECT at FROM usage_failures ORDER BY at DESC LIMIT 1 OFFSET $1")
            .bind(config.failure_max_rows)
            .fetch_optional(&db.pool)
            .await?;
    if let Some(cut) = cut {
        db::delete_in_chunks(db, "usage_failures", "at <= $1", cut).await?;
    }
    // The per-address rollup covers what the samples still cover: minutes before the oldest one kept.
    let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(at) FROM usage_failures")
        .fetch_one(&db.pool)
        .await?;
    let oldest = oldest.unwrap_or(now - config.failure_retention_seconds);
    db::delete_in_chunks(
        db,
        "address_failure_minutes",
        "minute < $1",
        oldest - oldest.rem_euclid(60),
    )
    .await?;
    db::delete_in_chunks(db, "token_addresses", "last_seen < $1", now - 7 * 86_400).await?;
    // A split batch is resent within minutes if at all; a day of its ledger is plenty.
    db::delete_in_chunks(db, "usage_parts", "at < $1", now - 86_400).await?;
    events::prune(db, config.event_retention_seconds, config.event_max_rows).await?;
    crate::anomalies::prune(db, config.anomaly_retention_seconds).await?;
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
            if last_slow.elapsed() >= Duration::from_secs(config.prune_interval_seconds.max(1)) {
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
    fn the_stage_line_gives_each_stage_since_the_last_line_per_batch() {
        let spent: Vec<AtomicU64> = [3000, 500, 0].into_iter().map(AtomicU64::new).collect();
        let before: Vec<AtomicU64> = [1000, 500, 0].into_iter().map(AtomicU64::new).collect();
        let per_batch = |micros: u64| micros as f64 / 1000.0 / 2.0;
        let line = stage_line(&["turn", "counts", "hourly"], &spent, &before, per_batch);
        assert_eq!(line, "turn 1.00, counts 0.00, hourly 0.00");
        // The next line starts from these.
        spent[1].fetch_add(4000, Ordering::Relaxed);
        let line = stage_line(&["turn", "counts", "hourly"], &spent, &before, per_batch);
        assert_eq!(line, "turn 0.00, counts 2.00, hourly 0.00");
        let mut mark = std::time::Instant::now() - Duration::from_millis(5);
        lap(Some(&spent[..]), 2, &mut mark);
        assert!(spent[2].load(Ordering::Relaxed) >= 5000);
        assert!(mark.elapsed() < Duration::from_millis(5));
    }

    fn failure(n: usize) -> FailureEntry {
        FailureEntry {
            jti: None,
            subject: None,
            client_id: None,
            route: None,
            reason: "expired".into(),
            client_address: format!("192.0.2.{n}"),
            at: 0,
            iat: None,
            nbf: None,
        }
    }

    #[test]
    fn parts_weigh_a_failure_sample_as_several_rows() {
        let batch = UsageBatch {
            edge: "e".into(),
            interval_start: 0,
            interval_end: 10,
            dropped: 0,
            counts: (0..150)
                .map(|i| CountEntry {
                    token_fingerprint: None,
                    jti: None,
                    subject: Some(format!("s{i}")),
                    client_id: None,
                    route: "/".into(),
                    reason: "allowed".into(),
                    count: 1,
                    addresses: Vec::new(),
                })
                .collect(),
            failures: (0..100).map(failure).collect(),
        };
        let p = prepare(batch, String::new());
        assert_eq!(rows_of(&p), 150 + 100 * FAILURE_ROWS + 1);
        let parts = split(&p, 100);
        // 150 counts in two parts (100 + 50), then failures 12 to a part: 50 + 12 * 4 = 98 fills the
        // second part with 12, and 88 remain at 25 per part.
        let shape: Vec<(usize, usize)> = parts
            .iter()
            .map(|p| (p.ingested.counts.len(), p.ingested.failures.len()))
            .collect();
        assert_eq!(
            shape,
            [(100, 0), (50, 12), (0, 25), (0, 25), (0, 25), (0, 13)]
        );
        for part in &parts {
            let weight = part.ingested.counts.len() + part.ingested.failures.len() * FAILURE_ROWS;
            assert!(weight <= 100, "a part of weight {weight}");
        }
        // Only the last part counts the report.
        let reports: Vec<i64> = parts.iter().map(|p| p.reports).collect();
        assert_eq!(reports, [0, 0, 0, 0, 0, 1]);
    }

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

    #[test]
    fn the_drain_rate_adds_the_writers_up_and_is_bounded_by_the_detector() {
        let rate = DrainRate::new(2);
        assert_eq!(rate.per_second(), 1, "nothing measured yet");
        rate.writer_took(0, 1_000, Duration::from_millis(100));
        assert_eq!(rate.per_second(), 10_000);
        rate.writer_took(1, 2_000, Duration::from_millis(100));
        assert_eq!(rate.per_second(), 30_000, "two writers store side by side");
        rate.detector_took(1_000, Duration::from_millis(50));
        assert_eq!(
            rate.per_second(),
            20_000,
            "the detector is the slower stage"
        );
        rate.detector_took(10_000, Duration::from_millis(100));
        assert_eq!(
            rate.per_second(),
            30_000,
            "the writers are the slower stage"
        );
        rate.writer_took(7, 1, Duration::from_secs(1));
        assert_eq!(rate.per_second(), 30_000, "no such writer: ignored");
    }
}
