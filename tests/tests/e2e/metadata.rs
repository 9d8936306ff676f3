//! Access logs and other filters see the decision: a real Envoy with the access log format and the Lua filter that
//! `envoy/demo.yaml` ships (taken from the file, so the demo cannot drift from what is tested) writes every
//! request's `%DYNAMIC_METADATA(edgewarden:...)%` (reason, rule, sub, client_id, jti) to an access log file, read
//! back here: allowed and refused requests alike, only claims of verified tokens, never the token.
//! The filter's own filter state (`%FILTER_STATE(wasm.edgewarden.reason:PLAIN)%`) is checked beside it, and with
//! `"decision_properties": "one"` the single logfmt property `wasm.edgewarden.decision` instead.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgewarden_e2e::{eventually, Stack, TestKey, TokenBuilder};
use serde_json::{json, Value};

use crate::base_config;

/// `envoy/demo.yaml` as JSON, placeholders filled with dummies (only its access log and Lua filter are used).
fn demo_bootstrap() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/demo.yaml");
    let text = std::fs::read_to_string(&path).expect("read envoy/demo.yaml");
    let mut filled = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").expect("closed placeholder") + start + 2;
        filled.push_str(&rest[..start]);
        filled.push('0');
        rest = &rest[end..];
    }
    filled.push_str(rest);
    serde_yaml_ng::from_str(&filled).expect("envoy/demo.yaml is YAML")
}

/// The demo's connection manager.
fn demo_manager(demo: &Value) -> &Value {
    &demo["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

/// Envoy with the demo's access log (written to `access.log` in a fresh directory instead of stdout, with one more
/// field: the filter state the Lua filter copies from) and the demo's Lua filter after EdgeWarden.
async fn stack() -> (Stack, PathBuf) {
    let demo = demo_bootstrap();
    let manager = demo_manager(&demo);
    let demo_log = manager["access_log"][0].clone();
    let lua = manager["http_filters"]
        .as_array()
        .expect("demo http_filters")
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.lua")
        .expect("envoy/demo.yaml has the Lua filter that copies the decision into dynamic metadata")
        .clone();
    let mut format = demo_log["typed_config"]["log_format"].clone();
    assert!(
        format["json_format"]["edgewarden_reason"] == "%DYNAMIC_METADATA(edgewarden:reason)%",
        "the demo's access log names the decision: {format}"
    );
    format["json_format"]["filter_state_reason"] =
        json!("%FILTER_STATE(wasm.edgewarden.reason:PLAIN)%");
    logged_stack(base_config(), format, Some(lua)).await
}

/// Envoy with EdgeWarden configured by `config`, its access log in `format` written to `access.log` in a fresh
/// directory, and `lua` after EdgeWarden if given.
async fn logged_stack(config: Value, format: Value, lua: Option<Value>) -> (Stack, PathBuf) {
    let log_path = Arc::new(Mutex::new(PathBuf::new()));
    let written = Arc::clone(&log_path);
    let stack = Stack::start_customised(config, json!({"keys": []}), &[], move |bootstrap, dir| {
        let path = dir.join("access.log");
        *written.lock().expect("path lock") = path.clone();
        let manager = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        manager["access_log"] = json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": path.display().to_string(),
                "log_format": format
            }
        }]);
        if let Some(lua) = lua {
            manager["http_filters"]
                .as_array_mut()
                .expect("http_filters")
                .insert(1, lua);
        }
    })
    .await;
    let path = log_path.lock().expect("path lock").clone();
    (stack, path)
}

/// The access log's lines by path (each request below has its own path).
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The access log's text once it has `n` lines (Envoy writes its access log files out every 10 s, its default
/// flush interval).
async fn log_lines(log: &Path, n: usize) -> String {
    let (text, _) = eventually(
        &format!("an access log line for each of the {n} requests"),
        Duration::from_secs(30),
        || {
            let log = log.to_path_buf();
            async move {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if lines(&text).len() >= n {
                    Ok(text)
                } else {
                    Err(format!("{} lines so far: {text}", lines(&text).len()))
                }
            }
        },
    )
    .await;
    text
}

/// A token signed by a key the issuer does not have under that kid: never verified, so nothing of it is published.
fn forged() -> String {
    TokenBuilder::new(TestKey::Rs256A)
        .header("kid", TestKey::Es256A.kid())
        .header("alg", "ES256")
        .subject("meta-mallory")
        .sign()
}

#[tokio::test]
async fn every_decision_reaches_the_access_log_through_dynamic_metadata() {
    let (stack, log) = stack().await;
    let allowed = TokenBuilder::new(TestKey::Es256A)
        .subject("meta-alice")
        .claim("client_id", "billing")
        .claim("jti", "jti-meta-1")
        .scope("read")
        .sign();
    let expired = TokenBuilder::new(TestKey::Es256A)
        .subject("meta-bob")
        .claim("jti", "jti-meta-2")
        .expires_in(-3600)
        .sign();
    let forged = forged();
    let requests: [(&str, Option<&str>, u16); 5] = [
        ("/read/allowed", Some(&allowed), 200),
        ("/admin/needs-scope", Some(&allowed), 403),
        ("/read/expired", Some(&expired), 401),
        ("/read/forged", Some(&forged), 401),
        ("/public/anonymous", None, 200),
    ];
    for (path, token, status) in requests {
        let request = match token {
            Some(token) => stack.get_with_token(path, token),
            None => stack.get(path),
        };
        let answer = request.send().await.expect("request through envoy");
        assert_eq!(answer.status(), status, "{path}");
    }
    let text = log_lines(&log, 5).await;
    for token in [&allowed, &expired, &forged] {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(
            !text.contains(token.as_str()) && !text.contains(signature),
            "the access log holds a token: {text}"
        );
    }
    let by_path = |path: &str| -> Value {
        lines(&text)
            .into_iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no access log line for {path}: {text}"))
    };
    let fields = |line: &Value| -> Vec<Value> {
        [
            "edgewarden_reason",
            "edgewarden_rule",
            "edgewarden_sub",
            "edgewarden_client_id",
            "edgewarden_jti",
            "filter_state_reason",
        ]
        .iter()
        .map(|k| line[*k].clone())
        .collect()
    };
    // Envoy's json_format writes an absent value as null.
    let expected: [(&str, [Value; 6]); 5] = [
        (
            "/read/allowed",
            [
                json!("allowed"),
                json!("/read"),
                json!("meta-alice"),
                json!("billing"),
                json!("jti-meta-1"),
                json!("allowed"),
            ],
        ),
        (
            "/admin/needs-scope",
            [
                json!("insufficient_scope"),
                json!("/admin"),
                json!("meta-alice"),
                json!("billing"),
                json!("jti-meta-1"),
                json!("insufficient_scope"),
            ],
        ),
        (
            "/read/expired",
            [
                json!("expired"),
                json!("/read"),
                json!("meta-bob"),
                Value::Null,
                json!("jti-meta-2"),
                json!("expired"),
            ],
        ),
        (
            "/read/forged",
            [
                json!("bad_signature"),
                json!("/read"),
                Value::Null,
                Value::Null,
                Value::Null,
                json!("bad_signature"),
            ],
        ),
        (
            "/public/anonymous",
            [
                json!("anonymous"),
                json!("/public"),
                Value::Null,
                Value::Null,
                Value::Null,
                json!("anonymous"),
            ],
        ),
    ];
    for (path, want) in expected {
        let line = by_path(path);
        assert_eq!(fields(&line), want.to_vec(), "{path}: {line}");
    }
    assert_eq!(by_path("/read/expired")["status"], json!(401));
}

#[tokio::test]
async fn one_decision_property_reaches_the_access_log_as_logfmt() {
    let mut config = base_config();
    config["decision_properties"] = json!("one");
    let format = json!({"json_format": {
        "path": "%REQ(:PATH)%",
        "decision": "%FILTER_STATE(wasm.edgewarden.decision:PLAIN)%",
        "reason": "%FILTER_STATE(wasm.edgewarden.reason:PLAIN)%"
    }});
    let (stack, log) = logged_stack(config, format, None).await;
    let allowed = TokenBuilder::new(TestKey::Es256A)
        .subject("meta carol")
        .claim("client_id", "billing")
        .claim("jti", "jti-meta-3")
        .scope("read")
        .sign();
    let forged = forged();
    for (path, token, status) in [
        ("/read/one-allowed", &allowed, 200),
        ("/read/one-forged", &forged, 401),
    ] {
        let answer = stack
            .get_with_token(path, token)
            .send()
            .await
            .expect("request through envoy");
        assert_eq!(answer.status(), status, "{path}");
    }
    let text = log_lines(&log, 2).await;
    let got: Vec<(Value, Value, Value)> = lines(&text)
        .into_iter()
        .map(|l| {
            (
                l["path"].clone(),
                l["decision"].clone(),
                l["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                json!("/read/one-allowed"),
                json!(
                    "reason=allowed rule=/read sub=\"meta carol\" client_id=billing jti=jti-meta-3"
                ),
                Value::Null
            ),
            (
                json!("/read/one-forged"),
                json!("reason=bad_signature rule=/read"),
                Value::Null
            ),
        ]
    );
}
