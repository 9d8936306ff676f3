//! Builds the Leptos dashboard into `target/dashboard/dist`, the directory the admin API embeds.
//! Compiles `edgewarden-dashboard` for wasm32-unknown-unknown, generates the JS glue in-process with
//! `wasm-bindgen-cli-support` (pinned to the `wasm-bindgen` in Cargo.lock), then writes `index.html`
//! and content-hashed `assets/` so the admin API can cache them forever.
//! The dist is assembled in a temporary directory and renamed into place: a half-written one is never embedded.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::util::{self, bail, Result};

/// The cargo package of the dashboard.
const PACKAGE: &str = "edgewarden-dashboard";
/// The wasm file cargo writes and the stem the glue is named after.
const CRATE_FILE: &str = "edgewarden_dashboard";
/// The cargo profile the dashboard is built with (root Cargo.toml explains the choice).
const PROFILE: &str = "dashboard";
/// The most the first load (HTML, JS, wasm, CSS) may weigh gzipped.
const FIRST_LOAD_BUDGET: u64 = 1024 * 1024;

/// The finished dashboard: `index.html` and `assets/`; `EDGEWARDEN_DASHBOARD_DIST` points the admin API's build here.
pub fn dist_dir() -> PathBuf {
    util::target_dir().join("dashboard/dist")
}

/// The environment variable the admin API's `build.rs` reads to find the dashboard it embeds.
pub const DIST_ENV: &str = "EDGEWARDEN_DASHBOARD_DIST";

/// Builds the dashboard and returns the dist directory.
pub fn build() -> Result<PathBuf> {
    util::step(&format!(
        "build the dashboard (wasm32-unknown-unknown, profile {PROFILE})"
    ));
    let started = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    util::run(Command::new(cargo).current_dir(util::project_root()).args([
        "build",
        "--profile",
        PROFILE,
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        PACKAGE,
    ]))?;
    let wasm = util::target_dir().join(format!(
        "wasm32-unknown-unknown/{PROFILE}/{CRATE_FILE}.wasm"
    ));
    if !wasm.is_file() {
        bail!(
            "the build succeeded but {} is missing: does {PACKAGE}'s Cargo.toml still build a cdylib?",
            wasm.display()
        );
    }

    println!("    generating the JS glue with wasm-bindgen-cli-support {WASM_BINDGEN_VERSION}");
    let glue_dir = util::target_dir().join("dashboard/bindgen");
    remove_dir_if_present(&glue_dir)?;
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)
        .map_err(|e| util::Error::msg(format!("wasm-bindgen: {e:#}")))?
        .omit_default_module_path(false)
        .typescript(false)
        // Function names make up over a third of an opt-level "z" build (1.8 MB to 1.0 MB measured); a
        // panic still reports its message and location through console_error_panic_hook without them.
        .remove_name_section(true)
        .remove_producers_section(true)
        .generate(&glue_dir)
        .map_err(|e| {
            util::Error::msg(format!(
                "wasm-bindgen could not process {}: {e:#}",
                wasm.display()
            ))
        })?;

    let dist = dist_dir();
    let staging = dist.with_file_name(format!("dist.tmp-{}", std::process::id()));
    remove_dir_if_present(&staging)?;
    let written = assemble(
        &util::project_root().join("dashboard/static"),
        &glue_dir,
        &staging,
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&staging);
    })?;
    if same_files(&staging, &dist)? {
        // Left untouched, so the admin API's build sees no change and is not rebuilt.
        remove_dir_if_present(&staging)?;
        println!("    {} is unchanged", dist.display());
    } else {
        replace_dir(&staging, &dist)?;
    }

    report_sizes(&dist, &written)?;
    println!("    {} ({:.0?} in all)", dist.display(), started.elapsed());
    Ok(dist)
}

/// The `wasm-bindgen-cli-support` version this xtask is built with (the `=` pin in xtask/Cargo.toml).
const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// What one dist holds, for the size report: file name in `assets/` (or `index.html`) and its bytes.
struct Written {
    /// The served path (`index.html`, `assets/<name>-<hash>.<ext>`) by the source file it came from.
    paths: BTreeMap<String, String>,
}

/// Writes the dist into `out`: hashed assets from the glue and `static/`, then `index.html` pointing at them.
/// Files are processed leaves first (wasm, CSS), then the glue, then `static/`'s scripts, then `index.html`,
/// so every reference is rewritten to a name that already includes its target's hash.
fn assemble(static_dir: &Path, glue_dir: &Path, out: &Path) -> Result<Written> {
    let assets = out.join("assets");
    std::fs::create_dir_all(&assets)?;
    let mut names = Names::default();
    let mut paths = BTreeMap::new();

    let wasm_name = format!("{CRATE_FILE}_bg.wasm");
    let glue_name = format!("{CRATE_FILE}.js");
    let wasm = read(&glue_dir.join(&wasm_name))?;
    paths.insert(wasm_name.clone(), names.add(&assets, &wasm_name, &wasm)?);

    // Inline JS that crates declare with `#[wasm_bindgen(inline_js)]` or `module = ...`: the glue imports it
    // by a path that already includes a hash of its crate, so it is copied as it is.
    let snippets = glue_dir.join("snippets");
    if snippets.is_dir() {
        copy_dir(&snippets, &assets.join("snippets"))?;
    }

    let mut static_files: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(static_dir)
        .map_err(|e| util::Error::msg(format!("cannot read {}: {e}", static_dir.display())))?
    {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            static_files.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    static_files.sort();
    if !static_files.iter().any(|f| f == "index.html") {
        bail!("{} has no index.html", static_dir.display());
    }
    let (scripts, leaves): (Vec<&String>, Vec<&String>) = static_files
        .iter()
        .filter(|f| *f != "index.html")
        .partition(|f| f.ends_with(".js"));
    for name in leaves {
        let bytes = read(&static_dir.join(name))?;
        paths.insert(name.clone(), names.add(&assets, name, &bytes)?);
    }

    // The default module path baked into the glue names the wasm; boot.js passes its own URL, but the
    // default is kept true so the glue is correct on its own.
    let glue = text(&glue_dir.join(&glue_name))?;
    let glue = rewrite(&glue, &glue_name, &names, "./", false)?;
    paths.insert(
        glue_name.clone(),
        names.add(&assets, &glue_name, glue.as_bytes())?,
    );

    for name in scripts {
        let script = text(&static_dir.join(name))?;
        let script = rewrite(&script, name, &names, "./", false)?;
        paths.insert(name.clone(), names.add(&assets, name, script.as_bytes())?);
    }
    // boot.js starts the app: without its references to the glue and the wasm the page would stay blank.
    let Some(boot) = names.0.get("boot.js") else {
        bail!(
            "{} has no boot.js, the script that starts the app",
            static_dir.display()
        );
    };
    let boot_js = text(&assets.join(boot))?;
    for target in [&glue_name, &wasm_name] {
        if !boot_js.contains(&format!("./{}", names.0[target.as_str()])) {
            bail!("dashboard/static/boot.js no longer references './{target}', so the dist would not start");
        }
    }

    let html = text(&static_dir.join("index.html"))?;
    let html = rewrite(&html, "index.html", &names, "/assets/", true)?;
    if !html.contains(&format!("/assets/{boot}")) {
        bail!(
            "dashboard/static/index.html does not reference /boot.js, so the dist would not start"
        );
    }
    std::fs::write(out.join("index.html"), &html)?;
    paths.insert("index.html".to_string(), "index.html".to_string());
    Ok(Written { paths })
}

/// Source file name to hashed file name (`boot.js` to `boot-0123456789abcdef.js`).
#[derive(Default)]
struct Names(BTreeMap<String, String>);

impl Names {
    /// Writes `bytes` into `assets/` under its hashed name, remembers it and returns its served path.
    fn add(&mut self, assets: &Path, name: &str, bytes: &[u8]) -> Result<String> {
        let hashed = hashed_name(name, bytes);
        std::fs::write(assets.join(&hashed), bytes)?;
        self.0.insert(name.to_string(), hashed.clone());
        Ok(format!("assets/{hashed}"))
    }
}

/// `name` with the first 16 hex characters of the sha256 of `bytes` before its extension.
fn hashed_name(name: &str, bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}-{hash}.{ext}"),
        None => format!("{name}-{hash}"),
    }
}

/// Rewrites quoted references to already hashed files in `text` (from file `what`): `'./x'`, `"/x"`, `"x"`
/// (any of the three quote kinds) become `<prefix><hashed x>`. `html` also rewrites `href=`/`src=` values.
fn rewrite(text: &str, what: &str, names: &Names, prefix: &str, html: bool) -> Result<String> {
    let mut out = text.to_string();
    for (name, hashed) in &names.0 {
        if name == what {
            continue;
        }
        for form in [format!("./{name}"), format!("/{name}"), name.clone()] {
            for quote in ['\'', '"', '`'] {
                let from = format!("{quote}{form}{quote}");
                let to = format!("{quote}{prefix}{hashed}{quote}");
                out = out.replace(&from, &to);
            }
        }
    }
    if html {
        // A local reference left unrewritten would 404 (or hit the index.html fallback) once served.
        for attr in ["src=\"/", "href=\"/", "src=\"./", "href=\"./"] {
            for (i, _) in out.match_indices(attr) {
                let rest = &out[i + attr.len() - 1..];
                if !rest.starts_with("/assets/") {
                    let target: String = rest.chars().take_while(|c| *c != '"').collect();
                    bail!("dashboard/static/{what} references {target}, which is not in dashboard/static/");
                }
            }
        }
    }
    Ok(out)
}

/// Replaces `dest` with `staging` by renames, so `dest` is either the old dist or the complete new one.
fn replace_dir(staging: &Path, dest: &Path) -> Result<()> {
    let old = dest.with_file_name(format!("dist.old-{}", std::process::id()));
    if dest.exists() {
        std::fs::rename(dest, &old)?;
    }
    std::fs::rename(staging, dest).map_err(|e| {
        util::Error::msg(format!(
            "cannot move {} to {}: {e}",
            staging.display(),
            dest.display()
        ))
    })?;
    remove_dir_if_present(&old)
}

/// True when directories `a` and `b` hold the same files with the same bytes.
fn same_files(a: &Path, b: &Path) -> Result<bool> {
    fn list(dir: &Path, base: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                list(&path, base, out)?;
            } else {
                let relative = path.strip_prefix(base).unwrap_or(&path).to_path_buf();
                out.insert(relative, std::fs::read(&path)?);
            }
        }
        Ok(())
    }
    if !b.is_dir() {
        return Ok(false);
    }
    let (mut left, mut right) = (BTreeMap::new(), BTreeMap::new());
    list(a, a, &mut left)?;
    list(b, b, &mut right)?;
    Ok(left == right)
}

/// Prints each file's size, raw and gzipped, and the first load against the budget.
fn report_sizes(dist: &Path, written: &Written) -> Result<()> {
    let mut first_load_gz = 0;
    for (source, served) in &written.paths {
        let bytes = read(&dist.join(served))?;
        let gz = gzipped_len(&bytes)?;
        first_load_gz += gz;
        println!(
            "    {served:<48} {:>8.1} KiB  {:>7.1} KiB gzipped   (from {source})",
            kib(bytes.len() as u64),
            kib(gz)
        );
    }
    let verdict = if first_load_gz <= FIRST_LOAD_BUDGET {
        "within"
    } else {
        "OVER"
    };
    println!(
        "    first load {:.1} KiB gzipped: {verdict} the {:.0} KiB budget",
        kib(first_load_gz),
        kib(FIRST_LOAD_BUDGET)
    );
    Ok(())
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

fn gzipped_len(bytes: &[u8]) -> Result<u64> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes)?;
    Ok(gz.finish()?.len() as u64)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| util::Error::msg(format!("cannot read {}: {e}", path.display())))
}

fn text(path: &Path) -> Result<String> {
    String::from_utf8(read(path)?)
        .map_err(|_| util::Error::msg(format!("{} is not UTF-8", path.display())))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => bail!("cannot remove {}: {e}", dir.display()),
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version of `name` in Cargo.lock's text; `None` when it is absent or locked at several versions.
    fn locked_version(lock: &str, name: &str) -> Option<String> {
        let wanted = format!("name = \"{name}\"");
        let mut found = None;
        let mut lines = lock.lines();
        while let Some(line) = lines.next() {
            if line.trim() == wanted {
                let version = lines
                    .next()?
                    .trim()
                    .strip_prefix("version = \"")?
                    .strip_suffix('"')?
                    .to_string();
                if found.is_some() {
                    return None;
                }
                found = Some(version);
            }
        }
        found
    }

    /// A `cargo update` that moves `wasm-bindgen` without the `=` pin (or the other way round) would make
    /// glue that does not match the wasm; this fails first.
    #[test]
    fn wasm_bindgen_cli_support_is_pinned_to_the_locked_wasm_bindgen() {
        let lock = std::fs::read_to_string(util::project_root().join("Cargo.lock")).unwrap();
        let manifest =
            std::fs::read_to_string(util::project_root().join("xtask/Cargo.toml")).unwrap();
        let bindgen = locked_version(&lock, "wasm-bindgen")
            .expect("Cargo.lock holds exactly one wasm-bindgen");
        let support = locked_version(&lock, "wasm-bindgen-cli-support")
            .expect("Cargo.lock holds exactly one wasm-bindgen-cli-support");
        assert_eq!(
            support, bindgen,
            "wasm-bindgen-cli-support {support} must equal wasm-bindgen {bindgen}: set `wasm-bindgen-cli-support = \"={bindgen}\"` in xtask/Cargo.toml and WASM_BINDGEN_VERSION in xtask/src/dashboard.rs"
        );
        assert!(
            manifest.contains(&format!("wasm-bindgen-cli-support = \"={bindgen}\"")),
            "xtask/Cargo.toml must pin wasm-bindgen-cli-support to exactly ={bindgen}"
        );
        assert_eq!(WASM_BINDGEN_VERSION, bindgen);
    }

    #[test]
    fn locked_version_reads_one_package_and_refuses_duplicates() {
        let lock = "[[package]]\nname = \"a\"\nversion = \"1.2.3\"\n\n[[package]]\nname = \"b\"\nversion = \"1.0.0\"\n\n[[package]]\nname = \"b\"\nversion = \"2.0.0\"\n";
        assert_eq!(locked_version(lock, "a").as_deref(), Some("1.2.3"));
        assert_eq!(locked_version(lock, "b"), None);
        assert_eq!(locked_version(lock, "c"), None);
    }

    #[test]
    fn hashed_names_keep_stem_and_extension() {
        let name = hashed_name("boot.js", b"x");
        assert!(name.starts_with("boot-") && name.ends_with(".js"), "{name}");
        assert_eq!(name.len(), "boot-.js".len() + 16);
        assert_ne!(name, hashed_name("boot.js", b"y"));
    }

    #[test]
    fn assemble_writes_hashed_assets_and_rewrites_every_reference() {
        let root =
            util::target_dir().join(format!("tmp/xtask-dashboard-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (static_dir, glue_dir, out) =
            (root.join("static"), root.join("glue"), root.join("dist"));
        std::fs::create_dir_all(&static_dir).unwrap();
        std::fs::create_dir_all(&glue_dir).unwrap();
        std::fs::write(
            static_dir.join("index.html"),
            "<link rel=\"stylesheet\" href=\"/style.css\"><script type=\"module\" src=\"/boot.js\"></script>",
        )
        .unwrap();
        std::fs::write(
            static_dir.join("boot.js"),
            "import init from './edgewarden_dashboard.js';\ninit({ module_or_path: new URL('./edgewarden_dashboard_bg.wasm', import.meta.url) });\n",
        )
        .unwrap();
        std::fs::write(static_dir.join("style.css"), "main {}").unwrap();
        std::fs::write(glue_dir.join("edgewarden_dashboard_bg.wasm"), b"\0asm").unwrap();
        std::fs::write(
            glue_dir.join("edgewarden_dashboard.js"),
            "module_or_path = new URL('edgewarden_dashboard_bg.wasm', import.meta.url);",
        )
        .unwrap();

        let written = assemble(&static_dir, &glue_dir, &out).unwrap();
        let served = |source: &str| written.paths[source].clone();
        let html = std::fs::read_to_string(out.join("index.html")).unwrap();
        assert!(
            html.contains(&format!("href=\"/{}\"", served("style.css"))),
            "{html}"
        );
        assert!(
            html.contains(&format!("src=\"/{}\"", served("boot.js"))),
            "{html}"
        );
        let boot = std::fs::read_to_string(out.join(served("boot.js"))).unwrap();
        let file = |source: &str| served(source).trim_start_matches("assets/").to_string();
        assert!(
            boot.contains(&format!("'./{}'", file("edgewarden_dashboard.js"))),
            "{boot}"
        );
        assert!(
            boot.contains(&format!("'./{}'", file("edgewarden_dashboard_bg.wasm"))),
            "{boot}"
        );
        let glue = std::fs::read_to_string(out.join(served("edgewarden_dashboard.js"))).unwrap();
        assert!(
            glue.contains(&format!("'./{}'", file("edgewarden_dashboard_bg.wasm"))),
            "{glue}"
        );
        assert_eq!(
            std::fs::read(out.join(served("edgewarden_dashboard_bg.wasm"))).unwrap(),
            b"\0asm"
        );

        // A reference to a file that is not there fails the build instead of shipping a broken page.
        std::fs::write(
            static_dir.join("index.html"),
            "<script src=\"/missing.js\"></script><script src=\"/boot.js\"></script>",
        )
        .unwrap();
        let err = assemble(&static_dir, &glue_dir, &root.join("dist2"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/missing.js"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
