//! The dashboard benchmark: every API call a dashboard page makes, against the real `edgewarden-admin serve`
//! (release build) on SQLite and on PostgreSQL seeded with 1,000,000 issued tokens (their 1,000,000
//! `token.issued` events), 100,000 revocations, 10,009,440 per-minute usage rows over seven days, 100,000
//! failure samples, 10,000 anomalies and 50 edges. Each call is timed 50 times on one keep-alive connection;
//! the table shows p50 and p95 beside the 300 ms target, then the dashboard's transfer size (raw and gzip
//! of `target/dashboard/dist/assets`, when built) beside its 1 MB compressed budget.
//! The seed is bulk SQL through `sqlite3` and `psql` into the schema the service's own migrations created.
//! `EDGEWARDEN_BENCH_REUSE=1` keeps the seeded stores (`target/bench/dashboard-sqlite`, database
//! `edgewarden_bench_dashboard`) and reuses them on the next run; `EDGEWARDEN_BENCH_BASELINE=1` measures
//! with the dashboard indexes of migration 0003 dropped (restored afterwards).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::admin::{postgres_server, psql, with_database};
use super::{quantile, Options};
use crate::admin_api::{self, AdminApi, Setup};
use crate::http::{get_request, Conn};
use crate::install;
use crate::util::{self, bail, Result};

/// Issued tokens (the figure); every tenth is revoked.
const TOKENS: i64 = 1_000_000;
/// Revocations in the feed (the figure), all still active.
const REVOCATIONS: i64 = 100_000;
/// Minutes of usage (seven days) and rows per minute: 10,009,440 usage rows in all.
const USAGE_MINUTES: i64 = 7 * 24 * 60;
const USAGE_ROWS_PER_MINUTE: i64 = 993;
/// Failure samples (the service keeps at most 100,000 by default).
const FAILURES: i64 = 100_000;
const ANOMALIES: i64 = 10_000;
const EDGES: i64 = 50;
const SUBJECTS: i64 = 50_000;
const CLIENTS: i64 = 20;
/// Seconds of history the seed spreads tokens and usage over.
const SPAN: i64 = 7 * 86_400;
/// Requests timed per call, after a few discarded warm-up ones.
const SAMPLES: usize = 50;
const WARMUP: usize = 3;
/// The p95 every call must stay under.
const TARGET: Duration = Duration::from_millis(300);
/// The dashboard's compressed transfer budget.
const TRANSFER_BUDGET: u64 = 1_000_000;
/// The indexes migration 0003 adds, dropped for a baseline run.
const DASHBOARD_INDEXES: &[&str] = &[
    "tokens_unrevoked_expiry",
    "tokens_revoked",
    "tokens_subject_issued",
    "tokens_client_issued",
];
/// Bumped whenever the seed changes, so a reused store is reseeded.
const SEED_VERSION: &str = "dashboard-seed-1";

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

/// Every scenario name, for `--only`.
pub fn scenarios() -> Vec<String> {
    vec!["dashboard-sqlite".into(), "dashboard-postgres".into()]
}

/// One measured call.
struct Timing {
    call: String,
    p50: Duration,
    p95: Duration,
    bytes: usize,
}

/// Seeds, serves and measures each selected store, then prints the table.
pub fn run(options: &Options) -> Result<()> {
    let stores: Vec<Store> = [Store::Sqlite, Store::Postgres]
        .into_iter()
        .filter(|s| options.matches(&format!("dashboard-{}", s.label())))
        .collect();
    if stores.is_empty() {
        println!("    no dashboard scenario matches --only; skipped");
        return Ok(());
    }
    let reuse = std::env::var("EDGEWARDEN_BENCH_REUSE").is_ok_and(|v| v == "1");
    let baseline = std::env::var("EDGEWARDEN_BENCH_BASELINE").is_ok_and(|v| v == "1");
    let bin = build_admin()?;
    let mut results: Vec<(Store, Vec<Timing>)> = Vec::new();
    for store in stores {
        let server = match store {
            Store::Sqlite => None,
            Store::Postgres => match postgres_server() {
                Ok(url) => Some(url),
                Err(e) => {
                    println!("    postgres skipped: {e}");
                    continue;
                }
            },
        };
        util::step(&format!(
            "dashboard bench on {}{}",
            store.label(),
            if baseline {
                " (baseline: without the 0003 indexes)"
            } else {
                ""
            }
        ));
        let seeded = Seeded::prepare(&bin, store, server.as_deref(), reuse)?;
        let dropped = if baseline {
            seeded.drop_indexes()?
        } else {
            Vec::new()
        };
        let timings = measure(&seeded);
        if !dropped.is_empty() && seeded.keep {
            println!("    restoring the dashboard indexes");
            seeded.sql(&format!("{};", dropped.join(";\n")))?;
        }
        results.push((store, timings?));
        seeded.finish()?;
    }
    println!("\n{}", report(&results, baseline));
    println!("{}", transfer_report());
    Ok(())
}

/// Builds `edgewarden-admin` (release) alone: the API calls are what is measured, so the dashboard's own
/// build is not needed (its size is read from `target/dashboard/dist` when another build left it there).
fn build_admin() -> Result<PathBuf> {
    util::step("build edgewarden-admin (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    util::run(Command::new(cargo).current_dir(util::project_root()).args([
        "build",
        "--release",
        "-p",
        "edgewarden-admin",
    ]))?;
    let bin = util::target_dir().join("release/edgewarden-admin");
    if !bin.is_file() {
        bail!(
            "cargo built edgewarden-admin but {} is missing",
            bin.display()
        );
    }
    Ok(bin)
}

/// A seeded store: its data directory, database URL and an admin key, and whether to keep it afterwards.
struct Seeded {
    bin: PathBuf,
    store: Store,
    dir: PathBuf,
    /// `(server url, database name)` for PostgreSQL.
    postgres: Option<(String, String)>,
    admin_key: String,
    keep: bool,
}

impl Seeded {
    fn prepare(bin: &Path, store: Store, server: Option<&str>, reuse: bool) -> Result<Seeded> {
        let dir = util::target_dir().join(format!("bench/dashboard-{}", store.label()));
        let marker = dir.join("seeded");
        let name = if reuse {
            "edgewarden_bench_dashboard".to_string()
        } else {
            format!("edgewarden_bench_dashboard_{}", std::process::id())
        };
        let postgres = server.map(|s| (s.to_string(), name));
        let fresh = !(reuse
            && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == SEED_VERSION)
            && match &postgres {
                Some((server, name)) => psql(
                    server,
                    &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
                )
                .is_ok_and(|out| out.trim() == "1"),
                None => dir.join("edgewarden.db").is_file(),
            });
        let mut seeded = Seeded {
            bin: bin.to_path_buf(),
            store,
            dir,
            postgres,
            admin_key: String::new(),
            keep: reuse,
        };
        if fresh {
            let setup = seeded.setup(true)?;
            if let Some((server, name)) = &seeded.postgres {
                psql(
                    server,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )?;
                psql(server, &format!("CREATE DATABASE {name}"))?;
                println!("    created database {name}");
            }
            // The first CLI call runs the service's own migrations: the seed writes into the real schema.
            setup.create_api_key("admin", "bench-admin")?;
            let started = Instant::now();
            seeded.seed()?;
            println!("    seeded in {:.0?}", started.elapsed());
            std::fs::write(&marker, SEED_VERSION)?;
        } else {
            println!("    reusing the seeded store in {}", seeded.dir.display());
        }
        seeded.admin_key = seeded
            .setup(false)?
            .create_api_key("admin", "bench-dashboard")?;
        Ok(seeded)
    }

    fn setup(&self, fresh: bool) -> Result<Setup> {
        let mut setup = if fresh {
            Setup::fresh(&self.bin, self.dir.clone())?
        } else {
            std::fs::create_dir_all(&self.dir)?;
            let mut s = Setup::fresh(
                &self.bin,
                util::target_dir().join("bench/dashboard-scratch"),
            )?;
            s.dir = self.dir.clone();
            s
        };
        setup.master_key = Some(admin_api::BENCH_MASTER_KEY.to_string());
        setup.remove_dir_on_drop = !self.keep;
        if let Some((server, name)) = &self.postgres {
            setup.database_url = Some(with_database(server, name)?);
        }
        Ok(setup)
    }

    /// Runs SQL against the store, stopping at the first error.
    fn sql(&self, sql: &str) -> Result<String> {
        match &self.postgres {
            Some((server, name)) => psql(&with_database(server, name)?, sql),
            None => {
                if !util::have("sqlite3") {
                    println!("    sqlite3 is missing; installing it");
                    install::apt_install(&["sqlite3"])?;
                }
                util::output(
                    Command::new("sqlite3")
                        .arg("-bail")
                        .arg(self.dir.join("edgewarden.db"))
                        .arg(sql),
                )
            }
        }
    }

    /// Fills every table the dashboard reads, in chunks so progress shows.
    fn seed(&self) -> Result<()> {
        let d = Dialect(self.store);
        let now = unix_now();
        let start = now - SPAN;
        let session = match self.store {
            Store::Sqlite => "PRAGMA synchronous=OFF; PRAGMA cache_size=-1000000;",
            // Row triggers would fire ten million times; the rollup is rebuilt in one statement below.
            Store::Postgres => "SET session_replication_role = replica;",
        };
        let chunked =
            |what: &str, total: i64, chunk: i64, body: &dyn Fn(i64, i64) -> String| -> Result<()> {
                let started = Instant::now();
                let mut lo = 0;
                while lo < total {
                    let hi = (lo + chunk).min(total);
                    self.sql(&format!("{session} BEGIN; {} COMMIT;", body(lo, hi)))?;
                    lo = hi;
                    println!("    {what}: {lo}/{total} rows ({:.0?})", started.elapsed());
                }
                Ok(())
            };
        let issued = format!("({start} + i * {SPAN} / {TOKENS})");
        let revoked_at = d.least(&format!("{issued} + 60"), &now.to_string());
        chunked("tokens", TOKENS, 250_000, &|lo, hi| {
            format!(
                "{} INSERT INTO tokens (jti, subject, client_id, scopes, roles, audience, kid, issued_at, expires_at, family_id, issued_by, revoked_at, revoke_reason) \
                 SELECT {}, {}, {}, 'read', '', 'api://default', 'bench-kid', {issued}, {issued} + 3600, NULL, 'bench', \
                 CASE WHEN i % 10 = 0 THEN {revoked_at} END, CASE WHEN i % 10 = 0 THEN 'bench' END FROM n;",
                d.series(lo, hi),
                d.pad("bench-jti-", "i", 7),
                d.pad("user-", &format!("i % {SUBJECTS}"), 5),
                d.pad("client-", &format!("i % {CLIENTS}"), 2),
            )
        })?;
        // One `token.issued` per token; ids are time-ordered like the service's (`evt_` + µs + random).
        chunked("token.issued events", TOKENS, 250_000, &|lo, hi| {
            format!(
                "{} INSERT INTO events (id, at, kind, actor, subject, client_id, jti, details) \
                 SELECT 'evt_' || {} || {}, {issued}, 'token.issued', 'api-key:bench', {}, {}, {}, '{{}}' FROM n;",
                d.series(lo, hi),
                d.hex(&format!("{issued} * 1000000 + i % 1000000"), 14),
                d.hex("i", 8),
                d.pad("user-", &format!("i % {SUBJECTS}"), 5),
                d.pad("client-", &format!("i % {CLIENTS}"), 2),
                d.pad("bench-jti-", "i", 7),
            )
        })?;
        // Revocations of every tenth token, each its own feed change, all still in the active list.
        let revoked_token = "(i * 10)".to_string();
        let revoked_issued = format!("({start} + {revoked_token} * {SPAN} / {TOKENS})");
        chunked("revocations", REVOCATIONS, REVOCATIONS, &|lo, hi| {
            format!(
                "{series} INSERT INTO revocations (kind, value, seq, reason, actor, revoked_at, expires_at) \
                 SELECT 'jti', {jti}, i + 1, 'bench', 'api-key:bench', {at}, {now} + 3600 + i % 3600 FROM n; \
                 {series} INSERT INTO events (id, at, kind, actor, subject, client_id, jti, details) \
                 SELECT 'evt_' || {id_time} || {id_rand}, {at}, 'token.revoked', 'api-key:bench', NULL, NULL, {jti}, '{{}}' FROM n; \
                 UPDATE feed_state SET current_cursor = {REVOCATIONS} WHERE id = 1;",
                series = d.series(lo, hi),
                jti = d.pad("bench-jti-", &revoked_token, 7),
                at = d.least(&format!("{revoked_issued} + 60"), &now.to_string()),
                id_time = d.hex(&format!("{} * 1000000 + 500000 + i % 500000", d.least(&format!("{revoked_issued} + 60"), &now.to_string())), 14),
                id_rand = d.hex(&format!("{TOKENS} + i"), 8),
            )
        })?;
        // Usage, minute by minute: 993 rows a minute over seven days, 50 edges, 10 routes, a tenth of
        // them refusals; tokens are those issued shortly before the minute.
        let minute0 = (start - start.rem_euclid(60)) + 60;
        let total = USAGE_MINUTES * USAGE_ROWS_PER_MINUTE;
        let m = format!("(i / {USAGE_ROWS_PER_MINUTE})");
        let k = format!("(i % {USAGE_ROWS_PER_MINUTE})");
        let t = format!("(({m} * 99 + {TOKENS} - {k} * 7) % {TOKENS})");
        chunked("usage rows", total, 1_000_944, &|lo, hi| {
            format!(
                "{} INSERT INTO usage_counts (bucket, edge, token, subject, client_id, route, reason, count) \
                 SELECT {minute0} + {m} * 60, {}, {}, {}, {}, '/api/r' || ({k} % 10), \
                 CASE {k} % 20 WHEN 0 THEN 'expired' WHEN 1 THEN 'revoked' WHEN 2 THEN 'insufficient_scope' WHEN 3 THEN 'missing_token' ELSE 'allowed' END, \
                 1 + i % 7 FROM n;",
                d.series(lo, hi),
                d.pad("edge-", &format!("{k} % {EDGES}"), 2),
                d.pad("bench-jti-", &t, 7),
                d.pad("user-", &format!("{t} % {SUBJECTS}"), 5),
                d.pad("client-", &format!("{t} % {CLIENTS}"), 2),
            )
        })?;
        println!("    rebuilding the hourly usage rollup");
        self.sql(&format!(
            "{session} BEGIN; DELETE FROM usage_hourly; \
             INSERT INTO usage_hourly (hour, edge, reason, count) SELECT (bucket / 3600) * 3600, edge, reason, SUM(count) \
             FROM usage_counts GROUP BY (bucket / 3600) * 3600, edge, reason; COMMIT;"
        ))?;
        chunked("failures, anomalies, edges", 1, 1, &|_, _| {
            format!(
                "{fseries} INSERT INTO usage_failures (id, edge, at, received_at, jti, subject, client_id, route, reason, client_address, iat, nbf) \
                 SELECT {fid}, {fedge}, {start} + i * 6, {start} + i * 6, {fjti}, NULL, NULL, '/api/r1', 'expired', '10.0.' || (i % 256) || '.' || (i / 256 % 256), NULL, NULL FROM n; \
                 {aseries} INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at) \
                 SELECT {aid}, 'address_failures', CASE i % 3 WHEN 0 THEN 'high' WHEN 1 THEN 'medium' ELSE 'low' END, 'address', \
                 '10.1.' || (i % 256) || '.' || (i / 256 % 256), '{{}}', CASE WHEN i % 10 = 0 THEN 'open' ELSE 'resolved' END, \
                 {start} + i * 60, {start} + i * 60 FROM n; \
                 {eseries} INSERT INTO edges (name, address, last_poll, feed_cursor, last_report, reports, events, first_seen) \
                 SELECT {ename}, '10.2.0.' || i, {now} - (i % 5) * 100, {REVOCATIONS}, {now}, 1000, 100000, {start} FROM n;",
                fseries = d.series(0, FAILURES),
                fid = d.pad("uf_bench", "i", 7),
                fedge = d.pad("edge-", &format!("i % {EDGES}"), 2),
                fjti = d.pad("bench-jti-", &format!("(i * 10 + 1) % {TOKENS}"), 7),
                aseries = d.series(0, ANOMALIES),
                aid = d.pad("an_bench", "i", 6),
                eseries = d.series(0, EDGES),
                ename = d.pad("edge-", "i", 2),
            )
        })?;
        println!("    updating planner statistics");
        match self.store {
            // What autovacuum does after a bulk load; it also makes index-only scans possible.
            Store::Postgres => self.sql("VACUUM ANALYZE;").map(drop),
            // SQLite never gathers statistics by itself; the service does not run ANALYZE, so neither does the bench.
            Store::Sqlite => Ok(()),
        }
    }

    /// Drops the dashboard indexes and returns the statements that recreate them.
    fn drop_indexes(&self) -> Result<Vec<String>> {
        let names = DASHBOARD_INDEXES
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let defs = match self.store {
            Store::Sqlite => self.sql(&format!(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name IN ({names})"
            ))?,
            Store::Postgres => self.sql(&format!(
                "SELECT indexdef FROM pg_indexes WHERE indexname IN ({names})"
            ))?,
        };
        let defs: Vec<String> = defs
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let drops: Vec<String> = DASHBOARD_INDEXES
            .iter()
            .map(|n| format!("DROP INDEX IF EXISTS {n}"))
            .collect();
        self.sql(&format!("{};", drops.join("; ")))?;
        if self.store == Store::Postgres {
            self.sql("ANALYZE tokens;")?;
        }
        println!("    dropped {} dashboard indexes", defs.len());
        Ok(defs)
    }

    fn serve(&self) -> Result<AdminApi> {
        let addr = SocketAddr::from(([127, 0, 0, 1], util::free_port()?));
        let api = self.setup(false)?.serve(addr, &["--no-bootstrap-admin"])?;
        println!("    edgewarden-admin serving on {addr} (pid {})", api.pid());
        Ok(api)
    }

    /// Drops the PostgreSQL database and data directory unless they are kept for reuse.
    fn finish(self) -> Result<()> {
        if self.keep {
            return Ok(());
        }
        if let Some((server, name)) = &self.postgres {
            match psql(
                server,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ) {
                Ok(_) => println!("    dropped database {name}"),
                Err(e) => println!("    could not drop database {name}: {e}"),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// The few spellings that differ between the two SQL dialects.
struct Dialect(Store);

impl Dialect {
    /// `WITH` clause naming `n(i)` for `i` in `lo..hi`.
    fn series(&self, lo: i64, hi: i64) -> String {
        match self.0 {
            Store::Sqlite => format!(
                "WITH RECURSIVE n(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM n WHERE i < {})",
                hi - 1
            ),
            Store::Postgres => format!(
                "WITH n(i) AS (SELECT generate_series({lo}::bigint, {}::bigint))",
                hi - 1
            ),
        }
    }

    /// `prefix` followed by `expr` zero-padded to `width` digits.
    fn pad(&self, prefix: &str, expr: &str, width: usize) -> String {
        match self.0 {
            Store::Sqlite => format!("printf('{prefix}%0{width}d', {expr})"),
            Store::Postgres => format!("'{prefix}' || lpad(({expr})::text, {width}, '0')"),
        }
    }

    /// `expr` in lowercase hex, zero-padded to `width` digits.
    fn hex(&self, expr: &str, width: usize) -> String {
        match self.0 {
            Store::Sqlite => format!("printf('%0{width}x', {expr})"),
            Store::Postgres => format!("lpad(to_hex({expr}), {width}, '0')"),
        }
    }

    fn least(&self, a: &str, b: &str) -> String {
        match self.0 {
            Store::Sqlite => format!("min({a}, {b})"),
            Store::Postgres => format!("least({a}, {b})"),
        }
    }
}

/// The calls the dashboard's pages make, with the seed's own values in them.
fn calls(now: i64) -> Vec<(String, String)> {
    let jti = "bench-jti-0999990";
    [
        ("overview 24h", "/api/v1/overview?range=24h".to_string()),
        ("overview 7d", "/api/v1/overview?range=7d".to_string()),
        (
            "usage hourly 7d",
            format!("/api/v1/usage/timeseries?bucket=hour&since={}", now - SPAN),
        ),
        (
            "usage minute 1h",
            format!(
                "/api/v1/usage/timeseries?bucket=minute&since={}",
                now - 3_600
            ),
        ),
        ("tokens", "/api/v1/tokens?limit=50".to_string()),
        (
            "tokens subject",
            "/api/v1/tokens?limit=50&subject=user-01234".to_string(),
        ),
        (
            "tokens client",
            "/api/v1/tokens?limit=50&client_id=client-07".to_string(),
        ),
        (
            "tokens active",
            "/api/v1/tokens?limit=50&status=active".to_string(),
        ),
        ("token by jti", format!("/api/v1/tokens/{jti}")),
        ("token timeline", format!("/api/v1/tokens/{jti}/timeline")),
        ("revocations", "/api/v1/revocations?limit=50".to_string()),
        (
            "anomalies open",
            "/api/v1/anomalies?state=open&limit=50".to_string(),
        ),
        ("edges", "/api/v1/edges".to_string()),
        ("events", "/api/v1/events?limit=50".to_string()),
    ]
    .into_iter()
    .map(|(name, path)| (name.to_string(), path))
    .collect()
}

/// Times every call on a fresh `serve` of the store.
fn measure(seeded: &Seeded) -> Result<Vec<Timing>> {
    let api = seeded.serve()?;
    let auth = format!("Bearer {}", seeded.admin_key);
    let mut conn = Conn::open(api.addr)?;
    let mut out = Vec::new();
    for (call, path) in calls(unix_now()) {
        let request = get_request(api.addr, &path, &[("authorization", &auth)]);
        let mut times = Vec::with_capacity(SAMPLES);
        let mut bytes = 0;
        for round in 0..WARMUP + SAMPLES {
            let started = Instant::now();
            let reply = conn.exchange(&request)?;
            let took = started.elapsed();
            if reply.status != 200 {
                bail!(
                    "GET {path} answered {}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body)
                );
            }
            if round >= WARMUP {
                times.push(took);
            }
            bytes = reply.body.len();
        }
        times.sort();
        let t = Timing {
            call,
            p50: quantile(&times, 0.5),
            p95: quantile(&times, 0.95),
            bytes,
        };
        println!(
            "    {:<16} p50 {:>7.1} ms  p95 {:>7.1} ms  {:>7} bytes  {}",
            t.call,
            ms(t.p50),
            ms(t.p95),
            t.bytes,
            verdict(t.p95)
        );
        out.push(t);
    }
    drop(api);
    Ok(out)
}

fn verdict(p95: Duration) -> &'static str {
    if p95 <= TARGET {
        "ok"
    } else {
        "OVER"
    }
}

/// One row per call, one column pair per store, with the target beside each p95.
fn report(results: &[(Store, Vec<Timing>)], baseline: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dashboard API calls{}: {TOKENS} tokens, {REVOCATIONS} revocations, {} usage rows; {SAMPLES} requests each, target p95 <= {} ms",
        if baseline { " (baseline, without the 0003 indexes)" } else { "" },
        USAGE_MINUTES * USAGE_ROWS_PER_MINUTE,
        TARGET.as_millis()
    );
    let _ = write!(out, "{:<18}", "call");
    for (store, _) in results {
        let _ = write!(out, " | {:<8} p50     p95  target", store.label());
    }
    out.push('\n');
    let Some((_, first)) = results.first() else {
        return out;
    };
    for (i, t) in first.iter().enumerate() {
        let _ = write!(out, "{:<18}", t.call);
        for (_, timings) in results {
            if let Some(t) = timings.get(i) {
                let _ = write!(
                    out,
                    " | {:>12.1} {:>7.1}  {:<6}",
                    ms(t.p50),
                    ms(t.p95),
                    verdict(t.p95)
                );
            }
        }
        out.push('\n');
    }
    out
}

/// Raw and gzip sizes of the dashboard's built assets, against the compressed budget.
fn transfer_report() -> String {
    let dir = util::target_dir().join("dashboard/dist/assets");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return format!(
            "dashboard transfer size: {} not built (cargo xtask build the dashboard first); budget {} bytes gzip",
            dir.display(),
            TRANSFER_BUDGET
        );
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut out = String::from("dashboard transfer size (target/dashboard/dist/assets):\n");
    let (mut raw_total, mut gz_total) = (0u64, 0u64);
    for file in files {
        let raw = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let gz = Command::new("gzip")
            .args(["-9", "-c"])
            .arg(&file)
            .output()
            .map(|o| o.stdout.len() as u64)
            .unwrap_or(0);
        raw_total += raw;
        gz_total += gz;
        let _ = writeln!(
            out,
            "    {:<40} {:>9} bytes raw {:>9} bytes gzip",
            file.file_name().unwrap_or_default().to_string_lossy(),
            raw,
            gz
        );
    }
    let _ = writeln!(
        out,
        "    {:<40} {:>9} bytes raw {:>9} bytes gzip (budget {TRANSFER_BUDGET}: {})",
        "total",
        raw_total,
        gz_total,
        if gz_total <= TRANSFER_BUDGET {
            "ok"
        } else {
            "OVER"
        }
    );
    out
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
