//! The fixed world the targets run in: the core tests' key material (`core/tests/fixtures/keys.json`), a
//! plugin configuration that uses every kind of key and rule, a revocation feed that revokes a jti, a subject
//! and a client, and the clock they agree on. Seeds (`fuzz-seeds`) sign their tokens with the same keys, so a
//! seed token verifies and the fuzzer starts from the accepted path, not only from the refusals.

use std::sync::OnceLock;

use edgewarden_core::engine::Engine;
use serde_json::{json, Value};

/// The fuzzed clock (Unix seconds): tokens in the seeds are valid at this time.
pub const NOW: u64 = 1_700_000_000;
/// The inline issuer of the fixed configuration.
pub const ISSUER: &str = "https://issuer.test";
/// The remote-only issuer (its key set comes from a JWKS fetch).
pub const REMOTE_ISSUER: &str = "https://remote.test";
/// The 32-byte HMAC secret of the inline `hs-1` key.
pub const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// The private JWKs of the core tests, by name (`rsa2048`, `rsa2048_b`, `ec`, `ec_b`, `ed25519`, ...).
pub fn private_keys() -> &'static Value {
    static KEYS: OnceLock<Value> = OnceLock::new();
    KEYS.get_or_init(|| {
        serde_json::from_str(include_str!("../../core/tests/fixtures/keys.json"))
            .unwrap_or_default()
    })
}

/// The public half of fixture key `name`, with `alg` set when given.
pub fn public_jwk(name: &str, alg: Option<&str>) -> Value {
    let mut jwk = private_keys().get(name).cloned().unwrap_or_default();
    if let Some(obj) = jwk.as_object_mut() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            obj.remove(private);
        }
        if let Some(alg) = alg {
            obj.insert("alg".into(), alg.into());
        }
    }
    jwk
}

/// The inline HMAC key `hs-1`.
pub fn hmac_jwk() -> Value {
    use base64::Engine as _;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(HMAC_SECRET);
    json!({"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": k})
}

/// Every inline key of the fixed configuration: RS256 `rsa-1`, PS256 `rsa-2`, ES256 `ec-1`, EdDSA `ed-1`,
/// HS256 `hs-1`.
pub fn inline_jwks() -> Value {
    json!({"keys": [
        public_jwk("rsa2048", None),
        public_jwk("rsa2048_b", Some("PS256")),
        public_jwk("ec", None),
        public_jwk("ed25519", None),
        hmac_jwk(),
    ]})
}

/// The key set the remote issuer publishes in the seeds: ES256 `ec-2` and RS256 `rsa-1`.
pub fn remote_jwks() -> Value {
    json!({"keys": [public_jwk("ec_b", None), public_jwk("rsa2048", None)]})
}

/// The fixed plugin configuration: two issuers (inline and remote keys), anonymous, scoped, role and method
/// rules, forwarded claims and payload, and a control plane (so revocation state is consulted).
pub fn config_json() -> Value {
    json!({
        "issuers": [
            {"issuer": ISSUER, "audiences": ["api"], "jwks": inline_jwks()},
            {"issuer": REMOTE_ISSUER, "remote_jwks": {"cluster": "idp", "path": "/jwks"}}
        ],
        "rules": [
            {"match": {"prefix": "/public"}, "allow_anonymous": true},
            {"match": {"prefix": "/admin"}, "require_scopes": ["admin"]},
            {"match": {"path": "/api/write", "methods": ["POST", "PUT"]},
             "require_scopes": ["write"], "require_roles": ["user"]},
            {"match": {"prefix": "/api"}, "require_any_scopes": ["read", "write"]}
        ],
        "forward_claims": [
            {"claim": "sub", "header": "x-sub"},
            {"claim": "scope", "header": "x-scope"},
            {"claim": "roles", "header": "x-roles"}
        ],
        "forward_payload_header": "x-jwt-payload",
        "strip_token": true,
        "control_plane": {"cluster": "cp", "api_key": "ewk_fuzz", "edge_name": "edge-fuzz"}
    })
}

/// The engine of [`config_json`], built once per process (key preparation is the slow part).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut engine = Engine::from_json(config_json().to_string().as_bytes())
            .unwrap_or_else(|e| panic!("the fixed fuzz configuration is refused: {e}"));
        engine
            .set_remote_jwks(1, remote_jwks().to_string().as_bytes())
            .unwrap_or_else(|e| panic!("the fixed remote key set is refused: {e}"));
        engine
    })
}

/// A feed answer that revokes jti `revoked-jti`, subject `mallory` and client `cli-revoked`.
pub fn feed_json() -> Value {
    json!({
        "cursor": 7, "full": true, "now": NOW,
        "revoked_jtis": [{"jti": "revoked-jti", "exp": NOW + 3600},
                         {"jti": "remote-revoked", "iss": REMOTE_ISSUER, "exp": NOW + 3600}],
        "revoked_subjects": [{"subject": "mallory", "revoked_at": NOW - 5, "expires_at": NOW + 86400}],
        "revoked_clients": [{"client_id": "cli-revoked", "revoked_at": NOW - 5, "expires_at": NOW + 86400}]
    })
}

/// Claims of a token valid at [`NOW`] for the fixed configuration.
pub fn claims() -> Value {
    json!({
        "iss": ISSUER, "sub": "alice", "aud": "api", "exp": NOW + 3600, "iat": NOW - 10,
        "jti": "jti-1", "scope": "read write", "client_id": "cli-1", "roles": ["user"]
    })
}
