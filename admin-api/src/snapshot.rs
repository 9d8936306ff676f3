//! The edge snapshot: `GET /api/v1/revocations/snapshot`, the whole revocation state at one feed cursor in
//! compact binary pages (`edgewarden_core::feed::snapshot`), which an edge loads on a cold start instead of
//! the JSON feed's full listing, then continues with `GET /api/v1/revocations/feed?since=<cursor>`.
//!
//! Roles admin, auditor and edge, as for the feed (an edge key bound to edges must name one of them in
//! `x-edgewarden-edge`, if it sends the header). The answer is `application/vnd.edgewarden.snapshot`: one
//! page, whose header carries the version, the cursor it is consistent with, the snapshot's id, the page
//! index and count, the entry counts, and a checksum. Pages hold at most about 1 MiB of entries.
//! - Without parameters: page 0 of a snapshot at the current cursor: one this replica built (or is building)
//!   at that cursor within [`FRESH_FOR`], else one built now, shared by every edge that asks meanwhile. A
//!   snapshot behind the cursor is never handed out: an edge loading it would count itself synced without the
//!   changes after it, and let a token revoked meanwhile through until its next poll. The replica keeps one
//!   ready ([`spawn_keeper`]): it builds one when it starts with revocations in the store, and again in the
//!   background once the cursor has moved and stayed put for [`KEEP_EVERY`], so a cold edge rarely waits
//!   for a read of the whole store.
//! - `?page=<n>&id=<hex>&cursor=<c>&now=<t>` (what the previous page's header says): page `n` of that
//!   snapshot. A replica that does not hold it rebuilds it from the rows with `seq <= c` unexpired at `t`;
//!   should that give another id (rows were pruned meanwhile), the answer is `409`: start again at page 0.
//!
//! A snapshot at cursor `c` is consistent with the feed: a row changed after `c` has moved to `seq > c`, so it
//! is left out here and comes in the delta `since=c`, exactly as for a paged JSON listing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use edgewarden_core::feed::snapshot::{
    SnapshotBuilder, SNAPSHOT_CONTENT_TYPE, SNAPSHOT_PAGE_BYTES,
};
use edgewarden_core::revocation::PrincipalRevocation;
use futures_util::TryStreamExt as _;
use serde::Deserialize;
use sqlx::Row as _;
use tokio::sync::OnceCell;

use crate::auth::{Principal, Role};
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::revocations::{db_cursor, EDGE_HEADER, EXPIRED_GRACE_SECONDS};
use crate::AppState;

/// How long a snapshot's page 0 is handed to every edge that asks while the cursor stays put (entries that
/// expired since it was built are pruned by the edge).
pub const FRESH_FOR: Duration = Duration::from_secs(600);
/// Snapshots kept at once (the newest, one being built, and one an edge may still be paging through).
const KEPT: usize = 3;
/// How often the keeper looks at the cursor.
const KEEP_EVERY: Duration = Duration::from_secs(10);

/// One built snapshot: its pages, ready to send.
#[derive(Debug)]
pub struct Built {
    /// Feed cursor it is consistent with.
    pub cursor: i64,
    /// The clock its expiry filter used.
    pub now: i64,
    /// Its id (the same in every page's header).
    pub id: u64,
    /// The encoded pages.
    pub pages: Vec<Bytes>,
}

type Slot = Arc<OnceCell<Arc<Built>>>;
/// A snapshot's `(cursor, now)`, when its slot was made, and the slot.
type Entry = ((i64, i64), Instant, Slot);

/// Built snapshots by `(cursor, now)`, single-flight: edges asking at once share one read of the store.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    entries: Mutex<Vec<Entry>>,
}

impl SnapshotCache {
    fn slot(&self, cursor: i64, now: Option<i64>) -> ((i64, i64), Slot) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let found = entries.iter().find(|((c, t), at, _)| {
            *c == cursor
                && match now {
                    Some(now) => *t == now,
                    None => at.elapsed() < FRESH_FOR,
                }
        });
        if let Some((key, _, slot)) = found {
            return (*key, slot.clone());
        }
        let key = (cursor, now.unwrap_or_else(crate::db::now));
        let slot = Slot::default();
        entries.push((key, Instant::now(), slot.clone()));
        if entries.len() > KEPT {
            entries.remove(0);
        }
        (key, slot)
    }

    /// The cursor of the newest built snapshot and how long ago its build started.
    fn newest(&self) -> Option<(i64, Duration)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|(_, _, slot)| slot.initialized())
            .map(|((c, _), at, _)| (*c, at.elapsed()))
            .max_by_key(|(c, _)| *c)
    }

    /// The snapshot at `cursor` built with clock `now` (`None`: one at that cursor built within
    /// [`FRESH_FOR`], or one built now).
    pub async fn get(
        &self,
        db: &Db,
        cursor: i64,
        now: Option<i64>,
    ) -> Result<Arc<Built>, sqlx::Error> {
        let ((cursor, now), slot) = self.slot(cursor, now);
        let built = slot
            .get_or_try_init(|| async { build(db, cursor, now).await.map(Arc::new) })
            .await?;
        Ok(built.clone())
    }
}

/// Reads the rows of the snapshot at `cursor` (unexpired at `now`, with the feed's grace) and encodes them.
/// Rows are streamed and hashed as they come, so the replica holds 12 bytes a jti, not the strings.
pub async fn build(db: &Db, cursor: i64, now: i64) -> Result<Built, sqlx::Error> {
    let started = Instant::now();
    let mut builder = SnapshotBuilder::new();
    let mut rows = sqlx::query(
        "SELECT kind, value, issuer, revoked_at, expires_at FROM revocations \
         WHERE seq > 0 AND seq <= $1 AND expires_at > $2",
    )
    .bind(cursor)
    .bind(now - EXPIRED_GRACE_SECONDS)
    .fetch(&db.pool);
    let mut count = 0u64;
    while let Some(row) = rows.try_next().await? {
        let kind: &str = row.try_get("kind")?;
        let value: &str = row.try_get("value")?;
        let issuer: &str = row.try_get("issuer")?;
        let expires_at = u64::try_from(row.try_get::<i64, _>("expires_at")?).unwrap_or(0);
        match kind {
            "jti" => builder.jti(Some(issuer), value, expires_at),
            kind => builder.principal(
                kind == "subject",
                Some(issuer),
                value,
                PrincipalRevocation {
                    revoked_at: u64::try_from(row.try_get::<i64, _>("revoked_at")?).unwrap_or(0),
                    expires_at,
                },
            ),
        }
        count += 1;
    }
    drop(rows);
    let read = started.elapsed();
    let (c, t) = (
        u64::try_from(cursor).unwrap_or(0),
        u64::try_from(now).unwrap_or(0),
    );
    let pages = tokio::task::spawn_blocking(move || builder.finish(c, t, SNAPSHOT_PAGE_BYTES))
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("snapshot encoding failed: {e}")))?;
    let id = pages
        .first()
        .and_then(|p| edgewarden_core::feed::snapshot::SnapshotPage::parse(p).ok())
        .map_or(0, |p| p.id);
    tracing::info!(
        cursor,
        entries = count,
        pages = pages.len(),
        read_ms = read.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "revocation snapshot built"
    );
    Ok(Built {
        cursor,
        now,
        id,
        pages: pages.into_iter().map(Bytes::from).collect(),
    })
}

/// Keeps a snapshot ready for cold edges: builds one at start-up when the store holds revocations, then looks
/// every [`KEEP_EVERY`] and builds a new one in the background when the cursor has moved since the newest and
/// did not move during the last look (a burst of revocations is built once, after it), or when the newest is
/// [`FRESH_FOR`] old, so edges no longer get it. A failed build is logged and tried again at the next look;
/// edges build on demand meanwhile, as without the keeper.
pub fn spawn_keeper(
    db: Db,
    feed: Arc<crate::revocations::Feed>,
    cache: Arc<crate::feed_cache::FeedCache>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = None;
        loop {
            tick.tick().await;
            let current = feed.current();
            let settled = last_seen.replace(current).is_none_or(|c| c == current);
            let due = match cache.snapshots.newest() {
                None => current > 0,
                Some((cursor, age)) => (current != cursor && settled) || age >= FRESH_FOR,
            };
            if !due {
                continue;
            }
            if let Err(e) = cache.snapshots.get(&db, current, None).await {
                tracing::warn!(error = %e, cursor = current, "could not build the edge snapshot ahead; edges build it when they ask");
            }
        }
    })
}

/// The route of the snapshot.
pub fn router() -> Router<AppState> {
    // The path written out, as every router does: the openapi test reads routes from the sources.
    Router::new().route("/api/v1/revocations/snapshot", get(snapshot))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotQuery {
    page: Option<u32>,
    id: Option<String>,
    cursor: Option<i64>,
    now: Option<i64>,
}

async fn snapshot(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<SnapshotQuery>,
) -> ApiResult<Response> {
    principal.require(
        &[Role::Admin, Role::Auditor, Role::Edge],
        "read the revocation snapshot",
    )?;
    if let Some(name) = headers
        .get(EDGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| !n.is_empty() && n.len() <= 200)
    {
        principal.require_edge(name)?;
    }
    let page = q.page.unwrap_or(0);
    let built = if page == 0 && q.id.is_none() && q.cursor.is_none() && q.now.is_none() {
        let cursor = db_cursor(&state.db).await?;
        state
            .feed_cache
            .snapshots
            .get(&state.db, cursor, None)
            .await?
    } else {
        let (Some(id), Some(cursor), Some(at)) = (q.id.as_deref(), q.cursor, q.now) else {
            return Err(ApiError::field(
                "id",
                "id, cursor and now: all three are required after page 0, as the previous page's header says them",
            ));
        };
        let id = u64::from_str_radix(id, 16)
            .ok()
            .filter(|_| id.len() == 16)
            .ok_or_else(|| ApiError::field("id", "id: not 16 hex digits"))?;
        if cursor < 0 || at < 0 {
            return Err(ApiError::field(
                "cursor",
                "cursor and now: must not be negative",
            ));
        }
        if cursor > db_cursor(&state.db).await? {
            return Err(ApiError::field(
                "cursor",
                format!("cursor: {cursor} was never produced by this store; start again at page 0"),
            ));
        }
        let built = state
            .feed_cache
            .snapshots
            .get(&state.db, cursor, Some(at))
            .await?;
        if built.id != id {
            return Err(ApiError::Conflict(format!(
                "snapshot {id:016x} can no longer be built (its entries changed); start again at page 0"
            )));
        }
        built
    };
    let Some(body) = built.pages.get(page as usize).cloned() else {
        return Err(ApiError::field(
            "page",
            format!(
                "page: {page} is past the snapshot's {} pages",
                built.pages.len()
            ),
        ));
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(SNAPSHOT_CONTENT_TYPE),
        )],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"c{}\"", built.cursor)) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(cursor: i64) -> Arc<Built> {
        Arc::new(Built {
            cursor,
            now: 1_767_000_000,
            id: cursor as u64,
            pages: Vec::new(),
        })
    }

    /// A cache holding built snapshots at `cursors`, each made `age` ago.
    fn cache(cursors: &[i64], age: Duration) -> SnapshotCache {
        let cache = SnapshotCache::default();
        let made = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        cache
            .entries
            .lock()
            .unwrap()
            .extend(cursors.iter().map(|&c| {
                (
                    (c, 1_767_000_000),
                    made,
                    Arc::new(OnceCell::new_with(Some(built(c)))),
                )
            }));
        cache
    }

    /// The cursor of the snapshot page 0 gets at `current`: an existing one's, or a new slot's.
    fn page0(cache: &SnapshotCache, current: i64) -> (i64, bool) {
        let ((cursor, _), slot) = cache.slot(current, None);
        (cursor, slot.initialized())
    }

    #[test]
    fn only_a_snapshot_at_the_current_cursor_is_handed_out() {
        let c = cache(&[100, 4_000], Duration::ZERO);
        assert_eq!(page0(&c, 4_000), (4_000, true));
        assert_eq!(page0(&c, 100), (100, true));
        assert_eq!(
            page0(&c, 4_001),
            (4_001, false),
            "one change behind: an edge loading it would let the newest revocation through"
        );
        assert_eq!(c.newest().map(|(cursor, _)| cursor), Some(4_000));
    }

    #[test]
    fn an_old_snapshot_is_built_again_and_one_being_built_is_not_newest() {
        let old = cache(&[10], FRESH_FOR + Duration::from_secs(1));
        assert_eq!(page0(&old, 10), (10, false));
        let building = SnapshotCache::default();
        building.slot(50, None);
        assert_eq!(page0(&building, 50), (50, false), "joined, not built twice");
        assert!(building.newest().is_none());
    }
}
