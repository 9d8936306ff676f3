//! The edge snapshot: the whole revocation state at one feed cursor as compact binary pages, which the admin
//! API serves at `GET /api/v1/revocations/snapshot` and a polling VM loads on a cold start instead of the
//! JSON feed's full listing (a million revoked jtis: about 12 MB in a dozen pages instead of 60 MB of JSON in
//! forty, and no identifier string to hash at the edge). Deltas then continue from the snapshot's cursor
//! through the JSON feed.
//!
//! # Page layout (all integers little-endian)
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `EWSN` |
//! | 4 | [`SNAPSHOT_VERSION`] |
//! | 5 | key format: [`FORMAT_VERSION`] (how keys are hashed and folded) |
//! | 6..8 | reserved, zero |
//! | 8..16 | feed cursor the snapshot is consistent with (send it as `since` next) |
//! | 16..24 | the admin API's clock when it was built (Unix seconds) |
//! | 24..32 | snapshot id: a digest of every entry of every page, the same on each page |
//! | 32..36, 36..40 | page index, page count |
//! | 40..52 | jtis, subjects, clients in the whole snapshot (u32 each) |
//! | 52..64 | jtis, subjects, clients in this page (u32 each) |
//! | 64.. | the page's jtis (12 bytes: key fingerprint u64, expiry u32), then subjects and clients (32 bytes: key u128, revoked_at u64, expires_at u64) |
//! | last 16 | MurmurHash3 x64-128 of everything before it |
//!
//! The checksum catches truncation and corruption (the transport is authenticated; this is not a MAC).
//! [`SnapshotPage::parse`] checks every length, the version, the counts against each other and the checksum
//! before anything is applied, never panics, and reads entries in place: loading allocates nothing per entry.

use std::fmt::Write as _;

use super::FORMAT_VERSION;

use crate::revocation::{
    murmur3_x64_128, slot_expiry, PrincipalRevocation, RevocationKey, RevocationSet,
};

/// Version of the page layout; a page of another version is refused.
pub const SNAPSHOT_VERSION: u8 = 1;
/// Media type of a snapshot page.
pub const SNAPSHOT_CONTENT_TYPE: &str = "application/vnd.edgewarden.snapshot";
const MAGIC: [u8; 4] = *b"EWSN";
/// Fixed header before the entries.
pub const SNAPSHOT_HEADER_BYTES: usize = 64;
/// Checksum after the entries.
pub const SNAPSHOT_CHECKSUM_BYTES: usize = 16;
const JTI_BYTES: usize = 12;
const PRINCIPAL_BYTES: usize = 32;
/// Most entry bytes in one page: about 87,000 jtis, small beside Envoy's 32 MiB limit on a callout's answer,
/// and small enough that the polling VM holds one page beside the table without leaving its memory budget.
pub const SNAPSHOT_PAGE_BYTES: usize = 1 << 20;

/// Why a snapshot page was refused; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than header and checksum.
    #[error("snapshot page is {0} bytes, shorter than its header and checksum")]
    TooShort(usize),
    /// Not a snapshot page.
    #[error("snapshot page does not start with the EWSN magic")]
    BadMagic,
    /// Another page layout.
    #[error("snapshot page has version {0}, this build reads version {SNAPSHOT_VERSION}")]
    UnsupportedVersion(u8),
    /// Keys hashed another way.
    #[error("snapshot page has key format {0}, this build reads key format {FORMAT_VERSION}")]
    UnsupportedKeyFormat(u8),
    /// Header fields that contradict each other.
    #[error("snapshot page header is invalid: {0}")]
    BadHeader(&'static str),
    /// The counts do not add up to the page's length.
    #[error("snapshot page is {actual} bytes but its header describes {expected}")]
    LengthMismatch {
        /// Length the counts imply.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// Altered or cut short in transit.
    #[error("snapshot page checksum mismatch")]
    Checksum,
    /// A jti with expiry 0, which the encoder never writes.
    #[error("snapshot page entry {0} of the jti list has expiry 0")]
    BadEntry(usize),
    /// A page of another snapshot, or out of order.
    #[error("snapshot page {page} of snapshot {id:016x} does not follow page {expected} of snapshot {expected_id:016x}")]
    OutOfSequence {
        /// Page received.
        page: u32,
        /// Its snapshot.
        id: u64,
        /// Page expected.
        expected: u32,
        /// Snapshot expected.
        expected_id: u64,
    },
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut out = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        out.copy_from_slice(src);
    }
    u32::from_le_bytes(out)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut out = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        out.copy_from_slice(src);
    }
    u64::from_le_bytes(out)
}

fn u128_at(bytes: &[u8], at: usize) -> u128 {
    let mut out = [0u8; 16];
    if let Some(src) = bytes.get(at..at + 16) {
        out.copy_from_slice(src);
    }
    u128::from_le_bytes(out)
}

/// Counts of the three kinds of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotCounts {
    /// Revoked jtis.
    pub jtis: u32,
    /// Revoked subjects.
    pub subjects: u32,
    /// Revoked clients.
    pub clients: u32,
}

impl SnapshotCounts {
    fn at(bytes: &[u8], at: usize) -> SnapshotCounts {
        SnapshotCounts {
            jtis: u32_at(bytes, at),
            subjects: u32_at(bytes, at + 4),
            clients: u32_at(bytes, at + 8),
        }
    }
}

/// One verified page: header fields, and its entries read in place.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPage<'a> {
    /// Feed cursor of the snapshot.
    pub cursor: u64,
    /// The admin API's clock when it was built.
    pub now: u64,
    /// The snapshot's id (ask for the next page with it).
    pub id: u64,
    /// This page's index.
    pub page: u32,
    /// Pages in the snapshot.
    pub pages: u32,
    /// Entries in the whole snapshot.
    pub totals: SnapshotCounts,
    /// Entries in this page.
    pub counts: SnapshotCounts,
    entries: &'a [u8],
}

impl<'a> SnapshotPage<'a> {
    /// Verifies a page: magic, versions, header consistency, length and checksum, and that no jti has
    /// expiry 0. Refuses anything else with the reason.
    pub fn parse(bytes: &'a [u8]) -> Result<SnapshotPage<'a>, SnapshotError> {
        let min = SNAPSHOT_HEADER_BYTES + SNAPSHOT_CHECKSUM_BYTES;
        if bytes.len() < min {
            return Err(SnapshotError::TooShort(bytes.len()));
        }
        if bytes.get(..4) != Some(&MAGIC[..]) {
            return Err(SnapshotError::BadMagic);
        }
        let version = bytes.get(4).copied().unwrap_or(0);
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let key_format = bytes.get(5).copied().unwrap_or(0);
        if key_format != FORMAT_VERSION {
            return Err(SnapshotError::UnsupportedKeyFormat(key_format));
        }
        if bytes.get(6..8) != Some(&[0, 0][..]) {
            return Err(SnapshotError::BadHeader("reserved bytes are not zero"));
        }
        let page = u32_at(bytes, 32);
        let pages = u32_at(bytes, 36);
        let totals = SnapshotCounts::at(bytes, 40);
        let counts = SnapshotCounts::at(bytes, 52);
        if page >= pages {
            return Err(SnapshotError::BadHeader("page index past the page count"));
        }
        if counts.jtis > totals.jtis
            || counts.subjects > totals.subjects
            || counts.clients > totals.clients
        {
            return Err(SnapshotError::BadHeader(
                "a page holds more entries than the snapshot",
            ));
        }
        // u32 counts times at most 32 bytes cannot overflow u64.
        let expected = min as u64
            + u64::from(counts.jtis) * JTI_BYTES as u64
            + (u64::from(counts.subjects) + u64::from(counts.clients)) * PRINCIPAL_BYTES as u64;
        if expected != bytes.len() as u64 {
            return Err(SnapshotError::LengthMismatch {
                expected,
                actual: bytes.len() as u64,
            });
        }
        let (covered, trailer) = bytes.split_at(bytes.len() - SNAPSHOT_CHECKSUM_BYTES);
        if u128_at(trailer, 0) != murmur3_x64_128(covered) {
            return Err(SnapshotError::Checksum);
        }
        let snapshot = SnapshotPage {
            cursor: u64_at(bytes, 8),
            now: u64_at(bytes, 16),
            id: u64_at(bytes, 24),
            page,
            pages,
            totals,
            counts,
            entries: covered.get(SNAPSHOT_HEADER_BYTES..).unwrap_or_default(),
        };
        if let Some(index) = snapshot.jtis().position(|(_, exp)| exp == 0) {
            return Err(SnapshotError::BadEntry(index));
        }
        Ok(snapshot)
    }

    /// Whether this is the snapshot's last page.
    pub fn is_last(&self) -> bool {
        self.page.saturating_add(1) >= self.pages
    }

    /// The page's jtis: key and expiry.
    pub fn jtis(&self) -> impl Iterator<Item = (RevocationKey, u32)> + 'a {
        let end = (self.counts.jtis as usize)
            .saturating_mul(JTI_BYTES)
            .min(self.entries.len());
        self.entries
            .get(..end)
            .unwrap_or_default()
            .chunks_exact(JTI_BYTES)
            .map(|chunk| {
                (
                    RevocationKey::from_fingerprint(u64_at(chunk, 0)),
                    u32_at(chunk, 8),
                )
            })
    }

    /// The page's subjects then clients, each flagged `true` when it is a subject.
    pub fn principals(
        &self,
    ) -> impl Iterator<Item = (bool, RevocationKey, PrincipalRevocation)> + 'a {
        let start = (self.counts.jtis as usize)
            .saturating_mul(JTI_BYTES)
            .min(self.entries.len());
        let subjects = self.counts.subjects as usize;
        self.entries
            .get(start..)
            .unwrap_or_default()
            .chunks_exact(PRINCIPAL_BYTES)
            .enumerate()
            .map(move |(index, chunk)| {
                (
                    index < subjects,
                    RevocationKey(u128_at(chunk, 0)),
                    PrincipalRevocation {
                        revoked_at: u64_at(chunk, 16),
                        expires_at: u64_at(chunk, 24),
                    },
                )
            })
    }

    /// A state sized for the whole snapshot (the totals are capped like any sizing hint from outside:
    /// [`RevocationSet::with_capacity`]), to load this page and the following ones into.
    pub fn new_set(&self) -> RevocationSet {
        let size = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        RevocationSet::with_capacity(
            size(self.totals.jtis),
            size(self.totals.subjects),
            size(self.totals.clients),
        )
    }

    /// Whether `self` is the page that follows `previous` of the same snapshot.
    pub fn check_follows(&self, previous: &SnapshotProgress) -> Result<(), SnapshotError> {
        let same = self.id == previous.id
            && self.cursor == previous.cursor
            && self.now == previous.now
            && self.pages == previous.pages
            && self.totals == previous.totals;
        if same && self.page == previous.next_page {
            Ok(())
        } else {
            Err(SnapshotError::OutOfSequence {
                page: self.page,
                id: self.id,
                expected: previous.next_page,
                expected_id: previous.id,
            })
        }
    }

    /// Inserts the page's entries into `set`; on the last page, sets the set's cursor and clock to the
    /// snapshot's. Allocates nothing per entry (the set was sized for the totals by [`SnapshotPage::new_set`]).
    pub fn apply_to(&self, set: &mut RevocationSet) {
        for (key, exp) in self.jtis() {
            set.insert_jti(key, u64::from(exp));
        }
        for (is_subject, key, revocation) in self.principals() {
            if is_subject {
                set.insert_subject(key, revocation);
            } else {
                set.insert_client(key, revocation);
            }
        }
        if self.is_last() {
            set.set_position(self.cursor, self.now);
        }
    }

    /// Where a listing stands after this page.
    pub fn progress(&self) -> SnapshotProgress {
        SnapshotProgress {
            id: self.id,
            cursor: self.cursor,
            now: self.now,
            pages: self.pages,
            totals: self.totals,
            next_page: self.page.saturating_add(1),
        }
    }
}

/// How far an edge has come through one snapshot's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// The snapshot's id.
    pub id: u64,
    /// Its cursor.
    pub cursor: u64,
    /// Its clock.
    pub now: u64,
    /// Its page count.
    pub pages: u32,
    /// Its entry counts.
    pub totals: SnapshotCounts,
    /// The page to ask for next.
    pub next_page: u32,
}

impl SnapshotProgress {
    /// The query string that asks for the next page: `page`, `id` (hex), `cursor` and `now`, with which any
    /// replica can rebuild the same snapshot.
    pub fn next_query(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "page={}&id={:016x}&cursor={}&now={}",
            self.next_page, self.id, self.cursor, self.now
        );
        out
    }
}

/// Builds a snapshot from the store's rows (admin API side): entries are hashed as they are added, so only
/// 12 bytes a jti are held, then sorted by key so the same rows always give the same pages and id.
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    jtis: Vec<(u64, u32)>,
    subjects: Vec<(u128, u64, u64)>,
    clients: Vec<(u128, u64, u64)>,
}

impl SnapshotBuilder {
    /// An empty builder.
    pub fn new() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    /// Adds a revoked jti of `issuer` ('' or `None`: every issuer) expiring at `exp`.
    pub fn jti(&mut self, issuer: Option<&str>, value: &str, exp: u64) {
        let key = RevocationKey::of_entry(issuer.filter(|i| !i.is_empty()), value);
        self.jtis.push((key.fingerprint(), slot_expiry(exp)));
    }

    /// Adds a revoked subject (`subject` true) or client.
    pub fn principal(
        &mut self,
        subject: bool,
        issuer: Option<&str>,
        value: &str,
        revocation: PrincipalRevocation,
    ) {
        let key = RevocationKey::of_entry(issuer.filter(|i| !i.is_empty()), value).0;
        let entry = (key, revocation.revoked_at, revocation.expires_at);
        if subject {
            self.subjects.push(entry);
        } else {
            self.clients.push(entry);
        }
    }

    /// Encodes the snapshot at `cursor` and `now` as pages of at most `page_bytes` entry bytes (at least one
    /// entry a page; one empty page for an empty state). Two entries whose keys fold to the same fingerprint
    /// become one that refuses for as long as either would (the later expiry, the later revocation time).
    pub fn finish(mut self, cursor: u64, now: u64, page_bytes: usize) -> Vec<Vec<u8>> {
        self.jtis.sort_unstable();
        self.jtis.dedup_by(|later, kept| {
            if later.0 == kept.0 {
                kept.1 = kept.1.max(later.1);
                true
            } else {
                false
            }
        });
        for list in [&mut self.subjects, &mut self.clients] {
            list.sort_unstable();
            list.dedup_by(|later, kept| {
                if later.0 == kept.0 {
                    kept.1 = kept.1.max(later.1);
                    kept.2 = kept.2.max(later.2);
                    true
                } else {
                    false
                }
            });
        }
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.jtis.truncate(u32::MAX as usize);
        self.subjects.truncate(u32::MAX as usize);
        self.clients.truncate(u32::MAX as usize);
        let totals = SnapshotCounts {
            jtis: clamp(self.jtis.len()),
            subjects: clamp(self.subjects.len()),
            clients: clamp(self.clients.len()),
        };
        // Entries in order, each with the list it belongs to (0 jti, 1 subject, 2 client).
        let mut id_input = Vec::with_capacity(
            self.jtis.len() * JTI_BYTES
                + (self.subjects.len() + self.clients.len()) * PRINCIPAL_BYTES
                + 16,
        );
        id_input.extend_from_slice(&cursor.to_le_bytes());
        id_input.extend_from_slice(&now.to_le_bytes());
        for (key, exp) in &self.jtis {
            id_input.extend_from_slice(&key.to_le_bytes());
            id_input.extend_from_slice(&exp.to_le_bytes());
        }
        for (key, revoked_at, expires_at) in self.subjects.iter().chain(&self.clients) {
            id_input.extend_from_slice(&key.to_le_bytes());
            id_input.extend_from_slice(&revoked_at.to_le_bytes());
            id_input.extend_from_slice(&expires_at.to_le_bytes());
        }
        let id = murmur3_x64_128(&id_input) as u64;
        let entries = id_input.get(16..).unwrap_or_default();
        // Cut the entry bytes into pages at entry boundaries.
        let jti_bytes = self.jtis.len() * JTI_BYTES;
        let subject_end = jti_bytes + self.subjects.len() * PRINCIPAL_BYTES;
        let mut cuts = vec![0usize];
        let mut at = 0;
        while at < entries.len() {
            let mut end = at;
            while end < entries.len() {
                let size = if end < jti_bytes {
                    JTI_BYTES
                } else {
                    PRINCIPAL_BYTES
                };
                if end > at && end + size - at > page_bytes {
                    break;
                }
                end += size;
            }
            cuts.push(end);
            at = end;
        }
        if cuts.len() == 1 {
            cuts.push(0);
        }
        let pages = clamp(cuts.len() - 1);
        let count = |from: usize, to: usize, lo: usize, hi: usize, size: usize| {
            let (a, b) = (from.clamp(lo, hi), to.clamp(lo, hi));
            clamp((b - a) / size)
        };
        cuts.windows(2)
            .enumerate()
            .filter_map(|(index, window)| {
                let &[from, to] = window else {
                    return None;
                };
                let counts = SnapshotCounts {
                    jtis: count(from, to, 0, jti_bytes, JTI_BYTES),
                    subjects: count(from, to, jti_bytes, subject_end, PRINCIPAL_BYTES),
                    clients: count(from, to, subject_end, entries.len(), PRINCIPAL_BYTES),
                };
                let mut page = Vec::with_capacity(
                    SNAPSHOT_HEADER_BYTES + (to - from) + SNAPSHOT_CHECKSUM_BYTES,
                );
                page.extend_from_slice(&MAGIC);
                page.push(SNAPSHOT_VERSION);
                page.push(FORMAT_VERSION);
                page.extend_from_slice(&[0, 0]);
                page.extend_from_slice(&cursor.to_le_bytes());
                page.extend_from_slice(&now.to_le_bytes());
                page.extend_from_slice(&id.to_le_bytes());
                page.extend_from_slice(&clamp(index).to_le_bytes());
                page.extend_from_slice(&pages.to_le_bytes());
                for c in [totals, counts] {
                    page.extend_from_slice(&c.jtis.to_le_bytes());
                    page.extend_from_slice(&c.subjects.to_le_bytes());
                    page.extend_from_slice(&c.clients.to_le_bytes());
                }
                page.extend_from_slice(entries.get(from..to).unwrap_or_default());
                let checksum = murmur3_x64_128(&page);
                page.extend_from_slice(&checksum.to_le_bytes());
                Some(page)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(jtis: u32, subjects: u32, page_bytes: usize) -> Vec<Vec<u8>> {
        let mut b = SnapshotBuilder::new();
        for i in 0..jtis {
            b.jti(Some("https://issuer"), &format!("jti-{i}"), 4_000_000_000);
        }
        for i in 0..subjects {
            b.principal(
                true,
                None,
                &format!("sub-{i}"),
                PrincipalRevocation {
                    revoked_at: 100,
                    expires_at: 4_000_000_000,
                },
            );
        }
        b.principal(
            false,
            Some("https://issuer"),
            "client-1",
            PrincipalRevocation {
                revoked_at: 200,
                expires_at: 4_000_000_000,
            },
        );
        b.finish(42, 1_700_000_000, page_bytes)
    }

    fn load(pages: &[Vec<u8>]) -> Result<RevocationSet, SnapshotError> {
        let first = SnapshotPage::parse(&pages[0])?;
        let mut set = first.new_set();
        first.apply_to(&mut set);
        let mut progress = first.progress();
        for bytes in &pages[1..] {
            let page = SnapshotPage::parse(bytes)?;
            page.check_follows(&progress)?;
            page.apply_to(&mut set);
            progress = page.progress();
        }
        Ok(set)
    }

    #[test]
    fn pages_round_trip_into_the_state_the_json_feed_would_give() {
        let pages = build(10_000, 50, 12 * 1000);
        assert!(pages.len() > 5, "{} pages", pages.len());
        let set = load(&pages).unwrap();
        assert_eq!(set.jti_count(), 10_000);
        assert_eq!(set.subject_count(), 50);
        assert_eq!(set.client_count(), 1);
        assert_eq!(set.cursor(), 42);
        assert_eq!(set.feed_now(), 1_700_000_000);
        assert!(set
            .jti_key_expiry(RevocationKey::scoped("https://issuer", "jti-9999"))
            .is_some());
        assert!(set.jti_key_expiry(RevocationKey::of("jti-9999")).is_none());
        assert!(set.subject("sub-7").is_some());
        assert!(
            set.client("client-1").is_none(),
            "the client was revoked for one issuer only"
        );
    }

    #[test]
    fn an_empty_state_is_one_page() {
        let pages = SnapshotBuilder::new().finish(7, 1, SNAPSHOT_PAGE_BYTES);
        assert_eq!(pages.len(), 1);
        let page = SnapshotPage::parse(&pages[0]).unwrap();
        assert!(page.is_last());
        let set = load(&pages).unwrap();
        assert!(set.is_empty());
        assert_eq!(set.cursor(), 7);
    }

    #[test]
    fn the_same_rows_give_the_same_id_in_any_order() {
        let mut a = SnapshotBuilder::new();
        let mut b = SnapshotBuilder::new();
        for i in 0..100 {
            a.jti(None, &format!("j{i}"), 1000 + i);
            b.jti(None, &format!("j{}", 99 - i), 1000 + 99 - i);
        }
        assert_eq!(a.finish(1, 2, 600), b.finish(1, 2, 600));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let pages = build(100, 3, SNAPSHOT_PAGE_BYTES);
        let page = &pages[0];
        for at in [0, 4, 5, 8, 30, 40, 52, 64, 70, page.len() - 1] {
            let mut bad = page.clone();
            bad[at] ^= 0x01;
            assert!(SnapshotPage::parse(&bad).is_err(), "bit at {at}");
        }
    }

    #[test]
    fn bad_checksum_truncation_version_and_huge_counts_are_refused() {
        let pages = build(100, 0, SNAPSHOT_PAGE_BYTES);
        let good = &pages[0];
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(
            SnapshotPage::parse(&bad).unwrap_err(),
            SnapshotError::Checksum
        );
        for len in [0, 10, 63, 79, good.len() - 1] {
            assert!(SnapshotPage::parse(&good[..len]).is_err(), "len {len}");
        }
        let mut version = good.clone();
        version[4] = 2;
        assert_eq!(
            SnapshotPage::parse(&version).unwrap_err(),
            SnapshotError::UnsupportedVersion(2)
        );
        let mut keys = good.clone();
        keys[5] = 3;
        assert_eq!(
            SnapshotPage::parse(&keys).unwrap_err(),
            SnapshotError::UnsupportedKeyFormat(3)
        );
        // Huge counts, header otherwise consistent and re-checksummed: refused on length, never allocated.
        let mut huge = good.clone();
        huge[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[52..56].copy_from_slice(&u32::MAX.to_le_bytes());
        let body = huge.len() - 16;
        let sum = murmur3_x64_128(&huge[..body]);
        huge[body..].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            SnapshotPage::parse(&huge).unwrap_err(),
            SnapshotError::LengthMismatch { .. }
        ));
        // Huge totals with an honest page: accepted, and sizing is capped.
        let mut totals = good.clone();
        totals[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        let sum = murmur3_x64_128(&totals[..body]);
        totals[body..].copy_from_slice(&sum.to_le_bytes());
        let page = SnapshotPage::parse(&totals).unwrap();
        let set = page.new_set();
        assert!(set.jti_capacity() <= crate::revocation::MAX_PRESIZED_ENTRIES * 2);
    }

    #[test]
    fn pages_of_another_snapshot_or_out_of_order_are_refused() {
        let a = build(1000, 0, 1200);
        let b = build(999, 0, 1200);
        let first = SnapshotPage::parse(&a[0]).unwrap();
        let progress = first.progress();
        let other = SnapshotPage::parse(&b[1]).unwrap();
        assert!(other.check_follows(&progress).is_err());
        let skipped = SnapshotPage::parse(&a[2]).unwrap();
        assert!(skipped.check_follows(&progress).is_err());
        let next = SnapshotPage::parse(&a[1]).unwrap();
        assert!(next.check_follows(&progress).is_ok());
        assert!(progress.next_query().starts_with("page=1&id="));
    }

    #[test]
    fn colliding_fingerprints_keep_the_later_expiry() {
        let mut b = SnapshotBuilder::new();
        b.jti(None, "same", 500);
        b.jti(None, "same", 900);
        b.jti(None, "same", 700);
        let pages = b.finish(1, 1, SNAPSHOT_PAGE_BYTES);
        let set = load(&pages).unwrap();
        assert_eq!(set.jti_count(), 1);
        assert_eq!(set.jti_expiry("same"), Some(900));
    }
}
