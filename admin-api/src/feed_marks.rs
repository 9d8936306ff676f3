//! Cursor marks, written in batches: when each edge first polled with each cursor (the propagation view).
//!
//! A revocation moves every edge's cursor, so each edge's next poll used to write its own mark before
//! its long-poll was held: ten thousand edges meant ten thousand single-row writes in the second after
//! every revocation, competing with the next revocation for SQLite's one writer (a revocation took 8 s
//! in the fleet bench). Marks are now kept in memory and written by one task, every [`FLUSH_EVERY`], as
//! multi-row upserts in one transaction taken in the write turn revocations share. The earliest time
//! seen wins, in memory and in the table (replicas write the same rows), so a mark is at most
//! [`FLUSH_EVERY`] late to appear and never wrong. Marks still pending when the process stops are lost;
//! they describe the past only and the next change writes new ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::db::Db;

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
        let _turn = db.write_turn().await;
        let mut tx = db.pool.begin().await?;
        for chunk in marks.chunks(ROWS_PER_STATEMENT) {
            let mut sql =
                String::from("INSERT INTO edge_cursor_marks (edge, cursor, first_seen_ms) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let n = i * 3;
                sql.push_str(&format!("(${}, ${}, ${})", n + 1, n + 2, n + 3));
            }
            sql.push_str(
                " ON CONFLICT (edge, cursor) DO UPDATE SET first_seen_ms = excluded.first_seen_ms \
                 WHERE excluded.first_seen_ms < edge_cursor_marks.first_seen_ms",
            );
            // Only placeholders are formatted into the statement; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (edge, cursor, at) in chunk {
                query = query.bind(edge.as_str()).bind(*cursor).bind(*at);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(marks.len())
    }
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
