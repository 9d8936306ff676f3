//! `report_only`: the filter decides and counts but lets every request through, marking the ones it
//! would have refused with `x-edgewarden-report-only: <reason> <status>` for the upstream.

use edgewarden_e2e::{echo, Stack, TestKey, TokenBuilder};
use serde_json::json;

use crate::config_with;

const HEADER: &str = "x-edgewarden-report-only";

#[tokio::test]
async fn report_only_lets_refusals_through_with_a_header_saying_why() {
    let stack = Stack::start(config_with("report_only", json!(true))).await;

    let expired = TokenBuilder::new(TestKey::Es256A)
        .scope("read")
        .claim("iat", edgewarden_e2e::now() - 7200)
        .expires_in(-3600)
        .sign();
    let seen = echo(
        stack
            .get_with_token("/read", &expired)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header(HEADER).as_deref(), Some("expired 401"));

    let seen = echo(stack.get("/read").send().await.unwrap()).await;
    assert_eq!(seen.header(HEADER).as_deref(), Some("missing_token 401"));

    let reader = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let seen = echo(
        stack
            .get_with_token("/admin", &reader)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        seen.header(HEADER).as_deref(),
        Some("insufficient_scope 403")
    );

    // A request that passes on its own merits carries no mark, even a spoofed one.
    let seen = echo(
        stack
            .get_with_token("/read", &reader)
            .header(HEADER, "forged")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header(HEADER), None);
    assert_eq!(seen.header("x-jwt-sub").as_deref(), Some("alice"));

    assert_eq!(stack.filter_counter("report_only_would_deny").await, 3);
    assert_eq!(
        stack.filter_counter("report_only_would_deny.expired").await,
        1
    );
    assert_eq!(stack.filter_counter("requests_denied.expired").await, 0);
}
