//! Keeping the docs true: what README.md, admin-api/README.md, filter/README.md and the Istio example show
//! is run as shown, against the real admin API binary and a real Envoy loading the built filter, so a README
//! block that stops working fails here instead of in a new user's terminal.
//! - The fenced blocks marked `sh quickstart` run verbatim in bash (`set -euo pipefail`), with `ADMIN`,
//!   `EDGE` and `ADMIN_KEY` set as the README tells the reader to set them (the admin API, Envoy running
//!   `envoy/demo.yaml`'s plugin configuration, an admin API key); the last line each prints is what its last
//!   comment promises.
//! - Every Envoy YAML example whose plugin configuration is a `value: |` JSON block (README.md's and
//!   filter/README.md's) goes through the engine's configuration parser and is loaded by a real Envoy: its
//!   anonymous routes answer 200 and a route with no rule asks for a token (401).
//! - envoy/istio-wasmplugin.yaml's `pluginConfig` (YAML) goes through the same parser.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use edgewarden_core::{Config, Engine};
use edgewarden_e2e::{AdminApi, Stack, TokenRequest};
use serde_json::{json, Value};

fn doc(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The bodies of the fenced blocks of `markdown` whose info string is exactly `info`.
fn fenced_blocks(markdown: &str, info: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        // A block may be indented (inside a list item); its lines keep their indentation.
        if line.trim() == format!("```{info}") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(body.join("\n"));
        }
    }
    blocks
}

/// The JSON under `value: |` in an Envoy YAML snippet: the lines indented deeper than that key.
fn plugin_config_block(yaml: &str) -> Option<String> {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("value: |"));
    let key = lines.next()?;
    let key_indent = key.len() - key.trim_start().len();
    Some(
        lines
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Parses and validates a plugin configuration exactly as the filter's `on_configure` does.
fn engine_accepts(what: &str, json: &str) {
    let config = Config::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("{what}: the filter refuses its configuration: {e}\n{json}"));
    if let Err(e) = Engine::new(config) {
        panic!("{what}: the filter refuses its configuration: {e}\n{json}");
    }
}

/// Runs one `sh quickstart` block in bash with the quick start's variables; returns its stdout. Bash runs
/// on the blocking pool: the test's runtime keeps serving the echo upstream behind Envoy meanwhile.
async fn run_quickstart(what: &str, script: &str, admin: &AdminApi, edge: &str) -> String {
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", script])
        .env("ADMIN", format!("http://{}", admin.addr))
        .env("EDGE", edge)
        .env("ADMIN_KEY", &admin.admin_key);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("bash runs to its end")
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}'s quick start failed ({}):\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The demo's plugin configuration with the placeholders `cargo xtask demo` fills, for `admin`.
fn demo_plugin_config(admin: &AdminApi) -> Value {
    let block = plugin_config_block(&doc("envoy/demo.yaml"))
        .expect("envoy/demo.yaml has a `value: |` plugin configuration")
        .replace("{{issuer}}", admin.issuer())
        .replace("{{edge_api_key}}", &admin.edge_key);
    serde_json::from_str(&block).unwrap_or_else(|e| panic!("demo.yaml plugin config: {e}"))
}

/// Waits, as `cargo xtask demo` does before it prints the admin key, until the edge has fetched the admin
/// API's keys and synced its revocation state: a token of a probe client passes `/api/read`.
async fn wait_until_edge_allows_tokens(admin: &AdminApi, stack: &Stack) {
    admin
        .post(
            "/api/v1/clients",
            &json!({"client_id": "docs-probe", "allowed_scopes": ["read"], "audiences": ["demo-api"]}),
        )
        .await
        .expect(201, "register the probe client");
    let token = admin
        .issue(
            &TokenRequest::new("docs-probe")
                .client("docs-probe")
                .scopes(&["read"])
                .audience("demo-api"),
        )
        .await
        .access_token;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = match stack.get_with_token("/api/read", &token).send().await {
            Ok(answer) => answer.status().as_u16().to_string(),
            Err(e) => e.to_string(),
        };
        if status == "200" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the edge running envoy/demo.yaml's configuration never let a valid token through (last: {status}):\n{}",
            stack.envoy_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readme_quick_starts_run_as_written() {
    for path in ["README.md", "admin-api/README.md"] {
        let blocks = fenced_blocks(&doc(path), "sh quickstart");
        if path == "README.md" {
            assert!(
                !blocks.is_empty(),
                "README.md has no ```sh quickstart block"
            );
        }
        for (i, block) in blocks.iter().enumerate() {
            // A fresh admin API and edge per block: each block is a quick start of its own.
            let admin = AdminApi::start().await;
            let stack =
                Stack::start_with_control_plane(demo_plugin_config(&admin), admin.addr).await;
            wait_until_edge_allows_tokens(&admin, &stack).await;
            let edge = stack.url("");
            let what = format!("{path} block {}", i + 1);
            let stdout = run_quickstart(&what, block, &admin, edge.trim_end_matches('/')).await;
            // The block's last comment that names a status (`# 401 ...`) is what its last line prints.
            let promised = block.lines().rev().find_map(|l| {
                let comment = l.split_once("# ")?.1;
                let status = comment.get(..3)?;
                status.parse::<u16>().ok().map(|_| status.to_string())
            });
            if let Some(status) = promised {
                let last = stdout.lines().last().unwrap_or_default().trim();
                assert_eq!(
                    last, status,
                    "{what}: its last command printed {last:?}, the README promises {status}\n{stdout}"
                );
            }
        }
    }
}

#[tokio::test]
async fn readme_envoy_examples_load_in_envoy() {
    let mut checked = 0;
    for path in ["README.md", "filter/README.md"] {
        for (i, yaml) in fenced_blocks(&doc(path), "yaml").iter().enumerate() {
            let Some(json) = plugin_config_block(yaml) else {
                continue;
            };
            let what = format!("{path} yaml block {}", i + 1);
            engine_accepts(&what, &json);
            let config: Value = serde_json::from_str(&json).expect("json the engine accepted");
            // The real Envoy loads it (a cluster the example names need not exist to load).
            let stack = Stack::start(config.clone()).await;
            for rule in config["rules"].as_array().into_iter().flatten() {
                if rule["allow_anonymous"] == true {
                    let prefix = rule["match"]["prefix"].as_str().expect("prefix rule");
                    let status = stack.get(prefix).send().await.unwrap().status();
                    assert_eq!(status, 200, "{what}: anonymous {prefix} answered {status}");
                }
            }
            let refused = stack.get("/no-rule-matches-this").send().await.unwrap();
            assert_eq!(
                refused.status(),
                401,
                "{what}: a request without a token was not asked for one"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the Envoy examples of README.md and filter/README.md, found {checked}"
    );
}

#[test]
fn istio_plugin_config_is_accepted_by_the_filter() {
    let manifest: Value = serde_yaml_ng::from_str(&doc("envoy/istio-wasmplugin.yaml"))
        .expect("envoy/istio-wasmplugin.yaml is YAML");
    let plugin_config = &manifest["spec"]["pluginConfig"];
    assert!(
        plugin_config.is_object(),
        "envoy/istio-wasmplugin.yaml has no spec.pluginConfig"
    );
    engine_accepts(
        "envoy/istio-wasmplugin.yaml pluginConfig",
        &plugin_config.to_string(),
    );
}

#[test]
fn block_extraction_finds_marked_blocks_only() {
    let text = "```sh quickstart\necho a\n```\n- item\n  ```sh quickstart\n  echo c\n  ```\n```sh\necho b\n```\n```yaml\nvalue: |\n  {\"x\": 1}\nnext: 2\n```\n";
    assert_eq!(fenced_blocks(text, "sh quickstart"), ["echo a", "  echo c"]);
    assert_eq!(fenced_blocks(text, "sh"), ["echo b"]);
    let yaml = &fenced_blocks(text, "yaml")[0];
    assert_eq!(plugin_config_block(yaml).unwrap().trim(), "{\"x\": 1}");
}
