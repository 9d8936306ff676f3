//! `cargo xtask package`: the filter as an OCI image in the Wasm image format Istio pulls (`url: oci://...` in a
//! `WasmPlugin`), written as an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`) that `skopeo copy`
//! pushes to any registry as it is.
//! The format is the *compat* variant of the Wasm image specification (solo-io/wasm `spec/spec-compat.md`), the
//! one Istio's agent tries first: a standard OCI image whose single `tar+gzip` layer holds `plugin.wasm`.
//! Every byte follows from the module and the workspace version (fixed tar header, gzip header and JSON), so one
//! build always gives one image digest: the value a `WasmPlugin`'s `sha256` pins for an `oci://` URL.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::build;
use crate::util::{self, bail, Result};

/// The image's name: its layout directory under `--out`, and the repository the printed `skopeo` line pushes to.
pub const IMAGE_NAME: &str = "edgewarden-filter";
/// The file the layer holds: Istio's agent takes the entry of this name from a compat image's layer.
pub const MODULE_FILE: &str = "plugin.wasm";
/// The file under `--out` holding the image's manifest digest (hex): a `WasmPlugin`'s `sha256` with `oci://`.
pub const IMAGE_DIGEST_FILE: &str = "image.sha256";
/// The file under `--out` holding the module's sha256 (hex): a `WasmPlugin`'s `sha256` with an `https://` URL.
pub const MODULE_DIGEST_FILE: &str = "module.sha256";

const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A tar block; headers and file data are padded to it.
const BLOCK: usize = 512;

/// What [`write_layout`] wrote, by lowercase hex sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The digest of the image manifest: what a registry answers as `Docker-Content-Digest`, what Istio's agent
    /// compares a `WasmPlugin`'s `sha256` with when the `url` is `oci://`.
    pub manifest_digest: String,
    /// The sha256 of the module itself: what Istio compares `sha256` with when the `url` is `https://`.
    pub module_sha256: String,
    /// The digest of the compressed layer.
    pub layer_digest: String,
}

/// `cargo xtask package [--out <dir>] [--tag <tag>] [--wasm <file>]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--out" | "--tag" | "--wasm" => {
                if rest.next().is_none() {
                    bail!("{arg} needs a value");
                }
            }
            other => bail!("unknown option `{other}`: package takes --out <dir>, --tag <tag> and --wasm <file>"),
        }
    }
    let out = util::flag_value(args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::target_dir().join("oci"));
    let tag = util::flag_value(args, "--tag").unwrap_or(env!("CARGO_PKG_VERSION"));
    check_tag(tag)?;
    let wasm = match util::flag_value(args, "--wasm") {
        Some(path) => PathBuf::from(path),
        None => build::run()?,
    };

    util::step(
        "package the filter as an OCI image (Wasm image compat variant, for Istio's WasmPlugin)",
    );
    let module = std::fs::read(&wasm)
        .map_err(|e| util::Error::msg(format!("cannot read {}: {e}", wasm.display())))?;
    if !module.starts_with(b"\0asm") {
        bail!(
            "{} is not a WebAssembly module (it does not start with \\0asm): give --wasm the filter's .wasm, or leave --wasm out to build it",
            wasm.display()
        );
    }
    let layout = out.join(IMAGE_NAME);
    let image = write_layout(&module, tag, &layout)?;
    std::fs::write(
        out.join(IMAGE_DIGEST_FILE),
        format!("{}\n", image.manifest_digest),
    )?;
    std::fs::write(
        out.join(MODULE_DIGEST_FILE),
        format!("{}\n", image.module_sha256),
    )?;

    println!(
        "    module   {} ({:.0} KiB), sha256 {}",
        wasm.display(),
        module.len() as f64 / 1024.0,
        image.module_sha256
    );
    println!(
        "    layout   {} (tag {tag}): one {LAYER_MEDIA_TYPE} layer holding {MODULE_FILE}",
        layout.display()
    );
    println!(
        "    digest   sha256:{} (the image manifest)",
        image.manifest_digest
    );
    println!(
        "    written  {} and {}",
        out.join(IMAGE_DIGEST_FILE).display(),
        out.join(MODULE_DIGEST_FILE).display()
    );
    println!("\npackage: push the image with");
    println!(
        "    skopeo copy --preserve-digests oci:{}:{tag} docker://<registry>/{IMAGE_NAME}:{tag}",
        layout.display()
    );
    println!("and pin it in envoy/istio-wasmplugin.yaml:");
    println!("    url: oci://<registry>/{IMAGE_NAME}:{tag}");
    println!("    sha256: {}", image.manifest_digest);
    println!(
        "(serving the bare module at an https:// URL instead, its sha256 is {})",
        image.module_sha256
    );
    Ok(())
}

/// Refuses what the OCI distribution spec does not allow as a tag (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
fn check_tag(tag: &str) -> Result<()> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || tag.len() > 128 {
        bail!("--tag `{tag}` is not an OCI tag: up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`");
    }
    Ok(())
}

/// Writes `module` as an OCI image layout in `dir` (replacing what is there) whose index names the image `tag`.
/// The directory is assembled beside `dir` and renamed into place, so an interrupted run leaves no half image.
pub fn write_layout(module: &[u8], tag: &str, dir: &Path) -> Result<Image> {
    let tar = layer_tar(module)?;
    let layer = gzip(&tar)?;
    // architecture and os as the OCI image spec asks for them: Go's GOARCH and GOOS for WASI preview 1, the
    // target the filter is built for (wasm32-wasip1).
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar))]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
        "annotations": {
            // Required by the compat variant's spec for a manifest whose layer is an OCI tar+gzip.
            "module.wasm.image/variant": "compat",
            "org.opencontainers.image.title": IMAGE_NAME,
            "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
            "org.opencontainers.image.licenses": env!("CARGO_PKG_LICENSE"),
        },
    }))?;
    let mut manifest_descriptor = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    manifest_descriptor["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest_descriptor],
    }))?;

    let Some(name) = dir.file_name() else {
        bail!(
            "{} cannot hold an image layout: name a directory",
            dir.display()
        );
    };
    let partial = dir.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    let blobs = partial.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for blob in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(sha256_hex(blob)), blob)?;
    }
    std::fs::write(
        partial.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    std::fs::write(partial.join("index.json"), &index)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&partial, dir)?;
    Ok(Image {
        manifest_digest: sha256_hex(&manifest),
        module_sha256: sha256_hex(module),
        layer_digest: sha256_hex(&layer),
    })
}

/// An OCI content descriptor of `bytes`.
fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": format!("sha256:{}", sha256_hex(bytes)), "size": bytes.len()})
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A POSIX ustar archive holding `module` as `plugin.wasm`: owner 0:0, mode 0644, mtime 0 (the epoch, so the
/// bytes never depend on when or where the build ran), no user or group names, then the two zero blocks that
/// end an archive.
fn layer_tar(module: &[u8]) -> Result<Vec<u8>> {
    // The size field holds 11 octal digits.
    if module.len() as u64 > 0o77_777_777_777 {
        bail!(
            "the module is {} bytes, more than a ustar entry holds",
            module.len()
        );
    }
    let mut header = [0u8; BLOCK];
    let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, MODULE_FILE.as_bytes()); // name
    put(100, b"0000644\0"); // mode
    put(108, b"0000000\0"); // uid
    put(116, b"0000000\0"); // gid
    put(124, format!("{:011o}\0", module.len()).as_bytes()); // size
    put(136, b"00000000000\0"); // mtime
    put(148, b"        "); // the checksum is computed over its own field as spaces
    put(156, b"0"); // a regular file
    put(257, b"ustar\0"); // magic
    put(263, b"00"); // version
    put(329, b"0000000\0"); // devmajor
    put(337, b"0000000\0"); // devminor
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());

    let mut tar = Vec::with_capacity(BLOCK * 3 + module.len().next_multiple_of(BLOCK));
    tar.extend_from_slice(&header);
    tar.extend_from_slice(module);
    tar.resize(tar.len().next_multiple_of(BLOCK), 0);
    tar.resize(tar.len() + 2 * BLOCK, 0);
    Ok(tar)
}

/// Gzip at the best level with a fixed header: no file name, mtime 0, operating system 255 ("unknown").
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::best());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0 a module of a few bytes";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-package-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn octal(field: &[u8]) -> u64 {
        let text = std::str::from_utf8(field).unwrap();
        u64::from_str_radix(text.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap()
    }

    #[test]
    fn the_layer_is_one_ustar_entry_named_plugin_wasm_with_a_valid_checksum() {
        let tar = layer_tar(MODULE).unwrap();
        assert_eq!(tar.len() % BLOCK, 0);
        assert_eq!(
            tar.len(),
            BLOCK * 4,
            "header, one data block, two end blocks"
        );
        let header = &tar[..BLOCK];
        assert_eq!(&header[..11], b"plugin.wasm");
        assert_eq!(header[11], 0);
        assert_eq!(octal(&header[124..136]), MODULE.len() as u64);
        assert_eq!(octal(&header[136..148]), 0, "mtime");
        assert_eq!(&header[257..263], b"ustar\0");
        let mut unsummed = header.to_vec();
        unsummed[148..156].fill(b' ');
        let sum: u64 = unsummed.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(octal(&header[148..156]), sum);
        assert_eq!(&tar[BLOCK..BLOCK + MODULE.len()], MODULE);
        assert!(tar[BLOCK + MODULE.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_gzip_header_names_no_file_and_no_time_and_unpacks_to_the_tar() {
        let tar = layer_tar(MODULE).unwrap();
        let gz = gzip(&tar).unwrap();
        assert_eq!(
            &gz[..4],
            &[0x1f, 0x8b, 8, 0],
            "magic, deflate, no flags (no name)"
        );
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(gz[9], 255, "operating system unknown");
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, tar);
    }

    #[test]
    fn the_same_module_gives_the_same_bytes_and_every_blob_is_named_by_its_digest() {
        let dir = scratch("layout");
        let first = write_layout(MODULE, "0.1.0", &dir.join("a")).unwrap();
        // Written twice into the same place: the old layout is replaced.
        write_layout(b"\0asm\x01\0\0\0 another", "0.1.0", &dir.join("b")).unwrap();
        let second = write_layout(MODULE, "0.1.0", &dir.join("b")).unwrap();
        assert_eq!(first, second);
        for file in ["oci-layout", "index.json"] {
            assert_eq!(
                std::fs::read(dir.join("a").join(file)).unwrap(),
                std::fs::read(dir.join("b").join(file)).unwrap(),
                "{file}"
            );
        }
        let blobs = |layout: &str| {
            let mut names: Vec<_> = std::fs::read_dir(dir.join(layout).join("blobs/sha256"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(blobs("a"), blobs("b"));
        assert_eq!(blobs("a").len(), 3, "manifest, config, layer");
        for name in blobs("a") {
            let bytes = std::fs::read(dir.join("a/blobs/sha256").join(&name)).unwrap();
            assert_eq!(sha256_hex(&bytes), name);
        }
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("a/index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["digest"],
            format!("sha256:{}", first.manifest_digest)
        );
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "0.1.0"
        );
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(dir.join("a/blobs/sha256").join(&first.manifest_digest)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            manifest["annotations"]["module.wasm.image/variant"],
            "compat"
        );
        assert_eq!(manifest["layers"][0]["mediaType"], LAYER_MEDIA_TYPE);
        assert_eq!(
            manifest["layers"][0]["digest"],
            format!("sha256:{}", first.layer_digest)
        );
        assert_eq!(first.module_sha256, sha256_hex(MODULE));
        assert!(!dir.join(".a.partial").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tags_follow_the_oci_distribution_grammar() {
        for ok in ["0.1.0", "latest", "_x", "v1.2.3-rc.1"] {
            assert!(check_tag(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }
}
