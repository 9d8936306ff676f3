//! Measures what one verification and one cache hit cost, natively or inside a Wasm VM.
//! `cargo run --release -p edgewarden-core --example verify_cost` natively; for V8 (the runtime Envoy uses), build with
//! `--target wasm32-wasip1` and run the `.wasm` under `node core/examples/run_wasi.mjs <file>`.
//! Tokens are signed here with jwt-compact's signing side and the fixed test keys; the library never signs.

use std::time::Instant;

use base64::Engine as _;
use edgewarden_core::{Engine, NoRevocations, Request, TokenCache};
use jwt_compact::alg::{Es256, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000;

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: Value = serde_json::from_str(include_str!("../tests/fixtures/keys.json"))?;
    let config = json!({
        "issuers": [{"issuer": "https://issuer.test", "audiences": ["api"],
                     "jwks": {"keys": [public(&keys["ec"]), public(&keys["rsa2048"])]}}]
    });
    let engine = Engine::from_json(config.to_string().as_bytes())?;
    let ec_jwk: JsonWebKey<'_> = serde_json::from_value(keys["ec"].clone())?;
    let ec_key = <Es256 as Algorithm>::SigningKey::try_from(&ec_jwk)?;
    let rsa_jwk: JsonWebKey<'_> = serde_json::from_value(keys["rsa2048"].clone())?;
    let rsa_key = RsaPrivateKey::try_from(&rsa_jwk)?;

    let rounds = 200;
    for alg in ["ES256", "RS256"] {
        let tokens: Vec<String> = (0..rounds)
            .map(|i| {
                let kid = if alg == "ES256" { "ec-1" } else { "rsa-1" };
                let header = json!({"alg": alg, "kid": kid, "typ": "at+jwt"});
                let claims = json!({"iss": "https://issuer.test", "aud": "api", "sub": format!("user-{i}"),
                                    "exp": NOW + 3600, "iat": NOW, "scope": "read write"});
                let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
                let signature = if alg == "ES256" {
                    Es256.sign(&ec_key, input.as_bytes()).as_bytes().to_vec()
                } else {
                    Rsa::rs256().sign(&rsa_key, input.as_bytes()).as_bytes().to_vec()
                };
                format!("{input}.{}", b64(&signature))
            })
            .collect();
        // One untimed pass lets a Wasm VM tier its code up (V8 starts in its baseline compiler).
        for t in &tokens {
            engine.verify(t, NOW)?;
        }
        let start = Instant::now();
        for t in &tokens {
            engine.verify(t, NOW)?;
        }
        let verify_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        let mut cache = TokenCache::new(10_000);
        let hot = tokens.first().ok_or("no token")?;
        let req = Request {
            method: "GET",
            path: "/api/orders",
            token: Some(hot),
        };
        engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
        let hits = 20_000;
        for _ in 0..hits {
            engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
        }
        let start = Instant::now();
        for _ in 0..hits {
            engine.evaluate(&req, Some(&mut cache), &NoRevocations, NOW);
        }
        let hit_ns = start.elapsed().as_secs_f64() * 1e9 / f64::from(hits);
        println!("{alg}: first verification {verify_us:.0} us, cache hit {hit_ns:.0} ns");
    }
    Ok(())
}
