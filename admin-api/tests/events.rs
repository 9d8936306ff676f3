//! The event log, its live stream, webhooks, metrics and the OpenAPI document, each run on SQLite and
//! on PostgreSQL.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use common::{basic, Backend, TestApp, TestDb};
use edgewarden_admin::auth::Role;
use edgewarden_admin::openapi::OPERATIONS;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

both_backends!(
    lifecycle_and_admin_actions_are_in_the_event_log,
    event_log_filters_paginate_and_refuse_unknown_kinds,
    event_stream_sends_new_events_as_server_sent_events,
    webhook_deliveries_are_signed_and_retried_until_accepted,
    webhook_secret_is_shown_once_and_input_is_checked,
    metrics_count_requests_feed_polls_tokens_and_usage,
    openapi_document_is_public_and_every_operation_is_routed,
    new_routes_enforce_their_roles,
);

async fn events(app: &TestApp, query: &str) -> Value {
    app.get(&format!("/api/v1/events?{query}"), Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body
}

fn kinds(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

async fn lifecycle_and_admin_actions_are_in_the_event_log(backend: Backend) {
    let app = TestApp::start(backend).await;
    let secret = app.client("billing", &["read"], &[]).await;
    let issued = app.issue("alice", "billing", &["read"], true).await;
    let jti = issued["jti"].as_str().unwrap();
    let refreshed = app
        .form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", issued["refresh_token"].as_str().unwrap()),
            ],
        )
        .await
        .expect(StatusCode::OK)
        .body;
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": jti, "reason": "rotated laptop"}),
    )
    .await
    .expect(StatusCode::CREATED);
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"subject": "alice", "reason": "left"}),
    )
    .await
    .expect(StatusCode::CREATED);
    app.post(
        "/api/v1/api-keys",
        Some(&app.admin_key),
        json!({"role": "auditor", "name": "ops"}),
    )
    .await
    .expect(StatusCode::CREATED);

    let all = events(&app, "").await;
    let mut seen = kinds(&all);
    seen.reverse();
    assert_eq!(
        seen,
        [
            "client.created",
            "token.issued",
            "token.issued",
            "token.refreshed",
            "token.revoked",
            "revocation.created",
            "api_key.created"
        ],
        "oldest last in the answer, so reversed here"
    );
    let token = events(&app, &format!("jti={jti}")).await;
    assert_eq!(kinds(&token), ["token.revoked", "token.issued"]);
    let issued_event = &token["items"][1];
    assert_eq!(issued_event["subject"], "alice");
    assert_eq!(issued_event["client_id"], "billing");
    assert_eq!(issued_event["details"]["refresh"], true);
    assert!(issued_event["actor"]
        .as_str()
        .unwrap()
        .starts_with("api_key:"));
    let revoked = &token["items"][0];
    assert_eq!(revoked["details"]["reason"], "rotated laptop");
    // No token or refresh token ever lands in the log.
    let text = all.to_string();
    assert!(!text.contains(issued["access_token"].as_str().unwrap()));
    assert!(!text.contains(issued["refresh_token"].as_str().unwrap()));
    assert!(!text.contains(refreshed["refresh_token"].as_str().unwrap()));
    let refresh = events(&app, "kind=token.refreshed").await;
    assert_eq!(refresh["items"][0]["actor"], "client:billing");
}

async fn event_log_filters_paginate_and_refuse_unknown_kinds(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    app.client("shipping", &["read"], &[]).await;
    for subject in ["a", "b", "c"] {
        app.issue(subject, "billing", &["read"], false).await;
    }
    app.issue("a", "shipping", &["read"], false).await;
    assert_eq!(events(&app, "kind=token.issued").await["total"], 4);
    assert_eq!(events(&app, "kind=token.*").await["total"], 4);
    assert_eq!(events(&app, "kind=client.*").await["total"], 2);
    assert_eq!(events(&app, "subject=a").await["total"], 2);
    assert_eq!(
        events(&app, "subject=a&client_id=shipping").await["total"],
        1
    );
    let page = events(&app, "kind=token.issued&limit=3&offset=3").await;
    assert_eq!(page["total"], 4);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["items"][0]["subject"], "a",
        "the oldest issuance is last"
    );
    let now = edgewarden_admin::db::now();
    assert_eq!(
        events(&app, &format!("since={}", now + 10)).await["total"],
        0
    );
    assert_eq!(
        events(&app, &format!("until={}", now - 100)).await["total"],
        0
    );
    assert_eq!(
        events(&app, &format!("since={}&until={}", now - 100, now + 10)).await["total"],
        6
    );
    let bad = app
        .get("/api/v1/events?kind=token.exploded", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "kind");
    let bad = app
        .get("/api/v1/events?limit=0", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "limit");
    app.get("/api/v1/events?colour=red", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
}

/// Reads server-sent events from `body` until `count` `data:` lines arrived or the deadline passes.
async fn read_sse(body: &mut Body, count: usize, deadline: Duration) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    while out.len() < count {
        let frame = match tokio::time::timeout_at(end, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => break,
        };
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(pos) = buffer.find("\n\n") {
            let block: String = buffer.drain(..pos + 2).collect();
            let event = block
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(|s| s.trim().to_owned());
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|s| s.trim().to_owned());
            if let (Some(event), Some(data)) = (event, data) {
                out.push((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    out
}

async fn event_stream_sends_new_events_as_server_sent_events(backend: Backend) {
    let app = TestApp::start(backend).await;
    let auditor = app.api_key(Role::Auditor, None).await;
    let open = |kind: &str| {
        Request::builder()
            .uri(format!("/api/v1/events/stream{kind}"))
            .header(header::AUTHORIZATION, format!("Bearer {auditor}"))
            .body(Body::empty())
            .unwrap()
    };
    let response = app.router.clone().oneshot(open("")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut all = response.into_body();
    let mut tokens_only = app
        .router
        .clone()
        .oneshot(open("?kind=token.*"))
        .await
        .unwrap()
        .into_body();
    app.client("billing", &["read"], &[]).await;
    let jti = app.issue("alice", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = read_sse(&mut all, 2, Duration::from_secs(10)).await;
    let names: Vec<&str> = got.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["client.created", "token.issued"]);
    assert_eq!(got[1].1["jti"], jti.as_str());
    assert!(got[1].1["id"].as_str().unwrap().starts_with("evt_"));
    let got = read_sse(&mut tokens_only, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "token.issued");
    // Reconnecting with Last-Event-ID replays what was missed, then goes live.
    let first_id = events(&app, "kind=client.created").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = Request::builder()
        .uri("/api/v1/events/stream")
        .header(header::AUTHORIZATION, format!("Bearer {auditor}"))
        .header("last-event-id", &first_id)
        .body(Body::empty())
        .unwrap();
    let mut resumed = app
        .router
        .clone()
        .oneshot(request)
        .await
        .unwrap()
        .into_body();
    let replayed = read_sse(&mut resumed, 1, Duration::from_secs(5)).await;
    assert_eq!(
        replayed[0].0, "token.issued",
        "the event after the given id"
    );
    app.issue("bob", "billing", &["read"], false).await;
    let live = read_sse(&mut resumed, 1, Duration::from_secs(10)).await;
    assert_eq!(live[0].1["subject"], "bob");
    let bad = Request::builder()
        .uri("/api/v1/events/stream")
        .header(header::AUTHORIZATION, format!("Bearer {auditor}"))
        .header("last-event-id", "'; drop table events")
        .body(Body::empty())
        .unwrap();
    app.call(bad).await.expect(StatusCode::BAD_REQUEST);
    let edge = app.api_key(Role::Edge, None).await;
    app.get("/api/v1/events/stream", Some(&edge))
        .await
        .expect(StatusCode::FORBIDDEN);
    app.get("/api/v1/events/stream?kind=bogus", Some(&auditor))
        .await
        .expect(StatusCode::BAD_REQUEST);
}

/// A webhook receiver on a free port: answers 500 to the first `fail_first` requests, then 204.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
    let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let store = seen.clone();
    let handler = move |headers: HeaderMap, body: Bytes| {
        let store = store.clone();
        async move {
            let mut seen = store.lock().unwrap();
            seen.push((headers, body));
            if seen.len() <= fail_first {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::NO_CONTENT
            }
        }
    };
    let router = axum::Router::new().route("/hook", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, seen)
}

async fn webhook_deliveries_are_signed_and_retried_until_accepted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = db.config();
    config.webhooks.backoff_base_seconds = 1;
    config.webhooks.max_attempts = 3;
    let app = TestApp::with_config(config, db).await;
    let (url, seen) = receiver(1).await;
    let created = app
        .post(
            "/api/v1/webhooks",
            Some(&app.admin_key),
            json!({"url": url, "kinds": ["token.revoked"], "description": "siem"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    app.client("billing", &["read"], &[]).await;
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let deliveries = loop {
        let page = app
            .get(
                &format!("/api/v1/webhooks/{id}/deliveries"),
                Some(&app.admin_key),
            )
            .await
            .expect(StatusCode::OK)
            .body;
        if page["items"][0]["state"] == "delivered" || tokio::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        deliveries["total"], 1,
        "only token.revoked is subscribed: {deliveries}"
    );
    let d = &deliveries["items"][0];
    assert_eq!(d["state"], "delivered", "{deliveries}");
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["last_status"], 204);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one failure, one retry");
    for (headers, body) in &seen {
        let sig = headers["x-edgewarden-signature"].to_str().unwrap();
        let t: i64 = sig
            .strip_prefix("t=")
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            sig,
            edgewarden_admin::webhooks::signature(&secret, t, body),
            "signature over t.body with the secret"
        );
        assert_ne!(
            sig,
            edgewarden_admin::webhooks::signature("whsec_wrong", t, body)
        );
        assert_eq!(headers["x-edgewarden-event"], "token.revoked");
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["kind"], "token.revoked");
        assert_eq!(event["jti"], jti.as_str());
    }
    assert_eq!(seen[0].1, seen[1].1, "a retry sends the same event");
}

async fn webhook_secret_is_shown_once_and_input_is_checked(backend: Backend) {
    let app = TestApp::start(backend).await;
    let created = app
        .post(
            "/api/v1/webhooks",
            Some(&app.admin_key),
            json!({"url": "http://127.0.0.1:9/x", "kinds": ["*"]}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    let shown = app
        .get(&format!("/api/v1/webhooks/{id}"), Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(shown.get("secret").is_none());
    let listed = app
        .get("/api/v1/webhooks", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(!listed.to_string().contains(secret));
    // Stored encrypted, not in the clear.
    let blob: Vec<u8> = sqlx::query_scalar("SELECT secret_enc FROM webhooks")
        .fetch_one(&app.state.db.pool)
        .await
        .unwrap();
    assert!(!blob.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let bad = app
        .post(
            "/api/v1/webhooks",
            Some(&app.admin_key),
            json!({"url": "ftp://x", "kinds": ["*"]}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "url");
    let bad = app
        .post(
            "/api/v1/webhooks",
            Some(&app.admin_key),
            json!({"url": "http://x/", "kinds": ["token.issued", "token.nope"]}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "kinds[1]");
    let patched = app
        .json(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            Some(&app.admin_key),
            Some(json!({"active": false, "kinds": ["anomaly.opened"]})),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(patched["active"], false);
    assert_eq!(patched["kinds"], json!(["anomaly.opened"]));
    let auditor = app.api_key(Role::Auditor, None).await;
    app.get("/api/v1/webhooks", Some(&auditor))
        .await
        .expect(StatusCode::OK);
    app.json(
        Method::DELETE,
        &format!("/api/v1/webhooks/{id}"),
        Some(&auditor),
        None,
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    app.json(
        Method::DELETE,
        &format!("/api/v1/webhooks/{id}"),
        Some(&app.admin_key),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.json(
        Method::DELETE,
        &format!("/api/v1/webhooks/{id}"),
        Some(&app.admin_key),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    let audit = events(&app, "kind=webhook.*").await;
    assert_eq!(
        kinds(&audit),
        ["webhook.deleted", "webhook.updated", "webhook.created"]
    );
    assert!(!audit.to_string().contains(secret));
}

async fn metrics_count_requests_feed_polls_tokens_and_usage(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    app.issue("alice", "billing", &["read"], false).await;
    let edge = app.api_key(Role::Edge, None).await;
    let first = app
        .get("/api/v1/revocations/feed?since=0", Some(&edge))
        .await
        .expect(StatusCode::OK);
    let etag = first.headers[header::ETAG].to_str().unwrap().to_owned();
    let cursor = first.body["cursor"].as_i64().unwrap();
    for _ in 0..3 {
        let request = Request::builder()
            .uri(format!("/api/v1/revocations/feed?since={cursor}"))
            .header(header::AUTHORIZATION, format!("Bearer {edge}"))
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap();
        app.call(request).await.expect(StatusCode::NOT_MODIFIED);
    }
    let now = edgewarden_admin::db::now();
    let usage = json!({"edge": "e", "interval_start": now - 5, "interval_end": now, "counts": [{"route": "/a", "reason": "allowed", "count": 40}]});
    app.post("/api/v1/usage", Some(&edge), usage)
        .await
        .expect(StatusCode::ACCEPTED);
    app.get("/metrics", Some(&edge))
        .await
        .expect(StatusCode::FORBIDDEN);
    app.get("/metrics", None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let answer = app
        .get("/metrics", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK);
    assert!(answer.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = answer.body.as_str().unwrap().to_owned();
    let value = |line: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line) && l[line.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))[line.len()..]
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("edgewarden_feed_polls_total"), 4.0);
    assert_eq!(value("edgewarden_feed_not_modified_total"), 3.0);
    assert_eq!(value("edgewarden_tokens_issued_total"), 1.0);
    assert_eq!(value("edgewarden_usage_events_ingested_total"), 40.0);
    assert_eq!(value("edgewarden_usage_batches_total"), 1.0);
    assert_eq!(value("edgewarden_http_requests_total{method=\"POST\",route=\"/api/v1/clients\",status=\"201\"}"), 1.0);
    assert_eq!(
        value("edgewarden_anomalies_open{kind=\"refresh_token_reuse\"}"),
        0.0
    );
    // Every sample line is `name{labels} value` or `name value`, after its HELP and TYPE.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        v.parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample line {line:?}"));
    }
}

/// `(method, path)` of every route registered with `.route("...", get(..).post(..))` in the sources.
fn routes_in_source() -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Every source file, in `src/` and its module directories.
    let mut files = Vec::new();
    let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for piece in text.split(".route(").skip(1) {
            // rustfmt may put the path on the next line.
            let Some(piece) = piece.trim_start().strip_prefix('"') else {
                continue;
            };
            let (path, rest) = piece.split_once('"').unwrap();
            // The handler chain runs to the closing parenthesis of `.route(`.
            let mut depth = 1;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let chain = &rest[..end];
            for method in ["get", "post", "patch", "put", "delete"] {
                let called = chain.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0 || !chain[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if called {
                    out.push((method.to_owned(), path.to_owned()));
                }
            }
        }
    }
    out.sort();
    out
}

async fn openapi_document_is_public_and_every_operation_is_routed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let doc = app
        .get("/api/v1/openapi.json", None)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let routed = routes_in_source();
    let missing: Vec<_> = routed.iter().filter(|r| !documented.contains(r)).collect();
    let extra: Vec<_> = documented.iter().filter(|d| !routed.contains(d)).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "openapi.json documents routes that do not exist: {extra:?}"
    );
    assert!(
        routed.len() >= 40,
        "the source scan found only {} routes",
        routed.len()
    );
    // And the router really answers each one (anything but the fallback's 404/405).
    for (method, path) in &documented {
        let uri = path.replace('{', "x").replace('}', "");
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let answer = app.call(request).await;
        assert_ne!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert!(
            answer.body["error"]["message"] != "no such route",
            "{method} {path} is not routed"
        );
    }
}

/// Every role against the routes this helper added, with a valid body so only the role decides.
async fn new_routes_enforce_their_roles(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let now = edgewarden_admin::db::now();
    let usage = json!({"edge": "e", "interval_start": now - 5, "interval_end": now});
    let hook = app
        .post(
            "/api/v1/webhooks",
            Some(&app.admin_key),
            json!({"url": "http://127.0.0.1:9/", "kinds": ["*"]}),
        )
        .await
        .body;
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    sqlx::query("INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at) VALUES ('anm_t', 'clock_skew', 'low', 'edge', 'e', '{}', 'open', 1, 1)")
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    let jti = app.issue("alice", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let mine = [
        "/metrics",
        "/api/v1/usage",
        "/api/v1/usage/timeseries",
        "/api/v1/usage/failures",
        "/api/v1/edges",
        "/api/v1/anomalies",
        "/api/v1/anomalies/{id}",
        "/api/v1/events",
        "/api/v1/webhooks",
        "/api/v1/webhooks/{id}",
        "/api/v1/webhooks/{id}/deliveries",
        "/api/v1/tokens/{jti}/timeline",
    ];
    let keys = [
        (Role::Admin, app.admin_key.clone()),
        (Role::Auditor, app.api_key(Role::Auditor, None).await),
        (Role::Edge, app.api_key(Role::Edge, None).await),
        (
            Role::Service,
            app.api_key(Role::Service, Some("billing")).await,
        ),
    ];
    for op in OPERATIONS.iter().filter(|op| mine.contains(&op.path)) {
        let body = match (op.method, op.path) {
            ("post", "/api/v1/usage") => Some(usage.clone()),
            ("post", "/api/v1/webhooks") => {
                Some(json!({"url": "http://127.0.0.1:9/", "kinds": ["*"]}))
            }
            ("patch", "/api/v1/webhooks/{id}") => Some(json!({"description": "x"})),
            ("patch", "/api/v1/anomalies/{id}") => Some(json!({"state": "acknowledged"})),
            _ => None,
        };
        let uri = op
            .path
            .replace(
                "{id}",
                if op.path.contains("webhooks") {
                    &hook_id
                } else {
                    "anm_t"
                },
            )
            .replace("{jti}", &jti);
        // Deletion last, so the other checks still find the webhook.
        if op.method == "delete" {
            continue;
        }
        let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let none = app.json(method.clone(), &uri, None, body.clone()).await;
        assert_eq!(
            none.status,
            StatusCode::UNAUTHORIZED,
            "{} {} without credentials",
            op.method,
            op.path
        );
        for (role, key) in &keys {
            let answer = app
                .json(method.clone(), &uri, Some(key), body.clone())
                .await;
            let allowed = op.roles.split(' ').any(|r| r == role.as_str());
            if allowed {
                assert!(
                    answer.status.is_success(),
                    "{} {} as {role}: {} {}",
                    op.method,
                    op.path,
                    answer.status,
                    answer.body
                );
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::FORBIDDEN,
                    "{} {} as {role}: {}",
                    op.method,
                    op.path,
                    answer.body
                );
            }
        }
    }
    let uri = format!("/api/v1/webhooks/{hook_id}");
    for (role, key) in &keys[1..] {
        app.json(Method::DELETE, &uri, Some(key), None)
            .await
            .expect(StatusCode::FORBIDDEN);
        let _ = role;
    }
    app.json(Method::DELETE, &uri, None, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    app.json(Method::DELETE, &uri, Some(&app.admin_key), None)
        .await
        .expect(StatusCode::NO_CONTENT);
}

/// Two replicas on one PostgreSQL database: an event recorded by one reaches the other's stream
/// (NOTIFY wakes its dispatcher), and a webhook is delivered once, not once per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_streams_and_webhooks_once_across_postgres_replicas() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = db.config();
    let a = TestApp::with_config(config.clone(), db).await;
    let b = edgewarden_admin::app(
        edgewarden_admin::AppState::new(config)
            .await
            .expect("second replica"),
    );
    let (url, seen) = receiver(0).await;
    a.post(
        "/api/v1/webhooks",
        Some(&a.admin_key),
        json!({"url": url, "kinds": ["token.issued"]}),
    )
    .await
    .expect(StatusCode::CREATED);
    let request = Request::builder()
        .uri("/api/v1/events/stream?kind=token.issued")
        .header(header::AUTHORIZATION, format!("Bearer {}", a.admin_key))
        .body(Body::empty())
        .unwrap();
    let mut stream_b = b.clone().oneshot(request).await.unwrap().into_body();
    a.client("billing", &["read"], &[]).await;
    let started = std::time::Instant::now();
    let jti = a.issue("alice", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = read_sse(&mut stream_b, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got.len(),
        1,
        "replica b streamed the event recorded on replica a"
    );
    assert_eq!(got[0].1["jti"], jti.as_str());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "woken by NOTIFY, took {:?}",
        started.elapsed()
    );
    // Both dispatchers saw the event; the delivery row is keyed by (webhook, event), so it is sent once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
}
