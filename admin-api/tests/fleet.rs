//! Many edges on one replica (issue 12): held long-polls woken together share one feed read and each
//! still gets the answer for its own cursor; held requests share one credential check and still end
//! with their credential; the connection bound is fitted to the open-file limit.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Backend, TestApp};
use edgewarden_admin::auth::Role;
use serde_json::{json, Value};

async fn revoke_subject(app: &TestApp, subject: &str) -> i64 {
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"subject": subject, "reason": "fleet test"}),
    )
    .await
    .expect(StatusCode::CREATED)
    .body["cursor"]
        .as_i64()
        .unwrap()
}

fn feed_request(key: &str, edge: &str, since: i64, wait: u64) -> Request<Body> {
    Request::get(format!(
        "/api/v1/revocations/feed?since={since}&wait={wait}"
    ))
    .header(header::AUTHORIZATION, format!("Bearer {key}"))
    .header("x-edgewarden-edge", edge)
    .body(Body::empty())
    .unwrap()
}

fn subjects(body: &Value) -> Vec<String> {
    body["revoked_subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subject"].as_str().unwrap().to_owned())
        .collect()
}

async fn held_polls_woken_together_each_get_the_delta_for_their_own_cursor(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::start(backend).await);
    let edge = app.api_key(Role::Edge, None).await;
    let first = revoke_subject(&app, "before-0").await;
    let second = revoke_subject(&app, "before-1").await;

    // 150 edges hold a poll at the current cursor, 50 are one change behind (answered at once).
    let mut held = Vec::new();
    for i in 0..150 {
        let (app, edge) = (app.clone(), edge.clone());
        held.push(tokio::spawn(async move {
            app.call(feed_request(&edge, &format!("edge-{i:03}"), second, 20))
                .await
        }));
    }
    let mut behind = Vec::new();
    for i in 0..50 {
        let answer = app
            .call(feed_request(&edge, &format!("late-{i:02}"), first, 20))
            .await
            .expect(StatusCode::OK);
        behind.push(answer.body);
    }
    for body in &behind {
        assert_eq!(body["cursor"].as_i64(), Some(second), "{body}");
        assert_eq!(subjects(body), ["before-1"], "{body}");
        assert_eq!(body["full"], false);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(held.iter().all(|h| !h.is_finished()), "a poll was not held");

    let third = revoke_subject(&app, "woken").await;
    for h in held {
        let answer = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("a held poll was not woken")
            .unwrap()
            .expect(StatusCode::OK);
        assert_eq!(
            answer.body["cursor"].as_i64(),
            Some(third),
            "{}",
            answer.body
        );
        assert_eq!(subjects(&answer.body), ["woken"], "{}", answer.body);
    }
    // A later poll from an older cursor is not served the shared answer of another cursor.
    let old = app
        .call(feed_request(&edge, "late-00", first, 0))
        .await
        .expect(StatusCode::OK);
    assert_eq!(subjects(&old.body), ["before-1", "woken"], "{}", old.body);
    // A snapshot stays a snapshot.
    let snapshot = app
        .call(feed_request(&edge, "fresh", 0, 0))
        .await
        .expect(StatusCode::OK);
    assert_eq!(snapshot.body["full"], true);
    assert_eq!(subjects(&snapshot.body).len(), 3, "{}", snapshot.body);

    // Every edge's advance is recorded for the propagation view, though no poll wrote it itself.
    let propagation = app
        .get(
            &format!("/api/v1/revocations/propagation?cursor={second}"),
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let applied = propagation["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["applied"] == true)
        .count();
    assert!(applied >= 150, "{applied} edges applied: {propagation}");
}

async fn held_polls_sharing_a_key_all_end_with_it_and_others_stay(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::start(backend).await);
    let doomed_key =
        edgewarden_admin::auth::create_api_key(&app.state.db, Role::Edge, "doomed", None)
            .await
            .unwrap();
    let (doomed, id) = (doomed_key.key, doomed_key.id);
    let kept = app.api_key(Role::Edge, None).await;
    let cursor = revoke_subject(&app, "someone").await;
    let spawn = |key: String, edge: String| {
        let app = app.clone();
        tokio::spawn(async move { app.call(feed_request(&key, &edge, cursor, 20)).await })
    };
    let doomed_polls: Vec<_> = (0..20)
        .map(|i| spawn(doomed.clone(), format!("doomed-{i}")))
        .collect();
    let kept_poll = spawn(kept.clone(), "kept".to_owned());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.state.held_credentials.len(), 21);

    app.call(
        Request::delete(format!("/api/v1/api-keys/{id}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key))
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    for poll in doomed_polls {
        let answer = tokio::time::timeout(Duration::from_secs(3), poll)
            .await
            .expect("a poll outlived its key by seconds")
            .unwrap();
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!kept_poll.is_finished(), "the other key's poll ended");
    assert_eq!(app.state.held_credentials.len(), 1);
    let next = revoke_subject(&app, "another").await;
    let answer = tokio::time::timeout(Duration::from_secs(5), kept_poll)
        .await
        .expect("the kept poll was not woken")
        .unwrap()
        .expect(StatusCode::OK);
    assert_eq!(answer.body["cursor"].as_i64(), Some(next));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.state.held_credentials.is_empty());
}

both_backends!(
    held_polls_woken_together_each_get_the_delta_for_their_own_cursor,
    held_polls_sharing_a_key_all_end_with_it_and_others_stay,
);

/// A bound above the open-file limit is lowered to fit, with a warning that says what to raise,
/// instead of failing on `accept` with every descriptor used.
#[test]
fn the_connection_bound_is_fitted_to_the_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("serve.log");
    // prlimit (util-linux) starts the real binary with a hard limit of 512 descriptors.
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=512:512")
        .arg(env!("CARGO_BIN_EXE_edgewarden-admin"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-bootstrap-admin",
        ])
        .args(["--max-connections", "16384"])
        .env("EDGEWARDEN_DATA_DIR", dir.path().join("data"))
        .env("EDGEWARDEN_LOG", "info")
        .env(
            "EDGEWARDEN_MASTER_KEY",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        )
        .env_remove("DATABASE_URL")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("prlimit from util-linux starts the admin API");
    let started = std::time::Instant::now();
    let mut text = String::new();
    while !text.contains("serving") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not serving after 60 s: {text}{}",
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
        text = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    }
    let healthy = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(healthy, "{text}");
    // The log may be coloured: drop the escape sequences.
    let mut plain = String::new();
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let text = plain;
    assert!(text.contains("open-file limit is too low"), "{text}");
    assert!(text.contains("lowered_to=256"), "{text}");
    assert!(text.contains("LimitNOFILE"), "{text}");
}
