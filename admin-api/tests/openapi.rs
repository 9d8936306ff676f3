//! The OpenAPI document checked by real tools: `openapi-spec-validator` (the pinned PyPI package that
//! `cargo xtask install` puts in a virtualenv under `target/tools`) validates the served document, and the
//! same virtualenv's `jsonschema` checks real requests and answers of the API against the document's
//! schemas, with undocumented properties refused, so a renamed or added field that the document does not
//! follow fails here. The Python comes from `EDGEWARDEN_OPENAPI_VALIDATOR_PYTHON` (set by `cargo xtask
//! test`) or the virtualenv's default place; when neither exists the test says so and passes, except under
//! `CI=true`, where a missing validator fails the run.

mod common;

use std::path::PathBuf;
use std::process::Command;

use axum::http::{Method, StatusCode};
use common::{basic, Backend, TestApp};
use edgewarden_admin::auth::Role;
use serde_json::{json, Value};

/// The virtualenv's Python, or `None` (with a note) when it is not installed outside CI.
fn validator_python() -> Option<PathBuf> {
    let python = std::env::var_os("EDGEWARDEN_OPENAPI_VALIDATOR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/tools/openapi-validator/bin/python")
        });
    if python.is_file() {
        return Some(python);
    }
    let message = format!(
        "the OpenAPI validator is not installed ({} is missing): run `cargo xtask install`",
        python.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}; under CI=true this test never skips");
    }
    eprintln!("skipped: {message}");
    None
}

fn run_python(python: &PathBuf, args: &[&str]) -> (bool, String) {
    let out = Command::new(python)
        .args(args)
        .output()
        .expect("run the validator's python");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Checks each (method, path, "request" or status, body) against the document: the request body's or
/// the answer's schema, every object schema with `properties` closed with `unevaluatedProperties: false`.
const CHECK_BODIES: &str = r#"
import json, sys
import jsonschema
doc = json.load(open(sys.argv[1]))
samples = json.load(open(sys.argv[2]))
def close(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node and "unevaluatedProperties" not in node:
            node["unevaluatedProperties"] = False
        for v in node.values():
            close(v)
    elif isinstance(node, list):
        for v in node:
            close(v)
components = json.loads(json.dumps(doc["components"]))
close(components)
failures = []
for method, path, which, body in samples:
    operation = doc["paths"][path][method]
    if which == "request":
        content = operation["requestBody"]["content"]
    else:
        content = operation["responses"][which]["content"]
    schema = next(iter(content.values()))["schema"]
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "allOf": [schema], "components": components}
    validator = jsonschema.Draft202012Validator(root)
    for error in validator.iter_errors(body):
        failures.append(f"{method.upper()} {path} {which}: {error.message} at {list(error.absolute_path)}")
if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"{len(samples)} bodies match the document")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_is_valid_openapi_and_describes_real_bodies() {
    let Some(python) = validator_python() else {
        return;
    };
    let app = TestApp::start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let document = app
        .get("/api/v1/openapi.json", None)
        .await
        .expect(StatusCode::OK)
        .body;
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, document.to_string()).expect("write document");
    let (ok, out) = run_python(
        &python,
        &["-m", "openapi_spec_validator", doc_path.to_str().unwrap()],
    );
    assert!(
        ok,
        "openapi-spec-validator refused the served document:\n{out}"
    );

    // Real requests and answers, each checked against its operation's schema.
    let mut samples: Vec<Value> = Vec::new();
    let admin = app.admin_key.clone();
    let mut call = async |method: Method,
                          path: &str,
                          template: &str,
                          body: Option<Value>,
                          status: StatusCode| {
        let answer = app
            .json(method.clone(), path, Some(&admin), body.clone())
            .await
            .expect(status);
        let m = method.as_str().to_lowercase();
        if let Some(b) = body {
            samples.push(json!([m, template, "request", b]));
        }
        if answer.body != Value::Null {
            samples.push(json!([m, template, status.as_str(), answer.body]));
        }
        answer.body
    };
    let client = json!({"client_id": "billing", "name": "Billing", "allowed_scopes": ["invoices:read"],
        "allowed_roles": ["reader"], "audiences": ["api://billing"], "max_lifetime_seconds": 900});
    let created = call(
        Method::POST,
        "/api/v1/clients",
        "/api/v1/clients",
        Some(client),
        StatusCode::CREATED,
    )
    .await;
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    call(
        Method::GET,
        "/api/v1/clients",
        "/api/v1/clients",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::PATCH,
        "/api/v1/clients/billing",
        "/api/v1/clients/{client_id}",
        Some(json!({"allowed_scopes": ["invoices:read", "invoices:write"]})),
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/clients/billing",
        "/api/v1/clients/{client_id}",
        None,
        StatusCode::OK,
    )
    .await;
    let issued = call(Method::POST, "/api/v1/tokens", "/api/v1/tokens",
        Some(json!({"subject": "alice", "client_id": "billing", "scopes": ["invoices:read"], "roles": ["reader"],
            "audience": "api://billing", "ttl_seconds": 600, "refresh": true})), StatusCode::OK).await;
    let jti = issued["jti"].as_str().unwrap().to_owned();
    let access = issued["access_token"].as_str().unwrap().to_owned();
    call(
        Method::GET,
        "/api/v1/tokens",
        "/api/v1/tokens",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        &format!("/api/v1/tokens/{jti}"),
        "/api/v1/tokens/{jti}",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::POST,
        "/api/v1/api-keys",
        "/api/v1/api-keys",
        Some(json!({"role": "service", "name": "billing backend", "client_id": "billing"})),
        StatusCode::CREATED,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/api-keys",
        "/api/v1/api-keys",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/keys",
        "/api/v1/keys",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::POST,
        "/api/v1/keys/rotate",
        "/api/v1/keys/rotate",
        Some(json!({"alg": "EdDSA"})),
        StatusCode::OK,
    )
    .await;
    call(
        Method::POST,
        "/api/v1/revocations",
        "/api/v1/revocations",
        Some(json!({"subject": "bob", "reason": "left the company"})),
        StatusCode::CREATED,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/revocations",
        "/api/v1/revocations",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/revocations/feed?since=0",
        "/api/v1/revocations/feed",
        None,
        StatusCode::OK,
    )
    .await;
    let usage = json!({"edge": "edge-a", "interval_start": 1_700_000_000, "interval_end": 1_700_000_060,
        "counts": [{"jti": jti, "subject": "alice", "client_id": "billing", "route": "/api", "reason": "allowed", "count": 3, "addresses": ["10.0.0.1"]}],
        "failures": [{"jti": null, "subject": null, "client_id": null, "route": "/api", "reason": "expired",
            "client_address": "10.0.0.2", "at": 1_700_000_010, "iat": null, "nbf": null}]});
    call(
        Method::POST,
        "/api/v1/usage",
        "/api/v1/usage",
        Some(usage),
        StatusCode::ACCEPTED,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/usage/timeseries?since=1699999000&until=1700001000",
        "/api/v1/usage/timeseries",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/usage/failures",
        "/api/v1/usage/failures",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        &format!("/api/v1/tokens/{jti}/timeline"),
        "/api/v1/tokens/{jti}/timeline",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/overview?range=24h",
        "/api/v1/overview",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/edges",
        "/api/v1/edges",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/anomalies",
        "/api/v1/anomalies",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/events",
        "/api/v1/events",
        None,
        StatusCode::OK,
    )
    .await;
    let hook = call(Method::POST, "/api/v1/webhooks", "/api/v1/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/hook", "kinds": ["token.*", "anomaly.opened"], "description": "audit"})), StatusCode::CREATED).await;
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    call(
        Method::PATCH,
        &format!("/api/v1/webhooks/{hook_id}"),
        "/api/v1/webhooks/{id}",
        Some(json!({"active": false})),
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/webhooks",
        "/api/v1/webhooks",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        &format!("/api/v1/webhooks/{hook_id}/deliveries"),
        "/api/v1/webhooks/{id}/deliveries",
        None,
        StatusCode::OK,
    )
    .await;
    call(
        Method::GET,
        "/api/v1/issuers",
        "/api/v1/issuers",
        None,
        StatusCode::OK,
    )
    .await;
    // An error body, in the admin API's shape.
    call(
        Method::GET,
        "/api/v1/clients/nobody",
        "/api/v1/clients/{client_id}",
        None,
        StatusCode::NOT_FOUND,
    )
    .await;
    for (path, template) in [
        ("/healthz", "/healthz"),
        ("/.well-known/jwks.json", "/.well-known/jwks.json"),
        (
            "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server",
        ),
    ] {
        let body = app.get(path, None).await.expect(StatusCode::OK).body;
        samples.push(json!(["get", template, "200", body]));
    }
    // The OAuth endpoints, form-encoded, and their RFC 6749 error shape.
    let client_auth = basic("billing", &secret);
    for (path, params, status) in [
        (
            "/oauth/token",
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "invoices:read"),
            ],
            StatusCode::OK,
        ),
        (
            "/oauth/token",
            vec![("grant_type", "client_credentials"), ("scope", "payroll")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/oauth/introspect",
            vec![("token", access.as_str())],
            StatusCode::OK,
        ),
        (
            "/oauth/revoke",
            vec![("token", access.as_str())],
            StatusCode::OK,
        ),
    ] {
        let body = app
            .form(path, Some(&client_auth), &params)
            .await
            .expect(status)
            .body;
        let form: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        samples.push(json!(["post", path, "request", form]));
        samples.push(json!(["post", path, status.as_str(), body]));
    }
    let auditor = app.api_key(Role::Auditor, None).await;
    let refused = app
        .form(
            "/oauth/token",
            Some(&format!("Bearer {auditor}")),
            &[("grant_type", "client_credentials")],
        )
        .await;
    // A role refusal on /oauth/* is an RFC 6749 error too, not the admin API's own shape.
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(
        refused.body["error"], "unauthorized_client",
        "{}",
        refused.body
    );
    assert!(refused.body["error_description"]
        .as_str()
        .unwrap()
        .contains("service key"));
    let edge = app.api_key(Role::Edge, None).await;
    let refused_introspection = app
        .form(
            "/oauth/introspect",
            Some(&format!("Bearer {edge}")),
            &[("token", access.as_str())],
        )
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(refused_introspection.body["error"], "unauthorized_client");
    samples.push(json!([
        "post",
        "/oauth/token",
        refused.status.as_str(),
        refused.body
    ]));
    samples.push(json!([
        "post",
        "/oauth/introspect",
        "403",
        refused_introspection.body
    ]));

    let samples_path = dir.path().join("samples.json");
    std::fs::write(&samples_path, Value::Array(samples).to_string()).expect("write samples");
    let (ok, out) = run_python(
        &python,
        &[
            "-c",
            CHECK_BODIES,
            doc_path.to_str().unwrap(),
            samples_path.to_str().unwrap(),
        ],
    );
    assert!(ok, "real bodies do not match the OpenAPI document:\n{out}");
}
