//! Measures what a million revoked tokens cost at the edge: table memory, lookup time, feed parsing, snapshot
//! encoding and decoding, pruning. `cargo run --release -p edgewarden-core --example revocation_cost` natively;
//! for V8 (the runtime Envoy uses), build with `--target wasm32-wasip1` and run the `.wasm` under
//! `node --single-threaded-gc core/examples/run_wasi.mjs <file> --cpu-clock` (thread CPU time; Node 20's
//! concurrent marker sometimes aborts with "unreachable code" while this program grows its memory to 200 MB).
//! The issue's budget: at most 32 MB per worker, a lookup under 1 us.

use std::hint::black_box;
use std::time::Instant;

use edgewarden_core::feed::RevokedJti;
use edgewarden_core::{FeedUpdate, RevocationKey, RevocationSet, RevocationView, VerifiedToken};

const NOW: u64 = 1_767_000_000;
const REVOKED: usize = 1_000_000;

/// A jti shaped like the admin API's (a UUID-like 36-character string), unique per index.
fn jti(i: usize) -> String {
    let mixed = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        mixed >> 32,
        (mixed >> 16) & 0xffff,
        i & 0xfff,
        (i >> 12) & 0xfff,
        i
    )
}

fn token(jti: String, sub: String) -> VerifiedToken {
    VerifiedToken {
        issuer_index: 0,
        iss: "https://issuer.test".into(),
        sub: Some(sub),
        aud: vec!["api".into()],
        exp: Some(NOW + 3600),
        nbf: None,
        iat: Some(NOW - 60),
        jti: Some(jti),
        client_id: Some("web-frontend".into()),
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

/// Bytes of memory the process holds: resident set natively, linear memory in Wasm (which never shrinks).
fn memory_now() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        Some(std::arch::wasm32::memory_size::<0>() as u64 * 65_536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(resident * 4096)
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

/// Nanoseconds per call of `check` over `tokens`, after one untimed pass (V8 tiers code up on first use):
/// the median and the fastest of many short batches. The machine is shared (load above its core count),
/// so a whole-run average mostly measures time spent descheduled; a batch of 500 checks lasts well under a
/// scheduler slice, so the median batch is an undisturbed one. Also returns how many tokens were revoked.
fn per_check(set: &RevocationSet, tokens: &[VerifiedToken], rounds: usize) -> (f64, f64, usize) {
    let mut revoked = 0;
    for t in tokens {
        revoked += usize::from(set.check(black_box(t)).is_some());
    }
    let mut batches = Vec::new();
    for _ in 0..rounds {
        for batch in tokens.chunks(500) {
            let start = Instant::now();
            for t in batch {
                revoked += usize::from(black_box(set.check(black_box(t))).is_some());
            }
            batches.push(start.elapsed().as_nanos() as f64 / batch.len() as f64);
        }
    }
    batches.sort_by(f64::total_cmp);
    let median = batches.get(batches.len() / 2).copied().unwrap_or_default();
    let fastest = batches.first().copied().unwrap_or_default();
    (median, fastest, revoked / (rounds + 1))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = if cfg!(target_arch = "wasm32") {
        "wasm"
    } else {
        "native"
    };
    println!("revocation state with {REVOKED} revoked jtis ({runtime})");

    // The state first, built from keys alone, so memory growth is the table's and not the JSON's leftovers
    // (Wasm linear memory never shrinks, and freed blocks would absorb the table).
    let update = FeedUpdate {
        next: None,
        total: None,
        cursor: 1000,
        full: true,
        now: NOW,
        revoked_jtis: (0..REVOKED)
            .map(|i| RevokedJti {
                key: RevocationKey::of(&jti(i)),
                exp: NOW + 60 + (i as u64 % 3600),
            })
            .collect(),
        revoked_subjects: Vec::new(),
        revoked_clients: Vec::new(),
    };
    let before = memory_now();
    let start = Instant::now();
    let mut set = RevocationSet::new();
    set.apply(&update);
    let build_ms = start.elapsed().as_secs_f64() * 1000.0;
    let after = memory_now();
    println!(
        "apply full snapshot: {build_ms:.0} ms; {} jtis, {} subjects, {} clients",
        set.jti_count(),
        set.subject_count(),
        set.client_count()
    );
    println!(
        "table: {} slots x 20 bytes, load {:.2}; state memory {:.1} MB = {:.1} bytes per revoked jti",
        set.jti_capacity(),
        set.jti_count() as f64 / set.jti_capacity() as f64,
        mb(set.memory_bytes() as u64),
        set.memory_bytes() as f64 / set.jti_count() as f64
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "process memory grew by {:.1} MB while the set was built ({})",
            mb(after.saturating_sub(before)),
            if cfg!(target_arch = "wasm32") {
                "linear memory"
            } else {
                "resident set"
            }
        );
    }

    // The feed's full snapshot as JSON, parsed the way the poller parses it.
    let mut body = String::with_capacity(REVOKED * 66 + 100_000);
    body.push_str(r#"{"cursor": 1000, "full": true, "now": "#);
    body.push_str(&NOW.to_string());
    body.push_str(r#", "revoked_jtis": ["#);
    for i in 0..REVOKED {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"jti":"{}","exp":{}}}"#,
            jti(i),
            NOW + 60 + (i as u64 % 3600)
        ));
    }
    body.push_str(r#"], "revoked_subjects": ["#);
    for i in 0..1000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"subject":"user-{i}","revoked_at":{NOW},"expires_at":{}}}"#,
            NOW + 3600
        ));
    }
    body.push_str(r#"], "revoked_clients": [{"client_id":"billing","revoked_at":1767000000,"expires_at":1767003600}]}"#);
    let start = Instant::now();
    let parsed = FeedUpdate::from_json(body.as_bytes())?;
    println!(
        "parse full feed answer ({:.1} MB JSON): {:.0} ms",
        mb(body.len() as u64),
        start.elapsed().as_secs_f64() * 1000.0
    );
    drop(body);
    assert_eq!(parsed.revoked_jtis, update.revoked_jtis);
    drop(update);
    // The subjects make the not-revoked path below look up a populated subject map.
    set.apply(&parsed);
    drop(parsed);

    // Lookups: tokens whose jti is revoked, and (the common case) tokens that are not revoked at all,
    // with subject and client present so all three lookups run.
    let count = 20_000;
    let hits: Vec<VerifiedToken> = (0..count)
        .map(|i| token(jti(i * 47 % REVOKED), format!("user-{}", 5000 + i)))
        .collect();
    let misses: Vec<VerifiedToken> = (0..count)
        .map(|i| token(jti(REVOKED + i * 13), format!("user-{}", 5000 + i)))
        .collect();
    let rounds = 25;
    let (hit_ns, hit_min, revoked) = per_check(&set, &hits, rounds);
    assert_eq!(revoked, count, "every hit token must be revoked");
    let (miss_ns, miss_min, revoked) = per_check(&set, &misses, rounds);
    assert_eq!(revoked, 0, "no miss token may be revoked");
    println!(
        "check, revoked jti: {hit_ns:.0} ns (fastest batch {hit_min:.0}); \
         not revoked, jti + subject + client looked up: {miss_ns:.0} ns (fastest batch {miss_min:.0})"
    );
    let start = Instant::now();
    let bytes = set.to_bytes();
    let encode_ms = start.elapsed().as_secs_f64() * 1000.0;
    let start = Instant::now();
    let loaded = RevocationSet::from_bytes(&bytes)?;
    let decode_ms = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(loaded.len(), set.len());
    println!(
        "snapshot for shared data: {:.1} MB; encode {encode_ms:.0} ms, decode and rebuild {decode_ms:.0} ms",
        mb(bytes.len() as u64)
    );
    drop(loaded);
    drop(bytes);

    // What the filter does: the snapshot in parts of 50,000 jtis, loaded into a table sized once.
    let start = Instant::now();
    let parts: Vec<Vec<u8>> = set.snapshot_parts(50_000).collect();
    let encode_ms = start.elapsed().as_secs_f64() * 1000.0;
    let start = Instant::now();
    let mut loaded = RevocationSet::new();
    for (i, part) in parts.iter().enumerate() {
        loaded.apply_bytes(part)?;
        if i == 0 {
            loaded.reserve_jtis(set.jti_count());
        }
    }
    let decode_ms = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(loaded.len(), set.len());
    println!(
        "snapshot in {} parts of at most 50,000 jtis: encode {encode_ms:.0} ms, load {decode_ms:.0} ms",
        parts.len()
    );
    drop(loaded);
    drop(parts);

    let delta = FeedUpdate {
        next: None,
        total: None,
        cursor: 1001,
        full: false,
        now: NOW + 1,
        revoked_jtis: vec![RevokedJti {
            key: RevocationKey::of("fresh"),
            exp: NOW + 3600,
        }],
        ..FeedUpdate::default()
    };
    let delta_bytes = delta.to_bytes(1000);
    let start = Instant::now();
    set.apply_bytes(&delta_bytes)?;
    println!(
        "one-entry delta: {} bytes, applied in {:.1} us",
        delta_bytes.len(),
        start.elapsed().as_secs_f64() * 1e6
    );

    let start = Instant::now();
    let none = set.prune(NOW);
    assert_eq!(none, 0);
    println!(
        "prune scan that drops nothing: {:.1} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    let start = Instant::now();
    let dropped = set.prune(NOW + 60 + 1800);
    println!(
        "prune half ({dropped} entries): {:.0} ms; table now {} slots, {:.1} MB",
        start.elapsed().as_secs_f64() * 1000.0,
        set.jti_capacity(),
        mb(set.memory_bytes() as u64)
    );
    Ok(())
}
