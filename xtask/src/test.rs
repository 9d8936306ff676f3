//! `cargo xtask test`: installs what is missing, builds the filter and the dashboard, then runs every test tier
//! in one `cargo test --workspace` so shared dependencies compile once (one profile, one feature set).
//! The dashboard is left out of that run: it is wasm-only, and building Leptos natively would double the build.
//! The end-to-end and browser tests read the tool locations from environment variables set here; they fail
//! (never skip) when those are missing, so a green run always means Envoy and Chromium really ran.

use std::net::{TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

use crate::util::{self, bail, Result};
use crate::{build, dashboard, fuzz, install};

/// Where the admin API suite finds PostgreSQL unless the caller overrides it (issue 3 runs its suite on SQLite and on this).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs the whole suite; extra arguments are passed to `cargo test` (e.g. `-p edgewarden-e2e -- rotation`).
pub fn run(extra: &[String]) -> Result<()> {
    install::run()?;
    let wasm = build::run()?;
    // Built before the tests so the admin API's test binaries embed it.
    let dist = dashboard::build()?;
    let envoy = install::envoy_bin();
    let axe = install::axe_js();
    let openapi_python = install::openapi_validator_python();
    let postgres = postgres_url()?;
    // The OCI image test runs `cargo xtask package` as this very binary, so it packages with the code under test.
    let xtask = std::env::current_exe()?;

    util::step("cargo test --workspace (unit, component, end-to-end through Envoy, browser)");
    println!("    EDGEWARDEN_ENVOY_BIN={}", envoy.display());
    println!("    EDGEWARDEN_FILTER_WASM={}", wasm.display());
    println!("    EDGEWARDEN_TEST_POSTGRES_URL={postgres}");
    println!("    {}={}", dashboard::DIST_ENV, dist.display());
    println!("    EDGEWARDEN_CHROMIUM_BIN={}", install::CHROMIUM_BIN);
    println!(
        "    EDGEWARDEN_CHROMEDRIVER_BIN={}",
        install::CHROMEDRIVER_BIN
    );
    println!("    EDGEWARDEN_AXE_JS={}", axe.display());
    println!(
        "    EDGEWARDEN_OPENAPI_VALIDATOR_PYTHON={}",
        openapi_python.display()
    );
    println!("    EDGEWARDEN_XTASK_BIN={}", xtask.display());
    println!("    EDGEWARDEN_REGISTRY_BIN={}", install::REGISTRY_BIN);
    println!("    EDGEWARDEN_SKOPEO_BIN={}", install::SKOPEO_BIN);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    util::run(
        Command::new(cargo)
            .current_dir(util::project_root())
            .args(["test", "--workspace", "--exclude", "edgewarden-dashboard"])
            .args(extra)
            .env("EDGEWARDEN_ENVOY_BIN", &envoy)
            .env("EDGEWARDEN_FILTER_WASM", &wasm)
            .env("EDGEWARDEN_TEST_POSTGRES_URL", &postgres)
            .env(dashboard::DIST_ENV, &dist)
            .env("EDGEWARDEN_CHROMIUM_BIN", install::CHROMIUM_BIN)
            .env("EDGEWARDEN_CHROMEDRIVER_BIN", install::CHROMEDRIVER_BIN)
            .env("EDGEWARDEN_AXE_JS", &axe)
            .env("EDGEWARDEN_OPENAPI_VALIDATOR_PYTHON", &openapi_python)
            .env("EDGEWARDEN_XTASK_BIN", &xtask)
            .env("EDGEWARDEN_REGISTRY_BIN", install::REGISTRY_BIN)
            .env("EDGEWARDEN_SKOPEO_BIN", install::SKOPEO_BIN),
    )?;
    // The fuzz smoke and core in V8 run with the whole suite, not with a filtered run (`cargo xtask test -p ... -- name`).
    if extra.is_empty() {
        core_in_v8()?;
        fuzz::smoke()?;
    }
    println!("\ntest: every test passed");
    Ok(())
}

/// `edgewarden-core`'s unit tests once more, built for wasm32-wasip1 with SIMD as the filter is and run in V8
/// (Node's WASI): the SIMD kernels of the RS256 arithmetic exist only there, so the native run cannot test them
/// against the portable code and the reference crates, and the filter's 32-bit `usize` is checked on the way.
fn core_in_v8() -> Result<()> {
    util::step(
        "edgewarden-core's unit tests in V8 (wasm32-wasip1 with simd128, under Node's WASI)",
    );
    if !util::have("node") {
        bail!("node is needed to run edgewarden-core's unit tests in V8: install Node.js (on Debian `apt-get install nodejs`, or from https://nodejs.org), then run `cargo xtask test` again");
    }
    let module = build::core_tests_wasm()?;
    util::run(
        Command::new("node")
            .current_dir(util::project_root())
            .arg("core/examples/run_wasi.mjs")
            .arg(&module),
    )
}

/// The PostgreSQL server the admin API tests use: `EDGEWARDEN_TEST_POSTGRES_URL` or the local default.
/// It must answer: a missing database server is a failed run, not a skipped half of the suite.
fn postgres_url() -> Result<String> {
    util::step("postgresql for the admin API suite");
    let url = std::env::var("EDGEWARDEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
    let host_port = host_port(&url)?;
    let addrs: Vec<_> = host_port
        .to_socket_addrs()
        .map_err(|e| util::Error::msg(format!("cannot resolve {host_port} from {url}: {e}")))?
        .collect();
    let reachable = addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(3)).is_ok());
    if !reachable {
        bail!("postgresql is not reachable at {host_port} ({url}); the admin API tests need it: start it or set EDGEWARDEN_TEST_POSTGRES_URL");
    }
    println!("    reachable at {host_port}");
    Ok(url)
}

/// Extracts `host:port` from a `postgres://user@host:port/db` URL (default port 5432).
fn host_port(url: &str) -> Result<String> {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        bail!("EDGEWARDEN_TEST_POSTGRES_URL must start with postgres://, got `{url}`");
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        bail!("no host in `{url}`");
    }
    if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Ok(host.to_string())
    } else {
        Ok(format!("{host}:5432"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_taken_from_postgres_urls() {
        assert_eq!(host_port(DEFAULT_POSTGRES_URL).unwrap(), "127.0.0.1:5432");
        assert_eq!(
            host_port("postgres://u:p@db:6000/x?sslmode=disable").unwrap(),
            "db:6000"
        );
        assert_eq!(host_port("postgresql://db/x").unwrap(), "db:5432");
        assert!(host_port("mysql://db").is_err());
    }
}
