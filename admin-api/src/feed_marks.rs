//! Cursor marks, written in batches: when each edge first polled with each cursor (the propagation view).
//!
//! A revocation moves every edge's cursor, so each edge's next poll used to write its own mark before
//! its long-poll was held: ten thousand edges meant ten thousand single-row writes in the second after
//! every revocation, competing with the next revocation for SQLite's one writer (a revocation took 8 s
//! in the fleet bench). Marks are now kept in memory and written by one task, every [`FLUSH_EVERY`], as
//! multi-row upserts, a short transaction each in a bulk writer's turn (revocations go first). The earliest time
//! seen wins, in memory and in the table (replicas write the same rows), so a mark is at most
//! [`FLUSH_EVERY`] late to appear and never wrong. Marks still pending when the process stops are lost;
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

/// Starts the task that writes pending marks every [`FLUSH_EVERY`]; a failed write is logged and its
/// marks are lost (the next change writes new ones).
pub fn spawn_flusher(db: Db, marks: Arc<CursorMarks>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = marks.flush(&db).await {
                tracing::warn!(error = %e, "cannot write the edges' cursor marks");
            }
        }
    })
}
