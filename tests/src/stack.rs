//! `Stack::start(config)`: a real Envoy (one worker, its own admin and listener ports, no hot restart)
//! loading the built filter `.wasm` with a given plugin configuration, in front of an echo upstream,
//! with a JWKS server reachable through the `jwks` cluster and, with `start_with_control_plane`, the
//! admin API through the `control_plane` cluster. Envoy can be killed and restarted with the same
//! configuration and listener port. Its log goes to a file that is printed when a test fails;
//! everything is torn down on drop.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::servers::{Echo, JwksServer, Upstream, JWKS_PATH};

/// The Envoy cluster name that reaches the stack's JWKS server (use it in `remote_jwks.cluster`).
pub const JWKS_CLUSTER: &str = "jwks";
/// The Envoy cluster name that reaches the admin API of `Stack::start_with_control_plane`
/// (use it in `control_plane.cluster`, and in `remote_jwks.cluster` for the admin API's keys).
pub const CONTROL_PLANE_CLUSTER: &str = "control_plane";
/// Longer than the filter's longest timer period, after which every count it made has reached Envoy.
const COUNTER_FLUSH: Duration = Duration::from_millis(350);
/// How long Envoy may take to start (V8 compiles the module once per VM).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A tool location (Envoy, the filter, Chromium, chromedriver, axe-core) from the environment
/// `cargo xtask test` sets; panics saying so when it is missing, so nothing is skipped in silence.
pub(crate) fn required_path(var: &str, what: &str) -> PathBuf {
    let Some(value) = std::env::var_os(var) else {
        panic!(
            "{var} is not set: the end-to-end tests need {what}; run them with `cargo xtask test`, which installs or builds it and sets the variable"
        );
    };
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "{var}={} does not exist: run `cargo xtask test` (or `cargo xtask install`)",
        path.display()
    );
    path
}

/// The Envoy binary (`EDGEWARDEN_ENVOY_BIN`).
pub fn envoy_bin() -> PathBuf {
    required_path("EDGEWARDEN_ENVOY_BIN", "an Envoy binary")
}

/// The filter module (`EDGEWARDEN_FILTER_WASM`).
pub fn filter_wasm() -> PathBuf {
    required_path("EDGEWARDEN_FILTER_WASM", "the built filter .wasm")
}

/// A fresh directory for one run's config, data and log, under `target/e2e-runs/`.
pub(crate) fn run_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-runs");
    let dir = base.join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run directory");
    dir
}

fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()
            }}}}]}]
        }
    })
}

/// The Envoy bootstrap: listener and admin on port 0 (Envoy picks; we ask it which), the wasm
/// filter with `plugin_config`, everything routed to the upstream; `extra_clusters` are added as
/// static clusters beside `upstream` and `jwks`.
fn bootstrap(
    plugin_config: &str,
    wasm: &Path,
    upstream: SocketAddr,
    jwks: SocketAddr,
    extra_clusters: &[(&str, SocketAddr)],
) -> Value {
    let mut clusters = vec![cluster("upstream", upstream), cluster(JWKS_CLUSTER, jwks)];
    clusters.extend(
        extra_clusters
            .iter()
            .map(|(name, addr)| cluster(name, *addr)),
    );
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "e2e",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "e2e",
                        "route_config": {"name": "e2e", "virtual_hosts": [{
                            "name": "e2e", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "10s"}}]
                        }]},
                        "http_filters": [
                            {
                                "name": "envoy.filters.http.wasm",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                    "config": {
                                        "name": "edgewarden",
                                        "root_id": "edgewarden",
                                        "fail_open": false,
                                        "vm_config": {
                                            "vm_id": "edgewarden",
                                            "runtime": "envoy.wasm.runtime.v8",
                                            "code": {"local": {"filename": wasm.display().to_string()}}
                                        },
                                        "configuration": {
                                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                                            "value": plugin_config
                                        }
                                    }
                                }
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                            }
                        ]
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}

/// A spawned Envoy process with its log file; killed on drop.
#[derive(Debug)]
struct EnvoyProcess {
    child: Child,
    dir: PathBuf,
}

impl EnvoyProcess {
    fn spawn(config: &Value) -> EnvoyProcess {
        let dir = run_dir();
        let config_path = dir.join("envoy.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(config).expect("config serializes"),
        )
        .expect("write the envoy config");
        let log = File::create(dir.join("envoy.log")).expect("create the envoy log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                "1",
                "-l",
                "warning",
                "--disable-hot-restart",
            ])
            .arg("--admin-address-path")
            .arg(dir.join("admin-address"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("start envoy");
        EnvoyProcess { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        std::fs::read_to_string(self.dir.join("admin-address"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running test stack: Envoy with the filter, the echo upstream and the JWKS server.
#[derive(Debug)]
pub struct Stack {
    envoy: EnvoyProcess,
    /// The Envoy configuration, kept to start Envoy again the same way.
    bootstrap: Value,
    /// Envoy's admin endpoint.
    pub admin: SocketAddr,
    /// Envoy's HTTP listener.
    pub listener: SocketAddr,
    /// The echo upstream behind Envoy.
    pub upstream: Upstream,
    /// The JWKS server behind the `jwks` cluster.
    pub jwks: JwksServer,
    client: reqwest::Client,
}

impl Stack {
    /// Starts a stack whose filter runs with `plugin_config`; the JWKS server serves an empty key set.
    pub async fn start(plugin_config: Value) -> Stack {
        Stack::start_with_jwks(plugin_config, json!({"keys": []})).await
    }

    /// Starts a stack whose JWKS server serves `jwks` from the start.
    pub async fn start_with_jwks(plugin_config: Value, jwks: Value) -> Stack {
        Stack::start_with_clusters(plugin_config, jwks, &[]).await
    }

    /// Starts a stack whose Envoy also has the cluster [`CONTROL_PLANE_CLUSTER`] pointing at the
    /// admin API on `admin_api` (an `AdminApi`'s `addr`); the JWKS server serves an empty key set.
    pub async fn start_with_control_plane(plugin_config: Value, admin_api: SocketAddr) -> Stack {
        Stack::start_with_clusters(
            plugin_config,
            json!({"keys": []}),
            &[(CONTROL_PLANE_CLUSTER, admin_api)],
        )
        .await
    }

    /// Starts a stack whose JWKS server serves `jwks` and whose Envoy has `extra_clusters`
    /// (name, address) as static clusters besides `upstream` and `jwks`.
    pub async fn start_with_clusters(
        plugin_config: Value,
        jwks: Value,
        extra_clusters: &[(&str, SocketAddr)],
    ) -> Stack {
        let upstream = Upstream::start().await;
        let jwks = JwksServer::start(jwks).await;
        let config = bootstrap(
            &plugin_config.to_string(),
            &filter_wasm(),
            upstream.addr,
            jwks.addr,
            extra_clusters,
        );
        Stack::launch(config, upstream, jwks).await
    }

    /// Starts a stack like [`Stack::start_with_clusters`] whose Envoy bootstrap `customise` edits first (JSON, as
    /// Envoy reads it): an access log on the connection manager, HTTP/2 to the upstream, another filter beside ours.
    /// The listener is the first of `static_resources.listeners`; the wasm filter is the first HTTP filter.
    /// `customise` also gets a fresh directory for the files it points Envoy at (an access log).
    pub async fn start_customised(
        plugin_config: Value,
        jwks: Value,
        extra_clusters: &[(&str, SocketAddr)],
        customise: impl FnOnce(&mut Value, &Path),
    ) -> Stack {
        let upstream = Upstream::start().await;
        let jwks = JwksServer::start(jwks).await;
        let mut config = bootstrap(
            &plugin_config.to_string(),
            &filter_wasm(),
            upstream.addr,
            jwks.addr,
            extra_clusters,
        );
        customise(&mut config, &run_dir());
        Stack::launch(config, upstream, jwks).await
    }

    /// Starts Envoy with `config` beside its `upstream` and `jwks` servers and waits until it is ready.
    async fn launch(config: Value, upstream: Upstream, jwks: JwksServer) -> Stack {
        let mut envoy = EnvoyProcess::spawn(&config);
        let (admin, listener) = wait_ready(&mut envoy).await;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("http client");
        Stack {
            envoy,
            bootstrap: config,
            admin,
            listener,
            upstream,
            jwks,
            client,
        }
    }

    /// Kills Envoy (SIGKILL) and reaps it; the listener port refuses connections until `restart`.
    pub fn kill_envoy(&mut self) {
        self.envoy.kill();
    }

    /// Starts a new Envoy process with the same configuration on the same listener port (a new
    /// admin port), killing the running one first, and waits until it is ready. The upstream, the
    /// JWKS server and anything the plugin configuration points at keep running.
    pub async fn restart(&mut self) {
        self.envoy.kill();
        let mut config = self.bootstrap.clone();
        config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] =
            json!(self.listener.port());
        self.envoy = EnvoyProcess::spawn(&config);
        let (admin, listener) = wait_ready(&mut self.envoy).await;
        assert_eq!(
            listener, self.listener,
            "the restarted envoy should listen where the first one did"
        );
        self.admin = admin;
    }

    /// The URL of `path` through Envoy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    /// A GET through Envoy.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    /// A GET through Envoy with `Authorization: Bearer <token>`.
    pub fn get_with_token(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.get(path).bearer_auth(token)
    }

    /// The client, for other methods.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The `remote_jwks` section that points at this stack's JWKS server.
    pub fn remote_jwks() -> Value {
        json!({"cluster": JWKS_CLUSTER, "path": JWKS_PATH})
    }

    /// Envoy's log so far.
    pub fn envoy_log(&self) -> String {
        self.envoy.log()
    }

    /// The admin `/stats` page (plain text, `name: value` per line).
    pub async fn stats(&self) -> String {
        self.client
            .get(format!("http://{}/stats", self.admin))
            .send()
            .await
            .expect("envoy admin /stats")
            .text()
            .await
            .expect("stats body")
    }

    /// The value of counter or gauge `name` (exact), or None when Envoy does not list it.
    pub async fn counter(&self, name: &str) -> Option<u64> {
        self.stats().await.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// The value of filter counter `edgewarden.<name>` as Envoy lists it (`wasmcustom.` prefix), 0 if absent.
    /// The filter sums counts per VM and hands them to Envoy on its timer (every 250 ms, 100 ms with a control
    /// plane), so this first waits out one such period: counts of requests already answered are then in.
    pub async fn filter_counter(&self, name: &str) -> u64 {
        tokio::time::sleep(COUNTER_FLUSH).await;
        self.counter(&format!("wasmcustom.edgewarden.{name}"))
            .await
            .unwrap_or(0)
    }

    /// The value of filter gauge `edgewarden.<name>` (`wasmcustom.` prefix), or None when Envoy does
    /// not list it (a gauge's 0 is a value, so absence is not folded into it).
    pub async fn filter_gauge(&self, name: &str) -> Option<u64> {
        self.counter(&format!("wasmcustom.edgewarden.{name}")).await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- envoy log ({}/envoy.log) ----\n{}\n---- end of envoy log ----",
                self.envoy.dir.display(),
                tail(&self.envoy.log(), 200)
            );
        }
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until Envoy's admin says it is live and its listener accepts connections; panics with the log otherwise.
async fn wait_ready(envoy: &mut EnvoyProcess) -> (SocketAddr, SocketAddr) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let started = Instant::now();
    loop {
        if let Some(status) = envoy.exited() {
            panic!(
                "envoy exited during start with {status}; its log:\n{}",
                envoy.log()
            );
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "envoy not ready after {START_TIMEOUT:?}; its log:\n{}",
            envoy.log()
        );
        if let Some(admin) = envoy.admin_addr() {
            if let Some(listener) = ready_listener(&client, admin).await {
                if TcpStream::connect(listener).is_ok() {
                    return (admin, listener);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The listener's bound address once admin `/ready` answers 200.
async fn ready_listener(client: &reqwest::Client, admin: SocketAddr) -> Option<SocketAddr> {
    let ready = client
        .get(format!("http://{admin}/ready"))
        .send()
        .await
        .ok()?;
    if !ready.status().is_success() {
        return None;
    }
    let listeners: Value = client
        .get(format!("http://{admin}/listeners?format=json"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let socket = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
    let ip = socket["address"].as_str()?;
    let port = socket["port_value"].as_u64()?;
    format!("{ip}:{port}").parse().ok()
}

/// What happened when Envoy was started with a configuration it should refuse.
#[derive(Debug)]
pub struct Refused {
    /// Envoy's exit status.
    pub status: ExitStatus,
    /// Everything Envoy logged.
    pub log: String,
}

/// Starts Envoy with `plugin_config` and expects it to refuse the configuration and exit;
/// panics (with the log) if it comes up and serves instead.
pub async fn start_expecting_refusal(plugin_config: Value) -> Refused {
    let upstream = Upstream::start().await;
    let jwks = JwksServer::start(json!({"keys": []})).await;
    let config = bootstrap(
        &plugin_config.to_string(),
        &filter_wasm(),
        upstream.addr,
        jwks.addr,
        &[],
    );
    let mut envoy = EnvoyProcess::spawn(&config);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let started = Instant::now();
    loop {
        if let Some(status) = envoy.exited() {
            return Refused {
                status,
                log: envoy.log(),
            };
        }
        if let Some(admin) = envoy.admin_addr() {
            if ready_listener(&client, admin).await.is_some() {
                panic!(
                    "envoy accepted a configuration it should refuse and is serving; its log:\n{}",
                    envoy.log()
                );
            }
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "envoy neither refused nor served within {START_TIMEOUT:?}; its log:\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses an upstream echo from a response that reached the upstream.
pub async fn echo(response: reqwest::Response) -> Echo {
    let status = response.status();
    let text = response.text().await.expect("response body");
    assert_eq!(
        status, 200,
        "expected the request to reach the upstream, got {status}: {text}"
    );
    Echo(serde_json::from_str(&text).expect("upstream echo is json"))
}
