//! Token sources other than `Authorization: Bearer`: a cookie, a query parameter and a custom header,
//! each with `strip_token` removing only the credential and keeping the rest of the request intact.

use edgewarden_e2e::{echo, Stack, TestKey, TokenBuilder};
use serde_json::json;

use crate::base_config;

fn config(source: serde_json::Value, strip: bool) -> serde_json::Value {
    let mut c = base_config();
    c["token_source"] = source;
    c["strip_token"] = json!(strip);
    c
}

#[tokio::test]
async fn cookie_token_is_accepted_and_stripped_alone() {
    let stack = Stack::start(config(json!({"cookie": "session"}), true)).await;
    let token = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let seen = echo(
        stack
            .get("/read")
            .header("cookie", format!("theme=dark; session={token}; lang=en"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header("x-jwt-sub").as_deref(), Some("alice"));
    let cookies = seen.header_values("cookie").join("; ");
    assert!(
        !cookies.contains(&token),
        "token cookie reached the upstream"
    );
    assert!(
        cookies.contains("theme=dark"),
        "other cookies lost: {cookies}"
    );
    assert!(cookies.contains("lang=en"), "other cookies lost: {cookies}");

    // A bearer header is not this configuration's source.
    let response = stack.get_with_token("/read", &token).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn query_token_is_accepted_and_stripped_alone() {
    let stack = Stack::start(config(json!({"query": "access_token"}), true)).await;
    let token = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let seen = echo(
        stack
            .get(&format!("/read/item?x=1&access_token={token}&y=2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let path = seen.path();
    assert!(!path.contains(&token), "token reached the upstream: {path}");
    assert!(path.starts_with("/read/item?"), "{path}");
    assert!(path.contains("x=1") && path.contains("y=2"), "{path}");
    let response = stack.get("/read/item?x=1").send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn custom_header_token_is_accepted_and_stripped() {
    let stack = Stack::start(config(json!({"header": "x-edge-token"}), true)).await;
    let token = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let seen = echo(
        stack
            .get("/read")
            .header("x-edge-token", &token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header("x-edge-token"), None);
    assert_eq!(seen.header("x-jwt-sub").as_deref(), Some("alice"));
}
