//! Fuzz targets for everything in EdgeWarden that reads bytes from outside: request tokens and headers, key
//! sets, the plugin configuration, the revocation feed (JSON, the edge snapshot's binary pages and the binary records VMs share), the shared
//! data other worker VMs write, and the admin API's request bodies.
//!
//! Each target is a plain function of the input bytes, so `cargo xtask fuzz` runs it under AFL++ (one binary
//! per target in `src/bin/`, `afl::fuzz!`) and the same binary replays a corpus file given on stdin outside
//! AFL. A target panics (a crash for AFL) only where the product would: a panic in the filter or core code
//! it drives, or one of the few invariants it asserts (noted at each target).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod checksum;
pub mod fixtures;
pub mod host;
pub mod seeds;
mod targets;

pub use targets::*;

/// Every target by name, as `cargo xtask fuzz <target>` and `fuzz/corpus/<target>/` name them; `admin`
/// (feature `admin`) is left out of this list because it needs the admin API built.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("token", targets::token),
    ("token_generated", targets::token_generated),
    ("config", targets::config),
    ("jwks", targets::jwks),
    ("feed", targets::feed),
    ("feed_binary", targets::feed_binary),
    ("snapshot", targets::snapshot),
    ("shared_state", targets::shared_state),
    ("headers", targets::headers),
];
