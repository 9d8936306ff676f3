use super::*;
use serde_json::json;

fn issuer_config() -> Value {
    json!({
        "issuers": [{
            "issuer": "https://id.example",
            "audiences": ["api"],
            "keys": {"keys": [
                {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "x": "AAAA", "y": "BBBB"},
                {"kty": "RSA", "kid": "rsa-1", "n": "sXch", "e": "AQAB"}
            ]}
        }],
        "max_token_bytes": 8192,
        "clock_skew_seconds": 30,
        "rules": [{"prefix": "/api", "scopes": ["read"]}],
        "allow": true,
        "note": null
    })
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// Every JSON input of the committed corpora of the targets the mutator serves (at most `per_target` each).
fn corpus_inputs(per_target: usize) -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut inputs = Vec::new();
    for target in ["config", "jwks", "feed", "admin"] {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let json: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .filter(|b| parse(b).is_some())
            .take(per_target)
            .collect();
        assert!(!json.is_empty(), "no JSON input in {}", dir.display());
        inputs.extend(json);
    }
    inputs
}

#[test]
fn parse_reads_json_behind_at_most_one_byte() {
    let doc = bytes(&issuer_config());
    let plain = parse(&doc).expect("an object parses");
    assert!(plain.prefix.is_empty());
    assert_eq!(plain.value, issuer_config());

    let mut selected = vec![3u8];
    selected.extend_from_slice(&doc);
    let framed = parse(&selected).expect("a selector byte, then an object");
    assert_eq!(framed.prefix, vec![3u8]);
    assert_eq!(framed.value, issuer_config());

    // A selector that is itself `{` or `[` or whitespace.
    assert_eq!(parse(b"{[1,2]").unwrap().prefix, b"{".to_vec());
    assert_eq!(parse(b" \n [1]").unwrap().prefix, Vec::<u8>::new());

    for refused in [
        &b""[..],
        b"7",
        b"\x03\"text\"",
        b"{\"a\":",
        b"\x01\x02{}",
        b"\xff\xfe[]x",
        b"null",
    ] {
        assert!(
            parse(refused).is_none(),
            "{refused:?} is not JSON behind a byte"
        );
    }
}

#[test]
fn every_mutation_is_valid_json_behind_the_same_prefix() {
    let mut rng = Rng::new(7);
    let inputs = corpus_inputs(60);
    let mut changed = 0;
    let mut attempts = 0;
    for (i, input) in inputs.iter().enumerate() {
        let framed = parse(input).unwrap();
        let other = &inputs[(i * 7 + 3) % inputs.len()];
        for _ in 0..40 {
            attempts += 1;
            let Some((out, _)) = mutate(input, Some(other), 1 << 20, &mut rng) else {
                continue;
            };
            let back = parse(&out).unwrap_or_else(|| {
                panic!(
                    "mutating {:?} gave {:?}, not JSON behind the prefix",
                    String::from_utf8_lossy(input),
                    String::from_utf8_lossy(&out)
                )
            });
            assert_eq!(back.prefix, framed.prefix);
            if back.value != framed.value {
                changed += 1;
            }
        }
    }
    // Most mutations change the document (a swap of equal values or a graft of an equal subtree may not).
    assert!(
        changed * 10 > attempts * 7,
        "only {changed} of {attempts} mutations changed the document"
    );
}

#[test]
fn every_operation_applies_and_keeps_the_root_a_container() {
    let donor = json!({"donor_only": {"kty": "oct", "k": "c2VjcmV0"}, "list": [1, "two", null]});
    let config = issuer_config();
    let mut pools = Pools::default();
    pools.gather(&donor);
    pools.gather(&config);
    for op in Op::ALL {
        let mut rng = Rng::new(op as u64);
        let mut applied = 0;
        for _ in 0..200 {
            let mut value = issuer_config();
            if apply(op, &mut value, &donor, &pools, &mut rng) {
                applied += 1;
                assert!(
                    value.is_object() || value.is_array(),
                    "{} left a root that is not a container: {value}",
                    op.name()
                );
            }
        }
        assert!(
            applied > 100,
            "{} applied {applied} times in 200",
            op.name()
        );
    }
}

#[test]
fn grafts_and_added_members_bring_the_other_inputs_content() {
    let donor = bytes(&json!({"keys": [{"kty": "RSA", "use": "enc-only-in-donor", "e": ""}]}));
    let input = bytes(&issuer_config());
    let mut rng = Rng::new(1);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        if let Some((out, op)) = mutate(&input, Some(&donor), 1 << 20, &mut rng) {
            if String::from_utf8_lossy(&out).contains("enc-only-in-donor") {
                seen.insert(op.name());
            }
        }
    }
    assert!(
        seen.contains("json-graft"),
        "grafts never brought the donor's value: {seen:?}"
    );
    assert!(
        seen.contains("json-add-member"),
        "added members never brought the donor's member: {seen:?}"
    );
}

#[test]
fn the_same_seed_gives_the_same_mutations() {
    let input = bytes(&issuer_config());
    let run = |seed| {
        let mut rng = Rng::new(seed);
        (0..200)
            .map(|_| mutate(&input, None, 1 << 20, &mut rng).map(|(b, _)| b))
            .collect::<Vec<_>>()
    };
    assert!(run(42) == run(42), "one seed gave two sequences");
    assert!(run(42) != run(43), "two seeds gave one sequence");
}

#[test]
fn inputs_that_are_not_json_or_too_long_get_no_mutation() {
    let mut rng = Rng::new(3);
    assert!(mutate(b"eyJhbGciOiJFUzI1NiJ9.e30.sig", None, 1 << 20, &mut rng).is_none());
    assert!(mutate(b"\x00EWSN\x01", None, 1 << 20, &mut rng).is_none());
    let input = bytes(&issuer_config());
    for _ in 0..500 {
        if let Some((out, _)) = mutate(&input, None, 40, &mut rng) {
            assert!(out.len() <= 40, "{} bytes over a 40-byte limit", out.len());
        }
    }
    // A donor that is not JSON: the input is its own donor.
    assert!((0..50).any(|_| mutate(&input, Some(b"\xff\x00"), 1 << 20, &mut rng).is_some()));
}

#[test]
fn deep_documents_stay_within_the_parsers_limit_or_are_refused() {
    // serde_json refuses nesting past 128: such an input is not JSON to the mutator (no mutation), and a
    // mutation that nests deeper gives bytes the next `parse` refuses, never a crash.
    let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
    let mut rng = Rng::new(9);
    for _ in 0..300 {
        if let Some((out, _)) = mutate(deep.as_bytes(), None, 1 << 20, &mut rng) {
            let _ = parse(&out);
        }
    }
    let too_deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(parse(too_deep.as_bytes()).is_none());
}

#[test]
#[allow(unsafe_code)]
fn the_c_entry_points_hand_afl_valid_buffers() {
    use std::ffi::CStr;
    let input = {
        let mut b = vec![1u8];
        b.extend(bytes(&issuer_config()));
        b
    };
    let mut other = bytes(&json!({"kid": "other"}));
    let state = ffi::afl_custom_init(std::ptr::null_mut(), 5);
    assert!(!state.is_null());
    unsafe {
        let mut made = 0;
        for round in 0..100 {
            let mut buf = input.clone();
            let mut out: *mut u8 = std::ptr::null_mut();
            let (add, add_len) = if round % 2 == 0 {
                (other.as_mut_ptr(), other.len())
            } else {
                (std::ptr::null_mut(), 0)
            };
            let len = ffi::afl_custom_fuzz(
                state,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
                add,
                add_len,
                1 << 20,
            );
            if len == 0 {
                continue;
            }
            made += 1;
            let produced = std::slice::from_raw_parts(out, len);
            let framed =
                parse(produced).expect("the mutator's buffer holds JSON behind the selector");
            assert_eq!(framed.prefix, vec![1u8]);
            let described = CStr::from_ptr(ffi::afl_custom_describe(state, 64))
                .to_str()
                .unwrap();
            assert!(
                Op::ALL.iter().any(|op| op.name() == described),
                "described as {described:?}"
            );
        }
        assert!(made > 90, "{made} of 100 calls mutated");
        let mut out: *mut u8 = std::ptr::null_mut();
        let empty = ffi::afl_custom_fuzz(
            state,
            std::ptr::null_mut(),
            0,
            &mut out,
            std::ptr::null_mut(),
            0,
            1 << 20,
        );
        assert_eq!(empty, 0, "a null buffer is no input");
        let mut text = b"not json".to_vec();
        let mut out: *mut u8 = std::ptr::null_mut();
        assert_eq!(
            ffi::afl_custom_fuzz(
                state,
                text.as_mut_ptr(),
                text.len(),
                &mut out,
                std::ptr::null_mut(),
                0,
                1 << 20
            ),
            0
        );
        ffi::afl_custom_deinit(state);
    }
}
