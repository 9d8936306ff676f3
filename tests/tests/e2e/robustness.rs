//! Inputs that once took the filter's VM down, and with it every later request on that worker: a request
//! header value that is not UTF-8 (the proxy-wasm SDK's text header API panics on it) and a callout that
//! fails without a response (Envoy refuses answers over 32 MiB; asking for the `:status` of such a call
//! made the SDK panic). Each must get an answer, and the next ordinary request must still be served.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use edgewarden_e2e::{Stack, TestKey, TokenBuilder};
use serde_json::json;

use crate::base_config;

/// Sends one raw HTTP/1.1 request (async: the echo upstream runs on this test's runtime) and returns the
/// status line.
async fn raw_status(stack: &Stack, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(stack.listener)
        .await
        .expect("connect to envoy");
    conn.write_all(request).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("an answer within 10 s")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().unwrap_or_default().to_string()
}

fn assert_no_panic(stack: &Stack) {
    let log = stack.envoy_log();
    assert!(
        !log.contains("panicked") && !log.contains("RuntimeError"),
        "the filter's VM failed; envoy log:\n{log}"
    );
}

#[tokio::test]
async fn header_values_that_are_not_utf8_are_answered_and_the_vm_survives() {
    let stack = Stack::start(base_config()).await;
    let token = TokenBuilder::new(TestKey::Es256A).sign();
    let valid = format!(
        "GET /api HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer {token}\r\nX-Evil: café\r\n\r\n"
    )
    .into_bytes();
    let mut with_latin1 =
        format!("GET /api HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer {token}\r\nX-Evil: caf")
            .into_bytes();
    with_latin1.extend_from_slice(b"\xe9\xff\r\n\r\n");
    let mut bad_credential = b"GET /api HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer ".to_vec();
    bad_credential.extend_from_slice(b"\xff\xfe.\xfd.\xfc\r\n\r\n");

    let status = raw_status(&stack, &valid).await;
    assert!(status.contains(" 200 "), "{status}");
    for _ in 0..3 {
        let status = raw_status(&stack, &with_latin1).await;
        assert!(
            status.contains(" 200 "),
            "a stray byte elsewhere is none of the filter's business: {status}"
        );
        let status = raw_status(&stack, &bad_credential).await;
        assert!(
            status.contains(" 401 "),
            "a credential that is not text is refused: {status}"
        );
    }
    let after = stack.get_with_token("/api", &token).send().await.unwrap();
    assert_eq!(after.status(), 200, "later requests are still served");
    assert_no_panic(&stack);
}

#[tokio::test]
async fn a_key_set_answer_over_envoys_limit_is_a_failed_fetch_not_a_dead_vm() {
    // 34 MB: more than Envoy's 32 MiB limit on a callout's answer, so Envoy delivers the call with no
    // response at all.
    let huge = json!({"keys": [], "padding": "x".repeat(34 * 1024 * 1024)});
    let mut config = base_config();
    config["issuers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"issuer": "https://remote.e2e", "remote_jwks": Stack::remote_jwks()}));
    let stack = Stack::start_with_jwks(config, huge).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.filter_counter("jwks_fetch_failures").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the oversized fetch never failed; log:\n{}",
            stack.envoy_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = TokenBuilder::new(TestKey::Es256A).sign();
    let response = stack.get_with_token("/api", &token).send().await.unwrap();
    assert_eq!(response.status(), 200, "the inline issuer still works");
    // Envoy drops the oversized answer (no response); on a loaded machine its callout timeout may
    // fire first (504). Either way the fetch failed and is logged as a failure, and the VM lives.
    let log = stack.envoy_log();
    assert!(
        log.contains("no response") || log.contains("status 504"),
        "the failure is logged as such; log:\n{log}"
    );
    assert_no_panic(&stack);
}
