//! End-to-end tests through a real Envoy loading the built filter: one test binary, one module per area.
//! Run with `cargo xtask test` (it installs Envoy, builds the `.wasm` and sets the environment).

mod authority;
mod challenges;
mod claims;
mod config;
mod control_plane;
mod dashboard;
mod docs_true;
mod edge_instances;
mod foreign_issuers;
mod grpc;
mod istio;
mod jwks_rotation;
mod keysets;
mod metadata;
mod report_only;
mod robustness;
mod rsa_key_sizes;
mod shipped_configs;
mod sources;
mod stats;
mod two_filters;
mod wake;

use edgewarden_e2e::{jwks, TestKey, AUDIENCE, ISSUER};
use serde_json::{json, Value};

/// The plugin configuration most tests use: one issuer with inline keys and the demo's route rules.
pub fn base_config() -> Value {
    json!({
        "issuers": [{
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": jwks(&[TestKey::Es256A, TestKey::Rs256A, TestKey::EdDsaA]),
        }],
        "realm": "e2e",
        "rules": [
            {"match": {"prefix": "/public"}, "allow_anonymous": true},
            {"match": {"prefix": "/read"}, "require_scopes": ["read"]},
            {"match": {"prefix": "/admin"}, "require_scopes": ["admin"]},
        ],
        "forward_claims": [
            {"claim": "sub", "header": "x-jwt-sub"},
            {"claim": "scope", "header": "x-jwt-scope"},
        ],
    })
}

/// `base_config()` with `key` set to `value` at the top level.
pub fn config_with(key: &str, value: Value) -> Value {
    let mut config = base_config();
    config[key] = value;
    config
}
