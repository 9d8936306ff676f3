//! One credential check per credential, not per held request.
//!
//! A feed long-poll held open must end within a second of its key's deletion (issue 13). Each held
//! poll used to run its own timer and re-check every 500 ms: ten thousand edges long-polling meant
//! twenty thousand wake-ups a second, each polling the request's whole middleware stack, before
//! anything happened (the fleet bench, issue 12). Here held requests register their credential, and
//! one task re-checks each distinct credential every [`REVALIDATE_EVERY`] and wakes only the requests
//! whose credential stopped authenticating. The task runs while anything is registered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use tokio::sync::watch;

use crate::auth::{
    bearer, cookie, still_valid, Principal, Recheck, REVALIDATE_EVERY, SESSION_COOKIE,
};
use crate::secrets::sha256_hex;
use crate::AppState;

/// The credentials of held requests, by a digest of the secret they presented.
#[derive(Debug, Default)]
pub struct HeldCredentials {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    checking: bool,
}

#[derive(Debug)]
struct Entry {
    headers: HeaderMap,
    principal: Principal,
    recheck: Recheck,
    revoked: watch::Sender<bool>,
    holders: usize,
}

/// Keeps a request's registration; dropping it (the request ended) unregisters.
struct Hold {
    registry: Arc<HeldCredentials>,
    digest: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(entry) = inner.entries.get_mut(&self.digest) {
            entry.holders = entry.holders.saturating_sub(1);
            if entry.holders == 0 {
                inner.entries.remove(&self.digest);
            }
        }
    }
}

impl HeldCredentials {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests registered now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().entries.values().map(|e| e.holders).sum()
    }

    /// True when no request is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Completes once the credential of a held request no longer authenticates `principal` with the same
/// role; checked by the replica's one checking task every [`REVALIDATE_EVERY`].
pub async fn credential_revoked(
    state: AppState,
    headers: HeaderMap,
    principal: Principal,
    recheck: Recheck,
) {
    let presented = match bearer(&headers).ok().flatten() {
        Some(key) => key.to_owned(),
        None => cookie(&headers, SESSION_COOKIE)
            .unwrap_or_default()
            .to_owned(),
    };
    // The role and check are part of the key: the same secret can't change role, but be exact.
    let digest = sha256_hex(&format!("{presented}\n{:?}\n{recheck:?}", principal.role));
    let registry = state.held_credentials.clone();
    let (mut revoked, start) = {
        let mut inner = registry.lock();
        let rx = match inner.entries.get_mut(&digest) {
            Some(entry) => {
                entry.holders += 1;
                entry.revoked.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(false);
                inner.entries.insert(
                    digest.clone(),
                    Entry {
                        headers,
                        principal,
                        recheck,
                        revoked: tx,
                        holders: 1,
                    },
                );
                rx
            }
        };
        let start = !inner.checking;
        inner.checking = true;
        (rx, start)
    };
    let _hold = Hold {
        registry: registry.clone(),
        digest,
    };
    if start {
        tokio::spawn(check_loop(state));
    }
    // A closed channel means the entry was dropped after its credential failed: revoked as well.
    let _ = revoked.wait_for(|r| *r).await;
}

/// Re-checks every registered credential each [`REVALIDATE_EVERY`] until none is left.
async fn check_loop(state: AppState) {
    let registry = state.held_credentials.clone();
    let mut tick = tokio::time::interval(REVALIDATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let due: Vec<(String, HeaderMap, Principal, Recheck)> = {
            let mut inner = registry.lock();
            if inner.entries.is_empty() {
                inner.checking = false;
                return;
            }
            inner
                .entries
                .iter()
                .map(|(d, e)| (d.clone(), e.headers.clone(), e.principal.clone(), e.recheck))
                .collect()
        };
        for (digest, headers, principal, recheck) in due {
            match still_valid(&state, &headers, &principal, recheck).await {
                Ok(true) => {}
                Ok(false) => {
                    let mut inner = registry.lock();
                    if let Some(entry) = inner.entries.remove(&digest) {
                        entry.revoked.send_replace(true);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot re-check the credential of a held request")
                }
            }
        }
    }
}

/// How many woken long-polls are answered at once.
///
/// A revocation wakes every held poll together: with ten thousand edges that put ten thousand tasks in
/// the runtime's queues at once, and a fresh request (`/healthz`, a revocation, the dashboard) waited
/// behind all of them, close to a second in the fleet bench (issue 12). Woken polls now take a permit
/// before building their answer and hold it until the answer is built: the rest wait in the permit
/// queue (first come, first served), where they cost nothing, and the runtime's queues stay short, so
/// other requests are served between them. No wave is delayed on purpose; answers go out as fast as the
/// replica builds them.
#[derive(Debug)]
pub struct WakeGate {
    permits: tokio::sync::Semaphore,
}

/// Permits per runtime worker thread: enough to keep every worker busy, few enough that a fresh request
/// waits for a handful of answers, not for the whole wave.
const WAKE_PERMITS_PER_WORKER: usize = 8;

impl WakeGate {
    /// A gate sized for this process's runtime (never more permits than requests can be held).
    pub fn new(max_held: usize) -> WakeGate {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        WakeGate {
            permits: tokio::sync::Semaphore::new(
                (workers * WAKE_PERMITS_PER_WORKER).clamp(1, max_held.max(1)),
            ),
        }
    }

    /// Waits for a turn to answer a woken poll; the turn ends when the permit is dropped.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed, so this is always `Some`.
        self.permits.acquire().await.ok()
    }
}
