//! The revocation memory benchmark: what 1,000,000 revoked jtis cost at the edge, in a real Envoy.
//! The real admin API (release build, SQLite, then PostgreSQL when one is reachable) is seeded with a million
//! unexpired jti revocations before it serves; Envoy (two workers) with the filter syncs them: a cold poller
//! loads the edge snapshot (`GET /api/v1/revocations/snapshot`), then follows the feed. The admin API's log says
//! how long it took to build the snapshot from the store, printed beside the sync time. The filter logs, at info, the table
//! size and each VM's linear memory when it loads a full state, which gives the per-VM cost against what the
//! same VM logged with the empty state; Envoy's RSS gives the whole process. A revoked token refused on every
//! worker proves the million-entry state enforces.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::filter::ENVOY_CPU;
use super::Options;
use crate::admin_api::{self, AdminApi, Setup};
use crate::envoy::Envoy;
use crate::http::{self, get_request, Conn};
use crate::install;
use crate::util::{self, bail, Result};

/// The scenario on SQLite, for `--only`.
const SCENARIO: &str = "revocation-memory-1m";
/// The scenario on PostgreSQL, for `--only`.
const SCENARIO_POSTGRES: &str = "revocation-memory-1m-postgres";
/// Revoked jtis seeded into the admin API (the issue's figure).
const REVOCATIONS: u64 = 1_000_000;
/// Rows per seeding transaction, so the seed can say how far along it is.
const SEED_CHUNK: u64 = 100_000;
/// How long the seeded revocations stay unexpired: far longer than the run.
const SEED_LIFETIME_SECS: u64 = 2 * 3600;
/// Envoy workers; with the main thread's VM that makes [`VMS`] VMs holding the state.
const WORKERS: usize = 2;
/// VMs that must each log their load of the state: one per worker and one on the main thread.
const VMS: usize = WORKERS + 1;
/// How long Envoy may take from ready until every VM holds the million entries.
const SYNC_TIMEOUT: Duration = Duration::from_secs(240);
/// How often the wait for the sync says how far along it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Consecutive answers on fresh connections that count as "every worker" (1 in 512 to miss one of two).
const STREAK: usize = 10;
/// How long a revocation may take to reach every worker before the enforcement check fails.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Issue 11's memory budget for the revocation state, per worker VM.
const BUDGET_MB: f64 = 16.0;
/// Issue 11's target for a cold sync of the million revocations: every VM loaded within this long.
const SYNC_TARGET: Duration = Duration::from_secs(2);
/// The gauge the polling VM publishes with the number of entries it holds.
const ENTRIES_GAUGE: &str = "wasmcustom.edgewarden.revocation_entries";
/// The client the check's token is issued through, and the audience the filter requires.
const CLIENT: &str = "bench-memory";
const AUDIENCE: &str = "bench-api";

/// Every scenario name, for `--only`.
pub fn scenarios() -> Vec<String> {
    vec![SCENARIO.to_string(), SCENARIO_POSTGRES.to_string()]
}

/// The PostgreSQL server the PostgreSQL scenario creates its database on: `EDGEWARDEN_BENCH_POSTGRES_URL`, else
/// `EDGEWARDEN_TEST_POSTGRES_URL` (the admin API's tests use it), else the local default; `None` when
/// `pg_isready` does not answer for it (the scenario is then skipped, and says so).
fn postgres_server() -> Option<String> {
    let url = std::env::var("EDGEWARDEN_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("EDGEWARDEN_TEST_POSTGRES_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let ready = util::have("pg_isready")
        && util::have("psql")
        && Command::new("pg_isready")
            .args(["-d", &url])
            .output()
            .is_ok_and(|o| o.status.success());
    ready.then_some(url)
}

/// Where the admin API keeps its state for one run.
enum Store {
    Sqlite,
    /// The server's URL, and the database created for the run on it.
    Postgres {
        server: String,
        database: String,
    },
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres { .. } => "postgres",
        }
    }

    fn scenario(&self) -> &'static str {
        match self {
            Store::Sqlite => SCENARIO,
            Store::Postgres { .. } => SCENARIO_POSTGRES,
        }
    }

    /// The run's database URL: the server's with the database name replaced.
    fn database_url(&self) -> Option<String> {
        match self {
            Store::Sqlite => None,
            Store::Postgres { server, database } => {
                let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
                Some(format!("{base}/{database}"))
            }
        }
    }
}

/// Runs the scenario on SQLite and on PostgreSQL (when reachable), each as selected by `--only`.
pub fn run(options: &Options) -> Result<()> {
    let mut results = serde_json::Map::new();
    if options.matches(SCENARIO) {
        results.extend(run_on(&Store::Sqlite)?);
    }
    if options.matches(SCENARIO_POSTGRES) {
        match postgres_server() {
            Some(server) => {
                let database = format!("edgewarden_bench_memory_{}", std::process::id());
                // Two commands: DROP DATABASE cannot run in the transaction one `-c` with two statements is.
                for sql in [
                    format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
                    format!("CREATE DATABASE {database}"),
                ] {
                    util::output(Command::new("psql").args([server.as_str(), "-qc", &sql]))?;
                }
                let store = Store::Postgres {
                    server: server.clone(),
                    database: database.clone(),
                };
                let outcome = run_on(&store);
                let _ = util::output(Command::new("psql").args([
                    server.as_str(),
                    "-qc",
                    &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
                ]));
                results.extend(outcome?);
            }
            None => println!(
                "    {SCENARIO_POSTGRES}: no PostgreSQL answers pg_isready (set EDGEWARDEN_BENCH_POSTGRES_URL); skipped"
            ),
        }
    }
    if results.is_empty() {
        println!("    no memory scenario matches --only; skipped");
        return Ok(());
    }
    let out = util::target_dir().join("bench/memory-results.json");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&Value::Object(results))?)?;
    println!("raw figures: {}", out.display());
    Ok(())
}

/// Seeds the admin API on `store`, starts Envoy, waits for every VM to load the state, checks enforcement and
/// prints the figures; returns them for the results file.
fn run_on(store: &Store) -> Result<serde_json::Map<String, Value>> {
    let bin = admin_api::build()?;
    util::step(&format!(
        "admin api ({}) with {REVOCATIONS} revoked jtis for the memory bench",
        store.name()
    ));
    let dir = util::target_dir().join(format!(
        "bench/memory-{}-{}",
        store.name(),
        std::process::id()
    ));
    let mut setup = Setup::fresh(&bin, dir)?;
    setup.master_key = Some(admin_api::BENCH_MASTER_KEY.to_string());
    setup.database_url = store.database_url();
    // Info, for the line the snapshot logs when it is built.
    setup.log_level = "info";
    // Creating the keys first also runs the migrations, so the seed writes into the real schema.
    let admin_key = setup.create_api_key("admin", "bench-admin")?;
    let edge_key = setup.create_api_key("edge", "bench-memory")?;
    let seed_time = match &setup.database_url {
        None => seed(&setup.dir)?,
        Some(url) => seed_postgres(url)?,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], util::free_port()?));
    let mut api = setup.serve(addr, &["--no-bootstrap-admin"])?;
    api.create_client(&admin_key, CLIENT, &[], &[AUDIENCE])?;
    println!(
        "    edgewarden-admin on {addr} (pid {}, {}, issuer {})",
        api.pid(),
        store.name(),
        api.issuer
    );

    util::step(&format!(
        "envoy ({WORKERS} workers, log level info) syncing the revocation feed"
    ));
    let mut envoy = super::propagation::start_envoy(
        &api,
        &edge_key,
        "bench-memory",
        "info",
        &crate::build::filter_wasm(),
        WORKERS,
    )?;
    let ready = Instant::now();
    let rss_ready = process_memory_mb(envoy.pid(), "VmRSS")?;
    println!(
        "    envoy ready (pid {}, RSS {rss_ready:.1} MB), log in {}",
        envoy.pid(),
        envoy.log.display()
    );
    let sync = wait_for_state(&mut envoy, &mut api, ready)?;
    let snapshot_built =
        snapshot_build_line(&std::fs::read_to_string(&api.log).unwrap_or_default());
    let rss_synced = process_memory_mb(envoy.pid(), "VmRSS")?;
    let rss_peak = process_memory_mb(envoy.pid(), "VmHWM")?;

    util::step("enforcement with the million-entry state");
    let listener = envoy
        .listener_port
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .ok_or_else(|| util::Error::msg("bench envoy has no listener port"))?;
    let refused_after = check_enforcement(&api, &admin_key, listener)
        .map_err(|e| util::Error::msg(format!("{e}; envoy's log: {}", envoy.log.display())))?;
    drop(envoy);
    drop(api);

    let figures = Figures {
        store: store.name(),
        scenario: store.scenario(),
        seed: seed_time,
        sync,
        snapshot_built,
        rss_ready,
        rss_synced,
        rss_peak,
        refused_after,
    };
    println!("\n{}", figures.report());
    match figures.json() {
        Value::Object(map) => Ok(map),
        _ => Ok(serde_json::Map::new()),
    }
}

/// What the admin API logged about building the edge snapshot (`read_ms` from the store, `total_ms` with the
/// encoding), if it built one: `(read_ms, total_ms)`.
fn snapshot_build_line(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .find(|l| l.contains("revocation snapshot built"))?;
    // Without the terminal colours tracing may put around field names.
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let line = plain.as_str();
    let field = |name: &str| {
        line.split(|c: char| c.is_whitespace() || c == ',')
            .find_map(|part| part.strip_prefix(name))
            .and_then(|v| {
                v.trim_matches(|c: char| !c.is_ascii_digit())
                    .parse::<u64>()
                    .ok()
            })
    };
    Some((field("read_ms=")?, field("total_ms=")?))
}

/// Inserts [`REVOCATIONS`] jti revocations into the PostgreSQL store at `url` and moves the feed cursor past
/// them, like [`seed`], in transactions of [`SEED_CHUNK`] rows.
fn seed_postgres(url: &str) -> Result<Duration> {
    let now = unix_now();
    let expires = now + SEED_LIFETIME_SECS;
    let started = Instant::now();
    let mut done = 0;
    while done < REVOCATIONS {
        let first = done + 1;
        let last = (done + SEED_CHUNK).min(REVOCATIONS);
        let sql = format!(
            "BEGIN; \
             INSERT INTO revocations (kind, value, seq, reason, actor, revoked_at, expires_at) \
             SELECT 'jti', 'bench' || lpad(i::text, 17, '0'), i, 'bench', 'bench', {now}, {expires} \
             FROM generate_series({first}, {last}) AS i; \
             UPDATE feed_state SET current_cursor = {last} WHERE id = 1; COMMIT;"
        );
        util::output(Command::new("psql").args([url, "-qc", &sql]))?;
        done = last;
        println!(
            "    seeded {done:>7}/{REVOCATIONS} jti revocations (expire in {} h), {:.1} s",
            SEED_LIFETIME_SECS / 3600,
            started.elapsed().as_secs_f64()
        );
    }
    util::output(Command::new("psql").args([url, "-qc", "ANALYZE revocations"]))?;
    let cursor = util::output(Command::new("psql").args([
        url,
        "-tAc",
        "SELECT current_cursor FROM feed_state WHERE id = 1",
    ]))?;
    if cursor.trim() != REVOCATIONS.to_string() {
        bail!(
            "after seeding, the feed cursor is `{}`, not {REVOCATIONS}",
            cursor.trim()
        );
    }
    Ok(started.elapsed())
}

/// Inserts [`REVOCATIONS`] jti revocations and moves the feed cursor past them, as the service would after
/// that many `POST /api/v1/revocations`, in transactions of [`SEED_CHUNK`] rows so progress shows. Runs
/// before `serve`, so nothing reads a half-seeded store. Returns how long it took.
fn seed(dir: &Path) -> Result<Duration> {
    if !util::have("sqlite3") {
        println!("    sqlite3 is missing; installing it");
        install::apt_install(&["sqlite3"])?;
    }
    let db = dir.join("edgewarden.db");
    let now = unix_now();
    let expires = now + SEED_LIFETIME_SECS;
    let started = Instant::now();
    let mut done = 0;
    while done < REVOCATIONS {
        let first = done + 1;
        let last = (done + SEED_CHUNK).min(REVOCATIONS);
        let sql = format!(
            "BEGIN; \
             WITH RECURSIVE n(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
             INSERT INTO revocations (kind, value, seq, reason, actor, revoked_at, expires_at) \
             SELECT 'jti', printf('bench%017d', i), i, 'bench', 'bench', {now}, {expires} FROM n; \
             UPDATE feed_state SET current_cursor = {last} WHERE id = 1; COMMIT;"
        );
        util::output(Command::new("sqlite3").arg(&db).arg(sql))?;
        done = last;
        println!(
            "    seeded {done:>7}/{REVOCATIONS} jti revocations (expire in {} h), {:.1} s",
            SEED_LIFETIME_SECS / 3600,
            started.elapsed().as_secs_f64()
        );
    }
    let cursor = util::output(
        Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT current_cursor FROM feed_state WHERE id = 1"),
    )?;
    if cursor.trim() != REVOCATIONS.to_string() {
        bail!(
            "after seeding, the feed cursor is `{}`, not {REVOCATIONS}",
            cursor.trim()
        );
    }
    Ok(started.elapsed())
}

/// How the sync went: when the gauge and every VM got there, and what each VM logged.
struct StateSync {
    /// From Envoy ready until the gauge showed every entry (the polling VM has them).
    gauge: Duration,
    /// From Envoy ready until every VM had logged its load.
    everywhere: Duration,
    /// Each VM's load, the poller first.
    vms: Vec<VmLoad>,
    /// Envoy's main thread id (its pid), to tell the main thread's VM from the workers'.
    main_thread: String,
}

impl StateSync {
    /// Where a VM runs: `main` (Envoy's main thread) or `worker`.
    fn place(&self, vm: &VmLoad) -> &'static str {
        if vm.load.thread == self.main_thread {
            "main"
        } else {
            "worker"
        }
    }
}

/// Waits until the gauge shows [`REVOCATIONS`] entries and [`VMS`] VMs have logged loading them, printing
/// progress; fails after [`SYNC_TIMEOUT`] with what it saw.
fn wait_for_state(envoy: &mut Envoy, api: &mut AdminApi, ready: Instant) -> Result<StateSync> {
    let mut gauge_at: Option<Duration> = None;
    let mut last_progress = Instant::now();
    loop {
        envoy.check_running()?;
        api.check_running()?;
        let entries = entries_gauge(envoy.admin)?;
        if entries == Some(REVOCATIONS) && gauge_at.is_none() {
            let at = ready.elapsed();
            println!(
                "    {ENTRIES_GAUGE} = {REVOCATIONS} after {:.2} s",
                at.as_secs_f64()
            );
            gauge_at = Some(at);
        }
        let log = std::fs::read_to_string(&envoy.log)?;
        let vms = vm_loads(&log);
        if let Some(gauge) = gauge_at {
            if vms.len() >= VMS {
                let everywhere = ready.elapsed();
                println!(
                    "    every VM logged its load after {:.2} s",
                    everywhere.as_secs_f64()
                );
                let mut vms = order_vms(vms)?;
                estimate_baselines(&mut vms);
                return Ok(StateSync {
                    gauge,
                    everywhere,
                    vms,
                    main_thread: envoy.pid().to_string(),
                });
            }
        }
        if ready.elapsed() > SYNC_TIMEOUT {
            bail!(
                "after {SYNC_TIMEOUT:?} the gauge says {} entries (want {REVOCATIONS}) and {}/{VMS} VMs logged a load of {REVOCATIONS}; \
                 the filter's revocation state lines in envoy's log ({}):\n{}",
                entries.map_or("no".to_string(), |n| n.to_string()),
                vms.len(),
                envoy.log.display(),
                state_lines(&log)
            );
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            println!(
                "    {:>5.1} s: gauge {} entries, {}/{VMS} VMs loaded, envoy RSS {:.1} MB",
                ready.elapsed().as_secs_f64(),
                entries.map_or("not yet".to_string(), |n| n.to_string()),
                vms.len(),
                process_memory_mb(envoy.pid(), "VmRSS")?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of [`ENTRIES_GAUGE`] on Envoy's admin endpoint, `None` before the filter first set it.
fn entries_gauge(admin: SocketAddr) -> Result<Option<u64>> {
    let reply = http::get(admin, "/stats?filter=revocation_entries", &[])?;
    if reply.status != 200 {
        bail!("envoy's /stats answered {}", reply.status);
    }
    Ok(reply.body.lines().find_map(|line| {
        line.strip_prefix(ENTRIES_GAUGE)
            .and_then(|rest| rest.strip_prefix(": "))
            .and_then(|v| v.trim().parse().ok())
    }))
}

/// One `edgewarden: revocation state <how>: <n> entries, table <t> MB, VM memory <m> MB` line.
#[derive(Debug, Clone, PartialEq)]
struct StateLine {
    /// Envoy's thread id from the line's prefix: one VM per thread.
    thread: String,
    /// The VM replaced its state from feed pages (it polls), rather than from the shared snapshot.
    poller: bool,
    entries: u64,
    table_mb: f64,
    vm_mb: Option<f64>,
}

/// Parses a filter state line out of one line of Envoy's log
/// (`[2026-12-01 21:00:00.123][4242][info][wasm] [...] wasm log edgewarden edgewarden: revocation state ...`).
fn parse_state_line(line: &str) -> Option<StateLine> {
    let (_, message) = line.split_once("edgewarden: revocation state ")?;
    let (how, figures) = message.split_once(": ")?;
    let poller = match how {
        // The poller: from the edge snapshot, or from the JSON feed's listing (an admin API without it).
        "replaced by the edge snapshot" | "replaced by a paged snapshot" => true,
        "loaded from the shared snapshot" => false,
        _ => return None,
    };
    // The second bracketed field of Envoy's default log format is the thread id.
    let thread = line.split('[').nth(2)?.split(']').next()?.to_string();
    let mut entries = None;
    let mut table_mb = None;
    let mut vm_mb = None;
    for part in figures.split(", ") {
        if let Some(n) = part.strip_suffix(" entries") {
            entries = n.parse().ok();
        } else if let Some(mb) = part.strip_prefix("table ") {
            table_mb = mb.strip_suffix(" MB")?.parse().ok();
        } else if let Some(mb) = part.strip_prefix("VM memory ") {
            vm_mb = mb.trim_end().strip_suffix(" MB")?.parse().ok();
        }
    }
    Some(StateLine {
        thread,
        poller,
        entries: entries?,
        table_mb: table_mb?,
        vm_mb,
    })
}

/// What one VM logged: its first load of every entry, and its memory with the empty state before it.
#[derive(Debug, Clone, PartialEq)]
struct VmLoad {
    load: StateLine,
    /// VM memory of the last `0 entries` line on the same thread before the load, or the estimate
    /// [`estimate_baselines`] put in.
    baseline_mb: Option<f64>,
    /// The baseline is not this VM's own line but the smallest another VM logged.
    baseline_estimated: bool,
}

impl VmLoad {
    /// What the state cost this VM: its memory after the load minus its baseline.
    fn growth_mb(&self) -> Option<f64> {
        Some(self.load.vm_mb? - self.baseline_mb?)
    }

    fn role(&self) -> &'static str {
        if self.load.poller {
            "poller"
        } else {
            "follower"
        }
    }
}

/// Each thread's first load of [`REVOCATIONS`] entries in `log`, in log order, with its baseline.
fn vm_loads(log: &str) -> Vec<VmLoad> {
    let mut baselines: BTreeMap<String, f64> = BTreeMap::new();
    let mut loads: Vec<VmLoad> = Vec::new();
    for line in log.lines().filter_map(parse_state_line) {
        if line.entries == 0 {
            if let Some(mb) = line.vm_mb {
                baselines.insert(line.thread.clone(), mb);
            }
        } else if line.entries == REVOCATIONS && loads.iter().all(|l| l.load.thread != line.thread)
        {
            loads.push(VmLoad {
                baseline_mb: baselines.get(&line.thread).copied(),
                baseline_estimated: false,
                load: line,
            });
        }
    }
    loads
}

/// The poller's load first, then the followers'; an error unless exactly one VM loaded from the feed.
fn order_vms(mut vms: Vec<VmLoad>) -> Result<Vec<VmLoad>> {
    let pollers = vms.iter().filter(|v| v.load.poller).count();
    if pollers != 1 {
        bail!(
            "{pollers} VMs loaded the state from the feed, expected 1 poller and {WORKERS} followers: {vms:?}"
        );
    }
    vms.sort_by_key(|v| !v.load.poller);
    Ok(vms)
}

/// Gives a VM that logged no empty state the smallest baseline another VM logged. The poller usually has none:
/// it takes the lease on its first tick and never loads the empty snapshot, but it runs the same module with
/// the same configuration, so it started at the followers' size; the smallest keeps its cost from looking lower.
fn estimate_baselines(vms: &mut [VmLoad]) {
    let logged = vms
        .iter()
        .filter_map(|v| v.baseline_mb)
        .min_by(f64::total_cmp);
    for vm in vms.iter_mut().filter(|v| v.baseline_mb.is_none()) {
        vm.baseline_mb = logged;
        vm.baseline_estimated = logged.is_some();
    }
}

/// The filter's revocation state lines of `log`, for error messages.
fn state_lines(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("edgewarden: revocation state"))
        .collect();
    if lines.is_empty() {
        "(none)".to_string()
    } else {
        lines.join("\n")
    }
}

/// A fresh token passes on [`STREAK`] fresh connections; once revoked by jti it is refused with 401 `revoked`
/// on [`STREAK`] fresh connections in a row. Returns the time from the revocation's 201 to the first of those.
fn check_enforcement(api: &AdminApi, admin_key: &str, listener: SocketAddr) -> Result<Duration> {
    let issued = api.issue_token(admin_key, "memory-check", CLIENT, &[])?;
    let auth = format!("Bearer {}", issued.token);
    let request = get_request(listener, "/", &[("authorization", &auth)]);
    for i in 1..=STREAK {
        let reply = Conn::open(listener)?.exchange(&request)?;
        if reply.status != 200 {
            bail!(
                "a fresh token got {} on connection {i}/{STREAK} before its revocation: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
    println!("    a fresh token passes on {STREAK}/{STREAK} fresh connections");
    api.revoke_jti(admin_key, &issued.jti, "bench")?;
    let revoked = Instant::now();
    let mut streak: Option<Duration> = None;
    let mut in_a_row = 0;
    loop {
        let reply = Conn::open(listener)?.exchange(&request)?;
        let at = revoked.elapsed();
        match reply.status {
            200 => {
                streak = None;
                in_a_row = 0;
            }
            401 => {
                super::propagation::expect_revoked(&reply)?;
                streak.get_or_insert(at);
                in_a_row += 1;
                if in_a_row >= STREAK {
                    let first = streak.unwrap_or(at);
                    println!(
                        "    revoked by jti: 401 revoked on {STREAK} fresh connections in a row from {:.1} ms after the 201",
                        first.as_secs_f64() * 1000.0
                    );
                    return Ok(first);
                }
            }
            other => bail!(
                "unexpected {other} through envoy: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        }
        if at > REVOKE_TIMEOUT {
            bail!("the revoked token was not refused on every worker {REVOKE_TIMEOUT:?} after its revocation");
        }
    }
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`), in MB (10^6 bytes, as the filter logs).
fn process_memory_mb(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok())
        .ok_or_else(|| util::Error::msg(format!("no {field} in /proc/{pid}/status")))?;
    Ok(kb as f64 * 1024.0 / 1e6)
}

/// Everything the run measured.
struct Figures {
    store: &'static str,
    scenario: &'static str,
    seed: Duration,
    sync: StateSync,
    /// The admin API's snapshot build: ms reading the store, ms in all.
    snapshot_built: Option<(u64, u64)>,
    rss_ready: f64,
    rss_synced: f64,
    rss_peak: f64,
    refused_after: Duration,
}

impl Figures {
    /// The table size, from the poller's line (every VM logs the same table).
    fn table_mb(&self) -> f64 {
        self.sync.vms.first().map_or(0.0, |v| v.load.table_mb)
    }

    /// The printed report.
    fn report(&self) -> String {
        let mb = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mut out = format!(
            "revocation memory: {REVOCATIONS} revoked jtis, admin API ({}) -> envoy ({WORKERS} workers on cpu {ENVOY_CPU}, {VMS} VMs)\n\
             seeded in {:.1} s; from envoy ready: gauge at {REVOCATIONS} after {:.2} s, every VM loaded after {:.2} s\n\
             {}\n\
             revocation table: {:.1} MB per VM ({:.1} bytes per jti)\n\
             {:<10} {:>15} {:>11} {:>10} {:>10}\n",
            self.store,
            self.seed.as_secs_f64(),
            self.sync.gauge.as_secs_f64(),
            self.sync.everywhere.as_secs_f64(),
            match self.snapshot_built {
                Some((read, total)) => format!(
                    "edge snapshot built by the admin API in {total} ms ({read} ms reading the store)"
                ),
                None => "no edge snapshot built (the poller synced through the JSON feed)".to_string(),
            },
            self.table_mb(),
            self.table_mb() * 1e6 / REVOCATIONS as f64,
            "VM",
            "thread",
            "before MB",
            "after MB",
            "state MB",
        );
        for vm in &self.sync.vms {
            let estimated = if vm.baseline_estimated { "~" } else { "" };
            out.push_str(&format!(
                "{:<10} {:>15} {:>11} {:>10} {:>10}\n",
                vm.role(),
                format!("{} ({})", vm.load.thread, self.sync.place(vm)),
                format!("{estimated}{}", mb(vm.baseline_mb)),
                mb(vm.load.vm_mb),
                format!("{estimated}{}", mb(vm.growth_mb())),
            ));
        }
        if self.sync.vms.iter().any(|v| v.baseline_estimated) {
            out.push_str(
                "~ no `0 entries` line of its own (it polled from its first tick): the smallest baseline the others logged\n",
            );
        }
        out.push_str(&format!(
            "issue 11 targets: cold sync under {:.0} s: {:.2} s, {}; at most {BUDGET_MB:.0} MB per worker VM\n",
            SYNC_TARGET.as_secs_f64(),
            self.sync.everywhere.as_secs_f64(),
            if self.sync.everywhere < SYNC_TARGET { "met" } else { "MISSED" },
        ));
        for vm in &self.sync.vms {
            let verdict = match vm.growth_mb() {
                Some(g) if g <= BUDGET_MB => format!("{g:.1} MB, within"),
                Some(g) => format!("{g:.1} MB, over by {:.1} MB", g - BUDGET_MB),
                None => "no baseline logged, not judged".to_string(),
            };
            out.push_str(&format!(
                "  {} ({} thread {}): {verdict}\n",
                vm.role(),
                self.sync.place(vm),
                vm.load.thread
            ));
        }
        out.push_str(&format!(
            "envoy RSS: {:.1} MB when ready, {:.1} MB synced (+{:.1} MB), peak {:.1} MB\n\
             enforcement: a revoked token refused (401 revoked) on {STREAK} fresh connections in a row {:.1} ms after its revocation",
            self.rss_ready,
            self.rss_synced,
            self.rss_synced - self.rss_ready,
            self.rss_peak,
            self.refused_after.as_secs_f64() * 1000.0,
        ));
        out
    }

    /// The figures for `target/bench/memory-results.json`.
    fn json(&self) -> Value {
        let vms: Vec<Value> = self
            .sync
            .vms
            .iter()
            .map(|vm| {
                json!({
                    "role": vm.role(),
                    "thread": vm.load.thread,
                    "place": self.sync.place(vm),
                    "baseline_mb": vm.baseline_mb,
                    "baseline_estimated": vm.baseline_estimated,
                    "loaded_mb": vm.load.vm_mb,
                    "state_mb": vm.growth_mb(),
                })
            })
            .collect();
        json!({
            self.scenario: {
                "store": self.store,
                "snapshot_read_ms": self.snapshot_built.map(|b| b.0),
                "snapshot_build_ms": self.snapshot_built.map(|b| b.1),
                "revocations": REVOCATIONS,
                "workers": WORKERS,
                "seed_s": self.seed.as_secs_f64(),
                "gauge_synced_ms": self.sync.gauge.as_secs_f64() * 1000.0,
                "every_vm_loaded_ms": self.sync.everywhere.as_secs_f64() * 1000.0,
                "table_mb": self.table_mb(),
                "vms": vms,
                "budget_mb_per_worker": BUDGET_MB,
                "envoy_rss_ready_mb": self.rss_ready,
                "envoy_rss_synced_mb": self.rss_synced,
                "envoy_rss_peak_mb": self.rss_peak,
                "revoked_refused_everywhere_ms": self.refused_after.as_secs_f64() * 1000.0,
            }
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[2026-12-01 21:00:00.100][100][info][main] [source/server/server.cc:434] initializing epoch 0
[2026-12-01 21:00:00.200][100][info][wasm] [source/extensions/common/wasm/context.cc:1192] wasm log edgewarden edgewarden: revocation state loaded from the shared snapshot: 0 entries, table 0.0 MB, VM memory 2.4 MB
[2026-12-01 21:00:00.300][101][info][wasm] [source/extensions/common/wasm/context.cc:1192] wasm log edgewarden edgewarden: revocation state loaded from the shared snapshot: 0 entries, table 0.0 MB, VM memory 2.3 MB
[2026-12-01 21:00:05.000][102][info][wasm] [source/extensions/common/wasm/context.cc:1192] wasm log edgewarden edgewarden: revocation state replaced by a paged snapshot: 1000000 entries, table 28.6 MB, VM memory 43.5 MB
[2026-12-01 21:00:05.100][100][info][wasm] [source/extensions/common/wasm/context.cc:1192] wasm log edgewarden edgewarden: revocation state loaded from the shared snapshot: 1000000 entries, table 28.6 MB, VM memory 33.5 MB
[2026-12-01 21:00:05.200][100][info][wasm] [source/extensions/common/wasm/context.cc:1192] wasm log edgewarden edgewarden: revocation state loaded from the shared snapshot: 1000000 entries, table 28.6 MB, VM memory 33.5 MB
";

    #[test]
    fn the_edge_snapshot_line_is_the_pollers_and_the_admin_build_line_is_read() {
        let line = "[2026-12-04 08:05:05.377][29577][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log edgewarden edgewarden: edgewarden: revocation state replaced by the edge snapshot: 1000000 entries, table 13.3 MB, VM memory 16.7 MB";
        let parsed = parse_state_line(line).unwrap();
        assert!(parsed.poller);
        assert_eq!(parsed.thread, "29577");
        assert_eq!(parsed.entries, 1_000_000);
        let admin = "2026-12-04T08:05:04.9Z  INFO edgewarden_admin::snapshot: revocation snapshot built cursor=1000000 entries=1000000 pages=12 read_ms=812 total_ms=1034";
        assert_eq!(snapshot_build_line(admin), Some((812, 1034)));
        let coloured = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m revocation snapshot built \u{1b}[3mread_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m5 \u{1b}[3mtotal_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m9";
        assert_eq!(snapshot_build_line(coloured), Some((5, 9)));
        assert_eq!(snapshot_build_line("nothing here"), None);
    }

    #[test]
    fn state_lines_are_parsed_with_their_thread() {
        let line = LOG.lines().nth(3).and_then(parse_state_line);
        assert_eq!(
            line,
            Some(StateLine {
                thread: "102".to_string(),
                poller: true,
                entries: 1_000_000,
                table_mb: 28.6,
                vm_mb: Some(43.5),
            })
        );
        assert_eq!(
            parse_state_line(LOG.lines().next().unwrap_or_default()),
            None
        );
    }

    #[test]
    fn each_thread_counts_once_with_the_baseline_it_logged_before() {
        let vms = vm_loads(LOG);
        let summary: Vec<(&str, bool, Option<f64>)> = vms
            .iter()
            .map(|v| (v.load.thread.as_str(), v.load.poller, v.baseline_mb))
            .collect();
        assert_eq!(summary, [("102", true, None), ("100", false, Some(2.4))]);
        assert_eq!(vms[1].growth_mb().map(|g| (g * 10.0).round()), Some(311.0));
    }

    #[test]
    fn a_vm_without_an_empty_state_line_gets_the_smallest_logged_baseline() {
        let mut vms = vm_loads(LOG);
        estimate_baselines(&mut vms);
        assert_eq!(vms[0].baseline_mb, Some(2.4));
        assert!(vms[0].baseline_estimated);
        assert!(!vms[1].baseline_estimated);
    }

    #[test]
    fn order_vms_needs_exactly_one_poller() {
        let vms = vm_loads(LOG);
        let ordered = order_vms(vms.clone()).unwrap();
        assert!(ordered[0].load.poller);
        let followers: Vec<VmLoad> = vms.into_iter().filter(|v| !v.load.poller).collect();
        assert!(order_vms(followers).is_err());
    }
}
