//! Component tests of the admin API through `app().oneshot(...)`, each run on SQLite and on PostgreSQL.

mod common;

use axum::http::{header, Method, StatusCode};
use common::{basic, decode_jwt, Backend, TestApp};
use edgewarden_admin::auth::Role;
use serde_json::{json, Value};

both_backends!(
    discovery_documents_are_public_and_describe_the_issuer,
    requests_without_or_with_unknown_credentials_get_401_in_the_error_shape,
    issued_token_is_an_rfc9068_jwt_that_verifies_against_the_published_jwks,
    issuance_outside_the_client_registration_is_400_naming_the_field,
    malformed_json_is_400_naming_the_field,
    service_key_issues_only_for_its_own_client,
    revoked_jti_is_in_the_feed_and_introspects_inactive,
    feed_gives_snapshot_then_delta_and_304_when_unchanged,
    feed_long_poll_returns_as_soon_as_a_revocation_lands,
    subject_revocation_covers_earlier_tokens_but_not_later_ones,
    client_revocation_is_404_for_unknown_clients_and_covers_its_tokens,
    revocation_requires_exactly_one_target_and_a_reason,
    key_rotation_keeps_the_retired_key_published_while_its_tokens_live,
    client_credentials_grant_works_with_basic_and_post_authentication,
    wrong_client_secret_is_invalid_client_401,
    refresh_token_rotates_on_every_use,
    service_key_refreshes_for_its_own_client_only,
    refresh_token_reuse_revokes_the_family_and_raises_an_anomaly,
    oauth_revoke_of_a_refresh_token_revokes_the_access_tokens_it_produced,
    introspection_reveals_nothing_about_inactive_or_foreign_tokens,
    clients_crud_with_conflict_and_not_found,
    deleted_api_key_is_refused,
    token_records_list_by_status_and_never_contain_the_token,
    eddsa_and_rs256_keys_sign_verifiable_tokens,
);

async fn discovery_documents_are_public_and_describe_the_issuer(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.get("/healthz", None).await.expect(StatusCode::OK);
    let jwks = app
        .get("/.well-known/jwks.json", None)
        .await
        .expect(StatusCode::OK)
        .body;
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["alg"], "ES256");
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["use"], "sig");
    assert!(
        keys[0].get("d").is_none(),
        "private part must never be published"
    );
    let meta = app
        .get("/.well-known/oauth-authorization-server", None)
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(meta["issuer"], "https://issuer.test");
    assert_eq!(meta["token_endpoint"], "https://issuer.test/oauth/token");
    assert_eq!(
        meta["jwks_uri"],
        "https://issuer.test/.well-known/jwks.json"
    );
    assert_eq!(
        meta["grant_types_supported"],
        json!(["client_credentials", "refresh_token"])
    );
}

async fn requests_without_or_with_unknown_credentials_get_401_in_the_error_shape(backend: Backend) {
    let app = TestApp::start(backend).await;
    let answer = app
        .get("/api/v1/clients", None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    assert_eq!(answer.code(), "unauthorized");
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing credentials"));
    assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
    let answer = app
        .get("/api/v1/clients", Some("ewk_not-a-real-key"))
        .await
        .expect(StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.body["error"]["message"],
        "unknown or deleted api key"
    );
    let answer = app
        .get("/api/v1/nothing-here", Some(&app.admin_key))
        .await
        .expect(StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "not_found");
}

async fn issued_token_is_an_rfc9068_jwt_that_verifies_against_the_published_jwks(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read", "write"], &["clerk"]).await;
    let answer = app
        .post(
            "/api/v1/tokens",
            Some(&app.admin_key),
            json!({"subject": "alice", "client_id": "billing", "scopes": ["read"], "roles": ["clerk"], "audience": "api://other", "ttl_seconds": 300, "refresh": true}),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let keys: Vec<&str> = answer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys.len(),
        5,
        "exactly access_token, token_type, expires_in, refresh_token, jti: {answer}"
    );
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 300);
    assert!(answer["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("ewr_"));
    let token = answer["access_token"].as_str().unwrap();
    let (header, claims) = decode_jwt(token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["iss"], "https://issuer.test");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "api://other");
    assert_eq!(claims["client_id"], "billing");
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["roles"], json!(["clerk"]));
    assert_eq!(claims["jti"], answer["jti"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );

    // An edge configured with the published JWKS accepts it: the same engine the filter runs.
    let jwks = app.get("/.well-known/jwks.json", None).await.body;
    let config = json!({"issuers": [{"issuer": "https://issuer.test", "audiences": ["api://other"], "jwks": jwks}], "allowed_typ": ["at+jwt"]});
    let engine =
        edgewarden_core::engine::Engine::from_json(config.to_string().as_bytes()).expect("engine");
    let verified = engine
        .verify(token, edgewarden_admin::db::now() as u64)
        .expect("token verifies at the edge");
    assert_eq!(verified.sub.as_deref(), Some("alice"));
    assert_eq!(verified.scopes, vec!["read".to_owned()]);

    let intro = app.introspect(token).await;
    assert_eq!(intro["active"], true);
    assert_eq!(intro["sub"], "alice");
    assert_eq!(intro["client_id"], "billing");
    assert_eq!(intro["scope"], "read");
}

async fn issuance_outside_the_client_registration_is_400_naming_the_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let cases = [
        (
            json!({"subject": "a", "client_id": "billing", "scopes": ["read", "admin"]}),
            "scopes[1]",
        ),
        (
            json!({"subject": "a", "client_id": "billing", "roles": ["root"]}),
            "roles[0]",
        ),
        (
            json!({"subject": "a", "client_id": "billing", "ttl_seconds": 7201}),
            "ttl_seconds",
        ),
        (
            json!({"subject": "a", "client_id": "billing", "ttl_seconds": 0}),
            "ttl_seconds",
        ),
        (
            json!({"subject": "a", "client_id": "billing", "audience": "api://unknown"}),
            "audience",
        ),
        (json!({"subject": "a", "client_id": "nobody"}), "client_id"),
        (json!({"subject": "", "client_id": "billing"}), "subject"),
    ];
    for (body, field) in cases {
        let answer = app
            .post("/api/v1/tokens", Some(&app.admin_key), body.clone())
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["error"]["field"], field,
            "{body}: {}",
            answer.body
        );
        assert_eq!(answer.code(), "invalid_request");
    }
}

async fn malformed_json_is_400_naming_the_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    let answer = app
        .post(
            "/api/v1/tokens",
            Some(&app.admin_key),
            json!({"client_id": "x", "subject": "a", "scopes": ["ok", 7]}),
        )
        .await;
    let answer = answer.expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["field"], "scopes[1]");
    let answer = app
        .post(
            "/api/v1/tokens",
            Some(&app.admin_key),
            json!({"client_id": "x"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["field"], "subject");
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing field"));
    let answer = app
        .post(
            "/api/v1/tokens",
            Some(&app.admin_key),
            json!({"client_id": "x", "subject": "a", "colour": 1}),
        )
        .await;
    assert_eq!(
        answer.expect(StatusCode::BAD_REQUEST).body["error"]["field"],
        "colour"
    );
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/revocations")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.admin_key))
        .header(header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    let answer = app.call(request).await.expect(StatusCode::BAD_REQUEST);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("body is not valid json"));
    let answer = app
        .get("/api/v1/revocations/feed?since=abc", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["field"], "since");
}

async fn service_key_issues_only_for_its_own_client(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    app.client("shipping", &["read"], &[]).await;
    let key = app.api_key(Role::Service, Some("billing")).await;
    let body = |client: &str| json!({"subject": "svc", "client_id": client, "scopes": ["read"]});
    app.post("/api/v1/tokens", Some(&key), body("billing"))
        .await
        .expect(StatusCode::OK);
    let answer = app
        .post("/api/v1/tokens", Some(&key), body("shipping"))
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(answer.code(), "forbidden");
    let edge = app.api_key(Role::Edge, None).await;
    app.post("/api/v1/tokens", Some(&edge), body("billing"))
        .await
        .expect(StatusCode::FORBIDDEN);
}

async fn revoked_jti_is_in_the_feed_and_introspects_inactive(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let issued = app.issue("alice", "billing", &["read"], false).await;
    let token = issued["access_token"].as_str().unwrap();
    let jti = issued["jti"].as_str().unwrap();
    assert_eq!(app.introspect(token).await["active"], true);
    let revocation = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"jti": jti, "reason": "laptop stolen"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(revocation["kind"], "jti");
    assert_eq!(revocation["reason"], "laptop stolen");
    assert!(revocation["actor"]
        .as_str()
        .unwrap()
        .starts_with("api_key:"));
    let intro = app.introspect(token).await;
    assert_eq!(
        intro,
        json!({"active": false}),
        "inactive reveals nothing else"
    );
    let edge = app.api_key(Role::Edge, None).await;
    let feed = app
        .get("/api/v1/revocations/feed?since=0", Some(&edge))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(feed["full"], true);
    assert_eq!(feed["revoked_jtis"][0]["jti"], jti);
    assert_eq!(feed["revoked_jtis"][0]["exp"], decode_jwt(token).1["exp"]);
    let record = app
        .get(&format!("/api/v1/tokens/{jti}"), Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(record["status"], "revoked");
    assert_eq!(record["revoke_reason"], "laptop stolen");
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": "no-such-jti", "reason": "x"}),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
}

async fn feed_gives_snapshot_then_delta_and_304_when_unchanged(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    let edge = app.api_key(Role::Edge, None).await;
    let empty = app
        .get("/api/v1/revocations/feed?since=0", Some(&edge))
        .await
        .expect(StatusCode::OK);
    assert_eq!(empty.body["cursor"], 0);
    assert_eq!(empty.body["full"], true);
    let a = app.issue("alice", "billing", &[], false).await;
    let b = app.issue("bob", "billing", &[], false).await;
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": a["jti"], "reason": "one"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let first = app
        .get("/api/v1/revocations/feed?since=0", Some(&edge))
        .await
        .expect(StatusCode::OK);
    let cursor = first.body["cursor"].as_i64().unwrap();
    assert_eq!(cursor, 1);
    assert_eq!(first.headers[header::ETAG], "\"c1\"");
    // Unchanged with a matching ETag: 304 and no body.
    let request = axum::http::Request::builder()
        .uri(format!("/api/v1/revocations/feed?since={cursor}"))
        .header(header::AUTHORIZATION, format!("Bearer {edge}"))
        .header(header::IF_NONE_MATCH, "\"c1\"")
        .body(axum::body::Body::empty())
        .unwrap();
    let not_modified = app.call(request).await.expect(StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.body, Value::Null);
    // Unchanged without a tag: an empty delta.
    let same = app
        .get(
            &format!("/api/v1/revocations/feed?since={cursor}"),
            Some(&edge),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(same.body["full"], false);
    assert_eq!(same.body["revoked_jtis"], json!([]));
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": b["jti"], "reason": "two"}),
    )
    .await
    .expect(StatusCode::CREATED);
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"subject": "carol", "reason": "left"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let delta = app
        .get(
            &format!("/api/v1/revocations/feed?since={cursor}"),
            Some(&edge),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(delta["full"], false);
    assert_eq!(delta["cursor"], 3);
    assert_eq!(
        delta["revoked_jtis"].as_array().unwrap().len(),
        1,
        "only the change after the cursor: {delta}"
    );
    assert_eq!(delta["revoked_jtis"][0]["jti"], b["jti"]);
    assert_eq!(delta["revoked_subjects"][0]["subject"], "carol");
    // A cursor this database never produced yields a full snapshot.
    let unknown = app
        .get("/api/v1/revocations/feed?since=999", Some(&edge))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(unknown["full"], true);
    assert_eq!(unknown["revoked_jtis"].as_array().unwrap().len(), 2);
    // Edges that name themselves are tracked.
    let request = axum::http::Request::builder()
        .uri("/api/v1/revocations/feed?since=3")
        .header(header::AUTHORIZATION, format!("Bearer {edge}"))
        .header("x-edgewarden-edge", "edge-1")
        .body(axum::body::Body::empty())
        .unwrap();
    app.call(request).await.expect(StatusCode::OK);
    let edges = app.state.feed.edges();
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0].name, "edge-1");
    assert_eq!(edges[0].cursor, 3);
}

async fn feed_long_poll_returns_as_soon_as_a_revocation_lands(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let issued = app.issue("alice", "billing", &[], false).await;
    let edge = app.api_key(Role::Edge, None).await;
    let started = std::time::Instant::now();
    let waiting = {
        let router = app.router.clone();
        let edge = edge.clone();
        tokio::spawn(async move {
            use tower::ServiceExt as _;
            let request = axum::http::Request::builder()
                .uri("/api/v1/revocations/feed?since=0&wait=20")
                .header(header::AUTHORIZATION, format!("Bearer {edge}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "long-poll must wait while nothing changed"
    );
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": issued["jti"], "reason": "now"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(body["revoked_jtis"][0]["jti"], issued["jti"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

async fn subject_revocation_covers_earlier_tokens_but_not_later_ones(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let before = app.issue("alice", "billing", &[], true).await;
    let other = app.issue("bob", "billing", &[], false).await;
    let revocation = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"subject": "alice", "reason": "account closed"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert!(
        revocation["expires_at"].as_i64().unwrap()
            >= decode_jwt(before["access_token"].as_str().unwrap()).1["exp"]
                .as_i64()
                .unwrap()
    );
    assert_eq!(
        app.introspect(before["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    assert_eq!(
        app.introspect(other["access_token"].as_str().unwrap())
            .await["active"],
        true
    );
    // Its refresh token died with it.
    let secret_less = app
        .introspect(before["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(secret_less, json!({"active": false}));
    // Tokens issued in a later second are not covered.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let after = app.issue("alice", "billing", &[], false).await;
    assert_eq!(
        app.introspect(after["access_token"].as_str().unwrap())
            .await["active"],
        true
    );
}

async fn client_revocation_is_404_for_unknown_clients_and_covers_its_tokens(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    app.client("shipping", &[], &[]).await;
    let a = app.issue("alice", "billing", &[], false).await;
    let b = app.issue("alice", "shipping", &[], false).await;
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"client_id": "nobody", "reason": "x"}),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"client_id": "billing", "reason": "compromised"}),
    )
    .await
    .expect(StatusCode::CREATED);
    assert_eq!(
        app.introspect(a["access_token"].as_str().unwrap()).await["active"],
        false
    );
    assert_eq!(
        app.introspect(b["access_token"].as_str().unwrap()).await["active"],
        true
    );
    let feed = app
        .get("/api/v1/revocations/feed?since=0", Some(&app.admin_key))
        .await
        .body;
    assert_eq!(feed["revoked_clients"][0]["client_id"], "billing");
    let list = app
        .get("/api/v1/revocations?kind=client", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(list["total"], 1);
}

async fn revocation_requires_exactly_one_target_and_a_reason(backend: Backend) {
    let app = TestApp::start(backend).await;
    let answer = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"reason": "x"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exactly one"));
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": "a", "subject": "b", "reason": "x"}),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    let answer = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"subject": "b"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"]["field"], "reason");
    let auditor = app.api_key(Role::Auditor, None).await;
    app.post(
        "/api/v1/revocations",
        Some(&auditor),
        json!({"subject": "b", "reason": "x"}),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
}

async fn key_rotation_keeps_the_retired_key_published_while_its_tokens_live(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let old = app.issue("alice", "billing", &[], false).await;
    let old_kid = decode_jwt(old["access_token"].as_str().unwrap()).0["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotated = app
        .post("/api/v1/keys/rotate", Some(&app.admin_key), json!({}))
        .await
        .expect(StatusCode::OK)
        .body;
    let new_kid = rotated["kid"].as_str().unwrap();
    assert_ne!(new_kid, old_kid);
    let new = app.issue("alice", "billing", &[], false).await;
    assert_eq!(
        decode_jwt(new["access_token"].as_str().unwrap()).0["kid"],
        new_kid
    );
    let jwks = app.get("/.well-known/jwks.json", None).await.body;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid),
        "{kids:?}"
    );
    assert_eq!(
        app.introspect(old["access_token"].as_str().unwrap()).await["active"],
        true
    );
    assert_eq!(
        app.introspect(new["access_token"].as_str().unwrap()).await["active"],
        true
    );
    let keys = app
        .get("/api/v1/keys", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert_eq!(keys[0]["status"], "active");
    assert_eq!(keys[1]["status"], "retired");
    // Once the old key's tokens are gone (and the grace period has passed), it leaves the JWKS.
    sqlx::query("UPDATE tokens SET expires_at = 1 WHERE kid = $1")
        .bind(&old_kid)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE signing_keys SET retired_at = 1 WHERE kid = $1")
        .bind(&old_kid)
        .execute(&app.state.db.pool)
        .await
        .unwrap();
    app.state.keys.reload(&app.state.db).await.unwrap();
    let jwks = app.get("/.well-known/jwks.json", None).await.body;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], new_kid);
}

async fn client_credentials_grant_works_with_basic_and_post_authentication(backend: Backend) {
    let app = TestApp::start(backend).await;
    let secret = app.client("billing", &["read", "write"], &[]).await;
    let answer = app
        .form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[("grant_type", "client_credentials"), ("scope", "read")],
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.body["scope"], "read");
    assert!(answer.body.get("refresh_token").is_none());
    let claims = decode_jwt(answer.body["access_token"].as_str().unwrap()).1;
    assert_eq!(claims["sub"], "billing");
    assert_eq!(claims["client_id"], "billing");
    let answer = app
        .form(
            "/oauth/token",
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "billing"),
                ("client_secret", &secret),
            ],
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(answer.body["scope"], "read write");
    let answer = app
        .form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[("grant_type", "client_credentials"), ("scope", "admin")],
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "invalid_scope");
    let answer = app
        .form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[("grant_type", "password")],
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "unsupported_grant_type");
}

async fn wrong_client_secret_is_invalid_client_401(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let answer = app
        .form(
            "/oauth/token",
            Some(&basic("billing", "ews_wrong")),
            &[("grant_type", "client_credentials")],
        )
        .await
        .expect(StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body["error"], "invalid_client");
    assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
    let answer = app
        .form(
            "/oauth/token",
            None,
            &[("grant_type", "client_credentials")],
        )
        .await
        .expect(StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body["error"], "invalid_client");
}

async fn refresh_token_rotates_on_every_use(backend: Backend) {
    let app = TestApp::start(backend).await;
    let secret = app.client("billing", &["read", "write"], &[]).await;
    let first = app
        .issue("alice", "billing", &["read", "write"], true)
        .await;
    let mut refresh = first["refresh_token"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let answer = app
            .form(
                "/oauth/token",
                Some(&basic("billing", &secret)),
                &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            )
            .await
            .expect(StatusCode::OK);
        let next = answer.body["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(next, refresh, "refresh tokens rotate");
        assert_eq!(
            decode_jwt(answer.body["access_token"].as_str().unwrap()).1["sub"],
            "alice"
        );
        refresh = next;
    }
    // Narrowing is allowed, widening is not.
    let answer = app
        .form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("scope", "read"),
            ],
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(answer.body["scope"], "read");
    // Another client cannot use it.
    let other = app.client("shipping", &["read"], &[]).await;
    let next = answer.body["refresh_token"].as_str().unwrap();
    let answer = app
        .form(
            "/oauth/token",
            Some(&basic("shipping", &other)),
            &[("grant_type", "refresh_token"), ("refresh_token", next)],
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "invalid_grant");
}

async fn refresh_token_reuse_revokes_the_family_and_raises_an_anomaly(backend: Backend) {
    let app = TestApp::start(backend).await;
    let secret = app.client("billing", &["read"], &[]).await;
    let first = app.issue("alice", "billing", &["read"], true).await;
    let spent = first["refresh_token"].as_str().unwrap().to_owned();
    let second = app
        .form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[("grant_type", "refresh_token"), ("refresh_token", &spent)],
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let reuse = app
        .form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[("grant_type", "refresh_token"), ("refresh_token", &spent)],
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(reuse.body["error"], "invalid_grant");
    assert!(reuse.body["error_description"]
        .as_str()
        .unwrap()
        .contains("family"));
    // Every token of the family is dead: both access tokens and the current refresh token.
    assert_eq!(
        app.introspect(first["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    assert_eq!(
        app.introspect(second["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    let current = second["refresh_token"].as_str().unwrap();
    let answer = app
        .form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[("grant_type", "refresh_token"), ("refresh_token", current)],
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "invalid_grant");
    let feed = app
        .get("/api/v1/revocations/feed?since=0", Some(&app.admin_key))
        .await
        .body;
    let jtis: Vec<&Value> = feed["revoked_jtis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["jti"])
        .collect();
    assert!(jtis.contains(&&first["jti"]));
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM anomalies")
        .fetch_all(&app.state.db.pool)
        .await
        .unwrap();
    assert_eq!(kinds, vec!["refresh_token_reuse".to_owned()]);
    // A second family of the same subject reused while that anomaly is live adds to it (one live anomaly
    // per kind and subject), and its family is revoked all the same.
    let other = app.issue("alice", "billing", &["read"], true).await;
    let spent = other["refresh_token"].as_str().unwrap().to_owned();
    for expected in [StatusCode::OK, StatusCode::BAD_REQUEST] {
        app.form(
            "/oauth/token",
            Some(&basic("billing", &secret)),
            &[("grant_type", "refresh_token"), ("refresh_token", &spent)],
        )
        .await
        .expect(expected);
    }
    assert_eq!(
        app.introspect(other["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    let live: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, occurrences FROM anomalies WHERE kind = 'refresh_token_reuse'",
    )
    .fetch_all(&app.state.db.pool)
    .await
    .unwrap();
    assert_eq!(live, vec![("open".to_owned(), 2)]);
}

async fn oauth_revoke_of_a_refresh_token_revokes_the_access_tokens_it_produced(backend: Backend) {
    let app = TestApp::start(backend).await;
    let secret = app.client("billing", &[], &[]).await;
    let issued = app.issue("alice", "billing", &[], true).await;
    let refresh = issued["refresh_token"].as_str().unwrap();
    app.form(
        "/oauth/revoke",
        Some(&basic("billing", &secret)),
        &[("token", refresh), ("token_type_hint", "refresh_token")],
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(
        app.introspect(issued["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    assert_eq!(app.introspect(refresh).await["active"], false);
    // Unknown tokens get the same 200 (RFC 7009 2.2).
    app.form(
        "/oauth/revoke",
        Some(&basic("billing", &secret)),
        &[("token", "garbage")],
    )
    .await
    .expect(StatusCode::OK);
    // An access token revoked through RFC 7009 lands in the feed.
    let other = app.issue("bob", "billing", &[], false).await;
    app.form(
        "/oauth/revoke",
        Some(&basic("billing", &secret)),
        &[("token", other["access_token"].as_str().unwrap())],
    )
    .await
    .expect(StatusCode::OK);
    let feed = app
        .get("/api/v1/revocations/feed?since=0", Some(&app.admin_key))
        .await
        .body;
    assert!(feed["revoked_jtis"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["jti"] == other["jti"]));
    // Without client authentication: 401 invalid_client.
    app.form("/oauth/revoke", None, &[("token", "x")])
        .await
        .expect(StatusCode::UNAUTHORIZED);
}

async fn introspection_reveals_nothing_about_inactive_or_foreign_tokens(backend: Backend) {
    let app = TestApp::start(backend).await;
    let billing_secret = app.client("billing", &[], &[]).await;
    app.client("shipping", &[], &[]).await;
    let token = app.issue("alice", "shipping", &[], false).await;
    let token = token["access_token"].as_str().unwrap();
    // A client may introspect only its own tokens.
    let answer = app
        .form(
            "/oauth/introspect",
            Some(&basic("billing", &billing_secret)),
            &[("token", token)],
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(answer.body, json!({"active": false}));
    let service = app.api_key(Role::Service, Some("shipping")).await;
    let answer = app
        .form(
            "/oauth/introspect",
            Some(&format!("Bearer {service}")),
            &[("token", token)],
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(answer.body["active"], true);
    // Garbage, tampered and expired tokens are all just inactive.
    for bad in ["garbage", &format!("{token}x"), "ewr_unknown"] {
        assert_eq!(app.introspect(bad).await, json!({"active": false}), "{bad}");
    }
    let edge = app.api_key(Role::Edge, None).await;
    app.form(
        "/oauth/introspect",
        Some(&format!("Bearer {edge}")),
        &[("token", token)],
    )
    .await
    .expect(StatusCode::FORBIDDEN);
}

async fn clients_crud_with_conflict_and_not_found(backend: Backend) {
    let app = TestApp::start(backend).await;
    let secret = app.client("billing", &["read"], &[]).await;
    assert!(secret.starts_with("ews_"));
    let dup = app
        .post(
            "/api/v1/clients",
            Some(&app.admin_key),
            json!({"client_id": "billing"}),
        )
        .await
        .expect(StatusCode::CONFLICT);
    assert_eq!(dup.code(), "conflict");
    app.get("/api/v1/clients/nobody", Some(&app.admin_key))
        .await
        .expect(StatusCode::NOT_FOUND);
    let patched = app
        .json(
            Method::PATCH,
            "/api/v1/clients/billing",
            Some(&app.admin_key),
            Some(json!({"allowed_scopes": ["read", "write"]})),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(patched["allowed_scopes"], json!(["read", "write"]));
    let list = app
        .get("/api/v1/clients", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(list["total"], 1);
    assert!(list["items"][0].get("secret_hash").is_none());
    let rotated = app
        .post(
            "/api/v1/clients/billing/secret",
            Some(&app.admin_key),
            json!({}),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    let new_secret = rotated["client_secret"].as_str().unwrap();
    app.form(
        "/oauth/token",
        Some(&basic("billing", &secret)),
        &[("grant_type", "client_credentials")],
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);
    app.form(
        "/oauth/token",
        Some(&basic("billing", new_secret)),
        &[("grant_type", "client_credentials")],
    )
    .await
    .expect(StatusCode::OK);
    let token = app.issue("alice", "billing", &[], false).await;
    app.json(
        Method::DELETE,
        "/api/v1/clients/billing",
        Some(&app.admin_key),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    assert_eq!(
        app.introspect(token["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
    app.json(
        Method::DELETE,
        "/api/v1/clients/billing",
        Some(&app.admin_key),
        None,
    )
    .await
    .expect(StatusCode::NOT_FOUND);
    let bad = app
        .post(
            "/api/v1/clients",
            Some(&app.admin_key),
            json!({"client_id": "x", "allowed_scopes": ["has space"]}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "allowed_scopes[0]");
}

async fn deleted_api_key_is_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let created = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "auditor", "name": "ci"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    let key = created["key"].as_str().unwrap();
    app.get("/api/v1/clients", Some(key))
        .await
        .expect(StatusCode::OK);
    let list = app
        .get("/api/v1/api-keys", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("key").is_none() && k.get("key_hash").is_none()));
    let id = created["id"].as_str().unwrap();
    app.json(
        Method::DELETE,
        &format!("/api/v1/api-keys/{id}"),
        Some(&app.admin_key),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.get("/api/v1/clients", Some(key))
        .await
        .expect(StatusCode::UNAUTHORIZED);
    let bad = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "root"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "role");
    let bad = app
        .post(
            "/api/v1/api-keys",
            Some(&app.admin_key),
            json!({"role": "service"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "client_id");
}

async fn token_records_list_by_status_and_never_contain_the_token(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let a = app.issue("alice", "billing", &[], true).await;
    let b = app.issue("bob", "billing", &[], false).await;
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": b["jti"], "reason": "x"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let active = app
        .get("/api/v1/tokens?status=active", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(active["total"], 1);
    assert_eq!(active["items"][0]["jti"], a["jti"]);
    let revoked = app
        .get(
            "/api/v1/tokens?status=revoked&client_id=billing",
            Some(&app.admin_key),
        )
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(revoked["items"][0]["jti"], b["jti"]);
    let by_subject = app
        .get("/api/v1/tokens?subject=alice", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(by_subject["total"], 1);
    app.get("/api/v1/tokens?status=weird", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
    app.get("/api/v1/tokens?limit=0", Some(&app.admin_key))
        .await
        .expect(StatusCode::BAD_REQUEST);
    // Nothing in the database contains a token or refresh token in the clear.
    let access = a["access_token"].as_str().unwrap();
    let refresh = a["refresh_token"].as_str().unwrap();
    let signature = access.rsplit('.').next().unwrap();
    for (table, columns) in [
        (
            "tokens",
            "jti || subject || client_id || scopes || roles || audience || kid",
        ),
        ("refresh_tokens", "token_hash || family_id || access_jti"),
        ("api_keys", "id || key_hash"),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM {table}"
        )))
        .fetch_all(&app.state.db.pool)
        .await
        .unwrap();
        for row in rows {
            assert!(
                !row.contains(signature)
                    && !row.contains(&refresh[4..])
                    && !row.contains(&app.admin_key[4..]),
                "{table}: {row}"
            );
        }
    }
}

async fn eddsa_and_rs256_keys_sign_verifiable_tokens(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    for alg in ["EdDSA", "RS256"] {
        app.post(
            "/api/v1/keys/rotate",
            Some(&app.admin_key),
            json!({"alg": alg}),
        )
        .await
        .expect(StatusCode::OK);
        let issued = app.issue("alice", "billing", &[], false).await;
        let token = issued["access_token"].as_str().unwrap();
        assert_eq!(decode_jwt(token).0["alg"], alg);
        assert_eq!(
            app.introspect(token).await["active"],
            true,
            "{alg} token introspects active"
        );
    }
    let bad = app
        .post(
            "/api/v1/keys/rotate",
            Some(&app.admin_key),
            json!({"alg": "HS256"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "alg");
}

async fn service_key_refreshes_for_its_own_client_only(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &["read"], &[]).await;
    app.client("shipping", &["read"], &[]).await;
    let service = format!(
        "Bearer {}",
        app.api_key(Role::Service, Some("billing")).await
    );
    let own = app.issue("alice", "billing", &["read"], true).await;
    let foreign = app.issue("bob", "shipping", &["read"], true).await;
    let answer = app
        .form(
            "/oauth/token",
            Some(&service),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", own["refresh_token"].as_str().unwrap()),
            ],
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        decode_jwt(answer.body["access_token"].as_str().unwrap()).1["client_id"],
        "billing"
    );
    let answer = app
        .form(
            "/oauth/token",
            Some(&service),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", foreign["refresh_token"].as_str().unwrap()),
            ],
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert_eq!(answer.body["error"], "invalid_grant");
    let admin = format!("Bearer {}", app.admin_key);
    app.form(
        "/oauth/token",
        Some(&admin),
        &[("grant_type", "client_credentials")],
    )
    .await
    .expect(StatusCode::FORBIDDEN);
}
