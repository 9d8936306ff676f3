//! End-to-end harness for EdgeWarden: real Envoy processes loading the built filter `.wasm`,
//! an echo upstream and a JWKS server on free loopback ports, and a token builder with fixture keys.
//! The tests in `tests/e2e/` use it; `cargo xtask test` provides the Envoy binary and the `.wasm`
//! through `EDGEWARDEN_ENVOY_BIN` and `EDGEWARDEN_FILTER_WASM` (without them the tests fail, never skip).

pub mod keys;
pub mod servers;
pub mod stack;

pub use keys::{jwks, now, TestKey, TokenBuilder, AUDIENCE, ISSUER};
pub use servers::{Echo, JwksServer, Upstream, JWKS_PATH};
pub use stack::{echo, start_expecting_refusal, Refused, Stack, JWKS_CLUSTER};
