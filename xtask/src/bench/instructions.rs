//! `cargo xtask bench --suite instructions`: instructions per request, counted by valgrind's callgrind in a
//! single-worker Envoy, for the proxy-wasm floor, native `jwt_authn` and EdgeWarden (default configuration and the
//! demo's claim forwarding with `strip_token`; ES256 and RS256; the 1000-token pool, one hot token, and first-time
//! verification with the caches off). Instructions do not move with the machine's load, so a change of a few
//! hundred instructions per request shows where timings on this shared machine only show noise.
//! Every scenario gets the same request stream from a sequential keep-alive client; each is counted in several
//! batches after a warm-up, and the spread between batches says how far the figure can be trusted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Options;
use crate::http::{self, Conn};
use crate::util::{self, bail, Result};
use crate::{build, install, tokens};

/// Requests in one counted batch: the 1000-token pool twice over.
const BATCH: usize = 2000;
/// Requests sent before counting: enough for every token to be cached twice and V8 to tier its code up.
const WARM_UP: usize = 2000;
/// Requests sent after instrumentation is switched on and before the first batch (valgrind re-translates
/// every code block it meets for the first time with instrumentation, once).
const INSTRUMENTED_WARM_UP: usize = 200;
/// The path every request asks for: the demo configuration's `/api/read` rule (scope `read`, which the bench
/// tokens carry); the other configurations let every path through alike.
const PATH: &str = "/api/read";
/// Our own instructions per request, as a share of the floor's, that still gives at least 0.95x its throughput
/// (1/0.95 - 1 is 5.3 %; the issue's target rounds it to 5 %).
const OWN_SHARE_TARGET: f64 = 0.05;
/// First-time verification: EdgeWarden's instructions over no auth at most this many times `jwt_authn`'s.
const FIRST_TIME_TARGET: f64 = 1.5;

/// The plugin configuration fields the demo adds to the bench's (envoy/demo.yaml: rules, claim forwarding,
/// `strip_token`); its control plane is left out, so only the request path differs from the default scenario.
const DEMO_FIELDS: &str = r#""rules": [
                        { "match": { "prefix": "/public" }, "allow_anonymous": true },
                        { "match": { "prefix": "/api/read" }, "require_scopes": ["read"] },
                        { "match": { "prefix": "/api/admin" }, "require_scopes": ["admin"] }
                      ],
                      "forward_claims": [
                        { "claim": "sub", "header": "x-edgewarden-sub" },
                        { "claim": "scope", "header": "x-edgewarden-scope" },
                        { "claim": "client_id", "header": "x-edgewarden-client-id" }
                      ],
                      "strip_token": true,
                      "#;

/// Which Envoy a scenario counts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Proxy {
    None,
    Floor,
    /// The floor making, with no work of its own, the host calls EdgeWarden makes on its cached path in the
    /// configuration `demo` and `props` name (`filter/floor`'s script): what Envoy spends answering them.
    FloorCalls {
        demo: bool,
        props: Props,
    },
    JwtAuthn {
        cache: bool,
    },
    /// EdgeWarden: `build` 0 is this tree's, n the n-th file of `--against`.
    EdgeWarden {
        demo: bool,
        cache: bool,
        build: usize,
        props: Props,
    },
}

/// EdgeWarden's `decision_properties`: what publishing the decision costs per request.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Props {
    /// The default, one property per field.
    Each,
    /// `"one"`: every field in one property.
    One,
    /// `"none"`.
    None,
}

impl Props {
    /// The plugin configuration field that selects it (the default sets nothing).
    fn field(self) -> &'static str {
        match self {
            Props::Each => "",
            Props::One => r#""decision_properties": "one", "#,
            Props::None => r#""decision_properties": "none", "#,
        }
    }

    /// What a scenario's label says about the configuration: ` demo config` and the properties (none for the default).
    fn describe(demo: bool, props: Props) -> &'static str {
        match (demo, props) {
            (false, Props::Each) => "",
            (false, Props::One) => " one property",
            (false, Props::None) => " no properties",
            (true, Props::Each) => " demo config",
            (true, Props::One) => " demo config one property",
            (true, Props::None) => " demo config no properties",
        }
    }
}

impl Proxy {
    fn label(self) -> String {
        match self {
            Proxy::None => "no auth".to_string(),
            Proxy::Floor => "proxy-wasm floor".to_string(),
            Proxy::FloorCalls { demo, props } => {
                format!(
                    "floor + edgewarden's host calls{}",
                    Props::describe(demo, props)
                )
            }
            Proxy::JwtAuthn { cache: true } => "jwt_authn".to_string(),
            Proxy::JwtAuthn { cache: false } => "jwt_authn (no cache)".to_string(),
            Proxy::EdgeWarden {
                demo,
                cache,
                build,
                props,
            } => {
                let mut s = "edgewarden".to_string();
                if build > 0 {
                    let _ = write!(s, " --against #{build}");
                }
                s.push_str(Props::describe(demo, props));
                if !cache {
                    s.push_str(" (no cache)");
                }
                s
            }
        }
    }
}

/// The EdgeWarden configurations whose host calls the floor also makes alone (`Proxy::FloorCalls`).
const MIRRORED: [(bool, Props); 4] = [
    (false, Props::Each),
    (true, Props::Each),
    (false, Props::One),
    (false, Props::None),
];

/// The floor's script (`filter/floor`) for the host calls EdgeWarden makes on the cached path when it lets a
/// bench token (`sub` user-N, `client_id` demo-client, `jti` user-N-iat, scope `read`) through in the configuration
/// `demo` and `props` name, in the order it makes them: the header map and the clock, the decision published, the
/// claims forwarded and the token stripped (`filter/src/flow.rs`, `apply`).
fn floor_script(demo: bool, props: Props) -> String {
    let rule = if demo { "/api/read" } else { "*" };
    let (sub, client_id, jti) = ("user-123", "demo-client", "user-123-1764950000");
    let mut script = String::from("headers\nclock\n");
    match props {
        Props::Each => {
            for (name, value) in [
                ("reason", "allowed"),
                ("rule", rule),
                ("sub", sub),
                ("client_id", client_id),
                ("jti", jti),
            ] {
                let _ = writeln!(script, "property edgewarden.{name} {value}");
            }
        }
        Props::One => {
            let _ = writeln!(
                script,
                "property edgewarden.decision reason=allowed rule={rule} sub={sub} client_id={client_id} jti={jti}"
            );
        }
        Props::None => {}
    }
    if demo {
        for (header, value) in [
            ("x-edgewarden-sub", sub),
            ("x-edgewarden-scope", "read"),
            ("x-edgewarden-client-id", client_id),
        ] {
            let _ = writeln!(script, "set {header} {value}");
        }
        script.push_str("remove authorization\n");
    }
    script
}

/// Which tokens a scenario sends.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Pool {
    Distinct,
    Hot,
}

impl Pool {
    fn label(self) -> &'static str {
        match self {
            // Not "1000 tokens": `--only "1000 tokens"` selects the filter suite alone.
            Pool::Distinct => "1000-token pool",
            Pool::Hot => "hot token",
        }
    }
}

/// Every Envoy this suite starts per algorithm, with the pools it is counted with; `against` adds the
/// EdgeWarden scenarios again for each other build.
fn plan(against: usize) -> Vec<(Proxy, Vec<Pool>)> {
    let both = vec![Pool::Distinct, Pool::Hot];
    let mut plan = vec![
        (Proxy::None, vec![Pool::Distinct]),
        (Proxy::Floor, vec![Pool::Distinct]),
    ];
    for (demo, props) in MIRRORED {
        plan.push((Proxy::FloorCalls { demo, props }, vec![Pool::Distinct]));
    }
    plan.push((Proxy::JwtAuthn { cache: true }, both.clone()));
    for build in 0..=against {
        plan.push((
            Proxy::EdgeWarden {
                demo: false,
                cache: true,
                build,
                props: Props::Each,
            },
            both.clone(),
        ));
        plan.push((
            Proxy::EdgeWarden {
                demo: true,
                cache: true,
                build,
                props: Props::Each,
            },
            both.clone(),
        ));
    }
    // What `decision_properties` saves, on the pool with the default configuration otherwise.
    for props in [Props::One, Props::None] {
        plan.push((
            Proxy::EdgeWarden {
                demo: false,
                cache: true,
                build: 0,
                props,
            },
            vec![Pool::Distinct],
        ));
    }
    plan.push((Proxy::JwtAuthn { cache: false }, vec![Pool::Distinct]));
    for build in 0..=against {
        plan.push((
            Proxy::EdgeWarden {
                demo: false,
                cache: false,
                build,
                props: Props::Each,
            },
            vec![Pool::Distinct],
        ));
    }
    plan
}

/// The algorithms counted, with the demo key that signs each one's tokens.
const ALGS: [(&str, &str); 2] = [("ES256", "demo-es256"), ("RS256", "demo-rs256")];

fn scenario_name(alg: &str, proxy: Proxy, pool: Pool) -> String {
    format!("instructions {alg} {} / {}", proxy.label(), pool.label())
}

/// Every scenario name, for `--only` (without `--against` builds).
pub fn scenarios() -> Vec<String> {
    ALGS.iter()
        .flat_map(|(alg, _)| {
            plan(0).into_iter().flat_map(move |(proxy, pools)| {
                pools
                    .into_iter()
                    .map(move |pool| scenario_name(alg, proxy, pool))
            })
        })
        .collect()
}

/// One scenario's counts: instructions per request of each batch.
#[derive(Clone, Debug)]
struct Counts {
    per_request: Vec<f64>,
}

impl Counts {
    fn median(&self) -> f64 {
        let mut v = self.per_request.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// (max - min) / median, the batches' spread.
    fn spread(&self) -> f64 {
        let min = self
            .per_request
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let max = self
            .per_request
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        (max - min) / self.median().max(1.0)
    }
}

/// Counts every selected scenario and prints instructions per request, EdgeWarden's own share over the floor
/// and the first-time verification ratio, each beside its target.
pub fn run(options: &Options) -> Result<()> {
    install::ensure_apt_tool("valgrind", "valgrind")?;
    if !util::have("callgrind_control") {
        bail!("valgrind is installed but callgrind_control is not on PATH");
    }
    let floor = build::floor()?;
    let wasm = build::filter_wasm();
    let jwks = tokens::demo_jwks_json()?;
    let batches = options.rounds.max(2);
    let mut report = String::new();
    let mut results = serde_json::Map::new();
    for (alg, key_name) in ALGS {
        let selected: Vec<(Proxy, Vec<Pool>)> = plan(options.against.len())
            .into_iter()
            .map(|(proxy, pools)| {
                let pools: Vec<Pool> = pools
                    .into_iter()
                    .filter(|pool| options.matches(&scenario_name(alg, proxy, *pool)))
                    .collect();
                (proxy, pools)
            })
            .filter(|(_, pools)| !pools.is_empty())
            .collect();
        if selected.is_empty() {
            continue;
        }
        let (pool_file, hot_file) = super::filter::token_files(alg, key_name)?;
        let pool = read_tokens(&pool_file)?;
        let hot = read_tokens(&hot_file)?;
        let mut rows: BTreeMap<(Proxy, Pool), Counts> = BTreeMap::new();
        for (proxy, pools) in selected {
            let module = match proxy {
                Proxy::Floor | Proxy::FloorCalls { .. } => floor.clone(),
                Proxy::EdgeWarden { build: 0, .. } => wasm.clone(),
                Proxy::EdgeWarden { build, .. } => options
                    .against
                    .get(build - 1)
                    .cloned()
                    .ok_or_else(|| util::Error::msg(format!("no --against build #{build}")))?,
                _ => PathBuf::new(),
            };
            let envoy = Counted::start(proxy, alg, &module, &jwks)?;
            let mut conn = Conn::open(envoy.listener)?;
            for pool_kind in pools {
                let name = scenario_name(alg, proxy, pool_kind);
                let tokens = match pool_kind {
                    Pool::Distinct => &pool,
                    Pool::Hot => &hot,
                };
                let requests: Vec<Vec<u8>> = tokens
                    .iter()
                    .map(|t| {
                        http::get_request(
                            envoy.listener,
                            PATH,
                            &[("authorization", &format!("Bearer {t}"))],
                        )
                    })
                    .collect();
                print!("    {name:<72}");
                let counts = envoy.count(&mut conn, &requests, batches)?;
                println!(
                    " {:>10.0} instr/req (spread {:.2}%)",
                    counts.median(),
                    100.0 * counts.spread()
                );
                results.insert(
                    name,
                    json!({
                        "instructions_per_request": counts.median(),
                        "instructions_per_request_all_batches": counts.per_request,
                        "requests_per_batch": BATCH,
                        "spread": counts.spread(),
                    }),
                );
                rows.insert((proxy, pool_kind), counts);
            }
        }
        report.push_str(&table(alg, &rows, batches));
    }
    println!("{report}");
    let out = util::target_dir().join("bench/instructions-results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("raw figures: {}", out.display());
    Ok(())
}

fn read_tokens(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    let tokens: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        bail!("{} holds no token", path.display());
    }
    Ok(tokens)
}

/// Envoy under callgrind (instrumentation off until the warm-up is done); killed on drop.
struct Counted {
    child: Child,
    listener: SocketAddr,
    log: PathBuf,
    /// callgrind's output file; each dump is written beside it as `<file>.<n>`.
    out: PathBuf,
    dumps: std::cell::Cell<usize>,
}

impl Counted {
    fn start(proxy: Proxy, alg: &str, wasm: &Path, jwks: &str) -> Result<Counted> {
        let admin_port = util::free_port()?;
        let listener_port = util::free_port()?;
        let mut values = BTreeMap::new();
        values.insert("listener_port", listener_port.to_string());
        values.insert("admin_port", admin_port.to_string());
        let mut fields = String::new();
        let template = match proxy {
            Proxy::None => "bench-none.yaml",
            Proxy::Floor => {
                values.insert("wasm_path", wasm.display().to_string());
                values.insert("floor_configuration", String::new());
                "bench-floor.yaml"
            }
            Proxy::FloorCalls { demo, props } => {
                values.insert("wasm_path", wasm.display().to_string());
                // A YAML string: JSON quoting is valid YAML.
                values.insert(
                    "floor_configuration",
                    format!(
                        "configuration: {{ \"@type\": type.googleapis.com/google.protobuf.StringValue, value: {} }}",
                        serde_json::to_string(&floor_script(demo, props))?
                    ),
                );
                "bench-floor.yaml"
            }
            Proxy::JwtAuthn { cache } => {
                values.insert("jwks", jwks.to_string());
                values.insert(
                    "jwt_cache",
                    if cache {
                        "jwt_cache_config: { jwt_cache_size: 2000 }".to_string()
                    } else {
                        "# jwt_cache_config left out: no cache".to_string()
                    },
                );
                "bench-jwt-authn.yaml"
            }
            Proxy::EdgeWarden {
                demo, cache, props, ..
            } => {
                values.insert("jwks", jwks.to_string());
                values.insert("wasm_path", wasm.display().to_string());
                values.insert(
                    "cache_entries",
                    if cache { "10000" } else { "0" }.to_string(),
                );
                if demo {
                    fields.push_str(DEMO_FIELDS);
                }
                fields.push_str(props.field());
                "bench-edgewarden.yaml"
            }
        };
        let path = util::project_root().join("envoy").join(template);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| util::Error::msg(format!("cannot read {}: {e}", path.display())))?;
        let mut config = util::render(&text, &values, template)?;
        if !fields.is_empty() {
            // The scenario's fields go in front of the bench configuration's own `cache` field.
            let anchor = "\"cache\":";
            if config.matches(anchor).count() != 1 {
                bail!("{template}: expected exactly one `{anchor}` in the plugin configuration to put the scenario's fields before");
            }
            config = config.replacen(anchor, &format!("{fields}{anchor}"), 1);
        }
        let name = format!(
            "instructions-{}-{}",
            alg.to_ascii_lowercase(),
            proxy
                .label()
                .replace([' ', '(', ')', '-', '+', '#', '\''], "")
        );
        let dir = util::target_dir().join("bench/instructions");
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config)?;
        let log = dir.join(format!("{name}.log"));
        let out = dir.join(format!("{name}.callgrind"));
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.callgrind"))
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                // V8 writes machine code at run time: valgrind must notice code it already translated changing.
                "--smc-check=all-non-file",
                // Start-up and warm-up are not counted, and run at valgrind's uninstrumented speed.
                "--instr-atstart=no",
            ])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(install::envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                "1",
                "-l",
                "warning",
                "--disable-hot-restart",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| util::Error::msg(format!("cannot start valgrind: {e}")))?;
        let mut envoy = Counted {
            child,
            listener: SocketAddr::from(([127, 0, 0, 1], listener_port)),
            log,
            out,
            dumps: std::cell::Cell::new(0),
        };
        envoy.wait_ready(SocketAddr::from(([127, 0, 0, 1], admin_port)))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin: SocketAddr) -> Result<()> {
        let started = Instant::now();
        let timeout = Duration::from_secs(180);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "envoy under valgrind exited with {status}; its log ({}):\n{}",
                    self.log.display(),
                    crate::envoy::log_tail(&self.log)
                );
            }
            let live = http::get(admin, "/ready", &[]).is_ok_and(|r| r.status == 200);
            if live && std::net::TcpStream::connect(self.listener).is_ok() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "envoy under valgrind was not ready within {timeout:?}; its log ({}):\n{}",
                    self.log.display(),
                    crate::envoy::log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn control(&self, args: &[&str]) -> Result<()> {
        util::output(
            Command::new("callgrind_control")
                .args(args)
                .arg(self.child.id().to_string()),
        )?;
        Ok(())
    }

    /// Sends `n` requests round-robin over `requests`; every answer must be 200.
    fn send(&self, conn: &mut Conn, requests: &[Vec<u8>], n: usize) -> Result<()> {
        for request in requests.iter().cycle().take(n) {
            let reply = conn.exchange(request)?;
            if reply.status != 200 {
                bail!(
                    "answer {} ({}) to a valid token: the scenario is misconfigured; see {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body).trim(),
                    self.log.display()
                );
            }
        }
        Ok(())
    }

    /// Warms up, switches instrumentation on, then counts `batches` batches of [`BATCH`] requests.
    fn count(&self, conn: &mut Conn, requests: &[Vec<u8>], batches: usize) -> Result<Counts> {
        self.send(conn, requests, WARM_UP)?;
        self.control(&["--instr=on"])?;
        self.send(conn, requests, INSTRUMENTED_WARM_UP)?;
        let mut per_request = Vec::new();
        for _ in 0..batches {
            self.control(&["--zero"])?;
            self.send(conn, requests, BATCH)?;
            let total = self.dump()?;
            per_request.push(total as f64 / BATCH as f64);
        }
        self.control(&["--instr=off"])?;
        Ok(Counts { per_request })
    }

    /// Has callgrind write its counts since the last zero or dump and returns the instructions in them.
    fn dump(&self) -> Result<u64> {
        self.control(&["--dump"])?;
        let n = self.dumps.get() + 1;
        self.dumps.set(n);
        let file = PathBuf::from(format!("{}.{n}", self.out.display()));
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Some(total) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("totals:"))
                    .and_then(|t| t.trim().parse::<u64>().ok())
                {
                    return Ok(total);
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("callgrind wrote no totals to {}", file.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Formats one algorithm's counts: instructions per request, EdgeWarden's own work over the floor against the
/// 5 % target, and first-time verification against `jwt_authn`.
fn table(alg: &str, rows: &BTreeMap<(Proxy, Pool), Counts>, batches: usize) -> String {
    let mut out = format!(
        "\n{alg}: instructions per request (callgrind, Envoy 1.40, 1 worker; median of {batches} batches of {BATCH} requests on one keep-alive connection)\n"
    );
    let _ = writeln!(
        out,
        "{:<40} {:<16} {:>12} {:>8} {:>12} {:>10}",
        "proxy", "tokens", "instr/req", "spread", "over floor", "x floor"
    );
    let floor = rows
        .get(&(Proxy::Floor, Pool::Distinct))
        .map(Counts::median);
    for ((proxy, pool), counts) in rows {
        let m = counts.median();
        let (over, ratio) = match floor {
            Some(f) if *proxy != Proxy::Floor => {
                (format!("{:+.0}", m - f), format!("{:.3}x", m / f))
            }
            _ => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{:<40} {:<16} {:>12.0} {:>7.2}% {:>12} {:>10}",
            proxy.label(),
            pool.label(),
            m,
            100.0 * counts.spread(),
            over,
            ratio
        );
    }
    if let Some(f) = floor {
        let _ = writeln!(
            out,
            "cached path target: >= 0.95x the floor's throughput, i.e. EdgeWarden's own instructions per request <= {:.0}% of the floor's ({:.0})",
            100.0 * OWN_SHARE_TARGET,
            OWN_SHARE_TARGET * f
        );
        for ((proxy, pool), counts) in rows {
            if !matches!(proxy, Proxy::EdgeWarden { cache: true, .. }) {
                continue;
            }
            let own = counts.median() - f;
            let _ = writeln!(
                out,
                "    {:<40} {:<16} own {:>7.0} = {:>5.1}% of the floor: {}",
                proxy.label(),
                pool.label(),
                own,
                100.0 * own / f,
                if own <= OWN_SHARE_TARGET * f {
                    "met"
                } else {
                    "not met"
                }
            );
        }
        // Split of the work over the floor: what Envoy spends answering EdgeWarden's host calls (the floor making
        // the same calls with no work of its own) and what is left for EdgeWarden's own code in the VM.
        let mut split = String::new();
        for ((proxy, pool), counts) in rows {
            let Proxy::EdgeWarden {
                demo,
                cache: true,
                props,
                ..
            } = *proxy
            else {
                continue;
            };
            let Some(calls) = rows
                .get(&(Proxy::FloorCalls { demo, props }, Pool::Distinct))
                .map(Counts::median)
            else {
                continue;
            };
            let host = calls - f;
            let vm = counts.median() - calls;
            let _ = writeln!(
                split,
                "    {:<40} {:<16} host calls {:>7.0} ({:>5.1}%), own code in the VM {:>7.0} ({:>5.1}%)",
                proxy.label(),
                pool.label(),
                host,
                100.0 * host / f,
                vm,
                100.0 * vm / f
            );
        }
        if !split.is_empty() {
            let _ = writeln!(
                out,
                "over the floor, split (share of the floor): Envoy answering the same host calls from a filter that does nothing else, and the rest"
            );
            out.push_str(&split);
        }
    }
    if let (Some(none), Some(native)) = (
        rows.get(&(Proxy::None, Pool::Distinct)).map(Counts::median),
        rows.get(&(Proxy::JwtAuthn { cache: false }, Pool::Distinct))
            .map(Counts::median),
    ) {
        let native_added = native - none;
        for ((proxy, pool), counts) in rows {
            if !matches!(proxy, Proxy::EdgeWarden { cache: false, .. }) {
                continue;
            }
            let ours_added = counts.median() - none;
            let ratio = ours_added / native_added.max(1.0);
            let _ = writeln!(
                out,
                "first-time verification ({}, {}), instructions over no auth: jwt_authn {native_added:.0}, edgewarden {ours_added:.0} ({ratio:.2}x; target <= {FIRST_TIME_TARGET}x: {})",
                proxy.label(),
                pool.label(),
                if ratio <= FIRST_TIME_TARGET { "met" } else { "not met" }
            );
        }
    }
    out
}
