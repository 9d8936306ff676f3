//! The admin API benchmark: the real `edgewarden-admin serve` (release build) on SQLite and on PostgreSQL,
//! seeded with 100,000 active revocations. `feed`: 1,000 edges poll the revocation feed with `If-None-Match`
//! (mostly 304s) while a few revocations land, plus the cost of a full snapshot and of the resulting delta.
//! `usage` (issue 14): edges post usage batches (200 count entries and 20 failure samples each) as fast as the
//! service takes them, while a revocation is made every 50 ms; printed beside the targets (PostgreSQL at least
//! 1,000 batches/s, SQLite 200, revocation p99 under 100 ms). `abuse` (issue 13): slow clients past the
//! connection bound, a burst of wrong-password logins and a flood of usage batches at the documented limits,
//! all at once, while revocations and `/healthz` are timed and the service's memory is sampled; printed every
//! second and beside the targets (no failed revocation, revocation p99 under 100 ms, `/healthz` p99 under
//! 50 ms, memory under 512 MB).
//! The load generator is std threads with keep-alive HTTP/1.1 over `TcpStream`, on the same 2 cores as the service.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{process_cpu, quantile, Options};
use crate::admin_api::{self, AdminApi, Setup};
use crate::http::{get_request, post_request, Conn};
use crate::install;
use crate::util::{self, bail, Result};

/// Active revocations seeded before each run (the figure).
const REVOCATIONS: i64 = 100_000;
/// Distinct edges polling the feed (the figure).
const FEED_EDGES: usize = 1_000;
/// Keep-alive connections (one thread each) the polling edges share.
const FEED_CONNECTIONS: usize = 8;
/// Revocations made while the edges poll, each answered to every edge with a 200 delta.
const REVOCATIONS_DURING_RUN: usize = 5;
/// Feed polls discarded at the start while connections and caches warm up.
const FEED_WARMUP: Duration = Duration::from_secs(1);
/// Edges reporting usage, and the shape of each batch.
const USAGE_EDGES: usize = 50;
/// Enough batches in flight for the service's writer to group several per transaction.
const USAGE_CONNECTIONS: usize = 32;
const COUNTS_PER_BATCH: usize = 200;
/// How long the usage scenario runs without `--duration` (issue 14: "sustained for a minute").
const USAGE_SUSTAINED: Duration = Duration::from_secs(60);
const FAILURES_PER_BATCH: usize = 20;
/// The connection bound every bench service is started with (`--max-connections`).
const MAX_CONNECTIONS: usize = 1_000;
/// Slow clients in the abuse scenario: more than the bound, each sending a header byte every half second.
const SLOW_CLIENTS: usize = 1_100;
/// Clients looping wrong-password logins in the abuse scenario.
const LOGIN_CLIENTS: usize = 100;
/// Connections posting usage batches at the documented limits in the abuse scenario.
const FLOOD_CONNECTIONS: usize = 8;
/// Entries of a flood batch: the documented limits.
const FLOOD_COUNTS: usize = 10_000;
const FLOOD_FAILURES: usize = 1_000;
/// How often the probes revoke (and, twice as often, ask `/healthz`).
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Targets of issue 13 and 14.
const REVOCATION_P99_TARGET: Duration = Duration::from_millis(100);
const HEALTHZ_P99_TARGET: Duration = Duration::from_millis(50);
const RSS_TARGET_MB: f64 = 512.0;

/// Which store a run uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    Sqlite,
    Postgres,
}

impl Store {
    fn label(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
        }
    }
}

/// What one feed run measured.
struct FeedResult {
    seed: Duration,
    polls_per_second: f64,
    p50: Duration,
    p99: Duration,
    not_modified_share: f64,
    deltas: u64,
    errors: u64,
    cpu_per_poll: Duration,
    snapshot_bytes: usize,
    snapshot_time: Duration,
    delta_bytes: usize,
    delta_time: Duration,
}

/// What one usage run measured.
struct UsageResult {
    batches_per_second: f64,
    entries_per_second: f64,
    decisions_per_second: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// Batches answered 503 (queue full) and sent again.
    busy: u64,
    cpu_per_batch: Duration,
    /// Revocations made during the run.
    revocations: Probe,
    /// How long the load was sustained.
    sustained: Duration,
    /// Detector runs that failed, from the service's last `usage ingestion:` line (a failed run is
    /// retried; one given up is logged as an error).
    detection_failures: Option<u64>,
    /// With `--usage-journal`: how long after the load the journal took to be folded empty (counted in
    /// the rate: a batch counts once it is stored and examined, not when it is answered).
    drain: Option<Duration>,
}

impl UsageResult {
    /// The store's label, with `+journal` for a run with `--usage-journal`.
    fn label(&self, store: Store) -> String {
        match self.drain {
            Some(_) => format!("{}+journal", store.label()),
            None => store.label().to_owned(),
        }
    }
}

/// What the abuse run measured.
struct AbuseResult {
    revocations: Probe,
    healthz: Probe,
    peak_rss_mb: f64,
    stored: u64,
    refused: u64,
    flood_errors: u64,
    logins: std::collections::BTreeMap<u16, u64>,
    login_errors: u64,
    slow_opened: u64,
    slow_cut: u64,
}

impl Store {
    /// Issue 14's target: batches of 200 entries per second.
    fn ingest_target(self) -> f64 {
        match self {
            Store::Sqlite => 200.0,
            Store::Postgres => 1_000.0,
        }
    }
}

/// Every scenario name, for `--only`.
pub fn scenarios() -> Vec<String> {
    [Store::Sqlite, Store::Postgres]
        .into_iter()
        .flat_map(|s| {
            [
                format!("admin-feed-{}", s.label()),
                format!("admin-usage-{}", s.label()),
                format!("admin-usage-journal-{}", s.label()),
                format!("admin-abuse-{}", s.label()),
            ]
        })
        .collect()
}

/// How long the usage scenario sustains its load: issue 14's minute, unless `--duration` says otherwise.
fn usage_duration(options: &Options) -> Duration {
    if std::env::args().any(|a| a == "--duration" || a.starts_with("--duration=")) {
        options.duration
    } else {
        USAGE_SUSTAINED
    }
}

/// Runs the admin scenarios whose names match `--only` and prints the table.
pub fn run(options: &Options) -> Result<()> {
    let wanted = |name: &str| options.matches(name);
    let plan: Vec<(Store, bool, bool, bool, bool)> = [Store::Sqlite, Store::Postgres]
        .into_iter()
        .map(|s| {
            (
                s,
                wanted(&format!("admin-feed-{}", s.label())),
                wanted(&format!("admin-usage-{}", s.label())),
                wanted(&format!("admin-usage-journal-{}", s.label())),
                wanted(&format!("admin-abuse-{}", s.label())),
            )
        })
        .filter(|(_, feed, usage, journal, abuse)| *feed || *usage || *journal || *abuse)
        .collect();
    if plan.is_empty() {
        println!("    no admin scenario matches --only; skipped");
        return Ok(());
    }
    // `EDGEWARDEN_BENCH_ADMIN_BIN` measures another build of the service (say, one from before a change)
    // with the same load; by default the current tree is built.
    let bin = match std::env::var_os("EDGEWARDEN_BENCH_ADMIN_BIN") {
        Some(bin) => {
            let bin = std::path::PathBuf::from(bin);
            if !bin.is_file() {
                bail!("EDGEWARDEN_BENCH_ADMIN_BIN={}: no such file", bin.display());
            }
            println!(
                "    measuring {} (EDGEWARDEN_BENCH_ADMIN_BIN)",
                bin.display()
            );
            bin
        }
        None => admin_api::build()?,
    };
    let load_before = load_average();
    let mut feed_rows = Vec::new();
    let mut usage_rows = Vec::new();
    let mut abuse_rows = Vec::new();
    let mut skipped = Vec::new();
    for (store, feed, usage, journal, abuse) in plan {
        let postgres = match store {
            Store::Sqlite => None,
            Store::Postgres => match postgres_server() {
                Ok(url) => Some(url),
                Err(e) => {
                    println!("    postgres scenarios skipped: {e}");
                    skipped.push(format!("postgres: {e}"));
                    continue;
                }
            },
        };
        util::step(&format!("admin bench on {}", store.label()));
        if feed || usage {
            let service = Service::start(&bin, store, postgres.as_deref(), &[])?;
            if feed {
                let r = bench_feed(&service, options.duration)?;
                feed_rows.push((store, r));
            }
            if usage {
                let r = bench_usage(&service, usage_duration(options), false)?;
                usage_rows.push((store, r));
            }
        }
        if journal {
            // A fresh service answering batches from the usage journal.
            let service = Service::start(&bin, store, postgres.as_deref(), &["--usage-journal"])?;
            let r = bench_usage(&service, usage_duration(options), true)?;
            usage_rows.push((store, r));
        }
        if abuse {
            // A fresh service: the abuse run must not inherit the other runs' data or connections.
            let service = Service::start(&bin, store, postgres.as_deref(), &[])?;
            let r = bench_abuse(&service, options.duration)?;
            abuse_rows.push((store, r));
        }
    }
    let load_after = load_average();
    let report = report(
        &feed_rows,
        &usage_rows,
        &abuse_rows,
        &load_before,
        &load_after,
        &skipped,
    );
    println!("\n{report}");
    let out = util::target_dir().join("bench/admin-results.json");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&results_json(&feed_rows, &usage_rows, &abuse_rows))?,
    )?;
    println!("    results written to {}", out.display());
    Ok(())
}

/// The PostgreSQL server to create the bench database on (`EDGEWARDEN_TEST_POSTGRES_URL` or the local default),
/// after checking that it answers and that `psql` is there (installed from apt when missing).
pub(super) fn postgres_server() -> Result<String> {
    let url = std::env::var("EDGEWARDEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| crate::test::DEFAULT_POSTGRES_URL.to_string());
    if !util::have("psql") {
        println!("    psql is missing; installing postgresql-client");
        install::apt_install(&["postgresql-client"])?;
    }
    psql(&url, "SELECT 1")
        .map_err(|e| util::Error::msg(format!("postgresql at {url} does not answer: {e}")))?;
    Ok(url)
}

/// Runs SQL through `psql` against `url`, stopping at the first error.
pub(super) fn psql(url: &str, sql: &str) -> Result<String> {
    util::output(Command::new("psql").args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ]))
}

/// `url` with its database name replaced by `db` (query parameters kept).
pub(super) fn with_database(url: &str, db: &str) -> Result<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("postgres url `{url}` has no scheme");
    };
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = main.split('/').next().unwrap_or_default();
    Ok(format!("{scheme}://{authority}/{db}{query}"))
}

/// A running `edgewarden-admin serve` on a fresh store, with an admin and an edge key; stopped and
/// cleaned up (data directory, PostgreSQL database) on drop.
struct Service {
    api: AdminApi,
    admin_key: String,
    edge_key: String,
    postgres: Option<(String, String)>,
    seed: Duration,
}

impl Service {
    fn start(bin: &Path, store: Store, server: Option<&str>, extra: &[&str]) -> Result<Service> {
        let dir = util::target_dir().join(format!(
            "bench/admin-{}-{}",
            store.label(),
            std::process::id()
        ));
        let mut setup = Setup::fresh(bin, dir)?;
        setup.master_key = Some(admin_api::BENCH_MASTER_KEY.to_string());
        // The ingestion pipeline's own per-stage timings (every 5 s), printed after a usage run.
        setup.log_level = "warn,edgewarden_admin::usage=info";
        let postgres = match server {
            Some(server) => {
                let name = format!("edgewarden_bench_{}_{}", std::process::id(), unix_now());
                psql(server, &format!("CREATE DATABASE {name}"))?;
                println!("    created database {name}");
                Some((server.to_string(), name))
            }
            None => None,
        };
        if let Some((server, name)) = &postgres {
            setup.database_url = Some(with_database(server, name)?);
        }
        // Creating the keys first also runs the migrations, so the seed below writes into the real schema.
        let admin_key = setup.create_api_key("admin", "bench-admin")?;
        let edge_key = setup.create_api_key("edge", "bench-edge")?;

        let started = Instant::now();
        seed(store, &setup.dir, setup.database_url.as_deref())?;
        let seed_time = started.elapsed();
        println!(
            "    seeded {REVOCATIONS} active jti revocations with one SQL statement in {seed_time:.1?}"
        );

        let addr = SocketAddr::from(([127, 0, 0, 1], util::free_port()?));
        let bound = MAX_CONNECTIONS.to_string();
        let mut args = vec!["--no-bootstrap-admin", "--max-connections", &bound];
        args.extend_from_slice(extra);
        let api = setup.serve(addr, &args)?;
        println!("    edgewarden-admin serving on {addr} (pid {})", api.pid());
        Ok(Service {
            api,
            admin_key,
            edge_key,
            postgres,
            seed: seed_time,
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // The service first: PostgreSQL refuses to drop a database with open connections.
        self.api.stop();
        if let Some((server, name)) = &self.postgres {
            drop_database(server, name);
        }
    }
}

/// Drops a bench database on `server` (its service stopped first: PostgreSQL refuses to drop a database
/// with open connections), saying whether it could.
pub(super) fn drop_database(server: &str, name: &str) {
    match psql(
        server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    ) {
        Ok(_) => println!("    dropped database {name}"),
        Err(e) => println!("    could not drop database {name}: {e}"),
    }
}

/// Inserts the revocation rows and moves the feed cursor past them in one transaction, as the service
/// itself would after that many `POST /api/v1/revocations` (same columns, one cursor step per entry).
/// Jti revocations through the API need an issued token each, so seeding by API would mean 200,000 calls;
/// the rows are what the feed reads, so SQL gives the same feed in about a second.
fn seed(store: Store, dir: &Path, database_url: Option<&str>) -> Result<()> {
    let now = unix_now();
    let expires = now + 3600;
    match store {
        Store::Sqlite => {
            if !util::have("sqlite3") {
                println!("    sqlite3 is missing; installing it");
                install::apt_install(&["sqlite3"])?;
            }
            let sql = format!(
                "BEGIN; \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {REVOCATIONS}) \
                 INSERT INTO revocations (kind, value, seq, reason, actor, revoked_at, expires_at) \
                 SELECT 'jti', printf('bench%017d', i), i, 'bench', 'bench', {now}, {expires} FROM n; \
                 UPDATE feed_state SET current_cursor = {REVOCATIONS} WHERE id = 1; COMMIT;"
            );
            util::output(
                Command::new("sqlite3")
                    .arg(dir.join("edgewarden.db"))
                    .arg(sql),
            )?;
        }
        Store::Postgres => {
            let Some(url) = database_url else {
                bail!("postgres seed without a database url");
            };
            let sql = format!(
                "BEGIN; \
                 INSERT INTO revocations (kind, value, seq, reason, actor, revoked_at, expires_at) \
                 SELECT 'jti', 'bench' || lpad(i::text, 17, '0'), i, 'bench', 'bench', {now}, {expires} \
                 FROM generate_series(1, {REVOCATIONS}) AS i; \
                 UPDATE feed_state SET current_cursor = {REVOCATIONS} WHERE id = 1; COMMIT; ANALYZE revocations;"
            );
            psql(url, &sql)?;
        }
    }
    Ok(())
}

/// The feed cursor of a 200 feed answer.
fn feed_cursor(body: &[u8]) -> Result<i64> {
    let v: Value = serde_json::from_slice(body)?;
    v["cursor"]
        .as_i64()
        .ok_or_else(|| util::Error::msg("feed answer without an integer cursor"))
}

/// One polling edge: its name, the cursor it holds and the `ETag` of its last 200.
struct Edge {
    name: String,
    cursor: i64,
    etag: String,
}

/// What one polling or posting thread counted in the measured window.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    not_modified: u64,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    entries: u64,
    decisions: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.not_modified += other.not_modified;
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.entries += other.entries;
        self.decisions += other.decisions;
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }
}

/// Median time and size of fetching `path` a few times.
fn fetch_cost(service: &Service, path: &str) -> Result<(usize, Duration)> {
    let mut conn = Conn::open(service.api.addr)?;
    let auth = format!("Bearer {}", service.edge_key);
    let request = get_request(
        service.api.addr,
        path,
        &[
            ("authorization", &auth),
            ("x-edgewarden-edge", "bench-probe"),
        ],
    );
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let reply = conn.exchange(&request)?;
        times.push(started.elapsed());
        if reply.status != 200 {
            bail!(
                "GET {path} answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
        bytes = reply.body.len();
    }
    times.sort();
    Ok((bytes, times[1]))
}

/// 1,000 edges poll with `If-None-Match` while a few subject revocations land.
fn bench_feed(service: &Service, duration: Duration) -> Result<FeedResult> {
    let (snapshot_bytes, snapshot_time) = fetch_cost(service, "/api/v1/revocations/feed?since=0")?;
    println!(
        "    full snapshot: {snapshot_bytes} bytes in {:.1} ms",
        ms(snapshot_time)
    );
    let start_cursor = REVOCATIONS;
    let tag = format!("\"c{start_cursor}\"");
    let measure_from = Instant::now() + FEED_WARMUP;
    let deadline = measure_from + duration;
    let cpu_at = |pid: u32| process_cpu(pid);
    let pid = service.api.pid();

    let mut handles = Vec::new();
    for worker in 0..FEED_CONNECTIONS {
        // Edges start in sync, as after their first snapshot; each holds its own cursor and tag from then on.
        let mut edges: Vec<Edge> = (0..FEED_EDGES)
            .skip(worker)
            .step_by(FEED_CONNECTIONS)
            .map(|i| Edge {
                name: format!("bench-edge-{i:04}"),
                cursor: start_cursor,
                etag: tag.clone(),
            })
            .collect();
        let addr = service.api.addr;
        let auth = format!("Bearer {}", service.edge_key);
        handles.push(std::thread::spawn(move || -> Result<Tally> {
            let mut conn = Conn::open(addr)?;
            let mut tally = Tally {
                latencies: Vec::with_capacity(200_000),
                ..Tally::default()
            };
            'run: loop {
                for edge in &mut edges {
                    let request = get_request(
                        addr,
                        &format!("/api/v1/revocations/feed?since={}", edge.cursor),
                        &[
                            ("authorization", &auth),
                            ("x-edgewarden-edge", &edge.name),
                            ("if-none-match", &edge.etag),
                        ],
                    );
                    let started = Instant::now();
                    let reply = conn.exchange(&request)?;
                    let done = Instant::now();
                    if done >= deadline {
                        break 'run;
                    }
                    let measured = started >= measure_from;
                    match reply.status {
                        304 => {
                            if measured {
                                tally.not_modified += 1;
                            }
                        }
                        200 => {
                            edge.cursor = feed_cursor(&reply.body)?;
                            if let Some(t) = reply.etag {
                                edge.etag = t;
                            }
                            if measured {
                                tally.ok += 1;
                            }
                        }
                        other => {
                            if measured {
                                tally.error(format!(
                                    "feed poll answered {other}: {}",
                                    String::from_utf8_lossy(&reply.body)
                                ));
                            }
                        }
                    }
                    if measured {
                        tally.latencies.push(done - started);
                    }
                }
            }
            Ok(tally)
        }));
    }

    // A few revocations while the edges poll: each one reaches every edge as a small 200 delta.
    let mut admin = Conn::open(service.api.addr)?;
    while Instant::now() < measure_from {
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu_before = cpu_at(pid)?;
    let gap = duration / (REVOCATIONS_DURING_RUN as u32 + 1);
    for i in 0..REVOCATIONS_DURING_RUN {
        std::thread::sleep(gap);
        let body = json!({"subject": format!("bench-subject-{i}"), "reason": "bench"}).to_string();
        let reply = admin.exchange(&post_request(
            service.api.addr,
            "/api/v1/revocations",
            &service.admin_key,
            &body,
        ))?;
        if reply.status != 201 {
            bail!(
                "POST /api/v1/revocations answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
    let mut tally = Tally::default();
    for h in handles {
        match h.join() {
            Ok(t) => tally.merge(t?),
            Err(_) => bail!("a feed polling thread panicked"),
        }
    }
    let cpu = cpu_at(pid)?.saturating_sub(cpu_before);
    if let Some(e) = &tally.first_error {
        println!("    {} failed polls; first: {e}", tally.errors);
    }
    let polls = tally.not_modified + tally.ok + tally.errors;
    if polls == 0 || tally.not_modified == 0 {
        bail!("no successful feed poll in {duration:?}");
    }
    tally.latencies.sort();
    let (delta_bytes, delta_time) = fetch_cost(
        service,
        &format!("/api/v1/revocations/feed?since={start_cursor}"),
    )?;
    let result = FeedResult {
        seed: service.seed,
        polls_per_second: polls as f64 / duration.as_secs_f64(),
        p50: quantile(&tally.latencies, 0.5),
        p99: quantile(&tally.latencies, 0.99),
        not_modified_share: tally.not_modified as f64 / polls as f64,
        deltas: tally.ok,
        errors: tally.errors,
        cpu_per_poll: cpu / polls as u32,
        snapshot_bytes,
        snapshot_time,
        delta_bytes,
        delta_time,
    };
    println!(
        "    {polls} polls from {FEED_EDGES} edges in {duration:?}: {:.0}/s, {:.1}% 304, {} deltas, p50 {:.2} ms, p99 {:.2} ms",
        result.polls_per_second,
        result.not_modified_share * 100.0,
        result.deltas,
        ms(result.p50),
        ms(result.p99)
    );
    Ok(result)
}

/// A small xorshift generator: reproducible batches without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One edge's usage batch in the documented shape: mostly `allowed` counts over a shared pool of tokens,
/// subjects, clients and routes, some refusals, and failure samples from a range of client addresses.
/// Returns the JSON body, its count entries and the decisions they sum to.
fn usage_batch(edge: usize, now: i64, rng: &mut Rng) -> (String, u64, u64) {
    sized_usage_batch(
        &format!("bench-usage-edge-{edge:02}"),
        edge,
        now,
        rng,
        COUNTS_PER_BATCH,
        FAILURES_PER_BATCH,
    )
}

/// [`usage_batch`] with `counts` count entries and `failures` failure samples, from the edge `name`.
fn sized_usage_batch(
    name: &str,
    edge: usize,
    now: i64,
    rng: &mut Rng,
    counts: usize,
    failures: usize,
) -> (String, u64, u64) {
    const ROUTES: [&str; 8] = [
        "/api/orders",
        "/api/orders/{id}",
        "/api/invoices",
        "/api/customers",
        "/api/customers/{id}",
        "/api/reports",
        "/healthz",
        "/api/search",
    ];
    const REFUSALS: [&str; 5] = [
        "expired",
        "insufficient_scope",
        "bad_signature",
        "revoked",
        "wrong_audience",
    ];
    let mut decisions = 0;
    let entries = counts;
    let counts: Vec<Value> = (0..counts)
        .map(|i| {
            let token = rng.below(5_000);
            let reason = if rng.below(10) == 0 {
                REFUSALS[rng.below(REFUSALS.len() as u64) as usize]
            } else {
                "allowed"
            };
            let count = 1 + rng.below(100);
            decisions += count;
            // The first entry's jti is the slot `Template::stamp` numbers each send with.
            let jti = if i == 0 {
                SEQ_SLOT.to_string()
            } else {
                format!("benchtok{token:014}")
            };
            json!({
                "jti": jti,
                "subject": format!("user-{}", token % 500),
                "client_id": format!("client-{}", token % 50),
                "route": ROUTES[rng.below(ROUTES.len() as u64) as usize],
                "reason": reason,
                "count": count,
                "addresses": [format!("10.{}.{}.{}", token % 7, token % 251, 1 + edge % 250)],
            })
        })
        .collect();
    let failures: Vec<Value> = (0..failures)
        .map(|_| {
            let token = rng.below(5_000);
            let at = now - rng.below(10) as i64;
            json!({
                "jti": format!("benchtok{token:014}"),
                "subject": format!("user-{}", token % 500),
                "client_id": format!("client-{}", token % 50),
                "route": ROUTES[rng.below(ROUTES.len() as u64) as usize],
                "reason": REFUSALS[rng.below(REFUSALS.len() as u64) as usize],
                "client_address": format!("192.0.2.{}", 1 + rng.below(200)),
                "at": at,
                "iat": at - 600,
            })
        })
        .collect();
    let body = json!({
        "edge": name,
        "interval_start": now - 10,
        "interval_end": now,
        "dropped": 0,
        "counts": counts,
        "failures": failures,
    });
    (body.to_string(), entries as u64, decisions)
}

/// The jti of a batch's first count entry, which `Template::stamp` replaces with a sequence number of
/// the same width.
const SEQ_SLOT: &str = "benchseq000000000000";

/// Sends so far, across every posting thread: the sequence numbers of the batches.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A prebuilt usage request whose body carries a sequence number (in its first count entry's jti),
/// so every send is a distinct batch, as a real edge's successive reports are.
struct Template {
    bytes: Vec<u8>,
    slot: usize,
}

impl Template {
    fn new(request: Vec<u8>) -> Template {
        let slot = request
            .windows(SEQ_SLOT.len())
            .position(|w| w == SEQ_SLOT.as_bytes())
            .map_or(0, |at| at + "benchseq".len());
        Template {
            bytes: request,
            slot,
        }
    }

    /// The request with the next sequence number in its slot.
    fn stamp(&self) -> Vec<u8> {
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let digits = format!("{n:012}");
        let mut bytes = self.bytes.clone();
        if self.slot > 0 {
            bytes[self.slot..self.slot + 12]
                .copy_from_slice(&digits.as_bytes()[digits.len() - 12..]);
        }
        bytes
    }
}

/// Latencies and failures of one kind of probe request, shared with the thread that prints while a run goes.
#[derive(Default, Clone)]
struct Probe {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Probe {
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        quantile(&sorted, q)
    }
}

/// Sends `request` on `conn`, opening (or, once, reopening) the connection as needed: a connection the
/// service closed at its bound is not a failed request, but the time to reconnect is counted.
fn exchange_reconnecting(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    request: &[u8],
) -> Result<crate::http::Reply> {
    let mut last = None;
    for _ in 0..2 {
        if conn.is_none() {
            match Conn::open(addr) {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.exchange(request) {
            Ok(reply) => return Ok(reply),
            Err(e) => {
                *conn = None;
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| util::Error::msg("no connection")))
}

/// Starts a thread that sends a request every `every` until `stop`, recording into `probe`: a revocation
/// of a fresh subject (`revoke`) answered 201, or `GET /healthz` answered 200.
fn spawn_probe(
    service: &Service,
    revoke: bool,
    every: Duration,
    stop: Arc<AtomicBool>,
    probe: Arc<Mutex<Probe>>,
) -> std::thread::JoinHandle<()> {
    let addr = service.api.addr;
    let key = service.admin_key.clone();
    std::thread::spawn(move || {
        let mut conn = None;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let (request, want) = if revoke {
                let body = json!({"subject": format!("bench-probe-{}-{n}", unix_now()), "reason": "bench probe"});
                (
                    post_request(addr, "/api/v1/revocations", &key, &body.to_string()),
                    201,
                )
            } else {
                (get_request(addr, "/healthz", &[]), 200)
            };
            let started = Instant::now();
            let result = exchange_reconnecting(&mut conn, addr, &request);
            let took = started.elapsed();
            let mut p = probe.lock().unwrap_or_else(|e| e.into_inner());
            p.latencies.push(took);
            match result {
                Ok(reply) if reply.status == want => {}
                Ok(reply) => {
                    p.errors += 1;
                    p.first_error.get_or_insert(format!(
                        "answered {}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    ));
                }
                Err(e) => {
                    p.errors += 1;
                    p.first_error.get_or_insert(e.to_string());
                }
            }
            drop(p);
            if let Some(rest) = every.checked_sub(took) {
                std::thread::sleep(rest);
            }
        }
    })
}

/// The service's resident memory in MB, from `/proc/<pid>/status`.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// 50 edges post usage batches over 32 connections as fast as the service accepts them (a 503 is sent
/// again after 50 ms), while a subject is revoked every 50 ms.
fn bench_usage(service: &Service, duration: Duration, journal: bool) -> Result<UsageResult> {
    let now = unix_now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Built up front so the load generator spends its CPU on sending, not on JSON.
    let batches: Vec<(Template, u64, u64)> = (0..USAGE_EDGES)
        .map(|edge| {
            let (body, entries, decisions) = usage_batch(edge, now, &mut rng);
            (
                Template::new(post_request(
                    service.api.addr,
                    "/api/v1/usage",
                    &service.edge_key,
                    &body,
                )),
                entries,
                decisions,
            )
        })
        .collect();
    let batches = Arc::new(batches);
    let bytes = batches[0].0.bytes.len();
    let pid = service.api.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let revocations = Arc::new(Mutex::new(Probe::default()));
    let prober = spawn_probe(
        service,
        true,
        PROBE_EVERY,
        stop.clone(),
        revocations.clone(),
    );
    let busy = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu(pid)?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for worker in 0..USAGE_CONNECTIONS {
        let batches = batches.clone();
        let addr = service.api.addr;
        let busy = busy.clone();
        handles.push(std::thread::spawn(move || -> Result<Tally> {
            let mut conn = Conn::open(addr)?;
            let mut tally = Tally::default();
            let mut i = worker;
            while Instant::now() < deadline {
                let (template, entries, decisions) = &batches[i % batches.len()];
                i += USAGE_CONNECTIONS;
                let request = template.stamp();
                let sent = Instant::now();
                let reply = conn.exchange(&request)?;
                match reply.status {
                    202 => {
                        tally.latencies.push(sent.elapsed());
                        tally.ok += 1;
                        tally.entries += entries;
                        tally.decisions += decisions;
                    }
                    503 => {
                        busy.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => tally.error(format!(
                        "usage batch answered {other}: {}",
                        String::from_utf8_lossy(&reply.body)
                    )),
                }
            }
            Ok(tally)
        }));
    }
    let mut tally = Tally::default();
    for h in handles {
        match h.join() {
            Ok(t) => tally.merge(t?),
            Err(_) => bail!("a usage posting thread panicked"),
        }
    }
    let loaded = started.elapsed();
    // With the journal, a batch answered 202 may still wait to be stored: the run ends when none does,
    // and the revocations keep being timed until then.
    let drain = if journal {
        let drained = Instant::now();
        wait_for_empty_journal(service)?;
        Some(drained.elapsed())
    } else {
        None
    };
    let elapsed = started.elapsed();
    let cpu = process_cpu(pid)?.saturating_sub(cpu_before);
    stop.store(true, Ordering::Relaxed);
    let _ = prober.join();
    if let Some(e) = &tally.first_error {
        println!("    {} failed batches; first: {e}", tally.errors);
    }
    if tally.ok == 0 {
        bail!("no usage batch was accepted in {duration:?}");
    }
    tally.latencies.sort();
    let secs = elapsed.as_secs_f64();
    let revocations = revocations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(e) = &revocations.first_error {
        println!("    {} failed revocations; first: {e}", revocations.errors);
    }
    let result = UsageResult {
        batches_per_second: tally.ok as f64 / secs,
        entries_per_second: tally.entries as f64 / secs,
        decisions_per_second: tally.decisions as f64 / secs,
        p50: quantile(&tally.latencies, 0.5),
        p99: quantile(&tally.latencies, 0.99),
        errors: tally.errors,
        busy: busy.load(Ordering::Relaxed),
        cpu_per_batch: cpu / tally.ok as u32,
        revocations,
        sustained: loaded,
        detection_failures: print_stage_timings(service),
        drain,
    };
    if let Some(drain) = drain {
        println!(
            "    the journal was empty {drain:.1?} after the load stopped (counted in the rate)"
        );
    }
    println!(
        "    {} batches ({bytes} bytes, {COUNTS_PER_BATCH} counts + {FAILURES_PER_BATCH} failures each) from {USAGE_EDGES} edges in {elapsed:.1?}: {:.0} batches/s, {:.0} count entries/s, {} answered 503; revocation p99 {:.1} ms",
        tally.ok,
        result.batches_per_second,
        result.entries_per_second,
        result.busy,
        ms(result.revocations.quantile(0.99))
    );
    Ok(result)
}

/// Waits until the service's usage journal is empty (`edgewarden_usage_journal_batches 0` in /metrics), at
/// most two minutes.
fn wait_for_empty_journal(service: &Service) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let request = get_request(
        service.api.addr,
        "/metrics",
        &[("authorization", &format!("Bearer {}", service.admin_key))],
    );
    let mut conn = None;
    loop {
        let reply = exchange_reconnecting(&mut conn, service.api.addr, &request)?;
        let body = String::from_utf8_lossy(&reply.body);
        let waiting = body
            .lines()
            .find_map(|l| l.strip_prefix("edgewarden_usage_journal_batches "))
            .and_then(|n| n.trim().parse::<u64>().ok());
        match waiting {
            Some(0) => return Ok(()),
            Some(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Some(n) => {
                bail!("the usage journal still held {n} batches two minutes after the load stopped")
            }
            None => bail!(
                "/metrics answered {} without edgewarden_usage_journal_batches",
                reply.status
            ),
        }
    }
}

/// Prints the last per-stage timing lines the service logged (`usage ingestion: ...`): where a batch's
/// time went inside the service. Returns the detection failures the last line counts.
fn print_stage_timings(service: &Service) -> Option<u64> {
    let log = std::fs::read_to_string(&service.api.log).ok()?;
    let lines: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("usage ingestion: ").map(|(_, rest)| rest))
        .collect();
    for line in lines.iter().rev().take(3).rev() {
        println!("    service: {line}");
    }
    let last = lines.last()?;
    let (before, _) = last.split_once(" detection failures")?;
    before.rsplit(' ').next()?.parse().ok()
}

/// Keeps `SLOW_CLIENTS` connections sending a request header one byte every half second (reopening the
/// ones the service cuts) until `stop`; returns (opened, cut).
fn slow_clients(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    const HEADER: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: bench\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut clients: Vec<(TcpStream, usize)> = Vec::with_capacity(SLOW_CLIENTS);
    let (mut opened, mut cut) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        while clients.len() < SLOW_CLIENTS && !stop.load(Ordering::Relaxed) {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => {
                    let _ = s.set_nonblocking(true);
                    clients.push((s, 0));
                    opened += 1;
                }
                Err(_) => break,
            }
        }
        clients.retain_mut(|(s, sent)| {
            let byte = [HEADER[*sent % HEADER.len()]];
            match s.write(&byte) {
                Ok(_) => {
                    *sent += 1;
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                Err(_) => {
                    cut += 1;
                    false
                }
            }
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    (opened, cut)
}

/// Slow clients past the connection bound, 100 clients looping wrong-password logins and 8 connections
/// posting batches at the documented limits, all at once, while a revocation is made every 50 ms and
/// `/healthz` asked every 25 ms; prints the figures every second and returns them.
fn bench_abuse(service: &Service, duration: Duration) -> Result<AbuseResult> {
    let addr = service.api.addr;
    let pid = service.api.pid();
    let now = unix_now();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let floods: Vec<Template> = (0..FLOOD_CONNECTIONS)
        .map(|i| {
            let (body, _, _) = sized_usage_batch(
                &format!("bench-flood-edge-{i}"),
                i,
                now,
                &mut rng,
                FLOOD_COUNTS,
                FLOOD_FAILURES,
            );
            Template::new(post_request(
                addr,
                "/api/v1/usage",
                &service.edge_key,
                &body,
            ))
        })
        .collect();
    println!(
        "    abuse: {SLOW_CLIENTS} slow clients (bound {MAX_CONNECTIONS}), {LOGIN_CLIENTS} clients looping wrong logins, {FLOOD_CONNECTIONS} connections posting {FLOOD_COUNTS}-count batches ({} bytes)",
        floods[0].bytes.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let revocations = Arc::new(Mutex::new(Probe::default()));
    let healthz = Arc::new(Mutex::new(Probe::default()));
    let mut probes = vec![
        spawn_probe(
            service,
            true,
            PROBE_EVERY,
            stop.clone(),
            revocations.clone(),
        ),
        spawn_probe(
            service,
            false,
            PROBE_EVERY / 2,
            stop.clone(),
            healthz.clone(),
        ),
    ];
    let slow = {
        let stop = stop.clone();
        std::thread::spawn(move || slow_clients(addr, stop))
    };
    let stored = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let flood_errors = Arc::new(AtomicU64::new(0));
    for template in floods {
        let (stop, stored, refused, errors) = (
            stop.clone(),
            stored.clone(),
            refused.clone(),
            flood_errors.clone(),
        );
        probes.push(std::thread::spawn(move || {
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                let request = template.stamp();
                match exchange_reconnecting(&mut conn, addr, &request) {
                    Ok(r) if r.status == 202 => {
                        stored.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status == 503 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        // An attacker would not wait; a short pause keeps this thread from spinning.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }));
    }
    let logins = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let login_errors = Arc::new(AtomicU64::new(0));
    for i in 0..LOGIN_CLIENTS {
        let (stop, logins, errors) = (stop.clone(), logins.clone(), login_errors.clone());
        probes.push(std::thread::spawn(move || {
            let body = json!({"username": "admin", "password": format!("wrong-password-{i}")}).to_string();
            let request = format!(
                "POST /api/v1/session HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes();
            let mut conn = None;
            while !stop.load(Ordering::Relaxed) {
                match exchange_reconnecting(&mut conn, addr, &request) {
                    Ok(r) => {
                        *logins
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(r.status)
                            .or_default() += 1;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    let started = Instant::now();
    let mut peak_rss: f64 = 0.0;
    let mut next_print = started + Duration::from_secs(1);
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(200));
        peak_rss = peak_rss.max(rss_mb(pid));
        if Instant::now() >= next_print {
            next_print += Duration::from_secs(1);
            let r = revocations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let h = healthz.lock().unwrap_or_else(|e| e.into_inner()).clone();
            println!(
                "    {:>3.0}s: revocations {} (failed {}) p50 {:.1} ms p99 {:.1} ms; healthz p99 {:.1} ms (failed {}); rss {:.0} MB (peak {:.0}); usage stored {} refused {} failed {}",
                started.elapsed().as_secs_f64(),
                r.latencies.len(),
                r.errors,
                ms(r.quantile(0.5)),
                ms(r.quantile(0.99)),
                ms(h.quantile(0.99)),
                h.errors,
                rss_mb(pid),
                peak_rss,
                stored.load(Ordering::Relaxed),
                refused.load(Ordering::Relaxed),
                flood_errors.load(Ordering::Relaxed),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for p in probes {
        let _ = p.join();
    }
    let (slow_opened, slow_cut) = slow.join().unwrap_or((0, 0));
    peak_rss = peak_rss.max(rss_mb(pid));
    let revocations = revocations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let healthz = healthz.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (what, p) in [("revocation", &revocations), ("healthz", &healthz)] {
        if let Some(e) = &p.first_error {
            println!("    {} failed {what} probes; first: {e}", p.errors);
        }
    }
    let logins = logins.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(AbuseResult {
        revocations,
        healthz,
        peak_rss_mb: peak_rss,
        stored: stored.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        flood_errors: flood_errors.load(Ordering::Relaxed),
        logins,
        login_errors: login_errors.load(Ordering::Relaxed),
        slow_opened,
        slow_cut,
    })
}

/// "ok" or "MISSED", beside a target.
fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The 1-minute load average, so a reader can judge how busy the shared machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// The two tables.
fn report(
    feed: &[(Store, FeedResult)],
    usage: &[(Store, UsageResult)],
    abuse: &[(Store, AbuseResult)],
    load_before: &str,
    load_after: &str,
    skipped: &[String],
) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "admin API ({REVOCATIONS} active revocations; service and load generator share {cores} cores; load average {load_before} before, {load_after} after)"
    );
    if !feed.is_empty() {
        let _ = writeln!(
            out,
            "\nfeed: {FEED_EDGES} edges over {FEED_CONNECTIONS} keep-alive connections, If-None-Match, {REVOCATIONS_DURING_RUN} revocations during the run"
        );
        let _ = writeln!(
            out,
            "{:<9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>8} {:>10} {:>22} {:>18} {:>8}",
            "store",
            "polls/s",
            "p50 ms",
            "p99 ms",
            "304 %",
            "deltas",
            "errors",
            "cpu/poll",
            "full snapshot",
            "delta (5 entries)",
            "seed"
        );
        for (store, r) in feed {
            let _ = writeln!(
                out,
                "{:<9} {:>9.0} {:>8.2} {:>8.2} {:>7.1} {:>7} {:>8} {:>8.0}us {:>22} {:>18} {:>7.1}s",
                store.label(),
                r.polls_per_second,
                ms(r.p50),
                ms(r.p99),
                r.not_modified_share * 100.0,
                r.deltas,
                r.errors,
                r.cpu_per_poll.as_secs_f64() * 1e6,
                format!("{} B, {:.0} ms", r.snapshot_bytes, ms(r.snapshot_time)),
                format!("{} B, {:.1} ms", r.delta_bytes, ms(r.delta_time)),
                r.seed.as_secs_f64(),
            );
        }
    }
    if !usage.is_empty() {
        let _ = writeln!(
            out,
            "\nusage: {USAGE_EDGES} edges over {USAGE_CONNECTIONS} keep-alive connections, {COUNTS_PER_BATCH} count entries + {FAILURES_PER_BATCH} failure samples per batch, a revocation every {} ms",
            PROBE_EVERY.as_millis()
        );
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>17} {:>14} {:>13} {:>8} {:>8} {:>7} {:>7} {:>11} {:>22}",
            "store",
            "batches/s",
            "target",
            "count entries/s",
            "decisions/s",
            "p50 ms",
            "p99 ms",
            "503s",
            "errors",
            "cpu/batch",
            "revocation p99 (<100)"
        );
        for (store, r) in usage {
            let target = store.ingest_target();
            let revocation_p99 = r.revocations.quantile(0.99);
            let _ = writeln!(
                out,
                "{:<16} {:>10.1} {:>17} {:>14.0} {:>13.0} {:>8.1} {:>8.1} {:>7} {:>7} {:>9.1}ms {:>22}",
                r.label(*store),
                r.batches_per_second,
                format!(">= {target:.0} {}", verdict(r.batches_per_second >= target)),
                r.entries_per_second,
                r.decisions_per_second,
                ms(r.p50),
                ms(r.p99),
                r.busy,
                r.errors,
                ms(r.cpu_per_batch),
                format!(
                    "{:.1} ms, {} failed {}",
                    ms(revocation_p99),
                    r.revocations.errors,
                    verdict(revocation_p99 < REVOCATION_P99_TARGET && r.revocations.errors == 0)
                ),
            );
        }
    }
    for (store, r) in usage {
        // Every issue-14 figure beside its target; the ones this run cannot measure name the test or
        // suite that does.
        let p99 = r.revocations.quantile(0.99);
        let _ = writeln!(out, "issue 14 on {}:", r.label(*store));
        let rows = [
            (
                "batches of 200 entries/s",
                format!("{:.1}", r.batches_per_second),
                format!(">= {:.0}", store.ingest_target()),
                verdict(r.batches_per_second >= store.ingest_target()),
            ),
            (
                "sustained",
                format!("{:.0} s", r.sustained.as_secs_f64()),
                format!(">= {} s", USAGE_SUSTAINED.as_secs()),
                verdict(r.sustained >= USAGE_SUSTAINED),
            ),
            (
                "revocation p99 throughout",
                format!("{:.1} ms ({} failed)", ms(p99), r.revocations.errors),
                format!("< {} ms", REVOCATION_P99_TARGET.as_millis()),
                verdict(p99 < REVOCATION_P99_TARGET && r.revocations.errors == 0),
            ),
            (
                "detection failures",
                r.detection_failures
                    .map_or("unknown".to_owned(), |n| n.to_string()),
                "0 (every batch detected)".to_owned(),
                verdict(r.detection_failures == Some(0)),
            ),
            (
                "2xx means stored",
                "tests/durability.rs (SIGKILL)".to_owned(),
                if r.drain.is_some() {
                    "answered after the journal's commit".to_owned()
                } else {
                    "answered after commit".to_owned()
                },
                "",
            ),
            (
                "pages read rollups",
                "bench --suite dashboard".to_owned(),
                "usage_hourly".to_owned(),
                "",
            ),
        ];
        for (what, measured, target, ok) in rows {
            let _ = writeln!(out, "  {what:<28} {measured:>30} {target:>26} {ok}");
        }
    }
    for (store, r) in abuse {
        let _ = writeln!(
            out,
            "\nabuse ({}): {SLOW_CLIENTS} slow clients at a bound of {MAX_CONNECTIONS} ({} opened, {} cut by the service), {LOGIN_CLIENTS} clients looping wrong logins, {FLOOD_CONNECTIONS} connections flooding {FLOOD_COUNTS}-count batches",
            store.label(),
            r.slow_opened,
            r.slow_cut
        );
        let _ = writeln!(
            out,
            "{:<24} {:>14} {:>12} {:>7}",
            "", "measured", "target", ""
        );
        let rev_p99 = r.revocations.quantile(0.99);
        let health_p99 = r.healthz.quantile(0.99);
        let rows = [
            (
                "revocations failed",
                format!(
                    "{} of {}",
                    r.revocations.errors,
                    r.revocations.latencies.len()
                ),
                "0".to_string(),
                r.revocations.errors == 0 && !r.revocations.latencies.is_empty(),
            ),
            (
                "revocation p50",
                format!("{:.1} ms", ms(r.revocations.quantile(0.5))),
                String::new(),
                true,
            ),
            (
                "revocation p99",
                format!("{:.1} ms", ms(rev_p99)),
                "< 100 ms".to_string(),
                rev_p99 < REVOCATION_P99_TARGET,
            ),
            (
                "/healthz p99",
                format!("{:.1} ms", ms(health_p99)),
                "< 50 ms".to_string(),
                health_p99 < HEALTHZ_P99_TARGET,
            ),
            (
                "/healthz failed",
                format!("{} of {}", r.healthz.errors, r.healthz.latencies.len()),
                "0".to_string(),
                r.healthz.errors == 0,
            ),
            (
                "peak memory (RSS)",
                format!("{:.0} MB", r.peak_rss_mb),
                "< 512 MB".to_string(),
                r.peak_rss_mb < RSS_TARGET_MB,
            ),
        ];
        for (name, measured, target, ok) in rows {
            let mark = if target.is_empty() { "" } else { verdict(ok) };
            let _ = writeln!(out, "{name:<24} {measured:>14} {target:>12} {mark:>7}");
        }
        let logins: Vec<String> = r
            .logins
            .iter()
            .map(|(status, n)| format!("{n}x {status}"))
            .collect();
        let _ = writeln!(
            out,
            "usage flood: {} batches stored, {} refused with 503, {} failed; logins: {} ({} connection errors)",
            r.stored,
            r.refused,
            r.flood_errors,
            logins.join(", "),
            r.login_errors
        );
    }
    let _ = writeln!(
        out,
        "\ncpu/poll and cpu/batch are the service's own CPU (PostgreSQL's is not included)"
    );
    for s in skipped {
        let _ = writeln!(out, "skipped: {s}");
    }
    out
}

fn results_json(
    feed: &[(Store, FeedResult)],
    usage: &[(Store, UsageResult)],
    abuse: &[(Store, AbuseResult)],
) -> Value {
    let mut out = serde_json::Map::new();
    for (store, r) in feed {
        out.insert(
            format!("admin-feed-{}", store.label()),
            json!({
                "polls_per_second": r.polls_per_second,
                "p50_ms": ms(r.p50),
                "p99_ms": ms(r.p99),
                "not_modified_share": r.not_modified_share,
                "deltas": r.deltas,
                "errors": r.errors,
                "cpu_per_poll_us": r.cpu_per_poll.as_secs_f64() * 1e6,
                "snapshot_bytes": r.snapshot_bytes,
                "snapshot_ms": ms(r.snapshot_time),
                "delta_bytes": r.delta_bytes,
                "delta_ms": ms(r.delta_time),
            }),
        );
    }
    for (store, r) in usage {
        out.insert(
            format!(
                "admin-usage-{}",
                r.label(*store).replace("+journal", "-journal")
            ),
            json!({
                "batches_per_second": r.batches_per_second,
                "count_entries_per_second": r.entries_per_second,
                "decisions_per_second": r.decisions_per_second,
                "p50_ms": ms(r.p50),
                "p99_ms": ms(r.p99),
                "errors": r.errors,
                "busy_503": r.busy,
                "cpu_per_batch_ms": ms(r.cpu_per_batch),
                "target_batches_per_second": store.ingest_target(),
                "revocation_p50_ms": ms(r.revocations.quantile(0.5)),
                "revocation_p99_ms": ms(r.revocations.quantile(0.99)),
                "revocation_errors": r.revocations.errors,
                "journal_drain_ms": r.drain.map(ms),
            }),
        );
    }
    for (store, r) in abuse {
        out.insert(
            format!("admin-abuse-{}", store.label()),
            json!({
                "revocations": r.revocations.latencies.len(),
                "revocation_errors": r.revocations.errors,
                "revocation_p50_ms": ms(r.revocations.quantile(0.5)),
                "revocation_p99_ms": ms(r.revocations.quantile(0.99)),
                "healthz_p99_ms": ms(r.healthz.quantile(0.99)),
                "healthz_errors": r.healthz.errors,
                "peak_rss_mb": r.peak_rss_mb,
                "usage_stored": r.stored,
                "usage_refused_503": r.refused,
                "usage_failed": r.flood_errors,
                "logins": r.logins.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            }),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced_in_postgres_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@db/x?sslmode=disable", "b").unwrap(),
            "postgres://u:p@db/b?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://db", "b").unwrap(),
            "postgresql://db/b"
        );
        assert!(with_database("db:5432", "b").is_err());
    }

    #[test]
    fn usage_batches_have_the_documented_shape_and_sums() {
        let (body, entries, decisions) = usage_batch(3, 1_767_000_000, &mut Rng(7));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["edge"], "bench-usage-edge-03");
        let counts = v["counts"].as_array().unwrap();
        assert_eq!((counts.len() as u64, entries), (200, 200));
        let sum: u64 = counts.iter().map(|c| c["count"].as_u64().unwrap()).sum();
        assert_eq!(sum, decisions);
        assert_eq!(v["failures"].as_array().unwrap().len(), 20);
        assert!(v["failures"][0]["client_address"].is_string());
    }
}
