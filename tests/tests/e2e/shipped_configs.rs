//! The plugin configuration shipped in `envoy/demo.yaml` is loaded by a real Envoy and behaves as the demo
//! promises, so a renamed configuration key or a changed default cannot silently break `cargo xtask demo`.
//! The demo runs against the admin API as its control plane, so this does too (the real binary).

use edgewarden_e2e::{AdminApi, Stack};

/// The JSON under `value: |` in a shipped Envoy YAML: the lines indented deeper than that key.
fn plugin_config_block(yaml: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("value: |"));
    let key = lines.next().expect("a `value: |` block");
    let key_indent = key.len() - key.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect::<Vec<_>>()
        .join("\n")
}

fn shipped(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn demo_yaml_plugin_config_loads_and_guards_its_routes() {
    let admin = AdminApi::start().await;
    // The placeholders `cargo xtask demo` fills in the plugin configuration.
    let block = plugin_config_block(&shipped("envoy/demo.yaml"))
        .replace("{{issuer}}", admin.issuer())
        .replace("{{edge_api_key}}", &admin.edge_key);
    assert!(
        !block.contains("{{"),
        "unfilled placeholder in demo.yaml: {block}"
    );
    let config: serde_json::Value = serde_json::from_str(&block)
        .unwrap_or_else(|e| panic!("demo.yaml plugin config is not json ({e}):\n{block}"));
    let stack = Stack::start_with_control_plane(config, admin.addr).await;
    assert_eq!(
        stack.get("/public/hello").send().await.unwrap().status(),
        200
    );
    let refused = stack.get("/api/read").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(challenge, r#"Bearer realm="edgewarden-demo""#);
    assert_eq!(stack.get("/api/admin").send().await.unwrap().status(), 401);
}
