//! Revocation for foreign issuers (issue 15): trusted issuers registered with their JWKS, revocations by
//! jti, subject and client that name their issuer, revocation by presenting a foreign token, and the
//! feed's `iss` on every entry. Each test runs on SQLite and PostgreSQL.

mod common;

use axum::http::Method;
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{Backend, TestApp};
use edgewarden_admin::auth::Role;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{json, Value};

both_backends!(
    issuer_with_inline_jwks_is_registered_listed_and_validated,
    foreign_jti_revocation_carries_its_issuer_and_expiry_into_the_feed,
    subject_and_client_revocations_name_their_issuer_in_the_feed,
    untrusted_issuer_and_missing_expiry_are_400_naming_the_field,
    presented_foreign_token_is_verified_and_its_jti_recorded,
    presented_token_signed_by_an_unknown_key_is_refused,
    feed_pages_keep_same_value_entries_of_different_issuers_apart,
    rows_from_before_issuers_apply_to_every_issuer_and_carry_no_iss,
    presented_token_is_verified_with_keys_fetched_from_jwks_uri_and_refetched_on_rotation,
    issuer_changes_are_events_and_removal_stops_trusting_without_unrevoking,
    subject_revocation_stays_as_long_as_the_issuers_tokens_live,
);

const IDP: &str = "https://idp.example.com/realms/acme";

/// A P-256 key of a foreign identity provider, with its public JWKS.
struct Idp {
    key: SigningKey,
    kid: String,
}

impl Idp {
    fn new(kid: &str) -> Idp {
        Idp {
            key: SigningKey::random(&mut rand::rngs::OsRng),
            kid: kid.to_owned(),
        }
    }

    fn jwks(&self) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }]})
    }

    /// An ES256 JWT with `claims`, shaped like a Keycloak access token.
    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

fn now() -> i64 {
    edgewarden_admin::db::now()
}

async fn register(app: &TestApp, issuer: &str, idp: &Idp) {
    app.post(
        "/api/v1/issuers",
        Some(&app.admin_key),
        json!({"issuer": issuer, "jwks": idp.jwks()}),
    )
    .await
    .expect(StatusCode::CREATED);
}

async fn snapshot(app: &TestApp) -> Value {
    app.get("/api/v1/revocations/feed?since=0", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body
}

async fn issuer_with_inline_jwks_is_registered_listed_and_validated(backend: Backend) {
    let app = TestApp::start(backend).await;
    let idp = Idp::new("kc-1");
    let created = app
        .post(
            "/api/v1/issuers",
            Some(&app.admin_key),
            json!({"issuer": IDP, "jwks": idp.jwks()}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(created["issuer"], IDP);
    assert_eq!(created["jwks"], idp.jwks());
    assert!(created["created_by"]
        .as_str()
        .unwrap()
        .starts_with("api_key:"));
    app.post(
        "/api/v1/issuers",
        Some(&app.admin_key),
        json!({"issuer": "https://other.example.com", "jwks_uri": "https://other.example.com/certs"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let auditor = app.api_key(Role::Auditor, None).await;
    let list = app
        .get("/api/v1/issuers", Some(&auditor))
        .await
        .expect(StatusCode::OK)
        .body;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["issuer"].as_str().unwrap())
        .collect();
    assert_eq!(names, [IDP, "https://other.example.com"]);
    assert_eq!(list[1]["jwks_uri"], "https://other.example.com/certs");
    // Only admins register.
    app.post(
        "/api/v1/issuers",
        Some(&auditor),
        json!({"issuer": "https://x.example.com", "jwks": idp.jwks()}),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    app.post(
        "/api/v1/issuers",
        Some(&app.admin_key),
        json!({"issuer": IDP, "jwks": idp.jwks()}),
    )
    .await
    .expect(StatusCode::CONFLICT);
    // Weak keys are refused as at the edge: a P-256 point that is not on the curve, a symmetric key.
    let mut bad = idp.jwks();
    bad["keys"][0]["x"] = json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
    let oct =
        json!({"keys": [{"kty": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode([7u8; 32])}]});
    for (body, field) in [
        (
            json!({"issuer": "https://a.example.com", "jwks": bad}),
            "jwks",
        ),
        (
            json!({"issuer": "https://a.example.com", "jwks": oct}),
            "jwks",
        ),
        (
            json!({"issuer": "https://a.example.com", "jwks": {"keys": []}}),
            "jwks",
        ),
        (
            json!({"issuer": "https://a.example.com", "jwks_uri": "ftp://a.example.com/keys"}),
            "jwks_uri",
        ),
        (
            json!({"issuer": "https://a.example.com", "jwks_uri": "keys.json"}),
            "jwks_uri",
        ),
        (json!({"issuer": "", "jwks": idp.jwks()}), "issuer"),
        (
            json!({"issuer": "bad\u{7}issuer", "jwks": idp.jwks()}),
            "issuer",
        ),
        (
            json!({"issuer": "https://issuer.test", "jwks": idp.jwks()}),
            "issuer",
        ),
    ] {
        let answer = app
            .post("/api/v1/issuers", Some(&app.admin_key), body.clone())
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert_eq!(
            answer.body["error"]["field"], field,
            "{body}: {}",
            answer.body
        );
    }
    app.post(
        "/api/v1/issuers",
        Some(&app.admin_key),
        json!({"issuer": "https://a.example.com", "jwks": idp.jwks(), "jwks_uri": "https://a.example.com/k"}),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
}

async fn foreign_jti_revocation_carries_its_issuer_and_expiry_into_the_feed(backend: Backend) {
    let app = TestApp::start(backend).await;
    register(&app, IDP, &Idp::new("kc-1")).await;
    let exp = now() + 900;
    let revocation = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"jti": "kc-token-1", "issuer": IDP, "expires_at": exp, "reason": "phished"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(revocation["kind"], "jti");
    assert_eq!(revocation["issuer"], IDP);
    assert_eq!(revocation["expires_at"], exp);
    let feed = snapshot(&app).await;
    assert_eq!(
        feed["revoked_jtis"],
        json!([{"jti": "kc-token-1", "exp": exp, "iss": IDP}])
    );
    let list = app
        .get("/api/v1/revocations?kind=jti", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(list["items"][0]["issuer"], IDP);
}

async fn subject_and_client_revocations_name_their_issuer_in_the_feed(backend: Backend) {
    let app = TestApp::start(backend).await;
    register(&app, IDP, &Idp::new("kc-1")).await;
    let before = now();
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"subject": "carol", "issuer": IDP, "reason": "left the company"}),
    )
    .await
    .expect(StatusCode::CREATED);
    // The same subject of the admin API's own issuer is a second, separate entry.
    let own = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"subject": "carol", "reason": "left the company"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(own["issuer"], "https://issuer.test");
    // A client the admin API never registered is fine under a foreign issuer.
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"client_id": "kc-frontend", "issuer": IDP, "reason": "secret leaked"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let feed = snapshot(&app).await;
    let subjects = feed["revoked_subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 2, "{feed}");
    let mut issuers: Vec<&str> = subjects
        .iter()
        .map(|s| {
            assert_eq!(s["subject"], "carol");
            s["iss"].as_str().unwrap()
        })
        .collect();
    issuers.sort();
    assert_eq!(issuers, [IDP, "https://issuer.test"]);
    let foreign = subjects.iter().find(|s| s["iss"] == IDP).unwrap();
    let expires_at = foreign["expires_at"].as_i64().unwrap();
    // Without expires_at a foreign subject stays the assumed longest foreign token lifetime.
    assert!(
        expires_at >= before + 86_400 && expires_at <= now() + 86_400,
        "{foreign}"
    );
    assert_eq!(
        feed["revoked_clients"][0],
        json!({"client_id": "kc-frontend", "revoked_at": feed["revoked_clients"][0]["revoked_at"], "expires_at": feed["revoked_clients"][0]["expires_at"], "iss": IDP})
    );
    // An explicit expires_at bounds a foreign subject revocation.
    let until = now() + 3_600;
    let answer = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"subject": "dave", "issuer": IDP, "expires_at": until, "reason": "x"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(answer["expires_at"], until);
    // The own issuer's unknown client is still a 404.
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"client_id": "kc-frontend", "reason": "x"}),
    )
    .await
    .expect(StatusCode::NOT_FOUND);
}

async fn untrusted_issuer_and_missing_expiry_are_400_naming_the_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    register(&app, IDP, &Idp::new("kc-1")).await;
    for (body, field) in [
        (
            json!({"jti": "a", "issuer": "https://stranger.example.com", "expires_at": now() + 60, "reason": "x"}),
            "issuer",
        ),
        (
            json!({"subject": "carol", "issuer": "https://stranger.example.com", "reason": "x"}),
            "issuer",
        ),
        (
            json!({"jti": "a", "issuer": IDP, "reason": "x"}),
            "expires_at",
        ),
        (
            json!({"jti": "a", "issuer": IDP, "expires_at": now() - 10, "reason": "x"}),
            "expires_at",
        ),
        (
            json!({"subject": "carol", "expires_at": now() + 60, "reason": "x"}),
            "expires_at",
        ),
    ] {
        let answer = app
            .post("/api/v1/revocations", Some(&app.admin_key), body.clone())
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert_eq!(
            answer.body["error"]["field"], field,
            "{body}: {}",
            answer.body
        );
    }
    // A service key revokes only its own client's tokens, never a foreign issuer's.
    app.client("billing", &[], &[]).await;
    let service = app.api_key(Role::Service, Some("billing")).await;
    app.post(
        "/api/v1/revocations",
        Some(&service),
        json!({"client_id": "billing", "issuer": IDP, "reason": "x"}),
    )
    .await
    .expect(StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&app).await["revoked_clients"], json!([]));
}

async fn presented_foreign_token_is_verified_and_its_jti_recorded(backend: Backend) {
    let app = TestApp::start(backend).await;
    let idp = Idp::new("kc-1");
    register(&app, IDP, &idp).await;
    let exp = now() + 300;
    let token = idp.sign(&json!({
        "iss": IDP, "sub": "carol", "azp": "kc-frontend", "jti": "kc-jti-7",
        "iat": now() - 10, "exp": exp, "aud": "account",
    }));
    let revocation = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"token": token, "reason": "reported by the user"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(revocation["kind"], "jti");
    assert_eq!(revocation["value"], "kc-jti-7");
    assert_eq!(revocation["issuer"], IDP);
    assert_eq!(revocation["expires_at"], exp);
    let feed = snapshot(&app).await;
    assert_eq!(
        feed["revoked_jtis"],
        json!([{"jti": "kc-jti-7", "exp": exp, "iss": IDP}])
    );
    // The token is never stored: not in the event log, nor anywhere in the answers.
    let events = app
        .get("/api/v1/events?kind=token.revoked", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(!events.to_string().contains(&token));
    assert!(!revocation.to_string().contains(&token));
    // RFC 7009 revocation of a foreign token takes the same path (an admin key may revoke it).
    let other = idp.sign(&json!({
        "iss": IDP, "sub": "carol", "jti": "kc-jti-8", "iat": now(), "exp": exp,
    }));
    app.form(
        "/oauth/revoke",
        Some(&format!("Bearer {}", app.admin_key)),
        &[("token", &other)],
    )
    .await
    .expect(StatusCode::OK);
    let feed = snapshot(&app).await;
    let jtis: Vec<&str> = feed["revoked_jtis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jti"].as_str().unwrap())
        .collect();
    assert!(jtis.contains(&"kc-jti-8"), "{feed}");
    // The admin API's own token presented whole is revoked under the own issuer.
    app.client("billing", &[], &[]).await;
    let issued = app.issue("alice", "billing", &[], false).await;
    let own = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"token": issued["access_token"], "reason": "x"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(own["value"], issued["jti"]);
    assert_eq!(own["issuer"], "https://issuer.test");
}

async fn presented_token_signed_by_an_unknown_key_is_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    register(&app, IDP, &Idp::new("kc-1")).await;
    let claims =
        json!({"iss": IDP, "sub": "carol", "jti": "forged", "iat": now(), "exp": now() + 300});
    let cases = [
        // Same kid, another key: the signature does not verify.
        (Idp::new("kc-1").sign(&claims), "bad_signature"),
        (Idp::new("kc-2").sign(&claims), "unknown_kid"),
        (
            Idp::new("kc-1").sign(
                &json!({"iss": "https://stranger.example.com", "jti": "x", "exp": now() + 300}),
            ),
            "not trusted",
        ),
        ("not.a.token".to_owned(), "malformed"),
    ];
    for (token, why) in cases {
        let answer = app
            .post(
                "/api/v1/revocations",
                Some(&app.admin_key),
                json!({"token": token, "reason": "x"}),
            )
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert_eq!(answer.body["error"]["field"], "token", "{}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {message}");
        assert!(!message.contains(&token), "the token is never echoed");
    }
    let idp = Idp::new("kc-1");
    let app2 = TestApp::start(backend).await;
    register(&app2, IDP, &idp).await;
    let expired =
        idp.sign(&json!({"iss": IDP, "jti": "old", "iat": now() - 7200, "exp": now() - 3600}));
    let answer = app2
        .post(
            "/api/v1/revocations",
            Some(&app2.admin_key),
            json!({"token": expired, "reason": "x"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{}",
        answer.body
    );
    // A token comes alone: its issuer and expiry are its own.
    let fine = idp.sign(&json!({"iss": IDP, "jti": "j", "exp": now() + 60}));
    app2.post(
        "/api/v1/revocations",
        Some(&app2.admin_key),
        json!({"token": fine, "issuer": IDP, "reason": "x"}),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    assert_eq!(snapshot(&app).await["revoked_jtis"], json!([]));
    assert_eq!(snapshot(&app2).await["revoked_jtis"], json!([]));
}

async fn feed_pages_keep_same_value_entries_of_different_issuers_apart(backend: Backend) {
    let app = TestApp::start(backend).await;
    let idp = Idp::new("kc-1");
    let issuers = [IDP, "https://b.example.com:8443/x", "urn:c"];
    for issuer in issuers {
        register(&app, issuer, &idp).await;
    }
    for issuer in issuers {
        for subject in ["carol", "dave"] {
            app.post(
                "/api/v1/revocations",
                Some(&app.admin_key),
                json!({"subject": subject, "issuer": issuer, "reason": "x"}),
            )
            .await
            .expect(StatusCode::CREATED);
        }
    }
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"subject": "carol", "reason": "x"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let whole = snapshot(&app).await["revoked_subjects"].clone();
    assert_eq!(whole.as_array().unwrap().len(), 7);
    // Pages of two: every entry exactly once, in (value, issuer) order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let uri = match &after {
            None => "/api/v1/revocations/feed?since=0&limit=2".to_owned(),
            Some(next) => format!("/api/v1/revocations/feed?since=0&limit=2&after={next}"),
        };
        let page = app
            .get(&uri, Some(&app.admin_key))
            .await
            .expect(StatusCode::OK)
            .body;
        for s in page["revoked_subjects"].as_array().unwrap() {
            seen.push((
                s["subject"].as_str().unwrap().to_owned(),
                s["iss"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<(String, String)> = issuers
        .iter()
        .chain(["https://issuer.test"].iter())
        .flat_map(|i| {
            let mut v = vec![("carol".to_owned(), i.to_string())];
            if *i != "https://issuer.test" {
                v.push(("dave".to_owned(), i.to_string()));
            }
            v
        })
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

async fn rows_from_before_issuers_apply_to_every_issuer_and_carry_no_iss(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let issued = app.issue("alice", "billing", &[], false).await;
    // A row as migration 0004 leaves one recorded before it: no issuer ('').
    let pool = &app.state.db.pool;
    let cursor: i64 = sqlx::query_scalar(
        "UPDATE feed_state SET current_cursor = current_cursor + 1 WHERE id = 1 RETURNING current_cursor",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let at = now();
    sqlx::query(
        "INSERT INTO revocations (kind, value, seq, reason, actor, revoked_at, expires_at) \
         VALUES ('subject', 'alice', $1, 'old', 'test', $2, $3)",
    )
    .bind(cursor)
    .bind(at)
    .bind(at + 600)
    .execute(pool)
    .await
    .unwrap();
    let feed = snapshot(&app).await;
    assert_eq!(
        feed["revoked_subjects"],
        json!([{"subject": "alice", "revoked_at": at, "expires_at": at + 600}]),
        "no iss on an entry that applies to every issuer"
    );
    let list = app
        .get("/api/v1/revocations", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert!(list["items"][0].get("issuer").is_none(), "{list}");
    assert_eq!(
        app.introspect(issued["access_token"].as_str().unwrap())
            .await["active"],
        false
    );
}

/// Serves `jwks` at `http://127.0.0.1:<port>/certs` until the test ends; the document can be swapped.
async fn serve_jwks(jwks: std::sync::Arc<std::sync::Mutex<Value>>) -> String {
    let router = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/certs")
}

async fn presented_token_is_verified_with_keys_fetched_from_jwks_uri_and_refetched_on_rotation(
    backend: Backend,
) {
    let app = TestApp::start(backend).await;
    let first = Idp::new("kc-1");
    let served = std::sync::Arc::new(std::sync::Mutex::new(first.jwks()));
    let uri = serve_jwks(served.clone()).await;
    app.post(
        "/api/v1/issuers",
        Some(&app.admin_key),
        json!({"issuer": IDP, "jwks_uri": uri}),
    )
    .await
    .expect(StatusCode::CREATED);
    let claims = |jti: &str| json!({"iss": IDP, "sub": "carol", "jti": jti, "iat": now(), "exp": now() + 300});
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"token": first.sign(&claims("a")), "reason": "x"}),
    )
    .await
    .expect(StatusCode::CREATED);
    // The issuer rotates to a new kid: the cached document lacks it, so it is fetched again at once.
    let second = Idp::new("kc-2");
    *served.lock().unwrap() = second.jwks();
    let answer = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"token": second.sign(&claims("b")), "reason": "x"}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(answer["issuer"], IDP);
    // The retired key is gone from the document now.
    let answer = app
        .post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"token": first.sign(&claims("c")), "reason": "x"}),
        )
        .await
        .expect(StatusCode::BAD_REQUEST);
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown_kid"),
        "{}",
        answer.body
    );
    let jtis: Vec<Value> = snapshot(&app).await["revoked_jtis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jti"].clone())
        .collect();
    assert_eq!(jtis, [json!("a"), json!("b")]);
}

fn encoded(issuer: &str) -> String {
    form_urlencoded::byte_serialize(issuer.as_bytes()).collect()
}

async fn events_of(app: &TestApp, kind: &str) -> Vec<Value> {
    app.get(&format!("/api/v1/events?kind={kind}"), Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn issuer_changes_are_events_and_removal_stops_trusting_without_unrevoking(backend: Backend) {
    let app = TestApp::start(backend).await;
    let idp = Idp::new("kc-1");
    register(&app, IDP, &idp).await;
    let trusted = events_of(&app, "issuer.trusted").await;
    assert_eq!(trusted.len(), 1, "{trusted:?}");
    assert_eq!(trusted[0]["details"]["issuer"], IDP);
    assert_eq!(trusted[0]["details"]["inline_jwks"], true);
    assert!(trusted[0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("api_key:"));
    let token = idp.sign(&json!({"iss": IDP, "sub": "carol", "jti": "j-1", "exp": now() + 300}));
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"token": token, "reason": "leaked"}),
    )
    .await
    .expect(StatusCode::CREATED);

    // Only an admin removes; an auditor is refused and the issuer stays.
    let auditor = app.api_key(Role::Auditor, None).await;
    let uri = format!("/api/v1/issuers/{}", encoded(IDP));
    app.json(Method::DELETE, &uri, Some(&auditor), None)
        .await
        .expect(StatusCode::FORBIDDEN);
    app.json(Method::DELETE, &uri, Some(&app.admin_key), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    let removed = events_of(&app, "issuer.removed").await;
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert_eq!(removed[0]["details"]["issuer"], IDP);
    let list = app
        .get("/api/v1/issuers", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    assert_eq!(list, json!([]));
    // A second removal names what is trusted instead.
    let again = app
        .json(Method::DELETE, &uri, Some(&app.admin_key), None)
        .await
        .expect(StatusCode::NOT_FOUND);
    assert!(again.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GET /api/v1/issuers"));

    // Its identifiers can no longer be revoked, nor its tokens presented...
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"subject": "carol", "issuer": IDP, "reason": "x"}),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    let token = idp.sign(&json!({"iss": IDP, "sub": "carol", "jti": "j-2", "exp": now() + 300}));
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"token": token, "reason": "x"}),
    )
    .await
    .expect(StatusCode::BAD_REQUEST);
    // ...but what was revoked stays revoked at the edges.
    let feed = snapshot(&app).await;
    let jtis: Vec<&Value> = feed["revoked_jtis"].as_array().unwrap().iter().collect();
    assert_eq!(jtis.len(), 1, "{feed}");
    assert_eq!(jtis[0]["jti"], "j-1");
    assert_eq!(jtis[0]["iss"], IDP);
}

async fn subject_revocation_stays_as_long_as_the_issuers_tokens_live(backend: Backend) {
    let app = TestApp::start(backend).await;
    let idp = Idp::new("kc-1");
    // Out of range lifetimes are refused naming the field.
    for bad in [0, -5, 400 * 86_400] {
        let answer = app
            .post(
                "/api/v1/issuers",
                Some(&app.admin_key),
                json!({"issuer": IDP, "jwks": idp.jwks(), "max_token_lifetime_seconds": bad}),
            )
            .await
            .expect(StatusCode::BAD_REQUEST);
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_token_lifetime_seconds"),
            "{}",
            answer.body
        );
    }
    let created = app
        .post(
            "/api/v1/issuers",
            Some(&app.admin_key),
            json!({"issuer": IDP, "jwks": idp.jwks(), "max_token_lifetime_seconds": 3600}),
        )
        .await
        .expect(StatusCode::CREATED)
        .body;
    assert_eq!(created["max_token_lifetime_seconds"], 3600);
    let other = "https://other.example.com";
    register(&app, other, &Idp::new("o-1")).await;
    let listed = app
        .get("/api/v1/issuers", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK)
        .body;
    let lifetime = |issuer: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["issuer"] == issuer)
            .unwrap()["max_token_lifetime_seconds"]
            .clone()
    };
    assert_eq!(lifetime(IDP), 3600, "{listed}");
    assert_eq!(lifetime(other), 86_400, "{listed}");

    let before = now();
    for (issuer, subject) in [(IDP, "carol"), (other, "dave")] {
        app.post(
            "/api/v1/revocations",
            Some(&app.admin_key),
            json!({"subject": subject, "issuer": issuer, "reason": "x"}),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let feed = snapshot(&app).await;
    let expiry = |subject: &str| {
        feed["revoked_subjects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["subject"] == subject)
            .unwrap_or_else(|| panic!("{subject} not in {feed}"))["expires_at"]
            .as_i64()
            .unwrap()
    };
    let after = now();
    assert!(
        (before + 3600..=after + 3600).contains(&expiry("carol")),
        "{feed}"
    );
    assert!(
        (before + 86_400..=after + 86_400).contains(&expiry("dave")),
        "{feed}"
    );
}
