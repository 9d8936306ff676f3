//! The filter's OCI image in a real registry: `cargo xtask package` writes it twice with the same bytes, skopeo
//! pushes it to Debian's docker-registry (the CNCF distribution registry) on a loopback port and pulls it back
//! into a new layout, byte for byte, and the digest the registry answers (`Docker-Content-Digest`, what Istio's
//! agent compares a `WasmPlugin`'s `sha256` with for an `oci://` URL) is the one the command printed and wrote.
//! Both layers, the written one and the pulled one, extract with GNU tar to exactly the built `plugin.wasm`.
//! The tools come from `cargo xtask install`; this test fails (never skips) without them.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The tag `cargo xtask package` gives the image by default: the workspace version.
const TAG: &str = env!("CARGO_PKG_VERSION");
/// The repository the test pushes to (the image's own name).
const REPOSITORY: &str = "edgewarden-filter";

/// A tool location from the environment `cargo xtask test` sets; panics saying what to run when it is missing.
fn required(var: &str, what: &str) -> PathBuf {
    let value = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: this test needs {what}; run it with `cargo xtask test`, which installs it (`cargo xtask install`) and sets the variable")
    });
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "{var}={} does not exist: run `cargo xtask install`",
        path.display()
    );
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `command`, panicking with its output unless it succeeds.
#[track_caller]
fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A fresh directory under `target/e2e-runs/`.
fn run_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/e2e-runs")
        .join(format!("oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run directory");
    dir
}

/// Every file under `dir` by its path relative to `dir`, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let name = path
                    .strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string();
                files.insert(name, std::fs::read(&path).expect("read a layout file"));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// A blob of an OCI layout, checked against the digest and size of its descriptor.
#[track_caller]
fn blob(layout: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no digest in {descriptor}"));
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("blob {digest} of {}: {e}", layout.display()));
    assert_eq!(sha256_hex(&bytes), hex, "blob {digest} has other content");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(bytes.len() as u64),
        "size of {digest}"
    );
    bytes
}

/// What a layout holds for `TAG`: the manifest descriptor, the manifest, the config and the one layer.
struct Layout {
    manifest_digest: String,
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

/// Reads `layout` as Istio's agent reads the pulled image: the manifest tagged `TAG`, exactly one layer of the
/// OCI tar+gzip type (the compat variant), its config.
#[track_caller]
fn read_layout(layout: &Path) -> Layout {
    let json = |bytes: &[u8]| -> Value { serde_json::from_slice(bytes).expect("layout json") };
    assert_eq!(
        json(&std::fs::read(layout.join("oci-layout")).expect("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&std::fs::read(layout.join("index.json")).expect("index.json"));
    let manifests = index["manifests"].as_array().expect("index manifests");
    let tagged: Vec<&Value> = manifests
        .iter()
        .filter(|m| m["annotations"]["org.opencontainers.image.ref.name"] == TAG)
        .collect();
    assert_eq!(tagged.len(), 1, "one manifest tagged {TAG} in {index}");
    let descriptor = tagged[0];
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest_bytes = blob(layout, descriptor);
    let manifest = json(&manifest_bytes);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"], "compat",
        "the compat variant's annotation"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().expect("manifest layers");
    assert_eq!(layers.len(), 1, "the compat variant has exactly one layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    Layout {
        manifest_digest: descriptor["digest"].as_str().expect("digest").to_owned(),
        config: blob(layout, &manifest["config"]),
        layer: blob(layout, &layers[0]),
        manifest: manifest_bytes,
    }
}

/// Extracts `layer` (tar+gzip) with GNU tar into a fresh `dir` and returns the files it held.
#[track_caller]
fn extract(layer: &[u8], dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(dir).expect("create the extraction directory");
    let archive = dir.with_extension("tar.gz");
    std::fs::write(&archive, layer).expect("write the layer");
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(dir)
            .arg("--no-same-owner"),
        "extract the layer with GNU tar",
    );
    tree(dir)
}

/// `docker-registry serve` on a free loopback port with its storage in the run directory; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    async fn start(bin: &Path, dir: &Path) -> Registry {
        let mut last_log = String::new();
        // A port that was free a moment ago can be taken before the registry binds it: try a few.
        for attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let config = dir.join(format!("registry-{attempt}.yml"));
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.join("registry-data").display()
                ),
            )
            .expect("write the registry config");
            let log = dir.join(format!("registry-{attempt}.log"));
            let out = std::fs::File::create(&log).expect("create the registry log");
            let child = Command::new(bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone the log handle"))
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let mut registry = Registry { child, port, log };
            if registry.wait_ready().await {
                return registry;
            }
            last_log = std::fs::read_to_string(&registry.log).unwrap_or_default();
        }
        panic!("docker-registry did not serve /v2/ on three ports; its last log:\n{last_log}");
    }

    /// Waits until `GET /v2/` answers 200; false when the process exited or 10 s passed.
    async fn wait_ready(&mut self) -> bool {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if let Ok(r) = client.get(self.url("/v2/")).send().await {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The image reference skopeo pushes to and pulls from.
    fn reference(&self, tag_or_digest: &str) -> String {
        format!(
            "docker://127.0.0.1:{}/{REPOSITORY}{tag_or_digest}",
            self.port
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- docker-registry log ({}) ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

#[tokio::test]
async fn the_packaged_image_is_pushed_to_a_real_registry_and_pulled_back_byte_identical() {
    let xtask = required(
        "EDGEWARDEN_XTASK_BIN",
        "the xtask binary (`cargo xtask package`)",
    );
    let wasm_path = required("EDGEWARDEN_FILTER_WASM", "the built filter .wasm");
    let registry_bin = required(
        "EDGEWARDEN_REGISTRY_BIN",
        "Debian's docker-registry (`apt-get install docker-registry`)",
    );
    let skopeo = required(
        "EDGEWARDEN_SKOPEO_BIN",
        "Debian's skopeo (`apt-get install skopeo`)",
    );
    let wasm = std::fs::read(&wasm_path).expect("read the filter .wasm");
    let dir = run_dir();

    // Packaged twice: the same module gives the same bytes, files and digests alike.
    let mut printed = String::new();
    for out in ["first", "second"] {
        let output = run(
            Command::new(&xtask)
                .arg("package")
                .arg("--wasm")
                .arg(&wasm_path)
                .arg("--out")
                .arg(dir.join(out)),
            "cargo xtask package",
        );
        printed = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    let first = tree(&dir.join("first"));
    assert_eq!(
        first,
        tree(&dir.join("second")),
        "two runs of `cargo xtask package` on the same module wrote different bytes"
    );
    let text = |name: &str| {
        String::from_utf8(first[name].clone())
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let image_digest = text("image.sha256");
    assert_eq!(
        text("module.sha256"),
        sha256_hex(&wasm),
        "module.sha256 is not the module's sha256"
    );
    assert!(
        printed.contains(&format!("sha256: {image_digest}")),
        "`cargo xtask package` should print the WasmPlugin sha256 line for {image_digest}:\n{printed}"
    );

    let layout = dir.join("first/edgewarden-filter");
    let written = read_layout(&layout);
    assert_eq!(written.manifest_digest, format!("sha256:{image_digest}"));
    let files = extract(&written.layer, &dir.join("extracted-written"));
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["plugin.wasm"],
        "the layer holds plugin.wasm only"
    );
    assert!(
        files["plugin.wasm"] == wasm,
        "the written layer's plugin.wasm is not the built module"
    );
    let config: Value = serde_json::from_slice(&written.config).expect("config json");
    let diff_id = format!(
        "sha256:{}",
        sha256_hex(&{
            use std::io::Read as _;
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&written.layer[..])
                .read_to_end(&mut tar)
                .expect("gunzip the layer");
            tar
        })
    );
    assert_eq!(
        config["rootfs"]["diff_ids"][0], diff_id,
        "the config's diff_id is the uncompressed layer's digest"
    );

    // Pushed with skopeo, as the package command tells an operator to.
    let registry = Registry::start(&registry_bin, &dir).await;
    let policy = dir.join("policy.json");
    // The images here are unsigned, built a moment ago by this test: accept them (skopeo refuses without a policy).
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .expect("write the skopeo policy");
    let started = Instant::now();
    run(
        Command::new(&skopeo)
            .arg("--policy")
            .arg(&policy)
            .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{TAG}", layout.display()))
            .arg(registry.reference(&format!(":{TAG}"))),
        "skopeo copy oci: to the registry",
    );
    let pushed_in = started.elapsed();

    // What Istio's agent asks the registry for: the manifest by tag, and its digest from the answer.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    for reference in [TAG.to_owned(), format!("sha256:{image_digest}")] {
        let response = client
            .get(registry.url(&format!("/v2/{REPOSITORY}/manifests/{reference}")))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .expect("GET the manifest from the registry");
        assert_eq!(response.status(), 200, "manifest {reference}");
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            digest,
            format!("sha256:{image_digest}"),
            "the registry's digest for {reference} is not the one `cargo xtask package` wrote to image.sha256"
        );
        let body = response.bytes().await.expect("manifest body");
        assert!(
            body[..] == written.manifest[..],
            "the registry serves other manifest bytes"
        );
    }

    // Pulled back into a new layout: the same manifest, config and layer, byte for byte.
    let pulled_dir = dir.join("pulled");
    let started = Instant::now();
    run(
        Command::new(&skopeo)
            .arg("--policy")
            .arg(&policy)
            .args(["copy", "--src-tls-verify=false"])
            .arg(registry.reference(&format!(":{TAG}")))
            .arg(format!("oci:{}:{TAG}", pulled_dir.display())),
        "skopeo copy from the registry to a new oci: layout",
    );
    let pulled_in = started.elapsed();
    let pulled = read_layout(&pulled_dir);
    assert_eq!(pulled.manifest_digest, written.manifest_digest);
    assert!(
        pulled.manifest == written.manifest,
        "the pulled manifest differs"
    );
    assert!(pulled.config == written.config, "the pulled config differs");
    assert!(pulled.layer == written.layer, "the pulled layer differs");
    let files = extract(&pulled.layer, &dir.join("extracted-pulled"));
    assert_eq!(files.keys().collect::<Vec<_>>(), ["plugin.wasm"]);
    assert!(
        files["plugin.wasm"] == wasm,
        "the pulled layer's plugin.wasm is not the built module"
    );
    eprintln!(
        "image sha256:{image_digest} ({} byte layer for a {} byte module): pushed in {pushed_in:.2?}, pulled in {pulled_in:.2?}",
        written.layer.len(),
        wasm.len()
    );
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
}
