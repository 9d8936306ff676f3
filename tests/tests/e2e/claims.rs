//! What the upstream receives: forwarded claim headers on success, never a client-sent copy of them,
//! anonymous routes without any token, the secure default for unmatched routes, and `strip_token`.

use edgewarden_e2e::{echo, Stack, TestKey, TokenBuilder};
use serde_json::json;

use crate::{base_config, config_with};

#[tokio::test]
async fn claim_headers_reach_the_upstream() {
    let stack = Stack::start(base_config()).await;
    let token = TokenBuilder::new(TestKey::Es256A)
        .subject("alice")
        .scope("read write")
        .sign();
    let seen = echo(stack.get_with_token("/read", &token).send().await.unwrap()).await;
    assert_eq!(seen.header("x-jwt-sub").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-jwt-scope").as_deref(), Some("read write"));
    // strip_token defaults to false: the credential goes on to the upstream.
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}"))
    );
}

#[tokio::test]
async fn spoofed_claim_headers_are_removed() {
    let stack = Stack::start(base_config()).await;
    let token = TokenBuilder::new(TestKey::Es256A)
        .subject("alice")
        .scope("read")
        .sign();
    let seen = echo(
        stack
            .get_with_token("/read", &token)
            .header("x-jwt-sub", "mallory")
            .header("x-jwt-scope", "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header_values("x-jwt-sub"), vec!["alice".to_string()]);
    assert_eq!(seen.header_values("x-jwt-scope"), vec!["read".to_string()]);

    // On an anonymous route there is no token, so no claim header may arrive at all.
    let seen = echo(
        stack
            .get("/public/page")
            .header("x-jwt-sub", "mallory")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        seen.header_values("x-jwt-sub").is_empty(),
        "spoofed header reached the upstream on an anonymous route"
    );
}

#[tokio::test]
async fn anonymous_routes_need_no_token() {
    let stack = Stack::start(base_config()).await;
    let seen = echo(stack.get("/public/hello?x=1").send().await.unwrap()).await;
    assert_eq!(seen.path(), "/public/hello?x=1");
    assert_eq!(stack.upstream.hits(), 1);
}

#[tokio::test]
async fn unmatched_routes_require_a_valid_token() {
    let stack = Stack::start(base_config()).await;
    let response = stack.get("/somewhere/else").send().await.unwrap();
    assert_eq!(response.status(), 401);
    let token = TokenBuilder::new(TestKey::Es256A).sign();
    let response = stack
        .get_with_token("/somewhere/else", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn method_rules_apply_only_to_their_methods() {
    let config = config_with(
        "rules",
        json!([
            {"match": {"prefix": "/docs", "methods": ["GET"]}, "allow_anonymous": true},
            {"match": {"prefix": "/docs"}, "require_scopes": ["write"]},
        ]),
    );
    let stack = Stack::start(config).await;
    let get = stack.get("/docs/a").send().await.unwrap();
    assert_eq!(get.status(), 200);
    let delete = stack
        .client()
        .delete(stack.url("/docs/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 401);
    let reader = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let delete = stack
        .client()
        .delete(stack.url("/docs/a"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 403);
}

#[tokio::test]
async fn strip_token_removes_the_credential_before_the_upstream() {
    let stack = Stack::start(config_with("strip_token", json!(true))).await;
    let token = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let seen = echo(stack.get_with_token("/read", &token).send().await.unwrap()).await;
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-jwt-sub").as_deref(), Some("alice"));
}
