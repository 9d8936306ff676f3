//! The EdgeWarden token engine.
//! It parses and verifies JWS compact tokens, checks claims and time with leeway, matches route rules,
//! consults revocation state and returns a [`Decision`] with a machine reason and a human description.
//! It performs no I/O and never reads a clock: callers pass bytes and `now` (Unix seconds) in,
//! which is what lets the proxy-wasm filter, the admin API's introspection and the dashboard's debugger share it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod cache;
pub mod challenge;
pub mod config;
pub mod decision;
pub mod engine;
pub mod fastverify;
pub mod feed;
pub mod jwks;
pub mod revocation;
pub mod rules;
pub mod token;

#[cfg(test)]
mod test_support;

pub use cache::{CacheOutcome, CacheStats, TokenCache};
pub use challenge::{json_body, www_authenticate};
pub use config::{Config, ConfigError, TokenSource};
pub use decision::{Decision, Reason, Verdict};
pub use engine::{Engine, Request};
pub use feed::{DecodeError, FeedError, FeedUpdate, SyncMark};
pub use jwks::{Alg, JwksError, KeySet};
pub use revocation::{
    EdgeRevocationState, NoRevocations, RevocationKey, RevocationSet, RevocationView,
};
pub use token::{fingerprint, Rejection, VerifiedToken};
