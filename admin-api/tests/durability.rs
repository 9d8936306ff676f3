//! Durability of acknowledged revocations: the real `edgewarden-admin` binary is started, a revocation
//! is acknowledged, the process is killed with SIGKILL at once, and after a restart the revocation is
//! still in the feed and the token introspects inactive. Also exercises `api-key create` from the CLI.
//! Run on SQLite and PostgreSQL.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestDb};
use serde_json::{json, Value};

both_backends!(revocation_acknowledged_before_sigkill_survives_restart);

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
    let mut child = command(db)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--issuer",
            "https://issuer.test",
        ])
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
