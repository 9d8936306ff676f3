//! The fleet scenario (issue 12): ten thousand edges long-polling one admin replica, as the real
//! `edgewarden-admin serve` (release build, default limits) on SQLite and on PostgreSQL.
//! Every edge holds one keep-alive connection and long-polls the revocation feed with its own name, as a
//! filter does (`since=<cursor>&wait=20`, `If-None-Match`). Once every edge's poll is held, subjects are
//! revoked one at a time; for each, the time from the admin API's 201 until each edge's poll has returned
//! the new cursor is recorded. Meanwhile a fresh connection asks `/healthz` every 100 ms, and the
//! replica's memory and open descriptors are sampled every second.
//! Printed beside the targets: every edge has a revocation within 1 s at p99, the replica stays under
//! 512 MB, `/healthz` answers within 50 ms throughout.
//! The load generator drives every edge from one thread with an event loop (`fleet_edges.rs`), on the
//! same 2 cores as the service; its CPU is printed beside the replica's.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::admin::{drop_database, postgres_server, psql, with_database};
use super::{process_cpu, quantile, Options};
use crate::admin_api::{self, AdminApi, Setup};
use crate::util::{self, bail, Result};

/// Edges polling (the figure); `EDGEWARDEN_BENCH_FLEET_EDGES` sets another.
const EDGES: usize = 10_000;
/// The `wait=` of every poll, as a filter with the default `max_staleness_seconds` sends it.
pub(super) const WAIT_SECONDS: u64 = 20;
/// The filter's default `poll_interval_ms`: an answer that came back at once is followed by the next
/// poll after this long.
pub(super) const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Revocations measured, one at a time.
const ROUNDS: usize = 10;
/// How long a round waits for every edge before counting the rest as missed.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Targets of issue 12.
const ARRIVAL_P99_TARGET: Duration = Duration::from_secs(1);
const HEALTHZ_TARGET: Duration = Duration::from_millis(50);
const RSS_TARGET_MB: f64 = 512.0;

/// Every scenario name, for `--only`.
pub fn scenarios() -> Vec<String> {
    vec![
        "admin-fleet-sqlite".to_string(),
        "admin-fleet-postgres".to_string(),
    ]
}

/// What one fleet run measured.
struct FleetResult {
    store: &'static str,
    edges: usize,
    connect_time: Duration,
    /// Per round: the arrival time of every edge that saw the new cursor.
    arrivals: Vec<Duration>,
    /// Edge-rounds that did not see the new cursor within the round's timeout.
    missed: u64,
    rounds: usize,
    /// `/healthz` answer times while revocations landed, sorted.
    healthz: Vec<Duration>,
    /// `/healthz` answer times while the edges connected and took their snapshot, sorted.
    healthz_connecting: Vec<Duration>,
    healthz_errors: u64,
    healthz_first_error: Option<String>,
    peak_rss_mb: f64,
    peak_fds: usize,
    not_modified_per_second: f64,
    poll_errors: u64,
    poll_first_error: Option<String>,
    revoke_latency: Vec<Duration>,
    /// The replica's CPU time over the measured rounds, per edge and revocation (the answer with the
    /// change, then the edge's next poll).
    cpu_per_edge_round: Duration,
    /// The replica's CPU time over the measured rounds, in cores.
    cpu_share: f64,
    /// The load generator's (this process's) CPU time over the measured rounds, in cores.
    generator_share: f64,
}

/// Runs the fleet scenarios `--only` selects and prints their table.
pub fn run(options: &Options) -> Result<()> {
    let stores: Vec<&'static str> = ["sqlite", "postgres"]
        .into_iter()
        .filter(|s| options.matches(&format!("admin-fleet-{s}")))
        .collect();
    if stores.is_empty() {
        return Ok(());
    }
    let edges = match std::env::var("EDGEWARDEN_BENCH_FLEET_EDGES") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => bail!("EDGEWARDEN_BENCH_FLEET_EDGES needs a positive whole number, got `{v}`"),
        },
        Err(_) => EDGES,
    };
    raise_descriptor_limit(edges)?;
    let bin = match std::env::var_os("EDGEWARDEN_BENCH_ADMIN_BIN") {
        Some(bin) => std::path::PathBuf::from(bin),
        None => admin_api::build()?,
    };
    let mut results = Vec::new();
    for store in stores {
        let server = if store == "postgres" {
            match postgres_server() {
                Ok(url) => Some(url),
                Err(e) => {
                    println!("    admin-fleet-postgres skipped: {e}");
                    continue;
                }
            }
        } else {
            None
        };
        util::step(&format!(
            "admin fleet on {store}: {edges} edges long-polling one replica"
        ));
        results.push(bench_fleet(&bin, store, server.as_deref(), edges)?);
    }
    let report = report(&results);
    println!("\n{report}");
    let out = util::target_dir().join("bench/fleet-results.json");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results_json(&results))?)?;
    println!("    results written to {}", out.display());
    Ok(())
}

/// The bench opens one descriptor per edge, and so does the replica: both need a soft limit above that.
/// Raises this process's soft limit to its hard one (children inherit it), or says what to do.
fn raise_descriptor_limit(edges: usize) -> Result<()> {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok())
        .collect();
    let (soft, hard) = match numbers.as_slice() {
        [soft, hard, ..] => (*soft, *hard),
        _ => (0, 0),
    };
    let needed = edges as u64 + 512;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "{edges} edges need {needed} open files in this process and in the admin API, but the hard limit is {hard}; \
             raise it (ulimit -Hn) or set EDGEWARDEN_BENCH_FLEET_EDGES lower"
        );
    }
    // `prlimit` (util-linux) changes the running process's limit without a libc binding in the xtask.
    let pid = std::process::id().to_string();
    util::output(std::process::Command::new("prlimit").args([
        "--pid",
        &pid,
        &format!("--nofile={hard}:{hard}"),
    ]))
    .map_err(|e| {
        util::Error::msg(format!(
            "cannot raise the open-file limit from {soft} to {hard} with prlimit: {e}; run `ulimit -n {hard}` first"
        ))
    })?;
    println!("    open-file limit raised from {soft} to {hard}");
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A fresh replica with the shipped limits (no `--max-connections`), an admin key and an edge key.
struct Fleet {
    api: AdminApi,
    admin_key: String,
    edge_key: String,
    postgres: Option<(String, String)>,
}

impl Fleet {
    fn start(bin: &Path, store: &str, server: Option<&str>) -> Result<Fleet> {
        let dir = util::target_dir().join(format!("bench/fleet-{store}-{}", std::process::id()));
        let mut setup = Setup::fresh(bin, dir)?;
        setup.master_key = Some(admin_api::BENCH_MASTER_KEY.to_string());
        let postgres = match server {
            Some(server) => {
                let name = format!("edgewarden_fleet_{}_{}", std::process::id(), unix_now());
                psql(server, &format!("CREATE DATABASE {name}"))?;
                println!("    created database {name}");
                setup.database_url = Some(with_database(server, &name)?);
                Some((server.to_string(), name))
            }
            None => None,
        };
        let admin_key = setup.create_api_key("admin", "fleet-admin")?;
        // An edge key not bound to names: one key for ten thousand edge names.
        let edge_key = setup.create_api_key("edge", "fleet-edge")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], util::free_port()?));
        let api = setup.serve(addr, &["--no-bootstrap-admin"])?;
        println!("    edgewarden-admin serving on {addr} (pid {})", api.pid());
        Ok(Fleet {
            api,
            admin_key,
            edge_key,
            postgres,
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.api.stop();
        if let Some((server, name)) = &self.postgres {
            drop_database(server, name);
        }
    }
}

/// What the polling edges share with the conductor.
pub(super) struct Shared {
    /// The newest cursor each edge has received, and when.
    pub(super) seen: Vec<Mutex<(i64, Option<Instant>)>>,
    /// Edges whose current poll is sent and not yet answered.
    pub(super) held: AtomicUsize,
    /// Edges that had an answer at least once.
    pub(super) connected: AtomicUsize,
    pub(super) not_modified: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) first_error: Mutex<Option<String>>,
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(message);
    }
}

/// The replica's resident memory (MB) and open descriptors.
fn sample(pid: u32) -> (f64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// One `GET /healthz` on a fresh connection (closed by the replica after its answer).
fn healthz(addr: SocketAddr) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    match super::fleet_edges::parse_reply(&answer)? {
        Some(reply) if reply.status == 200 => Ok(started.elapsed()),
        Some(reply) => Err(format!(
            "/healthz answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )),
        None => Err("/healthz: the replica closed the connection mid-answer".into()),
    }
}

fn bench_fleet(
    bin: &Path,
    store: &'static str,
    server: Option<&str>,
    edges: usize,
) -> Result<FleetResult> {
    let fleet = Fleet::start(bin, store, server)?;
    let addr = fleet.api.addr;
    let pid = fleet.api.pid();
    let shared = Arc::new(Shared {
        seen: (0..edges).map(|_| Mutex::new((0, None))).collect(),
        held: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
        not_modified: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        stop: AtomicBool::new(false),
    });
    let key = Arc::new(fleet.edge_key.clone());

    // Probes: /healthz on a fresh connection every 100 ms, memory and descriptors every second.
    let probes_stop = Arc::new(AtomicBool::new(false));
    // Answers while the edges connect and take their snapshot, and while revocations land, kept apart.
    let rounds_started = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Mutex::new((
        Vec::<(Duration, bool)>::new(),
        0u64,
        None::<String>,
    )));
    let health_thread = {
        let stop = probes_stop.clone();
        let health = health.clone();
        let rounds_started = rounds_started.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let in_rounds = rounds_started.load(Ordering::Relaxed);
                let result = healthz(addr);
                let mut h = health.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(took) => h.0.push((took, in_rounds)),
                    Err(e) => {
                        h.1 += 1;
                        h.2.get_or_insert(e);
                    }
                }
                drop(h);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let peak = Arc::new(Mutex::new((0.0f64, 0usize)));
    let sampler = {
        let stop = probes_stop.clone();
        let peak = peak.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (rss, fds) = sample(pid);
                let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                p.0 = p.0.max(rss);
                p.1 = p.1.max(fds);
                drop(p);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // One revocation before the edges connect, so each edge's first poll (`since=0`) is answered with a
    // snapshot at once, as on any store in use, instead of being held until its wait runs out.
    let seeded = crate::http::post_json(
        addr,
        "/api/v1/revocations",
        &[("authorization", &format!("Bearer {}", fleet.admin_key))],
        &json!({"subject": format!("fleet-seed-{}", unix_now()), "reason": "fleet bench"})
            .to_string(),
    )?;
    if seeded.status != 201 {
        bail!(
            "the seed revocation answered {}: {}",
            seeded.status,
            seeded.body
        );
    }

    // Connect the edges; each takes the snapshot, then holds its long-poll.
    let started = Instant::now();
    let generator = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("fleet-edges".into())
            .spawn(move || super::fleet_edges::run(edges, addr, &key, &shared))?
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_progress = Instant::now();
    loop {
        let with_cursor = shared
            .seen
            .iter()
            .filter(|s| s.lock().unwrap_or_else(|e| e.into_inner()).1.is_some())
            .count();
        let held = shared.held.load(Ordering::Relaxed);
        if with_cursor == edges && held == edges {
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            println!(
                "    {:.0?}: {with_cursor} of {edges} edges have a snapshot, {held} polls outstanding",
                started.elapsed()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "after 120 s only {with_cursor} of {edges} edges have a snapshot and {held} polls are held; first error: {}",
                shared.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Let the replica settle its held polls (the last ones may still be reaching their wait).
    std::thread::sleep(Duration::from_secs(2));
    let connect_time = started.elapsed();
    println!(
        "    {edges} edges connected, synced and long-polling after {connect_time:.1?} ({} errors so far)",
        shared.errors.load(Ordering::Relaxed)
    );
    let not_modified_before = shared.not_modified.load(Ordering::Relaxed);
    let measured_from = Instant::now();
    rounds_started.store(true, Ordering::Relaxed);
    let cpu_before = process_cpu(pid)?;
    let generator_before = process_cpu(std::process::id())?;

    let mut arrivals = Vec::new();
    let mut missed = 0u64;
    let mut revoke_latency = Vec::new();
    for round in 0..ROUNDS {
        let body =
            json!({"subject": format!("fleet-{}-{round}", unix_now()), "reason": "fleet bench"});
        let sent = Instant::now();
        let response = crate::http::post_json(
            addr,
            "/api/v1/revocations",
            &[("authorization", &format!("Bearer {}", fleet.admin_key))],
            &body.to_string(),
        )?;
        let acknowledged = Instant::now();
        revoke_latency.push(acknowledged - sent);
        if response.status != 201 {
            bail!("revocation answered {}: {}", response.status, response.body);
        }
        let cursor = serde_json::from_str::<Value>(&response.body)
            .ok()
            .and_then(|v| v["cursor"].as_i64());
        // The revocation's cursor when the answer carries it; else any cursor newer than every edge's.
        let target = match cursor {
            Some(c) => c,
            None => {
                shared
                    .seen
                    .iter()
                    .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).0)
                    .max()
                    .unwrap_or(0)
                    + 1
            }
        };
        let round_deadline = acknowledged + ROUND_TIMEOUT;
        let mut round_arrivals: Vec<Duration>;
        loop {
            round_arrivals = shared
                .seen
                .iter()
                .filter_map(|s| {
                    let (c, at) = *s.lock().unwrap_or_else(|e| e.into_inner());
                    (c >= target).then(|| {
                        at.map_or(Duration::ZERO, |at| {
                            at.saturating_duration_since(acknowledged)
                        })
                    })
                })
                .collect();
            if round_arrivals.len() == edges || Instant::now() > round_deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let round_missed = (edges - round_arrivals.len()) as u64;
        missed += round_missed;
        round_arrivals.sort();
        println!(
            "    round {}/{ROUNDS}: revocation answered in {:.1?}; {} of {edges} edges had it, p50 {:.0?} p99 {:.0?} last {:.0?}{}",
            round + 1,
            acknowledged - sent,
            round_arrivals.len(),
            quantile(&round_arrivals, 0.50),
            quantile(&round_arrivals, 0.99),
            round_arrivals.last().copied().unwrap_or_default(),
            if round_missed > 0 { format!("; {round_missed} missed") } else { String::new() }
        );
        arrivals.extend(round_arrivals);
        // Every edge back in its long-poll before the next revocation.
        std::thread::sleep(Duration::from_secs(2));
    }
    let measured = measured_from.elapsed();
    let cpu = process_cpu(pid)?.saturating_sub(cpu_before);
    let generator_cpu = process_cpu(std::process::id())?.saturating_sub(generator_before);
    let not_modified = shared.not_modified.load(Ordering::Relaxed) - not_modified_before;

    shared.stop.store(true, Ordering::Relaxed);
    probes_stop.store(true, Ordering::Relaxed);
    let _ = health_thread.join();
    let _ = sampler.join();
    let (healthz_samples, healthz_errors, healthz_first_error) = {
        let h = health.lock().unwrap_or_else(|e| e.into_inner());
        (h.0.clone(), h.1, h.2.clone())
    };
    let phase = |rounds: bool| {
        let mut times: Vec<Duration> = healthz_samples
            .iter()
            .filter(|(_, in_rounds)| *in_rounds == rounds)
            .map(|(took, _)| *took)
            .collect();
        times.sort();
        times
    };
    let (healthz_connecting, healthz_times) = (phase(false), phase(true));
    let (peak_rss_mb, peak_fds) = *peak.lock().unwrap_or_else(|e| e.into_inner());
    let poll_errors = shared.errors.load(Ordering::Relaxed);
    let poll_first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    drop(fleet);
    match generator.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("the fleet's event loop failed: {e}"),
        Err(_) => bail!("the fleet's event loop panicked"),
    }
    arrivals.sort();
    revoke_latency.sort();
    Ok(FleetResult {
        store,
        edges,
        connect_time,
        arrivals,
        missed,
        rounds: ROUNDS,
        healthz: healthz_times,
        healthz_connecting,
        healthz_errors,
        healthz_first_error,
        peak_rss_mb,
        peak_fds,
        not_modified_per_second: not_modified as f64 / measured.as_secs_f64(),
        poll_errors,
        poll_first_error,
        revoke_latency,
        cpu_per_edge_round: cpu / (edges * ROUNDS) as u32,
        cpu_share: cpu.as_secs_f64() / measured.as_secs_f64(),
        generator_share: generator_cpu.as_secs_f64() / measured.as_secs_f64(),
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn report(results: &[FleetResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "admin fleet (issue 12): edges long-polling one replica; time from the revocation's 201 until each edge's poll returned the new cursor\n",
    );
    for r in results {
        let p99 = quantile(&r.arrivals, 0.99);
        let healthz_max = r.healthz.last().copied().unwrap_or_default();
        let healthz_p99 = quantile(&r.healthz, 0.99);
        let connecting_max = r.healthz_connecting.last().copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<8} {} edges (connected and synced in {:.1?}), {} revocations (answered p50 {:.1?}, max {:.1?})",
            r.store,
            r.edges,
            r.connect_time,
            r.rounds,
            quantile(&r.revoke_latency, 0.5),
            r.revoke_latency.last().copied().unwrap_or_default(),
        );
        let _ = writeln!(
            out,
            "           every edge has it: p50 {:.2?}  p99 {:.2?}  max {:.2?}  missed {}   target p99 < {:?}: {}",
            quantile(&r.arrivals, 0.5),
            p99,
            r.arrivals.last().copied().unwrap_or_default(),
            r.missed,
            ARRIVAL_P99_TARGET,
            verdict(p99 < ARRIVAL_P99_TARGET && r.missed == 0)
        );
        let _ = writeln!(
            out,
            "           /healthz (fresh connection, every 100 ms) during the rounds: p50 {:.1?}  p99 {:.1?}  max {:.1?}; \
             while {} edges connected: p50 {:.1?}  p99 {:.1?}  max {:.1?}; errors {}   target every answer < {:?}: {}",
            quantile(&r.healthz, 0.5),
            healthz_p99,
            healthz_max,
            r.edges,
            quantile(&r.healthz_connecting, 0.5),
            quantile(&r.healthz_connecting, 0.99),
            connecting_max,
            r.healthz_errors,
            HEALTHZ_TARGET,
            verdict(healthz_max.max(connecting_max) < HEALTHZ_TARGET && r.healthz_errors == 0)
        );
        if let Some(e) = &r.healthz_first_error {
            let _ = writeln!(out, "           first /healthz error: {e}");
        }
        let _ = writeln!(
            out,
            "           replica memory peak {:.0} MB   target < {RSS_TARGET_MB} MB: {}   open descriptors peak {}   304s {:.0}/s   poll errors {}",
            r.peak_rss_mb,
            verdict(r.peak_rss_mb < RSS_TARGET_MB),
            r.peak_fds,
            r.not_modified_per_second,
            r.poll_errors
        );
        let _ = writeln!(
            out,
            "           replica CPU {:.1?} per edge and revocation ({:.2} cores over the rounds); the load generator, on the same machine, {:.2} cores",
            r.cpu_per_edge_round, r.cpu_share, r.generator_share
        );
        if let Some(e) = &r.poll_first_error {
            let _ = writeln!(out, "           first poll error: {e}");
        }
    }
    out
}

fn results_json(results: &[FleetResult]) -> Value {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Value::Array(
        results
            .iter()
            .map(|r| {
                json!({
                    "store": r.store,
                    "edges": r.edges,
                    "rounds": r.rounds,
                    "arrival_ms": {"p50": ms(quantile(&r.arrivals, 0.5)), "p99": ms(quantile(&r.arrivals, 0.99)),
                        "max": ms(r.arrivals.last().copied().unwrap_or_default())},
                    "missed": r.missed,
                    "healthz_ms": {"p50": ms(quantile(&r.healthz, 0.5)), "p99": ms(quantile(&r.healthz, 0.99)),
                        "max": ms(r.healthz.last().copied().unwrap_or_default())},
                    "healthz_connecting_ms": {"p50": ms(quantile(&r.healthz_connecting, 0.5)),
                        "p99": ms(quantile(&r.healthz_connecting, 0.99)),
                        "max": ms(r.healthz_connecting.last().copied().unwrap_or_default())},
                    "healthz_errors": r.healthz_errors,
                    "peak_rss_mb": r.peak_rss_mb,
                    "peak_fds": r.peak_fds,
                    "not_modified_per_second": r.not_modified_per_second,
                    "poll_errors": r.poll_errors,
                    "cpu_per_edge_round_us": r.cpu_per_edge_round.as_secs_f64() * 1e6,
                    "replica_cores": r.cpu_share,
                    "generator_cores": r.generator_share,
                })
            })
            .collect(),
    )
}
