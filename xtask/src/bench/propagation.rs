//! The revocation propagation benchmark: the real admin API (release build, SQLite) and Envoy (two workers)
//! with the filter connected to it with the default revocation settings (long-polling the feed). Each round
//! issues a token, sees Envoy allow it, revokes it by `jti`, then sends requests through Envoy back to back,
//! each on a fresh connection so the kernel spreads them over both workers: the time from the API's 201 to the
//! first 401 `revoked` is when the edge starts refusing the token (on the VM that polls the feed), and the time
//! to the first of ten 401s in a row is when every worker refuses it (the others apply it on their next tick).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::filter::ENVOY_CPU;
use super::{quantile, Options};
use crate::admin_api::{self, plain_json_string, Setup};
use crate::build;
use crate::envoy::{Envoy, Launch};
use crate::http::{get_request, post_request, Conn, Reply};
use crate::util::{self, bail, Result};

/// The one scenario, for `--only`.
const SCENARIO: &str = "propagation-sqlite";
/// Revocations measured.
const ROUNDS: usize = 100;
/// Envoy workers: more than one, so the figures include workers that apply what another VM polled.
const WORKERS: usize = 2;
/// Consecutive 401s on fresh connections that count as "every worker refuses" (with two workers, ten
/// connections all landing on the same one has a chance of 1 in 512).
const STREAK: u64 = 10;
/// A round that sees no 401 within this long fails the bench: propagation is broken, not slow.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Envoy may take to allow the first token (JWKS fetch and first feed sync).
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// The client that tokens are issued through, and the audience the filter requires.
const CLIENT: &str = "bench-propagation";
const AUDIENCE: &str = "bench-api";

/// Every scenario name, for `--only`.
pub fn scenarios() -> Vec<String> {
    vec![SCENARIO.to_string()]
}

/// What one round measured.
struct Round {
    /// From the revocation's 201 to the first 401.
    delay: Duration,
    /// From the revocation's 201 to the first of [`STREAK`] 401s in a row.
    everywhere: Duration,
    /// Requests sent after the 201 until the first 401, that one included.
    requests: u64,
}

/// Starts the admin API and Envoy, runs the rounds and prints the figures.
pub fn run(options: &Options) -> Result<()> {
    if !options.matches(SCENARIO) {
        println!("    no propagation scenario matches --only; skipped");
        return Ok(());
    }
    let bin = admin_api::build()?;
    util::step("admin api and envoy for the propagation bench");
    let dir = util::target_dir().join(format!("bench/propagation-{}", std::process::id()));
    let mut setup = Setup::fresh(&bin, dir)?;
    setup.master_key = Some(admin_api::BENCH_MASTER_KEY.to_string());
    let admin_key = setup.create_api_key("admin", "bench-admin")?;
    let edge_key = setup.create_api_key("edge", "bench-propagation")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], util::free_port()?));
    // Issuance is rate limited per caller (50/s by default); the bench issues a token per round.
    let mut api = setup.serve(addr, &["--no-bootstrap-admin", "--token-rate", "1000"])?;
    api.create_client(&admin_key, CLIENT, &[], &[AUDIENCE])?;
    println!(
        "    edgewarden-admin on {addr} (pid {}, sqlite, issuer {})",
        api.pid(),
        api.issuer
    );

    let mut envoy = start_envoy(&api, &edge_key, "bench-propagation", "warning")?;
    let listener_port = envoy
        .listener_port
        .ok_or_else(|| util::Error::msg("envoy was started without a listener port"))?;
    let first = api.issue_token(&admin_key, "propagation-warmup", CLIENT, &[])?;
    let synced = envoy.wait_for_sync("/", &first.token, SYNC_TIMEOUT)?;
    // That was one worker; the others follow the poller on their next tick. Ten allowed in a row on fresh
    // connections means every worker is in sync before the first round.
    let auth = format!("Bearer {}", first.token);
    let warmup = get_request(
        SocketAddr::from(([127, 0, 0, 1], listener_port)),
        "/",
        &[("authorization", &auth)],
    );
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let mut allowed = 0;
    while allowed < STREAK {
        if Instant::now() > deadline {
            bail!(
                "not every envoy worker allowed a valid token within {SYNC_TIMEOUT:?}; log: {}",
                envoy.log.display()
            );
        }
        let reply =
            Conn::open(SocketAddr::from(([127, 0, 0, 1], listener_port)))?.exchange(&warmup)?;
        allowed = if reply.status == 200 { allowed + 1 } else { 0 };
    }
    println!(
        "    envoy on cpu {ENVOY_CPU} allows tokens {:.0} ms after it was ready (first JWKS fetch and feed sync)",
        ms(synced)
    );

    util::step(&format!(
        "{ROUNDS} rounds: issue, allowed, revoke by jti, requests until 401"
    ));
    let listener = SocketAddr::from(([127, 0, 0, 1], listener_port));
    let mut edge = Edge { addr: listener };
    let mut control = Conn::open(api.addr)?;
    let mut rounds: Vec<Round> = Vec::with_capacity(ROUNDS);
    for i in 1..=ROUNDS {
        api.check_running()?;
        envoy.check_running()?;
        let round = measure_round(&api, &admin_key, &mut control, &mut edge, i).map_err(|e| {
            util::Error::msg(format!(
                "round {i}: {e}; envoy's log: {}",
                envoy.log.display()
            ))
        })?;
        rounds.push(round);
        if i % 10 == 0 {
            let mut sorted: Vec<Duration> = rounds.iter().map(|r| r.delay).collect();
            sorted.sort();
            println!(
                "    {i:>3}/{ROUNDS}  last {:>6.2} ms  p50 so far {:>6.2} ms  max so far {:>6.2} ms",
                ms(rounds[i - 1].delay),
                ms(quantile(&sorted, 0.5)),
                ms(sorted[sorted.len() - 1])
            );
        }
    }
    drop(envoy);
    drop(api);

    let sorted = |pick: fn(&Round) -> Duration| {
        let mut v: Vec<Duration> = rounds.iter().map(pick).collect();
        v.sort();
        v
    };
    let first = sorted(|r| r.delay);
    let everywhere = sorted(|r| r.everywhere);
    let mut requests: Vec<u64> = rounds.iter().map(|r| r.requests).collect();
    requests.sort();
    let stats = |v: &[Duration]| (quantile(v, 0.5), quantile(v, 0.99), v[v.len() - 1], v[0]);
    println!(
        "\nrevocation propagation: admin API (sqlite) -> envoy ({WORKERS} workers on cpu {ENVOY_CPU}, default revocation settings: long-poll)\n\
         time from the revocation's 201 through envoy, {ROUNDS} rounds, requests back to back on fresh connections\n\
         {:<34} {:>9} {:>9} {:>9} {:>9}",
        "measure", "p50 ms", "p99 ms", "max ms", "min ms",
    );
    for (label, v) in [
        ("first 401", &first),
        ("every worker ({STREAK} 401s in a row)", &everywhere),
    ] {
        let (p50, p99, max, min) = stats(v);
        let label = label.replace("{STREAK}", &STREAK.to_string());
        println!(
            "{label:<34} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            ms(p50),
            ms(p99),
            ms(max),
            ms(min)
        );
    }
    println!(
        "requests until the first 401: p50 {}, max {}",
        requests[requests.len() / 2],
        requests[requests.len() - 1]
    );
    let out = util::target_dir().join("bench/propagation-results.json");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let figures = |v: &[Duration]| {
        let (p50, p99, max, min) = stats(v);
        json!({"p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max), "min_ms": ms(min)})
    };
    let results = json!({
        SCENARIO: {
            "rounds": ROUNDS,
            "workers": WORKERS,
            "first_401": figures(&first),
            "every_worker": figures(&everywhere),
            "requests_to_401_p50": requests[requests.len() / 2],
            "requests_to_401_max": requests[requests.len() - 1],
            "first_sync_ms": ms(synced),
        }
    });
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("raw figures: {}", out.display());
    Ok(())
}

/// The client side of Envoy's listener: a fresh connection per request, so requests reach every worker.
struct Edge {
    addr: SocketAddr,
}

impl Edge {
    fn send(&mut self, request: &[u8]) -> Result<Reply> {
        Conn::open(self.addr)?.exchange(request)
    }
}

/// Envoy ([`WORKERS`] workers on [`ENVOY_CPU`]) with the filter pointed at `api` through
/// envoy/bench-propagation.yaml (default revocation settings); the memory suite uses it too, at log level info.
pub(super) fn start_envoy(
    api: &admin_api::AdminApi,
    edge_key: &str,
    name: &str,
    log_level: &str,
) -> Result<Envoy> {
    for (what, value) in [("edge api key", edge_key), ("issuer", api.issuer.as_str())] {
        if !plain_json_string(value) {
            bail!("the {what} `{value}` cannot go into bench-propagation.yaml unescaped");
        }
    }
    let admin_port = util::free_port()?;
    let listener_port = util::free_port()?;
    let mut values = BTreeMap::new();
    values.insert("listener_port", listener_port.to_string());
    values.insert("admin_port", admin_port.to_string());
    values.insert("wasm_path", build::filter_wasm().display().to_string());
    values.insert("issuer", api.issuer.clone());
    values.insert("edge_api_key", edge_key.to_string());
    values.insert("control_plane_port", api.addr.port().to_string());
    Envoy::start(Launch {
        template: "bench-propagation.yaml",
        values,
        name,
        admin_port,
        listener_port: Some(listener_port),
        cpu: Some(ENVOY_CPU),
        workers: WORKERS,
        log_level,
    })
}

/// One round: a fresh token is allowed, revoked, and refused; returns the time from the 201 to the 401.
fn measure_round(
    api: &admin_api::AdminApi,
    admin_key: &str,
    control: &mut Conn,
    edge: &mut Edge,
    i: usize,
) -> Result<Round> {
    let issued = api.issue_token(admin_key, &format!("propagation-{i:03}"), CLIENT, &[])?;
    let auth = format!("Bearer {}", issued.token);
    let request = get_request(edge.addr, "/", &[("authorization", &auth)]);
    let allowed = edge.send(&request)?;
    if allowed.status != 200 {
        bail!(
            "a fresh token got {} through envoy before its revocation: {}",
            allowed.status,
            String::from_utf8_lossy(&allowed.body)
        );
    }
    let body = json!({"jti": issued.jti, "reason": "bench"}).to_string();
    let revoked = control.exchange(&post_request(
        api.addr,
        "/api/v1/revocations",
        admin_key,
        &body,
    ))?;
    let t0 = Instant::now();
    if revoked.status != 201 {
        bail!(
            "POST /api/v1/revocations answered {}: {}",
            revoked.status,
            String::from_utf8_lossy(&revoked.body)
        );
    }
    let mut requests = 0;
    let mut first: Option<(Duration, u64)> = None;
    let mut streak: Option<(Duration, u64)> = None;
    loop {
        let reply = edge.send(&request)?;
        let at = t0.elapsed();
        if at > ROUND_TIMEOUT {
            bail!(
                "the revoked token was not refused on every worker {ROUND_TIMEOUT:?} after its revocation ({requests} requests)"
            );
        }
        requests += 1;
        match reply.status {
            200 => streak = None,
            401 => {
                expect_revoked(&reply)?;
                first.get_or_insert((at, requests));
                let (started, count) = streak.get_or_insert((at, 0));
                *count += 1;
                if *count >= STREAK {
                    let (delay, requests) = first.unwrap_or((at, requests));
                    return Ok(Round {
                        delay,
                        everywhere: *started,
                        requests,
                    });
                }
            }
            other => bail!(
                "unexpected {other} through envoy: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        }
    }
}

/// Checks that a 401 through Envoy is the filter's `revoked` refusal, not some other one.
pub(super) fn expect_revoked(reply: &Reply) -> Result<()> {
    let reason = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string));
    if reason.as_deref() != Some("revoked") {
        bail!(
            "expected 401 revoked, got 401 {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
