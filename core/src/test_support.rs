//! Test-only helpers: fixed key material from `tests/fixtures/keys.json`, a signer built on jwt-compact's
//! signing side, and a base configuration. Signing never ships in the library: this module is `cfg(test)`.

use std::sync::OnceLock;

use base64::Engine as _;
use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key, Rsa, RsaPrivateKey};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use serde_json::{json, Value};

use crate::config::Config;
use crate::engine::Engine;

/// The fixed "current time" of the tests.
pub(crate) const NOW: u64 = 1_700_000_000;
pub(crate) const ISSUER: &str = "https://issuer.test";
pub(crate) const REMOTE_ISSUER: &str = "https://remote.test";
/// 32-byte HMAC secret of the inline `hs-1` key.
pub(crate) const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn fixtures() -> &'static Value {
    static KEYS: OnceLock<Value> = OnceLock::new();
    KEYS.get_or_init(|| serde_json::from_str(include_str!("../tests/fixtures/keys.json")).unwrap())
}

/// The private JWK named `name` in the fixtures.
pub(crate) fn private_jwk(name: &str) -> Value {
    fixtures()[name].clone()
}

/// The public half of fixture key `name`, optionally with an explicit `alg`.
pub(crate) fn public_jwk(name: &str, alg: Option<&str>) -> Value {
    let mut jwk = private_jwk(name);
    let obj = jwk.as_object_mut().unwrap();
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        obj.remove(private);
    }
    if let Some(alg) = alg {
        obj.insert("alg".into(), alg.into());
    }
    jwk
}

/// The inline HMAC key `hs-1`.
pub(crate) fn hmac_jwk() -> Value {
    json!({"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": b64(HMAC_SECRET)})
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A way to sign a test token.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Signer {
    /// RS256 with fixture RSA key `name`.
    Rs256(&'static str),
    /// PS256 with fixture RSA key `name`.
    Ps256(&'static str),
    /// ES256 with fixture EC key `name`.
    Es256(&'static str),
    /// EdDSA with the fixture Ed25519 key.
    EdDsa,
    /// HS256 with these secret bytes.
    Hs256(&'static [u8]),
    /// No signature at all (for `alg: none` and parse-level tests).
    Unsigned,
}

fn rsa_key(name: &str) -> RsaPrivateKey {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(String, RsaPrivateKey)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    if let Some((_, key)) = cache.iter().find(|(n, _)| n == name) {
        return key.clone();
    }
    let jwk_value = private_jwk(name);
    let jwk: JsonWebKey<'_> = serde_json::from_value(jwk_value).unwrap();
    let key = RsaPrivateKey::try_from(&jwk).unwrap();
    cache.push((name.to_string(), key.clone()));
    key
}

fn sign_bytes(signer: Signer, message: &[u8]) -> Vec<u8> {
    match signer {
        Signer::Rs256(name) => Rsa::rs256()
            .sign(&rsa_key(name), message)
            .as_bytes()
            .to_vec(),
        Signer::Ps256(name) => Rsa::ps256()
            .sign(&rsa_key(name), message)
            .as_bytes()
            .to_vec(),
        Signer::Es256(name) => {
            let jwk: JsonWebKey<'_> = serde_json::from_value(private_jwk(name)).unwrap();
            let key = <Es256 as Algorithm>::SigningKey::try_from(&jwk).unwrap();
            Es256.sign(&key, message).as_bytes().to_vec()
        }
        Signer::EdDsa => {
            let jwk: JsonWebKey<'_> = serde_json::from_value(private_jwk("ed25519")).unwrap();
            let key = <Ed25519 as Algorithm>::SigningKey::try_from(&jwk).unwrap();
            Ed25519.sign(&key, message).as_bytes().to_vec()
        }
        Signer::Hs256(secret) => Hs256
            .sign(&Hs256Key::new(secret), message)
            .as_bytes()
            .to_vec(),
        Signer::Unsigned => Vec::new(),
    }
}

/// Signs raw header and payload JSON text (so tests can build duplicate keys and odd spellings).
pub(crate) fn sign_raw(header: &str, payload: &str, signer: Signer) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = sign_bytes(signer, input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// Signs JSON values.
pub(crate) fn sign(header: &Value, claims: &Value, signer: Signer) -> String {
    sign_raw(&header.to_string(), &claims.to_string(), signer)
}

/// Claims of a valid token at [`NOW`].
pub(crate) fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "alice",
        "aud": "api",
        "exp": NOW + 3600,
        "iat": NOW - 10,
        "jti": "jti-1",
        "scope": "read write",
        "client_id": "cli-1",
        "roles": ["user"],
    })
}

/// `claims()` with `changes` merged in (a null value removes the claim).
pub(crate) fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// A valid ES256 token with kid `ec-1`.
pub(crate) fn es256_token(claims: &Value) -> String {
    sign(
        &json!({"alg": "ES256", "kid": "ec-1", "typ": "at+jwt"}),
        claims,
        Signer::Es256("ec"),
    )
}

/// The base configuration: issuer 0 inline (RS256 `rsa-1`, PS256 `rsa-2`, ES256 `ec-1`, EdDSA `ed-1`, HS256 `hs-1`),
/// audience `api`; issuer 1 remote-only. `extra` fields are merged into the top level.
pub(crate) fn config_json(extra: Value) -> Value {
    let mut c = json!({
        "issuers": [
            {
                "issuer": ISSUER,
                "audiences": ["api"],
                "jwks": {"keys": [
                    public_jwk("rsa2048", None),
                    public_jwk("rsa2048_b", Some("PS256")),
                    public_jwk("ec", None),
                    public_jwk("ed25519", None),
                    hmac_jwk(),
                ]}
            },
            {"issuer": REMOTE_ISSUER, "remote_jwks": {"cluster": "idp", "path": "/jwks"}}
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

pub(crate) fn config(extra: Value) -> Config {
    Config::from_json(config_json(extra).to_string().as_bytes()).unwrap()
}

pub(crate) fn engine(extra: Value) -> Engine {
    Engine::new(config(extra)).unwrap()
}
