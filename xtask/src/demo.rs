//! `cargo xtask demo`: the whole system on one machine. Builds the filter, the dashboard and the admin API that
//! embeds it, starts the admin API on a fresh SQLite store, creates its keys and a demo client, starts the echo
//! upstream and Envoy with `envoy/demo.yaml` connected to the admin API, checks the demo answers as promised
//! (including a revocation reaching the edge, and the dashboard starting in headless Chromium), then prints the
//! dashboard URL, the credentials, a sample token and curl lines, and keeps running until Ctrl-C, cleaning up its children.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin_api::{self, plain_json_string, AdminApi, Setup};
use crate::envoy::{Envoy, Launch};
use crate::util::{self, bail, Result};
use crate::{build, demo_upstream, http, install};

/// Default ports, documented in README.md; each can be moved with a flag when taken.
const LISTENER_PORT: u16 = 10000;
const ADMIN_PORT: u16 = 9901;
const UPSTREAM_PORT: u16 = 10001;
const ADMIN_API_PORT: u16 = 8080;
/// The client demo tokens are issued through, and the audience `envoy/demo.yaml` requires.
const CLIENT: &str = "demo-client";
const AUDIENCE: &str = "demo-api";
/// How long Envoy may take to allow the first token (JWKS fetch and first revocation feed sync).
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// The demo promises that a revoked token is refused within this long.
const REVOCATION_PROMISE: Duration = Duration::from_secs(2);
/// How long headless Chromium may take to load the dashboard before the self-check gives up.
const DASHBOARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the demo until Ctrl-C.
pub fn run(args: &[String]) -> Result<()> {
    let port = |flag: &str, default: u16| -> Result<u16> {
        match util::flag_value(args, flag) {
            Some(v) => v
                .parse()
                .map_err(|_| util::Error::msg(format!("{flag} needs a port number, got `{v}`"))),
            None => Ok(default),
        }
    };
    let listener_port = port("--port", LISTENER_PORT)?;
    let admin_port = port("--admin-port", ADMIN_PORT)?;
    let upstream_port = port("--upstream-port", UPSTREAM_PORT)?;
    let admin_api_port = port("--admin-api-port", ADMIN_API_PORT)?;

    util::step("ports");
    util::ensure_port_free(listener_port, "envoy listener", "--port")?;
    util::ensure_port_free(admin_port, "envoy admin", "--admin-port")?;
    util::ensure_port_free(upstream_port, "demo upstream", "--upstream-port")?;
    util::ensure_port_free(admin_api_port, "admin api", "--admin-api-port")?;
    println!(
        "    {listener_port} (envoy), {admin_port} (envoy admin), {upstream_port} (upstream), {admin_api_port} (admin api) are free"
    );

    install::run()?;
    let wasm = build::run()?;
    // Builds the dashboard first and embeds it in the binary.
    let admin_bin = admin_api::build()?;

    util::step("admin api (edgewarden-admin serve, sqlite)");
    let dir = util::target_dir().join("demo/admin-data");
    let mut setup = Setup::fresh(&admin_bin, dir.clone())?;
    setup.log_level = "info";
    // Kept after Ctrl-C so the store and the log can be inspected; the next demo starts afresh.
    setup.remove_dir_on_drop = false;
    println!(
        "    a fresh store in {} (deleted at every demo start)",
        dir.display()
    );
    let admin_key = setup.create_api_key("admin", "demo-admin")?;
    let edge_key = setup.create_api_key("edge", "demo-edge")?;
    println!("    created an admin and an edge api key with `edgewarden-admin api-key create`");
    let api_addr = SocketAddr::from(([127, 0, 0, 1], admin_api_port));
    let mut api = setup.serve(api_addr, &[])?;
    let password = api.bootstrap_password().ok_or_else(|| {
        util::Error::msg(format!(
            "the first `serve` wrote no admin password to {}; see {}",
            dir.join("initial-admin-password").display(),
            api.log.display()
        ))
    })?;
    api.create_client(&admin_key, CLIENT, &["read", "admin"], &[AUDIENCE])?;
    println!(
        "    serving on http://{api_addr} (issuer {}), log in {}",
        api.issuer,
        api.log.display()
    );
    println!("    registered client {CLIENT} (scopes read, admin; audience {AUDIENCE})");

    util::step("demo upstream");
    let upstream = demo_upstream::start(SocketAddr::from(([127, 0, 0, 1], upstream_port)))?;
    println!("    echo server on http://{upstream}");

    util::step("envoy with envoy/demo.yaml");
    for (what, value) in [("edge api key", &edge_key), ("issuer", &api.issuer)] {
        if !plain_json_string(value) {
            bail!("the {what} `{value}` cannot go into demo.yaml unescaped");
        }
    }
    let mut values = BTreeMap::new();
    values.insert("listener_port", listener_port.to_string());
    values.insert("admin_port", admin_port.to_string());
    values.insert("upstream_port", upstream_port.to_string());
    values.insert("control_plane_port", admin_api_port.to_string());
    values.insert("wasm_path", wasm.display().to_string());
    values.insert("issuer", api.issuer.clone());
    values.insert("edge_api_key", edge_key.clone());
    let mut envoy = Envoy::start(Launch {
        template: "demo.yaml",
        values,
        name: "demo",
        admin_port,
        listener_port: Some(listener_port),
        cpu: None,
        workers: 1,
        log_level: "warning",
    })?;
    println!(
        "    envoy ready, log in {} (rendered config beside it)",
        envoy.log.display()
    );

    let read = api.issue_token(&admin_key, "alice", CLIENT, &["read"])?;
    let admin = api.issue_token(&admin_key, "root", CLIENT, &["read", "admin"])?;
    println!(
        "    waiting for the filter's first sync with the admin api (until then tokens get 401)"
    );
    let synced = envoy.wait_for_sync("/api/read", &read.token, SYNC_TIMEOUT)?;
    println!(
        "    synced: a valid token is allowed {:.1}s after envoy was ready",
        synced.as_secs_f64()
    );

    util::step("self-check through envoy");
    let listener = SocketAddr::from(([127, 0, 0, 1], listener_port));
    let mut surprises = 0;
    let checks: [(&str, Option<&str>, u16, &str); 5] = [
        ("/public/hello", None, 200, "anonymous route"),
        (
            "/api/read",
            Some(&read.token),
            200,
            "valid token with scope read",
        ),
        ("/api/read", None, 401, "no token"),
        (
            "/api/admin",
            Some(&read.token),
            403,
            "token lacking scope admin",
        ),
        (
            "/api/admin",
            Some(&admin.token),
            200,
            "token with scope admin",
        ),
    ];
    for (path, token, expected, what) in checks {
        if !check(listener, path, token, expected, what) {
            surprises += 1;
        }
    }
    if !check_revocation(&api, &admin_key, listener) {
        surprises += 1;
    }
    let dashboard_url = format!("http://{api_addr}/");
    if !check_dashboard(&dashboard_url) {
        surprises += 1;
    }
    if surprises > 0 {
        println!(
            "    {surprises} answer(s) differ from what the demo promises; see {} and {}",
            envoy.log.display(),
            api.log.display()
        );
    }

    let base = format!("http://127.0.0.1:{listener_port}");
    let api_base = format!("http://{api_addr}");
    println!(
        r#"
==> EdgeWarden demo is running (Ctrl-C to stop)

Dashboard:   {dashboard_url}
Debugger:    {dashboard_url}debugger  (paste a token to see what the edge decides and why; it never leaves the browser)
Admin login: user admin, password {password}
             (the one-time password the first `serve` wrote to initial-admin-password in the store; it opens the dashboard, or an API session with curl)
Admin API:   {api_base}  (store: {store}; log: {api_log})
Everything here is for this throwaway demo only; the next `cargo xtask demo` starts a new store.

# log in as admin (a session cookie; mutations with it also need the x-csrf-token header):
curl -i -c /tmp/edgewarden-demo.cookies -H 'content-type: application/json' \
  -d '{{"username": "admin", "password": "{password}"}}' {api_base}/api/v1/session

ADMIN_KEY={admin_key}
# a valid token for alice with scope "read" (1 hour), issued by the admin api:
READ_TOKEN={read_token}

# 200, no token needed:
curl -i {base}/public/hello
# 200, the upstream echoes the claim headers EdgeWarden forwarded (x-edgewarden-sub, ...) and no token:
curl -i -H "Authorization: Bearer $READ_TOKEN" {base}/api/read
# 401, no token: WWW-Authenticate: Bearer realm="edgewarden-demo"
curl -i {base}/api/read
# 403 insufficient_scope, scope="admin":
curl -i -H "Authorization: Bearer $READ_TOKEN" {base}/api/admin

# issue a token for carol (scopes read, admin) with the admin key:
ISSUED=$(curl -s -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
  -d '{{"subject": "carol", "client_id": "{CLIENT}", "scopes": ["read", "admin"]}}' {api_base}/api/v1/tokens)
TOKEN=$(printf '%s' "$ISSUED" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
JTI=$(printf '%s' "$ISSUED" | python3 -c 'import json, sys; print(json.load(sys.stdin)["jti"])')
# 200 with the admin scope; a spoofed claim header is removed before the upstream:
curl -i -H "Authorization: Bearer $TOKEN" -H "x-edgewarden-sub: mallory" {base}/api/admin
# revoke it (201); the edge learns it from the feed it long-polls:
curl -i -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
  -d "{{\"jti\": \"$JTI\", \"reason\": \"demo\"}}" {api_base}/api/v1/revocations
# 401 invalid_token, "token revoked":
curl -i -H "Authorization: Bearer $TOKEN" {base}/api/admin

# the edges the admin api knows (demo-edge: last poll, feed cursor, usage reports every 10 s):
curl -s -H "Authorization: Bearer $ADMIN_KEY" {api_base}/api/v1/edges
# filter stats (allowed, denied per reason, cache hits):
curl -s http://127.0.0.1:{admin_port}/stats | grep edgewarden
"#,
        store = dir.display(),
        api_log = api.log.display(),
        read_token = read.token,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| util::Error::msg(format!("cannot install the ctrl-c handler: {e}")))?;
    while !stop.load(Ordering::SeqCst) {
        envoy.check_running()?;
        api.check_running()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping envoy, the admin api and the demo upstream");
    drop(envoy);
    drop(api);
    Ok(())
}

/// Sends one self-check request through Envoy and prints the outcome; true when it is as `expected`.
fn check(listener: SocketAddr, path: &str, token: Option<&str>, expected: u16, what: &str) -> bool {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    match http::get(listener, path, &headers) {
        Ok(r) => {
            let challenge = r
                .header("www-authenticate")
                .map(|c| format!("  www-authenticate: {c}"))
                .unwrap_or_default();
            let ok = r.status == expected;
            let mark = if ok { "ok" } else { "UNEXPECTED" };
            println!(
                "    {mark:>10}  GET {path:<14} {what:<30} -> {}{challenge}",
                r.status
            );
            // Show what the upstream received: the forwarded claim, and that the token did not arrive.
            if let Ok(echo) = serde_json::from_str::<serde_json::Value>(&r.body) {
                let seen = &echo["headers"];
                if let Some(sub) = seen["x-edgewarden-sub"].as_str() {
                    println!(
                        "                upstream saw x-edgewarden-sub: {sub}, authorization: {}",
                        seen["authorization"]
                            .as_str()
                            .map_or("(removed)", |_| "(present)")
                    );
                }
            }
            ok
        }
        Err(e) => {
            println!("    UNEXPECTED  GET {path:<14} {what:<30} -> request failed: {e}");
            false
        }
    }
}

/// Loads the dashboard in headless Chromium (when installed) and checks the app started: no `data-init-error`
/// on the page and the `<main id="main">` the app renders is in the DOM. Prints the outcome; true when it started.
fn check_dashboard(url: &str) -> bool {
    let what = "dashboard in headless chromium";
    if !Path::new(install::CHROMIUM_BIN).is_file() {
        println!(
            "    {:>10}  GET {:<14} {what:<30} -> {} is missing (cargo xtask install installs it)",
            "skipped",
            "/",
            install::CHROMIUM_BIN
        );
        return true;
    }
    let started = Instant::now();
    match dump_dom(url).and_then(|dom| dashboard_started(&dom)) {
        Ok(()) => {
            println!(
                "    {:>10}  GET {:<14} {what:<30} -> app started (<main id=\"main\"> rendered) in {:.1}s",
                "ok",
                "/",
                started.elapsed().as_secs_f64()
            );
            true
        }
        Err(e) => {
            println!("    UNEXPECTED  GET {:<14} {what:<30} -> {e}", "/");
            false
        }
    }
}

/// Runs headless Chromium on `url` with a fresh profile and returns the DOM it dumps once the page settles.
fn dump_dom(url: &str) -> Result<String> {
    let dir = util::target_dir().join(format!("demo/chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (out_path, err_path) = (dir.join("dom.html"), dir.join("chromium.log"));
    let result = (|| -> Result<String> {
        let mut child = Command::new(install::CHROMIUM_BIN)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(["--virtual-time-budget=10000", "--dump-dom", url])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .spawn()
            .map_err(|e| {
                util::Error::msg(format!("cannot start {}: {e}", install::CHROMIUM_BIN))
            })?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > DASHBOARD_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "chromium did not finish loading {url} within {DASHBOARD_TIMEOUT:?}; its log:\n{}",
                    admin_api::log_tail(&err_path, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let dom = std::fs::read_to_string(&out_path)?;
        if !status.success() || dom.trim().is_empty() {
            bail!(
                "chromium exited with {status} and dumped no page; its log:\n{}",
                admin_api::log_tail(&err_path, 10)
            );
        }
        Ok(dom)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Checks a dumped DOM for the signs that the app started (see [`check_dashboard`]).
fn dashboard_started(dom: &str) -> Result<()> {
    if let Some(i) = dom.find("data-init-error=\"") {
        let rest = &dom[i + "data-init-error=\"".len()..];
        let message: String = rest.chars().take_while(|c| *c != '"').take(300).collect();
        bail!("the app did not start: {message}");
    }
    let rendered = dom.match_indices("<main").any(|(i, _)| {
        let tag = &dom[i..];
        let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
        tag.contains("id=\"main\"")
    });
    if !rendered {
        let start: String = dom.chars().take(300).collect();
        bail!("the page loaded but the app rendered no <main id=\"main\"> within 10 s of virtual time; the page starts: {start}");
    }
    Ok(())
}

/// Issues a token, sees it allowed, revokes it through the admin API and waits for the edge's
/// 401 `token revoked`, which the demo promises within [`REVOCATION_PROMISE`].
fn check_revocation(api: &AdminApi, admin_key: &str, listener: SocketAddr) -> bool {
    let what = "token revoked via the api";
    let outcome = (|| -> Result<(Duration, String)> {
        let issued = api.issue_token(admin_key, "bob", CLIENT, &["read"])?;
        let auth = format!("Bearer {}", issued.token);
        let before = http::get(listener, "/api/read", &[("authorization", &auth)])?;
        if before.status != 200 {
            bail!("a fresh token got {} before its revocation", before.status);
        }
        api.revoke_jti(admin_key, &issued.jti, "demo self-check")?;
        let revoked_at = Instant::now();
        loop {
            let r = http::get(listener, "/api/read", &[("authorization", &auth)])?;
            let elapsed = revoked_at.elapsed();
            let refused_as_revoked = r.status == 401
                && serde_json::from_str::<serde_json::Value>(&r.body)
                    .is_ok_and(|v| v["reason"] == "revoked");
            if refused_as_revoked {
                let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
                return Ok((elapsed, challenge));
            }
            if r.status != 200 {
                bail!("{} {}", r.status, r.body.trim());
            }
            if elapsed > REVOCATION_PROMISE {
                bail!("still 200 {elapsed:.1?} after the revocation");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })();
    match outcome {
        Ok((elapsed, challenge)) => {
            println!(
                "    {:>10}  GET {:<14} {what:<30} -> 401 {:.0} ms after the api's 201  www-authenticate: {challenge}",
                "ok",
                "/api/read",
                elapsed.as_secs_f64() * 1000.0
            );
            true
        }
        Err(e) => {
            println!("    UNEXPECTED  GET {:<14} {what:<30} -> {e}", "/api/read");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_counts_as_started_only_with_its_main_and_no_init_error() {
        let started = r#"<html lang="en"><head></head><body><main class="app" id="main"><h1>EdgeWarden</h1></main></body></html>"#;
        assert!(dashboard_started(started).is_ok());
        let blank = r#"<html lang="en"><head></head><body><noscript>needs JavaScript</noscript></body></html>"#;
        let err = dashboard_started(blank).unwrap_err();
        assert!(err.to_string().contains("rendered no <main"), "{err}");
        let failed = r#"<html lang="en" data-init-error="the dashboard could not start: CompileError"><body><main id="main"></main></body></html>"#;
        let err = dashboard_started(failed).unwrap_err();
        assert!(err.to_string().contains("CompileError"), "{err}");
        assert!(dashboard_started(r#"<main id="mainly"></main>"#).is_err());
    }
}
