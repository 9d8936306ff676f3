//! Revocation state for every worker VM of one Envoy, from one poller.
//! The VMs of a plugin elect a poller through a lease in proxy-wasm shared data (compare-and-swap, renewed on
//! every tick, taken over when it lapses). The poller long-polls the admin API's feed through the
//! `control_plane` cluster, applies each answer, and publishes the change for the others: a delta in a ring of
//! slots, a full snapshot now and then, and a small mark, then wakes every other VM through its own shared
//! queue ([`wake`]). A woken VM reads the mark at once (and every VM on its 100 ms tick, should a wake be
//! lost) and catches up delta by delta, or from the snapshot when it fell too far behind.
//! Nothing here can fail a request: a poll that fails leaves the last state in place and its age decides.

use std::time::Duration;

use edgewarden_core::config::{ControlPlaneConfig, RevocationConfig};
use edgewarden_core::feed::snapshot::{SnapshotPage, SnapshotProgress, SNAPSHOT_CONTENT_TYPE};
use edgewarden_core::feed::{FeedUpdate, SyncMark};
use edgewarden_core::revocation::RevocationSet;
use proxy_wasm::types::LogLevel;

use crate::host::{CallResponse, Host};
use crate::metrics::{Gauge, Stat};
use crate::state::Control;

pub mod report;
pub mod wake;

/// Largest feed answer the poller reads (a full snapshot of a million revoked jtis is about 60 MB of JSON).
pub const MAX_FEED_BYTES: usize = 256 * 1024 * 1024;
/// Entries the poller asks for per feed page (`limit=`): about 1.2 MB of JSON, far below Envoy's 32 MiB limit
/// on a callout's answer. Measured with a million revocations, pages of 100,000 left the polling VM at 41 MB of
/// memory against 31 MB for the others; at 25,000 it is 31.4 MB, for a cold sync of 11 s instead of 5.
pub const PAGE_ENTRIES: u64 = 25_000;
/// Jtis per shared snapshot part (about 1 MB), so no VM ever copies the whole snapshot out of shared data at once.
pub const PART_JTIS: usize = 50_000;
/// Delta slots in shared data; a VM more than this many changes behind loads the snapshot.
pub const RING: u64 = 64;
/// The poller republishes the snapshot after this many deltas, so the deltas after it are always in the ring.
const SNAPSHOT_EVERY: u64 = RING / 2;
/// How long a poller's lease lasts without renewal; it renews on every tick and before it applies an answer,
/// and hands it back when its VM shuts down. Long enough to parse a million-entry snapshot (under 2 s in V8),
/// short enough that a VM torn down without notice delays polling by only that much.
pub const LEASE_MS: u64 = 3_000;
/// Longest wait between two polls after failures (the wait doubles from `poll_interval_ms`).
const MAX_BACKOFF_MS: u64 = 5_000;
/// Repeated poll failures are logged at most this often; each is counted.
const FAILURE_LOG_INTERVAL_MS: u64 = 30_000;

/// What this VM does about the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Another VM polls; this one copies the published state.
    Follower,
    /// This VM holds the lease and polls.
    Poller,
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    token: u32,
    started_ms: u64,
    long_poll: bool,
    /// A page of the edge snapshot rather than a feed poll.
    snapshot: bool,
}

/// An edge snapshot being loaded page by page (`GET .../revocations/snapshot`): assembled aside like a paged
/// full listing, swapped in at its last page.
struct SnapshotListing {
    progress: SnapshotProgress,
    building: RevocationSet,
}

/// A feed listing that comes in pages. A full one is assembled aside and replaces the state only once its
/// last page is in, so requests never see half a snapshot; a delta one is merged page by page (revoking
/// early is always safe) while the cursor stays put until the last page.
struct Listing {
    since: u64,
    next: String,
    building: Option<RevocationSet>,
}

/// Shared-data keys, namespaced by cluster and feed path so two plugin configurations in one Envoy never mix.
#[derive(Debug, Clone)]
struct Keys {
    lease: String,
    mark: String,
    snapshot: String,
    delta_prefix: String,
    /// The registry of VMs to wake after a change ([`wake`]).
    wakers: String,
    wake_prefix: String,
}

impl Keys {
    fn new(cluster: &str, feed_path: &str) -> Keys {
        let base = format!("edgewarden.revocation|{cluster}|{feed_path}|");
        Keys {
            lease: format!("{base}lease"),
            mark: format!("{base}mark"),
            snapshot: format!("{base}snapshot"),
            delta_prefix: format!("{base}delta."),
            wakers: format!("{base}wakers"),
            wake_prefix: format!("{base}wake."),
        }
    }

    /// The keys of a named plugin instance (`stat_prefix`): its own lease and state, so each instance has a
    /// poller that sets its own gauges even when two instances read the same feed.
    fn for_instance(cluster: &str, feed_path: &str, instance: Option<&str>) -> Keys {
        match instance {
            None => Keys::new(cluster, feed_path),
            Some(name) => Keys::new(&format!("{cluster}|instance={name}"), feed_path),
        }
    }

    fn delta(&self, seq: u64) -> String {
        format!("{}{}", self.delta_prefix, seq % RING)
    }

    /// The name of VM `vm_id`'s wake queue.
    fn wake(&self, vm_id: u64) -> String {
        format!("{}{vm_id:016x}", self.wake_prefix)
    }

    fn part(&self, index: u32) -> String {
        format!("{}.part.{index}", self.snapshot)
    }
}

/// The poller or follower side of one VM: lease, poll schedule, and how far its copy of the state has come.
pub struct RevocationSync {
    cluster: String,
    authority: String,
    authorization: String,
    edge_name: String,
    feed_path: String,
    poll_interval_ms: u64,
    /// The `wait=` of a long poll: `long_poll_seconds`, but at most a third of `max_staleness_seconds`, because
    /// a held poll confirms nothing until it is answered and the state must not look stale meanwhile.
    wait_seconds: u64,
    timeout_ms: u64,
    snapshot_timeout_ms: u64,
    keys: Keys,
    vm_id: u64,
    role: Role,
    /// Sequence number of the change this VM's state reflects.
    seq: u64,
    /// Sequence number of the published snapshot (poller: the last one it knows of).
    snapshot_seq: u64,
    /// Version of the mark this VM last caught up with.
    mark_cas: Option<u32>,
    /// This VM's wake queue, once registered (on its first tick).
    wake_queue: Option<u32>,
    /// Sequence number of the last change the followers were woken for (poller).
    woken_seq: u64,
    inflight: Option<Inflight>,
    /// A paged listing in progress: the pages after the first are asked for at once.
    listing: Option<Listing>,
    /// The edge snapshot's path, when the feed path names the admin API's feed and the admin API has not
    /// answered it with 404: a cold start (cursor 0) loads the snapshot instead of the JSON feed's listing.
    snapshot_path: Option<String>,
    /// An edge snapshot being loaded.
    snapshot: Option<SnapshotListing>,
    next_poll_ms: u64,
    failures: u32,
    started_ms: u64,
    last_failure_log_ms: Option<u64>,
    /// The configuration this edge reports on its polls, and its upload.
    report: Option<report::ConfigReport>,
}

impl std::fmt::Debug for RevocationSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The authorization header carries the edge's API key: never print it.
        f.debug_struct("RevocationSync")
            .field("cluster", &self.cluster)
            .field("edge_name", &self.edge_name)
            .field("role", &self.role)
            .field("seq", &self.seq)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl RevocationSync {
    /// [`RevocationSync::new`] for the plugin instance named by `stat_prefix` (keys of its own when named).
    pub fn for_instance(
        mut self,
        cp: &ControlPlaneConfig,
        rc: &RevocationConfig,
        stat_prefix: Option<&str>,
    ) -> Self {
        self.keys = Keys::for_instance(&cp.cluster, &rc.feed_path, stat_prefix);
        self
    }

    /// A follower that has seen nothing yet; `vm_id` must differ between the VMs of one Envoy.
    pub fn new(
        cp: &ControlPlaneConfig,
        rc: &RevocationConfig,
        vm_id: u64,
        now_ms: u64,
    ) -> RevocationSync {
        RevocationSync {
            cluster: cp.cluster.clone(),
            authority: cp.authority().into_owned(),
            authorization: format!("Bearer {}", cp.api_key),
            edge_name: cp.edge_name.clone(),
            feed_path: rc.feed_path.clone(),
            poll_interval_ms: rc.poll_interval_ms,
            wait_seconds: rc
                .long_poll_seconds
                .min((rc.max_staleness_seconds / 3).max(1)),
            timeout_ms: cp.timeout_ms,
            snapshot_timeout_ms: cp.snapshot_timeout_ms,
            keys: Keys::new(&cp.cluster, &rc.feed_path),
            vm_id,
            role: Role::Follower,
            seq: 0,
            snapshot_seq: 0,
            mark_cas: None,
            wake_queue: None,
            woken_seq: 0,
            inflight: None,
            listing: None,
            snapshot_path: snapshot_path(&rc.feed_path),
            snapshot: None,
            next_poll_ms: 0,
            failures: 0,
            started_ms: now_ms,
            last_failure_log_ms: None,
            report: None,
        }
    }

    /// Sets the configuration this edge reports (see [`report`]).
    pub fn set_report(&mut self, report: Option<report::ConfigReport>) {
        self.report = report;
    }

    /// The configuration this edge reports, if any.
    pub fn report(&self) -> Option<&report::ConfigReport> {
        self.report.as_ref()
    }

    /// Whether `token` is this VM's configuration upload in flight.
    pub fn owns_upload(&self, token: u32) -> bool {
        self.report.as_ref().is_some_and(|r| r.owns(token))
    }

    /// Whether this VM polls.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether `token` is this VM's poll in flight.
    pub fn owns(&self, token: u32) -> bool {
        self.inflight.is_some_and(|f| f.token == token)
    }

    /// Sequence number of the change this VM's state reflects.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// The edge snapshot's path beside the feed's: `<prefix>/revocations/feed` gives `<prefix>/revocations/snapshot`;
/// any other feed path (a proxy in between, a query string) keeps the edge on the JSON feed.
fn snapshot_path(feed_path: &str) -> Option<String> {
    feed_path
        .strip_suffix("/revocations/feed")
        .filter(|prefix| !prefix.contains(['?', '#']))
        .map(|prefix| format!("{prefix}/revocations/snapshot"))
}

fn encode_lease(owner: u64, expires_ms: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, byte) in out
        .iter_mut()
        .zip(owner.to_le_bytes().iter().chain(&expires_ms.to_le_bytes()))
    {
        *slot = *byte;
    }
    out
}

fn decode_lease(bytes: &[u8]) -> Option<(u64, u64)> {
    let owner = bytes.get(..8)?.try_into().ok().map(u64::from_le_bytes)?;
    let expires = bytes.get(8..16)?.try_into().ok().map(u64::from_le_bytes)?;
    (bytes.len() == 16).then_some((owner, expires))
}

/// A delta slot or snapshot value: the sequence number, then the core record.
fn with_seq(seq: u64, record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + record.len());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(record);
    out
}

fn split_seq(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let seq = bytes.get(..8)?.try_into().ok().map(u64::from_le_bytes)?;
    Some((seq, bytes.get(8..)?))
}

/// The snapshot manifest: sequence number, number of parts, and the jtis they hold (to size the table once).
fn encode_manifest(seq: u64, parts: u32, jtis: u64) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (slot, byte) in out.iter_mut().zip(
        seq.to_le_bytes()
            .iter()
            .chain(&parts.to_le_bytes())
            .chain(&jtis.to_le_bytes()),
    ) {
        *slot = *byte;
    }
    out
}

fn decode_manifest(bytes: &[u8]) -> Option<(u64, u32, u64)> {
    if bytes.len() != 20 {
        return None;
    }
    let seq = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let parts = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    let jtis = u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?);
    Some((seq, parts, jtis))
}

/// Publishes the state as snapshot `seq`: the parts first, then the manifest that names them.
fn publish_snapshot(host: &mut dyn Host, control: &Control, seq: u64) {
    let keys = control.sync.borrow().keys.clone();
    let mut parts: u32 = 0;
    let jtis = {
        let revocation = control.revocation.borrow();
        for record in revocation.set().snapshot_parts(PART_JTIS) {
            // No borrow of the sync state is held here, only of the revocation state, which set_shared
            // cannot touch (it does not re-enter the VM).
            host.set_shared(&keys.part(parts), &with_seq(seq, &record));
            parts = parts.saturating_add(1);
        }
        revocation.set().jti_count() as u64
    };
    host.set_shared(&keys.snapshot, &encode_manifest(seq, parts, jtis));
    control.sync.borrow_mut().snapshot_seq = seq;
}

/// Loads snapshot `seq` from its parts into a new state and swaps it in; false (state untouched) if the
/// manifest or a part is missing, of another snapshot, or unusable.
fn load_snapshot(host: &mut dyn Host, control: &Control, seq: u64) -> Result<bool, String> {
    let keys = control.sync.borrow().keys.clone();
    let Some((manifest, _)) = host.get_shared(&keys.snapshot) else {
        return Ok(false);
    };
    let Some((snapshot_seq, parts, jtis)) = decode_manifest(&manifest) else {
        return Err("manifest unusable".to_string());
    };
    if snapshot_seq != seq {
        // Replaced after the mark was read: the next tick reads the newer mark.
        return Ok(false);
    }
    let mut building = RevocationSet::new();
    for index in 0..parts {
        let Some((bytes, _)) = host.get_shared(&keys.part(index)) else {
            return Ok(false);
        };
        match split_seq(&bytes) {
            Some((part_seq, record)) if part_seq == seq => building
                .apply_bytes(record)
                .map_err(|e| format!("part {index}: {e}"))?,
            _ => return Ok(false),
        }
        if index == 0 {
            building.reserve_jtis(usize::try_from(jtis).unwrap_or(usize::MAX));
        }
    }
    control.revocation.borrow_mut().replace_set(building);
    log_loaded(host, control, "loaded from the shared snapshot");
    Ok(true)
}

/// Bytes of this VM's linear memory (what V8 holds for it; it never shrinks), `None` natively.
pub fn vm_memory_bytes() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        Some(core::arch::wasm32::memory_size::<0>() as u64 * 65_536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}

/// Logs, at info, the size of a state just loaded in full: entries, table bytes and the VM's memory.
fn log_loaded(host: &dyn Host, control: &Control, how: &str) {
    let (entries, table) = {
        let revocation = control.revocation.borrow();
        (revocation.set().len(), revocation.set().memory_bytes())
    };
    let vm = vm_memory_bytes().map_or(String::new(), |b| {
        format!(", VM memory {:.1} MB", b as f64 / 1e6)
    });
    host.log(
        LogLevel::Info,
        &format!(
            "edgewarden: revocation state {how}: {entries} entries, table {:.1} MB{vm}",
            table as f64 / 1e6
        ),
    );
}

/// The one-tick step of a VM: hold or take the lease, then poll (poller) or catch up (follower), prune, and
/// publish the gauges (poller).
pub fn on_tick(host: &mut dyn Host, control: &Control, now_ms: u64) {
    let was = control.sync.borrow().role;
    let poller = hold_lease(host, control, now_ms);
    if !poller || was == Role::Follower {
        // A new poller first catches up with what the previous one published.
        follow(host, control);
    }
    if poller {
        if was == Role::Follower {
            take_over(host, control);
        }
        let due = {
            let sync = control.sync.borrow();
            sync.inflight.is_none() && now_ms >= sync.next_poll_ms
        };
        if due {
            start_poll(host, control, now_ms);
        }
        publish_gauges(host, control, now_ms);
    }
    control.revocation.borrow_mut().prune_if_due(now_ms / 1000);
}

/// Starts polling where the previous poller left off: whatever this VM's copy holds is republished as a new
/// snapshot under a sequence number past every one published so far, so every VM converges on one state
/// even if this one had not quite caught up.
fn take_over(host: &mut dyn Host, control: &Control) {
    let (mark_key, edge) = {
        let sync = control.sync.borrow();
        (sync.keys.mark.clone(), sync.edge_name.clone())
    };
    let published = host
        .get_shared(&mark_key)
        .and_then(|(bytes, _)| SyncMark::from_bytes(&bytes).ok())
        .map_or(0, |mark| mark.seq);
    let seq = {
        let mut sync = control.sync.borrow_mut();
        // saturating: the published mark is shared data any VM may have written (a mark at u64::MAX overflowed).
        sync.seq = sync.seq.max(published).saturating_add(1);
        sync.listing = None;
        sync.snapshot = None;
        sync.seq
    };
    publish_snapshot(host, control, seq);
    publish_mark(host, control);
    host.log(
        LogLevel::Info,
        &format!("edgewarden: this VM now polls the revocation feed for edge {edge}"),
    );
}

/// Hands the lease back when this VM shuts down (Envoy tears VMs down on reconfiguration, and builds a
/// short-lived one while loading the configuration), so another VM takes over on its next tick.
pub fn release(host: &mut dyn Host, control: &Control) {
    let (key, me) = {
        let sync = control.sync.borrow();
        (sync.keys.lease.clone(), sync.vm_id)
    };
    if let Some((value, cas)) = host.get_shared(&key) {
        if decode_lease(&value).is_some_and(|(owner, _)| owner == me) {
            host.set_shared_if(&key, &encode_lease(0, 0), cas);
        }
    }
    wake::unregister(host, control);
    control.sync.borrow_mut().role = Role::Follower;
}

/// Renews or takes the poller lease; true if this VM holds it after the call.
fn hold_lease(host: &mut dyn Host, control: &Control, now_ms: u64) -> bool {
    let (key, me) = {
        let sync = control.sync.borrow();
        (sync.keys.lease.clone(), sync.vm_id)
    };
    // Envoy's compare-and-swap does not guard a key that does not exist yet, so the first VM creates an expired
    // lease and every VM then competes for it through compare-and-swap.
    let current = match host.get_shared(&key) {
        Some(current) => Some(current),
        None => {
            host.set_shared(&key, &encode_lease(0, 0));
            host.get_shared(&key)
        }
    };
    let held = match current {
        None => false,
        Some((value, cas)) => match decode_lease(&value) {
            Some((owner, expires)) if owner != me && expires > now_ms => false,
            _ => host.set_shared_if(&key, &encode_lease(me, now_ms + LEASE_MS), cas),
        },
    };
    control.sync.borrow_mut().role = if held { Role::Poller } else { Role::Follower };
    held
}

/// Copies what the poller published into this VM's state; a VM that cannot catch up keeps its state, and the
/// age of its last sync keeps growing, so staleness fails it closed if it never does.
fn follow(host: &mut dyn Host, control: &Control) {
    let (mark_key, seen) = {
        let sync = control.sync.borrow();
        (sync.keys.mark.clone(), sync.mark_cas)
    };
    let Some((bytes, cas)) = host.get_shared(&mark_key) else {
        return;
    };
    if seen == Some(cas) {
        return;
    }
    let mark = match SyncMark::from_bytes(&bytes) {
        Ok(mark) => mark,
        Err(e) => {
            host.log(
                LogLevel::Warn,
                &format!("edgewarden: shared revocation mark unusable: {e}"),
            );
            return;
        }
    };
    if catch_up(host, control, &mark) {
        control
            .revocation
            .borrow_mut()
            .set_last_sync(mark.last_sync);
        control.sync.borrow_mut().mark_cas = Some(cas);
    }
}

/// Brings this VM's state to the mark's sequence number: deltas from the ring when it is close enough, else the
/// snapshot and the deltas after it. False if something needed was missing or refused (retried next tick).
fn catch_up(host: &mut dyn Host, control: &Control, mark: &SyncMark) -> bool {
    let seq = control.sync.borrow().seq;
    if seq == mark.seq {
        return true;
    }
    if mark.seq > seq && mark.seq - seq <= RING && apply_deltas(host, control, seq + 1, mark.seq) {
        return true;
    }
    match load_snapshot(host, control, mark.snapshot_seq) {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            host.log(
                LogLevel::Warn,
                &format!(
                    "edgewarden: shared revocation snapshot unusable, keeping the current state: {e}"
                ),
            );
            return false;
        }
    }
    control.sync.borrow_mut().seq = mark.snapshot_seq;
    mark.snapshot_seq == mark.seq
        || apply_deltas(host, control, mark.snapshot_seq.saturating_add(1), mark.seq)
}

/// Applies the deltas `from..=to` from the ring in order; stops at the first one missing or refused.
fn apply_deltas(host: &mut dyn Host, control: &Control, from: u64, to: u64) -> bool {
    for seq in from..=to {
        let key = control.sync.borrow().keys.delta(seq);
        let Some((bytes, _)) = host.get_shared(&key) else {
            return false;
        };
        let applied = match split_seq(&bytes) {
            Some((slot_seq, record)) if slot_seq == seq => control
                .revocation
                .borrow_mut()
                .set_mut()
                .apply_bytes(record)
                .is_ok(),
            _ => false,
        };
        if !applied {
            return false;
        }
        control.sync.borrow_mut().seq = seq;
    }
    true
}

/// Sends the next feed poll: `since` the state's cursor, long-polling once the state is in sync.
fn start_poll(host: &mut dyn Host, control: &Control, now_ms: u64) {
    let (cursor, synced) = {
        let revocation = control.revocation.borrow();
        (revocation.set().cursor(), revocation.last_sync().is_some())
    };
    let snapshot_page = {
        let sync = control.sync.borrow();
        // Never synced: a state loaded from the snapshot at cursor 0 (an empty store) counts as synced, so
        // the next poll goes to the feed rather than back to the snapshot.
        let cold = cursor == 0 && !synced && sync.listing.is_none();
        match (&sync.snapshot_path, &sync.snapshot) {
            (Some(path), Some(listing)) => {
                Some(format!("{path}?{}", listing.progress.next_query()))
            }
            (Some(path), None) if cold => Some(path.clone()),
            _ => None,
        }
    };
    if let Some(path) = snapshot_page {
        start_snapshot_page(host, control, now_ms, &path);
        return;
    }
    let (cluster, authority, authorization, edge, path, wait, timeout_ms, conditional) = {
        let sync = control.sync.borrow();
        let page = |since: u64| format!("{}?since={since}&limit={PAGE_ENTRIES}", sync.feed_path);
        let snapshot_timeout = sync.timeout_ms.max(sync.snapshot_timeout_ms);
        let (path, wait, timeout_ms, conditional) = match &sync.listing {
            // The next page of a listing: at once, never held, never conditional.
            Some(listing) => (
                format!(
                    "{}&after={}",
                    page(listing.since),
                    query_escape(&listing.next)
                ),
                0,
                snapshot_timeout,
                false,
            ),
            None => {
                // Before the first sync, and while the feed is failing, ask for an answer at once: a held
                // poll would keep the edge unsynced (or stale) for the whole wait.
                let wait = if synced && sync.failures == 0 {
                    sync.wait_seconds
                } else {
                    0
                };
                let path = if wait > 0 {
                    format!("{}&wait={wait}", page(cursor))
                } else {
                    page(cursor)
                };
                // A poll from cursor 0 brings the whole state, which takes the admin API a while to list.
                let timeout = if cursor == 0 {
                    snapshot_timeout
                } else {
                    sync.timeout_ms
                };
                (path, wait, timeout, synced)
            }
        };
        (
            sync.cluster.clone(),
            sync.authority.clone(),
            sync.authorization.clone(),
            sync.edge_name.clone(),
            path,
            wait,
            timeout_ms,
            conditional,
        )
    };
    let tag = format!("\"c{cursor}\"");
    let identity = report::poll_headers(host, control, now_ms);
    let mut headers = vec![
        (":method", "GET"),
        (":path", path.as_str()),
        (":authority", authority.as_str()),
        ("authorization", authorization.as_str()),
        ("x-edgewarden-edge", edge.as_str()),
        ("accept", "application/json"),
    ];
    headers.extend(identity.iter().map(|(k, v)| (*k, v.as_str())));
    if conditional {
        headers.push(("if-none-match", tag.as_str()));
    }
    let timeout = Duration::from_millis(timeout_ms.saturating_add(wait.saturating_mul(1000)));
    match host.dispatch(&cluster, &headers, None, timeout) {
        Ok(token) => {
            control.sync.borrow_mut().inflight = Some(Inflight {
                token,
                started_ms: now_ms,
                long_poll: wait > 0,
                snapshot: false,
            });
        }
        Err(e) => failed(
            host,
            control,
            now_ms,
            &format!("not dispatched ({e}): is cluster `{cluster}` defined in Envoy?"),
        ),
    }
}

/// Asks for one page of the edge snapshot (`path` carries the query of the page after the last one loaded).
fn start_snapshot_page(host: &mut dyn Host, control: &Control, now_ms: u64, path: &str) {
    let (cluster, authority, authorization, edge, timeout_ms) = {
        let sync = control.sync.borrow();
        (
            sync.cluster.clone(),
            sync.authority.clone(),
            sync.authorization.clone(),
            sync.edge_name.clone(),
            sync.timeout_ms.max(sync.snapshot_timeout_ms),
        )
    };
    let identity = report::poll_headers(host, control, now_ms);
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", authority.as_str()),
        ("authorization", authorization.as_str()),
        ("x-edgewarden-edge", edge.as_str()),
        ("accept", SNAPSHOT_CONTENT_TYPE),
    ];
    headers.extend(identity.iter().map(|(k, v)| (*k, v.as_str())));
    match host.dispatch(&cluster, &headers, None, Duration::from_millis(timeout_ms)) {
        Ok(token) => {
            control.sync.borrow_mut().inflight = Some(Inflight {
                token,
                started_ms: now_ms,
                long_poll: false,
                snapshot: true,
            });
        }
        Err(e) => failed(
            host,
            control,
            now_ms,
            &format!("not dispatched ({e}): is cluster `{cluster}` defined in Envoy?"),
        ),
    }
}

/// Applies one verified page of the edge snapshot as the poller: the first starts a state sized for the
/// whole snapshot aside, each next one must follow the last (same snapshot, next page), and the last swaps
/// the state in and publishes it. Anything refused leaves the current state (and its age) as it was.
fn apply_snapshot_page(
    host: &mut dyn Host,
    control: &Control,
    body: &[u8],
    now: u64,
) -> Result<bool, String> {
    let page = SnapshotPage::parse(body).map_err(|e| format!("snapshot page refused: {e}"))?;
    let listing = control.sync.borrow_mut().snapshot.take();
    let mut building = match listing {
        Some(listing) => {
            page.check_follows(&listing.progress)
                .map_err(|e| format!("snapshot page refused: {e}"))?;
            listing.building
        }
        None if page.page == 0 => page.new_set(),
        None => {
            return Err(format!(
                "snapshot page refused: page {} answered where page 0 was asked",
                page.page
            ))
        }
    };
    page.apply_to(&mut building);
    if !page.is_last() {
        control.sync.borrow_mut().snapshot = Some(SnapshotListing {
            progress: page.progress(),
            building,
        });
        return Ok(true);
    }
    {
        let mut revocation = control.revocation.borrow_mut();
        revocation.replace_set(building);
        revocation.record_sync(now);
        revocation.prune_if_due(now);
    }
    log_loaded(host, control, "replaced by the edge snapshot");
    publish_change(host, control, None, true);
    Ok(true)
}

/// Percent-encodes everything but RFC 3986's unreserved characters (continuations are base64url already;
/// this keeps a future format from breaking the query string).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Handles the answer to this VM's poll; false if `token` was not a poll of ours.
pub fn on_poll_response(
    host: &mut dyn Host,
    control: &Control,
    token: u32,
    resp: &CallResponse,
    now_ms: u64,
) -> bool {
    let inflight = {
        let mut sync = control.sync.borrow_mut();
        if !sync.owns(token) {
            return false;
        }
        sync.inflight.take()
    };
    let Some(inflight) = inflight else {
        return false;
    };
    if control.sync.borrow().role != Role::Poller {
        // The lease moved while this poll was out; the new poller publishes from now on.
        return true;
    }
    if resp.status == Some(200) && !hold_lease(host, control, now_ms) {
        // Renewed first, so parsing a large snapshot cannot let the lease lapse under us; lost meanwhile:
        // the new poller publishes from now on.
        return true;
    }
    let now = now_ms / 1000;
    if inflight.snapshot && matches!(resp.status, Some(404 | 405)) {
        // An admin API from before the edge snapshot: the JSON feed's listing from now on.
        let path = {
            let mut sync = control.sync.borrow_mut();
            sync.snapshot = None;
            sync.next_poll_ms = now_ms;
            sync.snapshot_path.take()
        };
        host.log(
            LogLevel::Info,
            &format!(
                "edgewarden: the admin API has no edge snapshot at {}; syncing through the JSON feed",
                path.unwrap_or_default()
            ),
        );
        start_poll(host, control, now_ms);
        publish_gauges(host, control, now_ms);
        return true;
    }
    let outcome = match (resp.status, &resp.body) {
        (None, _) => Err("no response (timeout, reset or no healthy upstream)".to_string()),
        (Some(200), Some(body)) if inflight.snapshot => {
            apply_snapshot_page(host, control, body, now)
        }
        (Some(304), _) => {
            control.revocation.borrow_mut().record_sync(now);
            Ok(false)
        }
        (Some(200), Some(body)) => match FeedUpdate::from_json(body) {
            Ok(update) => Ok(apply_and_publish(host, control, update, now)),
            Err(e) => Err(e.to_string()),
        },
        (Some(200), None) if resp.body_size > MAX_FEED_BYTES => Err(format!(
            "answer is {} bytes, limit {MAX_FEED_BYTES}",
            resp.body_size
        )),
        (Some(200), None) => Err("empty answer".to_string()),
        (Some(s @ (401 | 403)), _) => Err(format!(
            "status {s}: the admin API refused control_plane.api_key (it must be an edge key)"
        )),
        (Some(s), _) => Err(format!("status {s}")),
    };
    match outcome {
        Ok(changed) => {
            host.count(Stat::RevocationPoll);
            if changed {
                host.count(Stat::RevocationUpdate);
            }
            let recovered = {
                let mut sync = control.sync.borrow_mut();
                let failures = std::mem::take(&mut sync.failures);
                sync.last_failure_log_ms = None;
                let elapsed = now_ms.saturating_sub(inflight.started_ms);
                // A change or a held poll that ran its course: ask again at once (the admin API holds the
                // next one). An answer that came back at once with nothing new: keep to the poll interval.
                sync.next_poll_ms =
                    if changed || (inflight.long_poll && elapsed >= sync.poll_interval_ms) {
                        now_ms
                    } else {
                        inflight.started_ms.saturating_add(sync.poll_interval_ms)
                    };
                failures
            };
            if recovered > 0 {
                host.log(
                    LogLevel::Info,
                    &format!("edgewarden: revocation feed reachable again after {recovered} failed polls"),
                );
            }
            publish_mark(host, control);
            if control.sync.borrow().next_poll_ms <= now_ms {
                start_poll(host, control, now_ms);
            }
        }
        Err(e) => failed(host, control, now_ms, &e),
    }
    publish_gauges(host, control, now_ms);
    true
}

/// Applies a parsed feed answer (or page) as the poller and publishes the change; true if something changed
/// or another page is due (either way the next poll goes out at once).
fn apply_and_publish(
    host: &mut dyn Host,
    control: &Control,
    mut update: FeedUpdate,
    now: u64,
) -> bool {
    let base = control.revocation.borrow().set().cursor();
    let listing = control.sync.borrow_mut().listing.take();
    let more = update.next.take();
    let paged = listing.is_some() || more.is_some();
    if !paged {
        control.revocation.borrow_mut().sync(&update, now);
        if update.is_empty_delta() {
            return false;
        }
        publish_change(
            host,
            control,
            (!update.full).then_some((&update, base)),
            update.full,
        );
        return true;
    }
    let full = update.full;
    let since = listing.as_ref().map_or(base, |l| l.since);
    // Pages are merged, never applied as snapshots of their own.
    update.full = false;
    if full {
        let mut building = match listing.and_then(|l| l.building) {
            Some(building) => building,
            None => {
                let total = update.total.unwrap_or_default();
                let size = |n: u64| usize::try_from(n).unwrap_or(0);
                RevocationSet::with_capacity(
                    size(total.jtis),
                    size(total.subjects),
                    size(total.clients),
                )
            }
        };
        building.apply(&update);
        match more {
            Some(next) => {
                control.sync.borrow_mut().listing = Some(Listing {
                    since,
                    next,
                    building: Some(building),
                });
            }
            None => {
                {
                    let mut revocation = control.revocation.borrow_mut();
                    revocation.replace_set(building);
                    revocation.record_sync(now);
                    revocation.prune_if_due(now);
                }
                log_loaded(host, control, "replaced by a paged snapshot");
                publish_change(host, control, None, true);
            }
        }
        return true;
    }
    match more {
        Some(next) => {
            // Not the last page: merge at the old cursor, so a failure here resumes from it.
            update.cursor = base;
            control.revocation.borrow_mut().set_mut().apply(&update);
            control.sync.borrow_mut().listing = Some(Listing {
                since,
                next,
                building: None,
            });
            if !update.is_empty_delta() {
                publish_change(host, control, Some((&update, base)), false);
            }
        }
        None => {
            control.revocation.borrow_mut().sync(&update, now);
            publish_change(host, control, Some((&update, base)), false);
        }
    }
    true
}

/// Publishes one change for the followers: the delta (from `base`) in its ring slot, and the whole state as
/// a snapshot after a full answer or every [`SNAPSHOT_EVERY`] changes.
fn publish_change(
    host: &mut dyn Host,
    control: &Control,
    delta: Option<(&FeedUpdate, u64)>,
    full: bool,
) {
    let (seq, snapshot, keys) = {
        let mut sync = control.sync.borrow_mut();
        sync.seq += 1;
        let snapshot = full || sync.seq - sync.snapshot_seq >= SNAPSHOT_EVERY;
        (sync.seq, snapshot, sync.keys.clone())
    };
    if let Some((update, base)) = delta {
        host.set_shared(&keys.delta(seq), &with_seq(seq, &update.to_bytes(base)));
    }
    if snapshot {
        publish_snapshot(host, control, seq);
    }
}

/// Publishes the mark every follower reads: cursor, last sync, and the sequence numbers of state and snapshot.
fn publish_mark(host: &mut dyn Host, control: &Control) {
    let (cursor, last_sync) = {
        let revocation = control.revocation.borrow();
        (revocation.set().cursor(), revocation.last_sync())
    };
    let (key, seq, snapshot_seq) = {
        let sync = control.sync.borrow();
        (sync.keys.mark.clone(), sync.seq, sync.snapshot_seq)
    };
    let mark = SyncMark {
        cursor,
        last_sync,
        seq,
        snapshot_seq,
    };
    host.set_shared(&key, &mark.to_bytes());
}

/// Counts a failed poll, backs off, and logs (at most every [`FAILURE_LOG_INTERVAL_MS`]) what failed and how
/// old the state the edge keeps enforcing is.
fn failed(host: &mut dyn Host, control: &Control, now_ms: u64, problem: &str) {
    host.count(Stat::RevocationPollFailure);
    let (log, failures, cluster, path) = {
        let mut sync = control.sync.borrow_mut();
        // A listing cut short starts over (a full one was being assembled aside; a delta one resumes from
        // the cursor it kept); so does a snapshot.
        sync.listing = None;
        sync.snapshot = None;
        sync.failures = sync.failures.saturating_add(1);
        let shift = sync.failures.saturating_sub(1).min(16);
        let backoff = sync
            .poll_interval_ms
            .saturating_mul(1 << shift)
            .min(MAX_BACKOFF_MS.max(sync.poll_interval_ms));
        sync.next_poll_ms = now_ms.saturating_add(backoff);
        let log = sync
            .last_failure_log_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= FAILURE_LOG_INTERVAL_MS);
        if log {
            sync.last_failure_log_ms = Some(now_ms);
        }
        (
            log,
            sync.failures,
            sync.cluster.clone(),
            sync.feed_path.clone(),
        )
    };
    if log {
        let age = match control.revocation.borrow().staleness(now_ms / 1000) {
            Some(age) => format!("state is {age}s old"),
            None => "never synced".to_string(),
        };
        host.log(
            LogLevel::Warn,
            &format!(
                "edgewarden: revocation feed poll via cluster {cluster} ({path}) failed ({failures} in a row): {problem}; enforcing the last state ({age})"
            ),
        );
    }
}

/// The poller's gauges: cursor, staleness (seconds since start-up until the first sync) and entries held.
fn publish_gauges(host: &mut dyn Host, control: &Control, now_ms: u64) {
    let (cursor, staleness, entries) = {
        let revocation = control.revocation.borrow();
        let started = control.sync.borrow().started_ms;
        (
            revocation.set().cursor(),
            revocation
                .staleness(now_ms / 1000)
                .unwrap_or(now_ms.saturating_sub(started) / 1000),
            revocation.set().len() as u64,
        )
    };
    host.gauge(Gauge::RevocationCursor, cursor);
    host.gauge(Gauge::RevocationStaleness, staleness);
    host.gauge(Gauge::RevocationEntries, entries);
}

#[cfg(test)]
mod tests;
