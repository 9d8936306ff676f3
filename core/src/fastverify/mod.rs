//! Fast JWS signature verification for keys known at configuration time.
//!
//! ES256 and RS256 verification inside a Wasm VM is dominated by generic big-number code; here
//! each key is prepared once (fixed-base point tables for P-256, Montgomery constants for RSA)
//! so that a per-token check costs a fraction of the generic path (5-9x less in V8). For any key
//! both accept, signatures get the same accept/reject decisions as from the `p256`/`ecdsa` and
//! `rsa` crates (differential tests in `es256_tests.rs` and `rs256_tests.rs`). [`FastEs256`] and
//! [`FastRs256`] plug the verifiers into jwt-compact as `Algorithm`s, which is how the engine uses them.

pub mod es256;
pub mod jws;
pub mod rs256;

pub use es256::{Es256KeyError, Es256Verifier};
pub use jws::{FastEs256, FastRs256};
pub use rs256::{Rs256KeyError, Rs256Verifier};
