//! `cargo xtask demo`: builds the filter, starts the echo upstream and Envoy with `envoy/demo.yaml`,
//! checks the demo answers as promised, then prints sample tokens (signed with the committed demo key)
//! and curl lines for 200, 401 and 403, and keeps running until Ctrl-C, cleaning up its children.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::envoy::{Envoy, Launch};
use crate::tokens::{self, SigningKey};
use crate::util::{self, Result};
use crate::{build, demo_upstream, http, install};

/// Default ports, documented in README.md; each can be moved with a flag when taken.
const LISTENER_PORT: u16 = 10000;
const ADMIN_PORT: u16 = 9901;
const UPSTREAM_PORT: u16 = 10001;

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

    util::step("ports");
    util::ensure_port_free(listener_port, "envoy listener", "--port")?;
    util::ensure_port_free(admin_port, "envoy admin", "--admin-port")?;
    util::ensure_port_free(upstream_port, "demo upstream", "--upstream-port")?;
    println!("    {listener_port} (envoy), {admin_port} (envoy admin), {upstream_port} (upstream) are free");

    install::run()?;
    let wasm = build::run()?;

    util::step("demo upstream");
    let upstream = demo_upstream::start(SocketAddr::from(([127, 0, 0, 1], upstream_port)))?;
    println!("    echo server on http://{upstream}");

    util::step("envoy with envoy/demo.yaml");
    let mut values = BTreeMap::new();
    values.insert("listener_port", listener_port.to_string());
    values.insert("admin_port", admin_port.to_string());
    values.insert("upstream_port", upstream_port.to_string());
    values.insert("wasm_path", wasm.display().to_string());
    values.insert("demo_jwks", tokens::demo_jwks_json()?);
    let mut envoy = Envoy::start(Launch {
        template: "demo.yaml",
        values,
        name: "demo",
        admin_port,
        listener_port: Some(listener_port),
        cpu: None,
    })?;
    println!(
        "    envoy ready, log in {} (rendered config beside it)",
        envoy.log.display()
    );

    let key = SigningKey::demo("demo-es256")?;
    let now = tokens::now();
    let read = key.sign(&tokens::claims("alice", "read", now, 0, 3600))?;
    let admin = key.sign(&tokens::claims("root", "read admin", now, 0, 3600))?;
    let expired = key.sign(&tokens::claims("alice", "read", now, -7200, 3600))?;

    util::step("self-check through envoy");
    let listener = SocketAddr::from(([127, 0, 0, 1], listener_port));
    let checks: [(&str, Option<&str>, u16, &str); 6] = [
        ("/public/hello", None, 200, "anonymous route"),
        ("/api/read", Some(&read), 200, "valid token with scope read"),
        ("/api/read", None, 401, "no token"),
        ("/api/read", Some(&expired), 401, "expired token"),
        ("/api/admin", Some(&read), 403, "token lacking scope admin"),
        ("/api/admin", Some(&admin), 200, "token with scope admin"),
    ];
    let mut surprises = 0;
    for (path, token, expected, what) in checks {
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
                let mark = if r.status == expected {
                    "ok"
                } else {
                    "UNEXPECTED"
                };
                if r.status != expected {
                    surprises += 1;
                }
                println!(
                    "    {mark:>10}  GET {path:<14} {what:<28} -> {}{challenge}",
                    r.status
                );
                // Show what the upstream received: the forwarded claim, and that the token did not arrive.
                if let Ok(echo) = serde_json::from_str::<serde_json::Value>(&r.body) {
                    let seen = &echo["headers"];
                    if let Some(sub) = seen["x-edgewarden-sub"].as_str() {
                        println!(
                            "                upstream saw x-edgewarden-sub: {sub}, authorization: {}",
                            seen["authorization"].as_str().map_or("(removed)", |_| "(present)")
                        );
                    }
                }
            }
            Err(e) => {
                surprises += 1;
                println!("    UNEXPECTED  GET {path:<14} {what:<28} -> request failed: {e}");
            }
        }
    }
    if surprises > 0 {
        println!(
            "    {surprises} answer(s) differ from what the demo promises; see {}",
            envoy.log.display()
        );
    }

    let base = format!("http://127.0.0.1:{listener_port}");
    println!(
        r#"
==> EdgeWarden demo is running (Ctrl-C to stop)

The demo keys in envoy/demo-keys/ are public: tokens below are for this demo only.

# a valid token for alice with scope "read" (1 hour):
READ_TOKEN={read}
# a valid token for root with scopes "read admin":
ADMIN_TOKEN={admin}
# an expired token (expired an hour ago):
EXPIRED_TOKEN={expired}

# 200, no token needed:
curl -i {base}/public/hello
# 200, the upstream echoes the claim headers EdgeWarden forwarded (x-edgewarden-sub, ...) and no token:
curl -i -H "Authorization: Bearer $READ_TOKEN" {base}/api/read
# 401, no token: WWW-Authenticate: Bearer realm="edgewarden-demo"
curl -i {base}/api/read
# 401 invalid_token, "token expired":
curl -i -H "Authorization: Bearer $EXPIRED_TOKEN" {base}/api/read
# 403 insufficient_scope, scope="admin":
curl -i -H "Authorization: Bearer $READ_TOKEN" {base}/api/admin
# 200 with the admin scope; a spoofed claim header is removed before the upstream:
curl -i -H "Authorization: Bearer $ADMIN_TOKEN" -H "x-edgewarden-sub: mallory" {base}/api/admin
# filter stats (allowed, denied per reason, cache hits):
curl -s http://127.0.0.1:{admin_port}/stats | grep edgewarden
"#
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| util::Error::msg(format!("cannot install the ctrl-c handler: {e}")))?;
    while !stop.load(Ordering::SeqCst) {
        envoy.check_running()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping envoy and the demo upstream");
    drop(envoy);
    Ok(())
}
