//! Durability of acknowledged writes: the real `edgewarden-admin` binary is started, a revocation is
//! acknowledged, the process is killed with SIGKILL at once, and after a restart the revocation is still
//! in the feed and the token introspects inactive; usage batches posted concurrently until a SIGKILL are
//! each either answered 202 and stored whole, or not answered and not stored (issue 14: a 2xx means
//! stored, not queued). Also exercises `api-key create` from the CLI. Run on SQLite and PostgreSQL.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDb};
use serde_json::{json, Value};

both_backends!(
    revocation_acknowledged_before_sigkill_survives_restart,
    usage_acknowledged_before_sigkill_is_stored_whole,
    journaled_usage_acknowledged_before_sigkill_is_stored_after_restart,
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

/// An admin API key made with the CLI.
fn cli_key(db: &TestDb) -> String {
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
    let key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("ewk_"), "cli prints the key: {key:?}");
    key
}

async fn revocation_acknowledged_before_sigkill_survives_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = cli_key(&db);

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

/// Usage batch `n` of a posting task: 200 count entries from its own edge, summing to `n`-dependent
/// decisions, so what is stored tells which batches arrived.
fn usage_batch(edge: &str, n: usize) -> (Value, i64) {
    let now = edgewarden_admin::db::now();
    let counts: Vec<Value> = (0..200)
        .map(|i| {
            json!({"jti": format!("{edge}-{n}-{i}"), "subject": format!("user-{}", i % 40), "route": "/api/orders",
                   "reason": "allowed", "count": 1 + i % 3, "addresses": [format!("10.9.{}.{}", n % 250, 1 + i % 200)]})
        })
        .collect();
    let total = (0..200).map(|i| 1 + i % 3).sum();
    (
        json!({"edge": edge, "interval_start": now - 10, "interval_end": now, "counts": counts}),
        total,
    )
}

async fn usage_acknowledged_before_sigkill_is_stored_whole(backend: Backend) {
    usage_acknowledged_before_sigkill(backend, false).await;
}

/// With `--usage-journal` a 202 means the batch is in the journal: after the SIGKILL the replica is started
/// again, folds what the journal holds, and every acknowledged batch is then stored whole, once.
async fn journaled_usage_acknowledged_before_sigkill_is_stored_after_restart(backend: Backend) {
    usage_acknowledged_before_sigkill(backend, true).await;
}

async fn usage_acknowledged_before_sigkill(backend: Backend, journal: bool) {
    let db = TestDb::new(backend).await;
    let key = cli_key(&db);
    let port = free_port();
    let extra: &[&str] = if journal { &["--usage-journal"] } else { &[] };
    let mut server = start_with(&db, port, extra).await;
    let url = format!("http://127.0.0.1:{port}/api/v1/usage");
    // Eight edges post batches back to back, each on a fresh connection (the kill closes every
    // connection; a reused one would fail the next request for the wrong reason).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut posters = Vec::new();
    for e in 0..8 {
        let (url, key, stop) = (url.clone(), key.clone(), stop.clone());
        posters.push(tokio::spawn(async move {
            let edge = format!("durable-edge-{e}");
            // (batch number, answered 202)
            let mut sent: Vec<(usize, bool)> = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (body, _) = usage_batch(&edge, n);
                let answer = reqwest::Client::new()
                    .post(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().as_u16() == 202 => sent.push((n, true)),
                    Ok(r) if r.status().as_u16() == 503 => sent.push((n, false)),
                    Ok(r) => panic!("{edge}: batch {n} answered {}", r.status()),
                    // The kill cut this request: not acknowledged, so the edge would resend it.
                    Err(_) => {
                        sent.push((n, false));
                        break;
                    }
                }
                n += 1;
            }
            (edge, sent)
        }));
    }
    // Let acknowledgements pile up, then SIGKILL while batches are in flight.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill().expect("sigkill");
    server.wait().expect("reaped");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if journal {
        // Started again, the replica folds every batch the journal holds.
        let mut server = start_with(&db, port, extra).await;
        let store = edgewarden_admin::db::Db::connect(&db.config())
            .await
            .expect("open the store");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let waiting: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM usage_journal WHERE done < parts")
                    .fetch_one(&store.pool)
                    .await
                    .expect("journal");
            if waiting == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{waiting} journaled batches were not stored within 60 s of the restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        store.pool.close().await;
        server.kill().expect("stop");
        server.wait().expect("reaped");
    }

    let store = edgewarden_admin::db::Db::connect(&db.config())
        .await
        .expect("open the store");
    let mut acknowledged = 0;
    for poster in posters {
        let (edge, sent) = poster.await.expect("poster");
        for (n, answered) in sent {
            let (_, total) = usage_batch(&edge, n);
            let stored: Option<i64> = sqlx::query_scalar(
                "SELECT CAST(SUM(count) AS BIGINT) FROM usage_counts WHERE edge = $1 AND token LIKE $2",
            )
            .bind(&edge)
            .bind(format!("{edge}-{n}-%"))
            .fetch_one(&store.pool)
            .await
            .expect("sum");
            if answered {
                acknowledged += 1;
                assert_eq!(
                    stored,
                    Some(total),
                    "{edge}: batch {n} was answered 202 before the kill and is stored whole"
                );
            } else {
                assert!(
                    stored.is_none() || stored == Some(total),
                    "{edge}: batch {n}, not acknowledged, is stored whole or not at all: {stored:?}"
                );
            }
        }
    }
    assert!(
        acknowledged > 0,
        "no usage batch was acknowledged before the kill"
    );
    store.pool.close().await;
}
