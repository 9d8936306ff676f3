//! `cargo xtask build`: compiles the proxy-wasm filter for Envoy and reports the `.wasm` it produced.
//! Release profile on purpose: crypto in an unoptimised wasm is an order of magnitude slower.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{self, bail, Result};

/// The filter artifact Envoy loads.
pub fn filter_wasm() -> PathBuf {
    util::target_dir().join("wasm32-wasip1/release/edgewarden_filter.wasm")
}

/// The proxy-wasm floor module the filter benchmark measures beside EdgeWarden (`filter/floor`).
pub fn floor_wasm() -> PathBuf {
    util::target_dir().join("wasm32-wasip1/release/edgewarden_floor.wasm")
}

/// Builds the proxy-wasm floor (only the benchmark needs it) and returns the path of its `.wasm`.
pub fn floor() -> Result<PathBuf> {
    util::step("build the proxy-wasm floor for the benchmark (wasm32-wasip1, release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    util::run(Command::new(cargo).current_dir(util::project_root()).args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip1",
        "-p",
        "edgewarden-floor",
    ]))?;
    let wasm = floor_wasm();
    if !wasm.is_file() {
        bail!("the build succeeded but {} is missing", wasm.display());
    }
    Ok(wasm)
}

/// Builds the filter and returns the path of the `.wasm`.
pub fn run() -> Result<PathBuf> {
    util::step("build the filter (wasm32-wasip1, release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    util::run(Command::new(cargo).current_dir(util::project_root()).args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip1",
        "-p",
        "edgewarden-filter",
    ]))?;
    let wasm = filter_wasm();
    let Ok(meta) = std::fs::metadata(&wasm) else {
        bail!(
            "the build succeeded but {} is missing: does filter/Cargo.toml still build a cdylib named edgewarden_filter?",
            wasm.display()
        );
    };
    println!(
        "    {} ({:.0} KiB)",
        wasm.display(),
        meta.len() as f64 / 1024.0
    );
    Ok(wasm)
}
