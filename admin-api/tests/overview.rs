//! The dashboard's overview and revocation propagation, each run on SQLite and on PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Backend, TestApp, TestDb};
use edgewarden_admin::auth::Role;
use edgewarden_admin::db::now;
use edgewarden_api_types::{Overview, Propagation};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

both_backends!(
    overview_counts_tokens_decisions_anomalies_and_edges,
    overview_range_must_be_1h_24h_or_7d,
    propagation_shows_applied_and_pending_edges_on_every_replica,
    propagation_of_an_unknown_cursor_is_404_and_a_missing_one_400,
);

async fn overview(app: &TestApp, range: &str) -> Overview {
    let body = app
        .get(
            &format!("/api/v1/overview?range={range}"),
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    serde_json::from_value(body).expect("overview shape")
}

/// One feed poll by `edge` with `since`, as the filter makes it.
async fn poll(app: &TestApp, key: &str, edge: &str, since: i64) -> Value {
    let request = Request::get(format!("/api/v1/revocations/feed?since={since}"))
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header("x-edgewarden-edge", edge)
        .body(Body::empty())
        .unwrap();
    app.call(request).await.expect(StatusCode::OK).body
}

async fn report(app: &TestApp, key: &str, edge: &str, at: i64, counts: Value) {
    app.post(
        "/api/v1/usage",
        Some(key),
        json!({"edge": edge, "interval_start": at, "interval_end": at + 10, "counts": counts}),
    )
    .await
    .expect(StatusCode::ACCEPTED);
}

async fn overview_counts_tokens_decisions_anomalies_and_edges(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let mut jtis = Vec::new();
    for subject in ["alice", "bob", "carol", "dave"] {
        let issued = app.issue(subject, "billing", &["read"], false).await;
        jtis.push(issued["jti"].as_str().unwrap().to_owned());
    }
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": jtis[0], "reason": "lost laptop"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let now = now();
    // One token expired ten minutes ago, one three hours ago (outside 1h, inside 24h).
    for (jti, expired_at) in [(&jtis[1], now - 600), (&jtis[2], now - 3 * 3_600)] {
        sqlx::query("UPDATE tokens SET issued_at = $1, expires_at = $2 WHERE jti = $3")
            .bind(expired_at - 600)
            .bind(expired_at)
            .bind(jti)
            .execute(&app.state.db.pool)
            .await
            .unwrap();
    }

    let edge = app.api_key(Role::Edge, None).await;
    // Now, and three hours ago: the older batch lands in the hourly rollup's whole hours for 24h and 7d.
    report(
        &app,
        &edge,
        "edge-a",
        now - 30,
        json!([
            {"jti": jtis[3], "route": "/orders", "reason": "allowed", "count": 7},
            {"route": "/orders", "reason": "missing_token", "count": 2},
            {"jti": jtis[0], "route": "/orders", "reason": "revoked", "count": 3},
        ]),
    )
    .await;
    report(
        &app,
        &edge,
        "edge-a",
        now - 3 * 3_600,
        json!([
            {"jti": jtis[3], "route": "/orders", "reason": "allowed", "count": 100},
            {"route": "/orders", "reason": "missing_token", "count": 5},
        ]),
    )
    .await;
    // The same minute again: the rollup follows the upsert.
    report(
        &app,
        &edge,
        "edge-a",
        now - 30,
        json!([{"route": "/orders", "reason": "missing_token", "count": 1}]),
    )
    .await;

    poll(&app, &edge, "edge-fresh", 0).await;
    for (id, severity, state) in [
        ("an_1", "high", "open"),
        ("an_2", "high", "open"),
        ("an_3", "low", "open"),
        ("an_4", "medium", "resolved"),
    ] {
        sqlx::query(
            "INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at) \
             VALUES ($1, 'failure_burst', $2, 'address', $1, '{}', $3, $4, $4)",
        )
        .bind(id)
        .bind(severity)
        .bind(state)
        .bind(now)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    }

    let hour = overview(&app, "1h").await;
    assert_eq!(hour.range_seconds, 3_600);
    assert!((hour.now - now).abs() <= 5);
    // One token is backdated out of the last hour; one was revoked; two expired, one of them within it.
    assert_eq!(hour.tokens.issued_in_range, 3, "{hour:?}");
    assert_eq!(hour.tokens.active, 1, "{hour:?}");
    assert_eq!(hour.tokens.revoked_in_range, 1, "{hour:?}");
    assert_eq!(hour.tokens.expired_in_range, 1, "{hour:?}");
    assert_eq!(hour.decisions.allowed, 7, "{hour:?}");
    assert_eq!(hour.decisions.denied, 6, "{hour:?}");
    let reasons: Vec<(&str, i64)> = hour
        .decisions
        .denied_by_reason
        .iter()
        .map(|r| (r.reason.as_str(), r.count))
        .collect();
    assert_eq!(reasons, [("missing_token", 3), ("revoked", 3)]);
    // The detectors raise their own (the revoked token's use); the resolved one is not counted.
    let listed = app
        .get(
            "/api/v1/anomalies?state=open&limit=500",
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let open = |severity: &str| {
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["severity"] == severity)
            .count() as i64
    };
    assert!(open("high") >= 2 && open("low") >= 1);
    assert_eq!(
        (
            hour.open_anomalies.high,
            hour.open_anomalies.medium,
            hour.open_anomalies.low
        ),
        (open("high"), open("medium"), open("low"))
    );
    // edge-fresh polled just now; edge-a only reported usage and never polled.
    assert_eq!(hour.edges.total, 2, "{hour:?}");
    assert_eq!(
        (hour.edges.in_sync, hour.edges.stale, hour.edges.silent),
        (1, 0, 1),
        "{hour:?}"
    );

    for range in ["24h", "7d"] {
        let wide = overview(&app, range).await;
        assert_eq!(wide.tokens.issued_in_range, 4, "{range}: {wide:?}");
        assert_eq!(wide.tokens.expired_in_range, 2, "{range}: {wide:?}");
        assert_eq!(wide.tokens.revoked_in_range, 1, "{range}: {wide:?}");
        assert_eq!(wide.decisions.allowed, 107, "{range}: {wide:?}");
        assert_eq!(wide.decisions.denied, 11, "{range}: {wide:?}");
        assert_eq!(wide.decisions.denied_by_reason[0].reason, "missing_token");
        assert_eq!(wide.decisions.denied_by_reason[0].count, 8);
    }

    // The hourly rollup stays equal to the minute counts it sums, through upserts and deletes.
    let sums = |sql: &'static str| {
        let pool = app.state.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let minutes = "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM usage_counts";
    let hours = "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM usage_hourly";
    assert_eq!(sums(minutes).await, 118);
    assert_eq!(sums(hours).await, 118);
    sqlx::query("DELETE FROM usage_counts WHERE bucket < $1")
        .bind(now - 3_600)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    assert_eq!(sums(minutes).await, 13);
    assert_eq!(sums(hours).await, 13);
    assert_eq!(overview(&app, "7d").await.decisions.allowed, 7);
}

async fn overview_range_must_be_1h_24h_or_7d(backend: Backend) {
    let app = TestApp::start(backend).await;
    let answer = app
        .get("/api/v1/overview?range=30d", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("range"));
    let default = app
        .get("/api/v1/overview", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK);
    assert_eq!(default.body["range_seconds"], 86_400);
    let edge = app.api_key(Role::Edge, None).await;
    app.get("/api/v1/overview", Some(&edge))
        .await
        .expect(StatusCode::FORBIDDEN);
}

async fn propagation_shows_applied_and_pending_edges_on_every_replica(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = db.config();
    let app = TestApp::with_config(config.clone(), db).await;
    app.client("billing", &["read"], &[]).await;
    let jti = app.issue("alice", "billing", &["read"], false).await["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let edge = app.api_key(Role::Edge, None).await;
    let start = poll(&app, &edge, "edge-fast", 0).await["cursor"]
        .as_i64()
        .unwrap();
    poll(&app, &edge, "edge-slow", 0).await;

    let revoked = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"jti": jti, "reason": "propagation test"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    let cursor = revoked["cursor"].as_i64().unwrap();
    assert!(cursor > start);
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    // edge-fast fetches the delta and polls again with the new cursor: it has applied the revocation.
    let delta = poll(&app, &edge, "edge-fast", start).await;
    assert_eq!(delta["cursor"].as_i64(), Some(cursor));
    poll(&app, &edge, "edge-fast", cursor).await;
    // Polling again with the same cursor keeps the first time.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    poll(&app, &edge, "edge-fast", cursor).await;
    // edge-slow polls again, still with the old cursor.
    poll(&app, &edge, "edge-slow", start).await;

    let answer: Propagation = serde_json::from_value(
        app.get(
            &format!("/api/v1/revocations/propagation?cursor={cursor}"),
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body,
    )
    .unwrap();
    assert_eq!(answer.cursor, cursor);
    assert!(answer.now >= answer.revoked_at);
    assert!((answer.revoked_at - now() as f64).abs() < 10.0);
    let names: Vec<&str> = answer.edges.iter().map(|e| e.edge.as_str()).collect();
    assert_eq!(names, ["edge-fast", "edge-slow"]);
    let fast = &answer.edges[0];
    assert!(fast.applied, "{fast:?}");
    assert_eq!(fast.feed_cursor, Some(cursor));
    let after = fast.applied_after_seconds.expect("time to apply");
    // The poll came at least 30 ms after the revocation and well within the test's run.
    assert!((0.025..5.0).contains(&after), "applied after {after} s");
    assert!(!fast.stale);
    assert_eq!(fast.staleness_seconds.map(|s| s <= 5), Some(true));
    let slow = &answer.edges[1];
    assert!(!slow.applied, "{slow:?}");
    assert_eq!(slow.applied_after_seconds, None);
    assert_eq!(slow.feed_cursor, Some(start));
    assert!(!slow.stale);
    assert!(!answer.complete);

    // Another replica on the same database: it has seen no poll in memory, yet it answers the same
    // from the marks the first replica wrote.
    let other = edgewarden_admin::app(
        edgewarden_admin::AppState::new(config)
            .await
            .expect("second replica"),
    );
    let response = other
        .oneshot(
            Request::get(format!("/api/v1/revocations/propagation?cursor={cursor}"))
                .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: Propagation = serde_json::from_slice(&body).unwrap();
    let fast_elsewhere = seen
        .edges
        .iter()
        .find(|e| e.edge == "edge-fast")
        .expect("edge-fast");
    assert!(fast_elsewhere.applied);
    assert_eq!(fast_elsewhere.applied_after_seconds, Some(after));

    // Once edge-slow catches up, the revocation has reached every edge.
    poll(&app, &edge, "edge-slow", cursor).await;
    let done = app
        .get(
            &format!("/api/v1/revocations/propagation?cursor={cursor}"),
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(done["complete"], true, "{done}");
    assert!(done["edges"][1]["applied_after_seconds"].as_f64().unwrap() >= after);
}

async fn propagation_of_an_unknown_cursor_is_404_and_a_missing_one_400(backend: Backend) {
    let app = TestApp::start(backend).await;
    let answer = app
        .get(
            "/api/v1/revocations/propagation?cursor=999",
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::NOT_FOUND);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("999"));
    for query in ["", "?cursor=0", "?cursor=-3"] {
        let answer = app
            .get(
                &format!("/api/v1/revocations/propagation{query}"),
                Some(&app.admin_key),
            )
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("cursor"),
            "{query}"
        );
    }
}
