//! Two replicas sharing one PostgreSQL database and nothing else: a revocation acknowledged by one
//! wakes a feed long-poll waiting on the other at once (LISTEN/NOTIFY), and tokens issued by one
//! introspect on the other. The periodic cursor refresh is set to an hour so only NOTIFY can explain it.

mod common;

use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use common::{Backend, TestApp, TestDb};
use edgewarden_admin::auth::Role;
use serde_json::{json, Value};
use tower::ServiceExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_on_one_replica_wakes_long_polls_on_another() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = db.config();
    let a = TestApp::with_config(config.clone(), db).await;
    let b_state = edgewarden_admin::AppState::new(config)
        .await
        .expect("second replica");
    let b = edgewarden_admin::app(b_state);

    a.client("billing", &[], &[]).await;
    let issued = a.issue("alice", "billing", &[], false).await;
    let edge = a.api_key(Role::Edge, None).await;

    // Replica B verifies what replica A signed (shared keys through the database).
    let intro = b
        .clone()
        .oneshot(
            axum::http::Request::post("/oauth/introspect")
                .header(header::AUTHORIZATION, format!("Bearer {}", a.admin_key))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(axum::body::Body::from(format!(
                    "token={}",
                    issued["access_token"].as_str().unwrap()
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    let intro: Value = serde_json::from_slice(
        &http_body_util::BodyExt::collect(intro.into_body())
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(intro["active"], true);

    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let request = axum::http::Request::get("/api/v1/revocations/feed?since=0&wait=25")
                .header(header::AUTHORIZATION, format!("Bearer {edge}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = b.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                Instant::now(),
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "the long-poll on replica B waits while nothing changed"
    );
    a.post(
        "/api/v1/revocations",
        Some(&a.admin_key),
        json!({"jti": issued["jti"], "reason": "replicas"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let acknowledged = Instant::now();
    let (answered, feed) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by notify")
        .unwrap();
    let latency = answered.saturating_duration_since(acknowledged);
    assert_eq!(feed["revoked_jtis"][0]["jti"], issued["jti"]);
    assert!(
        latency < Duration::from_secs(1),
        "replica B answered {latency:?} after replica A acknowledged"
    );
    println!("cross-replica propagation: {latency:?}");
}

/// Two replicas with `--usage-journal` on one PostgreSQL database: each journals what it is sent, and
/// their folds claim rows with `FOR UPDATE SKIP LOCKED`, so either may store the other's batches; every
/// batch is counted exactly once, and the counts agree whichever replica is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fold_one_journal_and_count_each_batch_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = db.config();
    config.usage.journal = true;
    let a = TestApp::with_config(config.clone(), db).await;
    let b_state = edgewarden_admin::AppState::new(config)
        .await
        .expect("second replica");
    let b = edgewarden_admin::app(b_state);
    let now = edgewarden_admin::db::now();
    let mut posts = Vec::new();
    let mut total = 0;
    for n in 0..40 {
        let counts: Vec<Value> = (0..50)
            .map(|i| json!({"jti": format!("rep-{n}-{i}"), "route": "/api/orders", "reason": "allowed", "count": 1 + i % 3}))
            .collect();
        total += (0..50).map(|i| 1 + i % 3).sum::<i64>();
        let body = json!({"edge": format!("edge-{}", n % 4), "interval_start": now - 10, "interval_end": now, "counts": counts});
        let request = axum::http::Request::post("/api/v1/usage")
            .header(header::AUTHORIZATION, format!("Bearer {}", a.admin_key))
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let replica = if n % 2 == 0 {
            a.router.clone()
        } else {
            b.clone()
        };
        posts.push(tokio::spawn(async move {
            replica.oneshot(request).await.unwrap().status()
        }));
    }
    for post in posts {
        assert_eq!(post.await.unwrap(), StatusCode::ACCEPTED);
    }
    let pool = &a.state.db.pool;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_journal")
            .fetch_one(pool)
            .await
            .unwrap();
        if waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} batches still journaled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: i64 =
        sqlx::query_scalar("SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM usage_counts")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(stored, total, "every batch counted once");
    let per_batch: Vec<(String, i64)> = sqlx::query_as(
        "SELECT token, CAST(SUM(count) AS BIGINT) FROM usage_counts GROUP BY token HAVING SUM(count) > 3",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        per_batch.is_empty(),
        "an entry counted twice: {per_batch:?}"
    );
    let reports: i64 = sqlx::query_scalar("SELECT CAST(SUM(reports) AS BIGINT) FROM edges")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(reports, 40, "each batch is one report");
}
