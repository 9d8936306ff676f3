//! A bounded cache of verified tokens so a repeated token skips parsing and signature verification.
//! Keyed by the token's [`fingerprint`](crate::token::fingerprint) with a full-text compare on hit; an entry
//! never outlives the token's `exp`; entries from an older key-set generation are dropped. Time claims,
//! revocation and rules are NOT cached: [`crate::Engine::evaluate`] runs them on every hit.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::Serialize;

use crate::token::VerifiedToken;

/// Whether a decision used the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// The verified token came from the cache.
    Hit,
    /// The token was verified and (if cacheable) inserted.
    Miss,
    /// No cache was used (none given, no token, or the token failed before the cache).
    Bypass,
}

/// The keys are already well-mixed 64-bit fingerprints, so hashing them again would only cost time.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `HashMap<u64, _>`; fold anything else in for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Entry {
    /// The token text, kept in memory only, to rule out fingerprint collisions.
    text: Box<str>,
    token: Arc<VerifiedToken>,
    /// Unix second at which the entry is dead: the token's `exp`, or `now + max_ttl` without one.
    expires_at: u64,
    /// Insertion sequence number, to tell live queue slots from stale ones.
    seq: u64,
}

/// A bounded cache of verified tokens; see the module docs for what it may and may not skip.
pub struct TokenCache {
    max_entries: usize,
    map: HashMap<u64, Entry, BuildHasherDefault<IdentityHasher>>,
    /// Insertion order `(fingerprint, seq)`, oldest first: the eviction queue.
    order: VecDeque<(u64, u64)>,
    seq: u64,
    /// Key-set generation the entries were verified under.
    generation: u64,
    /// Earliest second at which a full sweep of expired entries may run again.
    next_sweep: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Entries hold token text: never print them.
        f.debug_struct("TokenCache")
            .field("max_entries", &self.max_entries)
            .field("len", &self.map.len())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Counters of a [`TokenCache`], for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Lookups that returned a verified token.
    pub hits: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Live entries evicted because the cache was full.
    pub evictions: u64,
    /// Current number of entries.
    pub len: usize,
}

impl TokenCache {
    /// An empty cache holding at most `max_entries` tokens (0 disables caching).
    pub fn new(max_entries: usize) -> Self {
        TokenCache {
            max_entries,
            map: HashMap::with_capacity_and_hasher(
                max_entries.min(1024),
                BuildHasherDefault::default(),
            ),
            order: VecDeque::new(),
            seq: 0,
            generation: 0,
            next_sweep: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    /// Number of cached tokens (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache holds no token.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The configured bound.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// Drops every entry (counters are kept).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Hit, miss and eviction counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
            len: self.map.len(),
        }
    }

    /// Entries verified under another key-set generation must not be trusted: drop them all.
    fn sync_generation(&mut self, generation: u64) {
        if self.generation != generation {
            self.clear();
            self.generation = generation;
        }
    }

    /// The verified token for `text` if cached, live at `now`, and verified under `generation`.
    pub(crate) fn lookup(
        &mut self,
        text: &str,
        fingerprint: u64,
        generation: u64,
        now: u64,
    ) -> Option<Arc<VerifiedToken>> {
        self.sync_generation(generation);
        let found = match self.map.get(&fingerprint) {
            Some(entry) if entry.expires_at > now && same_text(&entry.text, text) => {
                Some(Arc::clone(&entry.token))
            }
            Some(entry) if entry.expires_at <= now => {
                self.map.remove(&fingerprint);
                None
            }
            _ => None,
        };
        if found.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        found
    }

    /// Caches a verified token until `expires_at` (exclusive). Does nothing if the cache is disabled or the entry is already dead.
    pub(crate) fn insert(
        &mut self,
        text: &str,
        token: Arc<VerifiedToken>,
        expires_at: u64,
        generation: u64,
        now: u64,
    ) {
        self.sync_generation(generation);
        if self.max_entries == 0 || expires_at <= now {
            return;
        }
        let fingerprint = token.fingerprint;
        if !self.map.contains_key(&fingerprint) {
            self.make_room(now);
        }
        self.seq = self.seq.wrapping_add(1);
        let entry = Entry {
            text: text.into(),
            token,
            expires_at,
            seq: self.seq,
        };
        self.map.insert(fingerprint, entry);
        self.order.push_back((fingerprint, self.seq));
        // Removed and replaced entries leave dead queue slots behind; compact before they dominate.
        if self.order.len() > self.max_entries.saturating_mul(2).max(16) {
            let map = &self.map;
            self.order
                .retain(|(fp, seq)| map.get(fp).is_some_and(|e| e.seq == *seq));
        }
    }

    fn make_room(&mut self, now: u64) {
        if self.map.len() < self.max_entries {
            return;
        }
        // Expired entries go first; a full sweep is O(n), so run it at most once per second.
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add(1);
            self.map.retain(|_, e| e.expires_at > now);
        }
        // Otherwise evict the oldest insertion: O(1) amortized over the queue.
        while self.map.len() >= self.max_entries {
            let Some((fp, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&fp).is_some_and(|e| e.seq == seq) {
                self.map.remove(&fp);
                self.evictions += 1;
            }
        }
    }
}

/// Whether two texts are equal, compared eight bytes at a time. `==` on `str` ends in `memcmp`, which in the
/// filter's WebAssembly is a byte-at-a-time loop: on a cache hit, comparing a token of a few hundred bytes that
/// way cost about 3,000 of EdgeWarden's instructions per request (`cargo xtask bench --suite instructions`).
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut wa, mut wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
    for (x, y) in (&mut wa).zip(&mut wb) {
        if word(x) != word(y) {
            return false;
        }
    }
    wa.remainder() == wb.remainder()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_compare_equal_only_when_every_byte_is() {
        let base = "eyJhbGciOiJFUzI1NiJ9.payload-of-some-length.signature-x";
        assert!(same_text(base, base));
        for i in 0..base.len() {
            // One byte different anywhere, in a whole word or in the remainder.
            let mut other = base.as_bytes().to_vec();
            other[i] ^= 1;
            assert!(
                !same_text(base, std::str::from_utf8(&other).unwrap()),
                "byte {i}"
            );
        }
        assert!(!same_text(base, &base[..base.len() - 1]));
        assert!(same_text("", ""));
        assert!(same_text("1234567", "1234567"));
        assert!(!same_text("12345678", "12345679"));
    }

    fn token(fp: u64, exp: Option<u64>) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            issuer_index: 0,
            iss: "i".into(),
            sub: None,
            aud: vec![],
            exp,
            nbf: None,
            iat: None,
            jti: None,
            client_id: None,
            scopes: vec![],
            roles: vec![],
            alg: "ES256".into(),
            kid: None,
            typ: None,
            claims: serde_json::Map::new(),
            fingerprint: fp,
            forwarded: Vec::new(),
        })
    }

    #[test]
    fn hit_requires_the_same_text_not_just_the_same_fingerprint() {
        let mut cache = TokenCache::new(4);
        cache.insert("token-a", token(42, Some(100)), 100, 1, 0);
        assert!(cache.lookup("token-a", 42, 1, 10).is_some());
        assert!(
            cache.lookup("token-b", 42, 1, 10).is_none(),
            "a colliding fingerprint must not hit"
        );
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 1,
                misses: 1,
                evictions: 0,
                len: 1
            }
        );
    }

    #[test]
    fn entries_die_at_their_expiry() {
        let mut cache = TokenCache::new(4);
        cache.insert("t", token(1, Some(50)), 50, 1, 0);
        assert!(cache.lookup("t", 1, 1, 49).is_some());
        assert!(cache.lookup("t", 1, 1, 50).is_none());
        assert!(cache.is_empty(), "an expired entry is dropped on lookup");
        cache.insert("t", token(1, Some(50)), 50, 1, 50);
        assert!(cache.is_empty(), "an already dead entry is not inserted");
    }

    #[test]
    fn generation_change_drops_everything() {
        let mut cache = TokenCache::new(4);
        cache.insert("t", token(1, None), 100, 1, 0);
        assert!(cache.lookup("t", 1, 2, 0).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn eviction_prefers_expired_entries_then_the_oldest() {
        let mut cache = TokenCache::new(3);
        cache.insert("a", token(1, None), 1000, 1, 0);
        cache.insert("b", token(2, None), 5, 1, 0);
        cache.insert("c", token(3, None), 1000, 1, 0);
        // At t=10 "b" is expired: it goes, "a" (oldest) stays.
        cache.insert("d", token(4, None), 1000, 1, 10);
        assert_eq!(cache.len(), 3);
        assert!(cache.lookup("a", 1, 1, 10).is_some());
        assert_eq!(cache.stats().evictions, 0);
        // Nothing expired now (and the sweep ran this second): the oldest insertion, "a", goes.
        cache.insert("e", token(5, None), 1000, 1, 10);
        assert!(cache.lookup("a", 1, 1, 10).is_none());
        assert!(cache.lookup("e", 5, 1, 10).is_some());
        assert_eq!(cache.stats().evictions, 1);
    }

    #[test]
    fn queue_stays_bounded_under_churn() {
        let mut cache = TokenCache::new(8);
        for i in 0..10_000u64 {
            let text = i.to_string();
            cache.insert(&text, token(i % 20, None), 1_000_000, 1, i / 100);
            assert!(cache.len() <= 8);
            assert!(cache.order.len() <= 16 + 1);
        }
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let mut cache = TokenCache::new(0);
        cache.insert("t", token(1, None), 100, 1, 0);
        assert!(cache.is_empty());
        assert_eq!(cache.max_entries(), 0);
        let mut full = TokenCache::new(2);
        full.insert("t", token(1, None), 100, 1, 0);
        full.clear();
        assert!(full.is_empty());
    }
}
