//! `cargo xtask build`: compiles the proxy-wasm filter for Envoy, the dashboard and the admin API that
//! embeds it, and reports where each artifact is.
//! Release profile on purpose: crypto in an unoptimised wasm is an order of magnitude slower.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{self, bail, Result};
use crate::{admin_api, dashboard, wasm_exports};

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
    build_wasm("edgewarden-floor", floor_wasm())
}

/// Code generation for the filter and the floor: WebAssembly SIMD (simd128) and relaxed SIMD, which Envoy's V8 runs
/// (relaxed SIMD since V8 11.4); the RS256 arithmetic uses them (`core/src/fastverify/rs256.rs` and its fused
/// multiply-add in `rs256_wide.rs`). Both modules get the same flags, so building one does not rebuild the other's
/// dependencies.
const WASM_RUSTFLAGS: &str =
    r#"target.wasm32-wasip1.rustflags=["-C", "target-feature=+simd128,+relaxed-simd"]"#;

/// `cargo <subcommand> --release --target wasm32-wasip1 --config <WASM_RUSTFLAGS> -p <package>`, run from the
/// project root: how the filter, the floor and core's tests for V8 are built, with the same flags.
fn wasm_cargo(subcommand: &str, package: &str) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(util::project_root()).args([
        subcommand,
        "--release",
        "--target",
        "wasm32-wasip1",
        "--config",
        WASM_RUSTFLAGS,
        "-p",
        package,
    ]);
    cmd
}

/// `cargo build --release --target wasm32-wasip1 -p <package>` with [`WASM_RUSTFLAGS`], then checks `artifact` is
/// there.
fn build_wasm(package: &str, artifact: PathBuf) -> Result<PathBuf> {
    util::run(&mut wasm_cargo("build", package))?;
    if !artifact.is_file() {
        bail!(
            "the build succeeded but {} is missing: does {package}'s Cargo.toml still build a cdylib of that name?",
            artifact.display()
        );
    }
    let removed = wasm_exports::strip_file(&artifact, wasm_exports::UNUSED_CALLBACKS)?;
    if removed > 0 {
        println!("    removed {removed} exports of callbacks it does not implement, so Envoy never calls them");
    }
    Ok(artifact)
}

/// Builds `edgewarden-core`'s unit tests for wasm32-wasip1 with [`WASM_RUSTFLAGS`], as the filter is built
/// (release, SIMD), and returns the test module's path. Cargo's progress goes to the terminal; its JSON messages,
/// which name the module, are read from its output.
pub fn core_tests_wasm() -> Result<PathBuf> {
    let mut cmd = wasm_cargo("test", "edgewarden-core");
    cmd.args([
        "--lib",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    println!("    $ {}", util::show(&cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| util::Error::msg(format!("cannot start cargo: {e}")))?;
    if !out.status.success() {
        bail!("building edgewarden-core's unit tests for wasm32-wasip1 failed (cargo's errors are above)");
    }
    let module = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["profile"]["test"] == true
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from));
    match module {
        Some(module) if module.is_file() => Ok(module),
        _ => bail!(
            "cargo built edgewarden-core's unit tests for wasm32-wasip1 but named no test module"
        ),
    }
}

/// `cargo xtask build`: the filter, the dashboard, then the admin API release binary with the dashboard embedded.
pub fn all() -> Result<()> {
    let wasm = run()?;
    // admin_api::build builds the dashboard first, so the binary embeds the dist it is given.
    let admin = admin_api::build()?;
    println!("\nbuild: artifacts");
    println!("    filter      {}", wasm.display());
    println!("    dashboard   {}", dashboard::dist_dir().display());
    println!("    admin api   {} (dashboard embedded)", admin.display());
    Ok(())
}

/// Builds the filter and returns the path of the `.wasm`.
pub fn run() -> Result<PathBuf> {
    util::step("build the filter (wasm32-wasip1, release)");
    let wasm = build_wasm("edgewarden-filter", filter_wasm())?;
    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    println!("    {} ({:.0} KiB)", wasm.display(), size as f64 / 1024.0);
    Ok(wasm)
}
