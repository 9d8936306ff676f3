//! Credentials and their lifetime (issue 13, low findings): edge keys bound to edge names, service keys
//! tied to their client, logins and bad keys leaving log lines and events, password changes, and the
//! request-shape errors (413, 415, JSON path errors). Each test runs on SQLite and on PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Answer, Backend, TestApp};
use edgewarden_admin::auth::Role;
use edgewarden_admin::db::now;
use serde_json::{json, Value};

both_backends!(
    an_edge_key_polls_and_reports_only_under_its_own_edge_names,
    an_unbound_edge_key_still_acts_as_any_edge,
    edge_names_are_checked_and_only_edge_keys_take_them,
);

async fn poll_as(app: &TestApp, key: &str, edge: &str) -> Answer {
    app.call(
        Request::builder()
            .uri("/api/v1/revocations/feed?since=0")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header("x-edgewarden-edge", edge)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

fn batch(edge: &str) -> Value {
    let now = now();
    json!({"edge": edge, "interval_start": now - 10, "interval_end": now,
           "counts": [{"route": "/orders", "reason": "missing_token", "count": 2}], "failures": []})
}

async fn edge_key(app: &TestApp, edges: &[&str]) -> Answer {
    app.post(
        "/api/v1/api-keys",
        Some(&app.admin_key),
        json!({"role": "edge", "name": "bound edge", "edges": edges}),
    )
    .await
}

async fn edge_names(app: &TestApp) -> Vec<String> {
    let page = app
        .get("/api/v1/edges", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn an_edge_key_polls_and_reports_only_under_its_own_edge_names(backend: Backend) {
    let app = TestApp::start(backend).await;
    let created = edge_key(&app, &["edge-a", "edge-b"])
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(created["edges"], json!(["edge-a", "edge-b"]));
    let key = created["key"].as_str().unwrap().to_owned();

    poll_as(&app, &key, "edge-a").await.expect(StatusCode::OK);
    poll_as(&app, &key, "edge-b").await.expect(StatusCode::OK);
    let refused = poll_as(&app, &key, "edge-c")
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "forbidden");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"edge-c\"") && message.contains("--edge edge-c"),
        "{message}"
    );

    app.post("/api/v1/usage", Some(&key), batch("edge-a"))
        .await
        .expect(StatusCode::ACCEPTED);
    let refused = app
        .post("/api/v1/usage", Some(&key), batch("edge-c"))
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(refused.code(), "forbidden");

    // The refused poll and report left no trace under the other edge's name.
    let names = edge_names(&app).await;
    assert!(names.contains(&"edge-a".to_owned()), "{names:?}");
    assert!(!names.contains(&"edge-c".to_owned()), "{names:?}");

    // The binding is listed, and admins still act as any edge.
    let keys = app
        .get("/api/v1/api-keys", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    let listed = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap()
        .clone();
    assert_eq!(listed["edges"], json!(["edge-a", "edge-b"]));
    poll_as(&app, &app.admin_key, "edge-c")
        .await
        .expect(StatusCode::OK);
}

async fn an_unbound_edge_key_still_acts_as_any_edge(backend: Backend) {
    let app = TestApp::start(backend).await;
    // As every edge key created before keys were bound: no edge names.
    let key = app.api_key(Role::Edge, None).await;
    poll_as(&app, &key, "edge-x").await.expect(StatusCode::OK);
    app.post("/api/v1/usage", Some(&key), batch("edge-y"))
        .await
        .expect(StatusCode::ACCEPTED);
    let keys = app
        .get("/api/v1/api-keys", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["edges"] == json!([])));
}

async fn edge_names_are_checked_and_only_edge_keys_take_them(backend: Backend) {
    let app = TestApp::start(backend).await;
    let refused = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "auditor", "edges": ["edge-a"]}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["error"]["field"], "edges");
    let refused = edge_key(&app, &["edge-a", "bad\nname"])
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["error"]["field"], "edges[1]");
    // Repeated names are stored once.
    let created = edge_key(&app, &["edge-a", "edge-a"])
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(created.body["edges"], json!(["edge-a"]));
}
