//! Measures what key preparation, one first-time verification and one cache hit cost, natively or inside a Wasm VM.
//! `cargo run --release -p edgewarden-core --example verify_cost` natively; for V8 (the runtime Envoy uses), build with
//! `--target wasm32-wasip1` and run `node core/examples/run_wasi.mjs <file.wasm> --cpu-clock` (thread CPU time).
//! Every figure is the best of several rounds after an untimed warm-up pass (V8 tiers code up only once it is hot).
//! Tokens are signed here with jwt-compact's signing side and the fixed test keys; the library never signs.

use std::time::Instant;

use base64::Engine as _;
use edgewarden_core::{Engine, KeySet, NoRevocations, Request, TokenCache};
use jwt_compact::alg::{Ed25519, Es256, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000;
/// Distinct tokens per algorithm: each first verification is a real cache miss.
const TOKENS: u32 = 100;
/// Timed rounds; the best one is reported (the machine is shared, the minimum is the least disturbed).
const ROUNDS: usize = 5;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn public(jwk: &Value) -> Value {
    let mut jwk = jwk.clone();
    if let Some(obj) = jwk.as_object_mut() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            obj.remove(private);
        }
    }
    jwk
}

/// Best of [`ROUNDS`] runs of `f`, in microseconds per `per` operations.
fn best_us(
    per: u32,
    mut f: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64() * 1e6 / f64::from(per));
    }
    Ok(best)
}

/// A signer for one algorithm over the fixture keys.
type SignFn = Box<dyn Fn(&[u8]) -> Vec<u8>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: Value = serde_json::from_str(include_str!("../tests/fixtures/keys.json"))?;

    // Key preparation: what a JWKS load costs per key (the first ES256 load also builds the per-VM generator table).
    let ec_jwks = json!({"keys": [public(&keys["ec"])]}).to_string();
    let rsa_jwks = json!({"keys": [public(&keys["rsa2048"])]}).to_string();
    let start = Instant::now();
    KeySet::from_jwks_json(ec_jwks.as_bytes(), false)?;
    let first_ec_ms = start.elapsed().as_secs_f64() * 1e3;
    let ec_ms = best_us(1, || {
        KeySet::from_jwks_json(ec_jwks.as_bytes(), false)
            .map(drop)
            .map_err(Into::into)
    })? / 1e3;
    let rsa_ms = best_us(1, || {
        KeySet::from_jwks_json(rsa_jwks.as_bytes(), false)
            .map(drop)
            .map_err(Into::into)
    })? / 1e3;
    println!(
        "key load: ES256 first {first_ec_ms:.1} ms, later {ec_ms:.1} ms; RS256-2048 {rsa_ms:.2} ms"
    );

    let mut rsa_b = public(&keys["rsa2048_b"]);
    rsa_b["alg"] = json!("PS256");
    let config = json!({
        "issuers": [{"issuer": "https://issuer.test", "audiences": ["api"],
                     "jwks": {"keys": [public(&keys["ec"]), public(&keys["rsa2048"]), rsa_b, public(&keys["ed25519"])]}}]
    });
    let engine = Engine::from_json(config.to_string().as_bytes())?;

    let ec_jwk: JsonWebKey<'_> = serde_json::from_value(keys["ec"].clone())?;
    let ec_key = <Es256 as Algorithm>::SigningKey::try_from(&ec_jwk)?;
    let rsa_jwk: JsonWebKey<'_> = serde_json::from_value(keys["rsa2048"].clone())?;
    let rsa_key = RsaPrivateKey::try_from(&rsa_jwk)?;
    let rsa_b_jwk: JsonWebKey<'_> = serde_json::from_value(keys["rsa2048_b"].clone())?;
    let rsa_b_key = RsaPrivateKey::try_from(&rsa_b_jwk)?;
    let ed_jwk: JsonWebKey<'_> = serde_json::from_value(keys["ed25519"].clone())?;
    let ed_key = <Ed25519 as Algorithm>::SigningKey::try_from(&ed_jwk)?;
    let signers: Vec<(&str, &str, SignFn)> = vec![
        (
            "ES256",
            "ec-1",
            Box::new(move |m| Es256.sign(&ec_key, m).as_bytes().to_vec()),
        ),
        (
            "RS256",
            "rsa-1",
            Box::new(move |m| Rsa::rs256().sign(&rsa_key, m).as_bytes().to_vec()),
        ),
        (
            "PS256",
            "rsa-2",
            Box::new(move |m| Rsa::ps256().sign(&rsa_b_key, m).as_bytes().to_vec()),
        ),
        (
            "EdDSA",
            "ed-1",
            Box::new(move |m| Ed25519.sign(&ed_key, m).as_bytes().to_vec()),
        ),
    ];

    for (alg, kid, sign) in &signers {
        let tokens: Vec<String> = (0..TOKENS)
            .map(|i| {
                let header = json!({"alg": alg, "kid": kid, "typ": "at+jwt"});
                let claims = json!({"iss": "https://issuer.test", "aud": "api", "sub": format!("user-{i}"),
                                    "exp": NOW + 3600, "iat": NOW, "scope": "read write"});
                let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
                let signature = sign(input.as_bytes());
                format!("{input}.{}", b64(&signature))
            })
            .collect();
        // One untimed pass lets a Wasm VM tier its code up (V8 starts in its baseline compiler).
        for t in &tokens {
            engine.verify(t, NOW)?;
        }
        let verify_us = best_us(TOKENS, || {
            for t in &tokens {
                engine.verify(t, NOW)?;
            }
            Ok(())
        })?;
        // The full request path with a cache that has never seen the tokens: every request is a miss.
        let miss_us = best_us(TOKENS, || {
            let mut cache = TokenCache::new(10_000);
            for t in &tokens {
                let req = Request {
                    method: "GET",
                    path: "/api/orders",
                    token: Some(t),
                };
                if !engine
                    .evaluate(&req, Some(&mut cache), &NoRevocations, NOW)
                    .is_allowed()
                {
                    return Err("a valid token was refused".into());
                }
            }
            Ok(())
        })?;
        let mut cache = TokenCache::new(10_000);
        let hot = tokens.first().ok_or("no token")?;
        let req = Request {
            method: "GET",
            path: "/api/orders",
            token: Some(hot),
        };
        let hits = 20_000;
        for _ in 0..hits {
            engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
        }
        let hit_ns = best_us(hits, || {
            for _ in 0..hits {
                engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
            }
            Ok(())
        })? * 1e3;
        println!("{alg}: first verification {verify_us:.0} us (evaluate, cache miss {miss_us:.0} us), cache hit {hit_ns:.0} ns");
    }
    Ok(())
}
