//! Remote JWKS through an Envoy cluster, and a key rotation in the middle of steady traffic:
//! the JWKS server starts publishing a new key and tokens signed with it are accepted at once
//! (the filter refetches on an unknown `kid`), with not one failed request during the switch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgewarden_e2e::{jwks, Stack, TestKey, TokenBuilder, AUDIENCE, ISSUER};
use serde_json::{json, Value};

fn remote_config() -> Value {
    let mut remote = Stack::remote_jwks();
    remote["min_refetch_interval_seconds"] = json!(1);
    json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "remote_jwks": remote}],
        "forward_claims": [{"claim": "sub", "header": "x-jwt-sub"}],
    })
}

#[tokio::test]
async fn remote_jwks_keys_verify_tokens() {
    let stack = Stack::start_with_jwks(remote_config(), jwks(&[TestKey::Es256A])).await;
    let token = TokenBuilder::new(TestKey::Es256A).sign();
    let response = stack.get_with_token("/", &token).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert!(stack.jwks.fetches() >= 1);
    // A key the server does not publish stays unknown.
    let stranger = TokenBuilder::new(TestKey::Es256B).sign();
    let response = stack.get_with_token("/", &stranger).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn key_rotation_mid_traffic_fails_no_request() {
    let stack = Arc::new(Stack::start_with_jwks(remote_config(), jwks(&[TestKey::Es256A])).await);
    let old = TokenBuilder::new(TestKey::Es256A).subject("old-key").sign();
    let new = TokenBuilder::new(TestKey::Es256B).subject("new-key").sign();
    let first = stack.get_with_token("/", &old).send().await.unwrap();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    // Let the initial fetch age past min_refetch_interval_seconds so the rotation may refetch.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let rotated = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stack, rotated, stop, sent, failures) = (
            Arc::clone(&stack),
            Arc::clone(&rotated),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&failures),
        );
        let (old, new) = (old.clone(), new.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                // After the switch, alternate old and new tokens: both keys are published.
                let use_new = rotated.load(Ordering::SeqCst) && i % 2 == 0;
                let token = if use_new { &new } else { &old };
                let result = stack.get_with_token("/", token).send().await;
                sent.fetch_add(1, Ordering::SeqCst);
                match result {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        failures.lock().unwrap().push(format!(
                            "{} token: {status} {body}",
                            if use_new { "new" } else { "old" }
                        ));
                    }
                    Err(e) => failures.lock().unwrap().push(format!("transport: {e}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_rotation = sent.load(Ordering::SeqCst);
    stack.jwks.set(jwks(&[TestKey::Es256A, TestKey::Es256B]));
    rotated.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let total = sent.load(Ordering::SeqCst);
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed around the rotation, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        total > before_rotation + 50,
        "too little traffic after the rotation to prove anything: {before_rotation} before, {total} in all"
    );
    // The new key really is in use.
    let seen = edgewarden_e2e::echo(stack.get_with_token("/", &new).send().await.unwrap()).await;
    assert_eq!(seen.header("x-jwt-sub").as_deref(), Some("new-key"));
}
