//! `/healthz` from a probe the replica runs itself: a task checks the database every [`PROBE_EVERY`], and a
//! health check reads the last result instead of queuing its own query.
//!
//! Why: a health check is answered on the accept thread (`serve.rs`) so that it never waits behind the main
//! runtime's work, but its own `SELECT 1` still waited for a pool connection and, on PostgreSQL, for the
//! main runtime's reactor to see the answer: with a usage flood and a login burst running, `/healthz` took
//! 56 ms at p99 (the abuse bench, issue 13). The answer now says whether the database answered within the
//! last [`STALE_AFTER`]; when it did not, the health check runs a probe of its own before it answers 503,
//! so a database that is down is never reported up, and one that just came back is seen at once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::db::Db;

/// How often the prober checks the database.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Longest a successful probe vouches for the database.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// Longest a probe waits for the database.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The database's health as the last probe found it.
#[derive(Debug, Default)]
pub struct Health {
    last_ok: Mutex<Option<Instant>>,
}

impl Health {
    /// Whether a probe succeeded within [`STALE_AFTER`] of `now`.
    pub fn healthy_at(&self, now: Instant) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| now.saturating_duration_since(at) < STALE_AFTER)
    }

    /// Asks the database `SELECT 1` within [`PROBE_TIMEOUT`] and records a success.
    pub async fn probe(&self, db: &Db) -> Result<(), String> {
        let answer = tokio::time::timeout(
            PROBE_TIMEOUT,
            sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&db.pool),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {
                *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }
}

/// Starts the task that probes the database every [`PROBE_EVERY`]; a failure is logged when it starts and
/// when it ends, not every second.
pub fn spawn_prober(db: Db, health: std::sync::Arc<Health>) -> JoinHandle<()> {
    crate::db::spawn_repeating(
        PROBE_EVERY,
        tracing::Level::ERROR,
        "health probe failed: the database does not answer",
        "the database answers health probes again",
        move || {
            let (db, health) = (db.clone(), health.clone());
            async move { health.probe(&db).await }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_vouches_for_the_database_until_it_is_stale() {
        let health = Health::default();
        let now = Instant::now();
        assert!(!health.healthy_at(now), "never probed");
        *health.last_ok.lock().unwrap() = Some(now);
        assert!(health.healthy_at(now));
        assert!(health.healthy_at(now + STALE_AFTER - Duration::from_millis(1)));
        assert!(!health.healthy_at(now + STALE_AFTER));
    }
}
