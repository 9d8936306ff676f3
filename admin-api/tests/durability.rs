//! Durability of acknowledged writes: the real `edgewarden-admin` binary is started, a revocation is
//! acknowledged (or usage batches are, while more are in flight), the process is killed with SIGKILL at
//! once, and after a restart the revocation is still in the feed and the token introspects inactive;
//! every usage batch answered 202 is stored, and every other one, resent as an edge does, is stored
//! exactly once (an oversized batch killed half-way included). Also exercises `api-key create` from the
//! CLI. Run on SQLite and PostgreSQL.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDb};
use serde_json::{json, Value};

both_backends!(
    revocation_acknowledged_before_sigkill_survives_restart,
    usage_acknowledged_before_sigkill_is_stored_and_resends_count_once,
);

const MASTER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn command(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgewarden-admin"));
    cmd.env_clear()
        .env("EDGEWARDEN_DATA_DIR", db.dir.path())
        .env("EDGEWARDEN_MASTER_KEY", MASTER_KEY)
        .env("EDGEWARDEN_LOG", "warn")
        .env("DATABASE_URL", db.database_url.clone().unwrap_or_default());
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// The caller kills and waits for the returned child; the failure path here does the same.
#[allow(clippy::zombie_processes)]
async fn start(db: &TestDb, port: u16) -> Child {
    start_with(db, port, &[]).await
}

// The caller kills and waits for the returned child; the failure path here does the same.
#[allow(clippy::zombie_processes)]
async fn start_with(db: &TestDb, port: u16, extra: &[&str]) -> Child {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--issuer",
        "https://issuer.test",
    ];
    args.extend_from_slice(extra);
    let mut child = command(db)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn edgewarden-admin serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return child;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("admin api did not become healthy on port {port} within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("authorization", format!("Bearer {key}"));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn admin_key(db: &TestDb) -> String {
    let output = command(db)
        .args([
            "api-key",
            "create",
            "--role",
            "admin",
            "--name",
            "durability",
        ])
        .output()
        .expect("cli");
    assert!(
        output.status.success(),
        "api-key create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A usage batch from `edge` with `entries` count entries; returns its body and the decisions it counts.
fn usage_batch(edge: &str, entries: usize) -> (String, i64) {
    let now = edgewarden_admin::db::now();
    let mut total = 0;
    let counts: Vec<Value> = (0..entries)
        .map(|i| {
            let count = 1 + (i % 5) as i64;
            total += count;
            json!({"jti": format!("{edge}-{i}"), "subject": format!("user-{}", i % 40), "route": format!("/r/{}", i % 9),
                   "reason": if i % 10 == 0 { "expired" } else { "allowed" }, "count": count,
                   "addresses": [format!("10.1.{}.{}", i % 200, 1 + i % 3)]})
        })
        .collect();
    let body =
        json!({"edge": edge, "interval_start": now - 10, "interval_end": now, "counts": counts});
    (body.to_string(), total)
}

/// Posts a usage batch; `None` when no answer came (the connection died with the service).
async fn post_usage(base: &str, key: &str, body: &str) -> Option<u16> {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/usage"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Decisions stored per edge, read from the database itself.
async fn stored_per_edge(db: &TestDb) -> std::collections::BTreeMap<String, i64> {
    let store = edgewarden_admin::db::Db::connect(&db.config())
        .await
        .expect("open the store");
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT edge, CAST(SUM(count) AS BIGINT) FROM usage_counts GROUP BY edge")
            .fetch_all(&store.pool)
            .await
            .expect("sums");
    store.pool.close().await;
    rows.into_iter().collect()
}

/// Issue 14's promise, "nothing acknowledged is lost", as this service keeps it: a 202 is sent only after
/// the batch is committed, so a batch answered 202 is stored whatever happens to the process after; a
/// batch without an answer is resent by its edge, and is counted once whether or not its first delivery
/// was stored. Four edges post 200-entry batches and one posts a 10,000-entry batch (written in parts of
/// 100 rows); the service is killed with SIGKILL while that batch is half-way (parts recorded).
async fn usage_acknowledged_before_sigkill_is_stored_and_resends_count_once(backend: Backend) {
    use std::sync::{Arc, Mutex};
    let db = TestDb::new(backend).await;
    let key = admin_key(&db);
    let port = free_port();
    let mut server = start_with(&db, port, &["--usage-transaction-rows", "100"]).await;
    let base = format!("http://127.0.0.1:{port}");
    // (edge, body, decisions, answered 202)
    let sent: Arc<Mutex<Vec<(String, String, i64, bool)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut posters = Vec::new();
    for poster in 0..4 {
        let (sent, stop, base, key) = (sent.clone(), stop.clone(), base.clone(), key.clone());
        posters.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let edge = format!("small-{poster}-{n}");
                let (body, total) = usage_batch(&edge, 200);
                let answer = post_usage(&base, &key, &body).await;
                assert!(
                    matches!(answer, None | Some(202)),
                    "{edge} answered {answer:?}"
                );
                sent.lock()
                    .unwrap()
                    .push((edge, body, total, answer == Some(202)));
                if answer.is_none() {
                    return;
                }
            }
        }));
    }
    let big = {
        let (sent, base, key) = (sent.clone(), base.clone(), key.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (body, total) = usage_batch("big", 10_000);
            let answer = post_usage(&base, &key, &body).await;
            sent.lock()
                .unwrap()
                .push(("big".into(), body, total, answer == Some(202)));
        })
    };
    // Kill the moment the big batch has some parts stored and not all.
    let watcher = edgewarden_admin::db::Db::connect(&db.config())
        .await
        .expect("open the store");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut half_way = false;
    while Instant::now() < deadline {
        let parts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_batch_parts")
            .fetch_one(&watcher.pool)
            .await
            .expect("parts");
        if parts > 0 {
            half_way = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill().expect("sigkill");
    server.wait().expect("reaped");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.pool.close().await;
    for poster in posters {
        poster.await.expect("poster");
    }
    big.await.expect("big poster");
    assert!(half_way, "the big batch was never seen half-way within 60s");

    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let acknowledged = sent.iter().filter(|s| s.3).count();
    assert!(
        acknowledged >= 4,
        "only {acknowledged} batches were answered before the kill"
    );
    let before = stored_per_edge(&db).await;
    for (edge, _, total, acked) in &sent {
        if *acked {
            assert_eq!(
                before.get(edge),
                Some(total),
                "{edge} was answered 202 before the kill"
            );
        }
    }
    assert_ne!(
        before.get("big").copied().unwrap_or(0),
        sent.iter().find(|s| s.0 == "big").unwrap().2,
        "the big batch was killed half-way"
    );

    // The edges resend what was not confirmed (all of it, as the filter does); what was confirmed is
    // resent too here, to show a duplicate is not counted again.
    let port = free_port();
    let mut server = start(&db, port).await;
    let base = format!("http://127.0.0.1:{port}");
    for (edge, body, _, _) in &sent {
        assert_eq!(
            post_usage(&base, &key, body).await,
            Some(202),
            "{edge} resent"
        );
    }
    server.kill().expect("sigkill");
    server.wait().expect("reaped");
    let after = stored_per_edge(&db).await;
    for (edge, _, total, _) in &sent {
        assert_eq!(
            after.get(edge),
            Some(total),
            "{edge} is stored exactly once"
        );
    }
    assert_eq!(after.len(), sent.len(), "no other edge: {after:?}");
}

async fn revocation_acknowledged_before_sigkill_survives_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let output = command(&db)
        .args([
            "api-key",
            "create",
            "--role",
            "admin",
            "--name",
            "durability",
        ])
        .output()
        .expect("cli");
    assert!(
        output.status.success(),
        "api-key create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("ewk_"), "cli prints the key: {key:?}");

    let port = free_port();
    let mut server = start(&db, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let (status, _) = send(
        reqwest::Method::POST,
        format!("{base}/api/v1/clients"),
        &key,
        Some(json!({"client_id": "billing"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, issued) = send(
        reqwest::Method::POST,
        format!("{base}/api/v1/tokens"),
        &key,
        Some(json!({"subject": "alice", "client_id": "billing", "ttl_seconds": 600})),
    )
    .await;
    assert_eq!(status, 200);
    let jti = issued["jti"].as_str().unwrap().to_owned();
    let (status, _) = send(
        reqwest::Method::POST,
        format!("{base}/api/v1/revocations"),
        &key,
        Some(json!({"jti": jti, "reason": "durability"})),
    )
    .await;
    assert_eq!(status, 201, "revocation acknowledged");
    // SIGKILL right after the acknowledgement: no shutdown hook, no flush.
    server.kill().expect("sigkill");
    server.wait().expect("reaped");

    let port = free_port();
    let mut server = start(&db, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let (status, feed) = send(
        reqwest::Method::GET,
        format!("{base}/api/v1/revocations/feed?since=0"),
        &key,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        feed["revoked_jtis"][0]["jti"],
        jti.as_str(),
        "revocation survived the kill: {feed}"
    );
    let body = format!("token={}", issued["access_token"].as_str().unwrap());
    let response = reqwest::Client::new()
        .post(format!("{base}/oauth/introspect"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let intro: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(intro, json!({"active": false}));
    server.kill().expect("sigkill");
    server.wait().expect("reaped");
}
