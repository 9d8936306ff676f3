//! The checksum of the binary revocation records (`core/src/feed.rs`): the low 64 bits of MurmurHash3 x64-128
//! with seed 0 over everything before the trailer (all 128 for an edge snapshot page, `core/src/feed/snapshot.rs`). The targets recompute it on mutated records, so the fuzzer
//! explores the decoder past the checksum instead of stopping at it on almost every input. Core keeps its
//! hash private; [`check_against_core`] proves on every run that this copy agrees with the encoder.

use edgewarden_core::feed::FeedUpdate;
use edgewarden_core::revocation::RevocationSet;

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;

fn fmix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

fn word(bytes: &[u8]) -> u64 {
    let mut out = [0u8; 8];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    u64::from_le_bytes(out)
}

/// MurmurHash3 x64-128, seed 0, `h1` only.
pub fn murmur3_h1(bytes: &[u8]) -> u64 {
    murmur3_128(bytes) as u64
}

/// MurmurHash3 x64-128, seed 0: `h1` in the low 64 bits, `h2` in the high ones (core's byte order).
pub fn murmur3_128(bytes: &[u8]) -> u128 {
    let (mut h1, mut h2) = (0u64, 0u64);
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        let (mut k1, mut k2) = (word(&block[..8]), word(&block[8..]));
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    if tail.len() > 8 {
        let k2 = word(&tail[8..])
            .wrapping_mul(C2)
            .rotate_left(33)
            .wrapping_mul(C1);
        h2 ^= k2;
    }
    if !tail.is_empty() {
        let k1 = word(&tail[..tail.len().min(8)])
            .wrapping_mul(C1)
            .rotate_left(31)
            .wrapping_mul(C2);
        h1 ^= k1;
    }
    let len = bytes.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    u128::from(h1) | u128::from(h2) << 64
}

/// Rewrites the trailer of an edge snapshot page (its last 16 bytes) to the checksum of the rest; shorter
/// input is left alone.
pub fn fix_snapshot(page: &mut [u8]) {
    if page.len() < 16 {
        return;
    }
    let body = page.len() - 16;
    let sum = murmur3_128(&page[..body]);
    page[body..].copy_from_slice(&sum.to_le_bytes());
}

/// Rewrites the trailer of `record` (its last 8 bytes) to the checksum of the rest; shorter input is left alone.
pub fn fix(record: &mut [u8]) {
    if record.len() < 8 {
        return;
    }
    let body = record.len() - 8;
    let sum = murmur3_h1(&record[..body]);
    record[body..].copy_from_slice(&sum.to_le_bytes());
}

/// Panics unless [`fix`] reproduces the checksums core's encoder writes (for records of several lengths,
/// so every tail length of the hash is covered): a silent drift would make the binary targets useless.
pub fn check_against_core() {
    let mut update = FeedUpdate::from_json(crate::fixtures::feed_json().to_string().as_bytes())
        .unwrap_or_else(|e| panic!("fixture feed refused: {e}"));
    for _ in 0..3 {
        for record in [RevocationSet::new().to_bytes(), update.to_bytes(3)] {
            let mut copy = record.clone();
            fix(&mut copy);
            assert_eq!(
                copy, record,
                "the fuzz crate's checksum no longer matches core's encoder"
            );
        }
        update
            .revoked_jtis
            .truncate(update.revoked_jtis.len().saturating_sub(1));
    }
    for page in crate::seeds::snapshot_pages() {
        let mut copy = page.clone();
        fix_snapshot(&mut copy);
        assert_eq!(
            copy, page,
            "the fuzz crate's snapshot checksum no longer matches core's encoder"
        );
    }
}
