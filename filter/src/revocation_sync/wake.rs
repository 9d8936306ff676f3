//! Waking the followers: after the poller publishes a change it enqueues a wake-up on every other VM's own
//! proxy-wasm shared queue, and each follower catches up in `on_queue_ready` on its own worker thread instead
//! of waiting for its next tick. Every VM registers a queue named after its id on its first tick (never in
//! `on_configure`: Envoy's base VM is configured but never ticks, and must not be woken) and lists itself in
//! a small registry in shared data; the tick stays as the fallback for a wake that is lost.

use proxy_wasm::hostcalls;

use super::{follow, Role};
use crate::host::Host;
use crate::metrics::Stat;
use crate::state::Control;

/// How long a registry entry lasts without renewal; a VM renews its own when less than half is left, so a
/// VM that vanished without handing its entry back is woken for at most this long.
pub const ENTRY_MS: u64 = 30_000;
/// Most VMs one registry lists (Envoy's workers of one plugin; far more than any machine runs).
pub const MAX_ENTRIES: usize = 1024;
/// Wake-ups a follower drains from its queue at once: it only needs to know that it was woken.
const MAX_DRAIN: usize = 64;

/// The host's shared queues, behind a trait so the wake logic is unit-tested natively (the SDK's calls
/// exist only inside a VM). Every failure is a `None` or `false`: a lost wake-up only leaves the tick.
pub trait Queues {
    /// Registers this VM's queue `name` (its root context gets `on_queue_ready`); its id.
    fn register(&mut self, name: &str) -> Option<u32>;
    /// The id of queue `name` of this plugin's VM id, if some VM registered it.
    fn resolve(&mut self, name: &str) -> Option<u32>;
    /// Adds `value` to queue `queue`; false if the queue is gone.
    fn enqueue(&mut self, queue: u32, value: &[u8]) -> bool;
    /// Takes the oldest value of queue `queue`, if any.
    fn dequeue(&mut self, queue: u32) -> Option<Vec<u8>>;
}

/// [`Queues`] over `proxy_wasm::hostcalls`. Envoy answers these calls only with the statuses the SDK
/// handles (register: Ok; resolve: Ok or NotFound; enqueue: Ok or NotFound; dequeue: Ok, Empty or NotFound).
pub struct ProxyQueues;

impl Queues for ProxyQueues {
    fn register(&mut self, name: &str) -> Option<u32> {
        hostcalls::register_shared_queue(name).ok()
    }

    fn resolve(&mut self, name: &str) -> Option<u32> {
        // An empty VM id resolves within this plugin's own VM id.
        hostcalls::resolve_shared_queue("", name).ok().flatten()
    }

    fn enqueue(&mut self, queue: u32, value: &[u8]) -> bool {
        hostcalls::enqueue_shared_queue(queue, Some(value)).is_ok()
    }

    fn dequeue(&mut self, queue: u32) -> Option<Vec<u8>> {
        hostcalls::dequeue_shared_queue(queue).ok().flatten()
    }
}

/// Decodes the registry: records of (VM id, expiry in Unix ms), 16 bytes each, little-endian. A value of
/// another length is unusable and read as empty (every VM re-lists itself on its next tick).
pub fn decode_registry(bytes: &[u8]) -> Vec<(u64, u64)> {
    if bytes.len() % 16 != 0 || bytes.len() / 16 > MAX_ENTRIES {
        return Vec::new();
    }
    bytes
        .chunks_exact(16)
        .filter_map(|c| {
            let id = u64::from_le_bytes(c.get(..8)?.try_into().ok()?);
            let expires = u64::from_le_bytes(c.get(8..)?.try_into().ok()?);
            Some((id, expires))
        })
        .collect()
}

/// Encodes the registry (see [`decode_registry`]).
pub fn encode_registry(entries: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 16);
    for (id, expires) in entries {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&expires.to_le_bytes());
    }
    out
}

/// On every tick: registers this VM's queue the first time, and lists it in the registry (again) when its
/// entry is missing or has less than half its time left. Cheap when nothing is due: one shared-data read.
pub fn keep_registered(
    host: &mut dyn Host,
    queues: &mut dyn Queues,
    control: &Control,
    now_ms: u64,
) {
    let (registered, name, key, me) = {
        let sync = control.sync.borrow();
        (
            sync.wake_queue.is_some(),
            sync.keys.wake(sync.vm_id),
            sync.keys.wakers.clone(),
            sync.vm_id,
        )
    };
    if !registered {
        match queues.register(&name) {
            Some(queue) => control.sync.borrow_mut().wake_queue = Some(queue),
            None => return,
        }
    }
    let current = host.get_shared(&key);
    let mut entries = current
        .as_ref()
        .map_or_else(Vec::new, |(bytes, _)| decode_registry(bytes));
    let fresh = entries
        .iter()
        .any(|&(id, expires)| id == me && expires.saturating_sub(now_ms) > ENTRY_MS / 2);
    if fresh {
        return;
    }
    // Registering again is idempotent (same id, queued wake-ups kept) and brings back a queue the host dropped:
    // proxy-wasm forgets every queue of a VM id when the last VM of that id goes, however briefly.
    if registered {
        match queues.register(&name) {
            Some(queue) => control.sync.borrow_mut().wake_queue = Some(queue),
            None => return,
        }
    }
    entries.retain(|&(id, expires)| id != me && expires > now_ms);
    if entries.len() >= MAX_ENTRIES {
        // Keep the entries renewed last; the ones about to lapse belong to VMs most likely gone.
        entries.sort_by_key(|&(_, expires)| std::cmp::Reverse(expires));
        entries.truncate(MAX_ENTRIES - 1);
    }
    entries.push((me, now_ms.saturating_add(ENTRY_MS)));
    let value = encode_registry(&entries);
    // A compare-and-swap lost to another VM listing itself at the same moment is retried on the next tick.
    match current {
        Some((_, cas)) => {
            host.set_shared_if(&key, &value, cas);
        }
        None => host.set_shared(&key, &value),
    }
}

/// Takes this VM out of the registry as it shuts down, so the poller stops waking a queue nobody reads.
pub fn unregister(host: &mut dyn Host, control: &Control) {
    let (key, me) = {
        let sync = control.sync.borrow();
        (sync.keys.wakers.clone(), sync.vm_id)
    };
    if let Some((bytes, cas)) = host.get_shared(&key) {
        let mut entries = decode_registry(&bytes);
        let before = entries.len();
        entries.retain(|&(id, _)| id != me);
        if entries.len() != before {
            host.set_shared_if(&key, &encode_registry(&entries), cas);
        }
    }
}

/// After the poller published: one wake-up (the sequence number just published) on the queue of every
/// other VM listed and not lapsed, once per published change. Nothing for a follower, or when nothing new
/// was published since the last wake.
pub fn wake_followers(
    host: &mut dyn Host,
    queues: &mut dyn Queues,
    control: &Control,
    now_ms: u64,
) {
    let (key, me, seq) = {
        let sync = control.sync.borrow();
        if sync.role != Role::Poller || sync.seq == sync.woken_seq {
            return;
        }
        (sync.keys.wakers.clone(), sync.vm_id, sync.seq)
    };
    control.sync.borrow_mut().woken_seq = seq;
    let Some((bytes, _)) = host.get_shared(&key) else {
        return;
    };
    let message = seq.to_le_bytes();
    for (id, expires) in decode_registry(&bytes) {
        if id == me || expires <= now_ms {
            continue;
        }
        let name = control.sync.borrow().keys.wake(id);
        let sent = queues
            .resolve(&name)
            .is_some_and(|queue| queues.enqueue(queue, &message));
        host.count(if sent {
            Stat::RevocationWakeSent
        } else {
            Stat::RevocationWakeLost
        });
    }
}

/// `on_queue_ready` of this VM's root context: drains the wake-ups and, as a follower, catches up with the
/// published mark at once. False if `queue` is not this VM's wake queue.
pub fn on_queue_ready(
    host: &mut dyn Host,
    queues: &mut dyn Queues,
    control: &Control,
    queue: u32,
) -> bool {
    if control.sync.borrow().wake_queue != Some(queue) {
        return false;
    }
    for _ in 0..MAX_DRAIN {
        if queues.dequeue(queue).is_none() {
            break;
        }
    }
    if control.sync.borrow().role == Role::Follower {
        host.count(Stat::RevocationWakeReceived);
        follow(host, control);
    }
    true
}
