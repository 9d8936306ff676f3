//! Usage reports, edges, anomalies and the token timeline, each run on SQLite and on PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{Backend, TestApp, TestDb};
use edgewarden_admin::auth::Role;
use edgewarden_admin::db::now;
use serde_json::{json, Value};

both_backends!(
    usage_batch_counts_first_use_and_edge_report_are_stored,
    bad_usage_batch_is_400_naming_the_field,
    oversized_usage_batch_is_413,
    only_edge_and_admin_keys_report_usage_and_edges_cannot_read_it,
    repeated_failures_from_one_address_raise_one_deduplicated_anomaly,
    repeated_failures_for_one_subject_raise_an_anomaly,
    revoked_token_use_and_a_revoked_token_still_allowed_raise_anomalies,
    expired_tokens_and_insufficient_scope_bursts_raise_client_anomalies,
    one_token_from_many_addresses_raises_a_high_anomaly,
    tokens_issued_in_the_future_and_edges_ahead_raise_clock_skew,
    anomalies_are_triaged_by_admins_and_a_resolved_one_reopens_as_new,
    edges_show_polls_from_memory_and_reports_from_the_database,
    last_use_is_recorded_once_after_the_token_expires,
    usage_timeseries_buckets_by_minute_and_hour_with_filters,
    detecting_a_group_of_batches_equals_detecting_each_in_turn,
    a_coalescing_detector_writes_the_same_anomalies_once_it_writes_what_it_held,
    two_replicas_raising_the_same_findings_at_once_open_each_anomaly_once,
    migration_0013_resolves_duplicate_live_anomalies_keeping_the_oldest,
);

/// An app whose detectors fire on small numbers, so tests stay short.
async fn sensitive(backend: Backend) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.anomalies.address_failures = 3;
    config.anomalies.subject_failures = 4;
    config.anomalies.expired_uses = 5;
    config.anomalies.insufficient_scope = 5;
    config.anomalies.token_addresses = 3;
    config.usage.max_counts = 50;
    config.usage.max_failures = 20;
    TestApp::with_config(config, db).await
}

/// A batch from `edge`; each call's body is distinct (`dropped` numbers it), as successive reports of a
/// real edge are: the service counts a resent identical body once.
fn batch(edge: &str, counts: Value, failures: Value) -> Value {
    static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = now();
    json!({"edge": edge, "interval_start": now - 10, "interval_end": now, "dropped": n, "counts": counts, "failures": failures})
}

async fn anomalies(app: &TestApp, query: &str) -> Vec<Value> {
    let page = app
        .get(&format!("/api/v1/anomalies?{query}"), Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    page["items"].as_array().unwrap().clone()
}

async fn usage_batch_counts_first_use_and_edge_report_are_stored(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let jti = app.issue("alice", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let edge = app.api_key(Role::Edge, None).await;
    let counts = json!([
        {"jti": jti, "subject": "alice", "client_id": "billing", "route": "/orders", "reason": "allowed", "count": 7, "addresses": ["10.0.0.1"]},
        {"jti": jti, "subject": "alice", "client_id": "billing", "route": "/orders", "reason": "allowed", "count": 3},
        {"route": "/orders", "reason": "missing_token", "count": 2},
    ]);
    let failures = json!([{"reason": "missing_token", "client_address": "10.0.0.9", "at": now() - 5, "route": "/orders"}]);
    let answer = app
        .post(
            "/api/v1/usage",
            Some(&edge),
            batch("edge-a", counts, failures),
        )
        .await
        .expect(StatusCode::ACCEPTED)
        .body;
    assert_eq!(answer["accepted_counts"], 3);
    assert_eq!(answer["accepted_failures"], 1);

    let series = app
        .get(
            "/api/v1/usage/timeseries?bucket=minute",
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let total: i64 = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["total"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 12, "{series}");
    let allowed: i64 = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["by_reason"]["allowed"].as_i64())
        .sum();
    assert_eq!(allowed, 10);

    let timeline = app
        .get(
            &format!("/api/v1/tokens/{jti}/timeline"),
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(timeline["token"]["use_count"], 10);
    assert!(timeline["token"]["first_used_at"].is_i64());
    let kinds: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["token.issued", "token.first_use"], "oldest first");
    assert_eq!(timeline["usage"][0]["count"], 10);
    assert_eq!(timeline["usage"][0]["edge"], "edge-a");

    // A second report does not record a second first use.
    let again = json!([{"jti": jti, "route": "/orders", "reason": "allowed", "count": 1}]);
    app.post(
        "/api/v1/usage",
        Some(&edge),
        batch("edge-a", again, json!([])),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let events = app
        .get(
            &format!("/api/v1/events?jti={jti}&kind=token.first_use"),
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(events["total"], 1);

    let edges = app
        .get("/api/v1/edges", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(edges["total"], 1);
    let e = &edges["items"][0];
    assert_eq!(e["name"], "edge-a");
    assert_eq!(e["reports"], 2);
    assert_eq!(e["usage_events"], 13);
    assert!(e["last_report"].as_i64().unwrap() >= now() - 5);

    let samples = app
        .get(
            "/api/v1/usage/failures?client_address=10.0.0.9",
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(samples["total"], 1);
    assert_eq!(samples["items"][0]["reason"], "missing_token");
    app.get("/api/v1/tokens/nope/timeline", Some(&app.admin_key))
        .await
        .expect(StatusCode::NOT_FOUND);
}

async fn bad_usage_batch_is_400_naming_the_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let cases = [
        (
            batch(
                "e",
                json!([{"route": "/a", "reason": "allowed", "count": 1}, {"route": "/a", "reason": "nonsense", "count": 1}]),
                json!([]),
            ),
            "counts[1].reason",
        ),
        (
            batch(
                "e",
                json!([{"route": "/a", "reason": "allowed", "count": 0}]),
                json!([]),
            ),
            "counts[0].count",
        ),
        (
            batch(
                "e",
                json!([{"route": "", "reason": "allowed", "count": 1}]),
                json!([]),
            ),
            "counts[0].route",
        ),
        (
            batch(
                "e",
                json!([]),
                json!([{"reason": "expired", "client_address": "", "at": 5}]),
            ),
            "failures[0].client_address",
        ),
        (batch("", json!([]), json!([])), "edge"),
        (
            json!({"edge": "e", "interval_start": 100, "interval_end": 50}),
            "interval_end",
        ),
        (json!({"interval_start": 100, "interval_end": 150}), "edge"),
        (
            batch(
                "e",
                json!([{"route": "/a", "reason": "allowed", "count": 1, "colour": "red"}]),
                json!([]),
            ),
            "counts[0]",
        ),
    ];
    for (body, field) in &cases {
        let answer = app
            .post("/api/v1/usage", Some(&edge), body.clone())
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert_eq!(answer.code(), "invalid_request");
        let named = answer.body["error"]["field"].as_str().unwrap_or("");
        assert!(
            named.starts_with(field),
            "expected field {field}, got {} for {body}",
            answer.body
        );
    }
}

async fn oversized_usage_batch_is_413(backend: Backend) {
    let app = sensitive(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let many: Vec<Value> = (0..51)
        .map(|i| json!({"route": format!("/r{i}"), "reason": "allowed", "count": 1}))
        .collect();
    let answer = app
        .post(
            "/api/v1/usage",
            Some(&edge),
            batch("e", json!(many), json!([])),
        )
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.code(), "payload_too_large");
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("counts: 51 entries, maximum 50"));
    let huge = format!("{{\"edge\": \"e\", \"interval_start\": 1, \"interval_end\": 1, \"counts\": [], \"pad\": \"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let request = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/usage")
        .header(header::AUTHORIZATION, format!("Bearer {edge}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(huge))
        .unwrap();
    app.call(request)
        .await
        .expect(StatusCode::PAYLOAD_TOO_LARGE);
}

async fn only_edge_and_admin_keys_report_usage_and_edges_cannot_read_it(backend: Backend) {
    let app = TestApp::start(backend).await;
    let body = batch(
        "e",
        json!([{"route": "/a", "reason": "allowed", "count": 1}]),
        json!([]),
    );
    for (role, status) in [
        (Role::Edge, StatusCode::ACCEPTED),
        (Role::Auditor, StatusCode::FORBIDDEN),
        (Role::Admin, StatusCode::ACCEPTED),
    ] {
        let key = app.api_key(role, None).await;
        app.post("/api/v1/usage", Some(&key), body.clone())
            .await
            .expect(status);
    }
    app.client("billing", &["read"], &[]).await;
    let service = app.api_key(Role::Service, Some("billing")).await;
    app.post("/api/v1/usage", Some(&service), body.clone())
        .await
        .expect(StatusCode::FORBIDDEN);
    app.post("/api/v1/usage", None, body)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let edge = app.api_key(Role::Edge, None).await;
    for uri in [
        "/api/v1/usage/timeseries",
        "/api/v1/usage/failures",
        "/api/v1/edges",
        "/api/v1/anomalies",
        "/api/v1/events",
    ] {
        app.get(uri, Some(&edge))
            .await
            .expect(StatusCode::FORBIDDEN);
    }
    let auditor = app.api_key(Role::Auditor, None).await;
    app.get("/api/v1/usage/timeseries", Some(&auditor))
        .await
        .expect(StatusCode::OK);
}

async fn repeated_failures_from_one_address_raise_one_deduplicated_anomaly(backend: Backend) {
    let app = sensitive(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let at = now() - 3;
    let failure =
        |reason: &str| json!({"reason": reason, "client_address": "203.0.113.5", "at": at});
    let two = json!([failure("bad_signature"), failure("malformed")]);
    app.post(
        "/api/v1/usage",
        Some(&edge),
        batch("e", json!([]), two.clone()),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    assert!(
        anomalies(&app, "kind=address_failures").await.is_empty(),
        "2 failures stay under the threshold of 3"
    );
    app.post(
        "/api/v1/usage",
        Some(&edge),
        batch("e", json!([]), two.clone()),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    app.post("/api/v1/usage", Some(&edge), batch("e", json!([]), two))
        .await
        .expect(StatusCode::ACCEPTED);
    let found = anomalies(&app, "kind=address_failures").await;
    assert_eq!(found.len(), 1, "deduplicated: {found:?}");
    let a = &found[0];
    assert_eq!(a["subject_kind"], "address");
    assert_eq!(a["subject"], "203.0.113.5");
    assert_eq!(a["severity"], "medium");
    assert_eq!(a["state"], "open");
    assert_eq!(a["occurrences"], 2);
    assert_eq!(a["evidence"]["failures"], 6);
    let opened = app
        .get("/api/v1/events?kind=anomaly.opened", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(opened["total"], 1);
}

async fn repeated_failures_for_one_subject_raise_an_anomaly(backend: Backend) {
    let app = sensitive(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let counts = json!([
        {"subject": "mallory", "route": "/a", "reason": "bad_signature", "count": 2},
        {"subject": "mallory", "route": "/b", "reason": "wrong_audience", "count": 2},
        {"subject": "mallory", "route": "/b", "reason": "allowed", "count": 50},
        {"subject": "carol", "route": "/b", "reason": "expired", "count": 1},
    ]);
    app.post("/api/v1/usage", Some(&edge), batch("e", counts, json!([])))
        .await
        .expect(StatusCode::ACCEPTED);
    let found = anomalies(&app, "kind=subject_failures").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["subject"], "mallory");
    assert_eq!(
        found[0]["evidence"]["failures"], 4,
        "allowed requests are not failures"
    );
}

async fn revoked_token_use_and_a_revoked_token_still_allowed_raise_anomalies(backend: Backend) {
    let app = sensitive(backend).await;
    app.client("billing", &["read"], &[]).await;
    let jti = app.issue("alice", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": jti, "reason": "stolen"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let edge = app.api_key(Role::Edge, None).await;
    let refused = json!([{"jti": jti, "subject": "alice", "client_id": "billing", "route": "/a", "reason": "revoked", "count": 1}]);
    app.post("/api/v1/usage", Some(&edge), batch("e", refused, json!([])))
        .await
        .expect(StatusCode::ACCEPTED);
    let found = anomalies(&app, "kind=revoked_token_use").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["subject_kind"], "token");
    assert_eq!(found[0]["subject"], jti.as_str());
    assert!(anomalies(&app, "kind=revoked_token_allowed")
        .await
        .is_empty());

    // An edge that still allows the token a minute after the revocation is not getting the feed.
    let t = now();
    let late = json!({"edge": "stale-edge", "interval_start": t + 50, "interval_end": t + 59,
                      "counts": [{"jti": jti, "route": "/a", "reason": "allowed", "count": 3}]});
    app.post("/api/v1/usage", Some(&edge), late)
        .await
        .expect(StatusCode::ACCEPTED);
    let found = anomalies(&app, "kind=revoked_token_allowed&severity=high").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["evidence"]["edge"], "stale-edge");
    assert_eq!(found[0]["evidence"]["subject"], "alice");
}

async fn expired_tokens_and_insufficient_scope_bursts_raise_client_anomalies(backend: Backend) {
    let app = sensitive(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let counts = json!([
        {"jti": "j1", "subject": "svc", "client_id": "lazy-client", "route": "/a", "reason": "expired", "count": 4},
        {"jti": "j2", "subject": "svc", "client_id": "greedy-client", "route": "/admin", "reason": "insufficient_scope", "count": 4},
    ]);
    app.post(
        "/api/v1/usage",
        Some(&edge),
        batch("e", counts.clone(), json!([])),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    assert!(
        anomalies(&app, "subject_kind=client").await.is_empty(),
        "4 < 5"
    );
    app.post("/api/v1/usage", Some(&edge), batch("e", counts, json!([])))
        .await
        .expect(StatusCode::ACCEPTED);
    let expired = anomalies(&app, "kind=expired_token_use").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["subject"], "lazy-client");
    assert_eq!(expired[0]["evidence"]["expired_uses"], 8);
    let scope = anomalies(&app, "kind=insufficient_scope_burst").await;
    assert_eq!(scope.len(), 1);
    assert_eq!(scope[0]["subject"], "greedy-client");
}

async fn one_token_from_many_addresses_raises_a_high_anomaly(backend: Backend) {
    let app = sensitive(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let counts = json!([{"jti": "shared", "route": "/a", "reason": "allowed", "count": 2, "addresses": ["10.0.0.1", "10.0.0.2"]}]);
    app.post("/api/v1/usage", Some(&edge), batch("e", counts, json!([])))
        .await
        .expect(StatusCode::ACCEPTED);
    assert!(anomalies(&app, "kind=token_many_addresses")
        .await
        .is_empty());
    let counts = json!([{"jti": "shared", "route": "/a", "reason": "allowed", "count": 1, "addresses": ["10.0.0.2", "192.0.2.7"]}]);
    app.post("/api/v1/usage", Some(&edge), batch("e2", counts, json!([])))
        .await
        .expect(StatusCode::ACCEPTED);
    let found = anomalies(&app, "kind=token_many_addresses").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["severity"], "high");
    assert_eq!(found[0]["evidence"]["addresses"], 3);
    assert_eq!(
        found[0]["evidence"]["sample"],
        json!(["10.0.0.1", "10.0.0.2", "192.0.2.7"])
    );
}

async fn tokens_issued_in_the_future_and_edges_ahead_raise_clock_skew(backend: Backend) {
    let app = sensitive(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let at = now();
    let failures = json!([
        {"client_id": "skewed-client", "reason": "issued_in_future", "client_address": "10.1.1.1", "at": at, "iat": at + 600},
        {"client_id": "fine-client", "reason": "expired", "client_address": "10.1.1.2", "at": at, "iat": at - 600},
    ]);
    app.post(
        "/api/v1/usage",
        Some(&edge),
        batch("e", json!([]), failures),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let found = anomalies(&app, "kind=clock_skew").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["subject_kind"], "client");
    assert_eq!(found[0]["subject"], "skewed-client");
    assert_eq!(found[0]["evidence"]["seconds_ahead"], 600);
    let ahead = json!({"edge": "fast-clock", "interval_start": at + 600, "interval_end": at + 610});
    app.post("/api/v1/usage", Some(&edge), ahead)
        .await
        .expect(StatusCode::ACCEPTED);
    let found = anomalies(&app, "kind=clock_skew&subject_kind=edge").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["subject"], "fast-clock");
    // Far ahead is refused outright: such rows would never age out of the store.
    let far = json!({"edge": "fast-clock", "interval_start": at + 7200, "interval_end": at + 7210});
    let refused = app.post("/api/v1/usage", Some(&edge), far).await;
    refused.expect(StatusCode::BAD_REQUEST);
    let far_failure = batch(
        "e",
        json!([]),
        json!([{"reason": "expired", "client_address": "10.1.1.3", "at": at + 86_400}]),
    );
    app.post("/api/v1/usage", Some(&edge), far_failure)
        .await
        .expect(StatusCode::BAD_REQUEST);
}

async fn anomalies_are_triaged_by_admins_and_a_resolved_one_reopens_as_new(backend: Backend) {
    let app = sensitive(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let counts = json!([{"jti": "gone", "route": "/a", "reason": "revoked", "count": 1}]);
    app.post(
        "/api/v1/usage",
        Some(&edge),
        batch("e", counts.clone(), json!([])),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let id = anomalies(&app, "kind=revoked_token_use").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/api/v1/anomalies/{id}");
    let auditor = app.api_key(Role::Auditor, None).await;
    app.get(&uri, Some(&auditor)).await.expect(StatusCode::OK);
    app.json(
        Method::PATCH,
        &uri,
        Some(&auditor),
        Some(json!({"state": "resolved"})),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    let bad = app
        .json(
            Method::PATCH,
            &uri,
            Some(&app.admin_key),
            Some(json!({"state": "gone"})),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "state");
    app.json(
        Method::PATCH,
        "/api/v1/anomalies/anm_nope",
        Some(&app.admin_key),
        Some(json!({"state": "resolved"})),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    let acked = app
        .json(
            Method::PATCH,
            &uri,
            Some(&app.admin_key),
            Some(json!({"state": "acknowledged"})),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(acked["state"], "acknowledged");
    // Acknowledged anomalies keep collecting evidence instead of opening a duplicate.
    app.post(
        "/api/v1/usage",
        Some(&edge),
        batch("e", counts.clone(), json!([])),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    assert_eq!(anomalies(&app, "kind=revoked_token_use").await.len(), 1);
    assert_eq!(
        app.get(&uri, Some(&app.admin_key)).await.body["occurrences"],
        2
    );
    app.json(
        Method::PATCH,
        &uri,
        Some(&app.admin_key),
        Some(json!({"state": "resolved"})),
    )
    .await
    .expect(StatusCode::OK);
    app.post("/api/v1/usage", Some(&edge), batch("e", counts, json!([])))
        .await
        .expect(StatusCode::ACCEPTED);
    let open = anomalies(&app, "kind=revoked_token_use&state=open").await;
    assert_eq!(open.len(), 1);
    assert_ne!(
        open[0]["id"],
        id.as_str(),
        "a resolved anomaly is not reopened silently"
    );
    assert_eq!(anomalies(&app, "state=resolved").await.len(), 1);
    // The resolved one cannot be reopened beside the new one: findings would have two places to go.
    let refused = app
        .json(
            Method::PATCH,
            &uri,
            Some(&app.admin_key),
            Some(json!({"state": "open"})),
        )
        .await
        .expect(StatusCode::CONFLICT);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("revoked_token_use")
            && message.contains(open[0]["id"].as_str().unwrap())
            && message.contains("triage it instead"),
        "{message}"
    );
    assert_eq!(anomalies(&app, "state=resolved").await.len(), 1);
    let page = app
        .get("/api/v1/anomalies?limit=1&offset=1", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    app.get("/api/v1/anomalies?severity=extreme", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
    let triage = app
        .get("/api/v1/events?kind=anomaly.updated", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(triage["total"], 2);
    assert_eq!(triage["items"][0]["details"]["to"], "resolved");
}

async fn edges_show_polls_from_memory_and_reports_from_the_database(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let edge = app.api_key(Role::Edge, None).await;
    let request = Request::builder()
        .uri("/api/v1/revocations/feed?since=0")
        .header(header::AUTHORIZATION, format!("Bearer {edge}"))
        .header("x-edgewarden-edge", "poller-1")
        .body(Body::empty())
        .unwrap();
    app.call(request).await.expect(StatusCode::OK);
    let jti = app.issue("alice", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": jti, "reason": "test"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let listed = app
        .get("/api/v1/edges", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    let e = &listed["items"][0];
    assert_eq!(e["name"], "poller-1");
    assert_eq!(e["feed_cursor"], 0);
    assert_eq!(e["cursor_lag"], 1, "one revocation since its poll");
    assert!(e["staleness_seconds"].as_i64().unwrap() <= 2);
    assert!(e["last_report"].is_null());
    // A report persists the poll too, so another replica (a fresh state on the same database) sees it.
    app.post(
        "/api/v1/usage",
        Some(&edge),
        batch("poller-1", json!([]), json!([])),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let rows: Vec<(String, Option<i64>, Option<i64>)> = {
        use sqlx::Row as _;
        sqlx::query("SELECT name, last_poll, last_report FROM edges")
            .fetch_all(&app.state.db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("name"), r.get("last_poll"), r.get("last_report")))
            .collect()
    };
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "poller-1");
    assert!(rows[0].1.is_some() && rows[0].2.is_some(), "{rows:?}");
    let stale = app
        .get("/api/v1/edges?stale_after=3600", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(stale["total"], 0);
}

async fn last_use_is_recorded_once_after_the_token_expires(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let jti = app.issue("alice", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let unused = app.issue("bob", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let edge = app.api_key(Role::Edge, None).await;
    let counts = json!([{"jti": jti, "route": "/a", "reason": "allowed", "count": 2}]);
    app.post("/api/v1/usage", Some(&edge), batch("e", counts, json!([])))
        .await
        .expect(StatusCode::ACCEPTED);
    let db = &app.state.db;
    // While the token lives, its last use is not final.
    assert_eq!(
        edgewarden_admin::usage::record_last_uses(db, &app.state.events, 120)
            .await
            .unwrap(),
        0
    );
    // A negative grace puts the cut-off in the future, as if the token had expired long ago.
    assert_eq!(
        edgewarden_admin::usage::record_last_uses(db, &app.state.events, -100_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        edgewarden_admin::usage::record_last_uses(db, &app.state.events, -100_000)
            .await
            .unwrap(),
        0,
        "once only"
    );
    let events = app
        .get("/api/v1/events?kind=token.last_use", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(events["total"], 1);
    assert_eq!(events["items"][0]["jti"], jti.as_str());
    assert_eq!(events["items"][0]["details"]["uses"], 2);
    let none = app
        .get(
            &format!("/api/v1/events?kind=token.last_use&jti={unused}"),
            Some(&app.admin_key),
        )
        .await
        .body;
    assert_eq!(none["total"], 0, "an unused token has no last use");
}

async fn usage_timeseries_buckets_by_minute_and_hour_with_filters(backend: Backend) {
    let app = TestApp::start(backend).await;
    let edge = app.api_key(Role::Edge, None).await;
    let hour = now() - now().rem_euclid(3600) - 3600;
    for (offset, subject, count) in [
        (0, "alice", 1),
        (60, "alice", 2),
        (120, "bob", 4),
        (3600, "alice", 8),
    ] {
        let start = hour + offset;
        let body = json!({"edge": "e", "interval_start": start, "interval_end": start + 10,
                          "counts": [{"subject": subject, "client_id": "billing", "route": "/a", "reason": "allowed", "count": count}]});
        app.post("/api/v1/usage", Some(&edge), body)
            .await
            .expect(StatusCode::ACCEPTED);
    }
    let key = Some(app.admin_key.as_str());
    let minutes = app
        .get(
            &format!(
                "/api/v1/usage/timeseries?bucket=minute&since={hour}&until={}",
                hour + 3600
            ),
            key,
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let points: Vec<(i64, i64)> = minutes["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["t"].as_i64().unwrap(), p["total"].as_i64().unwrap()))
        .collect();
    assert_eq!(points, [(hour, 1), (hour + 60, 2), (hour + 120, 4)]);
    let hours = app
        .get(
            &format!(
                "/api/v1/usage/timeseries?bucket=hour&since={hour}&until={}&subject=alice",
                hour + 7200
            ),
            key,
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let points: Vec<(i64, i64)> = hours["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["t"].as_i64().unwrap(), p["total"].as_i64().unwrap()))
        .collect();
    assert_eq!(points, [(hour, 3), (hour + 3600, 8)]);
    let bad = app
        .get("/api/v1/usage/timeseries?bucket=week", key)
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "bucket");
    let bad = app
        .get(
            "/api/v1/usage/timeseries?bucket=minute&since=0&until=100000000",
            key,
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "since");
}

/// The anomalies and `anomaly.opened` events in the store, without ids and times: what detection decided.
async fn detected(app: &TestApp) -> (Vec<(String, String, String, i64, String, String)>, i64) {
    let rows: Vec<(String, String, String, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT kind, subject_kind, subject, occurrences, evidence, edge FROM anomalies ORDER BY kind, subject_kind, subject",
    )
    .fetch_all(&app.state.db.pool)
    .await
    .unwrap();
    let events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'anomaly.opened'")
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap();
    let rows = rows
        .into_iter()
        .map(|(k, sk, s, n, e, edge)| (k, sk, s, n, e, edge.unwrap_or_default()))
        .collect();
    (rows, events)
}

/// Posts `bodies` (so the window sums the detectors read hold their rows) and returns what the detectors
/// see of each.
async fn store_and_prepare(
    app: &TestApp,
    bodies: &[Value],
) -> Vec<edgewarden_admin::usage::Ingested> {
    for body in bodies {
        app.post("/api/v1/usage", Some(&app.admin_key), body.clone())
            .await
            .expect(StatusCode::ACCEPTED);
    }
    bodies
        .iter()
        .map(|b| edgewarden_admin::usage::ingested(serde_json::from_value(b.clone()).unwrap()))
        .collect()
}

async fn forget_anomalies(app: &TestApp) {
    for sql in [
        "DELETE FROM anomalies",
        "DELETE FROM events WHERE kind = 'anomaly.opened'",
    ] {
        sqlx::query(sql).execute(&app.state.db.pool).await.unwrap();
    }
}

async fn detecting_a_group_of_batches_equals_detecting_each_in_turn(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.anomalies.address_failures = 3;
    config.anomalies.subject_failures = 4;
    config.anomalies.token_addresses = 3;
    // A small cap, so which batch's edge opens a finding and which are suppressed matters.
    config.anomalies.edge_cap = 6;
    let app = TestApp::with_config(config, db).await;
    // Six batches from three edges, interleaved, whose findings overlap: revoked tokens seen by several
    // batches and edges, failing addresses and subjects, tokens from many addresses, a skewed client.
    let edges = ["edge-a", "edge-b", "edge-a", "edge-c", "edge-b", "edge-a"];
    let bodies: Vec<Value> = edges
        .iter()
        .enumerate()
        .map(|(b, edge)| {
            let counts: Vec<Value> = (b * 2..b * 2 + 7)
                .map(|k| json!({"jti": format!("stolen-{k:02}"), "subject": format!("user-{}", k % 4), "route": "/api/orders",
                                "reason": "revoked", "count": 2, "addresses": [format!("10.1.{b}.{}", k % 3)]}))
                .collect();
            let failures: Vec<Value> = (0..8)
                .map(|i| json!({"reason": "bad_signature", "client_address": format!("192.0.2.{}", (b + i) % 5), "at": now() - 5,
                                "client_id": if i == 0 { Value::from(format!("skewed-{}", b % 2)) } else { Value::Null },
                                "iat": if i == 0 { Value::from(now() + 600) } else { Value::Null }}))
                .collect();
            batch(edge, Value::from(counts), Value::from(failures))
        })
        .collect();
    let batches = store_and_prepare(&app, &bodies).await;
    let detector = edgewarden_admin::anomalies::Detector::new(
        app.state.db.clone(),
        app.state.events.clone(),
        app.state.config.anomalies.clone(),
    );
    // The same stored data, detected one batch at a time, then as one group.
    forget_anomalies(&app).await;
    for b in &batches {
        detector.detect(b).await.unwrap();
    }
    let one_by_one = detected(&app).await;
    forget_anomalies(&app).await;
    detector
        .detect_group(&batches.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let grouped = detected(&app).await;
    let kinds: std::collections::BTreeSet<&str> =
        one_by_one.0.iter().map(|a| a.0.as_str()).collect();
    for kind in [
        "revoked_token_use",
        "address_failures",
        "clock_skew",
        "anomalies_suppressed",
    ] {
        assert!(kinds.contains(kind), "{kind} opened: {:?}", one_by_one.0);
    }
    // The cap kept the rest out: counted per kind on each edge.
    let suppressed: String = one_by_one
        .0
        .iter()
        .filter(|a| a.0 == "anomalies_suppressed")
        .map(|a| a.4.clone())
        .collect();
    for kind in ["subject_failures", "token_many_addresses"] {
        assert!(suppressed.contains(kind), "{kind} found: {suppressed}");
    }
    assert!(
        one_by_one.0.iter().any(|a| a.3 > 1),
        "some finding repeats across batches: {:?}",
        one_by_one.0
    );
    assert_eq!(grouped, one_by_one);
}

/// Issue 14: a coalescing detector (the usage pipeline's) holds back refreshes of anomalies it wrote less
/// than a second ago; what it holds is summed, and once written the store says what a detector writing
/// every refresh at once says. A held refresh whose anomaly was resolved meanwhile opens a new one.
async fn a_coalescing_detector_writes_the_same_anomalies_once_it_writes_what_it_held(
    backend: Backend,
) {
    let app = sensitive(backend).await;
    let at = now() - 5;
    // Each batch: the same failing address and revoked tokens, from two edges in turn.
    let bodies: Vec<Value> = (0..6)
        .map(|b| {
            let counts: Vec<Value> = (0..3)
                .map(|k| json!({"jti": format!("held-{k}"), "subject": "mallory", "route": "/api/orders",
                                "reason": "revoked", "count": 2, "addresses": [format!("10.9.{b}.{k}")]}))
                .collect();
            let failures: Vec<Value> = (0..3)
                .map(|i| json!({"reason": "bad_signature", "client_address": "198.51.100.7", "at": at - i}))
                .collect();
            batch(["edge-a", "edge-b"][b % 2], Value::from(counts), Value::from(failures))
        })
        .collect();
    let batches = store_and_prepare(&app, &bodies).await;
    let new = |coalescing: bool| {
        let d = edgewarden_admin::anomalies::Detector::new(
            app.state.db.clone(),
            app.state.events.clone(),
            app.state.config.anomalies.clone(),
        );
        if coalescing {
            d.coalescing()
        } else {
            d
        }
    };
    forget_anomalies(&app).await;
    let plain = new(false);
    for b in &batches {
        plain.detect(b).await.unwrap();
    }
    let at_once = detected(&app).await;
    assert!(
        at_once.0.iter().any(|a| a.3 >= 5),
        "findings repeat across the batches: {:?}",
        at_once.0
    );
    forget_anomalies(&app).await;
    let coalescing = new(true);
    for b in &batches {
        coalescing.detect(b).await.unwrap();
    }
    assert!(coalescing.holding(), "refreshes within a second are held");
    let holding = detected(&app).await;
    assert_eq!(holding.1, at_once.1, "new anomalies are never held back");
    assert_ne!(
        holding.0, at_once.0,
        "the held refreshes are not written yet"
    );
    coalescing.write_held().await.unwrap();
    assert!(!coalescing.holding());
    assert_eq!(detected(&app).await, at_once);

    // Held while an admin resolves the anomaly: written as a new one, charged to the last edge.
    for b in &batches[..2] {
        coalescing.detect(b).await.unwrap();
    }
    assert!(coalescing.holding());
    sqlx::query("UPDATE anomalies SET state = 'resolved' WHERE kind = 'address_failures'")
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    coalescing.write_held().await.unwrap();
    let reopened: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT state, occurrences, edge FROM anomalies WHERE kind = 'address_failures' ORDER BY created_at, state",
    )
    .fetch_all(&app.state.db.pool)
    .await
    .unwrap();
    assert_eq!(reopened.len(), 2, "{reopened:?}");
    assert!(
        reopened.contains(&("open".into(), 2, Some("edge-b".into()))),
        "{reopened:?}"
    );
}

/// With SQLite, a revocation waiting for the write lock goes before every bulk writer (usage ingestion,
/// detection) queued for it, even those that queued earlier: it waits for at most the one bulk
/// transaction in progress (issue 13). A plain first-come queue would put it behind both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_revocation_goes_before_queued_bulk_writers_at_the_sqlite_lock() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    let app = TestApp::start(Backend::Sqlite).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    // An ingestion transaction in progress.
    let in_progress = app.state.db.bulk_write_turn().await;
    assert!(in_progress.is_some(), "SQLite has a write turn");
    let mut waiters = Vec::new();
    for (what, urgent) in [
        ("detection", false),
        ("ingestion", false),
        ("revocation", true),
    ] {
        let (db, order) = (app.state.db.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let _turn = if urgent {
                db.write_turn().await
            } else {
                db.bulk_write_turn().await
            };
            order.lock().expect("order").push(what);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }));
        // Each queues before the next arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(in_progress);
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("every writer gets the lock")
            .expect("writer task");
    }
    let order = order.lock().expect("order").clone();
    assert_eq!(
        order.first(),
        Some(&"revocation"),
        "the revocation goes first: {order:?}"
    );
    assert_eq!(order.len(), 3, "{order:?}");
}

/// A bulk writer that writes in several statements (the anomaly detector's refreshes) hands its turn to
/// a revocation that starts waiting between two of them, so the revocation waits for one statement, not
/// the whole flush (issue 13: the detector held the turn 35-120 ms under a usage flood); with no one
/// waiting it keeps the turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_statement_bulk_writer_gives_way_to_a_waiting_revocation() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    let app = TestApp::start(Backend::Sqlite).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut turn = app.state.db.bulk_turn().await;
    // Nobody waits: giving way keeps the turn (a priority writer arriving now must still wait).
    turn.give_way().await;
    order.lock().expect("order").push("statement 1");
    let revocation = {
        let (db, order) = (app.state.db.clone(), order.clone());
        tokio::spawn(async move {
            let _turn = db.write_turn().await;
            order.lock().expect("order").push("revocation");
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        *order.lock().expect("order"),
        ["statement 1"],
        "the revocation waits while the bulk writer holds its turn"
    );
    // Between two statements: the waiting revocation goes, then the bulk writer continues.
    tokio::time::timeout(Duration::from_secs(10), turn.give_way())
        .await
        .expect("the bulk writer gets its turn back");
    order.lock().expect("order").push("statement 2");
    drop(turn);
    revocation.await.expect("revocation task");
    assert_eq!(
        *order.lock().expect("order"),
        ["statement 1", "revocation", "statement 2"]
    );
}

/// No SQLite commit checkpoints the WAL (a revocation committing during a usage flood paid for the
/// flood's pages): every connection has the automatic checkpoint off, and the replica's checkpointer
/// task folds the WAL into the database file within a couple of seconds of a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_folds_the_wal_instead_of_a_commit() {
    use std::time::{Duration, Instant};
    let app = TestApp::start(Backend::Sqlite).await;
    let pool = &app.state.db.pool;
    for _ in 0..3 {
        let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
            .fetch_one(pool)
            .await
            .expect("pragma");
        assert_eq!(
            pages, 0,
            "automatic checkpoints are off on every connection"
        );
    }
    // With WAL a commit appends to the WAL alone: the database file changes only when a checkpoint
    // copies pages into it.
    let file = app.db.dir.path().join("edgewarden.db");
    let counter = || std::fs::read(&file).expect("database file");
    let before = counter();
    sqlx::query("INSERT INTO usage_parts (batch, done, at) VALUES ('checkpoint-test', 1, 0)")
        .execute(pool)
        .await
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter() == before {
        assert!(
            Instant::now() < deadline,
            "the WAL was not checkpointed into the database file within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas (two detectors on one database) raising the same findings at the same moment: every kind
/// and subject has one live anomaly holding both replicas' occurrences, and one `anomaly.opened` event.
/// Before migration 0013 both could find none live and each open one.
async fn two_replicas_raising_the_same_findings_at_once_open_each_anomaly_once(backend: Backend) {
    let app = sensitive(backend).await;
    let at = now() - 5;
    let bodies: Vec<Value> = (0..4)
        .map(|b| {
            let counts: Vec<Value> = (0..6)
                .map(|k| json!({"jti": format!("raced-{k}"), "subject": format!("user-{k}"), "route": "/api/orders",
                                "reason": "revoked", "count": 2, "addresses": [format!("10.7.{b}.{k}")]}))
                .collect();
            let failures: Vec<Value> = (0..6)
                .map(|i| json!({"reason": "bad_signature", "client_address": format!("198.51.100.{}", i % 2), "at": at - i}))
                .collect();
            batch(["edge-a", "edge-b"][b % 2], Value::from(counts), Value::from(failures))
        })
        .collect();
    let batches = store_and_prepare(&app, &bodies).await;
    let group: Vec<&edgewarden_admin::usage::Ingested> = batches.iter().collect();
    let replica = || {
        edgewarden_admin::anomalies::Detector::new(
            app.state.db.clone(),
            app.state.events.clone(),
            app.state.config.anomalies.clone(),
        )
    };
    forget_anomalies(&app).await;
    replica().detect_group(&group).await.unwrap();
    let (alone, alone_events) = detected(&app).await;
    assert!(alone.len() >= 4, "findings to race on: {alone:?}");
    for round in 0..6 {
        forget_anomalies(&app).await;
        let (a, b) = (replica(), replica());
        let (ra, rb) = tokio::join!(a.detect_group(&group), b.detect_group(&group));
        ra.unwrap();
        rb.unwrap();
        let (raced, events) = detected(&app).await;
        let keys = |rows: &[(String, String, String, i64, String, String)]| -> Vec<(String, String, String)> {
            rows.iter().map(|r| (r.0.clone(), r.1.clone(), r.2.clone())).collect()
        };
        assert_eq!(
            keys(&raced),
            keys(&alone),
            "round {round}: one anomaly per kind and subject"
        );
        assert_eq!(
            events, alone_events,
            "round {round}: one anomaly.opened each"
        );
        for (r, one) in raced.iter().zip(&alone) {
            assert_eq!(
                r.3,
                2 * one.3,
                "round {round}: both replicas' occurrences on {r:?}"
            );
        }
    }
}

/// A store that two replicas gave two live anomalies of one kind and subject before migration 0013: the
/// migration resolves all but the oldest live one, leaves other rows alone, and from then on the database
/// refuses a second live one.
async fn migration_0013_resolves_duplicate_live_anomalies_keeping_the_oldest(backend: Backend) {
    let migration = match backend {
        Backend::Sqlite => include_str!("../migrations/sqlite/0013_one_live_anomaly.sql"),
        Backend::Postgres => include_str!("../migrations/postgres/0013_one_live_anomaly.sql"),
    };
    let app = TestApp::start(backend).await;
    let pool = &app.state.db.pool;
    // The store as it was before the migration: no unique index.
    sqlx::query("DROP INDEX anomalies_live")
        .execute(pool)
        .await
        .unwrap();
    let rows = [
        ("anm_b", "open", 100, "10.0.0.1"),
        ("anm_a", "acknowledged", 100, "10.0.0.1"),
        ("anm_c", "open", 50, "10.0.0.1"),
        ("anm_d", "open", 200, "10.0.0.1"),
        ("anm_e", "resolved", 10, "10.0.0.1"),
        ("anm_f", "open", 300, "10.0.0.2"),
    ];
    for (id, state, at, subject) in rows {
        sqlx::query(
            "INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at) \
             VALUES ($1, 'address_failures', 'medium', 'address', $2, '{}', $3, $4, $4)",
        )
        .bind(id)
        .bind(subject)
        .bind(state)
        .bind(at as i64)
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(migration))
        .execute(pool)
        .await
        .unwrap();
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT id, state FROM anomalies ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let states: Vec<(&str, &str)> = states
        .iter()
        .map(|(id, state)| (id.as_str(), state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("anm_a", "resolved"),
            ("anm_b", "resolved"),
            ("anm_c", "open"),
            ("anm_d", "resolved"),
            ("anm_e", "resolved"),
            ("anm_f", "open"),
        ],
        "the oldest live one of 10.0.0.1 (anm_c) stays, and 10.0.0.2's own"
    );
    let second = sqlx::query(
        "INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at) \
         VALUES ('anm_g', 'address_failures', 'medium', 'address', '10.0.0.2', '{}', 'acknowledged', 400, 400)",
    )
    .execute(pool)
    .await
    .expect_err("a second live anomaly of one kind and subject");
    assert!(
        edgewarden_admin::auth::is_unique_violation(&second),
        "{second}"
    );
}
