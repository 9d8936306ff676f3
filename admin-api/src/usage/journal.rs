//! The usage journal (`serve --usage-journal`): a batch is answered 202 once its prepared form is a row of
//! `usage_journal` (migration 0012), committed in the same database as everything else, and stored in the
//! usage tables afterwards by a fold that takes up to [`FOLD_BATCHES`] journaled batches at once.
//!
//! Why: without the journal a batch is answered only once it is stored and examined, so a writer can
//! group only the batches whose edges are waiting at that moment (as many as there are connections
//! posting), and every group pays its upserts per row. A fold groups whatever the journal holds: the same
//! (minute, edge, token, route, reason) reported by many batches becomes one upsert, and the detectors'
//! window queries run once for the union of many batches' tokens, subjects and clients.
//!
//! What a 202 means: the batch is durable (with PostgreSQL a commit that waits for the WAL flush, not the
//! usage tables' asynchronous one; with SQLite the bulk connections' `synchronous = NORMAL`, which survives
//! a crash of the replica) and will be counted exactly once: a fold stores a group and marks its rows
//! stored in one transaction, and the anomaly detectors run over the group before its rows are deleted.
//! Counts and anomalies appear when the fold has run, normally within a second.
//! - Any replica folds any row (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so the rows of a replica that
//!   died are folded by the others, or by itself after a restart.
//! - A row stored whose detectors did not run (the replica died in between) is examined by a later fold
//!   once it is [`LEFT_BEHIND_SECONDS`] old.
//! - A batch heavier than one fold is stored in parts, each claimed in the transaction that stores it
//!   (`done`), so a part is never stored twice.
//! - The journal's backlog (entries journaled and not yet stored and examined) is bounded like the
//!   queue without the journal: past it, batches are answered 503 with `Retry-After`.
//! - Failure samples are stored at most [`super::UsageConfig::failure_samples_per_minute`] per edge and
//!   minute per replica; every failure is still counted, in the counts and the per-address rollup the
//!   detectors read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use super::{
    aggregate, lap, split, write_group, DrainRate, FailureEntry, IngestStats, Job, JobBox, Parsers,
    Prepared, Refusal,
};
use crate::db::{now, Db, DbKind};
use crate::events::EventBus;
use crate::feed_marks::row_placeholders;
use crate::revocations::Feed;

/// Rows one fold stores at most with PostgreSQL, where no revocation waits for a usage transaction (so
/// [`FOLD_BATCHES`] is the bound).
pub const POSTGRES_FOLD_ROWS: usize = 1_000_000;

/// Rows one fold stores at most with SQLite, where a revocation waits for the fold in progress: about 30
/// batches of the usage bench. Admin bench, SQLite with the journal, 30 s, this machine: 4,000 rows stored
/// 163 batches/s (revocation p99 17 ms), 20,000 stored 332 (45 ms), 40,000 stored 452 (63 ms).
pub const SQLITE_FOLD_ROWS: usize = 20_000;

/// Journaled batches one fold reads at most.
const FOLD_BATCHES: usize = 1024;

/// Batches one journal append commits together at most.
const APPEND_BATCHES: usize = 256;

/// Seconds a stored row waits for the detectors of the fold that stored it before another fold examines
/// it as left behind (its replica died between the two).
pub const LEFT_BEHIND_SECONDS: i64 = 30;

/// A journaled batch: what `usage_journal.body` holds (postcard).
#[derive(Debug, Deserialize, Serialize)]
struct Record {
    /// The format of this record; a replica refuses to fold a record of another version (and leaves it).
    version: u32,
    prepared: Prepared,
}

/// The record format written by this build: postcard, compressed with LZ4 (block format, the plain size
/// first as four little-endian bytes).
const VERSION: u32 = 1;

/// The largest plain record a batch within the documented limits makes (4 MiB of JSON prepares into less).
const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// What the handler prepares for the journal writer.
#[derive(Debug)]
pub(super) struct Entry {
    body: Vec<u8>,
    entries: i64,
    weight: i64,
    parts: i64,
}

/// The fold's limits: rows per fold, and rows per part of a batch heavier than a fold.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub fold_rows: usize,
    pub part_rows: usize,
}

impl Entry {
    /// The journal row of `prepared`: its record, entries, weight (rows it writes) and parts.
    pub(super) fn new(
        prepared: Prepared,
        entries: u32,
        limits: Limits,
    ) -> Result<(Entry, Prepared), String> {
        let weight = super::rows_of(&prepared);
        let parts = if weight > limits.fold_rows {
            split(&prepared, limits.part_rows).len()
        } else {
            1
        };
        let record = Record {
            version: VERSION,
            prepared,
        };
        let plain = postcard::to_allocvec(&record).map_err(|e| e.to_string())?;
        let body = lz4_flex::compress_prepend_size(&plain);
        Ok((
            Entry {
                body,
                entries: i64::from(entries),
                weight: weight as i64,
                parts: parts as i64,
            },
            record.prepared,
        ))
    }
}

fn decode(body: &[u8]) -> Result<Prepared, String> {
    // The size the record claims is checked against what a batch can take before anything is allocated.
    let claimed = body
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if claimed > MAX_RECORD_BYTES {
        return Err(format!(
            "record claims {claimed} bytes, more than any batch takes"
        ));
    }
    let plain = lz4_flex::decompress_size_prepended(body).map_err(|e| e.to_string())?;
    let record: Record = postcard::from_bytes(&plain).map_err(|e| e.to_string())?;
    if record.version != VERSION {
        return Err(format!(
            "record version {} (this build reads {VERSION})",
            record.version
        ));
    }
    Ok(record.prepared)
}

/// The journal's shared state on one replica.
#[derive(Debug, Default)]
pub struct Journal {
    /// Entries in the journal not yet stored and examined, as the last fold read it plus what this
    /// replica appended since: what admission bounds.
    backlog: AtomicI64,
    /// Woken by each append.
    wake: tokio::sync::Notify,
}

impl Journal {
    /// Entries waiting in the journal.
    pub fn backlog(&self) -> i64 {
        self.backlog.load(Ordering::Relaxed).max(0)
    }
}

/// The journal writer: appends every batch queued so far (up to [`APPEND_BATCHES`]) in one transaction
/// with a synchronous commit, then answers them.
pub(super) async fn writer(
    db: Db,
    rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<JobBox>>>,
    journal: Arc<Journal>,
    stats: Arc<IngestStats>,
) {
    loop {
        let first = match rx.lock().await.recv().await {
            Some(JobBox(job)) => *job,
            None => return,
        };
        let mut group = vec![first];
        if let Ok(mut queue) = rx.try_lock() {
            while group.len() < APPEND_BATCHES {
                match queue.try_recv() {
                    Ok(JobBox(job)) => group.push(*job),
                    Err(_) => break,
                }
            }
        }
        let started = Instant::now();
        let appended = append(&db, &group).await;
        stats
            .journal_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match appended {
            Ok(entries) => {
                journal.backlog.fetch_add(entries, Ordering::Relaxed);
                let bytes: usize = group
                    .iter()
                    .filter_map(|j| j.journal.as_ref())
                    .map(|e| e.body.len())
                    .sum();
                stats
                    .journal_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                stats
                    .journaled
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                journal.wake.notify_one();
                for job in group {
                    let _ = job.reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = group.len(), "cannot write usage batches to the journal; their edges are told to resend");
                for job in group {
                    let _ = job.reply.send(Err(Refusal {
                        retry_after: 2,
                        message: "the usage batch could not be written to the journal now (database error); it was not stored: resend it".into(),
                    }));
                }
            }
        }
    }
}

/// Appends the group's records in one transaction; returns their entries.
async fn append(db: &Db, group: &[Job]) -> Result<i64, sqlx::Error> {
    let received_at = now();
    let _turn = db.bulk_write_turn().await;
    // A plain transaction: the commit is the acknowledgement, so it waits for the server's WAL flush.
    let mut tx = db.bulk.begin().await?;
    let mut entries = 0;
    for chunk in group.chunks(100) {
        let sql = format!(
            "INSERT INTO usage_journal (received_at, entries, weight, parts, body) VALUES {}",
            row_placeholders(db.kind, chunk.len(), 5)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for job in chunk {
            let Some(entry) = &job.journal else {
                return Err(sqlx::Error::Protocol(
                    "a usage batch reached the journal writer without its record".into(),
                ));
            };
            entries += entry.entries;
            query = query
                .bind(received_at)
                .bind(entry.entries)
                .bind(entry.weight)
                .bind(entry.parts)
                .bind(entry.body.as_slice());
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(entries)
}

/// At most so many failure samples per edge and minute stored by this replica's folds.
#[derive(Debug)]
pub(super) struct SampleQuota {
    per_minute: usize,
    used: HashMap<(String, i64), usize>,
}

impl SampleQuota {
    pub(super) fn new(per_minute: usize) -> SampleQuota {
        SampleQuota {
            per_minute,
            used: HashMap::new(),
        }
    }

    /// Whether a sample of `edge` at `at` is stored (and counts it).
    fn take(&mut self, edge: &str, at: i64) -> bool {
        let minute = at - at.rem_euclid(60);
        if self.used.len() > 100_000 {
            let recent = now() - 3_600;
            self.used.retain(|(_, m), _| *m >= recent);
        }
        let used = self.used.entry((edge.to_owned(), minute)).or_default();
        if *used < self.per_minute {
            *used += 1;
            true
        } else {
            false
        }
    }

    /// The failure samples of `batch` within the quota (the detectors see them all).
    fn kept(&mut self, batch: &Prepared) -> Vec<FailureEntry> {
        let edge = batch.ingested.edge.as_str();
        batch
            .ingested
            .failures
            .iter()
            .filter(|f| self.take(edge, f.at))
            .cloned()
            .collect()
    }
}

/// `head WHERE id IN (...)` with `ids` bound (only placeholders are interpolated).
fn with_ids<'q>(
    kind: DbKind,
    head: &str,
    ids: &'q [i64],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let sql = format!("{head} WHERE {}", id_list(kind, ids.len()));
    ids.iter()
        .fold(sqlx::query(sqlx::AssertSqlSafe(sql)), |query, id| {
            query.bind(*id)
        })
}

/// The fold task's parts.
pub(super) struct Folder {
    pub db: Db,
    pub bus: Arc<EventBus>,
    pub feed: Arc<Feed>,
    pub journal: Arc<Journal>,
    pub stats: Arc<IngestStats>,
    /// The drain rate and this fold's slot in it.
    pub rate: (Arc<DrainRate>, usize),
    pub limits: Limits,
    /// Where records are decoded and summed, away from the async workers.
    pub parsers: Parsers,
    pub quota: Arc<std::sync::Mutex<SampleQuota>>,
    /// Where stored groups go to be examined: the next fold is read and summed meanwhile.
    pub examine: tokio::sync::mpsc::Sender<Stored>,
    /// The detectors' stage times, for the log line.
    pub detect_stages: Arc<[std::sync::atomic::AtomicU64; crate::anomalies::DETECT_STAGES.len()]>,
}

/// The examining task's parts: the detectors run over each stored group in the order the folds stored
/// them, then the group's rows are deleted.
pub(super) struct Examiner {
    pub db: Db,
    pub detector: crate::anomalies::Detector,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub journal: Arc<Journal>,
    pub stats: Arc<IngestStats>,
    pub rate: Arc<DrainRate>,
}

/// A group stored by a fold, on its way to the detectors.
pub(super) struct Stored {
    ids: Vec<i64>,
    entries: i64,
    batches: Vec<Prepared>,
}

/// A journal row read by a fold.
struct Row {
    id: i64,
    entries: i64,
    weight: i64,
    parts: i64,
    done: i64,
    body: Vec<u8>,
}

/// A journal row as read, with its body when the query read it.
fn row(r: &sqlx::any::AnyRow, with_body: bool) -> Result<Row, sqlx::Error> {
    Ok(Row {
        id: r.try_get("id")?,
        entries: r.try_get("entries")?,
        weight: r.try_get("weight")?,
        parts: r.try_get("parts")?,
        done: r.try_get("done")?,
        body: if with_body {
            r.try_get("body")?
        } else {
            Vec::new()
        },
    })
}

/// `id IN ($1, ...)` (or `?`) for `n` ids.
fn id_list(kind: DbKind, n: usize) -> String {
    let marks: Vec<String> = (1..=n)
        .map(|i| match kind {
            DbKind::Sqlite => "?".to_string(),
            DbKind::Postgres => format!("${i}"),
        })
        .collect();
    format!("id IN ({})", marks.join(", "))
}

/// The fold task: folds while the journal holds batches, and waits for the next append otherwise.
pub(super) async fn folder(f: Folder) {
    let mut logged = (Instant::now(), [0; 5]);
    let mut unreadable = PassedOver::default();
    loop {
        let folded = match fold(&f, &mut unreadable).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fold the usage journal; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                0
            }
        };
        if let Err(e) = refresh_backlog(&f).await {
            tracing::warn!(error = %e, "cannot read the usage journal's backlog");
        }
        if logged.0.elapsed() >= Duration::from_secs(5) && folded > 0 {
            let (line, now) = f.stats.since(logged.1, &f.detect_stages);
            let appended = f.stats.journaled.load(Ordering::Relaxed);
            tracing::info!(
                "usage ingestion: {line}; journal: {appended} appended ({} bytes each, {:.2} ms per append), {} entries waiting",
                f.stats.journal_bytes.load(Ordering::Relaxed) / appended.max(1),
                f.stats.journal_micros.load(Ordering::Relaxed) as f64 / 1000.0 / appended.max(1) as f64,
                f.journal.backlog()
            );
            logged = (Instant::now(), now);
        }
        if f.examine.is_closed() {
            return;
        }
        if folded > 0 || unreadable.advanced {
            continue;
        }
        tokio::select! {
            _ = f.journal.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The examining task: runs the detectors over each stored group, examines rows left behind every ten
/// seconds, and writes the anomaly refreshes held back once nothing waits.
pub(super) async fn examiner(e: Examiner, mut rx: tokio::sync::mpsc::Receiver<Stored>) {
    let mut left_checked: Option<Instant> = None;
    loop {
        if left_checked.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            left_checked = Some(Instant::now());
            if let Err(err) = examine_left_behind(&e).await {
                tracing::warn!(error = %err, "cannot examine the usage journal's rows left behind; retrying later");
            }
        }
        let wait = if e.detector.holding() {
            crate::anomalies::COALESCE
        } else {
            Duration::from_secs(1)
        };
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(stored)) => {
                let refs: Vec<&Prepared> = stored.batches.iter().collect();
                if let Err(err) = examined(&e, &stored.ids, stored.entries, &refs).await {
                    // The rows stay marked stored: they are examined again as left behind.
                    tracing::warn!(error = %err, "cannot delete examined usage journal rows; they are examined again later");
                }
                if rx.is_empty() && e.journal.backlog() == 0 && e.detector.holding() {
                    super::write_held(&e.detector, &e.stats).await;
                }
            }
            Ok(None) => {
                super::write_held(&e.detector, &e.stats).await;
                return;
            }
            Err(_) => {
                if e.detector.holding() {
                    super::write_held(&e.detector, &e.stats).await;
                }
            }
        }
    }
}

/// Reads the journal's backlog (every replica's).
async fn refresh_backlog(f: &Folder) -> Result<(), sqlx::Error> {
    let backlog: Option<i64> =
        sqlx::query_scalar("SELECT CAST(COALESCE(SUM(entries), 0) AS BIGINT) FROM usage_journal")
            .fetch_one(&f.db.pool)
            .await?;
    f.journal
        .backlog
        .store(backlog.unwrap_or(0), Ordering::Relaxed);
    Ok(())
}

/// Logs the journal rows (`ids`) a fold or the examiner could not read, in one line: a fold reads them
/// again every minute, and a line per row would be a thousand lines a minute for a thousand rows.
fn log_unreadable(ids: &[i64], first_error: Option<&str>) {
    if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
        tracing::error!(
            rows = ids.len(),
            first_id = first,
            last_id = last,
            error = first_error.unwrap_or_default(),
            "usage journal rows this build cannot read (the error is the first row's): left in the journal for a build that can, and passed over"
        );
    }
}

/// Journal rows this build cannot read (a record version of another build, or a damaged body) are left in
/// the journal for a build that can, and passed over: the fold reads after the last of them at the head of
/// the journal, so however many gather there (more than one fold takes, or one too heavy for a fold) the
/// batches behind them are folded. Every minute it reads from the start again, in case a row it passed
/// over was only held back by another replica's fold.
#[derive(Debug)]
struct PassedOver {
    /// The fold reads rows after this id.
    after: i64,
    /// When `after` last went back to the start.
    since: Instant,
    /// The last fold moved `after` on (so the next one has rows to read without waiting for an append).
    advanced: bool,
}

impl Default for PassedOver {
    fn default() -> PassedOver {
        PassedOver {
            after: 0,
            since: Instant::now(),
            advanced: false,
        }
    }
}

impl PassedOver {
    /// Before a fold: back to the start once a minute.
    fn start_fold(&mut self) {
        self.advanced = false;
        if self.since.elapsed() >= Duration::from_secs(60) {
            self.after = 0;
            self.since = Instant::now();
        }
    }

    /// After decoding the rows a fold read (`order`, by id): passes over those at its head this build
    /// cannot read.
    fn pass_over(&mut self, order: &[i64], unreadable: &[i64]) {
        for id in order {
            if !unreadable.contains(id) {
                break;
            }
            if *id > self.after {
                self.after = *id;
                self.advanced = true;
            }
        }
    }
}

/// Folds one group: stores up to [`FOLD_BATCHES`] journaled batches (at most the fold's rows) in one
/// transaction that also marks them stored, runs the detectors over them and deletes their rows. The
/// records are decoded and summed on the parser threads before the write turn is taken. A first batch
/// heavier than a fold is stored in parts. Returns the batches folded.
async fn fold(f: &Folder, unreadable: &mut PassedOver) -> Result<usize, sqlx::Error> {
    let db = &f.db;
    unreadable.start_fold();
    let stages = Some(&f.stats.write_stages[..]);
    let started = Instant::now();
    // With PostgreSQL the rows are claimed in the fold's transaction (other replicas skip them); SQLite has
    // one replica and one fold, and reads them before its transaction, which takes the write lock. The
    // bodies are read only for the rows the fold takes.
    let select = format!(
        "SELECT id, entries, weight, parts, done FROM usage_journal WHERE done < parts AND id > {} ORDER BY id LIMIT {FOLD_BATCHES}{}",
        unreadable.after,
        match db.kind {
            DbKind::Postgres => " FOR UPDATE SKIP LOCKED",
            DbKind::Sqlite => "",
        }
    );
    let (mut claim, rows) = match db.kind {
        DbKind::Postgres => {
            let mut tx = db.begin_bulk().await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(select))
                .fetch_all(&mut *tx)
                .await?;
            (Some(tx), rows)
        }
        DbKind::Sqlite => (
            None,
            sqlx::query(sqlx::AssertSqlSafe(select))
                .fetch_all(&db.pool)
                .await?,
        ),
    };
    let rows = rows
        .iter()
        .map(|r| row(r, false))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = rows.first() else {
        return Ok(0);
    };
    let heavy = first.parts > 1 || first.done > 0;
    let mut picked = Vec::new();
    let mut weight = 0;
    for r in rows {
        if heavy {
            picked.push(r);
            break;
        }
        if r.parts > 1 || r.done > 0 {
            break;
        }
        if !picked.is_empty() && weight + r.weight as usize > f.limits.fold_rows {
            break;
        }
        weight += r.weight as usize;
        picked.push(r);
    }
    let ids: Vec<i64> = picked.iter().map(|r| r.id).collect();
    let mut bodies: HashMap<i64, Vec<u8>> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let query = with_ids(db.kind, "SELECT id, body FROM usage_journal", chunk);
        let found = match claim.as_mut() {
            Some(tx) => query.fetch_all(&mut **tx).await?,
            None => query.fetch_all(&db.pool).await?,
        };
        for r in found {
            bodies.insert(r.try_get("id")?, r.try_get("body")?);
        }
    }
    for r in &mut picked {
        r.body = bodies.remove(&r.id).unwrap_or_default();
    }
    if heavy {
        drop(claim);
        let first = picked.swap_remove(0);
        let id = first.id;
        return match fold_in_parts(f, first).await? {
            true => Ok(1),
            false => {
                unreadable.pass_over(&[id], &[id]);
                Ok(0)
            }
        };
    }
    let order: Vec<i64> = picked.iter().map(|r| r.id).collect();
    let quota = f.quota.clone();
    let summed = f
        .parsers
        .run(move || {
            let mut group = Vec::with_capacity(picked.len());
            let mut unreadable = Vec::new();
            let mut first_error = None;
            for r in picked {
                match decode(&r.body) {
                    Ok(p) => group.push((r.id, r.entries, p)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                        unreadable.push(r.id);
                    }
                }
            }
            log_unreadable(&unreadable, first_error.as_deref());
            // The detectors see every failure sample; the table keeps the quota.
            let samples: Vec<Vec<FailureEntry>> = match quota.lock() {
                Ok(mut quota) => group.iter().map(|(_, _, p)| quota.kept(p)).collect(),
                Err(_) => Vec::new(),
            };
            let refs: Vec<&Prepared> = group.iter().map(|(_, _, p)| p).collect();
            let agg = aggregate(&refs, Some(&samples));
            (group, agg, unreadable)
        })
        .await;
    let Some((group, agg, passed_over)) = summed else {
        return Err(sqlx::Error::Protocol(
            "the usage parser threads stopped".into(),
        ));
    };
    unreadable.pass_over(&order, &passed_over);
    if group.is_empty() {
        // Only rows this build cannot read: left for a build that can.
        return Ok(0);
    }
    let mut mark = Instant::now();
    let turn = db.bulk_write_turn().await;
    let mut tx = match claim {
        Some(tx) => tx,
        None => db.begin_bulk().await?,
    };
    lap(stages, 0, &mut mark);
    let refs: Vec<&Prepared> = group.iter().map(|(_, _, p)| p).collect();
    write_group(
        db,
        &f.bus,
        &f.feed,
        &mut tx,
        &refs,
        &agg,
        Some(&f.stats),
        &mut mark,
    )
    .await?;
    let ids: Vec<i64> = group.iter().map(|(id, _, _)| *id).collect();
    let now = now();
    let mut marked = 0;
    for chunk in ids.chunks(500) {
        let list = id_list(db.kind, chunk.len() + 1);
        let sql = match db.kind {
            DbKind::Sqlite => format!(
                "UPDATE usage_journal SET done = parts, stored_at = ? WHERE done < parts AND {}",
                id_list(db.kind, chunk.len())
            ),
            DbKind::Postgres => format!(
                "UPDATE usage_journal SET done = parts, stored_at = $1 WHERE done < parts AND {}",
                list.replacen("$1, ", "", 1)
            ),
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for id in chunk {
            query = query.bind(*id);
        }
        marked += query.execute(&mut *tx).await?.rows_affected();
    }
    if marked != ids.len() as u64 {
        // Some of them were stored meanwhile by another fold: nothing of this one is kept.
        tx.rollback().await?;
        return Ok(0);
    }
    tx.commit().await?;
    lap(stages, 6, &mut mark);
    drop(turn);
    let entries: i64 = group.iter().map(|(_, e, _)| *e).sum();
    f.stats
        .write_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    f.stats.transactions.fetch_add(1, Ordering::Relaxed);
    f.rate
        .0
        .writer_took(f.rate.1, entries as usize, started.elapsed());
    drop(refs);
    let folded = group.len();
    let stored = Stored {
        ids,
        entries,
        batches: group.into_iter().map(|(_, _, p)| p).collect(),
    };
    f.examine
        .send(stored)
        .await
        .map_err(|_| sqlx::Error::Protocol("the usage examiner stopped".into()))?;
    Ok(folded)
}

/// Stores a batch heavier than one fold in parts, each claimed (`done`) in the transaction that stores it,
/// then runs the detectors over it and deletes its row. False when this build cannot read the row.
async fn fold_in_parts(f: &Folder, r: Row) -> Result<bool, sqlx::Error> {
    let db = &f.db;
    let p = match decode(&r.body) {
        Ok(p) => p,
        Err(e) => {
            log_unreadable(&[r.id], Some(&e));
            return Ok(false);
        }
    };
    let pieces = split(&p, f.limits.part_rows);
    let started = Instant::now();
    for (k, piece) in pieces.iter().enumerate().skip(r.done.max(0) as usize) {
        let mut mark = Instant::now();
        let _turn = db.bulk_write_turn().await;
        let mut tx = db.begin_bulk().await?;
        lap(Some(&f.stats.write_stages[..]), 0, &mut mark);
        let claimed = sqlx::query(
            "UPDATE usage_journal SET done = $2, parts = $3, stored_at = $4 WHERE id = $1 AND done = $2 - 1",
        )
        .bind(r.id)
        .bind(k as i64 + 1)
        .bind(pieces.len() as i64)
        .bind(now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            // Another fold stored this part meanwhile; it goes on with the rest.
            tx.rollback().await?;
            return Ok(true);
        }
        let samples = match f.quota.lock() {
            Ok(mut quota) => vec![quota.kept(piece)],
            Err(_) => Vec::new(),
        };
        let agg = aggregate(&[piece], Some(&samples));
        write_group(
            db,
            &f.bus,
            &f.feed,
            &mut tx,
            &[piece],
            &agg,
            Some(&f.stats),
            &mut mark,
        )
        .await?;
        tx.commit().await?;
        lap(Some(&f.stats.write_stages[..]), 6, &mut mark);
        f.stats.transactions.fetch_add(1, Ordering::Relaxed);
    }
    f.stats
        .write_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    f.examine
        .send(Stored {
            ids: vec![r.id],
            entries: r.entries,
            batches: vec![p],
        })
        .await
        .map_err(|_| sqlx::Error::Protocol("the usage examiner stopped".into()))?;
    Ok(true)
}

/// Runs the detectors over stored batches (retried like the pipeline without the journal), then deletes
/// their rows and counts them.
async fn examined(
    f: &Examiner,
    ids: &[i64],
    entries: i64,
    batches: &[&Prepared],
) -> Result<(), sqlx::Error> {
    let started = Instant::now();
    let ingested: Vec<&super::Ingested> = batches.iter().map(|p| &p.ingested).collect();
    super::detect_retrying(&f.detector, &ingested, &f.stats).await;
    f.rate.detector_took(entries as usize, started.elapsed());
    f.stats
        .detect_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    f.stats.detect_groups.fetch_add(1, Ordering::Relaxed);
    remove(&f.db, ids).await?;
    f.journal.backlog.fetch_sub(entries, Ordering::Relaxed);
    for p in batches {
        f.metrics
            .usage_ingested(p.total as u64, p.ingested.failures.len() as u64);
        f.stats.stored.fetch_add(1, Ordering::Relaxed);
        if p.dropped > 0 {
            tracing::warn!(edge = %p.ingested.edge, dropped = p.dropped, "edge dropped usage events");
        }
    }
    Ok(())
}

/// Deletes journal rows whose batches are stored and examined.
async fn remove(db: &Db, ids: &[i64]) -> Result<(), sqlx::Error> {
    let _turn = db.bulk_write_turn().await;
    for chunk in ids.chunks(500) {
        with_ids(db.kind, "DELETE FROM usage_journal", chunk)
            .execute(&db.bulk)
            .await?;
    }
    Ok(())
}

/// Runs the detectors over rows stored at least [`LEFT_BEHIND_SECONDS`] ago whose detectors never ran (the
/// replica that stored them died first), then deletes them.
async fn examine_left_behind(f: &Examiner) -> Result<(), sqlx::Error> {
    // Rows this build cannot read stay for a build that can; each pass reads after the last row read, so
    // they hold up none behind them.
    let mut after = 0;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, entries, weight, parts, done, body FROM usage_journal WHERE done >= parts AND stored_at < $1 AND id > $2 ORDER BY id LIMIT {FOLD_BATCHES}"
        )))
        .bind(now() - LEFT_BEHIND_SECONDS)
        .bind(after)
        .fetch_all(&f.db.pool)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let rows = rows
            .iter()
            .map(|r| row(r, true))
            .collect::<Result<Vec<_>, _>>()?;
        after = rows.iter().map(|r| r.id).max().unwrap_or(after);
        let mut ids = Vec::new();
        let mut entries = 0;
        let mut batches = Vec::new();
        let mut unreadable = Vec::new();
        let mut first_error = None;
        for r in &rows {
            match decode(&r.body) {
                Ok(p) => {
                    ids.push(r.id);
                    entries += r.entries;
                    batches.push(p);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    unreadable.push(r.id);
                }
            }
        }
        log_unreadable(&unreadable, first_error.as_deref());
        if ids.is_empty() {
            continue;
        }
        tracing::info!(
            batches = ids.len(),
            "examining usage batches stored by a fold whose detectors did not run"
        );
        let refs: Vec<&Prepared> = batches.iter().collect();
        examined(f, &ids, entries, &refs).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_it_was_written() {
        let batch: super::super::UsageBatch = serde_json::from_value(serde_json::json!({
            "edge": "e1", "interval_start": 1_767_000_000, "interval_end": 1_767_000_010,
            "counts": [{"jti": "j1", "subject": "s", "route": "/a", "reason": "allowed", "count": 3, "addresses": ["10.0.0.1"]}],
            "failures": [{"reason": "expired", "client_address": "10.0.0.2", "at": 1_767_000_001, "iat": 5}]
        }))
        .unwrap();
        let prepared = super::super::prepare(batch, "192.0.2.1".into());
        let limits = Limits {
            fold_rows: 4_000,
            part_rows: 500,
        };
        let (entry, prepared) = Entry::new(prepared, 2, limits).unwrap();
        assert_eq!((entry.entries, entry.parts), (2, 1));
        let back = decode(&entry.body).unwrap();
        assert_eq!(format!("{back:?}"), format!("{prepared:?}"));
        // Another version is refused, not misread; a damaged record is an error, not a panic.
        let plain = lz4_flex::decompress_size_prepended(&entry.body).unwrap();
        let mut other = plain.clone();
        other[0] = 2;
        let other = lz4_flex::compress_prepend_size(&other);
        assert!(decode(&other).unwrap_err().contains("version 2"));
        assert!(decode(&entry.body[..entry.body.len() - 1]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff, 0x7f, 0])
            .unwrap_err()
            .contains("claims"));
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn a_batch_heavier_than_a_fold_is_journaled_in_parts() {
        let counts: Vec<serde_json::Value> = (0..1200)
            .map(|i| serde_json::json!({"jti": format!("j{i}"), "route": "/a", "reason": "allowed", "count": 1}))
            .collect();
        let batch: super::super::UsageBatch = serde_json::from_value(serde_json::json!({
            "edge": "e1", "interval_start": 1_767_000_000, "interval_end": 1_767_000_010, "counts": counts
        }))
        .unwrap();
        let prepared = super::super::prepare(batch, String::new());
        let limits = Limits {
            fold_rows: 1_000,
            part_rows: 500,
        };
        let (entry, _) = Entry::new(prepared, 1200, limits).unwrap();
        // 1,200 counts and 1,200 uses: 2,401 rows in parts of 500.
        assert_eq!((entry.weight, entry.parts), (2_401, 5));
    }

    #[test]
    fn failure_samples_beyond_the_quota_are_not_stored() {
        let mut quota = SampleQuota::new(2);
        assert!(quota.take("e1", 60));
        assert!(quota.take("e1", 119));
        assert!(!quota.take("e1", 100));
        assert!(quota.take("e2", 100));
        assert!(quota.take("e1", 120));
    }
}
