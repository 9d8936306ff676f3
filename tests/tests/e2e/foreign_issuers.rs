//! Revocation for every issuer the edge trusts (issue 15): a token of a foreign identity provider is
//! revoked through the admin API, by presenting it or by its subject under that issuer, and the edge
//! refuses it; a subject revoked under one issuer leaves the same name under another issuer alone.

use std::time::Duration;

use edgewarden_e2e::{
    eventually, jwks, AdminApi, Stack, TestKey, TokenBuilder, AUDIENCE, CONTROL_PLANE_CLUSTER,
    EDGE_NAME, JWKS_PATH,
};
use serde_json::{json, Value};

/// The foreign identity provider (think Keycloak) whose tokens the edge also accepts.
const FOREIGN: &str = "https://idp.foreign.e2e.edgewarden.test";
/// How long the edge may take to apply a revocation here (the control-plane tests hold it to 2 s).
const BOUND: Duration = Duration::from_secs(6);

fn config(admin: &AdminApi) -> Value {
    json!({
        "issuers": [
            {"issuer": admin.issuer(), "audiences": [AUDIENCE],
             "remote_jwks": {"cluster": CONTROL_PLANE_CLUSTER, "path": JWKS_PATH}},
            {"issuer": FOREIGN, "audiences": [AUDIENCE], "jwks": jwks(&[TestKey::Es256B])},
        ],
        "control_plane": {"cluster": CONTROL_PLANE_CLUSTER, "api_key": admin.edge_key, "edge_name": EDGE_NAME},
        "revocation": {"poll_interval_ms": 200, "max_staleness_seconds": 4, "on_stale": "deny", "long_poll_seconds": 5},
        "realm": "e2e",
        "rules": [{"match": {"prefix": "/read"}, "require_scopes": ["read"]}],
    })
}

fn foreign_token(subject: &str) -> String {
    TokenBuilder::new(TestKey::Es256B)
        .claim("iss", FOREIGN)
        .subject(subject)
        .scope("read")
        .sign()
}

async fn status(stack: &Stack, token: &str) -> (u16, String) {
    let response = stack
        .get_with_token("/read", token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /read through envoy failed: {e}"));
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, challenge)
}

async fn wait_status(stack: &Stack, token: &str, want: u16, what: &str) {
    eventually(what, BOUND, || async {
        let got = status(stack, token).await;
        if got.0 == want && (want != 401 || got.1.contains("token revoked")) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_foreign_issuers_token_is_revoked_by_presenting_it_and_by_its_subject_under_that_issuer()
{
    let admin = AdminApi::start().await;
    admin
        .call(
            reqwest::Method::POST,
            "/api/v1/issuers",
            &admin.admin_key,
            Some(&json!({"issuer": FOREIGN, "jwks": jwks(&[TestKey::Es256B])})),
        )
        .await
        .expect(201, "register the foreign issuer");
    let stack = Stack::start_with_control_plane(config(&admin), admin.addr).await;

    let leaked = foreign_token("erin");
    wait_status(
        &stack,
        &leaked,
        200,
        "the foreign token passes once the edge has synced",
    )
    .await;
    admin
        .call(
            reqwest::Method::POST,
            "/api/v1/revocations",
            &admin.admin_key,
            Some(&json!({"token": leaked, "reason": "leaked in a paste"})),
        )
        .await
        .expect(201, "revoke the foreign token by presenting it");
    wait_status(
        &stack,
        &leaked,
        401,
        "the presented foreign token is refused as revoked",
    )
    .await;

    // `carol` exists at both issuers: revoking the foreign carol leaves the admin API's carol alone.
    let own_carol = admin.issue_for("carol").await;
    let foreign_carol = foreign_token("carol");
    wait_status(
        &stack,
        &own_carol.access_token,
        200,
        "the admin API's carol passes",
    )
    .await;
    wait_status(&stack, &foreign_carol, 200, "the foreign carol passes").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // iat strictly before revoked_at
    admin
        .call(
            reqwest::Method::POST,
            "/api/v1/revocations",
            &admin.admin_key,
            Some(&json!({"subject": "carol", "issuer": FOREIGN, "reason": "account closed at the idp"})),
        )
        .await
        .expect(201, "revoke carol under the foreign issuer");
    wait_status(&stack, &foreign_carol, 401, "the foreign carol is refused").await;
    let own = status(&stack, &own_carol.access_token).await;
    assert_eq!(own.0, 200, "the admin API's carol must still pass: {own:?}");
}
