//! One database read per feed change, however many edges ask for it.
//!
//! When a revocation lands, every long-poll held on this replica wakes at once and asks for the same
//! delta (`since` = the cursor they all hold). Ten thousand edges meant ten thousand identical queries
//! and serialisations queued behind the pool's few connections, so the last edge learned of the
//! revocation seconds after the first. This cache computes the answer for a `(since, current cursor)`
//! pair once, single-flight, and hands every waiting poll the same serialised bytes.
//!
//! Entries live for [`FRESH_FOR`] at most (the feed's `now` field must stay close to the truth), and only
//! the few most recent keys are kept; a failed read is not cached, so the next poll tries again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::OnceCell;

use crate::db::Db;
use crate::revocations::load_feed;

/// How long an answer is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Keys kept at once: edges a change or two behind the rest get their own entry.
const MAX_KEYS: usize = 32;

/// A serialised feed answer and the cursor it brings the edge to.
#[derive(Clone, Debug)]
pub struct CachedFeed {
    /// The `cursor` of the answer (its `ETag`).
    pub cursor: i64,
    /// The JSON document.
    pub body: Bytes,
}

type Slot = Arc<OnceCell<CachedFeed>>;

/// Feed answers by `(since, cursor known when asked)`.
#[derive(Debug, Default)]
pub struct FeedCache {
    entries: Mutex<HashMap<(i64, i64), (Instant, Slot)>>,
    /// Edge snapshots (`crate::snapshot`), built once for every edge asking at the same cursor.
    pub snapshots: crate::snapshot::SnapshotCache,
}

impl FeedCache {
    /// The feed after `since` as this replica knows it at cursor `current`: read and serialised once for
    /// every poll asking the same within [`FRESH_FOR`].
    pub async fn delta(
        &self,
        db: &Db,
        since: i64,
        current: i64,
    ) -> Result<CachedFeed, sqlx::Error> {
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            entries.retain(|_, (at, _)| now.duration_since(*at) < FRESH_FOR);
            if entries.len() >= MAX_KEYS && !entries.contains_key(&(since, current)) {
                if let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| *k)
                {
                    entries.remove(&oldest);
                }
            }
            entries
                .entry((since, current))
                .or_insert_with(|| (now, Arc::new(OnceCell::new())))
                .1
                .clone()
        };
        let cached = slot
            .get_or_try_init(|| async {
                let body = load_feed(db, since).await?;
                let cursor = body.cursor;
                let json =
                    serde_json::to_vec(&body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                Ok::<_, sqlx::Error>(CachedFeed {
                    cursor,
                    body: Bytes::from(json),
                })
            })
            .await?;
        Ok(cached.clone())
    }
}
