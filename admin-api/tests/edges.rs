//! Edges per Envoy instance and the configurations they report (issues 10 and 12), each run on SQLite and
//! on PostgreSQL: instances of one edge name listed apart, a 304 that writes nothing, a configuration asked
//! for (by a poll's answer or a usage report's), stored once and served, and documents that carry a secret
//! refused.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Answer, Backend, TestApp, TestDb};
use edgewarden_admin::auth::Role;
use edgewarden_api_types::{Edge, EdgeConfig, Page};
use edgewarden_core::config::{config_hash, redacted_config};
use serde_json::{json, Value};

both_backends!(
    instances_of_one_edge_name_are_listed_apart_with_their_own_cursor_and_configuration,
    a_not_modified_poll_writes_nothing_and_an_advanced_cursor_writes_the_instance,
    an_unknown_configuration_is_asked_for_stored_once_and_served_without_secrets,
    configurations_with_a_secret_a_wrong_hash_or_the_wrong_edge_are_refused,
    a_usage_report_carries_the_configuration_hash_and_an_unknown_one_is_asked_for,
);

/// A plugin configuration as an Envoy holds it, with its secrets.
fn plugin_config(edge: &str, leeway: u64) -> Value {
    json!({
        "issuers": [{"issuer": "https://issuer.test", "audiences": ["api"], "jwks": {"keys": [
            {"kty": "oct", "kid": "hs", "alg": "HS256", "k": "aG1hYy1rZXktdGhhdC1pcy1sb25nLWVub3VnaC0zMi1ieXRlcw"}
        ]}}],
        "clock_skew_seconds": leeway,
        "control_plane": {"cluster": "cp", "api_key": "ewk_edge_secret", "edge_name": edge},
        "rules": [{"match": {"prefix": "/public"}, "allow_anonymous": true}],
    })
}

/// The redacted document and its hash, as the filter computes them.
fn reported(config: &Value) -> (Vec<u8>, String) {
    let document = redacted_config(config.to_string().as_bytes()).expect("a JSON object");
    let hash = config_hash(&document);
    (document, hash)
}

/// One feed poll as the filter makes it: edge name, instance, configuration hash, and `If-None-Match`.
async fn poll(
    app: &TestApp,
    key: &str,
    edge: &str,
    instance: Option<&str>,
    hash: Option<&str>,
    since: i64,
    etag: Option<&str>,
) -> Answer {
    let mut request = Request::get(format!("/api/v1/revocations/feed?since={since}"))
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header("x-edgewarden-edge", edge);
    if let Some(instance) = instance {
        request = request
            .header("x-edgewarden-instance", instance)
            .header("x-edgewarden-node", format!("node-{instance}"));
    }
    if let Some(hash) = hash {
        request = request.header("x-edgewarden-config-hash", hash);
    }
    if let Some(etag) = etag {
        request = request.header(header::IF_NONE_MATCH, etag);
    }
    app.call(request.body(Body::empty()).unwrap()).await
}

/// `POST /api/v1/edges/config` with `body` as the edge sends it.
async fn upload(
    app: &TestApp,
    key: &str,
    edge: &str,
    body: &[u8],
    hash: Option<&str>,
    content_type: &str,
) -> Answer {
    let mut request = Request::post("/api/v1/edges/config")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, content_type)
        .header("x-edgewarden-edge", edge)
        .header("x-edgewarden-instance", "0011223344556677");
    if let Some(hash) = hash {
        request = request.header("x-edgewarden-config-hash", hash);
    }
    app.call(request.body(Body::from(body.to_vec())).unwrap())
        .await
}

/// One usage report as the filter posts it: `x-edgewarden-edge` naming `header_edge`, the instance and the
/// configuration hash, and a one-decision batch for `body_edge`.
async fn usage_report(
    app: &TestApp,
    key: &str,
    header_edge: &str,
    body_edge: &str,
    hash: Option<&str>,
) -> Answer {
    static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = edgewarden_admin::db::now();
    let batch = json!({
        "edge": body_edge, "interval_start": now - 10, "interval_end": now, "dropped": n,
        "counts": [{"jti": format!("usage-{n}"), "route": "/orders", "reason": "allowed", "count": 1}],
        "failures": [],
    });
    let mut request = Request::post("/api/v1/usage")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-edgewarden-edge", header_edge)
        .header("x-edgewarden-instance", "eeee000000000005");
    if let Some(hash) = hash {
        request = request.header("x-edgewarden-config-hash", hash);
    }
    app.call(request.body(Body::from(batch.to_string())).unwrap())
        .await
}

fn hint(answer: &Answer) -> Option<&str> {
    answer
        .headers
        .get("x-edgewarden-config")
        .map(|v| v.to_str().unwrap())
}

async fn edges(app: &TestApp) -> Vec<Edge> {
    let body = app
        .get("/api/v1/edges", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    serde_json::from_value::<Page<Edge>>(body)
        .expect("edges page shape")
        .items
}

/// Revokes every token of `subject`: one feed change.
async fn revoke(app: &TestApp, subject: &str) {
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"subject": subject, "reason": "edges test"}),
    )
    .await
    .expect(StatusCode::CREATED);
}

/// An app whose replica writes the polls it saw every `flush_seconds` (polls themselves never write).
async fn start_flushing(backend: Backend, flush_seconds: u64) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.usage.edge_flush_seconds = flush_seconds;
    TestApp::with_config(config, db).await
}

/// An app whose periodic flush never runs during the test, so any write seen is one a request made.
async fn start(backend: Backend) -> TestApp {
    start_flushing(backend, 3_600).await
}

async fn instances_of_one_edge_name_are_listed_apart_with_their_own_cursor_and_configuration(
    backend: Backend,
) {
    let app = start_flushing(backend, 1).await;
    let key = app.api_key(Role::Edge, None).await;
    let (_, hash_a) = reported(&plugin_config("edge-1", 60));
    let (_, hash_b) = reported(&plugin_config("edge-1", 5));
    assert_ne!(hash_a, hash_b);
    revoke(&app, "j-1").await;
    revoke(&app, "j-2").await;
    poll(
        &app,
        &key,
        "edge-1",
        Some("aaaa000000000001"),
        Some(&hash_a),
        2,
        None,
    )
    .await
    .expect(StatusCode::OK);
    poll(
        &app,
        &key,
        "edge-1",
        Some("bbbb000000000002"),
        Some(&hash_b),
        1,
        None,
    )
    .await
    .expect(StatusCode::OK);
    // A filter from before instances: no instance header, no hash.
    poll(&app, &key, "edge-old", None, None, 2, None)
        .await
        .expect(StatusCode::OK);

    let listed = edges(&app).await;
    let edge = listed
        .iter()
        .find(|e| e.name == "edge-1")
        .expect("edge-1 listed");
    assert_eq!(edge.instances.len(), 2, "{edge:?}");
    assert!(edge.configs_differ, "two hashes under one name: {edge:?}");
    let a = edge
        .instances
        .iter()
        .find(|i| i.instance == "aaaa000000000001")
        .expect("instance a");
    let b = edge
        .instances
        .iter()
        .find(|i| i.instance == "bbbb000000000002")
        .expect("instance b");
    assert_eq!((a.feed_cursor, a.cursor_lag), (Some(2), Some(0)));
    assert_eq!((b.feed_cursor, b.cursor_lag), (Some(1), Some(1)));
    assert_eq!(a.config_hash.as_deref(), Some(hash_a.as_str()));
    assert_eq!(b.config_hash.as_deref(), Some(hash_b.as_str()));
    assert_eq!(a.node.as_deref(), Some("node-aaaa000000000001"));
    assert!(a.staleness_seconds.is_some_and(|s| s <= 2));
    assert!(!a.config_known, "no document was sent yet");

    let old = listed
        .iter()
        .find(|e| e.name == "edge-old")
        .expect("edge-old listed");
    assert_eq!(old.instances.len(), 1, "{old:?}");
    assert_eq!(old.instances[0].instance, "", "one unnamed instance");
    assert_eq!(old.instances[0].feed_cursor, Some(2));
    assert!(!old.configs_differ);

    // The replica's periodic flush puts the instances in the database, so another replica lists them too.
    let mut rows = 0;
    for _ in 0..50 {
        rows = sqlx::query_scalar("SELECT COUNT(*) FROM edge_instances WHERE edge = 'edge-1'")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
        if rows == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(rows, 2, "the flush wrote both instances");
    let cursors: Vec<(String, i64)> = sqlx::query_as(
        "SELECT instance, feed_cursor FROM edge_instances WHERE edge = 'edge-1' ORDER BY instance",
    )
    .fetch_all(&app.state.db.pool)
    .await
    .unwrap();
    assert_eq!(
        cursors,
        vec![
            ("aaaa000000000001".to_owned(), 2),
            ("bbbb000000000002".to_owned(), 1)
        ]
    );
}

async fn a_not_modified_poll_writes_nothing_and_an_advanced_cursor_writes_the_instance(
    backend: Backend,
) {
    let app = start(backend).await;
    let key = app.api_key(Role::Edge, None).await;
    let (_, hash) = reported(&plugin_config("edge-1", 60));
    revoke(&app, "j-1").await;
    let instance = Some("cccc000000000003");
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM edge_instances")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap()
    };
    poll(&app, &key, "edge-1", instance, Some(&hash), 1, None)
        .await
        .expect(StatusCode::OK);
    for _ in 0..3 {
        poll(
            &app,
            &key,
            "edge-1",
            instance,
            Some(&hash),
            1,
            Some("\"c1\""),
        )
        .await
        .expect(StatusCode::NOT_MODIFIED);
    }
    // Polls, 304s included, only touch this replica's memory; its periodic flush (an hour away here)
    // writes them.
    assert_eq!(count().await, 0, "a poll wrote the instance");
    let listed = edges(&app).await;
    let seen = &listed[0].instances[0];
    assert_eq!(seen.instance, "cccc000000000003");
    assert_eq!((seen.feed_cursor, seen.cursor_lag), (Some(1), Some(0)));

    revoke(&app, "j-2").await;
    poll(&app, &key, "edge-1", instance, Some(&hash), 2, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(count().await, 0, "an advance waits for the flush too");
    let listed = edges(&app).await;
    assert_eq!(listed[0].instances[0].feed_cursor, Some(2));
}

async fn an_unknown_configuration_is_asked_for_stored_once_and_served_without_secrets(
    backend: Backend,
) {
    let app = start(backend).await;
    let key = app.api_key(Role::Edge, None).await;
    let config = plugin_config("edge-1", 60);
    let (document, hash) = reported(&config);
    let instance = Some("dddd000000000004");
    let first = poll(&app, &key, "edge-1", instance, Some(&hash), 0, None)
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        first
            .headers
            .get("x-edgewarden-config")
            .map(|v| v.to_str().unwrap()),
        Some("unknown"),
        "the answer asks for the document"
    );
    let stored = upload(
        &app,
        &key,
        "edge-1",
        &document,
        Some(&hash),
        "application/json",
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(stored.body, json!({"hash": hash, "stored": true}));
    let again = upload(&app, &key, "edge-1", &document, None, "application/json")
        .await
        .expect(StatusCode::OK);
    assert_eq!(again.body["stored"], false, "stored once");
    let next = poll(&app, &key, "edge-1", instance, Some(&hash), 0, None)
        .await
        .expect(StatusCode::OK);
    assert!(
        next.headers.get("x-edgewarden-config").is_none(),
        "a known hash is not asked for again"
    );

    let served = app
        .get(
            &format!("/api/v1/edges/configs/{hash}"),
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK);
    let served: EdgeConfig = serde_json::from_value(served.body).expect("config shape");
    assert_eq!(served.hash, hash);
    assert_eq!(served.edge, "edge-1");
    assert_eq!(served.instance, "0011223344556677");
    assert_eq!(served.document["clock_skew_seconds"], 60);
    assert_eq!(served.document["control_plane"]["api_key"], "<redacted>");
    assert_eq!(
        served.document["issuers"][0]["jwks"]["keys"][0]["k"],
        "<redacted>"
    );
    let text = served.document.to_string();
    assert!(!text.contains("ewk_edge_secret") && !text.contains("aG1hYy1rZXk"));
    let auditor = app.api_key(Role::Auditor, None).await;
    app.get(&format!("/api/v1/edges/configs/{hash}"), Some(&auditor))
        .await
        .expect(StatusCode::OK);
    app.get(&format!("/api/v1/edges/configs/{hash}"), Some(&key))
        .await
        .expect(StatusCode::FORBIDDEN);
    let listed = edges(&app).await;
    assert!(listed[0].instances[0].config_known, "{listed:?}");

    let missing = "0".repeat(64);
    let answer = app
        .get(
            &format!("/api/v1/edges/configs/{missing}"),
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::NOT_FOUND);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&missing));
    app.get("/api/v1/edges/configs/not-a-hash", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
}

async fn configurations_with_a_secret_a_wrong_hash_or_the_wrong_edge_are_refused(backend: Backend) {
    let app = start(backend).await;
    let key = app.api_key(Role::Edge, None).await;
    let config = plugin_config("edge-1", 60);
    // The raw configuration, secrets and all: refused, naming where they are, and nothing stored.
    let raw = config.to_string();
    let refused = upload(
        &app,
        &key,
        "edge-1",
        raw.as_bytes(),
        None,
        "application/json",
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    let message = refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("control_plane.api_key") && message.contains("issuers[0].jwks.keys[0].k"),
        "{message}"
    );
    assert!(
        !message.contains("ewk_edge_secret"),
        "the refusal echoes the secret: {message}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM edge_configs")
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    let (document, _) = reported(&config);
    let wrong = "f".repeat(64);
    let answer = upload(
        &app,
        &key,
        "edge-1",
        &document,
        Some(&wrong),
        "application/json",
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not match"));
    upload(&app, &key, "edge-1", &document, None, "text/plain")
        .await
        .expect(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    upload(&app, &key, "edge-1", b"[1, 2]", None, "application/json")
        .await
        .expect(StatusCode::BAD_REQUEST);
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(300 * 1024));
    upload(
        &app,
        &key,
        "edge-1",
        huge.as_bytes(),
        None,
        "application/json",
    )
    .await
    .expect(StatusCode::PAYLOAD_TOO_LARGE);

    // An edge key bound to edge-2 may not report as edge-1; an auditor may not report at all.
    let bound = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "edge", "name": "bound edge", "edges": ["edge-2"]}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body["key"]
        .as_str()
        .unwrap()
        .to_owned();
    upload(&app, &bound, "edge-1", &document, None, "application/json")
        .await
        .expect(StatusCode::FORBIDDEN);
    upload(&app, &bound, "edge-2", &document, None, "application/json")
        .await
        .expect(StatusCode::OK);
    let auditor = app.api_key(Role::Auditor, None).await;
    upload(
        &app,
        &auditor,
        "edge-1",
        &document,
        None,
        "application/json",
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    let missing_edge = app
        .call(
            Request::post("/api/v1/edges/config")
                .header(header::AUTHORIZATION, format!("Bearer {key}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(document.clone()))
                .unwrap(),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(missing_edge.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-edgewarden-edge"));
}

async fn a_usage_report_carries_the_configuration_hash_and_an_unknown_one_is_asked_for(
    backend: Backend,
) {
    let app = start(backend).await;
    let key = app.api_key(Role::Edge, None).await;
    let (document, hash) = reported(&plugin_config("edge-1", 60));
    let (_, other_hash) = reported(&plugin_config("edge-1", 5));

    // Accepted, with a hash the admin API lacks: the answer asks for the document.
    let first = usage_report(&app, &key, "edge-1", "edge-1", Some(&hash))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(hint(&first), Some("unknown"));
    assert_eq!(
        first.body["accepted_counts"], 1,
        "the handler's answer is kept"
    );
    // Without a hash, or refused by the handler, nothing is asked.
    let plain = usage_report(&app, &key, "edge-1", "edge-1", None)
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(hint(&plain), None);
    let refused = app
        .call(
            Request::post("/api/v1/usage")
                .header(header::AUTHORIZATION, format!("Bearer {key}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-edgewarden-edge", "edge-1")
                .header("x-edgewarden-config-hash", &hash)
                .body(Body::from("{\"edge\": 1}"))
                .unwrap(),
        )
        .await;
    assert!(refused.status.is_client_error(), "{:?}", refused.status);
    assert_eq!(hint(&refused), None);
    // A key bound to edge-2 may report edge-2's usage but not speak for edge-1's configuration.
    let bound = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "edge", "name": "bound edge", "edges": ["edge-2"]}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let elsewhere = usage_report(&app, &bound, "edge-1", "edge-2", Some(&hash))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(hint(&elsewhere), None);

    // Once stored, it is no longer asked for.
    upload(
        &app,
        &key,
        "edge-1",
        &document,
        Some(&hash),
        "application/json",
    )
    .await
    .expect(StatusCode::OK);
    let known = usage_report(&app, &key, "edge-1", "edge-1", Some(&hash))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(hint(&known), None);

    // An instance that polled with one configuration and reports usage with another takes the new one,
    // which is asked for; its poll stays the poll's.
    poll(
        &app,
        &key,
        "edge-1",
        Some("eeee000000000005"),
        Some(&hash),
        0,
        None,
    )
    .await
    .expect(StatusCode::OK);
    let before = edges(&app).await[0].instances[0].clone();
    assert_eq!(before.config_hash.as_deref(), Some(hash.as_str()));
    let changed = usage_report(&app, &key, "edge-1", "edge-1", Some(&other_hash))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(hint(&changed), Some("unknown"));
    let after = edges(&app).await[0].instances[0].clone();
    assert_eq!(after.instance, "eeee000000000005");
    assert_eq!(after.config_hash.as_deref(), Some(other_hash.as_str()));
    assert!(!after.config_known);
    assert_eq!(
        (after.last_poll, after.feed_cursor),
        (before.last_poll, before.feed_cursor)
    );
}
