//! Feed cost under load, in-process (no sockets): 100,000 active revocations, 1,000 edges each with its
//! own key polling with `If-None-Match` (the 304 path), plus the cost of a full snapshot and a small delta.
//! Ignored by default (it takes a while in debug builds): `cargo test -p edgewarden-admin --test feed_bench -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Backend, TestApp};
use edgewarden_admin::auth::Role;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const REVOCATIONS: i64 = 100_000;
const EDGES: usize = 1_000;

async fn measure(backend: Backend) {
    let app = TestApp::start(backend).await;
    let now = edgewarden_admin::db::now();
    let started = Instant::now();
    let mut tx = app.state.db.pool.begin().await.unwrap();
    for chunk in 0..(REVOCATIONS / 1000) {
        let mut sql = String::from("INSERT INTO revocations (kind, value, seq, reason, actor, revoked_at, expires_at) VALUES ");
        for i in 0..1000 {
            let n = chunk * 1000 + i;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('jti', 'bench-{n:08}', {}, 'bench', 'bench', {now}, {})",
                n + 1,
                now + 3600
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE feed_state SET current_cursor = $1 WHERE id = 1")
        .bind(REVOCATIONS)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    app.state.feed.advance(REVOCATIONS);
    println!(
        "[{backend:?}] inserted {REVOCATIONS} revocations in {:?}",
        started.elapsed()
    );

    let mut keys = Vec::with_capacity(EDGES);
    for _ in 0..EDGES {
        keys.push(app.api_key(Role::Edge, None).await);
    }
    let get = |key: &str, uri: String, tag: Option<&str>| {
        let mut b = Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {key}"));
        if let Some(tag) = tag {
            b = b.header(header::IF_NONE_MATCH, tag);
        }
        b.body(Body::empty()).unwrap()
    };

    let started = Instant::now();
    let response = app
        .router
        .clone()
        .oneshot(get(
            &keys[0],
            "/api/v1/revocations/feed?since=0".into(),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    println!(
        "[{backend:?}] full snapshot: {} bytes in {:?}",
        bytes.len(),
        started.elapsed()
    );
    let tag = format!("\"c{REVOCATIONS}\"");

    // Warm the API key cache, as a steady state of edges polling every second would.
    for key in &keys {
        let r = app
            .router
            .clone()
            .oneshot(get(
                key,
                format!("/api/v1/revocations/feed?since={REVOCATIONS}"),
                Some(&tag),
            ))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    }
    let rounds = 20;
    let started = Instant::now();
    let mut handles = Vec::new();
    for worker in 0..4 {
        let router = app.router.clone();
        let keys: Vec<String> = keys.iter().skip(worker).step_by(4).cloned().collect();
        let tag = tag.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..rounds {
                for key in &keys {
                    let request = Request::builder()
                        .uri(format!("/api/v1/revocations/feed?since={REVOCATIONS}"))
                        .header(header::AUTHORIZATION, format!("Bearer {key}"))
                        .header(header::IF_NONE_MATCH, &tag)
                        .body(Body::empty())
                        .unwrap();
                    let r = router.clone().oneshot(request).await.unwrap();
                    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = started.elapsed();
    let polls = (rounds * EDGES) as f64;
    println!(
        "[{backend:?}] {polls} unchanged polls (304) from {EDGES} edges: {:.0} polls/s",
        polls / elapsed.as_secs_f64()
    );

    // One new revocation, then every edge fetches the delta.
    app.client("billing", &[], &[]).await;
    let issued = app.issue("alice", "billing", &[], false).await;
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        serde_json::json!({"jti": issued["jti"], "reason": "bench"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let started = Instant::now();
    for key in keys.iter().take(200) {
        let r = app
            .router
            .clone()
            .oneshot(get(
                key,
                format!("/api/v1/revocations/feed?since={REVOCATIONS}"),
                Some(&tag),
            ))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let _ = r.into_body().collect().await.unwrap();
    }
    let per = started.elapsed() / 200;
    println!("[{backend:?}] delta of one entry: {per:?} per poll");
    assert!(per < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn feed_cost_with_100k_revocations_and_1000_edges_sqlite() {
    measure(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn feed_cost_with_100k_revocations_and_1000_edges_postgres() {
    measure(Backend::Postgres).await
}
