//! Unit tests of the request flow against a recording host double: response shapes, header hygiene,
//! report-only marking and the pause/resume state machine around unknown-`kid` key-set fetches.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ed25519_compact::{KeyPair, Seed};
use edgewarden_core::decision::Reason;
use edgewarden_core::engine::Engine;
use proxy_wasm::types::LogLevel;
use serde_json::{json, Value};

use super::{process, resolve_waiters, Outcome};
use crate::host::{CallResponse, Host};
use crate::jwks_fetch::on_fetch_response;
use crate::metrics::{Metrics, Stat};
use crate::state::VmState;
use crate::test_host::{FakeHost, Op, NOW};

const ISS: &str = "https://issuer.test";

fn keypair(seed: u8) -> KeyPair {
    KeyPair::from_seed(Seed::new([seed; 32]))
}

fn jwk(kp: &KeyPair, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(kp.pk.as_ref()), "kid": kid, "alg": "EdDSA", "use": "sig"})
}

fn mint(kp: &KeyPair, kid: &str, claims: Value) -> String {
    let header = json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = kp.sk.sign(input.as_bytes(), None);
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

fn claims(sub: &str, exp: u64) -> Value {
    json!({"iss": ISS, "sub": sub, "aud": "api", "iat": NOW - 10, "exp": exp, "scope": "read"})
}

fn vm(extra: Value) -> VmState {
    let mut config = json!({
        "issuers": [{
            "issuer": ISS,
            "audiences": ["api"],
            "jwks": {"keys": [jwk(&keypair(1), "k1")]},
            "remote_jwks": {"cluster": "idp", "path": "/jwks.json", "min_refetch_interval_seconds": 10}
        }],
        "forward_claims": [{"claim": "sub", "header": "x-jwt-sub"}],
        "rules": [
            {"match": {"prefix": "/public"}, "allow_anonymous": true},
            {"match": {"prefix": "/admin"}, "require_scopes": ["admin"]}
        ]
    });
    if let (Some(base), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    let engine = Engine::from_json(config.to_string().as_bytes()).expect("test config is valid");
    VmState::new(engine, Metrics::default())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

#[test]
fn request_without_token_is_answered_401_with_bare_bearer_challenge() {
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    host.request(2, "/api/orders?x=1", &[]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Denied);
    let responses = host.responses();
    assert_eq!(responses.len(), 1);
    let (_, status, headers, body) = &responses[0];
    assert_eq!(*status, 401);
    assert_eq!(
        header_of(headers, "www-authenticate"),
        r#"Bearer realm="edgewarden""#
    );
    assert_eq!(header_of(headers, "content-type"), "application/json");
    let body: Value = serde_json::from_str(body).unwrap();
    // RFC 6750 3.1: no error code for a request without authentication; the reason is for machines.
    assert!(body.get("error").is_none(), "body {body}");
    assert_eq!(body["reason"], "missing_token");
    assert_eq!(host.counted(Stat::Denied(Reason::MissingToken)), 1);
}

#[test]
fn expired_token_is_answered_401_invalid_token_without_echoing_the_token() {
    let vm = vm(json!({}));
    let token = mint(&keypair(1), "k1", claims("alice", NOW - 3600));
    let mut host = FakeHost::new();
    host.request(2, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Denied);
    let (_, status, headers, body) = host.responses().remove(0);
    assert_eq!(status, 401);
    let challenge = header_of(&headers, "www-authenticate");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert!(challenge.contains("token expired"), "{challenge}");
    assert!(!body.contains(&token) && !challenge.contains(&token));
    let sig = token.rsplit('.').next().unwrap();
    assert!(!body.contains(sig));
    assert_eq!(host.counted(Stat::Denied(Reason::Expired)), 1);
}

#[test]
fn missing_scope_is_answered_403_insufficient_scope_with_scope() {
    let vm = vm(json!({}));
    let token = mint(&keypair(1), "k1", claims("alice", NOW + 3600));
    let mut host = FakeHost::new();
    host.request(2, "/admin/users", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Denied);
    let (_, status, headers, _) = host.responses().remove(0);
    assert_eq!(status, 403);
    let challenge = header_of(&headers, "www-authenticate");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(challenge.contains(r#"scope="admin""#), "{challenge}");
}

#[test]
fn valid_token_forwards_claims_after_removing_spoofed_copies() {
    let vm = vm(json!({}));
    let token = mint(&keypair(1), "k1", claims("alice", NOW + 3600));
    let mut host = FakeHost::new();
    host.request(
        2,
        "/api",
        &[("authorization", &bearer(&token)), ("x-jwt-sub", "mallory")],
    );
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Continue);
    let remove = host
        .ops
        .iter()
        .position(|op| *op == Op::Remove(2, "x-jwt-sub".into()))
        .expect("removed");
    let set = host
        .ops
        .iter()
        .position(|op| *op == Op::Set(2, "x-jwt-sub".into(), "alice".into()))
        .expect("set");
    assert!(remove < set);
    assert_eq!(host.header(2, "x-jwt-sub").as_deref(), Some("alice"));
    assert!(
        host.header(2, "authorization").is_some(),
        "token kept without strip_token"
    );
    assert!(host.responses().is_empty());
    assert_eq!(host.counted(Stat::Allowed), 1);
    assert_eq!(host.counted(Stat::CacheMiss), 1);

    // The same token again is a cache hit.
    host.request(3, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 3, true), Outcome::Continue);
    assert_eq!(host.counted(Stat::CacheHit), 1);
}

#[test]
fn spoofed_claim_headers_are_removed_on_anonymous_routes_too() {
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    host.request(
        2,
        "/public/health",
        &[
            ("x-jwt-sub", "mallory"),
            ("x-edgewarden-report-only", "fake"),
        ],
    );
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Continue);
    assert_eq!(host.header(2, "x-jwt-sub"), None);
    assert_eq!(host.header(2, "x-edgewarden-report-only"), None);
    assert_eq!(host.counted(Stat::Allowed), 1);
}

#[test]
fn strip_token_removes_the_authorization_header() {
    let vm = vm(json!({"strip_token": true}));
    let token = mint(&keypair(1), "k1", claims("alice", NOW + 3600));
    let mut host = FakeHost::new();
    host.request(2, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Continue);
    assert_eq!(host.header(2, "authorization"), None);
}

#[test]
fn strip_token_removes_only_the_token_cookie_and_query_parameter() {
    let token = mint(&keypair(1), "k1", claims("alice", NOW + 3600));

    let vm_cookie = vm(json!({"strip_token": true, "token_source": {"cookie": "session"}}));
    let mut host = FakeHost::new();
    host.request(
        2,
        "/api",
        &[("cookie", &format!("theme=dark; session={token}; lang=en"))],
    );
    assert_eq!(process(&mut host, &vm_cookie, 2, true), Outcome::Continue);
    assert_eq!(
        host.header(2, "cookie").as_deref(),
        Some("theme=dark; lang=en")
    );

    let vm_query = vm(json!({"strip_token": true, "token_source": {"query": "access_token"}}));
    let mut host = FakeHost::new();
    host.request(2, &format!("/api/items?page=2&access_token={token}"), &[]);
    assert_eq!(process(&mut host, &vm_query, 2, true), Outcome::Continue);
    assert_eq!(
        host.header(2, ":path").as_deref(),
        Some("/api/items?page=2")
    );
}

#[test]
fn basic_credentials_where_bearer_is_expected_are_refused_as_malformed() {
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    host.request(2, "/api", &[("authorization", "Basic YWxpY2U6c2VjcmV0")]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Denied);
    let (_, status, headers, body) = host.responses().remove(0);
    assert_eq!(status, 401);
    assert!(header_of(&headers, "www-authenticate").contains("invalid_token"));
    assert!(!body.contains("YWxpY2U6c2VjcmV0"));
    assert_eq!(host.counted(Stat::Denied(Reason::Malformed)), 1);
}

#[test]
fn report_only_lets_a_denied_request_through_with_reason_and_status_header() {
    let vm = vm(json!({"report_only": true}));
    let token = mint(&keypair(1), "k1", claims("alice", NOW - 3600));
    let mut host = FakeHost::new();
    host.request(
        2,
        "/api?secret=1",
        &[("authorization", &bearer(&token)), ("x-jwt-sub", "mallory")],
    );
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Continue);
    assert!(host.responses().is_empty());
    assert_eq!(
        host.header(2, "x-edgewarden-report-only").as_deref(),
        Some("expired 401")
    );
    assert_eq!(host.header(2, "x-jwt-sub"), None);
    assert_eq!(host.counted(Stat::ReportOnlyWouldDeny), 1);
    assert_eq!(
        host.counted(Stat::ReportOnlyWouldDenyReason(Reason::Expired)),
        1
    );
    assert_eq!(host.counted(Stat::Denied(Reason::Expired)), 0);
    let logs = host.logs.borrow();
    let (level, line) = logs
        .iter()
        .find(|(_, l)| l.contains("report-only"))
        .expect("logged");
    assert_eq!(*level, LogLevel::Info);
    assert!(line.contains("GET /api with 401 expired"), "{line}");
    assert!(!line.contains("secret") && !line.contains(&token), "{line}");
}

#[test]
fn unknown_kid_pauses_fetches_jwks_and_resumes_every_waiting_request() {
    let vm = vm(json!({}));
    let rotated = keypair(2);
    let token = mint(&rotated, "k2", claims("bob", NOW + 3600));
    let mut host = FakeHost::new();

    host.request(2, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        process(&mut host, &vm, 2, true),
        Outcome::FetchingJwks { issuer: 0 }
    );
    assert_eq!(
        host.ops.last(),
        Some(&Op::Dispatch {
            cluster: "idp".into(),
            authority: "idp".into(),
            path: "/jwks.json".into()
        })
    );
    // A second request meeting the same rotation waits for the fetch in flight instead of fetching again.
    host.request(3, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        process(&mut host, &vm, 3, true),
        Outcome::WaitingForJwks { issuer: 0 }
    );
    assert_eq!(host.dispatches(), 1);
    assert!(host.responses().is_empty());

    // The JWKS answers in context 2, with an encryption key beside the new signing key (as Keycloak publishes).
    host.effective = 2;
    let enc = json!({"kty": "RSA", "kid": "enc-1", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"});
    let body = json!({"keys": [jwk(&rotated, "k2"), enc]})
        .to_string()
        .into_bytes();
    let resp = CallResponse {
        status: Some(200),
        body_size: body.len(),
        body: Some(body),
    };
    let (issuer, waiters) = on_fetch_response(&mut host, &vm, 101, &resp, NOW).expect("our fetch");
    assert_eq!((issuer, waiters.clone()), (0, vec![3]));
    assert_eq!(host.counted(Stat::JwksFetch), 1);
    assert_eq!(process(&mut host, &vm, 2, false), Outcome::Continue);
    resolve_waiters(&mut host, &vm, &waiters, 2);
    assert_eq!(host.effective, 2, "own context effective again");
    assert!(
        host.responses().is_empty(),
        "no request failed: {:?}",
        host.responses()
    );
    assert_eq!(host.header(2, "x-jwt-sub").as_deref(), Some("bob"));
    assert_eq!(host.header(3, "x-jwt-sub").as_deref(), Some("bob"));
    assert!(host.ops.contains(&Op::Resume(3)));
    // The fetched key set is published for the other worker VMs.
    assert_eq!(host.shared.borrow().len(), 1);
    // The encryption key was left out, and the log says so.
    assert!(
        host.logs
            .borrow()
            .iter()
            .any(|(level, line)| *level == LogLevel::Info
                && line.contains(
                    r#"installed 1 keys (left out: keys[1] (kid "enc-1"): use is "enc""#
                )),
        "{:?}",
        host.logs.borrow()
    );
}

#[test]
fn unknown_kid_within_min_refetch_interval_is_denied_unknown_kid() {
    let vm = vm(json!({}));
    let token = mint(&keypair(3), "k3", claims("carol", NOW + 3600));
    let mut host = FakeHost::new();
    host.request(2, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        process(&mut host, &vm, 2, true),
        Outcome::FetchingJwks { issuer: 0 }
    );
    // The IdP answers without k3.
    let body = json!({"keys": [jwk(&keypair(4), "k4")]})
        .to_string()
        .into_bytes();
    let resp = CallResponse {
        status: Some(200),
        body_size: body.len(),
        body: Some(body),
    };
    on_fetch_response(&mut host, &vm, 101, &resp, NOW).expect("our fetch");
    assert_eq!(process(&mut host, &vm, 2, false), Outcome::Denied);

    host.now_ms = (NOW + 5) * 1000;
    host.request(3, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 3, true), Outcome::Denied);
    assert_eq!(host.dispatches(), 1);
    assert_eq!(host.counted(Stat::JwksRefetchRateLimited), 1);
    let statuses: Vec<u16> = host.responses().iter().map(|r| r.1).collect();
    assert_eq!(statuses, vec![401, 401]);
    assert_eq!(host.counted(Stat::Denied(Reason::UnknownKid)), 2);

    host.now_ms = (NOW + 10) * 1000;
    host.request(4, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        process(&mut host, &vm, 4, true),
        Outcome::FetchingJwks { issuer: 0 }
    );
}

#[test]
fn malformed_or_failed_jwks_response_keeps_old_keys_and_counts_a_failure() {
    let vm = vm(json!({}));
    let k1_token = mint(&keypair(1), "k1", claims("alice", NOW + 3600));
    let unknown = mint(&keypair(5), "k5", claims("dave", NOW + 3600));
    let mut host = FakeHost::new();
    for (ctx, resp) in [
        (
            2,
            CallResponse {
                status: Some(200),
                body_size: 8,
                body: Some(b"not json".to_vec()),
            },
        ),
        (
            3,
            CallResponse {
                status: Some(503),
                body_size: 0,
                body: None,
            },
        ),
        (
            4,
            CallResponse {
                status: None,
                body_size: 0,
                body: None,
            },
        ),
    ] {
        host.advance_ms(60_000);
        host.request(ctx, "/api", &[("authorization", &bearer(&unknown))]);
        assert_eq!(
            process(&mut host, &vm, ctx, true),
            Outcome::FetchingJwks { issuer: 0 }
        );
        let (token, now) = (host.next_token, host.now());
        assert!(on_fetch_response(&mut host, &vm, token, &resp, now).is_some());
        assert_eq!(process(&mut host, &vm, ctx, false), Outcome::Denied);
    }
    assert_eq!(host.counted(Stat::JwksFetchFailure), 3);
    assert!(host
        .logs
        .borrow()
        .iter()
        .any(|(l, m)| *l == LogLevel::Warn && m.contains("keeping previous keys")));
    host.request(9, "/api", &[("authorization", &bearer(&k1_token))]);
    assert_eq!(process(&mut host, &vm, 9, true), Outcome::Continue);
}

#[test]
fn refused_dispatch_denies_at_once_without_starting_the_rate_limit() {
    let vm = vm(json!({}));
    let token = mint(&keypair(6), "k6", claims("erin", NOW + 3600));
    let mut host = FakeHost::new();
    host.refuse_dispatch = true;
    host.request(2, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Denied);
    assert_eq!(host.counted(Stat::JwksFetchFailure), 1);
    assert_eq!(host.counted(Stat::JwksFetchNotDispatched), 1);
    host.refuse_dispatch = false;
    host.request(3, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        process(&mut host, &vm, 3, true),
        Outcome::FetchingJwks { issuer: 0 }
    );
}

#[test]
fn waiter_whose_stream_ended_is_skipped() {
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    host.effective = 1;
    resolve_waiters(&mut host, &vm, &[77], 1);
    assert!(host.ops.is_empty());
    assert_eq!(host.effective, 1);
}

#[test]
fn key_set_published_by_another_worker_is_picked_up_before_fetching() {
    let vm_a = vm(json!({}));
    let vm_b = vm(json!({}));
    let rotated = keypair(7);
    let token = mint(&rotated, "k7", claims("frank", NOW + 3600));
    let mut host = FakeHost::new();
    host.request(2, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        process(&mut host, &vm_a, 2, true),
        Outcome::FetchingJwks { issuer: 0 }
    );
    let body = json!({"keys": [jwk(&rotated, "k7")]})
        .to_string()
        .into_bytes();
    let resp = CallResponse {
        status: Some(200),
        body_size: body.len(),
        body: Some(body),
    };
    on_fetch_response(&mut host, &vm_a, 101, &resp, NOW).expect("our fetch");

    // Worker B shares the host's shared data and sees the rotated key without a fetch of its own.
    host.request(3, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm_b, 3, true), Outcome::Continue);
    assert_eq!(host.dispatches(), 1);
    assert_eq!(host.counted(Stat::JwksShared), 1);
}

#[test]
fn a_fetch_envoy_refuses_names_the_cluster_to_define() {
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    host.refuse_dispatch = true;
    let err = crate::jwks_fetch::start_fetch(
        &mut host,
        &vm,
        0,
        1,
        crate::jwks_fetch::Trigger::Schedule,
        NOW,
    )
    .unwrap_err();
    assert!(
        err.contains("not dispatched (BadArgument): is cluster `idp` defined in Envoy?"),
        "{err}"
    );
    assert!(err.contains("unknown_kid"), "{err}");
    assert_eq!(host.counted(Stat::JwksFetchNotDispatched), 1);
}

#[test]
fn key_set_fetches_send_the_configured_authority_or_a_host_name_derived_from_the_cluster() {
    let token = mint(&keypair(2), "k2", claims("bob", NOW + 3600));
    let cases = [
        (json!({"cluster": "idp", "path": "/jwks.json"}), "idp"),
        (
            json!({"cluster": "outbound|8080||keycloak.identity.svc.cluster.local", "path": "/jwks.json"}),
            "keycloak.identity.svc.cluster.local:8080",
        ),
        (
            json!({"cluster": "outbound|8080||keycloak.identity.svc.cluster.local", "path": "/jwks.json",
                   "authority": "keycloak.example.com"}),
            "keycloak.example.com",
        ),
    ];
    for (remote, expected) in cases {
        let vm = vm(json!({"issuers": [{
            "issuer": ISS, "audiences": ["api"], "jwks": {"keys": [jwk(&keypair(1), "k1")]},
            "remote_jwks": remote.clone()
        }]}));
        let mut host = FakeHost::new();
        host.request(2, "/api", &[("authorization", &bearer(&token))]);
        assert_eq!(
            process(&mut host, &vm, 2, true),
            Outcome::FetchingJwks { issuer: 0 }
        );
        match host.ops.last() {
            Some(Op::Dispatch { authority, .. }) => assert_eq!(authority, expected, "{remote}"),
            other => panic!("no fetch dispatched for {remote}: {other:?}"),
        }
    }
}

const GRPC: (&str, &str) = ("content-type", "application/grpc");

#[test]
fn grpc_call_without_token_gets_unauthenticated_with_the_description_and_the_challenge() {
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    host.request(2, "/pkg.Svc/Method", &[GRPC, ("te", "trailers")]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Denied);
    assert!(host.responses().is_empty(), "no HTTP answer to a gRPC call");
    let answers = host.grpc_responses();
    assert_eq!(answers.len(), 1);
    let (ctx, grpc_status, message, headers) = &answers[0];
    assert_eq!(
        (*ctx, *grpc_status, message.as_str()),
        (2, 16, "no token presented")
    );
    assert_eq!(
        header_of(headers, "www-authenticate"),
        r#"Bearer realm="edgewarden""#
    );
    assert_eq!(host.counted(Stat::Denied(Reason::MissingToken)), 1);
}

#[test]
fn grpc_call_with_expired_token_gets_unauthenticated_and_missing_scope_permission_denied() {
    let vm = vm(json!({}));
    let expired = mint(&keypair(1), "k1", claims("alice", NOW - 3600));
    let mut host = FakeHost::new();
    host.request(
        2,
        "/pkg.Svc/Method",
        &[
            ("content-type", "application/grpc+proto"),
            ("authorization", &bearer(&expired)),
        ],
    );
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Denied);
    let (_, grpc_status, message, headers) = host.grpc_responses().remove(0);
    assert_eq!(grpc_status, 16);
    // The same description the HTTP answer's error_description carries, never the token.
    assert!(message.starts_with("token expired 3600s ago"), "{message}");
    assert!(!message.contains(&expired));
    assert!(header_of(&headers, "www-authenticate").contains(r#"error="invalid_token""#));

    let valid = mint(&keypair(1), "k1", claims("alice", NOW + 3600));
    host.request(
        3,
        "/admin/pkg.Svc/Method",
        &[GRPC, ("authorization", &bearer(&valid))],
    );
    assert_eq!(process(&mut host, &vm, 3, true), Outcome::Denied);
    let (ctx, grpc_status, message, headers) = host.grpc_responses().remove(1);
    assert_eq!((ctx, grpc_status), (3, 7));
    assert!(message.contains("admin"), "{message}");
    let challenge = header_of(&headers, "www-authenticate");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(challenge.contains(r#"scope="admin""#), "{challenge}");
    // An allowed gRPC call goes through untouched.
    host.request(
        4,
        "/pkg.Svc/Method",
        &[GRPC, ("authorization", &bearer(&valid))],
    );
    assert_eq!(process(&mut host, &vm, 4, true), Outcome::Continue);
    assert_eq!(host.grpc_responses().len(), 2);
}

#[test]
fn only_what_envoy_treats_as_grpc_gets_a_grpc_answer() {
    // grpc-web (without Envoy's grpc_web filter in front) and JSON get the HTTP answer, as Envoy would give them.
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    for (ctx, content_type) in [
        (2, "application/grpc-web"),
        (3, "application/json"),
        (4, "text/plain"),
    ] {
        host.request(ctx, "/pkg.Svc/Method", &[("content-type", content_type)]);
        assert_eq!(process(&mut host, &vm, ctx, true), Outcome::Denied);
    }
    assert!(host.grpc_responses().is_empty());
    assert_eq!(host.responses().len(), 3);
}

#[test]
fn report_only_never_answers_a_grpc_call() {
    let vm = vm(json!({"report_only": true}));
    let mut host = FakeHost::new();
    host.request(2, "/pkg.Svc/Method", &[GRPC]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Continue);
    assert!(host.grpc_responses().is_empty() && host.responses().is_empty());
    // The decision it would have made is still published.
    assert_eq!(
        host.property(2, "edgewarden.reason").as_deref(),
        Some("missing_token")
    );
}

#[test]
fn every_decision_is_published_as_request_properties_never_the_token() {
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    let mut allowed_claims = claims("alice", NOW + 3600);
    allowed_claims["jti"] = json!("jti-1");
    allowed_claims["client_id"] = json!("billing");
    let token = mint(&keypair(1), "k1", allowed_claims);

    // Allowed: reason, rule, sub, client_id, jti.
    host.request(2, "/api/orders", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Continue);
    let published = |host: &FakeHost, ctx| -> Vec<(String, String)> {
        host.properties.get(&ctx).cloned().unwrap_or_default()
    };
    assert_eq!(
        published(&host, 2),
        [
            ("edgewarden.reason", "allowed"),
            ("edgewarden.rule", "*"),
            ("edgewarden.sub", "alice"),
            ("edgewarden.client_id", "billing"),
            ("edgewarden.jti", "jti-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );

    // Refused with a verified token (missing scope on a rule): the token's claims, the rule's label.
    host.request(3, "/admin/users", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 3, true), Outcome::Denied);
    assert_eq!(
        host.property(3, "edgewarden.reason").as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(
        host.property(3, "edgewarden.rule").as_deref(),
        Some("/admin")
    );
    assert_eq!(host.property(3, "edgewarden.sub").as_deref(), Some("alice"));

    // Refused before any verification: no claim of an unverified token is published.
    let mut forged_claims = claims("mallory", NOW + 3600);
    forged_claims["jti"] = json!("jti-2");
    let forged = mint(&keypair(2), "k1", forged_claims);
    host.request(4, "/api", &[("authorization", &bearer(&forged))]);
    assert_eq!(process(&mut host, &vm, 4, true), Outcome::Denied);
    assert_eq!(
        host.property(4, "edgewarden.reason").as_deref(),
        Some("bad_signature")
    );
    assert_eq!(host.property(4, "edgewarden.sub"), None);
    assert_eq!(host.property(4, "edgewarden.jti"), None);

    // Anonymous on an anonymous rule.
    host.request(5, "/public/x", &[]);
    assert_eq!(process(&mut host, &vm, 5, true), Outcome::Continue);
    assert_eq!(
        published(&host, 5),
        [
            ("edgewarden.reason", "anonymous"),
            ("edgewarden.rule", "/public")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );

    for values in host.properties.values() {
        for (name, value) in values {
            assert!(
                !value.contains(&token) && !value.contains(&forged),
                "{name}"
            );
        }
    }
}

#[test]
fn one_decision_property_holds_every_field_as_logfmt_and_none_sets_nothing() {
    let mut c = claims("alice smith", NOW + 3600);
    c["jti"] = json!("jti-1");
    c["client_id"] = json!("a\"b\\c=d");
    let token = mint(&keypair(1), "k1", c);

    let one = vm(json!({"decision_properties": "one"}));
    let mut host = FakeHost::new();
    host.request(2, "/api/orders", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &one, 2, true), Outcome::Continue);
    assert_eq!(
        host.properties.get(&2).cloned().unwrap_or_default(),
        [(
            "edgewarden.decision".to_string(),
            r#"reason=allowed rule=* sub="alice smith" client_id="a\"b\\c=d" jti=jti-1"#
                .to_string()
        )]
    );
    // A refusal before verification: the reason and the rule only.
    host.request(3, "/public/x", &[("authorization", "Bearer not-a-token")]);
    process(&mut host, &one, 3, true);
    assert_eq!(
        host.property(3, "edgewarden.decision").as_deref(),
        Some("reason=malformed rule=/public")
    );
    assert_eq!(host.property(3, "edgewarden.reason"), None);

    let none = vm(json!({"decision_properties": "none"}));
    let mut host = FakeHost::new();
    host.request(2, "/api/orders", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &none, 2, true), Outcome::Continue);
    host.request(3, "/api/orders", &[]);
    assert_eq!(process(&mut host, &none, 3, true), Outcome::Denied);
    assert!(
        host.properties.values().all(Vec::is_empty),
        "{:?}",
        host.properties
    );
}

#[test]
fn published_claims_lose_control_characters_and_are_bounded() {
    let vm = vm(json!({}));
    let mut host = FakeHost::new();
    let mut c = claims("alice\r\n10.0.0.1 - - \"GET /forged\"", NOW + 3600);
    c["jti"] = json!("é".repeat(200));
    let token = mint(&keypair(1), "k1", c);
    host.request(2, "/api", &[("authorization", &bearer(&token))]);
    assert_eq!(process(&mut host, &vm, 2, true), Outcome::Continue);
    assert_eq!(
        host.property(2, "edgewarden.sub").as_deref(),
        Some("alice10.0.0.1 - - \"GET /forged\"")
    );
    let jti = host.property(2, "edgewarden.jti").unwrap();
    assert_eq!(jti, "é".repeat(128));
    assert!(jti.len() <= super::MAX_PROPERTY_BYTES);
}

#[test]
fn loggable_drops_every_control_character_and_keeps_everything_else() {
    use super::loggable;
    use std::borrow::Cow;
    // Kept as they are, without a copy: ASCII, other scripts, and 0xC2-led characters that are not controls.
    for value in ["user-123", "é ü 東京", "§ ¢ \u{a0}nbsp", ""] {
        assert!(
            matches!(loggable(value), Cow::Borrowed(v) if v == value),
            "{value:?}"
        );
    }
    // C0 controls, DEL and C1 controls (U+0080..U+009F, encoded 0xC2 0x80..0x9F) go; the rest stays.
    assert_eq!(loggable("a\tb\r\nc\u{7f}d"), "abcd");
    assert_eq!(loggable("a\u{85}b\u{9f}c§"), "abc§");
    assert_eq!(loggable("\u{0}"), "");
}
