//! The authorization matrix: every route (from `openapi::OPERATIONS`, which a test elsewhere keeps equal
//! to the registered routes) under every role and without credentials, with the expected status:
//! no credentials 401, a role outside the route's list 403, a role inside it neither 401 nor 403 nor 5xx.
//! Run on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Backend, TestApp};
use edgewarden_admin::auth::Role;
use edgewarden_admin::openapi::OPERATIONS;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

both_backends!(every_route_under_every_role_gets_the_expected_status);

/// Sends one request and returns its status; bodies of event streams are not awaited.
async fn status_of(app: &TestApp, request: Request<Body>) -> StatusCode {
    let response =
        tokio::time::timeout(Duration::from_secs(20), app.router.clone().oneshot(request))
            .await
            .expect("route answered within 20s")
            .expect("infallible");
    let status = response.status();
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        let _ = response.into_body().collect().await;
    }
    status
}

async fn every_route_under_every_role_gets_the_expected_status(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    app.client("matrix-target", &["read"], &[]).await;
    let issued = app.issue("alice", "matrix-target", &["read"], false).await;
    let jti = issued["jti"].as_str().unwrap().to_owned();
    let callers: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("admin", Some(app.admin_key.clone())),
        ("auditor", Some(app.api_key(Role::Auditor, None).await)),
        ("edge", Some(app.api_key(Role::Edge, None).await)),
        (
            "service",
            Some(app.api_key(Role::Service, Some("billing")).await),
        ),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for op in OPERATIONS {
        let path = op
            .path
            .replace("{client_id}", "matrix-target")
            .replace("{jti}", &jti)
            .replace("{id}", "does-not-exist");
        let roles: Vec<&str> = op.roles.split(' ').collect();
        for (caller, key) in &callers {
            let method = Method::from_bytes(op.method.to_ascii_uppercase().as_bytes()).unwrap();
            let mut builder = Request::builder().method(method).uri(&path);
            if let Some(key) = key {
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
            }
            let request = match op.body {
                Some(ct) if ct.contains("json") => builder
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from("{}")),
                Some(ct) => builder.header(header::CONTENT_TYPE, ct).body(Body::empty()),
                None => builder.body(Body::empty()),
            }
            .unwrap();
            let status = status_of(&app, request).await;
            checked += 1;
            let expected = if roles.contains(&"public") {
                "open"
            } else if roles == ["client"] {
                // Only OAuth client authentication counts; API keys are not client credentials.
                "401"
            } else if *caller == "none" {
                "401"
            } else if roles.contains(caller) {
                "allowed"
            } else {
                "403"
            };
            let ok = match expected {
                "open" | "allowed" => {
                    status != StatusCode::UNAUTHORIZED
                        && status != StatusCode::FORBIDDEN
                        && !status.is_server_error()
                }
                "401" => status == StatusCode::UNAUTHORIZED,
                _ => status == StatusCode::FORBIDDEN,
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {caller}: got {status}, expected {expected}",
                    op.method, op.path
                ));
            }
        }
    }
    assert!(checked >= OPERATIONS.len() * 5);
    assert!(
        failures.is_empty(),
        "authorization matrix mismatches:\n{}",
        failures.join("\n")
    );
}
