//! Anomaly detection over usage reports and lifecycle events, and the API to triage the results.
//! Detectors run after each usage batch is stored, over a sliding window of stored data; each anomaly
//! has a kind, a severity, a subject (token, client, subject, address or edge), evidence and a state
//! (open, acknowledged, resolved). Raising deduplicates: while an anomaly of the same kind and subject
//! is open or acknowledged, new findings update its evidence and occurrence count instead of adding rows.
//! One edge's reports open at most `edge_cap` new anomalies per `edge_cap_window_seconds`; findings past
//! the cap are counted (per kind, in the evidence, and in `occurrences`) in one `anomalies_suppressed`
//! anomaly on that edge. Resolved anomalies are deleted after the retention (`--anomaly-retention-days`).
//! Refresh-token reuse is raised by `oauth.rs` at the moment it happens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row as _;

use crate::auth::{Principal, Role};
use crate::db::{now, Db};
use crate::error::{ApiError, ApiResult};
use crate::events::{self, Event, EventBus};
use crate::extract::{Json, Query};
use crate::revocations::{page_params, Page};
use crate::secrets::random_id;
use crate::usage::Ingested;
use crate::AppState;
pub use edgewarden_api_types::{Anomaly, AnomalyUpdate as UpdateRequest};

/// Detector thresholds; every count is over the last `window_seconds`.
#[derive(Clone, Debug)]
pub struct AnomalyConfig {
    /// Sliding window of the count-based detectors.
    pub window_seconds: i64,
    /// Failures from one client address.
    pub address_failures: i64,
    /// Refused requests for one subject.
    pub subject_failures: i64,
    /// Uses of revoked tokens before one token is reported (1: every one).
    pub revoked_uses: i64,
    /// Requests with expired tokens from one client that say it is not refreshing.
    pub expired_uses: i64,
    /// `insufficient_scope` refusals for one client.
    pub insufficient_scope: i64,
    /// Distinct addresses one token was used from.
    pub token_addresses: i64,
    /// How far in the future `iat`/`nbf` (or an edge's clock) may be before it is clock skew.
    pub clock_skew_leeway_seconds: i64,
    /// How long after a revocation an edge may still allow the token (its poll interval and then some)
    /// before that is reported as a propagation failure.
    pub revocation_grace_seconds: i64,
    /// New anomalies one edge's reports may open per [`AnomalyConfig::edge_cap_window_seconds`]; further
    /// findings are counted in one `anomalies_suppressed` anomaly on the edge.
    pub edge_cap: i64,
    /// The window of the per-edge cap.
    pub edge_cap_window_seconds: i64,
}

impl Default for AnomalyConfig {
    fn default() -> AnomalyConfig {
        AnomalyConfig {
            window_seconds: 300,
            address_failures: 20,
            subject_failures: 20,
            revoked_uses: 1,
            expired_uses: 50,
            insufficient_scope: 20,
            token_addresses: 10,
            clock_skew_leeway_seconds: 60,
            revocation_grace_seconds: 10,
            edge_cap: 100,
            edge_cap_window_seconds: 3600,
        }
    }
}

/// `serve` flags for the anomaly detectors.
#[derive(clap::Args, Debug, Clone)]
pub struct AnomalyArgs {
    /// Sliding window, in seconds, over which the anomaly detectors count.
    #[arg(long, env = "EDGEWARDEN_ANOMALY_WINDOW", default_value_t = 300)]
    pub anomaly_window: i64,
    /// Refused requests from one client address within the window that raise an anomaly.
    #[arg(
        long,
        env = "EDGEWARDEN_ANOMALY_ADDRESS_FAILURES",
        default_value_t = 20
    )]
    pub anomaly_address_failures: i64,
    /// Refused requests for one subject within the window that raise an anomaly.
    #[arg(
        long,
        env = "EDGEWARDEN_ANOMALY_SUBJECT_FAILURES",
        default_value_t = 20
    )]
    pub anomaly_subject_failures: i64,
    /// Uses of one revoked token within the window that raise an anomaly.
    #[arg(long, env = "EDGEWARDEN_ANOMALY_REVOKED_USES", default_value_t = 1)]
    pub anomaly_revoked_uses: i64,
    /// Requests with expired tokens from one client within the window that say it is not refreshing.
    #[arg(long, env = "EDGEWARDEN_ANOMALY_EXPIRED_USES", default_value_t = 50)]
    pub anomaly_expired_uses: i64,
    /// insufficient_scope refusals for one client within the window that raise an anomaly.
    #[arg(
        long,
        env = "EDGEWARDEN_ANOMALY_INSUFFICIENT_SCOPE",
        default_value_t = 20
    )]
    pub anomaly_insufficient_scope: i64,
    /// Distinct client addresses one token may be used from within the window.
    #[arg(long, env = "EDGEWARDEN_ANOMALY_TOKEN_ADDRESSES", default_value_t = 10)]
    pub anomaly_token_addresses: i64,
    /// Seconds iat/nbf (or an edge's clock) may lie in the future before it is reported as clock skew.
    #[arg(long, env = "EDGEWARDEN_ANOMALY_CLOCK_SKEW", default_value_t = 60)]
    pub anomaly_clock_skew: i64,
    /// Seconds after a revocation that an edge may still allow the token before it is a propagation anomaly.
    #[arg(
        long,
        env = "EDGEWARDEN_ANOMALY_REVOCATION_GRACE",
        default_value_t = 10
    )]
    pub anomaly_revocation_grace: i64,
    /// New anomalies one edge's reports may open per cap window; further findings are counted in one
    /// anomalies_suppressed anomaly on that edge.
    #[arg(long, env = "EDGEWARDEN_ANOMALY_EDGE_CAP", default_value_t = 100)]
    pub anomaly_edge_cap: i64,
    /// Seconds of the per-edge anomaly cap's window.
    #[arg(
        long,
        env = "EDGEWARDEN_ANOMALY_EDGE_CAP_WINDOW",
        default_value_t = 3600
    )]
    pub anomaly_edge_cap_window: i64,
}

impl AnomalyArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> AnomalyConfig {
        AnomalyConfig {
            window_seconds: self.anomaly_window.max(1),
            address_failures: self.anomaly_address_failures.max(1),
            subject_failures: self.anomaly_subject_failures.max(1),
            revoked_uses: self.anomaly_revoked_uses.max(1),
            expired_uses: self.anomaly_expired_uses.max(1),
            insufficient_scope: self.anomaly_insufficient_scope.max(1),
            token_addresses: self.anomaly_token_addresses.max(1),
            clock_skew_leeway_seconds: self.anomaly_clock_skew.max(0),
            revocation_grace_seconds: self.anomaly_revocation_grace.max(0),
            edge_cap: self.anomaly_edge_cap.max(1),
            edge_cap_window_seconds: self.anomaly_edge_cap_window.max(60),
        }
    }
}

/// Every kind of anomaly.
pub const KINDS: &[&str] = &[
    "address_failures",
    "subject_failures",
    "revoked_token_use",
    "revoked_token_allowed",
    "expired_token_use",
    "clock_skew",
    "token_many_addresses",
    "refresh_token_reuse",
    "insufficient_scope_burst",
    SUPPRESSED_KIND,
];

/// Reasons that are refusals (everything but allowed and anonymous).
fn is_failure(reason: &str) -> bool {
    !matches!(reason, "allowed" | "anonymous")
}

/// Runs the detectors and raises anomalies: the database, the event log and the thresholds, without the
/// rest of the app (the usage pipeline's detector task holds one).
#[derive(Debug)]
pub struct Detector {
    db: Db,
    events: Arc<EventBus>,
    config: AnomalyConfig,
}

/// Findings of one batch that the per-edge cap kept from opening new anomalies, per kind.
#[derive(Debug, Default)]
struct Suppressed(BTreeMap<String, i64>);

/// A batch's findings, collected so the anomalies they refresh are updated in a few multi-row
/// statements instead of one write per finding: (kind, subject kind, subject) to (severity, latest
/// evidence, occurrences).
#[derive(Debug, Default)]
struct Findings {
    pending: BTreeMap<(String, String, String), (String, Value, i64)>,
    suppressed: Suppressed,
}

impl Detector {
    /// The database it reads and writes.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// A detector over `db` recording to `events` with thresholds `config`.
    pub fn new(db: Db, events: Arc<EventBus>, config: AnomalyConfig) -> Detector {
        Detector { db, events, config }
    }

    /// Raises (or refreshes) an anomaly: updates the open or acknowledged one with the same kind and
    /// subject (adding `occurrences`), else opens a new one and records an `anomaly.opened` event.
    /// A finding from an edge's report opens a new anomaly only while that edge opened fewer than
    /// [`AnomalyConfig::edge_cap`] within [`AnomalyConfig::edge_cap_window_seconds`]; past the cap it is
    /// counted in `suppressed` instead. Returns the anomaly id, or `None` when suppressed.
    #[allow(clippy::too_many_arguments)]
    async fn raise(
        &self,
        edge: Option<(&str, &mut Suppressed)>,
        kind: &str,
        severity: &str,
        subject_kind: &str,
        subject: &str,
        evidence: Value,
        occurrences: i64,
    ) -> Result<Option<String>, sqlx::Error> {
        let now = now();
        // The common case, an anomaly already open, costs one statement and no transaction.
        let existing: Option<String> = sqlx::query_scalar(
            "UPDATE anomalies SET evidence = $1, occurrences = occurrences + $6, last_seen = $2, updated_at = $2 \
             WHERE kind = $3 AND subject_kind = $4 AND subject = $5 AND state IN ('open', 'acknowledged') RETURNING id",
        )
        .bind(evidence.to_string())
        .bind(now)
        .bind(kind)
        .bind(subject_kind)
        .bind(subject)
        .bind(occurrences)
        .fetch_optional(&self.db.pool)
        .await?;
        if let Some(id) = existing {
            return Ok(Some(id));
        }
        let edge_name = match edge {
            Some((edge, suppressed)) => {
                let opened: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM anomalies WHERE edge = $1 AND created_at >= $2 AND kind <> $3",
                )
                .bind(edge)
                .bind(now - self.config.edge_cap_window_seconds)
                .bind(SUPPRESSED_KIND)
                .fetch_one(&self.db.pool)
                .await?;
                if opened >= self.config.edge_cap {
                    *suppressed.0.entry(kind.to_owned()).or_default() += 1;
                    return Ok(None);
                }
                Some(edge)
            }
            None => None,
        };
        let mut tx = self.db.pool.begin().await?;
        let id = random_id("anm_");
        sqlx::query(
            "INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at, occurrences, last_seen, edge) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $7, $8, $7, $9)",
        )
        .bind(&id)
        .bind(kind)
        .bind(severity)
        .bind(subject_kind)
        .bind(subject)
        .bind(evidence.to_string())
        .bind(now)
        .bind(occurrences)
        .bind(edge_name)
        .execute(&mut *tx)
        .await?;
        let mut event = Event::new("anomaly.opened", "system:anomalies")
            .details(json!({"anomaly_id": id, "kind": kind, "severity": severity, "subject_kind": subject_kind, "subject": subject}));
        event = match subject_kind {
            "subject" => event.subject(subject),
            "client" => event.client(subject),
            "token" if !subject.starts_with("fp:") => event.jti(subject),
            _ => event,
        };
        events::record(&self.events, &self.db, &mut tx, event).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// A finding from a report: collected, raised by [`Detector::flush`].
    #[allow(clippy::too_many_arguments)]
    async fn found(
        &self,
        _edge: &str,
        findings: &mut Findings,
        kind: &str,
        severity: &str,
        subject_kind: &str,
        subject: &str,
        evidence: Value,
    ) -> Result<(), sqlx::Error> {
        let entry = findings
            .pending
            .entry((kind.to_owned(), subject_kind.to_owned(), subject.to_owned()))
            .or_insert_with(|| (severity.to_owned(), Value::Null, 0));
        entry.1 = evidence;
        entry.2 += 1;
        Ok(())
    }

    /// Raises a batch's findings from `edge`: the open or acknowledged anomalies they refresh in one
    /// multi-row update per 100, then the rest one by one, each opening a new anomaly within the edge's cap.
    async fn flush(&self, edge: &str, findings: &mut Findings) -> Result<(), sqlx::Error> {
        let pending: Vec<_> = std::mem::take(&mut findings.pending).into_iter().collect();
        let now = now();
        let mut refreshed: BTreeSet<(String, String, String)> = BTreeSet::new();
        for chunk in pending.chunks(100) {
            // VALUES columns are column1, column2, ... on both engines; only placeholders are interpolated.
            let sql = format!(
                "UPDATE anomalies SET evidence = v.column4, occurrences = occurrences + v.column5, last_seen = $1, updated_at = $1 \
                 FROM (VALUES {}) AS v WHERE anomalies.kind = v.column1 AND anomalies.subject_kind = v.column2 \
                 AND anomalies.subject = v.column3 AND anomalies.state IN ('open', 'acknowledged') RETURNING kind, subject_kind, subject",
                crate::usage::placeholders(chunk.len(), 5, 1)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            for ((kind, subject_kind, subject), (_, evidence, n)) in chunk {
                query = query
                    .bind(kind)
                    .bind(subject_kind)
                    .bind(subject)
                    .bind(evidence.to_string())
                    .bind(*n);
            }
            for row in query.fetch_all(&self.db.pool).await? {
                refreshed.insert((
                    row.try_get("kind")?,
                    row.try_get("subject_kind")?,
                    row.try_get("subject")?,
                ));
            }
        }
        for (key, (severity, evidence, n)) in pending {
            if refreshed.contains(&key) {
                continue;
            }
            let (kind, subject_kind, subject) = key;
            self.raise(
                Some((edge, &mut findings.suppressed)),
                &kind,
                &severity,
                &subject_kind,
                &subject,
                evidence,
                n,
            )
            .await?;
        }
        Ok(())
    }
}

/// The anomaly that counts an edge's findings kept out by the cap; never capped itself.
pub const SUPPRESSED_KIND: &str = "anomalies_suppressed";

/// Values per grouped window query.
const GROUP_CHUNK: usize = 200;

/// `$first, $first+1, ...` for `n` values.
fn in_list(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Window sums of stored usage counts per value of `column`, for `reason` (or every refusal):
/// one grouped query per 200 values instead of one query per value.
async fn window_sums(
    db: &Db,
    column: &'static str,
    values: &[&str],
    reason: Option<&str>,
    since: i64,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let mut out = BTreeMap::new();
    // `column` is one of a few constants below, never input.
    let reason_clause = match reason {
        Some(_) => "reason = $2",
        None => "reason NOT IN ('allowed', 'anonymous') AND $2 = $2",
    };
    for chunk in values.chunks(GROUP_CHUNK) {
        let sql = format!(
            "SELECT {column} AS k, CAST(SUM(count) AS BIGINT) AS n FROM usage_counts \
             WHERE bucket >= $1 AND {reason_clause} AND {column} IN ({}) GROUP BY {column}",
            in_list(3, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(since)
            .bind(reason.unwrap_or(""));
        for v in chunk {
            query = query.bind(*v);
        }
        for row in query.fetch_all(&db.pool).await? {
            out.insert(
                row.try_get("k")?,
                row.try_get::<Option<i64>, _>("n")?.unwrap_or(0),
            );
        }
    }
    Ok(out)
}

/// Rows per value of `column` in `table` since `since` (a Unix-seconds `time_column`), grouped.
async fn window_counts(
    db: &Db,
    table: &'static str,
    column: &'static str,
    time_column: &'static str,
    values: &[&str],
    since: i64,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let mut out = BTreeMap::new();
    for chunk in values.chunks(GROUP_CHUNK) {
        // Table and column names are constants from the callers below, never input.
        let sql = format!(
            "SELECT {column} AS k, COUNT(*) AS n FROM {table} WHERE {time_column} >= $1 AND {column} IN ({}) GROUP BY {column}",
            in_list(2, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since);
        for v in chunk {
            query = query.bind(*v);
        }
        for row in query.fetch_all(&db.pool).await? {
            out.insert(row.try_get("k")?, row.try_get("n")?);
        }
    }
    Ok(out)
}

impl Detector {
    /// Runs every usage detector over a stored batch; new anomalies past the edge's cap are counted in one
    /// `anomalies_suppressed` anomaly on the edge instead.
    pub async fn detect(&self, batch: &Ingested) -> Result<(), sqlx::Error> {
        let mut findings = Findings::default();
        self.detect_into(batch, &mut findings).await?;
        // The findings' writes take SQLite's write turn like every other writer: outside it they met a
        // revocation holding the turn at SQLite's lock, and its busy handler's back-off kept the revocation
        // waiting seconds during a usage flood (tests/flood.rs).
        let _turn = self.db.write_turn().await;
        self.flush(&batch.edge, &mut findings).await?;
        let suppressed = findings.suppressed;
        if !suppressed.0.is_empty() {
            let n: i64 = suppressed.0.values().sum();
            let evidence = json!({"suppressed": suppressed.0, "cap": self.config.edge_cap, "window_seconds": self.config.edge_cap_window_seconds,
            "hint": "this edge's reports raised more new anomalies than the cap; occurrences counts the findings not opened"});
            self.raise(
                None,
                SUPPRESSED_KIND,
                "medium",
                "edge",
                &batch.edge,
                evidence,
                n,
            )
            .await?;
        }
        Ok(())
    }

    async fn detect_into(
        &self,
        batch: &Ingested,
        suppressed: &mut Findings,
    ) -> Result<(), sqlx::Error> {
        let cfg = &self.config;
        let state = self;
        let now = now();
        // Buckets are whole minutes, so the window starts at the minute containing its start.
        let since = (now - cfg.window_seconds) - (now - cfg.window_seconds).rem_euclid(60);
        let edge = batch.edge.as_str();

        // Repeated failures from one address (failure samples carry the address).
        let addresses: BTreeSet<&str> = batch
            .failures
            .iter()
            .map(|f| f.client_address.as_str())
            .take(200)
            .collect();
        let addresses: Vec<&str> = addresses.into_iter().collect();
        let counts = window_counts(
            &state.db,
            "usage_failures",
            "client_address",
            "at",
            &addresses,
            now - cfg.window_seconds,
        )
        .await?;
        for (address, n) in counts
            .into_iter()
            .filter(|(_, n)| *n >= cfg.address_failures)
        {
            let reasons: Vec<&str> = batch
                .failures
                .iter()
                .filter(|f| f.client_address == address)
                .map(|f| f.reason.as_str())
                .collect();
            self.found(edge, suppressed, "address_failures", "medium", "address", &address,
            json!({"failures": n, "window_seconds": cfg.window_seconds, "threshold": cfg.address_failures, "edge": edge, "recent_reasons": reasons})).await?;
        }

        // Per-key sums of this batch, to pick candidates for the window queries.
        let mut subjects: BTreeSet<&str> = BTreeSet::new();
        let mut expired_clients: BTreeSet<&str> = BTreeSet::new();
        let mut scope_clients: BTreeSet<&str> = BTreeSet::new();
        let mut revoked_tokens: BTreeMap<&str, (&str, &str, &str)> = BTreeMap::new();
        let mut allowed_jtis: BTreeMap<&str, &str> = BTreeMap::new();
        for (token, subject, client, route, reason) in batch.counts.keys() {
            if is_failure(reason) && !subject.is_empty() {
                subjects.insert(subject);
            }
            let client_or_subject = if client.is_empty() {
                subject.as_str()
            } else {
                client.as_str()
            };
            match reason.as_str() {
                "expired" if !client_or_subject.is_empty() => {
                    expired_clients.insert(client_or_subject);
                }
                "insufficient_scope" if !client_or_subject.is_empty() => {
                    scope_clients.insert(client_or_subject);
                }
                "revoked" if !token.is_empty() => {
                    revoked_tokens.insert(token, (subject, client, route));
                }
                "allowed" if !token.is_empty() && !token.starts_with("fp:") => {
                    allowed_jtis.insert(token, route);
                }
                _ => {}
            }
        }

        let subjects: Vec<&str> = subjects.into_iter().take(1000).collect();
        for (subject, n) in window_sums(&state.db, "subject", &subjects, None, since).await? {
            if n >= cfg.subject_failures {
                self.found(edge, suppressed, "subject_failures", "medium", "subject", &subject,
                json!({"failures": n, "window_seconds": cfg.window_seconds, "threshold": cfg.subject_failures, "edge": edge})).await?;
            }
        }

        let tokens: Vec<&str> = revoked_tokens.keys().copied().take(1000).collect();
        for (token, n) in window_sums(&state.db, "token", &tokens, Some("revoked"), since).await? {
            let (subject, client, route) = revoked_tokens
                .get(token.as_str())
                .copied()
                .unwrap_or_default();
            if n >= cfg.revoked_uses {
                self.found(edge, suppressed, "revoked_token_use", "medium", "token", &token,
                json!({"uses": n, "window_seconds": cfg.window_seconds, "subject": subject, "client_id": client, "route": route, "edge": edge, "refused_by_edge": true})).await?;
            }
        }

        // An edge allowed a token revoked well before the interval: revocations are not reaching it.
        let jtis: Vec<(&str, &str)> = allowed_jtis.into_iter().collect();
        for chunk in jtis.chunks(200) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
            "SELECT jti, subject, client_id, revoked_at FROM tokens WHERE revoked_at IS NOT NULL AND jti IN ({})",
            placeholders.join(", ")
        );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (jti, _) in chunk {
                query = query.bind(*jti);
            }
            for row in query.fetch_all(&state.db.pool).await? {
                let jti: String = row.try_get("jti")?;
                let revoked_at: i64 = row.try_get("revoked_at")?;
                let late = batch.interval_end - revoked_at;
                if late > cfg.revocation_grace_seconds {
                    let route = chunk
                        .iter()
                        .find(|(j, _)| *j == jti)
                        .map(|(_, r)| *r)
                        .unwrap_or("");
                    self.found(edge, suppressed, "revoked_token_allowed", "high", "token", &jti,
                    json!({"revoked_at": revoked_at, "allowed_until": batch.interval_end, "seconds_after_revocation": late,
                           "grace_seconds": cfg.revocation_grace_seconds, "edge": edge, "route": route,
                           "subject": row.try_get::<String, _>("subject")?, "client_id": row.try_get::<String, _>("client_id")?})).await?;
                }
            }
        }

        let client_bursts = [
            (
                expired_clients,
                "expired",
                "expired_token_use",
                cfg.expired_uses,
                "expired_uses",
            ),
            (
                scope_clients,
                "insufficient_scope",
                "insufficient_scope_burst",
                cfg.insufficient_scope,
                "refusals",
            ),
        ];
        for (candidates, reason, kind, threshold, label) in client_bursts {
            let candidates: Vec<&str> = candidates.into_iter().take(1000).collect();
            let mut sums =
                window_sums(&state.db, "client_id", &candidates, Some(reason), since).await?;
            // Tokens without a client_id are attributed to their subject.
            let rest: Vec<&str> = candidates
                .iter()
                .copied()
                .filter(|c| !sums.contains_key(*c))
                .collect();
            sums.extend(window_sums(&state.db, "subject", &rest, Some(reason), since).await?);
            for (client, n) in sums.into_iter().filter(|(_, n)| *n >= threshold) {
                let mut evidence = json!({"window_seconds": cfg.window_seconds, "threshold": threshold, "edge": edge});
                evidence[label] = json!(n);
                if kind == "expired_token_use" {
                    evidence["hint"] =
                        json!("the client keeps sending expired tokens instead of refreshing them");
                }
                self.found(edge, suppressed, kind, "low", "client", &client, evidence)
                    .await?;
            }
        }

        let tokens: Vec<&str> = batch
            .tokens_with_addresses
            .iter()
            .map(String::as_str)
            .take(1000)
            .collect();
        let spread = window_counts(
            &state.db,
            "token_addresses",
            "token",
            "last_seen",
            &tokens,
            now - cfg.window_seconds,
        )
        .await?;
        let spread: Vec<(String, i64)> = spread
            .into_iter()
            .filter(|(_, n)| *n >= cfg.token_addresses)
            .collect();
        // Up to 20 addresses of each such token, in one query per 200 tokens.
        let mut samples: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for chunk in spread.chunks(GROUP_CHUNK) {
            let sql = format!(
                "SELECT token, address FROM (SELECT token, address, ROW_NUMBER() OVER (PARTITION BY token ORDER BY address) AS rn \
                 FROM token_addresses WHERE last_seen >= $1 AND token IN ({})) AS t WHERE rn <= 20 ORDER BY token, address",
                in_list(2, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now - cfg.window_seconds);
            for (token, _) in chunk {
                query = query.bind(token);
            }
            for row in query.fetch_all(&state.db.pool).await? {
                samples
                    .entry(row.try_get("token")?)
                    .or_default()
                    .push(row.try_get("address")?);
            }
        }
        for (token, n) in spread {
            let sample = samples.remove(&token).unwrap_or_default();
            self.found(edge, suppressed, "token_many_addresses", "high", "token", &token,
            json!({"addresses": n, "window_seconds": cfg.window_seconds, "threshold": cfg.token_addresses, "sample": sample, "edge": edge})).await?;
        }

        // Clock skew: tokens minted in the future (the issuer's or client's clock), and edges whose clock runs ahead.
        let mut skewed: BTreeMap<(String, String), Value> = BTreeMap::new();
        for f in &batch.failures {
            let ahead = [f.iat, f.nbf]
                .into_iter()
                .flatten()
                .map(|t| t - f.at)
                .max()
                .unwrap_or(0);
            let future_reason = matches!(f.reason.as_str(), "issued_in_future" | "not_yet_valid");
            if ahead > cfg.clock_skew_leeway_seconds
                || (future_reason && ahead > 0)
                || (future_reason && f.iat.is_none() && f.nbf.is_none())
            {
                let (kind, subject) = match (&f.client_id, &f.subject, &f.jti) {
                    (Some(c), _, _) => ("client", c.clone()),
                    (None, Some(s), _) => ("subject", s.clone()),
                    (None, None, Some(j)) => ("token", j.clone()),
                    _ => ("address", f.client_address.clone()),
                };
                skewed.insert((kind.to_owned(), subject), json!({"seconds_ahead": ahead, "iat": f.iat, "nbf": f.nbf, "seen_at": f.at,
                "reason": f.reason, "leeway_seconds": cfg.clock_skew_leeway_seconds, "edge": edge, "jti": f.jti}));
            }
        }
        for ((kind, subject), evidence) in skewed.into_iter().take(200) {
            self.found(
                edge,
                suppressed,
                "clock_skew",
                "medium",
                &kind,
                &subject,
                evidence,
            )
            .await?;
        }
        let edge_ahead = batch.interval_end - now;
        if edge_ahead > cfg.clock_skew_leeway_seconds {
            self.found(edge, suppressed, "clock_skew", "medium", "edge", edge,
            json!({"seconds_ahead": edge_ahead, "interval_end": batch.interval_end, "received_at": now, "leeway_seconds": cfg.clock_skew_leeway_seconds})).await?;
        }
        Ok(())
    }
}

const COLUMNS: &str = "id, kind, severity, subject_kind, subject, evidence, state, occurrences, created_at, updated_at, last_seen";

fn anomaly(row: &AnyRow) -> Result<Anomaly, sqlx::Error> {
    let evidence: String = row.try_get("evidence")?;
    Ok(Anomaly {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        severity: row.try_get("severity")?,
        subject_kind: row.try_get("subject_kind")?,
        subject: row.try_get("subject")?,
        evidence: serde_json::from_str(&evidence).unwrap_or(Value::Null),
        state: row.try_get("state")?,
        occurrences: row.try_get("occurrences")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_seen: row.try_get("last_seen")?,
    })
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/anomalies", get(list))
        .route("/api/v1/anomalies/{id}", get(show).patch(update))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    severity: Option<String>,
    subject: Option<String>,
    subject_kind: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

fn one_of(field: &str, value: &Option<String>, allowed: &[&str]) -> ApiResult<String> {
    match value.as_deref() {
        None | Some("") => Ok(String::new()),
        Some(v) if allowed.contains(&v) => Ok(v.to_owned()),
        Some(v) => Err(ApiError::field(
            field,
            format!("{field}: {v:?} is not one of {}", allowed.join(", ")),
        )),
    }
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Anomaly>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list anomalies")?;
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let binds = [
        one_of("state", &q.state, &["open", "acknowledged", "resolved"])?,
        one_of("kind", &q.kind, KINDS)?,
        one_of("severity", &q.severity, &["low", "medium", "high"])?,
        q.subject.clone().unwrap_or_default(),
        one_of(
            "subject_kind",
            &q.subject_kind,
            &["token", "client", "subject", "address", "edge"],
        )?,
    ];
    let filter =
        "WHERE ($1 = '' OR state = $1) AND ($2 = '' OR kind = $2) AND ($3 = '' OR severity = $3) \
                  AND ($4 = '' OR subject = $4) AND ($5 = '' OR subject_kind = $5)";
    let mut count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM anomalies {filter}"
    )));
    for b in &binds {
        count = count.bind(b.clone());
    }
    let total = count.fetch_one(&state.db.pool).await?;
    let mut select = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM anomalies {filter} ORDER BY updated_at DESC, id LIMIT $6 OFFSET $7"
    )));
    for b in &binds {
        select = select.bind(b.clone());
    }
    let rows = select
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.db.pool)
        .await?;
    Ok(Json(Page {
        items: rows.iter().map(anomaly).collect::<Result<Vec<_>, _>>()?,
        total,
        limit,
        offset,
    }))
}

async fn find(state: &AppState, id: &str) -> ApiResult<Anomaly> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM anomalies WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no anomaly {id:?}")))?;
    Ok(anomaly(&row)?)
}

async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Anomaly>> {
    principal.require(&[Role::Admin, Role::Auditor], "read anomalies")?;
    Ok(Json(find(&state, &id).await?))
}

async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Json(req): Json<UpdateRequest>,
) -> ApiResult<Json<Anomaly>> {
    principal.require(&[Role::Admin], "triage anomalies")?;
    let new_state = one_of(
        "state",
        &Some(req.state.clone()),
        &["acknowledged", "resolved", "open"],
    )?;
    if new_state.is_empty() {
        return Err(ApiError::field(
            "state",
            "state: must be acknowledged, resolved or open",
        ));
    }
    let before = find(&state, &id).await?;
    let now = now();
    let mut tx = state.db.pool.begin().await?;
    sqlx::query("UPDATE anomalies SET state = $1, updated_at = $2 WHERE id = $3")
        .bind(&new_state)
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    let event = Event::new("anomaly.updated", principal.actor()).details(
        json!({"anomaly_id": id, "kind": before.kind, "from": before.state, "to": new_state}),
    );
    events::record(&state.events, &state.db, &mut tx, event).await?;
    tx.commit().await?;
    tracing::info!(anomaly = %id, state = %new_state, actor = %principal.actor(), "anomaly triaged");
    Ok(Json(find(&state, &id).await?))
}

/// Deletes resolved anomalies whose last change is older than `retention_seconds` (open and
/// acknowledged ones stay until triaged).
pub async fn prune(db: &Db, retention_seconds: i64) -> Result<u64, sqlx::Error> {
    crate::db::delete_in_chunks(
        db,
        "anomalies",
        "state = 'resolved' AND updated_at < $1",
        now() - retention_seconds,
    )
    .await
}

/// Open anomalies per kind, for `/metrics`.
pub async fn open_counts(state: &AppState) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT kind, COUNT(*) AS n FROM anomalies WHERE state = 'open' GROUP BY kind ORDER BY kind")
        .fetch_all(&state.db.pool)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("kind")?, r.try_get("n")?)))
        .collect()
}
