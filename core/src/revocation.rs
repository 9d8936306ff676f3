//! Revocation state at the edge and the seam through which the engine consults it.
//! The engine asks [`RevocationView`] on every request, cache hit or miss, after signature and time checks,
//! because revocation can change while a token sits in the cache. [`RevocationSet`] is the state the control
//! plane's feed fills (see [`crate::feed`]); [`EdgeRevocationState`] adds sync age and the `on_stale` policy.
//! Revoked `jti`s are kept as 64-bit fingerprints of their 128-bit keys in a compact Robin Hood table (12 bytes
//! a slot, at least 80 % full) so that a million of them fit in about 13 MB per worker; an entry scoped to an
//! issuer hashes the issuer in, so a lookup costs two hashes and two short probes at most (scoped to the token's
//! `iss`, then for every issuer).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::config::{Config, OnStale, RevocationConfig};
use crate::token::VerifiedToken;

/// Read-only view of the current revocation state.
pub trait RevocationView {
    /// `Some(description)` when the token is revoked ("token revoked" family): by `jti`,
    /// or its subject or client revoked at or after its `iat`.
    fn check(&self, token: &VerifiedToken) -> Option<String>;

    /// `Some(description)` when the revocation state is too old to trust and token-bearing requests
    /// must be refused (`on_stale: deny`); the default says the state is fresh.
    fn stale(&self, _now: u64) -> Option<String> {
        None
    }
}

/// A revocation view that revokes nothing and is never stale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoRevocations;

impl RevocationView for NoRevocations {
    fn check(&self, _token: &VerifiedToken) -> Option<String> {
        None
    }
}

/// The 128-bit identity under which a revoked `jti`, subject or client id is stored.
///
/// It is MurmurHash3 x64-128 (seed 0) of the UTF-8 bytes: fixed rather than randomly keyed, because every
/// worker VM must derive the same key from the same string and the keys travel between VMs in
/// [`RevocationSet::to_bytes`]. A collision can only make an unrevoked token look revoked (never the reverse),
/// and an accidental one among a million entries has probability about 2^-88 (the jti table keeps only a
/// 64-bit fingerprint of the key, which raises that to about 2^-44: see [`RevocationKey::fingerprint`]); an
/// attacker cannot exploit a crafted collision without being able to mint signed tokens in the first place. Murmur3 is about ten lines of
/// arithmetic, fast in Wasm (no 128-bit multiplies) and has published test vectors; no crate is needed.
///
/// An entry that names its issuer is stored under [`RevocationKey::scoped`], which puts the issuer into the
/// hash rather than into the table, so scoping costs no memory; an entry without one under
/// [`RevocationKey::of`], which applies to tokens of every issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevocationKey(pub u128);

/// First byte of a scoped key's hash input: never the first byte of UTF-8 text, so no identifier hashed
/// alone by [`RevocationKey::of`] has the same input as an issuer and identifier hashed together.
const SCOPED_MARK: u8 = 0xff;

impl RevocationKey {
    /// The key of a `jti`, subject or client id revoked for tokens of every issuer.
    pub fn of(value: &str) -> RevocationKey {
        RevocationKey(murmur3_x64_128(value.as_bytes()))
    }

    /// The key of a `jti`, subject or client id revoked only for tokens whose `iss` is exactly `issuer`
    /// (RFC 7519: a `sub`, like a `jti`, is unique only within its issuer).
    ///
    /// It is MurmurHash3 x64-128 of the byte `0xff`, the issuer's length in bytes as a little-endian `u64`,
    /// the issuer and the value: the length prefix keeps `("a", "bc")` apart from `("ab", "c")`, and the
    /// leading `0xff` (never the first byte of UTF-8 text) keeps every scoped input apart from every input of
    /// [`RevocationKey::of`]. It is hashed in pieces, so a lookup allocates nothing.
    pub fn scoped(issuer: &str, value: &str) -> RevocationKey {
        let mut hasher = Murmur3Stream::default();
        hasher.write(&[SCOPED_MARK]);
        hasher.write(&(issuer.len() as u64).to_le_bytes());
        hasher.write(issuer.as_bytes());
        hasher.write(value.as_bytes());
        RevocationKey(hasher.finish())
    }

    /// The key of a feed entry: [`RevocationKey::scoped`] when it names an issuer, [`RevocationKey::of`] when
    /// it does not (a feed from before revocations carried their issuer).
    pub fn of_entry(issuer: Option<&str>, value: &str) -> RevocationKey {
        match issuer {
            Some(issuer) => RevocationKey::scoped(issuer, value),
            None => RevocationKey::of(value),
        }
    }

    /// The 64-bit fingerprint the jti table and the shared records keep: the two halves of the key folded
    /// together. Folding a fingerprint widened back into a key ([`RevocationKey::from_fingerprint`]) gives
    /// the same fingerprint, so a key read back from the table or a record looks up what it was stored as.
    ///
    /// Keeping 64 of the 128 bits can only add collisions, and a collision can only make an unrevoked token
    /// look revoked (a revoked key always finds its own fingerprint): with a million revoked jtis a valid
    /// token's key meets one with probability 10^6 / 2^64, about 5.4 * 10^-14 per key looked up (two per
    /// token: scoped and unscoped).
    pub fn fingerprint(self) -> u64 {
        (self.0 as u64) ^ ((self.0 >> 64) as u64)
    }

    /// A key whose [`RevocationKey::fingerprint`] is `fingerprint` (the form keys come back in from the jti
    /// table and from shared records).
    pub fn from_fingerprint(fingerprint: u64) -> RevocationKey {
        RevocationKey(u128::from(fingerprint))
    }

    /// The fingerprint as two little-endian 32-bit words (the table's slot layout).
    fn words(self) -> [u32; 2] {
        let fingerprint = self.fingerprint();
        [fingerprint as u32, (fingerprint >> 32) as u32]
    }

    fn from_words(words: [u32; 2]) -> RevocationKey {
        let [low, high] = words;
        RevocationKey::from_fingerprint(u64::from(low) | u64::from(high) << 32)
    }
}

/// MurmurHash3 x64-128 with seed 0; `h1` in the low 64 bits, `h2` in the high ones (the byte order of the
/// reference implementation's output).
pub(crate) fn murmur3_x64_128(bytes: &[u8]) -> u128 {
    let mut state = Murmur3::default();
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        state.block(block);
    }
    state.finish(blocks.remainder(), bytes.len() as u64)
}

/// MurmurHash3 x64-128 (seed 0) of several byte strings as if concatenated, without concatenating them:
/// the scoped key hashes an issuer and an identifier on the request path, where nothing may allocate.
#[derive(Debug, Clone, Copy, Default)]
struct Murmur3Stream {
    state: Murmur3,
    /// Bytes of an unfinished 16-byte block.
    pending: [u8; 16],
    pending_len: usize,
    len: u64,
}

impl Murmur3Stream {
    fn write(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.pending_len > 0 {
            let take = (16 - self.pending_len).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            if let Some(room) = self
                .pending
                .get_mut(self.pending_len..self.pending_len + take)
            {
                room.copy_from_slice(head);
            }
            self.pending_len += take;
            bytes = rest;
            if self.pending_len < 16 {
                return;
            }
            let block = self.pending;
            self.state.block(&block);
            self.pending_len = 0;
        }
        let mut blocks = bytes.chunks_exact(16);
        for block in &mut blocks {
            self.state.block(block);
        }
        let tail = blocks.remainder();
        if let Some(room) = self.pending.get_mut(..tail.len()) {
            room.copy_from_slice(tail);
        }
        self.pending_len = tail.len();
    }

    fn finish(self) -> u128 {
        let tail = self.pending.get(..self.pending_len).unwrap_or_default();
        self.state.finish(tail, self.len)
    }
}

/// The running state of MurmurHash3 x64-128 between 16-byte blocks.
#[derive(Debug, Clone, Copy, Default)]
struct Murmur3 {
    h1: u64,
    h2: u64,
}

impl Murmur3 {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;

    /// Mixes in one 16-byte block.
    fn block(&mut self, block: &[u8]) {
        let (k1, k2) = block.split_at(block.len().min(8));
        let k1 = u64::from_le_bytes(word8(k1));
        let k2 = u64::from_le_bytes(word8(k2));
        self.h1 ^= k1
            .wrapping_mul(Self::C1)
            .rotate_left(31)
            .wrapping_mul(Self::C2);
        self.h1 = self
            .h1
            .rotate_left(27)
            .wrapping_add(self.h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        self.h2 ^= k2
            .wrapping_mul(Self::C2)
            .rotate_left(33)
            .wrapping_mul(Self::C1);
        self.h2 = self
            .h2
            .rotate_left(31)
            .wrapping_add(self.h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }

    /// Mixes in the last 0 to 15 bytes and the total length, and finalises.
    fn finish(self, tail: &[u8], len: u64) -> u128 {
        let Murmur3 { mut h1, mut h2 } = self;
        let (t1, t2) = tail.split_at(tail.len().min(8));
        if !t2.is_empty() {
            let k2 = u64::from_le_bytes(word8(t2));
            h2 ^= k2
                .wrapping_mul(Self::C2)
                .rotate_left(33)
                .wrapping_mul(Self::C1);
        }
        if !t1.is_empty() {
            let k1 = u64::from_le_bytes(word8(t1));
            h1 ^= k1
                .wrapping_mul(Self::C1)
                .rotate_left(31)
                .wrapping_mul(Self::C2);
        }
        h1 ^= len;
        h2 ^= len;
        h1 = h1.wrapping_add(h2);
        h2 = h2.wrapping_add(h1);
        h1 = fmix64(h1);
        h2 = fmix64(h2);
        h1 = h1.wrapping_add(h2);
        h2 = h2.wrapping_add(h1);
        u128::from(h1) | u128::from(h2) << 64
    }
}

/// Up to 8 bytes, zero-padded, as a little-endian word.
fn word8(bytes: &[u8]) -> [u8; 8] {
    let mut word = [0u8; 8];
    for (slot, byte) in word.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    word
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Clamps a Unix-seconds expiry into a table slot: at least 1 (0 marks an empty slot), at most `u32::MAX`
/// (year 2106; a later expiry is kept until then, which only errs on the side of refusing).
pub(crate) fn slot_expiry(exp: u64) -> u32 {
    u32::try_from(exp).unwrap_or(u32::MAX).max(1)
}

/// One slot of the jti table: the key's fingerprint as two words and the expiry; `exp == 0` marks an empty
/// slot. Plain `u32`s keep the slot at 12 bytes with 4-byte alignment (a `u64` field would pad it to 16).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot {
    key: [u32; 2],
    exp: u32,
}

/// Bytes one slot of the jti table occupies.
pub const JTI_SLOT_BYTES: usize = std::mem::size_of::<[u32; 3]>();

/// Load (in percent) the jti table is rebuilt to after growth, a snapshot or a shrinking prune: Robin Hood
/// ordering keeps probes short even this full (an absent key stops at the first entry nearer its home).
const TARGET_LOAD_PERCENT: usize = 90;
/// Load above which an insert grows the table.
const MAX_LOAD_PERCENT: usize = 95;
/// Load below which a prune shrinks the table: keeps every table above 80 % full, so a slot costs
/// at most 12 / 0.8 = 15 bytes per stored entry (the issue's 16 MB for a million, with room for the rest).
const MIN_LOAD_PERCENT_X10: usize = 800;
/// Smallest table allocated once anything is stored.
const MIN_CAPACITY: usize = 16;
/// Most entries a table is sized for ahead of their arrival: a sizing hint from outside (a paged feed's `total`,
/// a shared snapshot's manifest) that announced more once aborted the VM on an allocation it could never make.
pub const MAX_PRESIZED_ENTRIES: usize = 1 << 20;
/// Most subjects or clients a map is sized for ahead of their arrival (see [`MAX_PRESIZED_ENTRIES`]).
pub const MAX_PRESIZED_PRINCIPALS: usize = 1 << 16;

/// Open-addressing table of revoked jti key fingerprints and their expiries: linear probing with Robin Hood ordering,
/// so a lookup for an absent key (the common case: most tokens are not revoked) stops as soon as it meets
/// an entry closer to its home slot than the probe is, and deletions shift back instead of leaving tombstones.
/// The home slot is `(fingerprint bits 32..64) * capacity >> 32`, so the capacity need not be a power of two and
/// can track the entry count closely.
#[derive(Clone, Default)]
struct JtiTable {
    slots: Vec<Slot>,
    len: usize,
}

/// Counts only: a derived `Debug` would print every slot of a table that may hold millions.
impl std::fmt::Debug for JtiTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JtiTable")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl JtiTable {
    /// A table sized for `entries` at the target load.
    fn with_entries(entries: usize) -> JtiTable {
        JtiTable {
            slots: vec![Slot::default(); capacity_for(entries)],
            len: 0,
        }
    }

    fn home(&self, key: &[u32; 2]) -> usize {
        ((u64::from(key[1]) * self.slots.len() as u64) >> 32) as usize
    }

    fn next(&self, index: usize) -> usize {
        if index + 1 >= self.slots.len() {
            0
        } else {
            index + 1
        }
    }

    /// How far the entry at `index` sits from its home slot.
    fn distance(&self, index: usize, key: &[u32; 2]) -> usize {
        let home = self.home(key);
        if index >= home {
            index - home
        } else {
            index + self.slots.len() - home
        }
    }

    fn get(&self, key: RevocationKey) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let key = key.words();
        let mut index = self.home(&key);
        let mut probe = 0;
        loop {
            let slot = self.slots.get(index)?;
            if slot.exp == 0 {
                return None;
            }
            if slot.key == key {
                return Some(slot.exp);
            }
            // Robin Hood invariant: had the key been here, it would sit before any entry nearer its home.
            if self.distance(index, &slot.key) < probe {
                return None;
            }
            index = self.next(index);
            probe += 1;
        }
    }

    /// Inserts or replaces; returns whether the key was new.
    fn insert(&mut self, key: RevocationKey, exp: u32) -> bool {
        if (self.len + 1) * 100 > self.slots.len() * MAX_LOAD_PERCENT {
            self.rebuild(self.len + 1);
        }
        let mut carried = Slot {
            key: key.words(),
            exp: exp.max(1),
        };
        let mut index = self.home(&carried.key);
        let mut probe = 0;
        let mut original = true;
        // Bounded by the capacity: the load check above guarantees an empty slot exists.
        for _ in 0..self.slots.len() {
            let resident_distance = match self.slots.get(index) {
                Some(slot) if slot.exp == 0 => None,
                Some(slot) if original && slot.key == carried.key => {
                    if let Some(slot) = self.slots.get_mut(index) {
                        slot.exp = carried.exp;
                    }
                    return false;
                }
                Some(slot) => Some(self.distance(index, &slot.key)),
                None => return false,
            };
            let Some(slot) = self.slots.get_mut(index) else {
                return false;
            };
            match resident_distance {
                None => {
                    *slot = carried;
                    self.len += 1;
                    return true;
                }
                Some(distance) if distance < probe => {
                    std::mem::swap(slot, &mut carried);
                    probe = distance;
                    original = false;
                }
                Some(_) => {}
            }
            index = self.next(index);
            probe += 1;
        }
        false
    }

    /// Empties the slot at `index` and shifts the following cluster back by one.
    fn remove_at(&mut self, mut index: usize) {
        loop {
            let next = self.next(index);
            let moved = match self.slots.get(next) {
                Some(slot) if slot.exp != 0 && self.distance(next, &slot.key) > 0 => *slot,
                _ => Slot::default(),
            };
            if let Some(slot) = self.slots.get_mut(index) {
                *slot = moved;
            }
            if moved.exp == 0 {
                self.len -= 1;
                return;
            }
            index = next;
        }
    }

    /// Drops every entry whose expiry is at or before `cutoff`; returns how many went.
    fn prune(&mut self, cutoff: u64) -> usize {
        let before = self.len;
        let mut index = 0;
        // An entry shifted back into `index` has not been looked at yet (or is looked at again, harmlessly,
        // when it wrapped around from the front), so `index` only advances past a kept or empty slot.
        while index < self.slots.len() {
            match self.slots.get(index) {
                Some(slot) if slot.exp != 0 && u64::from(slot.exp) <= cutoff => {
                    self.remove_at(index)
                }
                _ => index += 1,
            }
        }
        if self.len * 1000 < self.slots.len() * MIN_LOAD_PERCENT_X10
            && self.slots.len() > MIN_CAPACITY
        {
            self.rebuild(self.len);
        }
        before - self.len
    }

    /// Reallocates for `entries` at the target load and reinserts everything. While it runs the old and the
    /// new slots coexist (growth from 0.95 to 0.90 load: about 2.1x the old table for a moment; a snapshot is sized once instead).
    fn rebuild(&mut self, entries: usize) {
        let old = std::mem::replace(self, JtiTable::with_entries(entries));
        for slot in old.slots.into_iter().filter(|slot| slot.exp != 0) {
            self.insert(RevocationKey::from_words(slot.key), slot.exp);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (RevocationKey, u32)> + '_ {
        self.slots
            .iter()
            .filter(|slot| slot.exp != 0)
            .map(|slot| (RevocationKey::from_words(slot.key), slot.exp))
    }

    fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }
}

/// Slots for `entries` at the target load: 0 for an empty table.
fn capacity_for(entries: usize) -> usize {
    if entries == 0 {
        return 0;
    }
    (entries.saturating_mul(100) / TARGET_LOAD_PERCENT + 1).max(MIN_CAPACITY)
}

/// A subject or client revocation: tokens issued at or before `revoked_at` are revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrincipalRevocation {
    /// Unix seconds of the revocation.
    pub revoked_at: u64,
    /// Unix seconds after which every token it covers has expired.
    pub expires_at: u64,
}

/// Hasher for maps keyed by [`RevocationKey`]: the key already is a well-mixed hash, so fold it.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a u128 is hashed; still mix every byte in.
        for byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value as u64) ^ (value >> 64) as u64;
    }
}

type PrincipalMap = HashMap<RevocationKey, PrincipalRevocation, BuildHasherDefault<KeyHasher>>;

/// Everything the edge knows is revoked: `jti`s with their expiry, and subjects and clients with the time of
/// their revocation and the expiry of the last token it covers.
///
/// A token is revoked when its `jti` is listed, or its `sub` (or `client_id`, which falls back to `azp`) is listed
/// with `revoked_at >= iat`. A token without `iat` whose subject or client is listed counts as revoked: nothing
/// shows it was issued after the revocation, so the edge fails closed. Strings are never stored, only their
/// [`RevocationKey`]s.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    jtis: JtiTable,
    subjects: PrincipalMap,
    clients: PrincipalMap,
    cursor: u64,
    feed_now: u64,
}

impl RevocationSet {
    /// An empty set at cursor 0 (ask the feed for a full snapshot).
    pub fn new() -> RevocationSet {
        RevocationSet::default()
    }

    /// The feed cursor this state reflects: what to send as `since` next.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The control plane's clock (`now` of the last feed answer applied), for skew reporting.
    pub fn feed_now(&self) -> u64 {
        self.feed_now
    }

    /// Entries of all three kinds.
    pub fn len(&self) -> usize {
        self.jtis.len + self.subjects.len() + self.clients.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Revoked `jti`s held.
    pub fn jti_count(&self) -> usize {
        self.jtis.len
    }

    /// Revoked subjects held.
    pub fn subject_count(&self) -> usize {
        self.subjects.len()
    }

    /// Revoked clients held.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Heap bytes the state holds: exact for the jti table (slot capacity times 12), an estimate from the
    /// capacity for the subject and client maps (hashbrown's buckets, each 32 bytes plus a control byte).
    pub fn memory_bytes(&self) -> usize {
        let map_bytes = |map: &PrincipalMap| {
            let buckets = if map.capacity() == 0 {
                0
            } else {
                (map.capacity() * 8 / 7).next_power_of_two()
            };
            buckets * (std::mem::size_of::<(RevocationKey, PrincipalRevocation)>() + 1)
        };
        self.jtis.memory_bytes() + map_bytes(&self.subjects) + map_bytes(&self.clients)
    }

    /// Slots allocated in the jti table (for the memory budget arithmetic).
    pub fn jti_capacity(&self) -> usize {
        self.jtis.slots.len()
    }

    /// The expiry stored for a `jti` revoked for every issuer, if it is listed.
    pub fn jti_expiry(&self, jti: &str) -> Option<u64> {
        self.jti_key_expiry(RevocationKey::of(jti))
    }

    /// The expiry stored under a jti key ([`RevocationKey::of`] or [`RevocationKey::scoped`]), if listed.
    pub fn jti_key_expiry(&self, key: RevocationKey) -> Option<u64> {
        self.jtis.get(key).map(u64::from)
    }

    /// The revocation of a subject for every issuer, if listed.
    pub fn subject(&self, subject: &str) -> Option<PrincipalRevocation> {
        self.subjects.get(&RevocationKey::of(subject)).copied()
    }

    /// The revocation of a client for every issuer, if listed.
    pub fn client(&self, client_id: &str) -> Option<PrincipalRevocation> {
        self.clients.get(&RevocationKey::of(client_id)).copied()
    }

    /// Adds (or replaces) a revoked `jti` key with its expiry.
    pub fn insert_jti(&mut self, key: RevocationKey, exp: u64) {
        self.jtis.insert(key, slot_expiry(exp));
    }

    /// Adds a subject revocation; a later entry for the same subject replaces the earlier one.
    pub fn insert_subject(&mut self, key: RevocationKey, revocation: PrincipalRevocation) {
        self.subjects.insert(key, revocation);
    }

    /// Adds a client revocation; a later entry for the same client replaces the earlier one.
    pub fn insert_client(&mut self, key: RevocationKey, revocation: PrincipalRevocation) {
        self.clients.insert(key, revocation);
    }

    /// Sets the cursor and the control plane's clock (used when rebuilding from a snapshot).
    pub(crate) fn set_position(&mut self, cursor: u64, feed_now: u64) {
        self.cursor = cursor;
        self.feed_now = feed_now;
    }

    /// A set sized for the given entry counts, at cursor 0 (the first page of a paged snapshot says them).
    /// Counts are hints from outside (a feed answer's `total`, a shared manifest): they are capped at
    /// [`MAX_PRESIZED_ENTRIES`] jtis and [`MAX_PRESIZED_PRINCIPALS`] subjects or clients, and a table grows past
    /// that only as entries really arrive.
    pub fn with_capacity(jtis: usize, subjects: usize, clients: usize) -> RevocationSet {
        let principals = |n: usize| n.min(MAX_PRESIZED_PRINCIPALS);
        RevocationSet {
            jtis: JtiTable::with_entries(jtis.min(MAX_PRESIZED_ENTRIES)),
            subjects: PrincipalMap::with_capacity_and_hasher(
                principals(subjects),
                Default::default(),
            ),
            clients: PrincipalMap::with_capacity_and_hasher(
                principals(clients),
                Default::default(),
            ),
            cursor: 0,
            feed_now: 0,
        }
    }

    /// Grows the jti table once to hold `total` entries at the target load, so loading a snapshot in parts
    /// never rebuilds it part by part (each rebuild briefly holds the old and the new table).
    /// `total` is a hint, capped like [`RevocationSet::with_capacity`]'s.
    pub fn reserve_jtis(&mut self, total: usize) {
        let total = total.min(MAX_PRESIZED_ENTRIES);
        if capacity_for(total) > self.jtis.slots.len() {
            self.jtis.rebuild(total.max(self.jtis.len));
        }
    }

    /// Revoked jti keys and their stored expiries, in table order.
    pub fn jtis(&self) -> impl Iterator<Item = (RevocationKey, u64)> + '_ {
        self.jtis.iter().map(|(key, exp)| (key, u64::from(exp)))
    }

    /// Subject revocations, in no particular order.
    pub fn subjects(&self) -> impl Iterator<Item = (RevocationKey, PrincipalRevocation)> + '_ {
        self.subjects.iter().map(|(key, value)| (*key, *value))
    }

    /// Client revocations, in no particular order.
    pub fn clients(&self) -> impl Iterator<Item = (RevocationKey, PrincipalRevocation)> + '_ {
        self.clients.iter().map(|(key, value)| (*key, *value))
    }

    /// Merges a feed answer: a full snapshot replaces the whole state (sized to it), a delta adds or replaces
    /// entries. Either way the cursor and the control plane's clock become the answer's. Cannot fail: the
    /// update was validated when it was parsed or decoded.
    pub fn apply(&mut self, update: &crate::feed::FeedUpdate) {
        if update.full {
            // Free the old table before allocating the new one: a snapshot of a million entries would
            // otherwise briefly cost twice the budget.
            *self = RevocationSet::new();
            *self = RevocationSet::with_capacity(
                update.revoked_jtis.len(),
                update.revoked_subjects.len(),
                update.revoked_clients.len(),
            );
        }
        for entry in &update.revoked_jtis {
            self.insert_jti(entry.key, entry.exp);
        }
        for entry in &update.revoked_subjects {
            self.insert_subject(entry.key, entry.revocation);
        }
        for entry in &update.revoked_clients {
            self.insert_client(entry.key, entry.revocation);
        }
        self.cursor = update.cursor;
        self.feed_now = update.now;
    }

    /// Drops every entry whose expiry is at or before `cutoff` (Unix seconds) and returns how many went.
    /// Pass `now - leeway`, not `now`: the engine accepts a token until `exp + leeway`, so its revocation must
    /// stay that long ([`EdgeRevocationState::prune`] does this).
    pub fn prune(&mut self, cutoff: u64) -> usize {
        let subjects = self.subjects.len();
        self.subjects.retain(|_, r| r.expires_at > cutoff);
        let clients = self.clients.len();
        self.clients.retain(|_, r| r.expires_at > cutoff);
        let dropped = subjects - self.subjects.len() + clients - self.clients.len();
        dropped + self.jtis.prune(cutoff)
    }
}

/// Describes why a principal revocation covers a token issued at `iat`, if it does.
fn principal_revokes(
    kind: &str,
    revocation: PrincipalRevocation,
    iat: Option<u64>,
) -> Option<String> {
    match iat {
        None => Some(format!(
            "token revoked: {kind} revoked at {} and the token has no iat",
            revocation.revoked_at
        )),
        Some(iat) if iat <= revocation.revoked_at => Some(format!(
            "token revoked: {kind} revoked at {}, token issued at {iat}",
            revocation.revoked_at
        )),
        Some(_) => None,
    }
}

/// Describes why a subject or client revocation covers the token, if one does: the entry scoped to the
/// token's issuer is looked up first, the unscoped one (every issuer) only when that does not revoke.
fn principal_check(
    map: &PrincipalMap,
    kind: &str,
    issuer: &str,
    name: Option<&str>,
    iat: Option<u64>,
) -> Option<String> {
    let name = name.filter(|_| !map.is_empty())?;
    map.get(&RevocationKey::scoped(issuer, name))
        .and_then(|revocation| principal_revokes(kind, *revocation, iat))
        .or_else(|| {
            map.get(&RevocationKey::of(name))
                .and_then(|revocation| principal_revokes(kind, *revocation, iat))
        })
}

impl RevocationView for RevocationSet {
    /// Each identifier is looked up twice at most: under its key scoped to the token's `iss`, then, only if
    /// that misses, under its unscoped key; an empty list is not looked up at all.
    fn check(&self, token: &VerifiedToken) -> Option<String> {
        let issuer = token.iss.as_str();
        if let Some(jti) = token.jti.as_deref().filter(|_| self.jtis.len > 0) {
            if self.jtis.get(RevocationKey::scoped(issuer, jti)).is_some()
                || self.jtis.get(RevocationKey::of(jti)).is_some()
            {
                return Some("token revoked by jti".to_string());
            }
        }
        principal_check(
            &self.subjects,
            "subject",
            issuer,
            token.sub.as_deref(),
            token.iat,
        )
        .or_else(|| {
            principal_check(
                &self.clients,
                "client",
                issuer,
                token.client_id.as_deref(),
                token.iat,
            )
        })
    }
}

/// A [`RevocationSet`] plus what the edge needs to judge it: when it last synced with the control plane,
/// how old it may get (`revocation.max_staleness_seconds`), what to do beyond that (`revocation.on_stale`),
/// and the clock leeway that decides how long an expired entry must be kept.
#[derive(Debug, Clone)]
pub struct EdgeRevocationState {
    set: RevocationSet,
    last_sync: Option<u64>,
    max_staleness_seconds: u64,
    on_stale: OnStale,
    leeway: u64,
    last_prune: Option<u64>,
}

/// Seconds between the scans [`EdgeRevocationState::prune_if_due`] makes. A scan of a million-entry table
/// costs tens of milliseconds in V8, too much for every one-second poll; entries kept up to this much longer
/// only refuse tokens that have expired anyway.
pub const PRUNE_INTERVAL_SECONDS: u64 = 60;

impl EdgeRevocationState {
    /// An empty, never-synced state under `config`, keeping expired entries `leeway` seconds (the engine's
    /// `clock_skew_seconds`) so a revoked token is refused for as long as the time checks would still accept it.
    pub fn new(config: &RevocationConfig, leeway: u64) -> EdgeRevocationState {
        EdgeRevocationState {
            set: RevocationSet::new(),
            last_sync: None,
            max_staleness_seconds: config.max_staleness_seconds,
            on_stale: config.on_stale,
            leeway,
            last_prune: None,
        }
    }

    /// [`EdgeRevocationState::new`] with the revocation settings and clock leeway of a plugin configuration.
    pub fn from_config(config: &Config) -> EdgeRevocationState {
        EdgeRevocationState::new(&config.revocation, config.clock_skew_seconds)
    }

    /// The revocation entries.
    pub fn set(&self) -> &RevocationSet {
        &self.set
    }

    /// Replaces the entries (a worker loading a snapshot another VM published); sync time is unchanged.
    pub fn replace_set(&mut self, set: RevocationSet) {
        self.set = set;
    }

    /// Mutable access to the entries (to apply published deltas).
    pub fn set_mut(&mut self) -> &mut RevocationSet {
        &mut self.set
    }

    /// Applies a feed answer received at `now`, drops what has expired if a prune is due, and records a
    /// successful sync.
    pub fn sync(&mut self, update: &crate::feed::FeedUpdate, now: u64) {
        self.set.apply(update);
        self.prune_if_due(now);
        self.last_sync = Some(now);
    }

    /// Parses a feed answer body and syncs with it ([`EdgeRevocationState::sync`]). On an invalid body the
    /// state, including its last sync time, is unchanged: a poll that returned garbage is a failed poll.
    pub fn sync_json(&mut self, body: &[u8], now: u64) -> Result<(), crate::feed::FeedError> {
        let update = crate::feed::FeedUpdate::from_json(body)?;
        self.sync(&update, now);
        Ok(())
    }

    /// Records a successful poll that brought nothing new (`304 Not Modified`, an empty delta).
    pub fn record_sync(&mut self, now: u64) {
        self.last_sync = Some(now);
    }

    /// Sets the last successful sync time (a worker copying the poller's, as published in shared data).
    pub fn set_last_sync(&mut self, last_sync: Option<u64>) {
        self.last_sync = last_sync;
    }

    /// Unix seconds of the last successful sync; `None` until the first.
    pub fn last_sync(&self) -> Option<u64> {
        self.last_sync
    }

    /// Drops entries whose tokens the time checks refuse by now (expiry plus leeway at or before `now`).
    pub fn prune(&mut self, now: u64) -> usize {
        self.last_prune = Some(now);
        self.set.prune(now.saturating_sub(self.leeway))
    }

    /// [`EdgeRevocationState::prune`] when none ran in the last [`PRUNE_INTERVAL_SECONDS`] (or the clock went
    /// back); `None` when it was not due. Workers that only apply published deltas call this on their tick.
    pub fn prune_if_due(&mut self, now: u64) -> Option<usize> {
        let due = self
            .last_prune
            .is_none_or(|at| now < at || now - at >= PRUNE_INTERVAL_SECONDS);
        due.then(|| self.prune(now))
    }

    /// Seconds since the last successful sync (0 if the clock went back); `None` until the first sync.
    /// This is the staleness gauge, whatever `on_stale` says.
    pub fn staleness(&self, now: u64) -> Option<u64> {
        self.last_sync.map(|at| now.saturating_sub(at))
    }

    /// Whether the state is older than `max_staleness_seconds` or was never synced, whatever `on_stale` says
    /// (with `on_stale: allow` the filter counts requests let through in this state).
    pub fn is_stale(&self, now: u64) -> bool {
        self.staleness(now)
            .is_none_or(|age| age > self.max_staleness_seconds)
    }
}

impl RevocationView for EdgeRevocationState {
    fn check(&self, token: &VerifiedToken) -> Option<String> {
        self.set.check(token)
    }

    /// With `on_stale: deny`: "revocation state not yet synced" before the first sync, and
    /// "revocation state is 312s old (max 300s)" once it is older than the maximum. Never with `allow`.
    fn stale(&self, now: u64) -> Option<String> {
        if self.on_stale != OnStale::Deny {
            return None;
        }
        match self.staleness(now) {
            None => Some("revocation state not yet synced".to_string()),
            Some(age) if age > self.max_staleness_seconds => Some(format!(
                "revocation state is {age}s old (max {}s)",
                self.max_staleness_seconds
            )),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{FeedUpdate, RevokedJti, RevokedPrincipal};

    /// Found by the `feed` fuzz target: a paged answer whose `total` announced 10^11 jtis aborted the VM.
    #[test]
    fn sizing_hints_from_outside_are_capped_and_the_table_still_grows() {
        let mut set = RevocationSet::with_capacity(usize::MAX, usize::MAX, usize::MAX);
        assert!(
            set.memory_bytes() < 64 << 20,
            "{} bytes",
            set.memory_bytes()
        );
        set.reserve_jtis(usize::MAX);
        // 10^11 where usize holds it; on a 32-bit target (the filter's) the most it can say.
        set.reserve_jtis(usize::try_from(100_000_000_000u64).unwrap_or(usize::MAX));
        set.insert_jti(RevocationKey::of("a"), T);
        assert_eq!(set.jti_expiry("a"), Some(T));
    }

    const T: u64 = 1_767_000_000;

    fn token(
        jti: Option<&str>,
        sub: Option<&str>,
        client: Option<&str>,
        iat: Option<u64>,
    ) -> VerifiedToken {
        VerifiedToken {
            issuer_index: 0,
            iss: "https://issuer.test".into(),
            sub: sub.map(Into::into),
            aud: vec!["api".into()],
            exp: Some(T + 3600),
            nbf: None,
            iat,
            jti: jti.map(Into::into),
            client_id: client.map(Into::into),
            scopes: vec![],
            roles: vec![],
            alg: "ES256".into(),
            kid: None,
            typ: None,
            claims: serde_json::Map::new(),
            fingerprint: 0,
            forwarded: Vec::new(),
        }
    }

    fn jti(name: &str, exp: u64) -> RevokedJti {
        RevokedJti {
            key: RevocationKey::of(name),
            exp,
        }
    }

    fn principal(name: &str, revoked_at: u64, expires_at: u64) -> RevokedPrincipal {
        RevokedPrincipal {
            key: RevocationKey::of(name),
            revocation: PrincipalRevocation {
                revoked_at,
                expires_at,
            },
        }
    }

    fn update(cursor: u64, full: bool) -> FeedUpdate {
        FeedUpdate {
            cursor,
            full,
            now: T,
            ..FeedUpdate::default()
        }
    }

    /// jti-1 revoked, subject alice revoked at T, client billing revoked at T.
    fn sample() -> RevocationSet {
        let mut set = RevocationSet::new();
        set.apply(&FeedUpdate {
            revoked_jtis: vec![jti("jti-1", T + 3600)],
            revoked_subjects: vec![principal("alice", T, T + 3600)],
            revoked_clients: vec![principal("billing", T, T + 3600)],
            ..update(7, true)
        });
        set
    }

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        // From the reference implementation (Python mmh3.hash_bytes(data, 0, x64arch=True)).
        let cases: [(&[u8], &str); 6] = [
            (b"", "00000000000000000000000000000000"),
            (b"a", "897859f6655555855a890e51483ab5e6"),
            (b"hello", "029bbd41b3a7d8cb191dae486a901e5b"),
            (b"0123456789abcdef", "a7d14acf946de04bda08a7635c5bc387"),
            (b"0123456789abcdefX", "f7d670b5acd2ebcd274b10829711728f"),
            (
                b"The quick brown fox jumps over the lazy dog",
                "6c1b07bc7bbc4be347939ac4a93c437a",
            ),
        ];
        for (input, expected) in cases {
            let hex: String = murmur3_x64_128(input)
                .to_le_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hex, expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn streamed_murmur3_equals_the_one_shot_hash_at_every_split() {
        let inputs: [&[u8]; 5] = [
            b"",
            b"a",
            b"0123456789abcdef",
            b"0123456789abcdefX",
            b"https://idp.example/realms/main\xff\x00carol-0123456789abcdef",
        ];
        for input in inputs {
            let whole = murmur3_x64_128(input);
            for first in 0..=input.len() {
                for second in first..=input.len() {
                    let mut stream = Murmur3Stream::default();
                    stream.write(&input[..first]);
                    stream.write(&input[first..second]);
                    stream.write(&input[second..]);
                    assert_eq!(
                        stream.finish(),
                        whole,
                        "{input:?} split at {first}, {second}"
                    );
                }
            }
        }
    }

    #[test]
    fn scoped_keys_hash_mark_issuer_length_issuer_and_value() {
        let documented = |issuer: &str, value: &str| {
            let mut input = vec![0xff];
            input.extend_from_slice(&(issuer.len() as u64).to_le_bytes());
            input.extend_from_slice(issuer.as_bytes());
            input.extend_from_slice(value.as_bytes());
            RevocationKey(murmur3_x64_128(&input))
        };
        for (issuer, value) in [
            ("https://idp.example", "carol"),
            ("a", "bc"),
            ("", ""),
            (
                "https://admin.example/issuer/with/a/long/path",
                "0b5c6c1e-6c9f-4f2b-8a47-1d2f3e4a5b6c",
            ),
        ] {
            assert_eq!(
                RevocationKey::scoped(issuer, value),
                documented(issuer, value),
                "{issuer} {value}"
            );
            assert_eq!(
                RevocationKey::of_entry(Some(issuer), value),
                documented(issuer, value)
            );
            assert_eq!(
                RevocationKey::of_entry(None, value),
                RevocationKey::of(value)
            );
        }
        #[rustfmt::skip]
        let distinct = [
            RevocationKey::scoped("a", "bc"),
            RevocationKey::scoped("ab", "c"),
            RevocationKey::scoped("abc", ""),
            RevocationKey::scoped("", "abc"),
            RevocationKey::of("abc"),
            RevocationKey::scoped("https://idp.example", "carol"),
            RevocationKey::scoped("https://idp.example/", "carol"),
            RevocationKey::scoped("https://other.example", "carol"),
            RevocationKey::of("carol"),
            RevocationKey::of("https://idp.examplecarol"),
        ];
        for (i, a) in distinct.iter().enumerate() {
            for b in distinct.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn issuer_scoped_entries_revoke_only_that_issuers_tokens() {
        const A: &str = "https://issuer.test";
        const B: &str = "https://idp.example";
        let mut set = RevocationSet::new();
        let scoped = |issuer: &str, name: &str, revoked_at: u64| RevokedPrincipal {
            key: RevocationKey::scoped(issuer, name),
            revocation: PrincipalRevocation {
                revoked_at,
                expires_at: T + 3600,
            },
        };
        set.apply(&FeedUpdate {
            revoked_jtis: vec![
                RevokedJti {
                    key: RevocationKey::scoped(A, "jti-a"),
                    exp: T + 3600,
                },
                jti("jti-any", T + 3600),
            ],
            revoked_subjects: vec![
                scoped(A, "carol", T),
                principal("dave", T, T + 3600),
                // Scoped to B, revoked long ago; the unscoped entry for erin still covers B's erin.
                scoped(B, "erin", T - 1000),
                principal("erin", T, T + 3600),
            ],
            revoked_clients: vec![scoped(A, "billing", T), principal("shipping", T, T + 3600)],
            ..update(1, true)
        });
        let of = |issuer: &str, jti: Option<&str>, sub: Option<&str>, client: Option<&str>| {
            let mut t = token(jti, sub, client, Some(T - 10));
            t.iss = issuer.into();
            t
        };
        let by_jti = Some("token revoked by jti");
        let subject =
            Some("token revoked: subject revoked at 1767000000, token issued at 1766999990");
        let client =
            Some("token revoked: client revoked at 1767000000, token issued at 1766999990");
        #[rustfmt::skip]
        let cases: Vec<(&str, VerifiedToken, Option<&str>)> = vec![
            ("jti scoped to A, A's token", of(A, Some("jti-a"), None, None), by_jti),
            ("jti scoped to A, B's token with the same jti", of(B, Some("jti-a"), None, None), None),
            ("unscoped jti, A's token", of(A, Some("jti-any"), None, None), by_jti),
            ("unscoped jti, B's token", of(B, Some("jti-any"), None, None), by_jti),
            ("subject scoped to A, A's carol", of(A, None, Some("carol"), None), subject),
            ("subject scoped to A, B's carol", of(B, None, Some("carol"), None), None),
            ("unscoped subject, A's dave", of(A, None, Some("dave"), None), subject),
            ("unscoped subject, B's dave", of(B, None, Some("dave"), None), subject),
            ("scoped entry passes, unscoped one revokes", of(B, None, Some("erin"), None), subject),
            ("client scoped to A, A's billing", of(A, None, None, Some("billing")), client),
            ("client scoped to A, B's billing", of(B, None, None, Some("billing")), None),
            ("unscoped client, B's shipping", of(B, None, None, Some("shipping")), client),
            ("issuer must match exactly", of("https://issuer.test/", Some("jti-a"), Some("carol"), Some("billing")), None),
        ];
        for (name, token, expected) in cases {
            assert_eq!(set.check(&token).as_deref(), expected, "{name}");
        }
        let mut later = of(A, None, Some("carol"), None);
        later.iat = Some(T + 1);
        assert_eq!(
            set.check(&later),
            None,
            "issued after the scoped revocation"
        );
        assert_eq!(
            set.jti_key_expiry(RevocationKey::scoped(A, "jti-a")),
            Some(T + 3600)
        );
        assert_eq!(
            set.jti_expiry("jti-a"),
            None,
            "a scoped entry is not an unscoped one"
        );
    }

    #[test]
    fn scoped_entries_cost_what_unscoped_ones_cost() {
        let build = |key: fn(usize) -> RevocationKey| {
            let mut set = RevocationSet::new();
            set.apply(&FeedUpdate {
                revoked_jtis: (0..5000)
                    .map(|i| RevokedJti {
                        key: key(i),
                        exp: T + 60,
                    })
                    .collect(),
                revoked_subjects: (0..50)
                    .map(|i| RevokedPrincipal {
                        key: key(i),
                        revocation: PrincipalRevocation {
                            revoked_at: T,
                            expires_at: T + 60,
                        },
                    })
                    .collect(),
                ..update(1, true)
            });
            set
        };
        let unscoped = build(|i| RevocationKey::of(&format!("jti-{i}")));
        let scoped = build(|i| RevocationKey::scoped("https://idp.example", &format!("jti-{i}")));
        assert_eq!(scoped.len(), unscoped.len());
        assert_eq!(scoped.memory_bytes(), unscoped.memory_bytes());
        assert!(scoped.memory_bytes() <= scoped.jti_count() * 32 + 50 * 64);
        assert_eq!(scoped.to_bytes().len(), unscoped.to_bytes().len());
    }

    #[test]
    fn revocation_rules_decide_by_jti_subject_client_and_iat() {
        let set = sample();
        #[rustfmt::skip]
        let cases: Vec<(&str, VerifiedToken, Option<&str>)> = vec![
            ("listed jti", token(Some("jti-1"), Some("bob"), None, Some(T - 10)),
                Some("token revoked by jti")),
            ("other jti", token(Some("jti-2"), Some("bob"), Some("web"), Some(T - 10)), None),
            ("no jti, no listed principal", token(None, Some("bob"), Some("web"), None), None),
            ("subject revoked after issue", token(Some("jti-2"), Some("alice"), None, Some(T - 1)),
                Some("token revoked: subject revoked at 1767000000, token issued at 1766999999")),
            ("subject revoked in the issuing second", token(None, Some("alice"), None, Some(T)),
                Some("token revoked: subject revoked at 1767000000, token issued at 1767000000")),
            ("issued after the subject revocation", token(None, Some("alice"), None, Some(T + 1)), None),
            ("subject listed, token without iat", token(None, Some("alice"), None, None),
                Some("token revoked: subject revoked at 1767000000 and the token has no iat")),
            ("client revoked after issue", token(None, Some("bob"), Some("billing"), Some(T - 5)),
                Some("token revoked: client revoked at 1767000000, token issued at 1766999995")),
            ("issued after the client revocation", token(None, Some("bob"), Some("billing"), Some(T + 5)), None),
            ("client listed, token without iat", token(None, None, Some("billing"), None),
                Some("token revoked: client revoked at 1767000000 and the token has no iat")),
            ("subject passes, client still revokes", token(None, Some("alice"), Some("billing"), Some(T)),
                Some("token revoked: subject revoked at 1767000000, token issued at 1767000000")),
            ("names are exact", token(Some("JTI-1"), Some("Alice"), Some("billing2"), Some(T - 10)), None),
            ("a subject name is not a client id", token(None, Some("billing"), Some("alice"), Some(T - 10)), None),
        ];
        for (name, token, expected) in cases {
            assert_eq!(set.check(&token).as_deref(), expected, "{name}");
        }
    }

    #[test]
    fn full_snapshot_replaces_and_delta_merges() {
        let mut set = sample();
        set.apply(&FeedUpdate {
            revoked_jtis: vec![jti("jti-2", T + 100)],
            ..update(8, false)
        });
        assert_eq!(set.cursor(), 8);
        assert_eq!(
            (set.jti_count(), set.subject_count(), set.client_count()),
            (2, 1, 1)
        );
        assert!(set.jti_expiry("jti-1").is_some() && set.jti_expiry("jti-2").is_some());

        set.apply(&FeedUpdate {
            revoked_jtis: vec![jti("jti-3", T + 100)],
            ..update(3, true)
        });
        assert_eq!(set.cursor(), 3);
        assert_eq!(set.len(), 1);
        assert_eq!(set.jti_expiry("jti-3"), Some(T + 100));
        assert!(set
            .check(&token(
                Some("jti-1"),
                Some("alice"),
                Some("billing"),
                Some(T - 10)
            ))
            .is_none());
    }

    #[test]
    fn later_entry_for_the_same_subject_or_jti_replaces_the_earlier_one() {
        let mut set = sample();
        set.apply(&FeedUpdate {
            revoked_jtis: vec![jti("jti-1", T + 9000)],
            revoked_subjects: vec![principal("alice", T + 50, T + 7200)],
            revoked_clients: vec![principal("billing", T - 50, T + 10)],
            ..update(9, false)
        });
        assert_eq!(set.len(), 3);
        assert_eq!(set.jti_expiry("jti-1"), Some(T + 9000));
        assert_eq!(
            set.subject("alice"),
            Some(PrincipalRevocation {
                revoked_at: T + 50,
                expires_at: T + 7200
            })
        );
        // Issued at T+20: now covered by the later subject revocation, no longer by the earlier client one.
        let t = token(None, Some("alice"), None, Some(T + 20));
        assert!(set.check(&t).is_some());
        let t = token(None, Some("bob"), Some("billing"), Some(T - 10));
        assert!(set.check(&t).is_none());
    }

    #[test]
    fn prune_drops_entries_expired_at_or_before_the_cutoff() {
        let mut set = RevocationSet::new();
        set.apply(&FeedUpdate {
            revoked_jtis: vec![jti("a", T), jti("b", T + 1), jti("c", T + 100)],
            revoked_subjects: vec![principal("s1", T - 10, T), principal("s2", T - 10, T + 1)],
            revoked_clients: vec![principal("c1", T - 10, T), principal("c2", T - 10, T + 1)],
            ..update(1, true)
        });
        assert_eq!(set.prune(T - 1), 0);
        assert_eq!(set.prune(T), 3);
        assert_eq!(set.jti_expiry("a"), None);
        assert_eq!(set.jti_expiry("b"), Some(T + 1));
        assert!(set.subject("s1").is_none() && set.subject("s2").is_some());
        assert!(set.client("c1").is_none() && set.client("c2").is_some());
        assert_eq!(set.prune(T + 1), 3);
        assert_eq!(set.len(), 1);
        assert_eq!(set.prune(u64::MAX), 1);
        assert!(set.is_empty());
    }

    #[test]
    fn edge_state_keeps_entries_for_the_clock_leeway_after_expiry() {
        // The engine still accepts a token until exp + leeway, so its revocation must last as long.
        let config = RevocationConfig::default();
        let mut state = EdgeRevocationState::new(&config, 60);
        state.sync(
            &FeedUpdate {
                revoked_jtis: vec![jti("j", T)],
                ..update(1, true)
            },
            T - 100,
        );
        let t = token(Some("j"), None, None, Some(T - 200));
        assert_eq!(state.prune(T + 59), 0);
        assert!(state.check(&t).is_some());
        assert_eq!(state.prune(T + 60), 1);
        assert!(state.check(&t).is_none());
    }

    #[test]
    fn pruning_runs_at_most_once_per_interval() {
        let mut state = EdgeRevocationState::new(&RevocationConfig::default(), 0);
        state.sync(
            &FeedUpdate {
                revoked_jtis: vec![jti("a", T + 10), jti("b", T + 100)],
                ..update(1, true)
            },
            T,
        );
        assert_eq!(state.set().jti_count(), 2);
        // The sync at T pruned; at T+20 "a" has expired but no prune is due yet.
        state.sync(&update(2, false), T + 20);
        assert_eq!(state.set().jti_count(), 2);
        assert_eq!(state.prune_if_due(T + 59), None);
        assert_eq!(state.prune_if_due(T + PRUNE_INTERVAL_SECONDS), Some(1));
        assert_eq!(state.prune_if_due(T + PRUNE_INTERVAL_SECONDS + 1), None);
        // A clock that went back prunes again rather than waiting for the old time to come round.
        assert_eq!(state.prune_if_due(T + 30), Some(0));
        state.sync(&update(3, false), T + 200);
        assert_eq!(state.set().jti_count(), 0);
    }

    #[test]
    fn staleness_follows_on_stale() {
        let deny = RevocationConfig {
            max_staleness_seconds: 300,
            ..RevocationConfig::default()
        };
        let allow = RevocationConfig {
            on_stale: OnStale::Allow,
            ..deny.clone()
        };
        let mut denying = EdgeRevocationState::new(&deny, 60);
        let mut allowing = EdgeRevocationState::new(&allow, 60);
        // Never synced.
        assert_eq!(
            denying.stale(T).as_deref(),
            Some("revocation state not yet synced")
        );
        assert_eq!(allowing.stale(T), None);
        assert!(denying.is_stale(T) && allowing.is_stale(T));
        assert_eq!(denying.staleness(T), None);

        for state in [&mut denying, &mut allowing] {
            state.sync(&update(1, true), T);
        }
        #[rustfmt::skip]
        let cases: [(u64, Option<u64>, bool, Option<&str>); 4] = [
            (T, Some(0), false, None),
            (T + 300, Some(300), false, None),
            (T + 312, Some(312), true, Some("revocation state is 312s old (max 300s)")),
            (T - 5, Some(0), false, None), // the clock went back: not stale
        ];
        for (now, age, stale, description) in cases {
            assert_eq!(denying.staleness(now), age, "at {now}");
            assert_eq!(denying.is_stale(now), stale, "at {now}");
            assert_eq!(denying.stale(now).as_deref(), description, "at {now}");
            assert_eq!(allowing.is_stale(now), stale, "at {now}");
            assert_eq!(allowing.stale(now), None, "at {now}");
        }
        // A poll that brought nothing new still counts as a sync.
        denying.record_sync(T + 400);
        assert_eq!(denying.stale(T + 500), None);
        assert_eq!(denying.last_sync(), Some(T + 400));
        denying.set_last_sync(None);
        assert!(denying.stale(T + 500).is_some());
    }

    /// Deterministic pseudo-random keys (SplitMix64), so table tests need no crate and always replay.
    fn keys(count: usize, seed: u64) -> Vec<RevocationKey> {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            fmix64(state)
        };
        (0..count)
            .map(|_| RevocationKey(u128::from(next()) | u128::from(next()) << 64))
            .collect()
    }

    #[test]
    fn jti_table_agrees_with_a_hash_map_through_inserts_replacements_and_prunes() {
        let mut table = JtiTable::default();
        let mut model: HashMap<RevocationKey, u32> = HashMap::new();
        let keys = keys(5000, 1);
        for round in 0..4u32 {
            for (i, key) in keys.iter().enumerate() {
                if (i as u32 + round) % 3 == 0 {
                    let exp = 1 + (i as u32 * 7 + round * 13) % 1000;
                    assert_eq!(table.insert(*key, exp), model.insert(*key, exp).is_none());
                }
            }
            let cutoff = u64::from(200 * round + 100);
            let before = model.len();
            model.retain(|_, exp| u64::from(*exp) > cutoff);
            assert_eq!(table.prune(cutoff), before - model.len(), "round {round}");
            assert_eq!(table.len, model.len());
            for key in &keys {
                assert_eq!(table.get(*key), model.get(key).copied());
            }
            let mut listed: Vec<_> = table.iter().collect();
            let mut expected: Vec<_> = model
                .iter()
                .map(|(k, v)| (RevocationKey::from_fingerprint(k.fingerprint()), *v))
                .collect();
            listed.sort();
            expected.sort();
            assert_eq!(listed, expected);
        }
    }

    #[test]
    fn jti_table_handles_clusters_that_wrap_around_the_end() {
        // Keys whose top word maps to the last slot all collide there and wrap to the front.
        let mut table = JtiTable::with_entries(10);
        let last = table.slots.len() as u128 - 1;
        let cap = table.slots.len() as u128;
        let high = (last << 32).div_ceil(cap);
        let keys: Vec<RevocationKey> = (0..8u128)
            .map(|i| RevocationKey(((high as u32 as u128) << 96) | i))
            .collect();
        assert!(keys
            .iter()
            .all(|k| table.home(&k.words()) == table.slots.len() - 1));
        for (i, key) in keys.iter().enumerate() {
            table.insert(*key, 10 + i as u32);
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(table.get(*key), Some(10 + i as u32));
        }
        // Expire every other one; the rest must stay reachable across the wrap.
        let mut expiring = JtiTable::with_entries(10);
        for (i, key) in keys.iter().enumerate() {
            expiring.insert(*key, if i % 2 == 0 { 5 } else { 50 });
        }
        assert_eq!(expiring.prune(5), 4);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(expiring.get(*key), (i % 2 == 1).then_some(50));
        }
    }

    #[test]
    fn a_fingerprint_collision_can_only_refuse_a_valid_key_never_admit_a_revoked_one() {
        let revoked = RevocationKey::of("jti-revoked");
        // Flipping the same bits in both halves keeps the fold: another key with the same fingerprint.
        let twin = RevocationKey(revoked.0 ^ (0x5a5a_u128 | 0x5a5a_u128 << 64));
        assert_ne!(twin, revoked);
        assert_eq!(twin.fingerprint(), revoked.fingerprint());
        let mut set = RevocationSet::new();
        set.insert_jti(revoked, T);
        assert_eq!(set.jti_key_expiry(revoked), Some(T));
        assert_eq!(set.jti_key_expiry(twin), Some(T), "the twin is refused too");
        // Read back from the table or a record, a key finds what it was stored as.
        let (listed, _) = set.jtis().next().unwrap();
        assert_eq!(set.jti_key_expiry(listed), Some(T));
        assert_eq!(RevocationKey::from_fingerprint(7).fingerprint(), 7);
        assert_eq!(set.jti_key_expiry(RevocationKey::of("jti-valid")), None);
    }

    #[test]
    fn debug_output_counts_entries_instead_of_listing_them() {
        let set = sample();
        let text = format!("{set:?}");
        assert!(text.contains("JtiTable { len: 1, slots: 16 }"), "{text}");
    }

    #[test]
    fn a_million_jtis_fit_the_16_mb_budget() {
        // Issue 11's budget: 16 MB per worker VM for 1,000,000 revoked tokens, the table at most 15 bytes
        // an entry and the VM's other memory in the rest.
        assert_eq!(JTI_SLOT_BYTES, 12);
        assert_eq!(std::mem::size_of::<Slot>(), JTI_SLOT_BYTES);
        let million = capacity_for(1_000_000) * JTI_SLOT_BYTES;
        assert!(million <= 13_400_000, "{million} bytes for a million");
        // The table is never left below 80 % full (except at its minimum size), so no slot count
        // reachable by growth or pruning breaks the budget either.
        const { assert!(JTI_SLOT_BYTES * 1000 / MIN_LOAD_PERCENT_X10 <= 15) };

        // Growth and shrinking keep the invariant on a real table.
        let mut set = RevocationSet::new();
        for (i, key) in keys(200_000, 2).into_iter().enumerate() {
            set.insert_jti(key, T + (i as u64 % 100));
            if i > 1000 && i % 997 == 0 {
                assert!(
                    set.memory_bytes() <= set.jti_count() * 15,
                    "after {i} inserts"
                );
            }
        }
        assert!(set.memory_bytes() <= set.jti_count() * 15);
        for cutoff in [T + 10, T + 50, T + 90, T + 98] {
            set.prune(cutoff);
            assert!(
                set.memory_bytes() <= set.jti_count() * 15,
                "{} bytes for {} entries after pruning at {cutoff}",
                set.memory_bytes(),
                set.jti_count()
            );
        }
        assert_eq!(set.jti_count(), 2000);
    }

    #[test]
    fn engine_refuses_a_revoked_token_and_follows_stale_state() {
        use crate::decision::Reason;
        use crate::engine::{Engine, Request};
        use crate::test_support::{claims, config_json, es256_token, NOW};
        use serde_json::json;

        let engine = Engine::from_json(config_json(json!({})).to_string().as_bytes()).unwrap();
        let token = es256_token(&claims()); // jti-1, sub alice, client cli-1, iat NOW - 10
        let request = Request {
            method: "GET",
            path: "/",
            token: Some(&token),
        };
        let mut state = EdgeRevocationState::new(&RevocationConfig::default(), 60);
        let d = engine.evaluate(&request, None, &state, NOW);
        assert_eq!(
            (d.reason, d.description.as_ref()),
            (
                Reason::StaleRevocationState,
                "revocation state not yet synced"
            )
        );
        state.sync(&update(1, true), NOW);
        assert_eq!(
            engine.evaluate(&request, None, &state, NOW).reason,
            Reason::Allowed
        );
        // Another issuer's alice is not this token's alice; this issuer's is.
        let alice_of = |issuer: &str| RevokedPrincipal {
            key: RevocationKey::scoped(issuer, "alice"),
            ..principal("alice", NOW - 10, NOW + 3600)
        };
        state.sync(
            &FeedUpdate {
                revoked_subjects: vec![alice_of("https://idp.example")],
                ..update(2, false)
            },
            NOW,
        );
        assert_eq!(
            engine.evaluate(&request, None, &state, NOW).reason,
            Reason::Allowed
        );
        state.sync(
            &FeedUpdate {
                revoked_subjects: vec![alice_of(crate::test_support::ISSUER)],
                ..update(3, false)
            },
            NOW,
        );
        let d = engine.evaluate(&request, None, &state, NOW);
        assert_eq!((d.reason, d.status), (Reason::Revoked, 401));
        state.sync(&update(4, true), NOW);
        state.sync(
            &FeedUpdate {
                revoked_subjects: vec![principal("alice", NOW - 10, NOW + 3600)],
                ..update(5, false)
            },
            NOW,
        );
        let d = engine.evaluate(&request, None, &state, NOW);
        assert_eq!((d.reason, d.status), (Reason::Revoked, 401));
    }
}
