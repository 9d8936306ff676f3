//! End-to-end harness for EdgeWarden: real Envoy processes loading the built filter `.wasm`,
//! an echo upstream and a JWKS server on free loopback ports, the real admin API binary,
//! a token builder with fixture keys, polling with deadlines, and headless Chromium for the dashboard.
//! The tests in `tests/e2e/` use it; `cargo xtask test` provides the Envoy binary and the `.wasm`
//! through `EDGEWARDEN_ENVOY_BIN` and `EDGEWARDEN_FILTER_WASM` (without them the tests fail, never skip).

pub mod admin;
pub mod browser;
pub mod keys;
pub mod servers;
pub mod stack;
pub mod wait;

pub use admin::{
    admin_bin, claims, AdminApi, Answer, Issued, TokenRequest, CONTROL_PLANE_ISSUER, E2E_CLIENT,
    E2E_CLIENT_SCOPES, EDGE_NAME,
};
pub use browser::{Browser, Violation};
pub use keys::{jwks, now, TestKey, TokenBuilder, AUDIENCE, ISSUER};
pub use servers::{Echo, JwksServer, Upstream, JWKS_PATH};
pub use stack::{
    echo, start_expecting_refusal, Refused, Stack, CONTROL_PLANE_CLUSTER, JWKS_CLUSTER,
};
pub use wait::eventually;
