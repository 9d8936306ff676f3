//! The edge and the real admin API together (issue 4): tokens the admin API issues work at the edge,
//! revocations by jti, subject and refresh-token reuse reach the edge within a bound, the edge keeps
//! its revocations while the admin API is down and refuses (or, configured so, allows) once its state
//! is stale, a restarted Envoy never lets a revoked token through, and edge traffic shows up in the
//! admin API as edges, usage, failure samples and anomalies.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgewarden_e2e::{
    admin_bin, echo, eventually, AdminApi, Issued, Stack, TestKey, TokenBuilder, TokenRequest,
    AUDIENCE, CONTROL_PLANE_CLUSTER, E2E_CLIENT, EDGE_NAME, JWKS_PATH,
};
use serde_json::{json, Value};

/// `revocation.poll_interval_ms`.
const POLL_INTERVAL_MS: u64 = 200;
/// `revocation.max_staleness_seconds`.
const MAX_STALENESS_SECONDS: u64 = 4;
/// `revocation.long_poll_seconds`: longer than the staleness bound on purpose, as in the interface
/// example: the edge must keep its polls short enough that a quiet, healthy feed never makes it stale
/// (`a_quiet_healthy_edge_never_goes_stale` pins that).
const LONG_POLL_SECONDS: u64 = 5;
/// `usage.flush_interval_ms`.
const FLUSH_INTERVAL_MS: u64 = 500;
/// How soon after the admin API acknowledges a revocation the edge must refuse the token.
const REVOCATION_BOUND: Duration = Duration::from_secs(2);
/// How long a fresh Envoy may take to sync its revocation state for the first time.
const FIRST_SYNC: Duration = Duration::from_secs(10);
/// `Reason::StaleRevocationState.phrase()`: the challenge's `error_description` for a stale state.
const STALE_PHRASE: &str = "revocation state unavailable";
/// `Reason::Revoked.phrase()`.
const REVOKED_PHRASE: &str = "token revoked";

/// The plugin configuration of every test here: the admin API as issuer (keys fetched from it),
/// control plane and revocation feed, usage reports, and claims forwarded to the upstream.
fn config(admin: &AdminApi, on_stale: &str) -> Value {
    json!({
        "issuers": [{
            "issuer": admin.issuer(),
            "audiences": [AUDIENCE],
            "remote_jwks": {"cluster": CONTROL_PLANE_CLUSTER, "path": JWKS_PATH},
        }],
        "control_plane": {"cluster": CONTROL_PLANE_CLUSTER, "api_key": admin.edge_key, "edge_name": EDGE_NAME},
        "revocation": {
            "poll_interval_ms": POLL_INTERVAL_MS,
            "max_staleness_seconds": MAX_STALENESS_SECONDS,
            "on_stale": on_stale,
            "long_poll_seconds": LONG_POLL_SECONDS,
        },
        "usage": {"flush_interval_ms": FLUSH_INTERVAL_MS},
        "realm": "e2e",
        "rules": [
            {"match": {"prefix": "/public"}, "allow_anonymous": true},
            {"match": {"prefix": "/read"}, "require_scopes": ["read"]},
        ],
        "forward_claims": [
            {"claim": "sub", "header": "x-jwt-sub"},
            {"claim": "client_id", "header": "x-jwt-client-id"},
            {"claim": "jti", "header": "x-jwt-jti"},
        ],
    })
}

/// What the edge answered one request.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    challenge: String,
    body: String,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.status == 200
    }

    fn refused_with(&self, phrase: &str) -> bool {
        self.status == 401
            && self.challenge.contains(r#"error="invalid_token""#)
            && self
                .challenge
                .contains(&format!(r#"error_description="{phrase}""#))
    }

    fn refused_as_revoked(&self) -> bool {
        self.refused_with(REVOKED_PHRASE)
    }

    fn refused_as_stale(&self) -> bool {
        self.refused_with(STALE_PHRASE)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (www-authenticate: {:?}, body: {})",
            self.status,
            self.challenge,
            self.body.chars().take(300).collect::<String>()
        )
    }
}

/// Sends `GET path` with `token` through Envoy and reads the whole answer.
async fn send(stack: &Stack, path: &str, token: &str) -> Outcome {
    let response = stack
        .get_with_token(path, token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} through envoy failed: {e}"));
    outcome(response).await
}

async fn outcome(response: reqwest::Response) -> Outcome {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap_or_default();
    Outcome {
        status,
        challenge,
        body,
    }
}

/// Asserts the edge lets `token` through now.
async fn assert_passes(stack: &Stack, token: &Issued, what: &str) {
    let got = send(stack, "/read", &token.access_token).await;
    assert!(
        got.passed(),
        "{what}: expected 200 from the edge, got {got}"
    );
}

/// Asserts the edge refuses `token` now as revoked.
async fn assert_refused_as_revoked(stack: &Stack, token: &Issued, what: &str) {
    let got = send(stack, "/read", &token.access_token).await;
    assert!(
        got.refused_as_revoked(),
        "{what}: expected 401 with error_description=\"{REVOKED_PHRASE}\", got {got}"
    );
}

/// Waits until the edge answers `token` with an outcome matching `want`; returns how long it took.
async fn wait_for(
    stack: &Stack,
    token: &Issued,
    expected: &str,
    timeout: Duration,
    want: fn(&Outcome) -> bool,
) -> Duration {
    let (_, took) = eventually(expected, timeout, move || async move {
        let got = send(stack, "/read", &token.access_token).await;
        if want(&got) {
            Ok(())
        } else {
            Err(got.to_string())
        }
    })
    .await;
    took
}

/// Waits until a fresh edge has synced (under `on_stale: deny` a valid token is refused before that).
async fn wait_until_synced(stack: &Stack, valid: &Issued) {
    wait_for(
        stack,
        valid,
        "a valid token to pass once the edge has synced its revocation state",
        FIRST_SYNC,
        Outcome::passed,
    )
    .await;
}

/// Waits until the edge refuses `token` as revoked, and asserts it did so within [`REVOCATION_BOUND`].
async fn assert_revoked_within_bound(stack: &Stack, token: &Issued, what: &str) -> Duration {
    let took = wait_for(
        stack,
        token,
        &format!("{what} to be refused with \"{REVOKED_PHRASE}\""),
        REVOCATION_BOUND * 3,
        Outcome::refused_as_revoked,
    )
    .await;
    assert!(
        took <= REVOCATION_BOUND,
        "{what}: expected the edge to refuse it within {REVOCATION_BOUND:?} of the acknowledged revocation, it took {took:?}"
    );
    took
}

async fn start(on_stale: &str) -> (AdminApi, Stack) {
    let admin = AdminApi::start().await;
    let stack = Stack::start_with_control_plane(config(&admin, on_stale), admin.addr).await;
    (admin, stack)
}

/// The admin API fixture runs the binary cargo built for these tests, not some other build in target/.
#[test]
fn admin_binary_is_the_one_cargo_built_for_these_tests() {
    assert_eq!(
        admin_bin(),
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_e2e-admin-api"))
    );
}

/// The harness itself, without Envoy: keys from the CLI work, issuance, revocation, refresh rotation
/// and reuse detection behave as documented, and kill + restart keeps data, port and signing keys.
#[tokio::test]
async fn admin_api_harness_keeps_its_state_across_kill_and_restart() {
    let mut admin = AdminApi::start().await;
    let token = admin
        .issue(&TokenRequest::new("harness").with_refresh())
        .await;
    let revocation = admin.revoke_jti(&token.jti).await;
    let cursor = revocation["cursor"]
        .as_i64()
        .expect("revocation has a cursor");
    let feed = admin
        .feed(0)
        .await
        .expect(200, "poll the feed with the edge key");
    assert_eq!(feed.body["full"], true, "{}", feed.text);
    assert!(
        feed.body["cursor"].as_i64() >= Some(cursor),
        "feed cursor behind the revocation: {}",
        feed.text
    );
    let refresh = token.refresh_token.clone().expect("a refresh token");
    let rotated = admin
        .refresh(&refresh)
        .await
        .expect(200, "first use of a refresh token")
        .issued();
    assert_ne!(rotated.refresh_token.as_deref(), Some(refresh.as_str()));
    let reuse = admin.refresh(&refresh).await;
    assert_eq!(reuse.status, 400, "replayed refresh token: {}", reuse.text);
    assert_eq!(reuse.body["error"], "invalid_grant", "{}", reuse.text);
    let jwks = admin.get(JWKS_PATH).await.expect(200, "jwks").body;

    admin.kill();
    assert!(!admin.is_running());
    assert!(
        std::net::TcpStream::connect(admin.addr).is_err(),
        "the killed admin API's port still accepts connections"
    );
    admin.restart().await;
    assert!(admin.is_running());
    let feed = admin
        .feed(0)
        .await
        .expect(200, "poll the feed after a restart");
    let jtis: Vec<&str> = feed.body["revoked_jtis"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["jti"].as_str()).collect())
        .unwrap_or_default();
    for jti in [&token.jti, &rotated.jti] {
        assert!(
            jtis.contains(&jti.as_str()),
            "revoked jti {jti} missing from the feed after a restart: {}",
            feed.text
        );
    }
    assert_eq!(
        admin.get(JWKS_PATH).await.expect(200, "jwks").body,
        jwks,
        "a restart with the same master key keeps the signing keys"
    );
    let anomalies = admin.anomalies(&[("kind", "refresh_token_reuse")]).await;
    assert_eq!(
        anomalies.len(),
        1,
        "one refresh_token_reuse anomaly expected: {anomalies:?}"
    );
    assert!(
        admin.edges().await.is_empty(),
        "no edge has polled or reported yet"
    );
}

/// The harness's Envoy side: the `control_plane` cluster is accepted beside the others, and a
/// restarted Envoy serves the same configuration on the same listener with a fresh admin port.
#[tokio::test]
async fn restarted_envoy_serves_the_same_config_on_the_same_listener() {
    let admin = AdminApi::start().await;
    let mut stack = Stack::start_with_control_plane(crate::base_config(), admin.addr).await;
    let token = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let got = send(&stack, "/read", &token).await;
    assert!(got.passed(), "before the restart: expected 200, got {got}");
    let (listener, old_admin) = (stack.listener, stack.admin);
    stack.restart().await;
    assert_eq!(stack.listener, listener);
    assert_ne!(stack.admin, old_admin, "a new envoy has a new admin port");
    let got = send(&stack, "/read", &token).await;
    assert!(got.passed(), "after the restart: expected 200, got {got}");
    assert_eq!(
        stack.filter_counter("requests_allowed").await,
        1,
        "counters start again with the new process"
    );
    let clusters = stack
        .client()
        .get(format!("http://{}/clusters", stack.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        clusters.contains(&format!("{CONTROL_PLANE_CLUSTER}::{}", admin.addr)),
        "envoy should list the {CONTROL_PLANE_CLUSTER} cluster at {}: {clusters}",
        admin.addr
    );
    stack.kill_envoy();
    assert!(
        std::net::TcpStream::connect(stack.listener).is_err(),
        "a killed envoy's listener still accepts connections"
    );
}

#[tokio::test]
async fn issued_token_reaches_the_upstream_with_its_claims() {
    let (admin, stack) = start("deny").await;
    let token = admin.issue_for("alice").await;
    wait_until_synced(&stack, &token).await;
    let seen = echo(
        stack
            .get_with_token("/read", &token.access_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen.header("x-jwt-sub").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-jwt-client-id").as_deref(), Some(E2E_CLIENT));
    assert_eq!(seen.header("x-jwt-jti"), Some(token.jti.clone()));
    // Tokens are checked against the admin API's keys: a fixture key it never published is refused.
    let stranger = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let got = send(&stack, "/read", &stranger).await;
    assert_eq!(
        got.status, 401,
        "a token signed by a key the admin API never published: expected 401, got {got}"
    );
    let no_scope = admin
        .issue(&TokenRequest::new("alice").scopes(&["write"]))
        .await;
    let got = send(&stack, "/read", &no_scope.access_token).await;
    assert_eq!(
        got.status, 403,
        "an issued token without the read scope on /read: expected 403, got {got}"
    );
}

/// The `kid` in a token's JOSE header.
fn kid(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or_default();
    let header: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null);
    header["kid"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_key_rotation_in_the_admin_api_fails_no_request_at_the_edge() {
    let (admin, stack) = start("deny").await;
    let before = admin.issue_for("alice").await;
    wait_until_synced(&stack, &before).await;
    admin
        .post("/api/v1/keys/rotate", &json!({}))
        .await
        .expect(200, "rotate the signing key");
    let after = admin.issue_for("bob").await;
    assert_ne!(
        kid(&after.access_token),
        kid(&before.access_token),
        "the rotation gave tokens a new kid"
    );
    // The very first request with the new kid passes: the edge refetches the JWKS while it waits.
    assert_passes(&stack, &after, "the first token signed by the new key").await;
    assert_passes(
        &stack,
        &before,
        "a token signed by the retired key, still unexpired",
    )
    .await;
    assert_eq!(
        stack.filter_counter("requests_denied.unknown_kid").await,
        0,
        "no request was refused for its key"
    );
    assert!(stack.filter_counter("jwks_refetches").await >= 1);
}

#[tokio::test]
async fn revoked_jti_is_refused_within_two_seconds_and_other_tokens_pass() {
    let (admin, stack) = start("deny").await;
    let revoked = admin.issue_for("bob").await;
    let other = admin.issue_for("bob").await;
    wait_until_synced(&stack, &revoked).await;
    assert_passes(&stack, &other, "bob's other token before the revocation").await;

    let revocation = admin.revoke_jti(&revoked.jti).await;
    assert_revoked_within_bound(&stack, &revoked, "the revoked jti").await;
    assert_passes(&stack, &other, "bob's other token after the revocation").await;
    assert!(stack.filter_counter("requests_denied.revoked").await >= 1);
    assert!(stack.filter_counter("revocation_updates").await >= 1);
    let cursor = revocation["cursor"].as_i64().unwrap_or_default() as u64;
    let stack = &stack;
    eventually(
        "gauge revocation_cursor at least the revocation's cursor, and revocation_entries at least 1",
        Duration::from_secs(2),
        move || async move {
            let cursor_gauge = stack.filter_gauge("revocation_cursor").await;
            let entries = stack.filter_gauge("revocation_entries").await;
            if cursor_gauge >= Some(cursor) && entries >= Some(1) {
                Ok(())
            } else {
                Err(format!("revocation_cursor {cursor_gauge:?} (want >= {cursor}), revocation_entries {entries:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn revoking_a_subject_refuses_all_its_tokens_and_no_one_elses() {
    let (admin, stack) = start("deny").await;
    let carol_1 = admin.issue_for("carol").await;
    let carol_2 = admin
        .issue(&TokenRequest::new("carol").scopes(&["read", "write"]))
        .await;
    let dave = admin.issue_for("dave").await;
    wait_until_synced(&stack, &carol_1).await;
    assert_passes(
        &stack,
        &carol_2,
        "carol's second token before the revocation",
    )
    .await;
    assert_passes(&stack, &dave, "dave's token before the revocation").await;

    admin.revoke_subject("carol").await;
    assert_revoked_within_bound(&stack, &carol_1, "carol's first token").await;
    assert_refused_as_revoked(&stack, &carol_2, "carol's second token").await;
    assert_passes(&stack, &dave, "dave's token after carol's revocation").await;
}

#[tokio::test]
async fn reused_refresh_token_gets_its_whole_family_refused_at_the_edge() {
    let (admin, stack) = start("deny").await;
    let first = admin.issue(&TokenRequest::new("erin").with_refresh()).await;
    let bystander = admin.issue_for("erin").await;
    wait_until_synced(&stack, &first).await;
    let spent = first.refresh_token.clone().expect("a refresh token");
    let second = admin
        .refresh(&spent)
        .await
        .expect(200, "first use of erin's refresh token")
        .issued();
    assert_passes(
        &stack,
        &first,
        "the family's first access token after a normal refresh",
    )
    .await;
    assert_passes(&stack, &second, "the refreshed access token").await;

    let replay = admin.refresh(&spent).await;
    assert_eq!(
        (replay.status, replay.body["error"].as_str()),
        (400, Some("invalid_grant")),
        "replaying a spent refresh token: expected 400 invalid_grant, got {}: {}",
        replay.status,
        replay.text
    );
    assert_revoked_within_bound(
        &stack,
        &second,
        "the refreshed access token of the reused family",
    )
    .await;
    assert_refused_as_revoked(&stack, &first, "the family's first access token").await;
    assert_passes(
        &stack,
        &bystander,
        "erin's token from outside the family (only the family is revoked)",
    )
    .await;
    let current = second
        .refresh_token
        .clone()
        .expect("a rotated refresh token");
    let answer = admin.refresh(&current).await;
    assert_eq!(
        answer.status, 400,
        "the family's current refresh token after reuse: expected 400, got {}: {}",
        answer.status, answer.text
    );
}

#[tokio::test]
async fn edge_keeps_revocations_while_the_admin_api_is_down_and_denies_once_stale() {
    let (mut admin, stack) = start("deny").await;
    let valid = admin.issue_for("frank").await;
    let revoked = admin.issue_for("frank").await;
    wait_until_synced(&stack, &valid).await;
    admin.revoke_jti(&revoked.jti).await;
    assert_revoked_within_bound(&stack, &revoked, "the revoked token").await;
    let failures_before = stack.filter_counter("revocation_poll_failures").await;

    admin.kill();
    let killed = Instant::now();
    assert_refused_as_revoked(
        &stack,
        &revoked,
        "the revoked token right after the admin API died",
    )
    .await;
    assert_passes(
        &stack,
        &valid,
        "a valid token right after the admin API died",
    )
    .await;

    let deadline = Duration::from_secs(MAX_STALENESS_SECONDS + 4);
    wait_for(
        &stack,
        &valid,
        &format!("a valid token to be refused with \"{STALE_PHRASE}\" once the state is older than {MAX_STALENESS_SECONDS}s"),
        deadline,
        Outcome::refused_as_stale,
    )
    .await;
    let stale_after = killed.elapsed();
    let got = send(&stack, "/read", &revoked.access_token).await;
    assert_eq!(
        got.status, 401,
        "the revoked token while stale: expected 401, got {got}"
    );
    let stack_ref = &stack;
    eventually(
        &format!("gauge revocation_staleness_seconds at least {MAX_STALENESS_SECONDS} once stale ({stale_after:?} after the kill)"),
        Duration::from_secs(2),
        move || async move {
            let staleness = stack_ref.filter_gauge("revocation_staleness_seconds").await;
            if staleness >= Some(MAX_STALENESS_SECONDS) {
                Ok(())
            } else {
                Err(format!("{staleness:?}"))
            }
        },
    )
    .await;
    let failures = stack.filter_counter("revocation_poll_failures").await;
    assert!(
        failures > failures_before,
        "revocation_poll_failures should grow while the admin API is down: {failures_before} before, {failures} now"
    );

    admin.restart().await;
    wait_for(
        &stack,
        &valid,
        "a valid token to pass again once the admin API is back",
        FIRST_SYNC,
        Outcome::passed,
    )
    .await;
    assert_refused_as_revoked(&stack, &revoked, "the revoked token after the resync").await;
}

#[tokio::test]
async fn with_on_stale_allow_valid_tokens_pass_when_stale_and_revoked_stay_refused() {
    let mut admin = AdminApi::start().await;
    let valid = admin.issue_for("grace").await;
    let revoked = admin.issue_for("grace").await;
    admin.revoke_jti(&revoked.jti).await;
    let stack = Stack::start_with_control_plane(config(&admin, "allow"), admin.addr).await;
    // With on_stale allow a valid token passes before the first sync too: the revoked one shows the sync.
    wait_for(
        &stack,
        &revoked,
        "the token revoked before envoy started to be refused once the edge synced",
        FIRST_SYNC,
        Outcome::refused_as_revoked,
    )
    .await;
    assert_passes(&stack, &valid, "a valid token once synced").await;
    let stale_allowed_before = stack.filter_counter("revocation_stale_allowed").await;

    admin.kill();
    let (stack_ref, valid_ref) = (&stack, &valid);
    eventually(
        "the edge to count a request it let through on a stale state (revocation_stale_allowed), every valid request passing meanwhile",
        Duration::from_secs(MAX_STALENESS_SECONDS + 4),
        move || async move {
            let got = send(stack_ref, "/read", &valid_ref.access_token).await;
            assert!(
                got.passed(),
                "on_stale allow: a valid token must pass while the admin API is down, got {got}"
            );
            let counted = stack_ref.filter_counter("revocation_stale_allowed").await;
            if counted > stale_allowed_before {
                Ok(())
            } else {
                Err(format!("revocation_stale_allowed still {counted}"))
            }
        },
    )
    .await;
    assert_refused_as_revoked(
        &stack,
        &revoked,
        "the revoked token on a stale state with on_stale allow",
    )
    .await;
    assert_passes(
        &stack,
        &valid,
        "a valid token on a stale state with on_stale allow",
    )
    .await;
}

#[tokio::test]
async fn a_quiet_healthy_edge_never_goes_stale() {
    let (admin, stack) = start("deny").await;
    let valid = admin.issue_for("heidi").await;
    wait_until_synced(&stack, &valid).await;
    // Nothing changes on the admin API, so long-polls are held to their end; the edge must still
    // count itself in sync for longer than max_staleness_seconds and a whole long-poll.
    let quiet = Duration::from_secs(MAX_STALENESS_SECONDS + LONG_POLL_SECONDS + 1);
    let started = Instant::now();
    while started.elapsed() < quiet {
        let got = send(&stack, "/read", &valid.access_token).await;
        assert!(
            got.passed(),
            "{:?} into a quiet period with the admin API up: expected 200, got {got}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn restarted_envoy_never_lets_a_revoked_token_through() {
    let (admin, mut stack) = start("deny").await;
    let valid = admin.issue_for("ivan").await;
    let revoked = admin.issue_for("ivan").await;
    wait_until_synced(&stack, &valid).await;
    admin.revoke_jti(&revoked.jti).await;
    assert_revoked_within_bound(&stack, &revoked, "the revoked token on the first envoy").await;

    stack.kill_envoy();
    // From before the new Envoy listens until the valid token passes, alternate the revoked and the
    // valid token, each on a new connection, as fast as the new process accepts them.
    let url = stack.url("/read");
    let done = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(&'static str, Outcome)>>> = Arc::default();
    let hammer = tokio::spawn({
        let (done, seen) = (Arc::clone(&done), Arc::clone(&seen));
        let (valid, revoked) = (valid.access_token.clone(), revoked.access_token.clone());
        async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client");
            let started = Instant::now();
            let mut extra_after_valid = 20;
            while !done.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(90) {
                for (name, token) in [("revoked", &revoked), ("valid", &valid)] {
                    match client.get(&url).bearer_auth(token).send().await {
                        Ok(response) => {
                            let got = outcome(response).await;
                            seen.lock().unwrap().push((name, got));
                        }
                        // Not listening yet: try again at once.
                        Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                }
                let valid_passed = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(name, got)| *name == "valid" && got.passed());
                if valid_passed {
                    extra_after_valid -= 1;
                    if extra_after_valid == 0 {
                        break;
                    }
                }
            }
        }
    });
    stack.restart().await;
    let restarted = Instant::now();
    while !hammer.is_finished() && restarted.elapsed() < FIRST_SYNC + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::SeqCst);
    hammer.await.expect("the request loop ends");

    let seen = seen.lock().unwrap().clone();
    let revoked_answers: Vec<&Outcome> = seen
        .iter()
        .filter(|(name, _)| *name == "revoked")
        .map(|(_, got)| got)
        .collect();
    let leaked: Vec<String> = revoked_answers
        .iter()
        .filter(|got| got.status != 401)
        .map(|got| got.to_string())
        .collect();
    assert!(
        leaked.is_empty(),
        "expected every request with the revoked token to be refused with 401 by the restarted envoy; {} of {} were not, first: {:?}",
        leaked.len(),
        revoked_answers.len(),
        leaked.first()
    );
    assert!(
        seen.iter()
            .any(|(name, got)| *name == "valid" && got.passed()),
        "the valid token never passed on the restarted envoy within {FIRST_SYNC:?}; answers: {:?}",
        seen.iter().rev().take(4).collect::<Vec<_>>()
    );
    let stale = revoked_answers
        .iter()
        .filter(|g| g.refused_as_stale())
        .count();
    let revoked_count = revoked_answers
        .iter()
        .filter(|g| g.refused_as_revoked())
        .count();
    assert_eq!(
        stale + revoked_count,
        revoked_answers.len(),
        "the revoked token must be refused as stale (before the first sync) or revoked, nothing else: {revoked_answers:?}"
    );
    assert!(
        revoked_count >= 1,
        "after the valid token passed, the revoked one should be refused as revoked: {revoked_answers:?}"
    );
}

#[tokio::test]
async fn edge_usage_and_anomalies_reach_the_admin_api() {
    let admin = AdminApi::start().await;
    let mut plugin = config(&admin, "deny");
    // No leeway, so a one-second token is expired a second later.
    plugin["clock_skew_seconds"] = json!(0);
    let stack = Stack::start_with_control_plane(plugin, admin.addr).await;
    let valid = admin.issue_for("judy").await;
    let expiring = admin.issue(&TokenRequest::new("judy").ttl_seconds(1)).await;
    let revoked = admin.issue_for("mallory").await;
    wait_until_synced(&stack, &valid).await;
    for _ in 0..5 {
        assert_passes(&stack, &valid, "judy's valid token").await;
    }
    assert_passes(&stack, &revoked, "mallory's token before its revocation").await;
    admin.revoke_jti(&revoked.jti).await;
    assert_revoked_within_bound(&stack, &revoked, "mallory's revoked token").await;
    for _ in 0..3 {
        assert_refused_as_revoked(&stack, &revoked, "mallory's revoked token, reused").await;
    }
    wait_for(
        &stack,
        &expiring,
        "the one-second token to be refused as expired",
        Duration::from_secs(5),
        |got| {
            got.status == 401
                && got
                    .challenge
                    .contains(r#"error_description="token expired""#)
        },
    )
    .await;
    // Failures from one address spread over several flush intervals: tokens signed with a key the
    // admin API never published (unknown_kid) and the expired one.
    for i in 0..24 {
        let stranger = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
        let token = if i % 3 == 0 {
            expiring.access_token.as_str()
        } else {
            stranger.as_str()
        };
        let got = send(&stack, "/read", token).await;
        assert_eq!(
            got.status, 401,
            "a refused token (attempt {i}): expected 401, got {got}"
        );
        tokio::time::sleep(Duration::from_millis(FLUSH_INTERVAL_MS / 5)).await;
    }

    let timeout = Duration::from_secs(15);
    let admin = &admin;
    eventually(
        "edge e2e-edge listed with last_poll, last_report and no cursor lag",
        timeout,
        move || async move {
            match admin.edge(EDGE_NAME).await {
                Some(edge)
                    if edge["last_poll"].is_i64()
                        && edge["last_report"].is_i64()
                        && edge["cursor_lag"] == 0 =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let valid_jti = valid.jti.as_str();
    eventually(
        "at least 5 allowed decisions for judy's token in the usage time series",
        timeout,
        move || async move {
            let n = admin
                .usage_count(&[("edge", EDGE_NAME), ("jti", valid_jti)], "allowed")
                .await;
            if n >= 5 {
                Ok(())
            } else {
                Err(format!(
                    "{n} allowed; series {}",
                    admin.usage_timeseries(&[("edge", EDGE_NAME)]).await
                ))
            }
        },
    )
    .await;
    let revoked_jti = revoked.jti.as_str();
    eventually(
        "failure samples for the revoked and the expired token from 127.0.0.1",
        timeout,
        move || async move {
            let failures = admin.usage_failures(&[("edge", EDGE_NAME)]).await;
            let has = |reason: &str, jti: &str| {
                failures.iter().any(|f| {
                    f["reason"] == reason && f["jti"] == jti && f["client_address"] == "127.0.0.1"
                })
            };
            let expired = failures
                .iter()
                .any(|f| f["reason"] == "expired" && f["client_address"] == "127.0.0.1");
            if has("revoked", revoked_jti) && expired {
                Ok(())
            } else {
                Err(format!("{failures:?}"))
            }
        },
    )
    .await;
    eventually(
        "an open revoked_token_use anomaly for mallory's token and an address_failures one for 127.0.0.1",
        timeout,
        move || async move {
            let revoked_use = admin.anomalies(&[("kind", "revoked_token_use")]).await;
            let address = admin.anomalies(&[("kind", "address_failures")]).await;
            let found_revoked = revoked_use
                .iter()
                .any(|a| a["subject"] == revoked_jti && a["state"] == "open");
            let found_address = address
                .iter()
                .any(|a| a["subject"] == "127.0.0.1" && a["state"] == "open");
            if found_revoked && found_address {
                Ok(())
            } else {
                Err(format!("revoked_token_use: {revoked_use:?}; address_failures: {address:?}"))
            }
        },
    )
    .await;
    let leaked = admin.anomalies(&[("kind", "revoked_token_allowed")]).await;
    assert!(
        leaked.is_empty(),
        "no edge may have allowed a revoked token past the grace period: {leaked:?}"
    );
    assert!(stack.filter_counter("revocation_polls").await >= 1);
    assert!(stack.filter_counter("usage_reports").await >= 1);
    assert_eq!(
        stack.filter_counter("usage_report_failures").await,
        0,
        "usage reports failed while the admin API was up"
    );
    assert_eq!(stack.filter_counter("usage_dropped").await, 0);
}
