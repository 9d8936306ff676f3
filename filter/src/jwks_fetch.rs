//! Remote JWKS: when to fetch, who waits for a fetch, and how a fetched key set is installed and shared.
//! Fetches go through an Envoy cluster with `dispatch_http_call`: periodically from the root context, and at once
//! from a request whose token names an unknown `kid` (rate-limited per issuer), so a key rotation fails no request.
//! Requests that meet an unknown `kid` while a fetch for that issuer is in flight wait for it instead of failing.
//! A key set fetched by one worker VM is published through proxy-wasm shared data; the others pick it up on their next tick.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use proxy_wasm::types::LogLevel;

use crate::host::{CallResponse, Host};
use crate::metrics::Stat;
use crate::state::VmState;

/// Largest JWKS response body the filter reads; larger bodies count as a failed fetch.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One issuer's remote key source, copied from `issuers[i].remote_jwks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    /// Index of the issuer in `issuers`.
    pub issuer_index: usize,
    /// The issuer's `iss`, for logs and the shared-data key.
    pub issuer: String,
    /// Envoy cluster that serves the JWKS.
    pub cluster: String,
    /// `:authority` of the request.
    pub authority: String,
    /// `:path` of the request.
    pub path: String,
    /// Periodic refresh interval.
    pub refresh_interval_seconds: u64,
    /// Timeout of one fetch.
    pub timeout: Duration,
    /// Minimum time between two fetches started by unknown `kid`s (and between retries after a failure).
    pub min_refetch_interval_seconds: u64,
}

impl RemoteSource {
    /// The shared-data key other worker VMs read this key set from (issuer, cluster and path make it unambiguous).
    pub fn shared_key(&self) -> String {
        format!(
            "edgewarden.jwks|{}|{}|{}",
            self.issuer, self.cluster, self.path
        )
    }
}

#[derive(Debug)]
struct SourceState {
    remote: RemoteSource,
    last_attempt: Option<u64>,
    last_refetch: Option<u64>,
    last_refused: Option<u64>,
    last_success: Option<u64>,
    installed_hash: Option<u64>,
    shared_cas: Option<u32>,
    inflight: Option<Inflight>,
    waiters: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    token: u32,
    owner: u32,
}

/// Why a fetch starts: the unknown-`kid` rate limit counts only the fetches requests started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Start-up, periodic refresh, retry after a failure, or waiters left by a request that went away.
    Schedule,
    /// A token named a `kid` the key set does not have.
    UnknownKid,
}

/// What a request with an unknown `kid` may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Start a fetch now.
    Dispatch,
    /// A fetch is already in flight: pause and wait for it.
    Wait,
    /// A fetch ran too recently (`min_refetch_interval_seconds`): deny with `unknown_kid`.
    RateLimited,
    /// The issuer has no `remote_jwks`: nothing to fetch.
    NotRemote,
}

/// Fetch bookkeeping for every issuer with `remote_jwks`.
#[derive(Debug, Default)]
pub struct JwksState {
    sources: Vec<SourceState>,
}

impl JwksState {
    /// Bookkeeping for the given remote sources, none fetched yet.
    pub fn new(sources: Vec<RemoteSource>) -> JwksState {
        JwksState {
            sources: sources
                .into_iter()
                .map(|remote| SourceState {
                    remote,
                    last_attempt: None,
                    last_refetch: None,
                    last_refused: None,
                    last_success: None,
                    installed_hash: None,
                    shared_cas: None,
                    inflight: None,
                    waiters: Vec::new(),
                })
                .collect(),
        }
    }

    fn source(&self, issuer: usize) -> Option<&SourceState> {
        self.sources
            .iter()
            .find(|s| s.remote.issuer_index == issuer)
    }

    fn source_mut(&mut self, issuer: usize) -> Option<&mut SourceState> {
        self.sources
            .iter_mut()
            .find(|s| s.remote.issuer_index == issuer)
    }

    /// The remote source of an issuer, if it has one.
    pub fn remote(&self, issuer: usize) -> Option<RemoteSource> {
        self.source(issuer).map(|s| s.remote.clone())
    }

    /// Issuer indices with a remote source.
    pub fn issuers(&self) -> Vec<usize> {
        self.sources.iter().map(|s| s.remote.issuer_index).collect()
    }

    /// Whether a request whose token names an unknown `kid` of `issuer` may trigger a fetch at `now`.
    pub fn refetch_permit(&self, issuer: usize, now: u64) -> Permit {
        let Some(s) = self.source(issuer) else {
            return Permit::NotRemote;
        };
        if s.inflight.is_some() {
            return Permit::Wait;
        }
        // Only refetches started by unknown `kid`s count: a periodic fetch a second ago may predate the rotation.
        match s.last_refetch {
            Some(t) if now.saturating_sub(t) < s.remote.min_refetch_interval_seconds => {
                Permit::RateLimited
            }
            _ => Permit::Dispatch,
        }
    }

    /// Issuers whose periodic fetch is due at `now`: never fetched, refresh interval elapsed, a failed fetch
    /// ready for retry, or requests left waiting by a fetch whose owner went away.
    /// A dispatch the host refused (unknown cluster) is retried after `min_refetch_interval_seconds` too.
    pub fn due(&self, now: u64) -> Vec<usize> {
        self.sources
            .iter()
            .filter(|s| s.inflight.is_none())
            .filter(|s| {
                let min = s.remote.min_refetch_interval_seconds;
                let retry_ok = s.last_attempt.is_none_or(|t| now.saturating_sub(t) >= min)
                    && s.last_refused.is_none_or(|t| now.saturating_sub(t) >= min);
                let stale = s
                    .last_success
                    .is_none_or(|t| now.saturating_sub(t) >= s.remote.refresh_interval_seconds);
                !s.waiters.is_empty() || (stale && retry_ok)
            })
            .map(|s| s.remote.issuer_index)
            .collect()
    }

    /// Records a dispatched fetch owned by context `owner`.
    pub fn started(&mut self, issuer: usize, token: u32, owner: u32, trigger: Trigger, now: u64) {
        if let Some(s) = self.source_mut(issuer) {
            s.inflight = Some(Inflight { token, owner });
            s.last_attempt = Some(now);
            if trigger == Trigger::UnknownKid {
                s.last_refetch = Some(now);
            }
        }
    }

    /// Records a dispatch the host refused; only the periodic schedule backs off, requests may still try.
    pub fn refused(&mut self, issuer: usize, now: u64) {
        if let Some(s) = self.source_mut(issuer) {
            s.last_refused = Some(now);
        }
    }

    /// The issuer a callout token belongs to.
    pub fn issuer_of_token(&self, token: u32) -> Option<usize> {
        self.sources
            .iter()
            .find(|s| s.inflight.is_some_and(|f| f.token == token))
            .map(|s| s.remote.issuer_index)
    }

    /// Ends the in-flight fetch of `issuer` and hands back the contexts that waited for it.
    pub fn finished(&mut self, issuer: usize) -> Vec<u32> {
        match self.source_mut(issuer) {
            Some(s) => {
                s.inflight = None;
                std::mem::take(&mut s.waiters)
            }
            None => Vec::new(),
        }
    }

    /// Parks context `ctx` until the in-flight fetch of `issuer` completes.
    pub fn add_waiter(&mut self, issuer: usize, ctx: u32) {
        if let Some(s) = self.source_mut(issuer) {
            if !s.waiters.contains(&ctx) {
                s.waiters.push(ctx);
            }
        }
    }

    /// Forgets context `ctx` as a waiter (its stream ended).
    pub fn remove_waiter(&mut self, ctx: u32) {
        for s in &mut self.sources {
            s.waiters.retain(|w| *w != ctx);
        }
    }

    /// The owner of a fetch went away (Envoy cancels its callout): drop the fetch so the next tick
    /// refetches from the root context on behalf of any waiters.
    pub fn orphan(&mut self, owner: u32) {
        for s in &mut self.sources {
            if s.inflight.is_some_and(|f| f.owner == owner) {
                s.inflight = None;
            }
        }
    }

    /// How many contexts wait on `issuer` (tests and logs).
    pub fn waiting(&self, issuer: usize) -> usize {
        self.source(issuer).map_or(0, |s| s.waiters.len())
    }

    fn record_success(&mut self, issuer: usize, now: u64, hash: u64) {
        if let Some(s) = self.source_mut(issuer) {
            s.last_success = Some(now);
            s.installed_hash = Some(hash);
        }
    }

    fn installed_hash(&self, issuer: usize) -> Option<u64> {
        self.source(issuer).and_then(|s| s.installed_hash)
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Starts a fetch of `issuer`'s key set owned by context `owner`. A dispatch the host refuses (unknown cluster,
/// no callout slot) is counted as a failure and returned as an error naming issuer and cluster; it is not an
/// attempt for rate limiting, because nothing went out.
pub fn start_fetch(
    host: &mut dyn Host,
    vm: &VmState,
    issuer: usize,
    owner: u32,
    trigger: Trigger,
    now: u64,
) -> Result<(), String> {
    let Some(remote) = vm.jwks.borrow().remote(issuer) else {
        return Err(format!("issuer index {issuer} has no remote_jwks"));
    };
    match host.dispatch_get(
        &remote.cluster,
        &remote.authority,
        &remote.path,
        remote.timeout,
    ) {
        Ok(token) => {
            vm.jwks
                .borrow_mut()
                .started(issuer, token, owner, trigger, now);
            Ok(())
        }
        Err(e) => {
            host.count(Stat::JwksFetchFailure);
            host.count(Stat::JwksFetchNotDispatched);
            vm.jwks.borrow_mut().refused(issuer, now);
            Err(format!(
                "edgewarden: jwks fetch for issuer {} not dispatched ({e}): is cluster `{}` defined in Envoy? \
                 Until a fetch succeeds, tokens of this issuer are refused with unknown_kid",
                remote.issuer, remote.cluster
            ))
        }
    }
}

/// Installs a key-set body for `issuer` unless it is byte-identical to the installed one (a periodic refresh
/// that changed nothing then costs no re-parse). Returns whether new keys were installed and how many.
/// The engine bumps its key generation on install, which invalidates every cached verification.
fn install(vm: &VmState, issuer: usize, body: &[u8], now: u64) -> Result<(bool, usize), String> {
    let hash = hash_bytes(body);
    if vm.jwks.borrow().installed_hash(issuer) == Some(hash) {
        vm.jwks.borrow_mut().record_success(issuer, now, hash);
        return Ok((false, 0));
    }
    let n = vm
        .engine
        .borrow_mut()
        .set_remote_jwks(issuer, body)
        .map_err(|e| e.to_string())?;
    vm.jwks.borrow_mut().record_success(issuer, now, hash);
    Ok((true, n))
}

/// Handles the response to a fetch this VM dispatched: installs good keys (keeping the old ones on any failure),
/// publishes them to other VMs, and returns the issuer and the contexts that waited on it.
/// `None` means the token belonged to no fetch of ours.
pub fn on_fetch_response(
    host: &mut dyn Host,
    vm: &VmState,
    token: u32,
    resp: &CallResponse,
    now: u64,
) -> Option<(usize, Vec<u32>)> {
    let issuer = vm.jwks.borrow().issuer_of_token(token)?;
    let waiters = vm.jwks.borrow_mut().finished(issuer);
    let remote = vm.jwks.borrow().remote(issuer)?;
    let what = format!(
        "jwks fetch for issuer {} from {}{}",
        remote.issuer, remote.cluster, remote.path
    );
    let result = match (resp.status, &resp.body) {
        (None, _) => Err("no response (timeout, reset or no healthy upstream)".to_string()),
        (Some(200), Some(body)) => install(vm, issuer, body, now).map(|r| (r, body)),
        (Some(200), None) if resp.body_size > MAX_JWKS_BYTES => Err(format!(
            "body is {} bytes, limit {MAX_JWKS_BYTES}",
            resp.body_size
        )),
        (Some(200), None) => Err("empty body".to_string()),
        (Some(s), _) => Err(format!("status {s}")),
    };
    match result {
        Ok(((installed, n), body)) => {
            host.count(Stat::JwksFetch);
            if installed {
                let skipped = vm
                    .engine
                    .borrow()
                    .remote_keys(issuer)
                    .map(|k| k.skipped().join("; "))
                    .unwrap_or_default();
                let skipped = if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" (left out: {skipped})")
                };
                host.log(
                    LogLevel::Info,
                    &format!("edgewarden: {what}: installed {n} keys{skipped}"),
                );
                host.set_shared(&remote.shared_key(), body);
            }
        }
        Err(e) => {
            host.count(Stat::JwksFetchFailure);
            host.log(
                LogLevel::Warn,
                &format!("edgewarden: {what} failed, keeping previous keys: {e}"),
            );
        }
    }
    Some((issuer, waiters))
}

/// Reads the HTTP call response being delivered (capped at [`MAX_JWKS_BYTES`]) and handles it as a key-set
/// fetch if `token` is one; the one prologue the root and the request contexts share.
pub fn on_call_response(
    host: &mut dyn Host,
    vm: &VmState,
    token: u32,
    num_headers: usize,
    body_size: usize,
) -> Option<(usize, Vec<u32>)> {
    vm.jwks.borrow().issuer_of_token(token)?;
    let resp = crate::host::http_call_response(num_headers, body_size, MAX_JWKS_BYTES);
    let now = host.now();
    on_fetch_response(host, vm, token, &resp, now)
}

/// Picks up a key set another worker VM published for `issuer`; true if new keys were installed.
pub fn sync_from_shared(host: &mut dyn Host, vm: &VmState, issuer: usize, now: u64) -> bool {
    let (key, seen) = {
        let jwks = vm.jwks.borrow();
        let Some(s) = jwks.source(issuer) else {
            return false;
        };
        (s.remote.shared_key(), s.shared_cas)
    };
    let Some((body, cas)) = host.get_shared(&key) else {
        return false;
    };
    if seen == Some(cas) {
        return false;
    }
    if let Some(s) = vm.jwks.borrow_mut().source_mut(issuer) {
        s.shared_cas = Some(cas);
    }
    match install(vm, issuer, &body, now) {
        Ok((true, n)) => {
            host.count(Stat::JwksShared);
            host.log(
                LogLevel::Debug,
                &format!(
                    "edgewarden: picked up {n} keys for issuer index {issuer} from another worker"
                ),
            );
            true
        }
        Ok((false, _)) => false,
        Err(e) => {
            host.log(
                LogLevel::Warn,
                &format!("edgewarden: shared key set for issuer index {issuer} unusable: {e}"),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(i: usize) -> RemoteSource {
        RemoteSource {
            issuer_index: i,
            issuer: format!("https://issuer{i}.example"),
            cluster: "jwks".into(),
            authority: "jwks".into(),
            path: "/jwks.json".into(),
            refresh_interval_seconds: 300,
            timeout: Duration::from_secs(5),
            min_refetch_interval_seconds: 10,
        }
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited_per_issuer() {
        let mut s = JwksState::new(vec![source(0), source(2)]);
        assert_eq!(s.refetch_permit(0, 1000), Permit::Dispatch);
        assert_eq!(s.refetch_permit(1, 1000), Permit::NotRemote);
        s.started(0, 7, 42, Trigger::UnknownKid, 1000);
        assert_eq!(s.refetch_permit(0, 1001), Permit::Wait);
        assert_eq!(s.issuer_of_token(7), Some(0));
        s.add_waiter(0, 43);
        s.add_waiter(0, 43);
        assert_eq!(s.finished(0), vec![43]);
        assert_eq!(s.refetch_permit(0, 1009), Permit::RateLimited);
        assert_eq!(s.refetch_permit(0, 1010), Permit::Dispatch);
        assert_eq!(s.refetch_permit(2, 1001), Permit::Dispatch);
    }

    #[test]
    fn periodic_fetch_is_due_at_start_after_refresh_interval_and_for_orphaned_waiters() {
        let mut s = JwksState::new(vec![source(0)]);
        assert_eq!(s.due(1000), vec![0]);
        s.started(0, 1, 1, Trigger::Schedule, 1000);
        assert!(s.due(1000).is_empty());
        s.finished(0);
        s.record_success(0, 1000, 5);
        assert!(s.due(1299).is_empty());
        assert_eq!(s.due(1300), vec![0]);
        // a fetch owned by a request that went away leaves its waiters to the root context
        s.started(0, 2, 9, Trigger::UnknownKid, 1300);
        s.add_waiter(0, 10);
        s.orphan(9);
        assert_eq!(s.due(1301), vec![0]);
        s.remove_waiter(10);
        assert_eq!(s.waiting(0), 0);
    }

    #[test]
    fn periodic_fetch_does_not_rate_limit_an_unknown_kid_refetch() {
        let mut s = JwksState::new(vec![source(0)]);
        s.started(0, 1, 1, Trigger::Schedule, 1000);
        s.finished(0);
        assert_eq!(s.refetch_permit(0, 1001), Permit::Dispatch);
    }

    #[test]
    fn refused_dispatch_backs_off_the_periodic_schedule_only() {
        let mut s = JwksState::new(vec![source(0)]);
        s.refused(0, 1000);
        assert!(s.due(1001).is_empty());
        assert_eq!(s.due(1010), vec![0]);
        assert_eq!(s.refetch_permit(0, 1001), Permit::Dispatch);
    }

    #[test]
    fn failed_first_fetch_is_retried_after_min_refetch_interval() {
        let mut s = JwksState::new(vec![source(0)]);
        s.started(0, 1, 1, Trigger::Schedule, 1000);
        s.finished(0);
        assert!(s.due(1005).is_empty());
        assert_eq!(s.due(1010), vec![0]);
    }
}
