//! The web dashboard in headless Chromium (issue 9): logging in, issuing and revoking a token from the
//! page while a real Envoy enforces it, an anomaly from edge traffic arriving live, what an auditor may
//! see and do, a session ending mid-use, CSRF on mutations, and accessibility (axe-core) with a
//! screenshot of every page under `target/screenshots/dashboard/`.
//! Each test has its own admin API (embedding the dashboard), Envoy and browser on free ports.

use std::collections::BTreeMap;
use std::time::Duration;

use edgewarden_e2e::browser::dashboard_dist;
use edgewarden_e2e::{
    claims, eventually, jwks, now, AdminApi, Browser, Issued, Stack, TestKey, TokenBuilder,
    TokenRequest, AUDIENCE, CONTROL_PLANE_CLUSTER, E2E_CLIENT, EDGE_NAME, JWKS_PATH,
};
use fantoccini::Locator;
use serde_json::{json, Value};

/// The dashboard admin user every test logs in as.
const ADMIN_USER: &str = "ada";
const ADMIN_PASSWORD: &str = "ada-has-a-long-passphrase";
/// A dashboard user with the auditor role.
const AUDITOR_USER: &str = "audrey";
const AUDITOR_PASSWORD: &str = "audrey-reads-everything";
/// `Reason::Revoked.phrase()`: the challenge's `error_description` for a revoked token.
const REVOKED_PHRASE: &str = "token revoked";
/// How long a fresh Envoy may take to sync its revocation state for the first time.
const FIRST_SYNC: Duration = Duration::from_secs(15);
/// How long edge reports take to become anomalies, events and figures the page shows.
const REPORTED: Duration = Duration::from_secs(30);
/// The words of a button or link that changes something: none may be offered to an auditor.
const MUTATING_BUTTONS: &[&str] = &[
    "Revoke",
    "Issue",
    "Acknowledge",
    "Resolve",
    "Reopen",
    "Rotate",
    "Register client",
    "Create key",
];

/// Serious accessibility violations the dashboard is known to have, as (page, axe rule): the events
/// page puts the token link inside each event's `<summary>` (a link inside the disclosure control).
const KNOWN_VIOLATIONS: &[(&str, &str)] = &[];

/// The plugin configuration: the admin API as issuer (keys fetched from it), control plane,
/// revocation feed (polled often) and usage reports (flushed often), as in `control_plane.rs`.
fn plugin_config(admin: &AdminApi) -> Value {
    json!({
        "issuers": [{
            "issuer": admin.issuer(),
            "audiences": [AUDIENCE],
            "remote_jwks": {"cluster": CONTROL_PLANE_CLUSTER, "path": JWKS_PATH},
        }],
        "control_plane": {"cluster": CONTROL_PLANE_CLUSTER, "api_key": admin.edge_key, "edge_name": EDGE_NAME},
        "revocation": {
            "poll_interval_ms": 200,
            "max_staleness_seconds": 4,
            "on_stale": "deny",
            "long_poll_seconds": 5,
        },
        "usage": {"flush_interval_ms": 500},
        "realm": "e2e",
        "rules": [
            {"match": {"prefix": "/public"}, "allow_anonymous": true},
            {"match": {"prefix": "/read"}, "require_scopes": ["read"]},
        ],
    })
}

/// An issuer the debugger test's edge trusts with an inline key set, so the test signs any claims it
/// likes (the admin API issues no back-dated tokens); registered with the admin API as trusted, so its
/// tokens' jtis and subjects can be revoked.
const TRUSTED_ISSUER: &str = "https://trusted.e2e.edgewarden.test";
/// The key of [`TRUSTED_ISSUER`]; `TestKey::Es256A` stays foreign to the edge.
const TRUSTED_KEY: TestKey = TestKey::Es256B;
/// The debugger test's clock leeway (`clock_skew_seconds`, the engine's default, spelled out).
const LEEWAY: u64 = 60;

/// [`plugin_config`] plus [`TRUSTED_ISSUER`] with its key inline and an explicit leeway.
fn debugger_config(admin: &AdminApi) -> Value {
    let mut config = plugin_config(admin);
    config["clock_skew_seconds"] = json!(LEEWAY);
    if let Some(issuers) = config["issuers"].as_array_mut() {
        issuers.push(json!({
            "issuer": TRUSTED_ISSUER,
            "audiences": [AUDIENCE],
            "jwks": jwks(&[TRUSTED_KEY]),
        }));
    }
    config
}

/// A token of [`TRUSTED_ISSUER`] for `subject` with scope `read`, valid for an hour.
fn trusted(subject: &str) -> TokenBuilder {
    TokenBuilder::new(TRUSTED_KEY)
        .claim("iss", TRUSTED_ISSUER)
        .subject(subject)
        .scope("read")
}

/// The admin API with the dashboard and the two dashboard users, after checking that the binary
/// really embeds the dashboard (a build without it answers 503 at `/`).
async fn start_admin() -> AdminApi {
    dashboard_dist();
    let admin = AdminApi::start().await;
    let index = admin.call(reqwest::Method::GET, "/", "", None).await;
    assert!(
        index.status == 200 && index.text.contains("<html"),
        "the admin API binary does not serve the dashboard at / (answered {}): it was built without EDGEWARDEN_DASHBOARD_DIST; run the tests with `cargo xtask test`",
        index.status
    );
    admin.create_user(ADMIN_USER, ADMIN_PASSWORD, "admin");
    admin.create_user(AUDITOR_USER, AUDITOR_PASSWORD, "auditor");
    admin
}

/// The admin API, an Envoy using it as control plane, and a browser.
async fn start_with_edge() -> (AdminApi, Stack, Browser) {
    let (admin, browser) = tokio::join!(start_admin(), Browser::start());
    let stack = Stack::start_with_control_plane(plugin_config(&admin), admin.addr).await;
    (admin, stack, browser)
}

/// Waits until the admin API lists `instances` instances of the edge, each with a configuration it holds.
async fn wait_configs_reported(admin: &AdminApi, instances: usize) {
    eventually(
        &format!("{instances} instances of the edge with their configuration reported"),
        REPORTED,
        || async {
            let edge = admin
                .edge(EDGE_NAME)
                .await
                .ok_or("the edge is not listed")?;
            let reported = edge["instances"]
                .as_array()
                .map(|all| all.iter().filter(|i| i["config_known"] == true).count())
                .unwrap_or(0);
            if reported == instances {
                Ok(())
            } else {
                Err(format!("{edge}"))
            }
        },
    )
    .await;
}

/// What the edge answered one request: status, `www-authenticate`, body.
#[derive(Debug)]
struct Outcome {
    status: u16,
    challenge: String,
    body: String,
}

impl Outcome {
    fn refused_as_revoked(&self) -> bool {
        self.status == 401
            && self
                .challenge
                .contains(&format!(r#"error_description="{REVOKED_PHRASE}""#))
    }
}

/// `GET /read` through Envoy with `token`.
async fn call_edge(stack: &Stack, token: &str) -> Outcome {
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
    let body = response.text().await.unwrap_or_default();
    Outcome {
        status,
        challenge,
        body,
    }
}

/// Waits until the edge lets `token` through (a fresh edge refuses everything until its first sync).
async fn wait_passes(stack: &Stack, token: &str, what: &str) {
    eventually(&format!("{what} to pass the edge"), FIRST_SYNC, || async {
        let got = call_edge(stack, token).await;
        if got.status == 200 {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

/// Waits until the edge refuses `token` as revoked.
async fn wait_refused_as_revoked(stack: &Stack, token: &str, what: &str) -> Outcome {
    eventually(
        &format!("{what} to be refused with 401 error_description=\"{REVOKED_PHRASE}\""),
        Duration::from_secs(10),
        || async {
            let got = call_edge(stack, token).await;
            if got.refused_as_revoked() {
                Ok(got)
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await
    .0
}

/// Edge traffic that fills every page: two tokens used, a third used, revoked and used again (which
/// raises a `revoked_token_use` anomaly), and refusals of a token signed by an unknown key.
/// Returns the used token that stays active and the revoked one, once the anomaly and the edge are listed.
async fn populate(admin: &AdminApi, stack: &Stack) -> (Issued, Issued) {
    let alice = admin.issue_for("alice").await;
    let bob = admin.issue_for("bob").await;
    let mallory = admin.issue_for("mallory").await;
    wait_passes(stack, &alice.access_token, "alice's token").await;
    for token in [&alice, &bob, &alice, &mallory] {
        assert_eq!(call_edge(stack, &token.access_token).await.status, 200);
    }
    let stranger = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    for _ in 0..3 {
        assert_eq!(call_edge(stack, &stranger).await.status, 401);
    }
    admin.revoke_jti(&mallory.jti).await;
    wait_refused_as_revoked(stack, &mallory.access_token, "mallory's revoked token").await;
    call_edge(stack, &mallory.access_token).await;
    let jti = mallory.jti.clone();
    eventually(
        "a revoked_token_use anomaly for mallory's token and the edge listed",
        REPORTED,
        || {
            let jti = jti.clone();
            async move {
                let anomalies = admin.anomalies(&[("kind", "revoked_token_use")]).await;
                let edge = admin.edge(EDGE_NAME).await;
                if anomalies.iter().any(|a| a["subject"] == jti.as_str()) && edge.is_some() {
                    Ok(())
                } else {
                    Err(format!("anomalies {anomalies:?}; edge {edge:?}"))
                }
            }
        },
    )
    .await;
    (alice, mallory)
}

/// Logs in through the login form (from wherever the browser is, or `/login`), and waits until the
/// page behind it shows the header with the user's name.
async fn log_in(browser: &Browser, admin: &AdminApi, username: &str, password: &str) {
    if !browser.path_and_query().await.starts_with("/login") {
        browser.goto(&admin.url("/login")).await;
    }
    browser
        .wait_for("input[name=username]")
        .await
        .send_keys(username)
        .await
        .expect("type the username");
    browser
        .wait_for("input[name=password]")
        .await
        .send_keys(password)
        .await
        .expect("type the password");
    browser
        .wait_for("form button[type=submit]")
        .await
        .click()
        .await
        .expect("click Log in");
    browser
        .wait_for_path("to leave the login page after logging in", |p| {
            !p.starts_with("/login")
        })
        .await;
    browser.wait_for_text("[data-testid=who]", username).await;
}

/// Opens `path` with a full page load and waits until it has loaded.
async fn open(browser: &Browser, admin: &AdminApi, path: &str) {
    browser.goto(&admin.url(path)).await;
    browser.wait_loaded().await;
}

/// The overview's figures by label (`active now` -> 2), read from the page.
async fn overview_figures(browser: &Browser) -> BTreeMap<String, i64> {
    let figures = browser
        .execute(
            "return Array.from(document.querySelectorAll('a.stat')).map(s => [s.querySelector('.stat-label').textContent.trim(), s.querySelector('.stat-value').textContent.trim()]);",
            vec![],
        )
        .await;
    figures
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| {
            let label = pair[0].as_str()?.to_owned();
            let value = pair[1].as_str()?.replace(',', "").parse().ok()?;
            Some((label, value))
        })
        .collect()
}

/// `fetch(method path)` from the page with its cookies, a JSON `body`, and the `x-csrf-token` header
/// copied from the `ew_csrf` cookie when `with_csrf`; the status and the body's text.
async fn fetch_from_page(
    browser: &Browser,
    method: &str,
    path: &str,
    body: &Value,
    with_csrf: bool,
) -> (u16, String) {
    let answer = browser
        .execute_async(
            r#"
            const [method, path, body, withCsrf, done] = arguments;
            const headers = { 'content-type': 'application/json' };
            if (withCsrf) {
                const pair = document.cookie.split(';').map(c => c.trim().split('=')).find(([n]) => n === 'ew_csrf');
                headers['x-csrf-token'] = pair ? pair[1] : '';
            }
            fetch(path, { method, headers, body: JSON.stringify(body), credentials: 'same-origin' })
                .then(r => r.text().then(text => done({ status: r.status, text })))
                .catch(e => done({ status: 0, text: String(e) }));
            "#,
            vec![json!(method), json!(path), body.clone(), json!(with_csrf)],
        )
        .await;
    (
        answer["status"].as_u64().unwrap_or_default() as u16,
        answer["text"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The status of token `jti` in the admin API.
async fn token_record(admin: &AdminApi, jti: &str) -> Value {
    admin
        .get(&format!("/api/v1/tokens/{jti}"))
        .await
        .expect(200, &format!("read token {jti}"))
        .body
}

#[tokio::test]
async fn an_admin_logs_in_and_the_overview_figures_match_the_api() {
    let (admin, stack, browser) = start_with_edge().await;
    let (alice, _) = populate(&admin, &stack).await;
    admin.issue_for("carol").await;
    wait_passes(&stack, &alice.access_token, "alice's token").await;

    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    let who = browser
        .wait_for("[data-testid=who]")
        .await
        .text()
        .await
        .expect("read the header's user");
    assert!(
        who.contains(ADMIN_USER) && who.contains("(admin)"),
        "the header should show the user and (admin), shows {who:?}"
    );
    assert_eq!(
        browser.path_and_query().await,
        "/",
        "logging in from /login lands on the overview"
    );
    browser.wait_for("a.stat").await;
    browser.wait_loaded().await;

    let api = admin
        .get("/api/v1/overview?range=24h")
        .await
        .expect(200, "read the overview")
        .body;
    let shown = overview_figures(&browser).await;
    for (label, field) in [
        ("active now", "active"),
        ("issued in range", "issued_in_range"),
        ("revoked in range", "revoked_in_range"),
        ("expired in range", "expired_in_range"),
    ] {
        let want = api["tokens"][field]
            .as_i64()
            .unwrap_or_else(|| panic!("no tokens.{field} in {api}"));
        assert_eq!(
            shown.get(label).copied(),
            Some(want),
            "the overview's {label:?} should be the API's tokens.{field}; the page shows {shown:?}, the API {api}"
        );
    }
    assert_eq!(api["tokens"]["active"], 3, "alice, bob and carol: {api}");
    assert_eq!(
        shown.get("high").copied().unwrap_or_default()
            + shown.get("medium").copied().unwrap_or_default()
            + shown.get("low").copied().unwrap_or_default(),
        ["high", "medium", "low"]
            .iter()
            .map(|s| api["open_anomalies"][s].as_i64().unwrap_or_default())
            .sum::<i64>(),
        "open anomalies on the page {shown:?} and in the API {api}"
    );
}

#[tokio::test]
async fn a_token_issued_and_revoked_from_the_page_is_refused_at_the_edge() {
    let (admin, stack, browser) = start_with_edge().await;
    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    open(&browser, &admin, "/tokens/new").await;

    let client = browser.wait_for("select[name=client_id]").await;
    client
        .select_by_value(E2E_CLIENT)
        .await
        .expect("choose the client");
    browser
        .wait_for("input[name=subject]")
        .await
        .send_keys("grace")
        .await
        .expect("type the subject");
    browser
        .wait_for("input[name=scopes]")
        .await
        .send_keys("read")
        .await
        .expect("type the scopes");
    browser
        .button("Issue")
        .await
        .click()
        .await
        .expect("click Issue");
    let secret = browser.wait_for("textarea.secret").await;
    let token = secret
        .prop("value")
        .await
        .expect("read the token")
        .unwrap_or_default();
    let claims = claims(&token);
    assert_eq!(
        claims["sub"], "grace",
        "the token shown is grace's: {claims}"
    );
    assert_eq!(claims["client_id"], E2E_CLIENT, "{claims}");
    let jti = claims["jti"]
        .as_str()
        .expect("the token has a jti")
        .to_owned();
    assert_eq!(
        browser
            .client()
            .find_all(Locator::Css("textarea.secret"))
            .await
            .map(|v| v.len())
            .unwrap_or(0),
        1,
        "one secret box: the access token only (no refresh token asked for)"
    );
    browser.screenshot("issue-result").await;

    wait_passes(&stack, &token, "the token issued from the page").await;

    browser
        .wait_for_text("section.issued a", &jti)
        .await
        .click()
        .await
        .expect("open the token's page");
    browser
        .wait_for_path("the token's page", |p| p == format!("/tokens/{jti}"))
        .await;
    browser
        .button("Revoke")
        .await
        .click()
        .await
        .expect("click Revoke");
    let reason = "leaked in a browser test";
    browser
        .wait_for("input[name=reason]")
        .await
        .send_keys(reason)
        .await
        .expect("type the reason");
    browser
        .button("Revoke at every edge")
        .await
        .click()
        .await
        .expect("confirm the revocation");

    let refused = wait_refused_as_revoked(&stack, &token, "the token revoked from the page").await;
    assert!(
        refused.challenge.contains(r#"error="invalid_token""#)
            && (refused.challenge.contains("revoked") || refused.body.contains("revoked")),
        "the refusal says the token is revoked: {refused:?}"
    );
    let record = token_record(&admin, &jti).await;
    assert_eq!(record["status"], "revoked", "{record}");
    assert_eq!(
        record["revoke_reason"], reason,
        "the reason typed is kept: {record}"
    );
    // The propagation view stays on the token's page after the record refreshes to `revoked`.
    browser
        .wait_for_text("[data-testid=propagation-status]", "Applied at every edge")
        .await;
    browser
        .wait_for_text("section.propagation tbody th[scope=row]", EDGE_NAME)
        .await;
    // How long the edge took shows once its poll is recorded ("12 ms" or "1.2 s", never a dash; the
    // other number column is the edge's cursor, which has no unit).
    browser
        .wait_for_text("section.propagation tbody td.num", "s")
        .await;
    browser.screenshot("token-revoked").await;
}

#[tokio::test]
async fn a_revocation_from_the_revocations_page_shows_it_applied_at_every_edge() {
    let (admin, stack, browser) = start_with_edge().await;
    let token = admin.issue_for("heidi").await;
    wait_passes(&stack, &token.access_token, "heidi's token").await;
    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    open(&browser, &admin, "/revocations").await;

    browser
        .wait_for("select[name=what]")
        .await
        .select_by_value("jti")
        .await
        .expect("choose a token (jti)");
    browser
        .wait_for("input[name=value]")
        .await
        .send_keys(&token.jti)
        .await
        .expect("type the jti");
    browser
        .wait_for("input[name=reason]")
        .await
        .send_keys("lost laptop")
        .await
        .expect("type the reason");
    browser
        .button("Revoke…")
        .await
        .click()
        .await
        .expect("click Revoke…");
    browser
        .wait_for_text("[role=alertdialog]", &token.jti)
        .await;
    browser
        .button("Revoke at every edge")
        .await
        .click()
        .await
        .expect("confirm the revocation");

    wait_refused_as_revoked(
        &stack,
        &token.access_token,
        "the token revoked from the page",
    )
    .await;
    browser
        .wait_for_text_within(
            "[data-testid=propagation-status]",
            "Applied at every edge",
            Duration::from_secs(20),
        )
        .await;
    browser
        .wait_for_text("section.propagation tbody th[scope=row]", EDGE_NAME)
        .await;
    browser
        .wait_for_text("section.propagation tbody .badge", "applied")
        .await;
    browser.screenshot("revocation-propagated").await;
    let record = token_record(&admin, &token.jti).await;
    assert_eq!(record["status"], "revoked", "{record}");
    assert_eq!(record["revoke_reason"], "lost laptop", "{record}");
}

#[tokio::test]
async fn an_anomaly_from_edge_traffic_appears_live_and_can_be_acknowledged() {
    let (admin, stack, browser) = start_with_edge().await;
    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    open(&browser, &admin, "/anomalies").await;
    browser
        .wait_for_text("p.empty", "No anomaly matches these filters.")
        .await;
    // Survives only as long as the page is not reloaded.
    browser
        .execute(
            "window.__edgewardenNoReload = 'still here'; return null;",
            vec![],
        )
        .await;

    // A revoked token used at the edge raises `revoked_token_use` at its first use (threshold 1).
    let mallory = admin.issue_for("mallory").await;
    wait_passes(&stack, &mallory.access_token, "mallory's token").await;
    admin.revoke_jti(&mallory.jti).await;
    wait_refused_as_revoked(&stack, &mallory.access_token, "mallory's revoked token").await;

    let card = browser
        .wait_for_text_within("li.card.anomaly", "revoked token use", REPORTED)
        .await;
    let marker = browser
        .execute("return window.__edgewardenNoReload || null;", vec![])
        .await;
    assert_eq!(
        marker, "still here",
        "the anomaly should appear without the page being reloaded"
    );
    let id = card
        .attr("data-anomaly-id")
        .await
        .expect("read the card's anomaly id")
        .expect("the card carries data-anomaly-id");
    let text = card.text().await.unwrap_or_default();
    assert!(
        text.contains(&mallory.jti),
        "the card names the token: {text}"
    );
    card.find(Locator::XPath(
        ".//button[normalize-space(.)='Acknowledge']",
    ))
    .await
    .unwrap_or_else(|e| panic!("no Acknowledge button on the card ({e}): {text}"))
    .click()
    .await
    .expect("click Acknowledge");

    let id = id.as_str();
    eventually(
        "the anomaly's state to be acknowledged in the API",
        Duration::from_secs(10),
        || async {
            let all = admin.anomalies(&[]).await;
            match all.iter().find(|a| a["id"] == id) {
                Some(a) if a["state"] == "acknowledged" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    browser
        .wait_for_text(
            &format!("li.card.anomaly[data-anomaly-id='{id}'] .badge"),
            "acknowledged",
        )
        .await;
}

#[tokio::test]
async fn an_auditor_sees_every_page_without_a_mutating_control() {
    let (admin, stack, browser) = start_with_edge().await;
    let (alice, _) = populate(&admin, &stack).await;
    log_in(&browser, &admin, AUDITOR_USER, AUDITOR_PASSWORD).await;
    browser
        .wait_for_text("[data-testid=who]", "(auditor)")
        .await;

    let token_page = format!("/tokens/{}", alice.jti);
    let pages: [(&str, &str, &str); 8] = [
        ("/", "a.stat .stat-label", "active now"),
        ("/tokens", "table tbody td", "alice"),
        (&token_page, "dl.facts dd", "alice"),
        ("/revocations", "table tbody td", "e2e test"),
        ("/anomalies", "li.card.anomaly", "revoked token use"),
        ("/edges", "table tbody th", EDGE_NAME),
        ("/events", "ol.events summary", "token.issued"),
        ("/settings", "table tbody th", E2E_CLIENT),
    ];
    for (path, css, text) in pages {
        open(&browser, &admin, path).await;
        browser.wait_for_text(css, text).await;
        browser.wait_loaded().await;
        let controls = browser
            .execute(
                "return { buttons: Array.from(document.querySelectorAll('button, input[type=submit]')).map(b => (b.textContent || b.value).trim()), links: Array.from(document.querySelectorAll('a')).map(a => a.textContent.trim()) };",
                vec![],
            )
            .await;
        let texts = |key: &str| -> Vec<String> {
            controls[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let offered: Vec<String> = texts("buttons")
            .into_iter()
            .filter(|b| MUTATING_BUTTONS.iter().any(|m| b.starts_with(m)))
            .chain(texts("links").into_iter().filter(|l| l == "Issue a token"))
            .collect();
        assert!(
            offered.is_empty(),
            "an auditor is offered {offered:?} on {path}; every button there: {:?}",
            texts("buttons")
        );
    }

    open(&browser, &admin, "/revocations").await;
    let (status, body) = fetch_from_page(
        &browser,
        "POST",
        "/api/v1/revocations",
        &json!({"jti": alice.jti, "reason": "an auditor tries"}),
        true,
    )
    .await;
    assert_eq!(
        status, 403,
        "the API must refuse a revocation by an auditor's session (with a valid csrf token): {body}"
    );
    assert_eq!(token_record(&admin, &alice.jti).await["status"], "active");
}

#[tokio::test]
async fn an_ended_session_lands_on_login_and_comes_back_to_the_page() {
    let (admin, browser) = tokio::join!(start_admin(), Browser::start());
    admin.issue_for("dave").await;
    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    open(&browser, &admin, "/tokens").await;

    // The session ends on the server (as when it expires) while the browser still holds its cookie.
    let end_session = || async {
        let session = browser
            .cookie("ew_session")
            .await
            .expect("the browser holds a session cookie");
        let csrf = browser
            .cookie("ew_csrf")
            .await
            .expect("the browser holds a csrf cookie");
        let ended = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client")
            .delete(admin.url("/api/v1/session"))
            .header("cookie", format!("ew_session={session}"))
            .header("x-csrf-token", csrf)
            .send()
            .await
            .expect("DELETE /api/v1/session");
        assert_eq!(ended.status(), 204, "end the session on the server");
        assert!(
            browser.cookie("ew_session").await.is_some(),
            "the browser should still hold the (now dead) session cookie"
        );
    };
    end_session().await;

    browser.goto(&admin.url("/tokens?status=active")).await;
    let login = browser
        .wait_for_path("the login page with ?next=", |p| {
            p.starts_with("/login?next=")
        })
        .await;
    assert_eq!(
        login, "/login?next=%2Ftokens%3Fstatus%3Dactive",
        "the login page should know where to come back to, query included"
    );
    browser
        .wait_for_text("p.note", "Your session has ended")
        .await;
    browser.screenshot("login-session-ended").await;
    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(browser.path_and_query().await, "/tokens?status=active");
    browser.wait_for_text("table tbody td", "dave").await;

    // Ended while the app runs: the next call it makes (navigating within the app) sends it to login too.
    end_session().await;
    browser
        .wait_for("nav a[href='/revocations']")
        .await
        .click()
        .await
        .expect("click Revocations");
    let login = browser
        .wait_for_path("the login page after navigating within the app", |p| {
            p.starts_with("/login?next=")
        })
        .await;
    assert_eq!(login, "/login?next=%2Frevocations");
    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    assert_eq!(browser.path_and_query().await, "/revocations");
}

#[tokio::test]
async fn a_mutation_from_the_page_without_the_csrf_header_is_refused() {
    let (admin, browser) = tokio::join!(start_admin(), Browser::start());
    let token = admin.issue_for("erin").await;
    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    open(&browser, &admin, "/revocations").await;
    let body = json!({"jti": token.jti, "reason": "csrf test"});

    let (status, text) =
        fetch_from_page(&browser, "POST", "/api/v1/revocations", &body, false).await;
    assert_eq!(
        status, 403,
        "a mutation with the session cookie but no x-csrf-token must be refused: {text}"
    );
    assert!(
        text.contains("x-csrf-token"),
        "the refusal should name the missing header: {text}"
    );
    assert_eq!(token_record(&admin, &token.jti).await["status"], "active");

    let (status, text) =
        fetch_from_page(&browser, "POST", "/api/v1/revocations", &body, true).await;
    assert_eq!(status, 201, "the same mutation with the header: {text}");
    assert_eq!(token_record(&admin, &token.jti).await["status"], "revoked");
}

#[tokio::test]
async fn every_page_passes_axe_and_is_screenshotted() {
    let (admin, stack, browser) = start_with_edge().await;
    let (alice, _) = populate(&admin, &stack).await;
    // A second Envoy under the same edge name with another leeway: two instances whose configurations differ.
    let mut other = plugin_config(&admin);
    other["clock_skew_seconds"] = json!(5);
    let _second = Stack::start_with_control_plane(other, admin.addr).await;
    wait_configs_reported(&admin, 2).await;
    let mut failures = Vec::new();
    let mut seen_known = Vec::new();

    open(&browser, &admin, "/login").await;
    browser.wait_for("input[name=username]").await;
    browser.screenshot("login").await;
    failures.extend(browser.serious_axe_violations("login").await);

    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    let token_page = format!("/tokens/{}", alice.jti);
    let pages: [(&str, &str, &str, &str); 9] = [
        ("overview", "/", "a.stat .stat-label", "active now"),
        ("tokens", "/tokens", "table tbody td", "alice"),
        ("token", &token_page, "ol.timeline li", "token.issued"),
        ("issue", "/tokens/new", "button", "Issue"),
        ("revocations", "/revocations", "table tbody td", "e2e test"),
        (
            "anomalies",
            "/anomalies",
            "li.card.anomaly",
            "revoked token use",
        ),
        (
            "edges",
            "/edges",
            "section.edge-detail p.differs",
            "configurations differ",
        ),
        ("events", "/events", "ol.events summary", "token.issued"),
        ("settings", "/settings", "table tbody th", E2E_CLIENT),
    ];
    for (name, path, css, text) in pages {
        open(&browser, &admin, path).await;
        browser.wait_for_text(css, text).await;
        browser.wait_loaded().await;
        let shot = browser.screenshot(name).await;
        assert!(
            std::fs::metadata(&shot)
                .map(|m| m.len() > 1000)
                .unwrap_or(false),
            "screenshot {} is missing or empty",
            shot.display()
        );
        failures.extend(browser.serious_axe_violations(name).await);
        if name == "edges" {
            // Both instances listed under the one name, each configuration shown, the leeway marked as differing.
            let seen = browser
                .execute(
                    "return { rows: document.querySelectorAll('section.edge-detail table.instances tbody tr').length, configs: document.querySelectorAll('section.edge-detail .edge-config').length, differs: Array.from(document.querySelectorAll('section.edge-detail dt')).filter(dt => dt.textContent.includes('differs')).map(dt => dt.textContent), properties: Array.from(document.querySelectorAll('section.edge-detail dt')).filter(dt => dt.textContent.includes('Decision properties')).map(dt => dt.nextElementSibling ? dt.nextElementSibling.textContent : ''), leeways: Array.from(document.querySelectorAll('section.edge-detail dd.differs-value')).map(dd => dd.textContent) };",
                    vec![],
                )
                .await;
            assert_eq!(seen["rows"], 2, "two instances on the edges page: {seen}");
            assert_eq!(
                seen["configs"], 2,
                "two configurations on the edges page: {seen}"
            );
            assert_eq!(
                seen["differs"],
                json!(["Leeway differs", "Leeway differs"]),
                "only the leeway is marked as differing, in both configurations: {seen}"
            );
            // Each configuration says how the edge publishes its decisions (the default, one property per field).
            let properties = seen["properties"].as_array().cloned().unwrap_or_default();
            assert_eq!(
                properties.len(),
                2,
                "a decision properties row per configuration: {seen}"
            );
            assert!(
                properties.iter().all(|p| p
                    .as_str()
                    .is_some_and(|p| p.starts_with("each: edgewarden.reason"))),
                "the default decision properties, named: {seen}"
            );
            let leeways = seen["leeways"].to_string();
            assert!(
                leeways.contains("60 s") && leeways.contains("5 s"),
                "{seen}"
            );
        }
    }
    // Known dashboard defects, each to be removed with its fix: the test fails when one no longer occurs.
    let mut unexpected = Vec::new();
    for line in failures {
        if !KNOWN_VIOLATIONS
            .iter()
            .any(|(page, rule)| line.starts_with(&format!("- {page}: {rule} ")))
        {
            unexpected.push(line);
        } else {
            seen_known.push(line);
        }
    }
    for (page, rule) in KNOWN_VIOLATIONS {
        assert!(
            seen_known
                .iter()
                .any(|l| l.starts_with(&format!("- {page}: {rule} "))),
            "the known violation {rule} on the {page} page is gone: remove it from KNOWN_VIOLATIONS"
        );
    }
    assert!(
        unexpected.is_empty(),
        "serious or critical accessibility violations (axe-core):\n{}",
        unexpected.join("\n")
    );
}

/// Decides `token` for `GET /read` in the debugger page (already open, with the edge's configuration
/// pasted) and returns what it shows: status, `WWW-Authenticate`, body, reason, and how long it took (ms).
async fn debug_in_page(browser: &Browser, token: &str) -> (u16, String, String, String, f64) {
    browser
        .execute(
            r#"
            const [token] = arguments;
            const last = document.querySelector('[data-run]');
            window.__debugRun = last ? Number(last.dataset.run) : 0;
            const area = document.querySelector('textarea[name=debug_token]');
            area.value = token;
            area.dispatchEvent(new Event('input', { bubbles: true }));
            document.querySelector('form.debugger button[type=submit]').click();
            "#,
            vec![json!(token)],
        )
        .await;
    browser
        .wait_until("the debugger's decision", Duration::from_secs(10), || async {
            let got = browser
                .execute(
                    r#"
                    const error = document.getElementById('debug-error');
                    if (error && Number(error.dataset.run) > window.__debugRun) { return ['error', error.textContent]; }
                    const v = document.getElementById('debug-verdict');
                    if (!v || Number(v.dataset.run) <= window.__debugRun) { return null; }
                    const text = id => (document.getElementById(id) || { textContent: '' }).textContent;
                    return [Number(v.dataset.status), text('debug-challenge'), text('debug-body'), v.dataset.reason, text('debug-took')];
                    "#,
                    vec![],
                )
                .await;
            let row = got.as_array()?.clone();
            assert_ne!(row[0], "error", "the debugger refused to decide: {}", row[1]);
            let took = row[4]
                .as_str()?
                .split_whitespace()
                .nth(4)?
                .parse::<f64>()
                .ok()?;
            Some((
                row[0].as_u64()? as u16,
                row[1].as_str()?.to_owned(),
                row[2].as_str()?.to_owned(),
                row[3].as_str()?.to_owned(),
                took,
            ))
        })
        .await
}

/// One row of the debugger's equivalence table: a token fixed in advance, or one signed for the second
/// it is decided in (its description names seconds, so the edge and the page must decide in that second).
enum Row {
    Fixed(String),
    Timed(Signer),
}

/// Signs a timed row's token for the second (Unix time) it is decided in.
type Signer = fn(u64) -> String;

/// What one row got from the edge and from the debugger.
struct Answers {
    token: String,
    edge: Outcome,
    page: (u16, String, String, String, f64),
}

/// Runs `row` through the edge (`GET /read`) and the debugger page. A timed row starts just after a
/// second begins and is tried again (at most five times) unless the edge's and the page's answers both
/// came within that second, so its `now` is the same for both.
async fn run_row(stack: &Stack, browser: &Browser, row: &Row) -> Answers {
    let make = match row {
        Row::Fixed(token) => {
            let edge = call_edge(stack, token).await;
            let page = debug_in_page(browser, token).await;
            return Answers {
                token: token.clone(),
                edge,
                page,
            };
        }
        Row::Timed(make) => make,
    };
    for _ in 0..5 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let into_second = Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
        tokio::time::sleep(Duration::from_millis(1020) - into_second).await;
        let second = now();
        let token = make(second);
        let edge = call_edge(stack, &token).await;
        let page = debug_in_page(browser, &token).await;
        if now() == second {
            return Answers { token, edge, page };
        }
        eprintln!("debugger row crossed a second boundary, trying again");
    }
    panic!(
        "five tries of a timed row each crossed a second boundary: the machine is too slow for it"
    );
}

#[tokio::test]
async fn the_token_debugger_decides_like_the_edge_and_never_sends_the_token() {
    let (admin, browser) = tokio::join!(start_admin(), Browser::start());
    let stack = Stack::start_with_control_plane(debugger_config(&admin), admin.addr).await;
    admin
        .post(
            "/api/v1/issuers",
            &json!({"issuer": TRUSTED_ISSUER, "jwks": jwks(&[TRUSTED_KEY])}),
        )
        .await
        .expect(201, "register the trusted test issuer");
    let alice = admin.issue_for("alice").await;
    wait_passes(&stack, &alice.access_token, "alice's token").await;
    let no_scope = admin
        .issue(&TokenRequest {
            scopes: Vec::new(),
            ..TokenRequest::new("nora")
        })
        .await;
    let revoked = admin.issue_for("mallory").await;
    admin.revoke_jti(&revoked.jti).await;
    wait_refused_as_revoked(&stack, &revoked.access_token, "mallory's revoked token").await;
    let bob = admin.issue_for("bob").await;

    // Tokens of the trusted inline issuer, revoked through the admin API by jti and by subject.
    let rita = trusted("rita").sign();
    let rita_claims = claims(&rita);
    admin
        .revoke(json!({"jti": rita_claims["jti"], "issuer": TRUSTED_ISSUER, "expires_at": rita_claims["exp"]}))
        .await;
    let sam = trusted("sam").claim("iat", now() - 10).sign();
    admin
        .revoke(json!({"subject": "sam", "issuer": TRUSTED_ISSUER}))
        .await;
    let trusted_valid = trusted("tess").sign();
    wait_passes(
        &stack,
        &trusted_valid,
        "a token of the trusted inline issuer",
    )
    .await;
    wait_refused_as_revoked(&stack, &rita, "the trusted issuer's token revoked by jti").await;
    wait_refused_as_revoked(&stack, &sam, "the trusted issuer's subject revoked").await;

    // A signature that no longer matches: the last character of the signature changed.
    let mut tampered = alice.access_token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let fixed: Vec<(&str, String)> = vec![
        ("valid", alice.access_token.clone()),
        ("missing scope", no_scope.access_token.clone()),
        ("tampered signature", tampered),
        (
            "foreign issuer",
            TokenBuilder::new(TestKey::Es256A).scope("read").sign(),
        ),
        (
            "unknown kid",
            TokenBuilder::new(TestKey::Es256A)
                .claim("iss", admin.issuer())
                .scope("read")
                .sign(),
        ),
        (
            "alg none",
            TokenBuilder::new(TestKey::Es256A)
                .header("alg", "none")
                .claim("iss", admin.issuer())
                .sign(),
        ),
        (
            "expired, of an unknown key",
            TokenBuilder::new(TestKey::Es256A)
                .claim("iss", admin.issuer())
                .expires_in(-3600)
                .sign(),
        ),
        ("trusted issuer, valid", trusted_valid.clone()),
        (
            "wrong audience",
            trusted("tess").claim("aud", "another-api").sign(),
        ),
        (
            "wrong issuer, trusted key",
            trusted("tess")
                .claim("iss", "https://other.e2e.edgewarden.test")
                .sign(),
        ),
        ("revoked jti", rita.clone()),
        ("revoked subject", sam.clone()),
    ];
    // exp + leeway <= now is expired: at `now - leeway` exactly, one second before it (still accepted)
    // and one second past it; nbf beyond the leeway is not valid yet.
    let timed: Vec<(&str, Signer)> = vec![
        ("expired at leeway", |now| {
            trusted("tess")
                .claim("iat", now - LEEWAY - 300)
                .claim("exp", now - LEEWAY)
                .sign()
        }),
        ("expired past leeway", |now| {
            trusted("tess")
                .claim("iat", now - LEEWAY - 300)
                .claim("exp", now - LEEWAY - 1)
                .sign()
        }),
        ("expired within leeway", |now| {
            trusted("tess")
                .claim("iat", now - LEEWAY - 300)
                .claim("exp", now - LEEWAY + 1)
                .sign()
        }),
        ("not yet valid", |now| {
            trusted("tess")
                .claim("iat", now)
                .claim("nbf", now + LEEWAY + 30)
                .sign()
        }),
    ];
    let rows: Vec<(&str, Row)> = fixed
        .iter()
        .map(|(name, token)| (*name, Row::Fixed(token.clone())))
        .chain(
            timed
                .into_iter()
                .map(|(name, make)| (name, Row::Timed(make))),
        )
        .collect();

    log_in(&browser, &admin, ADMIN_USER, ADMIN_PASSWORD).await;
    // The edge's configuration is known to the admin API before the page lists the edges to pick from.
    wait_configs_reported(&admin, 1).await;
    open(&browser, &admin, "/debugger?method=GET&path=%2Fread").await;
    browser.wait_for("textarea[name=debug_token]").await;
    // Record every request the page makes from here on, with its body.
    browser
        .execute(
            r#"
            window.__requests = [];
            const original = window.fetch;
            window.fetch = function (input, init) {
                const url = typeof input === 'string' ? input : (input && input.url) || String(input);
                window.__requests.push({ url, method: (init && init.method) || 'GET', body: init && init.body ? String(init.body) : '' });
                return original.apply(this, arguments);
            };
            const send = XMLHttpRequest.prototype.send;
            XMLHttpRequest.prototype.send = function (body) {
                window.__requests.push({ url: 'xhr', method: 'XHR', body: body ? String(body) : '' });
                return send.apply(this, arguments);
            };
            document.querySelector('input[name=debug_source][value=config]').click();
            "#,
            vec![],
        )
        .await;
    let config = debugger_config(&admin).to_string();
    browser
        .execute(
            r#"
            const area = document.querySelector('textarea[name=debug_config]');
            area.value = arguments[0];
            area.dispatchEvent(new Event('input', { bubbles: true }));
            "#,
            vec![json!(config)],
        )
        .await;

    let mut mismatches = Vec::new();
    let mut slowest: f64 = 0.0;
    // Every token pasted into the page, for the check that none left it.
    let mut pasted: Vec<(String, String)> = Vec::new();
    for (name, row) in &rows {
        let Answers { token, edge, page } = run_row(&stack, &browser, row).await;
        let (status, challenge, body, reason, took) = page;
        pasted.push((name.to_string(), token));
        slowest = slowest.max(took);
        let edge_reason = serde_json::from_str::<Value>(&edge.body)
            .ok()
            .and_then(|b| b["reason"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "allowed".to_owned());
        eprintln!(
            "debugger row {name:<26} edge {} {edge_reason} / debugger {status} {reason} ({took:.2} ms); description: edge {:?} / debugger {:?}",
            edge.status,
            if edge.status == 200 { "" } else { edge.body.as_str() },
            body
        );
        let edge_body = if edge.status == 200 {
            String::new()
        } else {
            edge.body.clone()
        };
        if (edge.status, edge.challenge.as_str(), edge_body.as_str())
            != (status, challenge.as_str(), body.as_str())
        {
            mismatches.push(format!(
                "{name}: edge {} {:?} {:?}; debugger {status} {challenge:?} {body:?}",
                edge.status, edge.challenge, edge.body
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "the debugger and the edge disagree:\n{}",
        mismatches.join("\n")
    );
    // The browser and the admin API run on one machine: the page says their clocks agree.
    browser
        .wait_for_text(
            "#debug-clock",
            "this browser and the admin API agree within",
        )
        .await;
    // Reported, not asserted: a timing on a shared machine is not a test.
    eprintln!("debugger: slowest decode-and-decide {slowest:.2} ms in the browser (the engine is built once per configuration)");

    // The same decisions with the configuration the edge reported, picked from the list instead of pasted.
    browser
        .execute(
            "document.querySelector('input[name=debug_source][value=edge]').click();",
            vec![],
        )
        .await;
    browser
        .wait_for("select[name=debug_edge] option:nth-child(2)")
        .await;
    browser
        .execute(
            r#"
            const select = document.querySelector('select[name=debug_edge]');
            select.value = select.options[1].value;
            select.dispatchEvent(new Event('change', { bubbles: true }));
            "#,
            vec![],
        )
        .await;
    browser
        .wait_for_text("#debug-picked", "reported by edge")
        .await;
    let picked = browser
        .execute(
            "return document.querySelector('textarea[name=debug_config]').value;",
            vec![],
        )
        .await;
    let picked = picked.as_str().unwrap_or_default().to_owned();
    assert!(
        picked.contains("<redacted>") && !picked.contains(&admin.edge_key),
        "the picked configuration is the edge's, without its key: {picked}"
    );
    for (name, token) in fixed.iter().take(3) {
        let edge = call_edge(&stack, token).await;
        let (status, challenge, body, reason, _) = debug_in_page(&browser, token).await;
        eprintln!(
            "debugger (picked edge) row {name:<20} edge {} / debugger {status} {reason}",
            edge.status
        );
        let edge_body = if edge.status == 200 {
            String::new()
        } else {
            edge.body.clone()
        };
        assert_eq!(
            (edge.status, edge.challenge.as_str(), edge_body.as_str()),
            (status, challenge.as_str(), body.as_str()),
            "{name}: the debugger with the picked edge's configuration disagrees with the edge"
        );
    }
    browser.screenshot("debugger-picked-edge").await;

    // A revoked token: the engine alone would pass it; the page looks the jti up and says it is revoked.
    debug_in_page(&browser, &revoked.access_token).await;
    browser.wait_for_text("#debug-revocation", "revoked").await;
    // Revoke an active token from the debugger: the edge refuses it afterwards.
    debug_in_page(&browser, &bob.access_token).await;
    browser
        .wait_for_text("#debug-revocation", "not revoked")
        .await;
    browser.screenshot("debugger").await;
    browser
        .button("Revoke this token")
        .await
        .click()
        .await
        .expect("click Revoke");
    browser
        .button("Revoke")
        .await
        .click()
        .await
        .expect("confirm");
    browser.wait_for("#debug-revoked").await;
    wait_refused_as_revoked(
        &stack,
        &bob.access_token,
        "bob's token revoked from the debugger",
    )
    .await;

    // A browser whose clock runs an hour ahead: alice's token (ten minutes long) is expired by that clock
    // only. The page is opened again so it reads the admin API's Date header with that clock.
    browser
        .execute(
            r#"
            const real = Date.now.bind(Date);
            window.__realNow = real;
            Date.now = () => real() + 3600 * 1000;
            document.querySelector('nav a[href="/"]').click();
            "#,
            vec![],
        )
        .await;
    browser
        .wait_until("the overview", Duration::from_secs(10), || async {
            (browser.path_and_query().await == "/").then_some(())
        })
        .await;
    browser
        .execute(
            "document.querySelector('nav a[href=\"/debugger\"]').click();",
            vec![],
        )
        .await;
    browser.wait_for("textarea[name=debug_token]").await;
    let (status, _, _, reason, _) = debug_in_page(&browser, &alice.access_token).await;
    assert_eq!(
        (status, reason.as_str()),
        (401, "expired"),
        "by this browser's clock alice's token is expired"
    );
    let clock = browser
        .wait_for_text("#debug-clock", "the clock difference explains this answer")
        .await
        .text()
        .await
        .unwrap_or_default();
    eprintln!("debugger clock line with the browser an hour ahead: {clock}");
    assert!(
        clock.contains("ahead of the admin API's")
            && clock.contains("the edge would answer 200 (allowed)"),
        "{clock}"
    );
    // The Date header has whole seconds and the answer takes a moment: an hour, give or take two seconds.
    let skew: u64 = clock
        .split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!((3599..=3602).contains(&skew), "{clock}");
    browser.screenshot("debugger-clock-ahead").await;
    browser
        .execute("Date.now = window.__realNow;", vec![])
        .await;

    // No request carried a token, nothing stored one.
    let requests = browser
        .execute(
            "return JSON.stringify({ recorded: window.__requests, resources: performance.getEntriesByType('resource').map(e => e.name), local: JSON.stringify(localStorage), session: JSON.stringify(sessionStorage), cookie: document.cookie, url: location.href });",
            vec![],
        )
        .await;
    let seen = requests.as_str().unwrap_or_default().to_owned();
    assert!(
        seen.contains("/api/v1/revocations"),
        "the recorder saw no request: {seen}"
    );
    pasted.push(("revoked".to_owned(), revoked.access_token.clone()));
    pasted.push(("bob".to_owned(), bob.access_token.clone()));
    for (name, token) in &pasted {
        let signature = token.rsplit('.').next().unwrap_or_default();
        let payload = token.split('.').nth(1).unwrap_or_default();
        assert!(
            !seen.contains(signature) && !seen.contains(payload),
            "the {name} token (or part of it) left the page or was stored: {seen}"
        );
    }
    browser.axe("debugger").await;
}
