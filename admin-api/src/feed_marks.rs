//! Cursor marks, written in batches: when each edge first polled with each cursor (the propagation view).
//!
//! A revocation moves every edge's cursor, so each edge's next poll used to write its own mark before
//! its long-poll was held: ten thousand edges meant ten thousand single-row writes in the second after
//! every revocation, competing with the next revocation for SQLite's one writer (a revocation took 8 s
//! in the fleet bench). Marks are now kept in memory and written by one task once they stop arriving, as
//! multi-row upserts, a short transaction each in a bulk writer's turn (revocations go first). The earliest time
//! seen wins, in memory and in the table (replicas write the same rows), so a mark is at most
//! [`MAX_DEFER`] late to appear on another replica (this one writes what is pending before it answers the
//! propagation view) and never wrong. Marks still pending when the process stops are lost;
//! they describe the past only and the next change writes new ones.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::db::{Db, DbKind};

/// How often pending marks are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Rows per statement (SQLite allows 32,766 bound parameters; three per row).
const ROWS_PER_STATEMENT: usize = 500;
/// Pending marks kept at most; beyond it new ones are dropped (and counted) until the next flush.
const MAX_PENDING: usize = 200_000;

/// Marks waiting to be written.
#[derive(Debug, Default)]
pub struct CursorMarks {
    pending: Mutex<HashMap<(String, i64), i64>>,
    dropped: std::sync::atomic::AtomicU64,
}

impl CursorMarks {
    /// Notes that `edge` polled with `cursor` at `at_ms` (the earliest note of a pair wins).
    pub fn record(&self, edge: &str, cursor: i64, at_ms: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seen) = pending.get_mut(&(edge.to_owned(), cursor)) {
            *seen = (*seen).min(at_ms);
        } else if pending.len() < MAX_PENDING {
            pending.insert((edge.to_owned(), cursor), at_ms);
        } else {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Marks waiting to be written.
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no mark waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self) -> Vec<(String, i64, i64)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending)
            .into_iter()
            .map(|((edge, cursor), at)| (edge, cursor, at))
            .collect()
    }

    /// Writes every pending mark now (the flush task's step; tests call it to skip the wait).
    pub async fn flush(&self, db: &Db) -> Result<usize, sqlx::Error> {
        let marks = self.take();
        if marks.is_empty() {
            return Ok(0);
        }
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "cursor marks dropped: more edges advanced between two flushes than are kept"
            );
        }
        // A transaction per chunk, each in a bulk writer's turn: a revocation waits for one chunk at most,
        // never for the marks of ten thousand edges.
        for chunk in marks.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO edge_cursor_marks (edge, cursor, first_seen_ms) VALUES {} \
                 ON CONFLICT (edge, cursor) DO UPDATE SET first_seen_ms = excluded.first_seen_ms \
                 WHERE excluded.first_seen_ms < edge_cursor_marks.first_seen_ms",
                row_placeholders(db.kind, chunk.len(), 3)
            );
            // Only placeholders are formatted into the statement; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (edge, cursor, at) in chunk {
                query = query.bind(edge.as_str()).bind(*cursor).bind(*at);
            }
            let _turn = db.bulk_write_turn().await;
            query.execute(&db.pool).await?;
        }
        Ok(marks.len())
    }
}

/// `(…), (…)` placeholders for `rows` rows of `width` values each: `$n` on PostgreSQL, anonymous `?` on
/// SQLite. SQLite finds a numbered parameter's name by a linear search, and sqlx asks for every
/// parameter's name when it binds, so a 1,500-parameter statement numbered `$n` cost quadratic time: 3 to 4 %
/// of the replica's CPU in the fleet bench went to `sqlite3_bind_parameter_name` (issue 12).
pub(crate) fn row_placeholders(kind: DbKind, rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * (width * 6 + 4));
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            match kind {
                DbKind::Sqlite => sql.push('?'),
                DbKind::Postgres => {
                    let _ = write!(sql, "${}", row * width + column + 1);
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Longest a mark waits to be written while marks keep arriving.
pub const MAX_DEFER: Duration = Duration::from_secs(2);

/// Starts the task that writes pending marks: at the first [`FLUSH_EVERY`] tick at which no mark arrived
/// since the last one, or once the oldest waited [`MAX_DEFER`]. A revocation wakes every held poll at
/// once, and each edge's next poll records a mark; writing them while the wave was still being answered
/// took a fifth of the replica's CPU on SQLite (ten thousand rows, twenty transactions) away from the
/// answers (the fleet bench, issue 12). Waiting for the wave to pass writes the same rows, after it. A
/// failed write is logged and its marks are lost (the next change writes new ones).
pub fn spawn_flusher(db: Db, marks: Arc<CursorMarks>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deferral = Deferral::default();
        loop {
            tick.tick().await;
            if !deferral.due(marks.len(), std::time::Instant::now()) {
                continue;
            }
            if let Err(e) = marks.flush(&db).await {
                tracing::warn!(error = %e, "cannot write the edges' cursor marks");
            }
        }
    })
}

/// When the flusher writes: marks pending, and none arrived since the last tick or the oldest has waited
/// [`MAX_DEFER`].
#[derive(Debug, Default)]
struct Deferral {
    /// Pending marks at the last tick.
    seen: usize,
    /// When marks were first seen pending since the last write.
    since: Option<std::time::Instant>,
}

impl Deferral {
    /// Whether to write now, given the marks pending at this tick; a `true` starts a new deferral.
    fn due(&mut self, pending: usize, now: std::time::Instant) -> bool {
        if pending == 0 {
            *self = Deferral::default();
            return false;
        }
        let since = *self.since.get_or_insert(now);
        let arriving = pending > self.seen;
        self.seen = pending;
        if arriving && now.duration_since(since) < MAX_DEFER {
            return false;
        }
        *self = Deferral::default();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn marks_are_written_once_they_stop_arriving_or_after_the_longest_deferral() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut d = Deferral::default();
        assert!(!d.due(0, at(0)), "nothing pending");
        assert!(!d.due(100, at(250)), "marks arriving");
        assert!(!d.due(5_000, at(500)), "still arriving");
        assert!(d.due(5_000, at(750)), "none arrived for a tick: write");
        // A steady stream is written every MAX_DEFER at the latest.
        let mut writes = Vec::new();
        for tick in 1..=20u64 {
            if d.due(tick as usize * 10, at(750 + tick * 250)) {
                writes.push(tick * 250);
            }
        }
        assert!(!writes.is_empty(), "a steady stream was never written");
        for pair in writes.windows(2) {
            assert!(
                pair[1] - pair[0] <= MAX_DEFER.as_millis() as u64 + 250,
                "{writes:?}"
            );
        }
    }
}
