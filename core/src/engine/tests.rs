//! Engine tests: every malformed-token class, key selection, time edges, claims, rules, cache and revocation.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::cache::{CacheOutcome, TokenCache};
use crate::config::Config;
use crate::decision::{Reason, Verdict};
use crate::engine::{Engine, Request};
use crate::revocation::{NoRevocations, RevocationView};
use crate::test_support::*;
use crate::token::{fingerprint, VerifiedToken};

/// (claims change, expected scopes, expected roles, expected client id)
type ClaimCase = (
    Value,
    Vec<&'static str>,
    Vec<&'static str>,
    Option<&'static str>,
);
/// (method, path, token, expected reason, expected rule index)
type RuleCase<'t> = (
    &'static str,
    &'static str,
    Option<&'t str>,
    Reason,
    Option<usize>,
);

fn verify(engine: &Engine, token: &str) -> Result<VerifiedToken, crate::token::Rejection> {
    engine.verify(token, NOW)
}

fn reason_of(engine: &Engine, token: &str) -> Reason {
    match verify(engine, token) {
        Ok(_) => Reason::Allowed,
        Err(r) => r.reason,
    }
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid})
}

#[test]
fn every_supported_algorithm_verifies_with_its_own_key() {
    let engine = engine(json!({}));
    let c = claims();
    let cases = [
        ("RS256", "rsa-1", Signer::Rs256("rsa2048")),
        ("PS256", "rsa-2", Signer::Ps256("rsa2048_b")),
        ("ES256", "ec-1", Signer::Es256("ec")),
        ("EdDSA", "ed-1", Signer::EdDsa),
        ("HS256", "hs-1", Signer::Hs256(HMAC_SECRET)),
    ];
    for (alg, kid, signer) in cases {
        let token = sign(&header(alg, kid), &c, signer);
        let verified = verify(&engine, &token).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(verified.alg, alg);
        assert_eq!(verified.kid.as_deref(), Some(kid));
        assert_eq!(verified.fingerprint, fingerprint(&token));
    }
}

#[test]
fn verified_token_carries_typed_claims() {
    let engine = engine(json!({}));
    let token = es256_token(&claims());
    let t = verify(&engine, &token).unwrap();
    assert_eq!(t.issuer_index, 0);
    assert_eq!(t.iss, ISSUER);
    assert_eq!(t.sub.as_deref(), Some("alice"));
    assert_eq!(t.aud, vec!["api"]);
    assert_eq!(t.exp, Some(NOW + 3600));
    assert_eq!(t.iat, Some(NOW - 10));
    assert_eq!(t.nbf, None);
    assert_eq!(t.jti.as_deref(), Some("jti-1"));
    assert_eq!(t.client_id.as_deref(), Some("cli-1"));
    assert_eq!(t.scopes, vec!["read", "write"]);
    assert_eq!(t.roles, vec!["user"]);
    assert_eq!(t.typ.as_deref(), Some("at+jwt"));
    assert_eq!(t.claims.get("sub"), Some(&json!("alice")));
}

#[test]
fn malformed_and_hardened_header_classes_are_rejected_with_their_reason() {
    let engine = engine(json!({}));
    let payload = claims().to_string();
    let es = Signer::Es256("ec");
    let good = es256_token(&claims());
    let (h, p, s) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "alg none",
            sign_raw(r#"{"alg":"none"}"#, &payload, Signer::Unsigned),
            Reason::DisallowedAlgorithm,
        ),
        (
            "alg None",
            sign_raw(r#"{"alg":"None"}"#, &payload, Signer::Unsigned),
            Reason::DisallowedAlgorithm,
        ),
        (
            "alg NONE",
            sign_raw(r#"{"alg":"NONE"}"#, &payload, Signer::Unsigned),
            Reason::DisallowedAlgorithm,
        ),
        (
            "alg nOnE",
            sign_raw(r#"{"alg":"nOnE"}"#, &payload, Signer::Unsigned),
            Reason::DisallowedAlgorithm,
        ),
        (
            "alg none with signature",
            sign_raw(r#"{"alg":"none","kid":"ec-1"}"#, &payload, es),
            Reason::DisallowedAlgorithm,
        ),
        (
            "alg HS512",
            sign_raw(r#"{"alg":"HS512"}"#, &payload, es),
            Reason::DisallowedAlgorithm,
        ),
        (
            "alg lower case es256",
            sign_raw(r#"{"alg":"es256","kid":"ec-1"}"#, &payload, es),
            Reason::DisallowedAlgorithm,
        ),
        (
            "alg RS384",
            sign_raw(r#"{"alg":"RS384"}"#, &payload, es),
            Reason::DisallowedAlgorithm,
        ),
        (
            "alg not a string",
            sign_raw(r#"{"alg":256}"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "no alg",
            sign_raw(r#"{"kid":"ec-1"}"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "crit",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","crit":["exp"]}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "empty crit",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","crit":[]}"#, &payload, es),
            Reason::UnsupportedHeader,
        ),
        (
            "b64 false",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","b64":false}"#, &payload, es),
            Reason::UnsupportedHeader,
        ),
        (
            "b64 true",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","b64":true}"#, &payload, es),
            Reason::UnsupportedHeader,
        ),
        (
            "nested jwt",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","cty":"JWT"}"#, &payload, es),
            Reason::UnsupportedHeader,
        ),
        (
            "nested jwt lower",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","cty":"jwt"}"#, &payload, es),
            Reason::UnsupportedHeader,
        ),
        (
            "nested jwt media type",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","cty":"application/jwt"}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "cty text",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","cty":"text/plain"}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "cty not a string",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","cty":1}"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "enc",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","enc":"A128GCM"}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "zip",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","zip":"DEF"}"#, &payload, es),
            Reason::UnsupportedHeader,
        ),
        (
            "jwk",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","jwk":{"kty":"EC"}}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "jku",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","jku":"https://evil"}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "x5u",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","x5u":"https://evil"}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "x5c",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","x5c":["MII"]}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "x5t",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","x5t":"abc"}"#, &payload, es),
            Reason::UnsupportedHeader,
        ),
        (
            "x5t#S256",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1","x5t#S256":"abc"}"#,
                &payload,
                es,
            ),
            Reason::UnsupportedHeader,
        ),
        (
            "jku null",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","jku":null}"#, &payload, es),
            Reason::UnsupportedHeader,
        ),
        (
            "kid not a string",
            sign_raw(r#"{"alg":"ES256","kid":7}"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "typ not a string",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","typ":[]}"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "duplicate alg",
            sign_raw(r#"{"alg":"ES256","alg":"none","kid":"ec-1"}"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "duplicate kid",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","kid":"x"}"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "header is an array",
            sign_raw(r#"["ES256","ec-1"]"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "header not json",
            sign_raw("alg=ES256", &payload, es),
            Reason::Malformed,
        ),
        (
            "duplicate unknown header parameter",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1","x":1,"x":2}"#, &payload, es),
            Reason::Malformed,
        ),
        (
            "duplicate claim",
            sign_raw(
                r#"{"alg":"ES256","kid":"ec-1"}"#,
                &format!(
                    r#"{{"iss":"{ISSUER}","aud":"api","exp":{},"exp":{}}}"#,
                    NOW + 10,
                    NOW + 99999
                ),
                es,
            ),
            Reason::Malformed,
        ),
        (
            "payload is an array",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1"}"#, "[1,2]", es),
            Reason::Malformed,
        ),
        (
            "payload not json",
            sign_raw(r#"{"alg":"ES256","kid":"ec-1"}"#, "{not json", es),
            Reason::Malformed,
        ),
        (
            "json serialization",
            format!(r#"{{"payload":"{p}","protected":"{h}","signature":"{s}"}}"#),
            Reason::Malformed,
        ),
        ("two segments", format!("{h}.{p}"), Reason::Malformed),
        (
            "four segments",
            format!("{h}.{p}.{s}.{s}"),
            Reason::Malformed,
        ),
        (
            "jwe five segments",
            format!("{h}.{p}.{s}.{s}.{s}"),
            Reason::UnsupportedHeader,
        ),
        ("empty", String::new(), Reason::Malformed),
        ("empty signature", format!("{h}.{p}."), Reason::Malformed),
        ("empty payload", format!("{h}..{s}"), Reason::Malformed),
        ("padding", format!("{h}.{p}.{s}=="), Reason::Malformed),
        ("padded header", format!("{h}=.{p}.{s}"), Reason::Malformed),
        (
            "standard base64 chars",
            format!("{h}.{p}.{}+/", s.get(..s.len() - 2).unwrap()),
            Reason::Malformed,
        ),
        ("space", format!("{h} .{p}.{s}"), Reason::Malformed),
        (
            "non-canonical trailing bits",
            format!("{h}.{p}.{}", non_canonical(&s)),
            Reason::Malformed,
        ),
        (
            "impossible base64 length",
            format!("{h}.{p}.{s}AAA"),
            Reason::Malformed,
        ),
    ];
    for (name, token, expected) in cases {
        let got = reason_of(&engine, &token);
        assert_eq!(
            got,
            expected,
            "case {name:?}: {:?}",
            verify(&engine, &token).err()
        );
    }
}

/// Flips the last character of a base64url string to one that encodes the same bytes plus non-zero padding bits.
fn non_canonical(s: &str) -> String {
    // An ES256 signature is 64 bytes = 86 chars: the last char carries 2 unused bits.
    let last = s.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let flipped = alphabet.chars().nth(idx ^ 1).unwrap();
    format!("{}{flipped}", s.get(..s.len() - 1).unwrap())
}

#[test]
fn json_content_type_is_accepted() {
    let engine = engine(json!({}));
    for cty in ["JSON", "application/json"] {
        let token = sign(
            &json!({"alg": "ES256", "kid": "ec-1", "cty": cty}),
            &claims(),
            Signer::Es256("ec"),
        );
        assert!(verify(&engine, &token).is_ok(), "cty {cty}");
    }
}

#[test]
fn token_over_the_size_cap_is_rejected_before_decoding() {
    let engine = engine(json!({"max_token_bytes": 512}));
    let big = claims_with(json!({"pad": "x".repeat(600)}));
    let token = es256_token(&big);
    let err = verify(&engine, &token).unwrap_err();
    assert_eq!(err.reason, Reason::TokenTooLarge);
    assert_eq!(
        err.description,
        format!("token is {} bytes, maximum 512", token.len())
    );
    // Garbage of the same size fails on size, not on structure.
    assert_eq!(reason_of(&engine, &"!".repeat(513)), Reason::TokenTooLarge);
    assert_eq!(reason_of(&engine, &"!".repeat(512)), Reason::Malformed);
}

#[test]
fn time_claims_must_be_non_negative_integral_numbers() {
    let engine = engine(json!({}));
    let cases = [
        (json!({"exp": (NOW + 100).to_string()}), Reason::Malformed),
        (json!({"exp": 1.5}), Reason::Malformed),
        (json!({"exp": -1}), Reason::Malformed),
        (json!({"exp": true}), Reason::Malformed),
        (json!({"exp": [NOW + 100]}), Reason::Malformed),
        (json!({"nbf": "0"}), Reason::Malformed),
        (json!({"iat": {"t": 1}}), Reason::Malformed),
        (json!({"iat": -5.0}), Reason::Malformed),
        (json!({"exp": 1.0e30}), Reason::Malformed),
        (json!({"exp": (NOW + 100) as f64}), Reason::Allowed),
        (json!({"exp": 1.7000036e9}), Reason::Allowed),
    ];
    for (change, expected) in cases {
        let token = es256_token(&claims_with(change.clone()));
        assert_eq!(reason_of(&engine, &token), expected, "{change}");
    }
    // A literal null cannot go through claims_with (null removes); build it raw.
    let raw = format!(r#"{{"iss":"{ISSUER}","aud":"api","exp":null}}"#);
    let token = sign_raw(r#"{"alg":"ES256","kid":"ec-1"}"#, &raw, Signer::Es256("ec"));
    assert_eq!(reason_of(&engine, &token), Reason::Malformed);
}

#[test]
fn tampered_or_foreign_signatures_are_bad_signatures() {
    let engine = engine(json!({}));
    let token = es256_token(&claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    // Same header and signature, different payload.
    let other = es256_token(&claims_with(json!({"sub": "mallory"})));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(reason_of(&engine, &tampered), Reason::BadSignature);
    // Signed by another EC key claiming kid ec-1.
    let foreign = sign(&header("ES256", "ec-1"), &claims(), Signer::Es256("ec_b"));
    let err = verify(&engine, &foreign).unwrap_err();
    assert_eq!(err.reason, Reason::BadSignature);
    assert_eq!(
        err.description,
        r#"signature does not verify with key "ec-1" (ES256)"#
    );
    // Signature of the wrong length for ES256 (and for Ed25519, whose parser would otherwise assume 64 bytes).
    parts[2] = b64(&[1u8; 10]);
    assert_eq!(reason_of(&engine, &parts.join(".")), Reason::BadSignature);
    let ed = sign(&header("EdDSA", "ed-1"), &claims(), Signer::EdDsa);
    let short_ed = format!("{}.{}", ed.rsplit_once('.').unwrap().0, b64(&[1u8; 63]));
    assert_eq!(reason_of(&engine, &short_ed), Reason::BadSignature);
    let hs = sign(
        &header("HS256", "hs-1"),
        &claims(),
        Signer::Hs256(HMAC_SECRET),
    );
    let long_hs = format!("{}.{}", hs.rsplit_once('.').unwrap().0, b64(&[1u8; 33]));
    assert_eq!(reason_of(&engine, &long_hs), Reason::BadSignature);
    let rs = sign(
        &header("RS256", "rsa-1"),
        &claims(),
        Signer::Rs256("rsa2048"),
    );
    let short_rs = format!("{}.{}", rs.rsplit_once('.').unwrap().0, b64(&[1u8; 255]));
    assert_eq!(reason_of(&engine, &short_rs), Reason::BadSignature);
    // An all-zero ES256 signature (r = s = 0) is refused, not a panic.
    let zero = format!("{}.{}", token.rsplit_once('.').unwrap().0, b64(&[0u8; 64]));
    assert_eq!(reason_of(&engine, &zero), Reason::BadSignature);
}

#[test]
fn key_selection_follows_kid_exactly_and_binds_each_key_to_its_alg() {
    let engine = engine(json!({}));
    let c = claims();
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "unknown kid",
            sign(&header("ES256", "nope"), &c, Signer::Es256("ec")),
            Reason::UnknownKid,
        ),
        (
            "kid differs in case",
            sign(&header("ES256", "EC-1"), &c, Signer::Es256("ec")),
            Reason::UnknownKid,
        ),
        (
            "no kid, one ES256 key",
            sign(&json!({"alg": "ES256"}), &c, Signer::Es256("ec")),
            Reason::Allowed,
        ),
        (
            "no kid, one HS256 key",
            sign(&json!({"alg": "HS256"}), &c, Signer::Hs256(HMAC_SECRET)),
            Reason::Allowed,
        ),
        (
            "RS256 token on the PS256 key",
            sign(&header("RS256", "rsa-2"), &c, Signer::Rs256("rsa2048_b")),
            Reason::DisallowedAlgorithm,
        ),
        (
            "PS256 token on the RS256 key",
            sign(&header("PS256", "rsa-1"), &c, Signer::Ps256("rsa2048")),
            Reason::DisallowedAlgorithm,
        ),
        (
            "ES256 token on the Ed25519 key",
            sign(&header("ES256", "ed-1"), &c, Signer::Es256("ec")),
            Reason::DisallowedAlgorithm,
        ),
        (
            "HS256 token on the EC key",
            sign(&header("HS256", "ec-1"), &c, Signer::Hs256(HMAC_SECRET)),
            Reason::DisallowedAlgorithm,
        ),
    ];
    for (name, token, expected) in cases {
        assert_eq!(
            reason_of(&engine, &token),
            expected,
            "{name}: {:?}",
            verify(&engine, &token).err()
        );
    }
}

#[test]
fn rsa_public_key_used_as_hmac_secret_is_refused() {
    // The classic alg-confusion attack: HS256 signed with the bytes of the RSA public key.
    let engine = engine(json!({}));
    let n = private_jwk("rsa2048")["n"].as_str().unwrap().to_string();
    let secret: &'static [u8] = Box::leak(n.into_bytes().into_boxed_slice());
    for kid in [Some("rsa-1"), None] {
        let h = match kid {
            Some(kid) => header("HS256", kid),
            None => json!({"alg": "HS256"}),
        };
        let token = sign(&h, &claims(), Signer::Hs256(secret));
        let reason = reason_of(&engine, &token);
        assert!(
            matches!(reason, Reason::DisallowedAlgorithm | Reason::BadSignature),
            "{kid:?}: {reason:?}"
        );
    }
}

#[test]
fn token_without_kid_is_ambiguous_when_the_issuer_has_two_keys_for_its_alg() {
    let extra = json!({"issuers": [{"issuer": ISSUER, "jwks": {"keys": [public_jwk("ec", None), public_jwk("ec_b", None)]}}]});
    let engine = engine(extra);
    let token = sign(&json!({"alg": "ES256"}), &claims(), Signer::Es256("ec"));
    let err = verify(&engine, &token).unwrap_err();
    assert_eq!(err.reason, Reason::UnknownKid);
    assert_eq!(
        err.description,
        "token names no kid and the issuer has 2 ES256 keys"
    );
    assert_eq!(err.refetch_jwks, None);
}

#[test]
fn unknown_kid_asks_for_a_refetch_only_when_the_issuer_has_remote_keys() {
    let mut engine = engine(json!({}));
    let inline = sign(&header("ES256", "nope"), &claims(), Signer::Es256("ec"));
    assert_eq!(verify(&engine, &inline).unwrap_err().refetch_jwks, None);

    let remote_claims = claims_with(json!({"iss": REMOTE_ISSUER}));
    let remote = sign(
        &header("ES256", "ec-2"),
        &remote_claims,
        Signer::Es256("ec_b"),
    );
    let err = verify(&engine, &remote).unwrap_err();
    assert_eq!(
        (err.reason, err.refetch_jwks),
        (Reason::UnknownKid, Some(1))
    );
    assert!(!engine.has_remote_keys(1));

    let jwks = json!({"keys": [public_jwk("ec_b", None)]}).to_string();
    assert_eq!(engine.set_remote_jwks(1, jwks.as_bytes()), Ok(1));
    assert!(engine.has_remote_keys(1));
    assert!(verify(&engine, &remote).is_ok());
    let decision = engine.evaluate(
        &Request {
            method: "GET",
            path: "/",
            token: Some(&inline),
        },
        None,
        &NoRevocations,
        NOW,
    );
    assert_eq!(decision.refetch_jwks, None);
}

#[test]
fn a_token_naming_a_key_of_an_algorithm_this_edge_does_not_verify_is_refused_for_its_algorithm() {
    // The issuer's remote set: its ES256 signing key, an ES384 key and an RSA key over 4096 bits. The set loads
    // (the other two are left out), the ES256 key verifies, and a token naming a left-out key is refused naming
    // the algorithm instead of an unknown kid, without asking for a refetch that could not help.
    let mut engine = engine(json!({}));
    let mut n = vec![0xffu8; 1024];
    n[1023] = 0xfb;
    let jwks = json!({"keys": [
        public_jwk("ec_b", None),
        public_jwk("ec384_public", None),
        {"kty": "RSA", "kid": "rsa-8192", "n": b64(&n), "e": "AQAB"},
    ]})
    .to_string();
    assert_eq!(engine.set_remote_jwks(1, jwks.as_bytes()), Ok(1));
    let remote_claims = claims_with(json!({"iss": REMOTE_ISSUER}));
    let good = sign(
        &header("ES256", "ec-2"),
        &remote_claims,
        Signer::Es256("ec_b"),
    );
    assert!(verify(&engine, &good).is_ok());

    // A token asking for RS256 with the 8192-bit key's kid: parsed, then refused at key selection.
    let big = sign(
        &header("RS256", "rsa-8192"),
        &remote_claims,
        Signer::Rs256("rsa2048"),
    );
    let err = verify(&engine, &big).unwrap_err();
    assert_eq!(
        (err.reason, err.description.as_str(), err.refetch_jwks),
        (
            Reason::DisallowedAlgorithm,
            "algorithm RS256 with a 8192-bit key is not supported by this edge (key \"rsa-8192\" of issuer \"https://remote.test\")",
            None
        )
    );
    // A token asking for ES384 with the ES384 key's kid is refused for its algorithm, before any key is looked up.
    let es384 = sign(&header("ES384", "ec-384"), &remote_claims, Signer::Unsigned);
    let err = verify(&engine, &es384).unwrap_err();
    assert_eq!(
        (err.reason, err.description.as_str(), err.refetch_jwks),
        (
            Reason::DisallowedAlgorithm,
            "algorithm ES384 is not supported by this edge (it verifies ES256, RS256, PS256, EdDSA, HS256)",
            None
        )
    );
    // A token asking for ES256 with the ES384 key's kid (an algorithm swap) is refused the same way.
    let swapped = sign(
        &header("ES256", "ec-384"),
        &remote_claims,
        Signer::Es256("ec_b"),
    );
    let err = verify(&engine, &swapped).unwrap_err();
    assert_eq!(err.reason, Reason::DisallowedAlgorithm);
    assert!(
        err.description
            .starts_with("algorithm ES384 is not supported by this edge (key \"ec-384\""),
        "{}",
        err.description
    );
    // A kid nobody published is still unknown, and may still be refetched.
    let unknown = sign(
        &header("ES256", "ec-9"),
        &remote_claims,
        Signer::Es256("ec_b"),
    );
    let err = verify(&engine, &unknown).unwrap_err();
    assert_eq!(
        (err.reason, err.refetch_jwks),
        (Reason::UnknownKid, Some(1))
    );
    // Through the whole decision the answer is invalid_token with that description.
    let decision = engine.evaluate(
        &Request {
            method: "GET",
            path: "/",
            token: Some(&big),
        },
        None,
        &NoRevocations,
        NOW,
    );
    assert_eq!(decision.status, 401);
    assert_eq!(
        crate::challenge::error_code(&decision),
        Some("invalid_token")
    );
    assert!(decision
        .description
        .starts_with("algorithm RS256 with a 8192-bit key is not supported by this edge"));
}

#[test]
fn inline_keys_of_an_algorithm_this_edge_does_not_verify_are_left_out_too() {
    let mut config = config_json(json!({}));
    config["issuers"][0]["jwks"]["keys"]
        .as_array_mut()
        .unwrap()
        .push(public_jwk("ec384_public", None));
    let engine = Engine::from_json(config.to_string().as_bytes()).unwrap();
    let inline = engine.inline_keys(0).unwrap();
    assert_eq!(inline.unsupported_alg("ec-384"), Some("ES384"));
    let swapped = sign(&header("ES256", "ec-384"), &claims(), Signer::Es256("ec"));
    assert_eq!(
        verify(&engine, &swapped).unwrap_err().reason,
        Reason::DisallowedAlgorithm
    );
}

#[test]
fn remote_jwks_refuses_symmetric_keys_and_keeps_the_previous_set_on_error() {
    let mut engine = engine(json!({}));
    let good = json!({"keys": [public_jwk("ec_b", None)]}).to_string();
    engine.set_remote_jwks(1, good.as_bytes()).unwrap();
    let hmac = json!({"keys": [hmac_jwk()]}).to_string();
    let err = engine.set_remote_jwks(1, hmac.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("only accepted inline"), "{err}");
    assert_eq!(engine.remote_keys(1).unwrap().kids(), vec!["ec-2"]);
    assert_eq!(
        engine.set_remote_jwks(0, good.as_bytes()),
        Err(crate::jwks::JwksError::NotRemote(0))
    );
    assert_eq!(
        engine.set_remote_jwks(7, good.as_bytes()),
        Err(crate::jwks::JwksError::NoSuchIssuer(7))
    );
}

/// (label, claims change, now, expected reason, expected description or "")
#[test]
fn time_edges_with_leeway_are_pinned() {
    let engine = engine(json!({})); // leeway 60
    let exp = NOW + 100;
    let cases: Vec<(&str, Value, u64, Reason, &str)> = vec![
        (
            "one second before exp+leeway",
            json!({"exp": exp}),
            exp + 59,
            Reason::Allowed,
            "",
        ),
        (
            "exactly at exp+leeway",
            json!({"exp": exp}),
            exp + 60,
            Reason::Expired,
            "token expired 60s ago (leeway 60s)",
        ),
        (
            "one second past exp+leeway",
            json!({"exp": exp}),
            exp + 61,
            Reason::Expired,
            "token expired 61s ago (leeway 60s)",
        ),
        (
            "long expired",
            json!({"exp": exp}),
            exp + 102,
            Reason::Expired,
            "token expired 102s ago (leeway 60s)",
        ),
        (
            "nbf exactly at now+leeway",
            json!({"nbf": NOW + 60}),
            NOW,
            Reason::Allowed,
            "",
        ),
        (
            "nbf one second past now+leeway",
            json!({"nbf": NOW + 61}),
            NOW,
            Reason::NotYetValid,
            "token not valid for another 61s (leeway 60s)",
        ),
        (
            "iat exactly at now+leeway",
            json!({"iat": NOW + 60}),
            NOW,
            Reason::Allowed,
            "",
        ),
        (
            "iat one second past now+leeway",
            json!({"iat": NOW + 61}),
            NOW,
            Reason::IssuedInFuture,
            "token issued 61s in the future (leeway 60s)",
        ),
        (
            "no exp",
            json!({"exp": null}),
            NOW,
            Reason::MissingExpiry,
            "token has no exp claim and require_exp is on",
        ),
        (
            "exp near u64::MAX",
            json!({"exp": u64::MAX}),
            NOW,
            Reason::Allowed,
            "",
        ),
    ];
    for (label, change, now, reason, description) in cases {
        let token = es256_token(&claims_with(change));
        match engine.verify(&token, now) {
            Ok(_) => assert_eq!(reason, Reason::Allowed, "{label}"),
            Err(e) => {
                assert_eq!(e.reason, reason, "{label}: {}", e.description);
                assert_eq!(e.description, description, "{label}");
            }
        }
    }
}

#[test]
fn zero_leeway_expires_exactly_at_exp() {
    let engine = engine(json!({"clock_skew_seconds": 0}));
    let token = es256_token(&claims_with(json!({"exp": NOW + 5})));
    assert!(engine.verify(&token, NOW + 4).is_ok());
    assert_eq!(
        engine.verify(&token, NOW + 5).unwrap_err().description,
        "token expired 0s ago (leeway 0s)"
    );
}

#[test]
fn exp_is_optional_when_require_exp_is_off() {
    let engine = engine(json!({"require_exp": false}));
    let token = es256_token(&claims_with(json!({"exp": null})));
    assert!(verify(&engine, &token).is_ok());
}

#[test]
fn issuer_and_audience_checks() {
    let engine = engine(json!({}));
    let cases: Vec<(&str, Value, Reason, &str)> = vec![
        (
            "unknown issuer",
            json!({"iss": "https://evil.test"}),
            Reason::WrongIssuer,
            r#"issuer "https://evil.test" is not configured"#,
        ),
        (
            "issuer differs by a slash",
            json!({"iss": format!("{ISSUER}/")}),
            Reason::WrongIssuer,
            "",
        ),
        (
            "no issuer",
            json!({"iss": null}),
            Reason::WrongIssuer,
            "token has no iss claim",
        ),
        (
            "issuer not a string",
            json!({"iss": 5}),
            Reason::Malformed,
            "",
        ),
        (
            "aud array intersecting",
            json!({"aud": ["other", "api"]}),
            Reason::Allowed,
            "",
        ),
        (
            "aud string other",
            json!({"aud": "other"}),
            Reason::WrongAudience,
            r#"audience "other" is not accepted, expected one of "api""#,
        ),
        (
            "aud array disjoint",
            json!({"aud": ["a", "b"]}),
            Reason::WrongAudience,
            "",
        ),
        (
            "no aud",
            json!({"aud": null}),
            Reason::WrongAudience,
            r#"token has no aud claim, expected one of "api""#,
        ),
        ("aud not a string", json!({"aud": 3}), Reason::Malformed, ""),
        (
            "aud array with a number",
            json!({"aud": ["api", 3]}),
            Reason::Malformed,
            "",
        ),
    ];
    for (label, change, reason, description) in cases {
        let token = es256_token(&claims_with(change));
        match verify(&engine, &token) {
            Ok(_) => assert_eq!(reason, Reason::Allowed, "{label}"),
            Err(e) => {
                assert_eq!(e.reason, reason, "{label}: {}", e.description);
                if !description.is_empty() {
                    assert_eq!(e.description, description, "{label}");
                }
            }
        }
    }
}

#[test]
fn issuer_without_audiences_skips_the_audience_check() {
    let extra =
        json!({"issuers": [{"issuer": ISSUER, "jwks": {"keys": [public_jwk("ec", None)]}}]});
    let engine = engine(extra);
    assert!(verify(&engine, &es256_token(&claims_with(json!({"aud": null})))).is_ok());
    assert!(verify(
        &engine,
        &es256_token(&claims_with(json!({"aud": "anything"})))
    )
    .is_ok());
}

#[test]
fn typ_allow_list_is_case_insensitive_and_ignores_the_application_prefix() {
    let engine = engine(json!({"allowed_typ": ["at+jwt"]}));
    let cases: Vec<(Option<&str>, Reason)> = vec![
        (Some("at+jwt"), Reason::Allowed),
        (Some("AT+JWT"), Reason::Allowed),
        (Some("application/at+jwt"), Reason::Allowed),
        (Some("Application/AT+JWT"), Reason::Allowed),
        (Some("JWT"), Reason::WrongType),
        (Some("application/jwt"), Reason::WrongType),
        (None, Reason::WrongType),
    ];
    for (typ, expected) in cases {
        let mut h = header("ES256", "ec-1");
        if let Some(typ) = typ {
            h["typ"] = typ.into();
        }
        let token = sign(&h, &claims(), Signer::Es256("ec"));
        assert_eq!(reason_of(&engine, &token), expected, "{typ:?}");
    }
    let config_prefixed =
        crate::test_support::engine(json!({"allowed_typ": ["application/at+jwt"]}));
    assert!(verify(&config_prefixed, &es256_token(&claims())).is_ok());
    let any = crate::test_support::engine(json!({}));
    assert!(verify(
        &any,
        &sign(
            &json!({"alg": "ES256", "kid": "ec-1", "typ": "whatever"}),
            &claims(),
            Signer::Es256("ec")
        )
    )
    .is_ok());
}

#[test]
fn required_claims_must_be_present_and_not_null() {
    let engine = engine(json!({"required_claims": ["tenant", "org.id"]}));
    let ok = es256_token(&claims_with(json!({"tenant": "t1", "org": {"id": 4}})));
    assert!(verify(&engine, &ok).is_ok());
    let missing = es256_token(&claims_with(json!({"org": {"id": 4}})));
    let err = verify(&engine, &missing).unwrap_err();
    assert_eq!(
        (err.reason, err.description.as_str()),
        (
            Reason::MissingClaim,
            r#"required claim "tenant" is missing"#
        )
    );
    let nested_missing = es256_token(&claims_with(json!({"tenant": "t1", "org": {}})));
    assert_eq!(reason_of(&engine, &nested_missing), Reason::MissingClaim);
}

#[test]
fn scopes_roles_and_client_id_are_read_from_their_claims() {
    let engine = engine(json!({"roles_claim": "realm_access.roles"}));
    let cases: Vec<ClaimCase> = vec![
        (
            json!({"scope": "a b  c", "scp": null}),
            vec!["a", "b", "c"],
            vec![],
            Some("cli-1"),
        ),
        (
            json!({"scope": null, "scp": "x y"}),
            vec!["x", "y"],
            vec![],
            Some("cli-1"),
        ),
        (
            json!({"scope": "a", "scp": ["a", "b"]}),
            vec!["a", "b"],
            vec![],
            Some("cli-1"),
        ),
        (
            json!({"scope": null, "realm_access": {"roles": ["admin", "ops"]}}),
            vec![],
            vec!["admin", "ops"],
            Some("cli-1"),
        ),
        (
            json!({"scope": null, "realm_access": {"roles": "admin"}}),
            vec![],
            vec!["admin"],
            Some("cli-1"),
        ),
        (
            json!({"scope": null, "client_id": null, "azp": "web"}),
            vec![],
            vec![],
            Some("web"),
        ),
        (
            json!({"scope": null, "client_id": null}),
            vec![],
            vec![],
            None,
        ),
    ];
    for (change, scopes, roles, client) in cases {
        let t = verify(&engine, &es256_token(&claims_with(change.clone()))).unwrap();
        assert_eq!(t.scopes, scopes, "{change}");
        assert_eq!(t.roles, roles, "{change}");
        assert_eq!(t.client_id.as_deref(), client, "{change}");
    }
    for bad in [
        json!({"scope": ["a"]}),
        json!({"scp": 5}),
        json!({"realm_access": {"roles": [1]}}),
        json!({"client_id": 9}),
    ] {
        assert_eq!(
            reason_of(&engine, &es256_token(&claims_with(bad.clone()))),
            Reason::Malformed,
            "{bad}"
        );
    }
}

fn rules_engine() -> Engine {
    engine(json!({
        "rules": [
            {"match": {"path": "/health"}, "allow_anonymous": true},
            {"match": {"prefix": "/public", "methods": ["GET", "HEAD"]}, "allow_anonymous": true},
            {"match": {"prefix": "/admin"}, "require_roles": ["admin"]},
            {"match": {"prefix": "/orders", "methods": ["POST"]}, "require_scopes": ["orders:write", "write"]},
            {"match": {"prefix": "/orders"}, "require_any_scopes": ["orders:read", "read"]},
            {"match": {"prefix": "/"}, "require_scopes": ["never"], "allow_anonymous": false},
            {"match": {"prefix": "/unreachable"}, "allow_anonymous": true}
        ]
    }))
}

#[test]
fn rules_first_match_wins_and_carry_their_requirements() {
    let engine = rules_engine();
    let user = es256_token(&claims()); // scopes read write, roles user
    let admin = es256_token(&claims_with(
        json!({"roles": ["admin"], "scope": "orders:write write"}),
    ));
    let expired = es256_token(&claims_with(json!({"exp": NOW - 1000})));
    let cases: Vec<RuleCase> = vec![
        ("GET", "/health", None, Reason::Anonymous, Some(0)),
        ("GET", "/health", Some(&user), Reason::Allowed, Some(0)),
        ("GET", "/health", Some(&expired), Reason::Expired, Some(0)),
        (
            "GET",
            "/health",
            Some("garbage"),
            Reason::Malformed,
            Some(0),
        ),
        ("GET", "/health/x", None, Reason::MissingToken, Some(5)),
        ("GET", "/public", None, Reason::Anonymous, Some(1)),
        ("HEAD", "/public/a/b", None, Reason::Anonymous, Some(1)),
        ("POST", "/public/a", None, Reason::MissingToken, Some(5)),
        ("GET", "/publicity", None, Reason::MissingToken, Some(5)),
        (
            "GET",
            "/public/../admin",
            None,
            Reason::MissingToken,
            Some(2),
        ),
        (
            "GET",
            "/public/%2e%2e/admin",
            Some(&user),
            Reason::InsufficientRole,
            Some(2),
        ),
        (
            "GET",
            "/admin",
            Some(&user),
            Reason::InsufficientRole,
            Some(2),
        ),
        (
            "GET",
            "/admin/users",
            Some(&admin),
            Reason::Allowed,
            Some(2),
        ),
        (
            "POST",
            "/orders",
            Some(&user),
            Reason::InsufficientScope,
            Some(3),
        ),
        ("POST", "/orders/1", Some(&admin), Reason::Allowed, Some(3)),
        ("GET", "/orders/1", Some(&user), Reason::Allowed, Some(4)),
        (
            "GET",
            "/orders/1",
            Some(&admin),
            Reason::InsufficientScope,
            Some(4),
        ),
        (
            "GET",
            "/other",
            Some(&user),
            Reason::InsufficientScope,
            Some(5),
        ),
        ("GET", "/unreachable", None, Reason::MissingToken, Some(5)),
    ];
    for (method, path, token, reason, rule) in cases {
        let d = engine.evaluate(
            &Request {
                method,
                path,
                token,
            },
            None,
            &NoRevocations,
            NOW,
        );
        assert_eq!(
            (d.reason, d.rule),
            (reason, rule),
            "{method} {path} {}: {}",
            token.is_some(),
            d.description
        );
        assert_eq!(d.status, reason.status());
        assert_eq!(d.verdict == Verdict::Allow, reason.is_allowed());
    }
}

#[test]
fn no_matching_rule_requires_a_valid_token() {
    let engine = engine(json!({"rules": [{"match": {"path": "/open"}, "allow_anonymous": true}]}));
    let none = engine.evaluate(
        &Request {
            method: "GET",
            path: "/x",
            token: None,
        },
        None,
        &NoRevocations,
        NOW,
    );
    assert_eq!(
        (none.reason, none.status, none.rule),
        (Reason::MissingToken, 401, None)
    );
    assert_eq!(none.description, "no token presented");
    let token = es256_token(&claims());
    let ok = engine.evaluate(
        &Request {
            method: "GET",
            path: "/x",
            token: Some(&token),
        },
        None,
        &NoRevocations,
        NOW,
    );
    assert_eq!((ok.reason, ok.status), (Reason::Allowed, 200));
    assert_eq!(ok.token.as_ref().unwrap().sub.as_deref(), Some("alice"));
}

#[test]
fn insufficient_scope_names_the_required_scopes() {
    let engine = rules_engine();
    let user = es256_token(&claims());
    let d = engine.evaluate(
        &Request {
            method: "POST",
            path: "/orders",
            token: Some(&user),
        },
        None,
        &NoRevocations,
        NOW,
    );
    assert_eq!(d.status, 403);
    assert_eq!(d.required_scope.as_deref(), Some("orders:write write"));
    assert_eq!(
        d.description,
        r#"missing scope "orders:write" (token has "read", "write")"#
    );
    let only_write = es256_token(&claims_with(json!({"scope": "profile"})));
    let d = engine.evaluate(
        &Request {
            method: "GET",
            path: "/orders",
            token: Some(&only_write),
        },
        None,
        &NoRevocations,
        NOW,
    );
    assert_eq!(d.required_scope.as_deref(), Some("orders:read read"));
    assert_eq!(
        d.description,
        r#"requires one of scopes "orders:read", "read" (token has "profile")"#
    );
    let d = engine.evaluate(
        &Request {
            method: "GET",
            path: "/admin",
            token: Some(&user),
        },
        None,
        &NoRevocations,
        NOW,
    );
    assert_eq!(
        (d.reason, d.status, d.required_scope.clone()),
        (Reason::InsufficientRole, 403, None)
    );
    assert_eq!(
        d.description,
        r#"requires one of roles "admin" (token has "user")"#
    );
}

#[test]
fn extraction_failures_are_denied_even_on_anonymous_routes() {
    let engine = rules_engine();
    let rejection = crate::token::Rejection::new(
        Reason::Malformed,
        "authorization header uses the \"Basic\" scheme, expected \"Bearer\"",
    );
    let d = engine.rejected(
        &Request {
            method: "GET",
            path: "/health",
            token: None,
        },
        rejection,
    );
    assert_eq!(
        (d.verdict, d.reason, d.status, d.rule),
        (Verdict::Deny, Reason::Malformed, 401, Some(0))
    );
}

struct RevokeJti(&'static str);

impl RevocationView for RevokeJti {
    fn check(&self, token: &VerifiedToken) -> Option<String> {
        (token.jti.as_deref() == Some(self.0)).then(|| "token revoked (jti)".to_string())
    }
}

struct Stale;

impl RevocationView for Stale {
    fn check(&self, _: &VerifiedToken) -> Option<String> {
        None
    }
    fn stale(&self, _now: u64) -> Option<String> {
        Some("revocation state is 400s old, maximum 300s".to_string())
    }
}

#[test]
fn cache_hit_skips_verification_but_not_time_revocation_or_rules() {
    let engine = rules_engine();
    let mut cache = TokenCache::new(100);
    let token = es256_token(&claims());
    let req = Request {
        method: "GET",
        path: "/orders/1",
        token: Some(&token),
    };

    let first = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
    assert_eq!(
        (first.reason, first.cache),
        (Reason::Allowed, CacheOutcome::Miss)
    );
    let second = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
    assert_eq!(
        (second.reason, second.cache),
        (Reason::Allowed, CacheOutcome::Hit)
    );
    assert!(
        Arc::ptr_eq(
            first.token.as_ref().unwrap(),
            second.token.as_ref().unwrap()
        ),
        "a hit shares the verified token"
    );

    let revoked = engine.evaluate(&req, Some(&mut cache), &RevokeJti("jti-1"), NOW);
    assert_eq!(
        (revoked.reason, revoked.cache, revoked.status),
        (Reason::Revoked, CacheOutcome::Hit, 401)
    );
    assert_eq!(revoked.description, "token revoked (jti)");

    let stale = engine.evaluate(&req, Some(&mut cache), &Stale, NOW);
    assert_eq!(
        (stale.reason, stale.cache),
        (Reason::StaleRevocationState, CacheOutcome::Hit)
    );

    let admin_req = Request {
        method: "GET",
        path: "/admin",
        token: Some(&token),
    };
    let forbidden = engine.evaluate(&admin_req, Some(&mut cache), &NoRevocations, NOW);
    assert_eq!(
        (forbidden.reason, forbidden.cache),
        (Reason::InsufficientRole, CacheOutcome::Hit)
    );
    assert_eq!(cache.stats().hits, 4);
}

#[test]
fn time_is_rechecked_on_cache_hits() {
    let engine = engine(json!({}));
    let mut cache = TokenCache::new(10);
    let token = es256_token(&claims_with(json!({"nbf": NOW + 300})));
    let req = Request {
        method: "GET",
        path: "/",
        token: Some(&token),
    };
    let first = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
    assert_eq!(
        (first.reason, first.cache),
        (Reason::NotYetValid, CacheOutcome::Miss)
    );
    let second = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
    assert_eq!(
        (second.reason, second.cache),
        (Reason::NotYetValid, CacheOutcome::Hit)
    );
    // Still inside the entry's lifetime (max_ttl 300s), now past nbf - leeway.
    let later = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW + 250);
    assert_eq!(
        (later.reason, later.cache),
        (Reason::Allowed, CacheOutcome::Hit)
    );
}

#[test]
fn cache_entries_never_outlive_exp() {
    let engine = engine(json!({}));
    let mut cache = TokenCache::new(10);
    let token = es256_token(&claims_with(json!({"exp": NOW + 30})));
    let req = Request {
        method: "GET",
        path: "/",
        token: Some(&token),
    };
    assert_eq!(
        engine
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW)
            .cache,
        CacheOutcome::Miss
    );
    assert_eq!(
        engine
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW + 29)
            .cache,
        CacheOutcome::Hit
    );
    // Past exp but inside the leeway: still valid, but verified afresh and not cached again.
    let in_leeway = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW + 30);
    assert_eq!(
        (in_leeway.reason, in_leeway.cache),
        (Reason::Allowed, CacheOutcome::Miss)
    );
    assert_eq!(cache.len(), 0);
    let expired = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW + 90);
    assert_eq!(
        (expired.reason, expired.cache),
        (Reason::Expired, CacheOutcome::Miss)
    );
}

#[test]
fn tokens_without_exp_are_cached_for_at_most_max_ttl() {
    let engine =
        engine(json!({"require_exp": false, "cache": {"max_entries": 10, "max_ttl_seconds": 60}}));
    let mut cache = TokenCache::new(10);
    let token = es256_token(&claims_with(json!({"exp": null})));
    let req = Request {
        method: "GET",
        path: "/",
        token: Some(&token),
    };
    assert_eq!(
        engine
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW)
            .cache,
        CacheOutcome::Miss
    );
    assert_eq!(
        engine
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW + 59)
            .cache,
        CacheOutcome::Hit
    );
    assert_eq!(
        engine
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW + 60)
            .cache,
        CacheOutcome::Miss
    );
}

#[test]
fn failed_tokens_are_not_cached() {
    let engine = engine(json!({}));
    let mut cache = TokenCache::new(10);
    let bad = sign(&header("ES256", "ec-1"), &claims(), Signer::Es256("ec_b"));
    let req = Request {
        method: "GET",
        path: "/",
        token: Some(&bad),
    };
    for _ in 0..2 {
        let d = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
        assert_eq!(
            (d.reason, d.cache),
            (Reason::BadSignature, CacheOutcome::Miss)
        );
    }
    assert!(cache.is_empty());
}

#[test]
fn cache_is_invalidated_when_remote_keys_change_but_not_on_identical_refresh() {
    let mut engine = engine(json!({}));
    let mut cache = TokenCache::new(10);
    let keys_a = json!({"keys": [public_jwk("ec_b", None)]}).to_string();
    let keys_b = json!({"keys": [public_jwk("ec", Some("ES256"))]}).to_string();
    engine.set_remote_jwks(1, keys_a.as_bytes()).unwrap();
    let token = sign(
        &header("ES256", "ec-2"),
        &claims_with(json!({"iss": REMOTE_ISSUER, "aud": null})),
        Signer::Es256("ec_b"),
    );
    let req = Request {
        method: "GET",
        path: "/",
        token: Some(&token),
    };
    assert_eq!(
        engine
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW)
            .cache,
        CacheOutcome::Miss
    );
    assert_eq!(
        engine
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW)
            .cache,
        CacheOutcome::Hit
    );

    let generation = engine.generation();
    engine.set_remote_jwks(1, keys_a.as_bytes()).unwrap();
    assert_eq!(
        engine.generation(),
        generation,
        "same keys keep the generation"
    );
    assert_eq!(
        engine
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW)
            .cache,
        CacheOutcome::Hit
    );

    engine.set_remote_jwks(1, keys_b.as_bytes()).unwrap();
    assert_ne!(engine.generation(), generation);
    let d = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
    assert_eq!(
        (d.reason, d.cache, d.refetch_jwks),
        (Reason::UnknownKid, CacheOutcome::Miss, Some(1))
    );
}

#[test]
fn a_cache_reused_by_a_new_engine_starts_cold() {
    let mut cache = TokenCache::new(10);
    let token = es256_token(&claims());
    let req = Request {
        method: "GET",
        path: "/",
        token: Some(&token),
    };
    let first = engine(json!({}));
    assert_eq!(
        first
            .evaluate(&req, Some(&mut cache), &NoRevocations, NOW)
            .cache,
        CacheOutcome::Miss
    );
    let second = engine(json!({"required_claims": ["tenant"]}));
    let d = second.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
    assert_eq!(
        (d.reason, d.cache),
        (Reason::MissingClaim, CacheOutcome::Miss)
    );
}

#[test]
fn full_cache_evicts_and_stays_bounded() {
    let engine = engine(json!({}));
    let mut cache = TokenCache::new(2);
    let tokens: Vec<String> = (0..3)
        .map(|i| es256_token(&claims_with(json!({"jti": format!("t{i}")}))))
        .collect();
    for t in &tokens {
        engine.evaluate(
            &Request {
                method: "GET",
                path: "/",
                token: Some(t),
            },
            Some(&mut cache),
            &NoRevocations,
            NOW,
        );
    }
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.stats().evictions, 1);
    let oldest = engine.evaluate(
        &Request {
            method: "GET",
            path: "/",
            token: Some(&tokens[0]),
        },
        Some(&mut cache),
        &NoRevocations,
        NOW,
    );
    assert_eq!(oldest.cache, CacheOutcome::Miss);
    let newest = engine.evaluate(
        &Request {
            method: "GET",
            path: "/",
            token: Some(&tokens[2]),
        },
        Some(&mut cache),
        &NoRevocations,
        NOW,
    );
    assert_eq!(newest.cache, CacheOutcome::Hit);
}

#[test]
fn forwarded_claims_become_headers_on_allow_only() {
    let engine = engine(json!({
        "forward_claims": [
            {"claim": "sub", "header": "x-jwt-sub"},
            {"claim": "roles", "header": "x-jwt-roles"},
            {"claim": "exp", "header": "x-jwt-exp"},
            {"claim": "org.name", "header": "x-jwt-org"},
            {"claim": "missing", "header": "x-jwt-missing"},
            {"claim": "evil", "header": "x-jwt-evil"}
        ],
        "forward_payload_header": "x-jwt-payload",
        "rules": [{"match": {"prefix": "/admin"}, "require_roles": ["admin"]}]
    }));
    let token = es256_token(&claims_with(
        json!({"roles": ["user", "dev"], "org": {"name": "acme"}, "evil": "a\r\nx-injected: 1"}),
    ));
    let d = engine.evaluate(
        &Request {
            method: "GET",
            path: "/",
            token: Some(&token),
        },
        None,
        &NoRevocations,
        NOW,
    );
    let payload = token.split('.').nth(1).unwrap().to_string();
    assert_eq!(
        d.headers_to_set(),
        [
            ("x-jwt-sub".to_string(), "alice".to_string()),
            ("x-jwt-roles".to_string(), "user,dev".to_string()),
            ("x-jwt-exp".to_string(), (NOW + 3600).to_string()),
            ("x-jwt-org".to_string(), "acme".to_string()),
            ("x-jwt-evil".to_string(), "ax-injected: 1".to_string()),
            ("x-jwt-payload".to_string(), payload),
        ]
    );
    let denied = engine.evaluate(
        &Request {
            method: "GET",
            path: "/admin",
            token: Some(&token),
        },
        None,
        &NoRevocations,
        NOW,
    );
    assert!(denied.headers_to_set().is_empty());
    // A denial keeps the verified token (for the usage report) but sets none of its headers.
    assert!(denied.token.is_some_and(|t| !t.forwarded.is_empty()));
}

#[test]
fn descriptions_never_contain_the_token() {
    let engine = rules_engine();
    let token = es256_token(&claims());
    let tampered = format!("{}x", token.get(..token.len() - 1).unwrap());
    for t in [&token, &tampered] {
        for path in ["/", "/admin", "/orders"] {
            let d = engine.evaluate(
                &Request {
                    method: "POST",
                    path,
                    token: Some(t),
                },
                None,
                &NoRevocations,
                NOW,
            );
            assert!(!d.description.contains(t.as_str()));
            assert!(!crate::challenge::json_body(&d).contains(t.as_str()));
        }
    }
}

#[test]
fn engine_new_names_the_bad_inline_key() {
    let mut c = config_json(json!({}));
    c["issuers"][0]["jwks"]["keys"][2] = public_jwk("rsa1024_public", None);
    let err = Engine::from_json(c.to_string().as_bytes()).unwrap_err();
    assert_eq!(err.field, "issuers[0].jwks");
    assert_eq!(
        err.problem,
        r#"keys[2] (kid "rsa-weak"): rsa modulus is 1024 bits, minimum 2048"#
    );
}

/// Prints per-operation costs (native, test profile: crypto crates at opt-level 2).
/// Run: `cargo test -p edgewarden-core --lib -- --ignored --nocapture measure_`.
#[test]
#[ignore]
fn measure_verification_and_cache_hit_costs() {
    use std::time::Instant;
    let engine = engine(json!({}));
    let cases = [
        (
            "ES256",
            sign(&header("ES256", "ec-1"), &claims(), Signer::Es256("ec")),
        ),
        (
            "RS256",
            sign(
                &header("RS256", "rsa-1"),
                &claims(),
                Signer::Rs256("rsa2048"),
            ),
        ),
        (
            "PS256",
            sign(
                &header("PS256", "rsa-2"),
                &claims(),
                Signer::Ps256("rsa2048_b"),
            ),
        ),
        (
            "EdDSA",
            sign(&header("EdDSA", "ed-1"), &claims(), Signer::EdDsa),
        ),
        (
            "HS256",
            sign(
                &header("HS256", "hs-1"),
                &claims(),
                Signer::Hs256(HMAC_SECRET),
            ),
        ),
    ];
    for (alg, token) in &cases {
        let n = 200;
        let start = Instant::now();
        for _ in 0..n {
            assert!(engine.verify(token, NOW).is_ok());
        }
        let verify_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        let mut cache = TokenCache::new(16);
        let req = Request {
            method: "GET",
            path: "/api/orders",
            token: Some(token),
        };
        engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
        let hits = 100_000;
        let start = Instant::now();
        for _ in 0..hits {
            let d = engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
            assert_eq!(d.cache, CacheOutcome::Hit);
        }
        let hit_ns = start.elapsed().as_secs_f64() * 1e9 / f64::from(hits);
        println!("{alg}: full verify {verify_us:.1} us, cached evaluate {hit_ns:.0} ns");
    }
}

#[test]
fn mutated_and_truncated_tokens_never_pass_and_never_panic() {
    // HS256 keeps the loop cheap; the parsing and claim paths are shared by every algorithm.
    let engine = engine(json!({}));
    let token = sign(
        &header("HS256", "hs-1"),
        &claims(),
        Signer::Hs256(HMAC_SECRET),
    );
    assert!(verify(&engine, &token).is_ok());
    let bytes = token.as_bytes();
    for i in 0..bytes.len() {
        for replacement in [b'A', b'_', b'-', b'.', b'=', b'{', b' ', 0u8] {
            if bytes[i] == replacement {
                continue;
            }
            let mut mutated = bytes.to_vec();
            mutated[i] = replacement;
            let mutated = String::from_utf8(mutated).unwrap();
            assert!(
                verify(&engine, &mutated).is_err(),
                "mutation at {i} to {replacement} passed"
            );
        }
        let truncated = token.get(..i).unwrap();
        assert!(
            verify(&engine, truncated).is_err(),
            "truncation to {i} passed"
        );
    }
    let multibyte = format!("{token}é");
    assert!(verify(&engine, &multibyte).is_err());
}

#[test]
fn an_engine_built_reusing_keys_takes_only_the_keys_whose_source_is_unchanged() {
    let mut old = engine(json!({}));
    let remote_jwks = json!({"keys": [public_jwk("ec_b", None)]}).to_string();
    old.set_remote_jwks(1, remote_jwks.as_bytes()).unwrap();
    let inline = es256_token(&claims());
    let remote = sign(
        &header("ES256", "ec-2"),
        &claims_with(json!({"iss": REMOTE_ISSUER})),
        Signer::Es256("ec_b"),
    );
    let same_keys = |a: &Engine, b: &Engine, issuer: usize| {
        let keys = |e: &Engine| {
            (
                e.inline_keys(issuer).map(|k| k.keys().as_ptr()),
                e.remote_keys(issuer).map(|k| k.keys().as_ptr()),
            )
        };
        keys(a) == keys(b)
    };

    // Rules and options changed, both key sources kept: the prepared keys are the old engine's own.
    let rules = json!({"rules": [{"match": {"prefix": "/admin"}, "require_scopes": ["admin"]}],
                       "clock_skew_seconds": 0});
    let new = Engine::reusing_keys(config(rules.clone()), &old).unwrap();
    assert!(same_keys(&old, &new, 0) && same_keys(&old, &new, 1));
    assert!(new.has_remote_keys(1));
    assert!(verify(&new, &inline).is_ok() && verify(&new, &remote).is_ok());
    assert_eq!(new.match_rule("GET", "/admin/x"), Some(0));
    assert_ne!(new.generation(), old.generation());

    // The issuers listed the other way round: found by issuer, not by position.
    let mut swapped = config_json(json!({}));
    let issuers = swapped["issuers"].as_array_mut().unwrap();
    issuers.reverse();
    let swapped = Engine::reusing_keys(
        Config::from_json(swapped.to_string().as_bytes()).unwrap(),
        &old,
    )
    .unwrap();
    assert!(swapped.has_remote_keys(0));
    assert!(verify(&swapped, &inline).is_ok() && verify(&swapped, &remote).is_ok());

    // A changed inline set is prepared again and only its keys verify; a changed remote source starts
    // without keys (they were fetched from somewhere else).
    let mut changed = config_json(json!({}));
    changed["issuers"][0]["jwks"] = json!({"keys": [public_jwk("ec_b", None)]});
    changed["issuers"][1]["remote_jwks"]["path"] = json!("/other-jwks");
    let changed = Engine::reusing_keys(
        Config::from_json(changed.to_string().as_bytes()).unwrap(),
        &old,
    )
    .unwrap();
    assert!(!same_keys(&old, &changed, 0));
    assert!(!changed.has_remote_keys(1));
    assert_eq!(reason_of(&changed, &inline), Reason::UnknownKid);
    assert_eq!(reason_of(&changed, &remote), Reason::UnknownKid);

    // Another issuer with the same inline set does not take its keys.
    let mut renamed = config_json(json!({}));
    renamed["issuers"][0]["issuer"] = json!("https://other.example");
    let renamed = Engine::reusing_keys(
        Config::from_json(renamed.to_string().as_bytes()).unwrap(),
        &old,
    )
    .unwrap();
    assert!(!same_keys(&old, &renamed, 0));

    // What `new` refuses, `reusing_keys` refuses the same way.
    let mut bad = config_json(json!({}));
    bad["issuers"][0]["jwks"] = json!({"keys": "none"});
    let bad = Config::from_json(bad.to_string().as_bytes()).unwrap();
    let fresh = Engine::new(bad.clone()).unwrap_err();
    let reused = Engine::reusing_keys(bad, &old).unwrap_err();
    assert_eq!(reused.to_string(), fresh.to_string());
    assert!(reused.to_string().contains("issuers[0].jwks"), "{reused}");
}
