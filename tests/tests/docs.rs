//! Keeps README.md and ARCHITECTURE.md true: every repository path they name in backticks must exist.
//! Docs that point at moved or deleted files mislead newcomers more than missing docs do, and this
//! check costs nothing next to the end-to-end tests that share this crate.

use std::path::{Path, PathBuf};

/// Top-level folders whose paths the documents may name.
const ROOTS: &[&str] = &[
    "core/",
    "filter/",
    "admin-api/",
    "api-types/",
    "dashboard/",
    "docs/",
    "envoy/",
    "tests/",
    "xtask/",
    ".ci/",
    ".cargo/",
];

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits one level below the workspace root")
        .to_path_buf()
}

/// Backticked spans that look like repository paths: they start with a known root and have no spaces
/// or placeholders; a trailing `/` names a folder.
fn named_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| ROOTS.iter().any(|root| span.starts_with(root)))
        .filter(|span| !span.contains(' ') && !span.contains('<') && !span.contains('*'))
        .map(|span| span.trim_end_matches(':').to_string())
        .collect()
}

fn missing_paths(doc: &str) -> Vec<String> {
    let root = project_root();
    let text = std::fs::read_to_string(root.join(doc))
        .unwrap_or_else(|e| panic!("cannot read {doc}: {e}"));
    named_paths(&text)
        .into_iter()
        .filter(|p| !root.join(p).exists())
        .collect()
}

#[test]
fn paths_named_in_readme_exist() {
    let missing = missing_paths("README.md");
    assert!(
        missing.is_empty(),
        "README.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn paths_named_in_architecture_exist() {
    let missing = missing_paths("ARCHITECTURE.md");
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn path_extraction_finds_backticked_paths_only() {
    let text =
        "see `core/src/engine.rs` and `filter/README.md`, not `cargo xtask test` or `core/<x>`";
    assert_eq!(
        named_paths(text),
        vec!["core/src/engine.rs", "filter/README.md"]
    );
}
