//! Anomaly detection over usage reports and lifecycle events, and the API to triage the results.
//! Detectors run after usage batches are stored (a group at a time, with the result of one batch at a
//! time), over a sliding window of stored data; each anomaly has a kind, a severity, a subject (token,
//! client, subject, address or edge), evidence and a state (open, acknowledged, resolved). Raising deduplicates: while an anomaly of the same kind and subject
//! is open or acknowledged, new findings update its evidence and occurrence count instead of adding rows.
//! One edge's reports open at most `edge_cap` new anomalies per `edge_cap_window_seconds`; findings past
//! the cap are counted (per kind, in the evidence, and in `occurrences`) in one `anomalies_suppressed`
//! anomaly on that edge. Resolved anomalies are deleted after the retention (`--anomaly-retention-days`).
//! Refresh-token reuse is raised by `oauth.rs` at the moment it happens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
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
    /// Time spent per stage, microseconds, in the order of [`DETECT_STAGES`].
    pub stages: Arc<[AtomicU64; DETECT_STAGES.len()]>,
    /// Refreshes of open anomalies held back (see [`Detector::coalescing`]); `None` writes each at once.
    coalesce: Option<std::sync::Mutex<Coalesced>>,
}

/// The stages of a detector run, as the ingestion log line names them: the window queries of each
/// detector, then the findings' writes (refreshes of open anomalies, new anomalies, suppressed counts).
pub const DETECT_STAGES: [&str; 9] = [
    "addresses",
    "subjects",
    "revoked",
    "revoked_allowed",
    "clients",
    "spread",
    "refresh",
    "open",
    "suppressed",
];

/// How long refreshes of one open anomaly are held back and summed, at most (see
/// [`Detector::coalescing`]).
pub const COALESCE: std::time::Duration = std::time::Duration::from_secs(1);

/// A refresh of an open anomaly held back: what the findings since its last write add up to.
#[derive(Debug)]
struct Held {
    severity: String,
    /// Evidence of the last finding.
    evidence: Value,
    /// Findings since the last write.
    occurrences: i64,
    /// Edge of the last batch that found it (charged if the anomaly closed meanwhile and opens again).
    edge: String,
}

/// The refreshes a coalescing detector holds back, and when it last wrote each key.
#[derive(Debug, Default)]
struct Coalesced {
    /// When this detector last refreshed or opened each key (entries older than [`COALESCE`] are dropped).
    written: std::collections::HashMap<Key, std::time::Instant>,
    /// Refreshes held back, per key.
    held: BTreeMap<Key, Held>,
}

/// A finding's key: (kind, subject kind, subject); at most one open or acknowledged anomaly per key.
type Key = (String, String, String);

/// One (kind, subject) the detectors found in a group of batches.
#[derive(Debug)]
struct Finding {
    severity: String,
    /// Evidence from the last batch that found it.
    evidence: Value,
    /// (index of the batch in the group, findings in that batch), in batch order.
    seen: Vec<(usize, i64)>,
}

/// A group's findings, collected so they are raised in a few multi-row statements instead of one or two
/// writes per finding, with the result of raising each batch's findings in turn.
#[derive(Debug, Default)]
struct Findings {
    pending: BTreeMap<Key, Finding>,
}

impl Findings {
    /// Records that batch `batch` of the group found `kind` on `subject`.
    fn add(
        &mut self,
        batch: usize,
        kind: &str,
        severity: &str,
        subject_kind: &str,
        subject: &str,
        evidence: Value,
    ) {
        let entry = self
            .pending
            .entry((kind.to_owned(), subject_kind.to_owned(), subject.to_owned()))
            .or_insert_with(|| Finding {
                severity: severity.to_owned(),
                evidence: Value::Null,
                seen: Vec::new(),
            });
        match entry.seen.binary_search_by_key(&batch, |(b, _)| *b) {
            Ok(at) => entry.seen[at].1 += 1,
            Err(at) => entry.seen.insert(at, (batch, 1)),
        }
        if entry.seen.last().is_some_and(|(b, _)| *b == batch) {
            entry.evidence = evidence;
        }
    }
}

/// The event recorded when an anomaly opens.
fn opened_event(id: &str, kind: &str, severity: &str, subject_kind: &str, subject: &str) -> Event {
    let event = Event::new("anomaly.opened", "system:anomalies")
        .details(json!({"anomaly_id": id, "kind": kind, "severity": severity, "subject_kind": subject_kind, "subject": subject}));
    match subject_kind {
        "subject" => event.subject(subject),
        "client" => event.client(subject),
        "token" if !subject.starts_with("fp:") => event.jti(subject),
        _ => event,
    }
}

impl Detector {
    /// The database it reads and writes.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// A detector over `db` recording to `events` with thresholds `config`.
    pub fn new(db: Db, events: Arc<EventBus>, config: AnomalyConfig) -> Detector {
        Detector {
            db,
            events,
            config,
            stages: Arc::default(),
            coalesce: None,
        }
    }

    /// This detector, holding back refreshes of an anomaly it refreshed or opened less than [`COALESCE`]
    /// ago: their occurrences are summed and written with the last evidence in one refresh once that
    /// long has passed, or at once by [`Detector::write_held`] (which the usage pipeline calls whenever
    /// no other batch is in flight). Under a flood, an address, subject or revoked token that keeps
    /// failing is found by nearly every batch; each finding was one row rewritten in `anomalies`, more than half of detection's time.
    /// New anomalies are never held back. The sums and last evidence come out as without holding back;
    /// a crash loses at most [`COALESCE`] of refreshes of anomalies that are open and stay open.
    pub fn coalescing(mut self) -> Detector {
        self.coalesce = Some(std::sync::Mutex::default());
        self
    }

    /// Adds the time since `*mark` to stage `stage` and moves the mark.
    fn lap(&self, stage: usize, mark: &mut std::time::Instant) {
        crate::usage::lap(Some(&self.stages[..]), stage, mark);
    }

    /// Writes every refresh held back now (a coalescing detector; nothing otherwise).
    pub async fn write_held(&self) -> Result<(), sqlx::Error> {
        let mut mark = std::time::Instant::now();
        let mut turn = self.db.bulk_turn().await;
        let written = self.write_due(true, &mut turn).await;
        self.lap(6, &mut mark);
        written
    }

    /// Writes the refreshes held back for [`COALESCE`] or longer (all with `all`): one multi-row update
    /// per 100; a key whose anomaly was resolved meanwhile opens a new one, charged to the edge of the
    /// last batch that found it (this bypasses the edge cap, for the few anomalies an admin closed while
    /// edges still report them).
    async fn write_due(
        &self,
        all: bool,
        turn: &mut crate::db::BulkTurn<'_>,
    ) -> Result<(), sqlx::Error> {
        let Some(coalesce) = &self.coalesce else {
            return Ok(());
        };
        let due: Vec<(Key, Held)> = {
            let Ok(mut c) = coalesce.lock() else {
                return Ok(());
            };
            let now = std::time::Instant::now();
            let c = &mut *c;
            c.written.retain(|_, at| now.duration_since(*at) < COALESCE);
            let keys: Vec<Key> = c
                .held
                .keys()
                .filter(|k| all || !c.written.contains_key(*k))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| c.held.remove(&k).map(|h| (k, h)))
                .collect()
        };
        if due.is_empty() {
            return Ok(());
        }
        let written = self.write_refreshes(&due, turn).await;
        if written.is_err() {
            // Kept for the next try, summed with what was held back meanwhile.
            if let Ok(mut c) = coalesce.lock() {
                for (key, held) in due {
                    match c.held.entry(key) {
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert(held);
                        }
                        std::collections::btree_map::Entry::Occupied(mut o) => {
                            o.get_mut().occurrences += held.occurrences;
                        }
                    }
                }
            }
        }
        written
    }

    /// Writes refreshes held back; those whose anomaly is no longer open open a new one.
    async fn write_refreshes(
        &self,
        due: &[(Key, Held)],
        turn: &mut crate::db::BulkTurn<'_>,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<(&Key, &Value, i64)> = due
            .iter()
            .map(|(k, h)| (k, &h.evidence, h.occurrences))
            .collect();
        let refreshed = self.refresh(&rows, turn).await?;
        for (key, held) in due {
            if refreshed.contains(key) {
                continue;
            }
            let (kind, subject_kind, subject) = key;
            turn.give_way().await;
            self.raise(
                kind,
                &held.severity,
                subject_kind,
                subject,
                held.evidence.clone(),
                held.occurrences,
                Some(&held.edge),
            )
            .await?;
            self.note_written(std::iter::once(key));
        }
        Ok(())
    }

    /// Whether refreshes are held back, to be written by [`Detector::write_held`].
    pub fn holding(&self) -> bool {
        self.coalesce
            .as_ref()
            .and_then(|c| c.lock().ok())
            .is_some_and(|c| !c.held.is_empty())
    }

    /// Refreshes the open or acknowledged anomalies of `rows` (key, evidence, occurrences to add) in one
    /// multi-row update per 100, giving way to a waiting revocation before each; returns the keys that
    /// were open and are now refreshed (and notes them as written, for a coalescing detector).
    async fn refresh(
        &self,
        rows: &[(&Key, &Value, i64)],
        turn: &mut crate::db::BulkTurn<'_>,
    ) -> Result<BTreeSet<Key>, sqlx::Error> {
        let now = now();
        let mut refreshed: BTreeSet<Key> = BTreeSet::new();
        for chunk in rows.chunks(100) {
            // VALUES columns are column1, column2, ... on both engines; only placeholders are interpolated.
            let sql = format!(
                "UPDATE anomalies SET evidence = v.column4, occurrences = occurrences + v.column5, last_seen = $1, updated_at = $1 \
                 FROM (VALUES {}) AS v WHERE anomalies.kind = v.column1 AND anomalies.subject_kind = v.column2 \
                 AND anomalies.subject = v.column3 AND anomalies.state IN ('open', 'acknowledged') RETURNING kind, subject_kind, subject",
                crate::usage::placeholders(chunk.len(), 5, 1)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
            turn.give_way().await;
            for ((kind, subject_kind, subject), evidence, occurrences) in chunk {
                query = query
                    .bind(kind)
                    .bind(subject_kind)
                    .bind(subject)
                    .bind(evidence.to_string())
                    .bind(*occurrences);
            }
            for row in query.fetch_all(&self.db.bulk).await? {
                refreshed.insert((
                    row.try_get("kind")?,
                    row.try_get("subject_kind")?,
                    row.try_get("subject")?,
                ));
            }
        }
        self.note_written(refreshed.iter());
        Ok(refreshed)
    }

    /// Notes that `keys` were written now (a coalescing detector holds their next findings back).
    fn note_written<'k>(&self, keys: impl Iterator<Item = &'k Key>) {
        if let Some(Ok(mut c)) = self.coalesce.as_ref().map(|c| c.lock()) {
            let now = std::time::Instant::now();
            for key in keys {
                c.written.insert(key.clone(), now);
            }
        }
    }

    /// Takes out of `findings` those a coalescing detector holds back: keys it wrote less than
    /// [`COALESCE`] ago, or already holds. Their occurrences add to what is held; the evidence and edge
    /// are the last batch's.
    fn hold_back(&self, batches: &[&Ingested], findings: &mut Findings) {
        let Some(Ok(mut c)) = self.coalesce.as_ref().map(|c| c.lock()) else {
            return;
        };
        let now = std::time::Instant::now();
        let c = &mut *c;
        let keys: Vec<Key> = findings
            .pending
            .keys()
            .filter(|k| {
                c.held.contains_key(*k)
                    || c.written
                        .get(*k)
                        .is_some_and(|at| now.duration_since(*at) < COALESCE)
            })
            .cloned()
            .collect();
        for key in keys {
            let Some(f) = findings.pending.remove(&key) else {
                continue;
            };
            let last = f.seen.last().map_or(0, |(b, _)| *b);
            let edge = batches.get(last).map_or("", |b| b.edge.as_str());
            let held = c.held.entry(key).or_insert_with(|| Held {
                severity: f.severity.clone(),
                evidence: Value::Null,
                occurrences: 0,
                edge: String::new(),
            });
            held.occurrences += f.seen.iter().map(|(_, n)| n).sum::<i64>();
            held.evidence = f.evidence;
            held.edge = edge.to_owned();
        }
    }

    /// Raises (or refreshes) an anomaly that no cap applies to: updates the open or acknowledged one
    /// with the same kind and subject (adding `occurrences`), else opens a new one and records an
    /// `anomaly.opened` event; a new one is charged to `edge` (counted against its cap).
    #[allow(clippy::too_many_arguments)]
    async fn raise(
        &self,
        kind: &str,
        severity: &str,
        subject_kind: &str,
        subject: &str,
        evidence: Value,
        occurrences: i64,
        edge: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let evidence = evidence.to_string();
        // Twice at most: a refresh that finds no live anomaly, then an insert that another replica's insert of
        // the same kind and subject beat (the partial unique index `anomalies_live` refuses a second live one),
        // then a refresh of the one it opened.
        for _ in 0..2 {
            let now = now();
            // The common case, an anomaly already open, costs one statement and no transaction.
            let existing: Option<String> = sqlx::query_scalar(
                "UPDATE anomalies SET evidence = $1, occurrences = occurrences + $6, last_seen = $2, updated_at = $2 \
                 WHERE kind = $3 AND subject_kind = $4 AND subject = $5 AND state IN ('open', 'acknowledged') RETURNING id",
            )
            .bind(&evidence)
            .bind(now)
            .bind(kind)
            .bind(subject_kind)
            .bind(subject)
            .bind(occurrences)
            .fetch_optional(&self.db.pool)
            .await?;
            if existing.is_some() {
                return Ok(());
            }
            let mut tx = self.db.pool.begin().await?;
            let id = random_id("anm_");
            let opened: Option<String> = sqlx::query_scalar(
                "INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at, occurrences, last_seen, edge) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, $7, $8, $7, $9) \
                 ON CONFLICT (kind, subject_kind, subject) WHERE state IN ('open', 'acknowledged') DO NOTHING RETURNING id",
            )
            .bind(&id)
            .bind(kind)
            .bind(severity)
            .bind(subject_kind)
            .bind(subject)
            .bind(&evidence)
            .bind(now)
            .bind(occurrences)
            .bind(edge)
            .fetch_optional(&mut *tx)
            .await?;
            if opened.is_none() {
                tx.rollback().await?;
                continue;
            }
            let event = opened_event(&id, kind, severity, subject_kind, subject);
            events::record(&self.events, &self.db, &mut tx, event).await?;
            tx.commit().await?;
            return Ok(());
        }
        // Opened and resolved by others between each of our statements: what this finding adds is lost to
        // an anomaly already triaged, and the next finding opens a new one.
        tracing::warn!(kind, subject_kind, subject, "an anomaly was opened and resolved elsewhere while this replica raised it; this finding is not recorded");
        Ok(())
    }

    /// Raises a group's findings with the result of raising each batch's in turn, in a few statements:
    /// 1. the open or acknowledged anomalies they refresh, in one multi-row update per 100 (each adds
    ///    every batch's occurrences and takes the last evidence);
    /// 2. the rest, walking the batches in order: a finding opens a new anomaly (charged to that batch's
    ///    edge) while the edge is under its cap, read once per edge, else it is counted as suppressed
    ///    for that batch; once opened, later batches' findings add to it;
    /// 3. the new anomalies in multi-row inserts and their `anomaly.opened` events, in one transaction;
    /// 4. per edge, one `anomalies_suppressed` refresh adding every batch's suppressed findings, with the
    ///    last such batch's counts per kind as evidence.
    ///
    /// The caller holds the write turn (handed to a waiting revocation between two statements, which
    /// opens no anomaly), and this replica's detector task is the only one raising, so nothing opens an
    /// anomaly between the reads here and the writes.
    async fn flush(
        &self,
        batches: &[&Ingested],
        mut findings: Findings,
        turn: &mut crate::db::BulkTurn<'_>,
    ) -> Result<(), sqlx::Error> {
        let mut mark = std::time::Instant::now();
        self.hold_back(batches, &mut findings);
        let pending: Vec<(Key, Finding)> = findings.pending.into_iter().collect();
        let now = now();
        let rows: Vec<(&Key, &Value, i64)> = pending
            .iter()
            .map(|(k, f)| (k, &f.evidence, f.seen.iter().map(|(_, n)| n).sum::<i64>()))
            .collect();
        let refreshed = self.refresh(&rows, turn).await?;
        self.write_due(false, turn).await?;
        self.lap(6, &mut mark);
        // The new findings of each batch, in key order (as one batch's raising walks them).
        let mut by_batch: Vec<Vec<usize>> = vec![Vec::new(); batches.len()];
        for (i, (key, f)) in pending.iter().enumerate() {
            if !refreshed.contains(key) {
                for (b, _) in &f.seen {
                    by_batch[*b].push(i);
                }
            }
        }
        let edges: BTreeSet<&str> = by_batch
            .iter()
            .enumerate()
            .filter(|(_, found)| !found.is_empty())
            .map(|(b, _)| batches[b].edge.as_str())
            .collect();
        let mut room: BTreeMap<&str, i64> = edges
            .iter()
            .map(|edge| (*edge, self.config.edge_cap))
            .collect();
        let edges: Vec<&str> = edges.into_iter().collect();
        for chunk in edges.chunks(GROUP_CHUNK) {
            let sql = format!(
                "SELECT edge, COUNT(*) AS n FROM anomalies WHERE created_at >= $1 AND kind <> $2 AND edge IN ({}) GROUP BY edge",
                in_list(3, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now - self.config.edge_cap_window_seconds)
                .bind(SUPPRESSED_KIND);
            for edge in chunk {
                query = query.bind(*edge);
            }
            for row in query.fetch_all(&self.db.pool).await? {
                let edge: String = row.try_get("edge")?;
                let opened: i64 = row.try_get("n")?;
                if let Some(r) = room.get_mut(edge.as_str()) {
                    *r = self.config.edge_cap - opened;
                }
            }
        }
        // pending index -> (batch that opened it, anomaly id), in the order they opened.
        let mut opened: BTreeMap<usize, (usize, String)> = BTreeMap::new();
        let mut order: Vec<usize> = Vec::new();
        let mut suppressed: Vec<BTreeMap<&str, i64>> = vec![BTreeMap::new(); batches.len()];
        for (b, found) in by_batch.iter().enumerate() {
            let edge = batches[b].edge.as_str();
            for &i in found {
                if opened.contains_key(&i) {
                    continue;
                }
                let r = room.entry(edge).or_insert(self.config.edge_cap);
                if *r > 0 {
                    *r -= 1;
                    opened.insert(i, (b, random_id("anm_")));
                    order.push(i);
                } else {
                    *suppressed[b].entry(pending[i].0 .0.as_str()).or_default() += 1;
                }
            }
        }
        if !order.is_empty() {
            turn.give_way().await;
            let mut tx = self.db.begin_bulk().await?;
            let mut inserted: BTreeSet<String> = BTreeSet::new();
            for chunk in order.chunks(100) {
                // Another replica may have opened one of them since the refresh above: the partial unique index
                // `anomalies_live` turns that insert into nothing, and the finding refreshes that one below.
                // (`WHERE true` keeps SQLite from reading `ON CONFLICT` as part of the SELECT's join.)
                let sql = format!(
                    "INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, occurrences, edge, state, created_at, updated_at, last_seen) \
                     SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, 'open', $1, $1, $1 FROM (VALUES {}) AS v \
                     WHERE true ON CONFLICT (kind, subject_kind, subject) WHERE state IN ('open', 'acknowledged') DO NOTHING RETURNING id",
                    crate::usage::placeholders(chunk.len(), 8, 1)
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
                for &i in chunk {
                    let ((kind, subject_kind, subject), f) = &pending[i];
                    let (b, id) = &opened[&i];
                    let occurrences: i64 = f
                        .seen
                        .iter()
                        .filter(|(seen, _)| seen >= b)
                        .map(|(_, n)| n)
                        .sum();
                    query = query
                        .bind(id)
                        .bind(kind)
                        .bind(&f.severity)
                        .bind(subject_kind)
                        .bind(subject)
                        .bind(f.evidence.to_string())
                        .bind(occurrences)
                        .bind(batches[*b].edge.as_str());
                }
                for row in query.fetch_all(&mut *tx).await? {
                    inserted.insert(row.try_get("id")?);
                }
            }
            for &i in &order {
                let ((kind, subject_kind, subject), f) = &pending[i];
                if inserted.contains(&opened[&i].1) {
                    let event =
                        opened_event(&opened[&i].1, kind, &f.severity, subject_kind, subject);
                    events::record(&self.events, &self.db, &mut tx, event).await?;
                }
            }
            tx.commit().await?;
            self.note_written(
                order
                    .iter()
                    .filter(|&&i| inserted.contains(&opened[&i].1))
                    .map(|&i| &pending[i].0),
            );
            // Opened by another replica meanwhile: these findings refresh that anomaly, as if the refresh
            // above had found it (all of the group's occurrences, the last evidence).
            let beaten: Vec<(&Key, &Value, i64)> = order
                .iter()
                .filter(|&&i| !inserted.contains(&opened[&i].1))
                .map(|&i| rows[i])
                .collect();
            if !beaten.is_empty() {
                tracing::info!(
                    findings = beaten.len(),
                    "anomalies opened by another replica meanwhile; these findings refresh them"
                );
                self.refresh(&beaten, turn).await?;
            }
        }
        self.lap(7, &mut mark);
        // Per edge: suppressed findings of all its batches, and the last such batch's counts per kind.
        let mut per_edge: BTreeMap<&str, (i64, &BTreeMap<&str, i64>)> = BTreeMap::new();
        for (b, kinds) in suppressed.iter().enumerate() {
            if kinds.is_empty() {
                continue;
            }
            let e = per_edge
                .entry(batches[b].edge.as_str())
                .or_insert((0, kinds));
            e.0 += kinds.values().sum::<i64>();
            e.1 = kinds;
        }
        for (edge, (n, kinds)) in per_edge {
            turn.give_way().await;
            let evidence = json!({"suppressed": kinds, "cap": self.config.edge_cap, "window_seconds": self.config.edge_cap_window_seconds,
            "hint": "this edge's reports raised more new anomalies than the cap; occurrences counts the findings not opened"});
            self.raise(SUPPRESSED_KIND, "medium", "edge", edge, evidence, n, None)
                .await?;
        }
        self.lap(8, &mut mark);
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

/// `($first), ($first+1), ...` for `n` values: the rows of a `VALUES` list, whose one column both
/// engines name `column1`.
fn value_rows(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("(${i})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `k` -> `n` of a grouped query run once per 200 of `values`: `sql` gets the number of the first
/// placeholder of a chunk's values and how many there are (after `$1`, bound to `since`, and `$2`, bound
/// to `second` when given).
async fn per_value(
    db: &Db,
    values: &[&str],
    since: i64,
    second: Option<&str>,
    sql: impl Fn(usize, usize) -> String,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let mut out = BTreeMap::new();
    let first = if second.is_some() { 3 } else { 2 };
    for chunk in values.chunks(GROUP_CHUNK) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql(first, chunk.len()))).bind(since);
        if let Some(second) = second {
            query = query.bind(second);
        }
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

/// Window sums of stored usage counts per value of `column`, for `reason` (or every refusal):
/// one grouped query per 200 values instead of one query per value.
async fn window_sums(
    db: &Db,
    column: &'static str,
    values: &[&str],
    reason: Option<&str>,
    since: i64,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    // `column` is one of a few constants below, never input. Every reason asked for is a refusal; the
    // refusal condition is written out as the partial indexes on subject and client state it, so both
    // engines read those small indexes instead of every decision (migration 0009).
    let reason_clause = match reason {
        Some(_) => "reason NOT IN ('allowed', 'anonymous') AND reason = $2",
        None => "reason NOT IN ('allowed', 'anonymous') AND $2 = $2",
    };
    per_value(db, values, since, Some(reason.unwrap_or("")), |first, n| {
        let list = in_list(first, n);
        format!(
            "SELECT {column} AS k, CAST(SUM(count) AS BIGINT) AS n FROM usage_counts \
             WHERE bucket >= $1 AND {reason_clause} AND {column} IN ({list}) GROUP BY {column}"
        )
    })
    .await
}

/// Addresses per token seen since `since`, read by the primary key: one count per token, each a range of
/// the primary key (token, address), where `last_seen + 0` is served by no index. PostgreSQL otherwise
/// chose a plan that reads far more than the tokens asked about: with statistics a flood made stale, the
/// whole window through the `last_seen` index (7.6-26 ms per batch in the usage bench); with `token IN
/// (...)` and the `last_seen` index ruled out, once the prepared statement's generic plan took over, the
/// whole table with the list as a hash (4.4 ms per batch; 2.9-3.4 ms with a count per token).
async fn token_spread(
    db: &Db,
    tokens: &[&str],
    since: i64,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    per_value(db, tokens, since, None, |first, n| {
        format!(
            "SELECT v.column1 AS k, (SELECT COUNT(*) FROM token_addresses \
             WHERE token = v.column1 AND last_seen + 0 >= $1) AS n FROM (VALUES {}) AS v",
            value_rows(first, n)
        )
    })
    .await
}

/// Failures per client address since `since` (a whole minute), from the per-minute rollup the ingestion
/// writer keeps (`address_failure_minutes`), in one query per 200 addresses.
async fn address_failures(
    db: &Db,
    addresses: &[&str],
    since: i64,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    per_value(db, addresses, since, None, |first, n| {
        let list = in_list(first, n);
        format!(
            "SELECT address AS k, CAST(SUM(failures) AS BIGINT) AS n FROM address_failure_minutes \
             WHERE minute >= $1 AND address IN ({list}) GROUP BY address"
        )
    })
    .await
}

/// Up to 20 addresses (the first in order) each of `tokens` was seen from since `since`, in one query per
/// 200 tokens.
async fn address_samples(
    db: &Db,
    tokens: &[&str],
    since: i64,
) -> Result<BTreeMap<String, Vec<String>>, sqlx::Error> {
    let mut samples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for chunk in tokens.chunks(GROUP_CHUNK) {
        let sql = format!(
            "SELECT token, address FROM (SELECT token, address, ROW_NUMBER() OVER (PARTITION BY token ORDER BY address) AS rn \
             FROM token_addresses WHERE last_seen + 0 >= $1 AND token IN ({})) AS t WHERE rn <= 20 ORDER BY token, address",
            in_list(2, chunk.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since);
        for token in chunk {
            query = query.bind(*token);
        }
        for row in query.fetch_all(&db.pool).await? {
            samples
                .entry(row.try_get("token")?)
                .or_default()
                .push(row.try_get("address")?);
        }
    }
    Ok(samples)
}

/// The union of each batch's candidates, for one window query over the whole group.
fn union<'a>(per_batch: &[Vec<&'a str>]) -> Vec<&'a str> {
    let all: BTreeSet<&str> = per_batch.iter().flatten().copied().collect();
    all.into_iter().collect()
}

/// What the count-based detectors look at in one batch's counts.
#[derive(Default)]
struct Candidates<'a> {
    subjects: Vec<&'a str>,
    expired_clients: Vec<&'a str>,
    scope_clients: Vec<&'a str>,
    /// Tokens refused as revoked, with the (subject, client, route) of their last entry.
    revoked_tokens: BTreeMap<&'a str, (&'a str, &'a str, &'a str)>,
    /// Jtis allowed, with a route.
    allowed_jtis: BTreeMap<&'a str, &'a str>,
}

fn candidates(batch: &Ingested) -> Candidates<'_> {
    let mut subjects: BTreeSet<&str> = BTreeSet::new();
    let mut expired_clients: BTreeSet<&str> = BTreeSet::new();
    let mut scope_clients: BTreeSet<&str> = BTreeSet::new();
    let mut c = Candidates::default();
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
                c.revoked_tokens.insert(token, (subject, client, route));
            }
            "allowed" if !token.is_empty() && !token.starts_with("fp:") => {
                c.allowed_jtis.insert(token, route);
            }
            _ => {}
        }
    }
    c.subjects = subjects.into_iter().take(1000).collect();
    c.expired_clients = expired_clients.into_iter().take(1000).collect();
    c.scope_clients = scope_clients.into_iter().take(1000).collect();
    c
}

impl Detector {
    /// Runs every usage detector over a stored batch; new anomalies past the edge's cap are counted in one
    /// `anomalies_suppressed` anomaly on the edge instead.
    pub async fn detect(&self, batch: &Ingested) -> Result<(), sqlx::Error> {
        self.detect_group(&[batch]).await
    }

    /// Runs every usage detector over a group of stored batches (from any edges, in the order they
    /// arrived) with one window query per detector for the whole group, and raises the findings with the
    /// result of [`Detector::detect`] on each batch in turn over the same stored data.
    pub async fn detect_group(&self, batches: &[&Ingested]) -> Result<(), sqlx::Error> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut findings = Findings::default();
        self.detect_into(batches, &mut findings).await?;
        // The findings' writes take SQLite's write turn like every other writer: outside it they met a
        // revocation holding the turn at SQLite's lock, and its busy handler's back-off kept the revocation
        // waiting seconds during a usage flood (tests/flood.rs). A bulk turn: waiting revocations go first.
        // It gives way to a waiting revocation between two of its statements.
        let mut turn = self.db.bulk_turn().await;
        self.flush(batches, findings, &mut turn).await
    }

    async fn detect_into(
        &self,
        batches: &[&Ingested],
        found: &mut Findings,
    ) -> Result<(), sqlx::Error> {
        let cfg = &self.config;
        let db = &self.db;
        let now = now();
        // Buckets are whole minutes, so the window starts at the minute containing its start.
        let since = (now - cfg.window_seconds) - (now - cfg.window_seconds).rem_euclid(60);

        let mut mark = std::time::Instant::now();
        // Repeated failures from one address (failure samples carry the address; the writer sums them per
        // address and minute).
        let addresses: Vec<Vec<&str>> = batches
            .iter()
            .map(|batch| {
                let a: BTreeSet<&str> = batch
                    .failures
                    .iter()
                    .map(|f| f.client_address.as_str())
                    .take(200)
                    .collect();
                a.into_iter().collect()
            })
            .collect();
        let counts = address_failures(db, &union(&addresses), since).await?;
        for (b, batch) in batches.iter().enumerate() {
            let edge = batch.edge.as_str();
            for address in &addresses[b] {
                let Some(&n) = counts.get(*address) else {
                    continue;
                };
                if n < cfg.address_failures {
                    continue;
                }
                let reasons: Vec<&str> = batch
                    .failures
                    .iter()
                    .filter(|f| f.client_address == *address)
                    .map(|f| f.reason.as_str())
                    .collect();
                found.add(b, "address_failures", "medium", "address", address,
                json!({"failures": n, "window_seconds": cfg.window_seconds, "threshold": cfg.address_failures, "edge": edge, "recent_reasons": reasons}));
            }
        }

        self.lap(0, &mut mark);
        let candidates: Vec<Candidates<'_>> = batches.iter().map(|b| candidates(b)).collect();

        let subjects: Vec<Vec<&str>> = candidates.iter().map(|c| c.subjects.clone()).collect();
        let sums = window_sums(db, "subject", &union(&subjects), None, since).await?;
        for (b, batch) in batches.iter().enumerate() {
            for subject in &subjects[b] {
                let Some(&n) = sums.get(*subject) else {
                    continue;
                };
                if n >= cfg.subject_failures {
                    found.add(b, "subject_failures", "medium", "subject", subject,
                    json!({"failures": n, "window_seconds": cfg.window_seconds, "threshold": cfg.subject_failures, "edge": batch.edge}));
                }
            }
        }

        self.lap(1, &mut mark);
        let tokens: Vec<Vec<&str>> = candidates
            .iter()
            .map(|c| c.revoked_tokens.keys().copied().take(1000).collect())
            .collect();
        let sums = window_sums(db, "token", &union(&tokens), Some("revoked"), since).await?;
        for (b, batch) in batches.iter().enumerate() {
            for token in &tokens[b] {
                let Some(&n) = sums.get(*token) else {
                    continue;
                };
                let (subject, client, route) = candidates[b]
                    .revoked_tokens
                    .get(token)
                    .copied()
                    .unwrap_or_default();
                if n >= cfg.revoked_uses {
                    found.add(b, "revoked_token_use", "medium", "token", token,
                    json!({"uses": n, "window_seconds": cfg.window_seconds, "subject": subject, "client_id": client, "route": route, "edge": batch.edge, "refused_by_edge": true}));
                }
            }
        }

        self.lap(2, &mut mark);
        // An edge allowed a token revoked well before the interval: revocations are not reaching it.
        let jtis: BTreeSet<&str> = candidates
            .iter()
            .flat_map(|c| c.allowed_jtis.keys().copied())
            .collect();
        let jtis: Vec<&str> = jtis.into_iter().collect();
        // jti -> (subject, client, revoked_at) of the revoked ones.
        let mut revoked: BTreeMap<String, (String, String, i64)> = BTreeMap::new();
        for chunk in jtis.chunks(GROUP_CHUNK) {
            let sql = format!(
                "SELECT jti, subject, client_id, revoked_at FROM tokens WHERE revoked_at IS NOT NULL AND jti IN ({})",
                in_list(1, chunk.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for jti in chunk {
                query = query.bind(*jti);
            }
            for row in query.fetch_all(&db.pool).await? {
                revoked.insert(
                    row.try_get("jti")?,
                    (
                        row.try_get("subject")?,
                        row.try_get("client_id")?,
                        row.try_get("revoked_at")?,
                    ),
                );
            }
        }
        if !revoked.is_empty() {
            for (b, batch) in batches.iter().enumerate() {
                for (jti, route) in &candidates[b].allowed_jtis {
                    let Some((subject, client, revoked_at)) = revoked.get(*jti) else {
                        continue;
                    };
                    let late = batch.interval_end - revoked_at;
                    if late > cfg.revocation_grace_seconds {
                        found.add(b, "revoked_token_allowed", "high", "token", jti,
                        json!({"revoked_at": revoked_at, "allowed_until": batch.interval_end, "seconds_after_revocation": late,
                               "grace_seconds": cfg.revocation_grace_seconds, "edge": batch.edge, "route": route,
                               "subject": subject, "client_id": client}));
                    }
                }
            }
        }

        self.lap(3, &mut mark);
        let client_bursts = [
            (
                candidates
                    .iter()
                    .map(|c| c.expired_clients.clone())
                    .collect::<Vec<_>>(),
                "expired",
                "expired_token_use",
                cfg.expired_uses,
                "expired_uses",
            ),
            (
                candidates
                    .iter()
                    .map(|c| c.scope_clients.clone())
                    .collect::<Vec<_>>(),
                "insufficient_scope",
                "insufficient_scope_burst",
                cfg.insufficient_scope,
                "refusals",
            ),
        ];
        for (per_batch, reason, kind, threshold, label) in client_bursts {
            let all = union(&per_batch);
            let by_client = window_sums(db, "client_id", &all, Some(reason), since).await?;
            // Tokens without a client_id are attributed to their subject.
            let rest: Vec<&str> = all
                .iter()
                .copied()
                .filter(|c| !by_client.contains_key(*c))
                .collect();
            let by_subject = window_sums(db, "subject", &rest, Some(reason), since).await?;
            for (b, batch) in batches.iter().enumerate() {
                for client in &per_batch[b] {
                    let Some(&n) = by_client.get(*client).or_else(|| by_subject.get(*client))
                    else {
                        continue;
                    };
                    if n < threshold {
                        continue;
                    }
                    let mut evidence = json!({"window_seconds": cfg.window_seconds, "threshold": threshold, "edge": batch.edge});
                    evidence[label] = json!(n);
                    if kind == "expired_token_use" {
                        evidence["hint"] = json!(
                            "the client keeps sending expired tokens instead of refreshing them"
                        );
                    }
                    found.add(b, kind, "low", "client", client, evidence);
                }
            }
        }

        self.lap(4, &mut mark);
        let tokens: Vec<Vec<&str>> = batches
            .iter()
            .map(|batch| {
                batch
                    .tokens_with_addresses
                    .iter()
                    .map(String::as_str)
                    .take(1000)
                    .collect()
            })
            .collect();
        let spread = token_spread(db, &union(&tokens), now - cfg.window_seconds).await?;
        let spread: BTreeMap<String, i64> = spread
            .into_iter()
            .filter(|(_, n)| *n >= cfg.token_addresses)
            .collect();
        // Up to 20 addresses of each such token, in one query per 200 tokens.
        let wide: Vec<&str> = spread.keys().map(String::as_str).collect();
        let samples = address_samples(db, &wide, now - cfg.window_seconds).await?;
        for (b, batch) in batches.iter().enumerate() {
            for token in &tokens[b] {
                let Some(&n) = spread.get(*token) else {
                    continue;
                };
                let sample = samples.get(*token).cloned().unwrap_or_default();
                found.add(b, "token_many_addresses", "high", "token", token,
                json!({"addresses": n, "window_seconds": cfg.window_seconds, "threshold": cfg.token_addresses, "sample": sample, "edge": batch.edge}));
            }
        }

        self.lap(5, &mut mark);
        // Clock skew: tokens minted in the future (the issuer's or client's clock), and edges whose clock
        // runs ahead. Read from the batch alone.
        for (b, batch) in batches.iter().enumerate() {
            let edge = batch.edge.as_str();
            let mut skewed: BTreeMap<(String, String), Value> = BTreeMap::new();
            for f in &batch.failures {
                let ahead = [f.iat, f.nbf]
                    .into_iter()
                    .flatten()
                    .map(|t| t - f.at)
                    .max()
                    .unwrap_or(0);
                let future_reason =
                    matches!(f.reason.as_str(), "issued_in_future" | "not_yet_valid");
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
                found.add(b, "clock_skew", "medium", &kind, &subject, evidence);
            }
            let edge_ahead = batch.interval_end - now;
            if edge_ahead > cfg.clock_skew_leeway_seconds {
                found.add(b, "clock_skew", "medium", "edge", edge,
                json!({"seconds_ahead": edge_ahead, "interval_end": batch.interval_end, "received_at": now, "leeway_seconds": cfg.clock_skew_leeway_seconds}));
            }
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
    let changed = sqlx::query("UPDATE anomalies SET state = $1, updated_at = $2 WHERE id = $3")
        .bind(&new_state)
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await;
    match changed {
        Err(e) if crate::auth::is_unique_violation(&e) => {
            drop(tx);
            let live: Option<String> = sqlx::query_scalar(
                "SELECT id FROM anomalies WHERE kind = $1 AND subject_kind = $2 AND subject = $3 AND state IN ('open', 'acknowledged')",
            )
            .bind(&before.kind)
            .bind(&before.subject_kind)
            .bind(&before.subject)
            .fetch_optional(&state.db.pool)
            .await?;
            return Err(ApiError::Conflict(format!(
                "anomaly {id} cannot be made {new_state} again: anomaly {} of the same kind ({}) and {} ({}) is open or acknowledged, and new findings add to that one; triage it instead",
                live.as_deref().unwrap_or("(another)"),
                before.kind,
                before.subject_kind,
                before.subject
            )));
        }
        other => {
            other?;
        }
    }
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
