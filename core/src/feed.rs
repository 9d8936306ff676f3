//! The revocation feed as the edge reads it, and the binary form in which one VM hands state to the others.
//! [`FeedUpdate::from_json`] parses the admin API's `GET /api/v1/revocations/feed` answer, hashing every
//! `jti`, subject and client id on the way in so no identifier string outlives parsing. [`RevocationSet::to_bytes`]
//! and [`FeedUpdate::to_bytes`] encode a whole state or a delta as flat little-endian records for proxy-wasm
//! shared data (12 bytes a revoked jti: its key's 64-bit fingerprint and expiry, so a million-entry snapshot is
//! about 12 MB, not 60 MB of JSON);
//! decoding checks every length and a checksum, and never panics or half-applies on any input.
//!
//! # Sharing state between worker VMs (what the filter is expected to do)
//! - The one polling VM keeps an [`EdgeRevocationState`](crate::revocation::EdgeRevocationState), syncs it
//!   with each answer, and publishes: the snapshot ([`RevocationSet::to_bytes`]) after a full answer and every
//!   so many deltas, each changing answer as a delta record ([`FeedUpdate::to_bytes`] with the `since` it polled with), and after every
//!   successful poll, changed or not, a [`SyncMark`] (40 bytes: cursor, last sync time, the sequence number
//!   of the newest change and that of the published snapshot).
//! - Deltas go into a small ring of shared-data slots indexed by their sequence number, so a VM that missed a
//!   few ticks can still catch up delta by delta; the snapshot is republished often enough that the deltas after
//!   it are always still in the ring.
//! - Every other VM reads only the mark on its tick; when the mark's sequence differs from its own, it offers
//!   the missing deltas to [`RevocationSet::apply_bytes`] in order, and on [`DecodeError::WrongBase`] (or a slot
//!   already overwritten) loads the snapshot instead. It copies the mark's `last_sync` into its own state, so
//!   staleness is the poller's.
//! - A record's key format is versioned ([`FORMAT_VERSION`]): VMs running another build refuse it rather than
//!   misread it.

use std::borrow::Cow;

pub mod snapshot;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

use crate::revocation::{
    murmur3_x64_128, slot_expiry, PrincipalRevocation, RevocationKey, RevocationSet,
};

/// One answer of the revocation feed, with identifiers already reduced to [`RevocationKey`]s.
///
/// Parsing is strict about what it reads and tolerant of what it does not know: every documented field must be
/// present with its JSON type (`cursor`, `now`, `exp`, `revoked_at`, `expires_at` non-negative integers up to
/// 2^64-1, `full` a boolean, identifiers and the optional `iss` of an entry non-empty strings; no floats, no nulls,
/// no repeated keys), while unknown fields, at the top or inside an entry, are ignored so the admin API can add
/// some without breaking old edges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeedUpdate {
    /// What to send as `since` next time.
    pub cursor: u64,
    /// Whether this is a full snapshot that replaces the state (otherwise a delta to merge).
    pub full: bool,
    /// The control plane's clock when it answered (Unix seconds).
    pub now: u64,
    /// Revoked tokens by `jti`.
    pub revoked_jtis: Vec<RevokedJti>,
    /// Revoked subjects.
    pub revoked_subjects: Vec<RevokedPrincipal>,
    /// Revoked clients.
    pub revoked_clients: Vec<RevokedPrincipal>,
    /// In a paged listing (`limit=`), the continuation to send as `after=` for the next page; `None` on the
    /// last page and in unpaged answers.
    pub next: Option<String>,
    /// On the first page of a paged listing: how many entries the whole listing has.
    pub total: Option<FeedTotals>,
}

/// Entry counts of a whole paged listing, so the edge can size its table once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct FeedTotals {
    /// Revoked jtis.
    pub jtis: u64,
    /// Revoked subjects.
    pub subjects: u64,
    /// Revoked clients.
    pub clients: u64,
}

/// Longest continuation accepted from the feed (the admin API's are far shorter).
const MAX_CONTINUATION_BYTES: usize = 4096;

/// The answer as it arrives; every object goes through [`Strict`] so a JSON array never stands in for one.
#[derive(Deserialize)]
struct RawFeed {
    cursor: u64,
    full: bool,
    now: u64,
    revoked_jtis: Vec<Strict<RevokedJti>>,
    revoked_subjects: Vec<Strict<SubjectEntry>>,
    revoked_clients: Vec<Strict<ClientEntry>>,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    total: Option<Strict<FeedTotals>>,
}

/// Accepts `T` only from a JSON object: serde's derived structs also take a positional array
/// (`[42, false, ...]`), which the feed never sends and which would read fields by position.
struct Strict<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Strict<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict<T>, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(Strict)
    }
}

/// A revoked token: the key of its `jti` (scoped to its issuer when the entry names one) and its `exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedJti {
    /// [`RevocationKey::of_entry`] of the entry's `iss` (optional) and `jti`.
    pub key: RevocationKey,
    /// Unix seconds after which the token has expired.
    pub exp: u64,
}

/// A revoked subject or client: the key of its name (scoped to its issuer when the entry names one) and the
/// revocation window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedPrincipal {
    /// [`RevocationKey::of_entry`] of the entry's `iss` (optional) and subject or client id.
    pub key: RevocationKey,
    /// When it was revoked and when the last token it covers expires.
    pub revocation: PrincipalRevocation,
}

/// A jti entry as it arrives: `{"jti", "exp", "iss"?}`. The strings are borrowed from the body where JSON
/// escapes allow and live only until the entry is hashed.
#[derive(Deserialize)]
struct RawJti<'a> {
    #[serde(borrow)]
    jti: Identifier<'a>,
    exp: u64,
    #[serde(default, borrow, deserialize_with = "present")]
    iss: Option<Identifier<'a>>,
}

impl<'de> Deserialize<'de> for RevokedJti {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RevokedJti, D::Error> {
        let raw = RawJti::deserialize(d)?;
        Ok(RevokedJti {
            key: entry_key(raw.iss.as_ref(), &raw.jti),
            exp: raw.exp,
        })
    }
}

/// A subject entry as it arrives: `{"subject", "revoked_at", "expires_at", "iss"?}`.
#[derive(Deserialize)]
struct RawSubject<'a> {
    #[serde(borrow)]
    subject: Identifier<'a>,
    revoked_at: u64,
    expires_at: u64,
    #[serde(default, borrow, deserialize_with = "present")]
    iss: Option<Identifier<'a>>,
}

/// A client entry as it arrives: `{"client_id", "revoked_at", "expires_at", "iss"?}`.
#[derive(Deserialize)]
struct RawClient<'a> {
    #[serde(borrow)]
    client_id: Identifier<'a>,
    revoked_at: u64,
    expires_at: u64,
    #[serde(default, borrow, deserialize_with = "present")]
    iss: Option<Identifier<'a>>,
}

/// A revoked subject, hashed as soon as its entry is read.
struct SubjectEntry(RevokedPrincipal);

impl<'de> Deserialize<'de> for SubjectEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SubjectEntry, D::Error> {
        let raw = RawSubject::deserialize(d)?;
        Ok(SubjectEntry(RevokedPrincipal {
            key: entry_key(raw.iss.as_ref(), &raw.subject),
            revocation: PrincipalRevocation {
                revoked_at: raw.revoked_at,
                expires_at: raw.expires_at,
            },
        }))
    }
}

/// A revoked client, hashed as soon as its entry is read.
struct ClientEntry(RevokedPrincipal);

impl<'de> Deserialize<'de> for ClientEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ClientEntry, D::Error> {
        let raw = RawClient::deserialize(d)?;
        Ok(ClientEntry(RevokedPrincipal {
            key: entry_key(raw.iss.as_ref(), &raw.client_id),
            revocation: PrincipalRevocation {
                revoked_at: raw.revoked_at,
                expires_at: raw.expires_at,
            },
        }))
    }
}

fn entry_key(issuer: Option<&Identifier<'_>>, value: &Identifier<'_>) -> RevocationKey {
    RevocationKey::of_entry(issuer.map(|issuer| issuer.0.as_ref()), &value.0)
}

/// A non-empty JSON string (an identifier or an issuer); the string itself is never echoed in an error.
struct Identifier<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Identifier<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Identifier<'a>, D::Error> {
        struct IdentifierVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl IdentifierVisitor<'_> {
            fn check<E: de::Error>(&self, value: &str) -> Result<(), E> {
                if value.is_empty() {
                    return Err(E::invalid_value(Unexpected::Str(""), self));
                }
                Ok(())
            }
        }
        impl<'de: 'a, 'a> Visitor<'de> for IdentifierVisitor<'a> {
            type Value = Identifier<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a non-empty string")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                self.check(value)?;
                Ok(Identifier(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                self.check(value)?;
                Ok(Identifier(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                self.check(&value)?;
                Ok(Identifier(Cow::Owned(value)))
            }
        }
        d.deserialize_str(IdentifierVisitor(std::marker::PhantomData))
    }
}

/// An optional field that, when present, must hold its type: `"iss": null` is refused like any other null.
fn present<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Identifier<'a>>, D::Error> {
    Identifier::deserialize(d).map(Some)
}

/// Why a feed answer was refused; the state it was meant for is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// The body is not JSON, or a field is missing, repeated or of the wrong type.
    #[error("revocation feed answer is invalid at {path}: {message}")]
    Invalid {
        /// Where in the document (`revoked_jtis[3].exp`, `.` for the top level).
        path: String,
        /// What is wrong, from the JSON parser.
        message: String,
    },
}

impl FeedUpdate {
    /// Parses a feed answer body. Errors name the offending field (`revoked_jtis[3].exp`) and say what was wrong
    /// in serde's words; a well-formed identifier is never echoed (an empty one is refused as such), though a value
    /// of the wrong type is quoted, as serde does.
    pub fn from_json(bytes: &[u8]) -> Result<FeedUpdate, FeedError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: Strict<RawFeed> =
            serde_path_to_error::deserialize(&mut de).map_err(|e| FeedError::Invalid {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        de.end().map_err(|e| FeedError::Invalid {
            path: ".".to_string(),
            message: e.to_string(),
        })?;
        let raw = raw.0;
        if let Some(next) = &raw.next {
            if next.is_empty() || next.len() > MAX_CONTINUATION_BYTES {
                return Err(FeedError::Invalid {
                    path: "next".to_string(),
                    message: format!(
                        "a continuation must be 1 to {MAX_CONTINUATION_BYTES} bytes, got {}",
                        next.len()
                    ),
                });
            }
        }
        Ok(FeedUpdate {
            next: raw.next,
            total: raw.total.map(|t| t.0),
            cursor: raw.cursor,
            full: raw.full,
            now: raw.now,
            // Same layout in and out, so these collect in place rather than copying a million entries.
            revoked_jtis: raw.revoked_jtis.into_iter().map(|e| e.0).collect(),
            revoked_subjects: raw.revoked_subjects.into_iter().map(|e| e.0 .0).collect(),
            revoked_clients: raw.revoked_clients.into_iter().map(|e| e.0 .0).collect(),
        })
    }

    /// Whether the answer changes nothing (a delta with empty lists).
    pub fn is_empty_delta(&self) -> bool {
        !self.full
            && self.revoked_jtis.is_empty()
            && self.revoked_subjects.is_empty()
            && self.revoked_clients.is_empty()
    }

    /// Encodes the update for shared data: a full snapshot as such, a delta tagged with `base_cursor`, the cursor
    /// of the state it applies to (the `since` it was polled with), so a VM at another cursor refuses it.
    /// A jti expiry is clamped to 1..=2^32-1 as the table stores it.
    pub fn to_bytes(&self, base_cursor: u64) -> Vec<u8> {
        let kind = if self.full { Kind::Full } else { Kind::Delta };
        let base = if self.full { 0 } else { base_cursor };
        let mut writer = Writer::new(
            kind,
            base,
            self.cursor,
            self.now,
            [
                self.revoked_jtis.len(),
                self.revoked_subjects.len(),
                self.revoked_clients.len(),
            ],
        );
        for entry in self.revoked_jtis.iter().take(writer.counts[0]) {
            writer.jti(entry.key, slot_expiry(entry.exp));
        }
        for entry in self.revoked_subjects.iter().take(writer.counts[1]) {
            writer.principal(entry.key, entry.revocation);
        }
        for entry in self.revoked_clients.iter().take(writer.counts[2]) {
            writer.principal(entry.key, entry.revocation);
        }
        writer.finish()
    }

    /// Decodes what [`FeedUpdate::to_bytes`] (or [`RevocationSet::to_bytes`]) produced.
    pub fn from_bytes(bytes: &[u8]) -> Result<EncodedUpdate, DecodeError> {
        let record = Record::parse(bytes)?;
        let update = FeedUpdate::from_record(&record);
        Ok(EncodedUpdate {
            base_cursor: record.base_cursor,
            update,
        })
    }
}

impl FeedUpdate {
    fn from_record(record: &Record<'_>) -> FeedUpdate {
        let mut update = FeedUpdate {
            cursor: record.cursor,
            full: record.kind == Kind::Full,
            now: record.now,
            revoked_jtis: Vec::with_capacity(record.counts[0]),
            revoked_subjects: Vec::with_capacity(record.counts[1]),
            revoked_clients: Vec::with_capacity(record.counts[2]),
            next: None,
            total: None,
        };
        update
            .revoked_jtis
            .extend(record.jtis().map(|(key, exp)| RevokedJti { key, exp }));
        for (is_subject, key, revocation) in record.principals() {
            let list = if is_subject {
                &mut update.revoked_subjects
            } else {
                &mut update.revoked_clients
            };
            list.push(RevokedPrincipal { key, revocation });
        }
        update
    }
}

/// A decoded binary record: the update and, for a delta, the cursor of the state it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedUpdate {
    /// Cursor the delta applies to (0 for a full snapshot).
    pub base_cursor: u64,
    /// The update itself.
    pub update: FeedUpdate,
}

/// Why binary revocation state was refused; the state it was meant for is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the fixed header and trailer.
    #[error("revocation state is {len} bytes, shorter than the {min}-byte header and checksum")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Minimum size of a record.
        min: usize,
    },
    /// Not a revocation record at all.
    #[error("revocation state does not start with the EWRV magic")]
    BadMagic,
    /// Written by a newer or older encoder.
    #[error("revocation state has format version {0}, this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion(u8),
    /// Header fields outside their allowed values.
    #[error("revocation state header is invalid: {0}")]
    BadHeader(String),
    /// The entry counts do not add up to the record's length.
    #[error("revocation state is {actual} bytes but its header describes {expected}")]
    LengthMismatch {
        /// Length the header's counts imply.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The bytes were altered after encoding.
    #[error("revocation state checksum mismatch (stored {stored:016x}, computed {computed:016x})")]
    Checksum {
        /// Checksum in the trailer.
        stored: u64,
        /// Checksum of the bytes received.
        computed: u64,
    },
    /// An entry that the encoder never writes.
    #[error("revocation state entry {index} of the jti list has expiry 0")]
    BadEntry {
        /// Position in the jti list.
        index: usize,
    },
    /// A delta for another starting point: load the full snapshot instead.
    #[error("revocation delta applies to cursor {base} but the state is at cursor {have}")]
    WrongBase {
        /// Cursor the delta was made against.
        base: u64,
        /// Cursor of the state it was offered to.
        have: u64,
    },
}

/// Version of the binary record layout (and of [`RevocationKey`]'s hash functions): bump on any change.
/// Version 3 has version 2's layout, but its keys may be issuer-scoped ([`RevocationKey::scoped`]), which a
/// build that reads version 2 would never look up: it refuses them and fails stale, not open. Version 4 carries
/// a jti as its key's 64-bit fingerprint ([`RevocationKey::fingerprint`]), which a version 3 reader would take
/// for a whole key and never match: refused as well.
pub const FORMAT_VERSION: u8 = 4;
const MAGIC: [u8; 4] = *b"EWRV";
/// magic 4, version 1, kind 1, reserved 2, base cursor 8, cursor 8, now 8, three u32 counts.
const HEADER_BYTES: usize = 44;
const CHECKSUM_BYTES: usize = 8;
/// Key fingerprint 8 bytes and expiry u32.
const JTI_BYTES: usize = 12;
/// Key 16 bytes, revoked_at u64, expires_at u64.
const PRINCIPAL_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Full = 0,
    Delta = 1,
}

struct Writer {
    bytes: Vec<u8>,
    counts: [usize; 3],
}

impl Writer {
    fn new(kind: Kind, base: u64, cursor: u64, now: u64, counts: [usize; 3]) -> Writer {
        // Counts are u32 on the wire; four billion entries would not fit in a worker anyway.
        let counts = counts.map(|n| n.min(u32::MAX as usize));
        let size = HEADER_BYTES
            + counts[0] * JTI_BYTES
            + (counts[1] + counts[2]) * PRINCIPAL_BYTES
            + CHECKSUM_BYTES;
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.push(kind as u8);
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&base.to_le_bytes());
        bytes.extend_from_slice(&cursor.to_le_bytes());
        bytes.extend_from_slice(&now.to_le_bytes());
        for count in counts {
            bytes.extend_from_slice(&(count as u32).to_le_bytes());
        }
        Writer { bytes, counts }
    }

    fn jti(&mut self, key: RevocationKey, exp: u32) {
        self.bytes
            .extend_from_slice(&key.fingerprint().to_le_bytes());
        self.bytes.extend_from_slice(&exp.to_le_bytes());
    }

    fn principal(&mut self, key: RevocationKey, revocation: PrincipalRevocation) {
        self.bytes.extend_from_slice(&key.0.to_le_bytes());
        self.bytes
            .extend_from_slice(&revocation.revoked_at.to_le_bytes());
        self.bytes
            .extend_from_slice(&revocation.expires_at.to_le_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let checksum = murmur3_x64_128(&self.bytes) as u64;
        self.bytes.extend_from_slice(&checksum.to_le_bytes());
        self.bytes
    }
}

/// A record whose header, length and checksum were verified; entries are read on demand.
struct Record<'a> {
    kind: Kind,
    base_cursor: u64,
    cursor: u64,
    now: u64,
    counts: [usize; 3],
    body: &'a [u8],
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

impl<'a> Record<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Record<'a>, DecodeError> {
        let min = HEADER_BYTES + CHECKSUM_BYTES;
        if bytes.len() < min {
            return Err(DecodeError::TooShort {
                len: bytes.len(),
                min,
            });
        }
        if array::<4>(bytes, 0) != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let [version, kind, reserved_a, reserved_b] = array::<4>(bytes, 4);
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = match kind {
            0 => Kind::Full,
            1 => Kind::Delta,
            other => {
                return Err(DecodeError::BadHeader(format!(
                    "unknown record kind {other}"
                )))
            }
        };
        if (reserved_a, reserved_b) != (0, 0) {
            return Err(DecodeError::BadHeader(
                "reserved bytes are not zero".to_string(),
            ));
        }
        let base_cursor = u64::from_le_bytes(array(bytes, 8));
        if kind == Kind::Full && base_cursor != 0 {
            return Err(DecodeError::BadHeader(format!(
                "full snapshot with base cursor {base_cursor}"
            )));
        }
        let cursor = u64::from_le_bytes(array(bytes, 16));
        let now = u64::from_le_bytes(array(bytes, 24));
        let raw_counts = [32, 36, 40].map(|at| u64::from(u32::from_le_bytes(array(bytes, at))));
        // u32 counts times at most 32 bytes cannot overflow u64.
        let expected = (HEADER_BYTES + CHECKSUM_BYTES) as u64
            + raw_counts[0] * JTI_BYTES as u64
            + (raw_counts[1] + raw_counts[2]) * PRINCIPAL_BYTES as u64;
        if expected != bytes.len() as u64 {
            return Err(DecodeError::LengthMismatch {
                expected,
                actual: bytes.len() as u64,
            });
        }
        let body_end = bytes.len() - CHECKSUM_BYTES;
        let (covered, trailer) = bytes.split_at(body_end);
        let stored = u64::from_le_bytes(array(trailer, 0));
        let computed = murmur3_x64_128(covered) as u64;
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        // The length matched, so every count fits in usize on this target.
        let counts = raw_counts.map(|n| usize::try_from(n).unwrap_or(0));
        let record = Record {
            kind,
            base_cursor,
            cursor,
            now,
            counts,
            body: covered.get(HEADER_BYTES..).unwrap_or_default(),
        };
        // The encoder never writes expiry 0 (it marks an empty table slot); refusing it here means
        // nothing is applied from a record that fails halfway.
        if let Some(index) = record.jtis().position(|(_, exp)| exp == 0) {
            return Err(DecodeError::BadEntry { index });
        }
        Ok(record)
    }

    /// The jti entries: key and expiry (validated non-zero by [`Record::parse`]).
    fn jtis(&self) -> impl Iterator<Item = (RevocationKey, u64)> + 'a {
        let end = (self.counts[0] * JTI_BYTES).min(self.body.len());
        self.body
            .get(..end)
            .unwrap_or_default()
            .chunks_exact(JTI_BYTES)
            .map(|chunk| {
                let key = RevocationKey::from_fingerprint(u64::from_le_bytes(array(chunk, 0)));
                (key, u64::from(u32::from_le_bytes(array(chunk, 8))))
            })
    }

    /// The subject entries followed by the client entries, each flagged `true` when it is a subject.
    fn principals(&self) -> impl Iterator<Item = (bool, RevocationKey, PrincipalRevocation)> + 'a {
        let start = (self.counts[0] * JTI_BYTES).min(self.body.len());
        let subjects = self.counts[1];
        self.body
            .get(start..)
            .unwrap_or_default()
            .chunks_exact(PRINCIPAL_BYTES)
            .enumerate()
            .map(move |(index, chunk)| {
                let key = RevocationKey(u128::from_le_bytes(array(chunk, 0)));
                let revocation = PrincipalRevocation {
                    revoked_at: u64::from_le_bytes(array(chunk, 16)),
                    expires_at: u64::from_le_bytes(array(chunk, 24)),
                };
                (index < subjects, key, revocation)
            })
    }
}

impl RevocationSet {
    /// Encodes the whole state as a full-snapshot record (header, 12 bytes per jti, 32 per subject or client,
    /// checksum) for other VMs to load with [`RevocationSet::from_bytes`] or [`RevocationSet::apply_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut writer = Writer::new(
            Kind::Full,
            0,
            self.cursor(),
            self.feed_now(),
            [self.jti_count(), self.subject_count(), self.client_count()],
        );
        for (key, exp) in self.jtis().take(writer.counts[0]) {
            writer.jti(key, slot_expiry(exp));
        }
        let subjects: Vec<_> = self.subjects().take(writer.counts[1]).collect();
        for (key, revocation) in subjects {
            writer.principal(key, revocation);
        }
        let clients: Vec<_> = self.clients().take(writer.counts[2]).collect();
        for (key, revocation) in clients {
            writer.principal(key, revocation);
        }
        writer.finish()
    }

    /// The state as a sequence of records of at most `max_jtis` jtis each, so no VM ever holds the whole
    /// snapshot as one buffer: the first is a full snapshot with every subject and client and no jtis, the
    /// others are deltas from and to this state's cursor carrying the jtis. Apply the first, call
    /// [`RevocationSet::reserve_jtis`] with [`RevocationSet::jti_count`], then apply the rest in order.
    ///
    /// The jtis come in table order, that is sorted by home slot: inserted into a table much smaller than
    /// their source they would all crowd into its first slots, which is why none ride in the first record
    /// (which sizes its table for its own entries) and the table is sized once before the deltas.
    pub fn snapshot_parts(&self, max_jtis: usize) -> SnapshotParts<'_> {
        SnapshotParts {
            set: self,
            jtis: Box::new(self.jtis()),
            remaining: self.jti_count(),
            max: max_jtis.max(1),
            first: true,
        }
    }

    /// Rebuilds a state from a full-snapshot record, sized exactly for it. A delta record is refused
    /// ([`DecodeError::WrongBase`]): it cannot stand alone.
    pub fn from_bytes(bytes: &[u8]) -> Result<RevocationSet, DecodeError> {
        let record = Record::parse(bytes)?;
        if record.kind != Kind::Full {
            return Err(DecodeError::WrongBase {
                base: record.base_cursor,
                have: 0,
            });
        }
        Ok(RevocationSet::build(&record))
    }

    fn build(record: &Record<'_>) -> RevocationSet {
        let mut set =
            RevocationSet::with_capacity(record.counts[0], record.counts[1], record.counts[2]);
        for (key, exp) in record.jtis() {
            set.insert_jti(key, exp);
        }
        for (is_subject, key, revocation) in record.principals() {
            if is_subject {
                set.insert_subject(key, revocation);
            } else {
                set.insert_client(key, revocation);
            }
        }
        set.set_position(record.cursor, record.now);
        set
    }

    /// Applies a record another VM published: a full snapshot replaces the state, a delta merges when its base
    /// cursor is this state's cursor. On any error the state is unchanged (load the full snapshot instead).
    pub fn apply_bytes(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let record = Record::parse(bytes)?;
        match record.kind {
            Kind::Full => {
                // The record is fully validated, so building cannot fail: free the old table first.
                *self = RevocationSet::new();
                *self = RevocationSet::build(&record);
            }
            Kind::Delta => {
                if record.base_cursor != self.cursor() {
                    return Err(DecodeError::WrongBase {
                        base: record.base_cursor,
                        have: self.cursor(),
                    });
                }
                self.apply(&FeedUpdate::from_record(&record));
            }
        }
        Ok(())
    }
}

/// The records of [`RevocationSet::snapshot_parts`], encoded one at a time.
pub struct SnapshotParts<'a> {
    set: &'a RevocationSet,
    jtis: Box<dyn Iterator<Item = (RevocationKey, u64)> + 'a>,
    remaining: usize,
    max: usize,
    first: bool,
}

impl Iterator for SnapshotParts<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if !self.first && self.remaining == 0 {
            return None;
        }
        let n = if self.first {
            0
        } else {
            self.remaining.min(self.max)
        };
        let (cursor, now) = (self.set.cursor(), self.set.feed_now());
        let mut writer = if self.first {
            Writer::new(
                Kind::Full,
                0,
                cursor,
                now,
                [n, self.set.subject_count(), self.set.client_count()],
            )
        } else {
            Writer::new(Kind::Delta, cursor, cursor, now, [n, 0, 0])
        };
        for (key, exp) in self.jtis.by_ref().take(writer.counts[0]) {
            writer.jti(key, slot_expiry(exp));
        }
        if self.first {
            let subjects: Vec<_> = self.set.subjects().take(writer.counts[1]).collect();
            for (key, revocation) in subjects {
                writer.principal(key, revocation);
            }
            let clients: Vec<_> = self.set.clients().take(writer.counts[2]).collect();
            for (key, revocation) in clients {
                writer.principal(key, revocation);
            }
        }
        self.first = false;
        self.remaining -= n;
        Some(writer.finish())
    }
}

/// The small record the polling VM publishes after every successful poll, so workers can tell cheaply
/// whether their copy is current (same cursor) and how old the shared state is, without reading the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncMark {
    /// Cursor of the published state.
    pub cursor: u64,
    /// Unix seconds of the poller's last successful sync; `None` before the first.
    pub last_sync: Option<u64>,
    /// Sequence number of the newest published change (0 before any); a VM whose own differs has catching up to do.
    pub seq: u64,
    /// Sequence number of the state the published snapshot holds: after loading it, apply the deltas after it.
    pub snapshot_seq: u64,
}

const MARK_MAGIC: [u8; 4] = *b"EWSM";
/// Bytes of an encoded [`SyncMark`].
pub const SYNC_MARK_BYTES: usize = 40;

impl SyncMark {
    /// Encodes as magic, version and three reserved bytes, cursor, last sync (`u64::MAX` for none), sequence,
    /// snapshot sequence.
    pub fn to_bytes(&self) -> [u8; SYNC_MARK_BYTES] {
        let mut out = [0u8; SYNC_MARK_BYTES];
        let last = self.last_sync.unwrap_or(u64::MAX);
        for (slot, byte) in out.iter_mut().zip(
            MARK_MAGIC
                .iter()
                .chain(&[FORMAT_VERSION, 0, 0, 0])
                .chain(&self.cursor.to_le_bytes())
                .chain(&last.to_le_bytes())
                .chain(&self.seq.to_le_bytes())
                .chain(&self.snapshot_seq.to_le_bytes()),
        ) {
            *slot = *byte;
        }
        out
    }

    /// Decodes [`SyncMark::to_bytes`]; anything else is refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<SyncMark, DecodeError> {
        if bytes.len() != SYNC_MARK_BYTES {
            return Err(DecodeError::LengthMismatch {
                expected: SYNC_MARK_BYTES as u64,
                actual: bytes.len() as u64,
            });
        }
        if array::<4>(bytes, 0) != MARK_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let [version, a, b, c] = array::<4>(bytes, 4);
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if (a, b, c) != (0, 0, 0) {
            return Err(DecodeError::BadHeader(
                "reserved bytes are not zero".to_string(),
            ));
        }
        let last = u64::from_le_bytes(array(bytes, 16));
        Ok(SyncMark {
            cursor: u64::from_le_bytes(array(bytes, 8)),
            last_sync: (last != u64::MAX).then_some(last),
            seq: u64::from_le_bytes(array(bytes, 24)),
            snapshot_seq: u64::from_le_bytes(array(bytes, 32)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RevocationConfig;
    use crate::revocation::{EdgeRevocationState, RevocationView};
    use serde_json::json;

    const T: u64 = 1_767_000_000;

    fn example() -> serde_json::Value {
        json!({
            "cursor": 42,
            "full": false,
            "now": T,
            "revoked_jtis": [{"jti": "q9L-secret", "exp": T + 3600}],
            "revoked_subjects": [{"subject": "alice", "revoked_at": T, "expires_at": T + 3600}],
            "revoked_clients": [{"client_id": "billing", "revoked_at": T - 5, "expires_at": T + 60}]
        })
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

    #[test]
    fn documented_answer_parses_into_keys() {
        let update = FeedUpdate::from_json(example().to_string().as_bytes()).unwrap();
        assert_eq!(
            update,
            FeedUpdate {
                cursor: 42,
                full: false,
                now: T,
                revoked_jtis: vec![RevokedJti {
                    key: RevocationKey::of("q9L-secret"),
                    exp: T + 3600
                }],
                revoked_subjects: vec![principal("alice", T, T + 3600)],
                revoked_clients: vec![principal("billing", T - 5, T + 60)],
                next: None,
                total: None,
            }
        );
    }

    /// A feed of the shape the admin API sends since revocations carry their issuer: `iss` on every entry.
    fn scoped_example() -> serde_json::Value {
        json!({
            "cursor": 43,
            "full": true,
            "now": T,
            "revoked_jtis": [
                {"jti": "jti-a", "exp": T + 3600, "iss": A},
                {"iss": A, "jti": "jti-\"quoted\"", "exp": T + 3600},
                {"jti": "jti-any", "exp": T + 3600}
            ],
            "revoked_subjects": [
                {"subject": "carol", "revoked_at": T, "expires_at": T + 3600, "iss": A},
                {"subject": "dave", "revoked_at": T, "expires_at": T + 3600}
            ],
            "revoked_clients": [
                {"iss": A, "client_id": "billing", "revoked_at": T, "expires_at": T + 3600},
                {"client_id": "shipping", "revoked_at": T, "expires_at": T + 3600}
            ]
        })
    }

    const A: &str = "https://issuer.test";
    const B: &str = "https://idp.example";

    #[test]
    fn entries_with_an_issuer_parse_into_scoped_keys_and_old_entries_stay_unscoped() {
        let update = FeedUpdate::from_json(scoped_example().to_string().as_bytes()).unwrap();
        let scoped = |name: &str, revoked_at: u64, expires_at: u64| RevokedPrincipal {
            key: RevocationKey::scoped(A, name),
            ..principal(name, revoked_at, expires_at)
        };
        assert_eq!(
            update,
            FeedUpdate {
                cursor: 43,
                full: true,
                now: T,
                revoked_jtis: vec![
                    RevokedJti {
                        key: RevocationKey::scoped(A, "jti-a"),
                        exp: T + 3600
                    },
                    // An identifier with an escape cannot be borrowed from the body; it hashes the same.
                    RevokedJti {
                        key: RevocationKey::scoped(A, "jti-\"quoted\""),
                        exp: T + 3600
                    },
                    RevokedJti {
                        key: RevocationKey::of("jti-any"),
                        exp: T + 3600
                    },
                ],
                revoked_subjects: vec![
                    scoped("carol", T, T + 3600),
                    principal("dave", T, T + 3600)
                ],
                revoked_clients: vec![
                    scoped("billing", T, T + 3600),
                    principal("shipping", T, T + 3600)
                ],
                next: None,
                total: None,
            }
        );
    }

    #[test]
    fn a_scoped_feed_refuses_exactly_the_named_issuers_tokens_after_sharing_between_vms() {
        let token = |issuer: &str, jti: Option<&str>, sub: Option<&str>, client: Option<&str>| {
            crate::token::VerifiedToken {
                issuer_index: 0,
                iss: issuer.into(),
                sub: sub.map(Into::into),
                aud: vec!["api".into()],
                exp: Some(T + 3600),
                nbf: None,
                iat: Some(T - 10),
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
        };
        #[rustfmt::skip]
        let cases = [
            ("A's jti-a", token(A, Some("jti-a"), None, None), true),
            ("B's jti-a", token(B, Some("jti-a"), None, None), false),
            ("A's escaped jti", token(A, Some("jti-\"quoted\""), None, None), true),
            ("A's unscoped jti", token(A, Some("jti-any"), None, None), true),
            ("B's unscoped jti", token(B, Some("jti-any"), None, None), true),
            ("A's carol", token(A, None, Some("carol"), None), true),
            ("B's carol", token(B, None, Some("carol"), None), false),
            ("B's dave (unscoped)", token(B, None, Some("dave"), None), true),
            ("A's billing", token(A, None, None, Some("billing")), true),
            ("B's billing", token(B, None, None, Some("billing")), false),
            ("B's shipping (unscoped)", token(B, None, None, Some("shipping")), true),
        ];
        let mut state = EdgeRevocationState::new(&RevocationConfig::default(), 60);
        state
            .sync_json(scoped_example().to_string().as_bytes(), T)
            .unwrap();
        // What another worker VM holds after loading the published snapshot, whole or in parts.
        let shared = RevocationSet::from_bytes(&state.set().to_bytes()).unwrap();
        let mut parted = RevocationSet::new();
        for part in state.set().snapshot_parts(1) {
            parted.apply_bytes(&part).unwrap();
        }
        for (name, token, revoked) in &cases {
            assert_eq!(state.check(token).is_some(), *revoked, "{name}");
            assert_eq!(shared.check(token).is_some(), *revoked, "{name} (snapshot)");
            assert_eq!(parted.check(token).is_some(), *revoked, "{name} (parts)");
        }
        // The old format, without `iss` anywhere, still revokes for every issuer.
        let mut old = scoped_example();
        for list in ["revoked_jtis", "revoked_subjects", "revoked_clients"] {
            for entry in old[list].as_array_mut().unwrap() {
                entry.as_object_mut().unwrap().remove("iss");
            }
        }
        state.sync_json(old.to_string().as_bytes(), T).unwrap();
        for (name, token, _) in &cases {
            assert!(state.check(token).is_some(), "{name} (old format)");
        }
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let mut body = example();
        body["next_poll_ms"] = json!(500);
        body["revoked_jtis"][0]["reason"] = json!({"code": "leaked"});
        body["revoked_subjects"][0]["actor"] = json!("admin");
        let update = FeedUpdate::from_json(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            update,
            FeedUpdate::from_json(example().to_string().as_bytes()).unwrap()
        );
    }

    #[test]
    fn malformed_answers_are_refused_with_the_field_and_leave_state_untouched() {
        let with = |pointer: &str, value: serde_json::Value| {
            let mut body = example();
            *body.pointer_mut(pointer).unwrap() = value;
            body.to_string()
        };
        let without = |field: &str| {
            let mut body = example();
            body.as_object_mut().unwrap().remove(field);
            body.to_string()
        };
        let with_iss = |list: &str, value: serde_json::Value| {
            let mut body = example();
            body[list][0]["iss"] = value;
            body.to_string()
        };
        #[rustfmt::skip]
        let cases: Vec<(String, &str, &str)> = vec![
            (String::new(), ".", "EOF while parsing"),
            ("not json".into(), ".", "expected ident"),
            ("[]".into(), ".", "invalid type: sequence, expected a JSON object"),
            (format!("[42, true, {T}, [], [], []]"), ".", "invalid type: sequence, expected a JSON object"),
            ("null".into(), ".", "invalid type: null"),
            (format!("{} x", example()), ".", "trailing characters"),
            (without("cursor"), ".", "missing field `cursor`"),
            (without("revoked_clients"), ".", "missing field `revoked_clients`"),
            (with("/cursor", json!(-1)), "cursor", "invalid value: integer `-1`, expected u64"),
            (with("/cursor", json!(1.5)), "cursor", "invalid type: floating point `1.5`, expected u64"),
            (with("/cursor", json!("42")), "cursor", "invalid type: string \"42\", expected u64"),
            ("{\"cursor\": 18446744073709551616}".into(), "cursor", "invalid type: floating point"),
            (with("/full", json!("false")), "full", "expected a boolean"),
            (with("/now", json!(null)), "now", "invalid type: null, expected u64"),
            (with("/revoked_jtis", json!({})), "revoked_jtis", "expected a sequence"),
            (with("/revoked_jtis/0", json!("q9L")), "revoked_jtis[0]", "invalid type: string \"q9L\", expected a JSON object"),
            (with("/revoked_jtis/0", json!(["q9L", 1])), "revoked_jtis[0]", "invalid type: sequence, expected a JSON object"),
            (with("/revoked_subjects/0", json!(["alice", 1, 2])), "revoked_subjects[0]", "expected a JSON object"),
            (with("/revoked_jtis/0/jti", json!("")), "revoked_jtis[0].jti", "expected a non-empty string"),
            (with("/revoked_jtis/0/jti", json!(7)), "revoked_jtis[0].jti", "invalid type: integer `7`"),
            (with("/revoked_jtis/0/jti", json!(null)), "revoked_jtis[0].jti", "invalid type: null"),
            (with("/revoked_jtis/0/exp", json!(-3600)), "revoked_jtis[0].exp", "invalid value: integer `-3600`"),
            (with("/revoked_jtis/0/exp", json!(1e300)), "revoked_jtis[0].exp", "invalid type: floating point"),
            (with("/revoked_subjects/0/revoked_at", json!(true)), "revoked_subjects[0].revoked_at", "invalid type: boolean"),
            (with("/revoked_subjects/0/subject", json!(["alice"])), "revoked_subjects[0].subject", "invalid type: sequence"),
            (with("/revoked_clients/0/expires_at", json!(-1)), "revoked_clients[0].expires_at", "invalid value: integer `-1`"),
            (with("/revoked_clients/0", json!({"client_id": "x", "revoked_at": 1})), "revoked_clients[0]", "missing field `expires_at`"),
            (r#"{"cursor": 1, "cursor": 2}"#.into(), ".", "duplicate field `cursor`"),
            (with_iss("revoked_jtis", json!("")), "revoked_jtis[0].iss", "invalid value: string \"\", expected a non-empty string"),
            (with_iss("revoked_subjects", json!("")), "revoked_subjects[0].iss", "expected a non-empty string"),
            (with_iss("revoked_clients", json!("")), "revoked_clients[0].iss", "expected a non-empty string"),
            (with_iss("revoked_jtis", json!(null)), "revoked_jtis[0].iss", "invalid type: null, expected a non-empty string"),
            (with_iss("revoked_subjects", json!(7)), "revoked_subjects[0].iss", "invalid type: integer `7`"),
            (with_iss("revoked_clients", json!(["https://idp.example"])), "revoked_clients[0].iss", "invalid type: sequence"),
            (example().to_string().replace(r#""jti":"#, r#""iss": "a", "iss": "b", "jti":"#), "revoked_jtis[0]", "duplicate field `iss`"),
        ];
        let mut state = EdgeRevocationState::new(&RevocationConfig::default(), 60);
        state
            .sync_json(example().to_string().as_bytes(), T)
            .unwrap();
        let before = state.set().to_bytes();
        for (body, path, message) in cases {
            let error = state.sync_json(body.as_bytes(), T + 10).unwrap_err();
            let FeedError::Invalid {
                path: p,
                message: m,
            } = &error;
            assert_eq!(p, path, "{body}");
            assert!(m.contains(message), "{body}: {m}");
            assert!(!error.to_string().contains("q9L-secret"), "{error}");
            assert_eq!(state.set().to_bytes(), before, "{body}");
            assert_eq!(state.last_sync(), Some(T), "{body}");
        }
    }

    #[test]
    fn random_bytes_never_panic_the_parsers() {
        let valid = example().to_string().into_bytes();
        let record = FeedUpdate::from_json(&valid).unwrap().to_bytes(41);
        let mut seed: u64 = 7;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        for _ in 0..3000 {
            // Mutate a few bytes of valid input and cut it somewhere: mostly-valid input reaches deeper code.
            for source in [&valid, &record] {
                let mut bytes = source.clone();
                for _ in 0..1 + next() % 3 {
                    let at = next() % bytes.len();
                    bytes[at] = next() as u8;
                }
                bytes.truncate(next() % (bytes.len() + 1));
                let _ = FeedUpdate::from_json(&bytes);
                let _ = FeedUpdate::from_bytes(&bytes);
                let _ = RevocationSet::from_bytes(&bytes);
                let _ = SyncMark::from_bytes(&bytes);
            }
        }
    }

    fn populated() -> RevocationSet {
        let mut set = RevocationSet::new();
        set.apply(&FeedUpdate {
            cursor: 17,
            full: true,
            now: T,
            revoked_jtis: (0..300)
                .map(|i| RevokedJti {
                    key: RevocationKey::of(&format!("jti-{i}")),
                    exp: T + i,
                })
                .collect(),
            revoked_subjects: vec![
                principal("alice", T, T + 10),
                principal("bob", T - 1, T + 20),
            ],
            revoked_clients: vec![principal("billing", T - 2, T + 30)],
            next: None,
            total: None,
        });
        set
    }

    fn contents(set: &RevocationSet) -> (u64, u64, Vec<String>) {
        let mut entries: Vec<String> = set
            .jtis()
            .map(|(k, exp)| format!("j {:032x} {exp}", k.0))
            .chain(set.subjects().map(|(k, r)| format!("s {:032x} {r:?}", k.0)))
            .chain(set.clients().map(|(k, r)| format!("c {:032x} {r:?}", k.0)))
            .collect();
        entries.sort();
        (set.cursor(), set.feed_now(), entries)
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let set = populated();
        let bytes = set.to_bytes();
        assert_eq!(
            bytes.len(),
            HEADER_BYTES + 300 * JTI_BYTES + 3 * PRINCIPAL_BYTES + CHECKSUM_BYTES
        );
        let loaded = RevocationSet::from_bytes(&bytes).unwrap();
        assert_eq!(contents(&loaded), contents(&set));
        assert_eq!(loaded.jti_expiry("jti-7"), Some(T + 7));
        assert_eq!(loaded.jti_capacity(), set.jti_capacity());
        let empty = RevocationSet::from_bytes(&RevocationSet::new().to_bytes()).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.cursor(), 0);
    }

    #[test]
    fn published_delta_applies_only_at_its_base_cursor() {
        let delta = FeedUpdate {
            cursor: 18,
            full: false,
            now: T + 1,
            revoked_jtis: vec![RevokedJti {
                key: RevocationKey::of("jti-new"),
                exp: T + 99,
            }],
            revoked_subjects: vec![principal("alice", T + 1, T + 50)],
            revoked_clients: vec![],
            next: None,
            total: None,
        };
        let bytes = delta.to_bytes(17);
        let decoded = FeedUpdate::from_bytes(&bytes).unwrap();
        // Jtis travel as their keys' fingerprints, which look up the same entries.
        let mut sent = delta.clone();
        for jti in &mut sent.revoked_jtis {
            jti.key = RevocationKey::from_fingerprint(jti.key.fingerprint());
        }
        assert_eq!((decoded.base_cursor, &decoded.update), (17, &sent));

        let mut at_base = populated();
        let mut expected = populated();
        expected.apply(&delta);
        at_base.apply_bytes(&bytes).unwrap();
        assert_eq!(contents(&at_base), contents(&expected));
        assert_eq!(at_base.cursor(), 18);

        // A VM at another cursor refuses it and keeps its state; it loads the snapshot instead.
        let error = at_base.apply_bytes(&bytes).unwrap_err();
        assert_eq!(error, DecodeError::WrongBase { base: 17, have: 18 });
        assert_eq!(
            error.to_string(),
            "revocation delta applies to cursor 17 but the state is at cursor 18"
        );
        assert_eq!(contents(&at_base), contents(&expected));
        assert!(matches!(
            RevocationSet::from_bytes(&bytes),
            Err(DecodeError::WrongBase { .. })
        ));

        let mut behind = RevocationSet::new();
        behind.apply_bytes(&expected.to_bytes()).unwrap();
        assert_eq!(contents(&behind), contents(&expected));
    }

    /// Rewrites the checksum so a test can reach the checks behind it.
    fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
        let end = bytes.len() - CHECKSUM_BYTES;
        let checksum = (murmur3_x64_128(&bytes[..end]) as u64).to_le_bytes();
        bytes[end..].copy_from_slice(&checksum);
        bytes
    }

    #[test]
    fn corrupted_records_are_refused_and_leave_state_untouched() {
        let good = populated().to_bytes();
        let small = {
            let mut set = RevocationSet::new();
            set.insert_jti(RevocationKey::of("x"), T);
            set.to_bytes()
        };
        let patched = |at: usize, value: &[u8]| {
            let mut bytes = good.clone();
            bytes[at..at + value.len()].copy_from_slice(value);
            bytes
        };
        let mut appended = good.clone();
        appended.push(0);
        #[rustfmt::skip]
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "revocation state is 0 bytes, shorter than the 52-byte header and checksum"),
            ("header only", good[..HEADER_BYTES].to_vec(), "shorter than the 52-byte"),
            ("truncated by one", good[..good.len() - 1].to_vec(), "header describes"),
            ("one byte appended", appended, "header describes"),
            ("json", br#"{"cursor": 1, "full": true, "now": 0, "revoked_jtis": []}"#.to_vec(), "EWRV magic"),
            ("magic", patched(0, b"EWRX"), "EWRV magic"),
            ("version", patched(4, &[2]), "format version 2, this build reads version 4"),
            ("kind", resealed(patched(5, &[9])), "unknown record kind 9"),
            ("reserved", resealed(patched(6, &[1])), "reserved bytes are not zero"),
            ("full with a base", resealed(patched(8, &[1])), "full snapshot with base cursor 1"),
            ("jti count overflow", patched(32, &u32::MAX.to_le_bytes()), "but its header describes 51539607688"),
            ("all counts overflow", patched(32, &[0xff; 12]), "header describes"),
            ("subject count off by one", patched(36, &3u32.to_le_bytes()), "header describes"),
            ("flipped entry bit", patched(HEADER_BYTES + 3, &[good[HEADER_BYTES + 3] ^ 1]), "checksum mismatch"),
            ("flipped checksum", patched(good.len() - 1, &[good[good.len() - 1] ^ 0x80]), "checksum mismatch"),
            ("zero expiry", resealed({
                let mut b = small.clone();
                b[HEADER_BYTES + 8..HEADER_BYTES + 12].copy_from_slice(&[0; 4]);
                b
            }), "entry 0 of the jti list has expiry 0"),
        ];
        let mut state = populated();
        let before = contents(&state);
        for (name, bytes, message) in cases {
            let error = state.apply_bytes(&bytes).unwrap_err();
            assert!(error.to_string().contains(message), "{name}: {error}");
            assert_eq!(contents(&state), before, "{name}");
            assert!(RevocationSet::from_bytes(&bytes).is_err(), "{name}");
            assert!(FeedUpdate::from_bytes(&bytes).is_err(), "{name}");
        }
        // Every truncation and every single-byte change of a small record is refused.
        for len in 0..small.len() {
            assert!(
                RevocationSet::from_bytes(&small[..len]).is_err(),
                "truncated to {len}"
            );
        }
        for at in 0..small.len() {
            for bit in 0..8 {
                let mut bytes = small.clone();
                bytes[at] ^= 1 << bit;
                assert!(
                    RevocationSet::from_bytes(&bytes).is_err(),
                    "byte {at} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn sync_mark_round_trips_and_refuses_anything_else() {
        for mark in [
            SyncMark {
                cursor: 0,
                last_sync: None,
                seq: 0,
                snapshot_seq: 0,
            },
            SyncMark {
                cursor: 99,
                last_sync: Some(T),
                seq: 7,
                snapshot_seq: 5,
            },
            SyncMark {
                cursor: u64::MAX,
                last_sync: Some(0),
                seq: u64::MAX,
                snapshot_seq: u64::MAX,
            },
        ] {
            assert_eq!(SyncMark::from_bytes(&mark.to_bytes()), Ok(mark));
        }
        let good = SyncMark {
            cursor: 5,
            last_sync: Some(T),
            seq: 3,
            snapshot_seq: 1,
        }
        .to_bytes();
        assert!(SyncMark::from_bytes(&good[..39]).is_err());
        assert!(SyncMark::from_bytes(&[]).is_err());
        for (at, value, message) in [
            (0, b'X', "EWRV magic"),
            (4, 9, "format version 9"),
            (7, 1, "reserved bytes"),
        ] {
            let mut bytes = good;
            bytes[at] = value;
            let error = SyncMark::from_bytes(&bytes).unwrap_err();
            assert!(error.to_string().contains(message), "{error}");
        }
    }

    #[test]
    fn snapshot_parts_rebuild_the_same_state_part_by_part() {
        let set = populated();
        for max in [1, 7, 300, 1000] {
            let parts: Vec<Vec<u8>> = set.snapshot_parts(max).collect();
            assert_eq!(parts.len(), 1 + 300usize.div_ceil(max), "max {max}");
            let mut rebuilt = RevocationSet::new();
            for (i, part) in parts.iter().enumerate() {
                rebuilt.apply_bytes(part).unwrap();
                if i == 0 {
                    rebuilt.reserve_jtis(set.jti_count());
                }
            }
            assert_eq!(contents(&rebuilt), contents(&set), "max {max}");
        }
        // An empty state is one part that empties the receiver.
        let empty: Vec<Vec<u8>> = RevocationSet::new().snapshot_parts(10).collect();
        assert_eq!(empty.len(), 1);
        let mut target = populated();
        target.apply_bytes(&empty[0]).unwrap();
        assert!(target.is_empty());
        // Parts after the first only apply on top of the first.
        let parts: Vec<Vec<u8>> = set.snapshot_parts(100).collect();
        let mut other = RevocationSet::new();
        assert!(matches!(
            other.apply_bytes(&parts[2]),
            Err(DecodeError::WrongBase { .. })
        ));
    }

    #[test]
    fn paged_answers_carry_their_continuation_and_totals() {
        let mut page = example();
        page["next"] = json!("MTc6anRpOmE");
        page["total"] = json!({"jtis": 1000000, "subjects": 2, "clients": 1});
        let update = FeedUpdate::from_json(page.to_string().as_bytes()).unwrap();
        assert_eq!(update.next.as_deref(), Some("MTc6anRpOmE"));
        assert_eq!(
            update.total,
            Some(FeedTotals {
                jtis: 1_000_000,
                subjects: 2,
                clients: 1
            })
        );
        for (field, value) in [
            ("next", json!("")),
            ("next", json!(7)),
            ("total", json!([1, 2, 3])),
            ("total", json!({"jtis": -1, "subjects": 0, "clients": 0})),
        ] {
            let mut bad = example();
            bad[field] = value;
            let error = FeedUpdate::from_json(bad.to_string().as_bytes()).unwrap_err();
            assert!(error.to_string().contains(field), "{error}");
        }
    }

    #[test]
    fn reserving_keeps_every_entry_and_sizes_the_table_once() {
        let mut set = populated();
        let before = contents(&set);
        set.reserve_jtis(100_000);
        assert!(set.jti_capacity() >= 100_000);
        assert_eq!(contents(&set), before);
        let capacity = set.jti_capacity();
        set.reserve_jtis(10);
        assert_eq!(set.jti_capacity(), capacity, "never shrinks");
    }
}
