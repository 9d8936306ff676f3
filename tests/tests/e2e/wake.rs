//! A revocation reaches every worker of a four-worker Envoy at once (issue 11): the VM polling the feed wakes
//! the others through their shared queues, so no worker waits for its 100 ms tick. Each round revokes a fresh
//! token through the real admin API and sends requests on fresh connections (the kernel spreads them over the
//! workers) until sixteen in a row are refused; the time from the 201 to the first of them is when every
//! worker refuses the token. With the tick alone its median over the rounds is about 80 ms (the latest of three
//! followers' ticks); the test holds it well below that.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgewarden_e2e::stack::envoy_bin;
use edgewarden_e2e::{
    AdminApi, Issued, Stack, TokenRequest, AUDIENCE, CONTROL_PLANE_CLUSTER, EDGE_NAME, JWKS_PATH,
};
use serde_json::{json, Value};

/// Envoy workers (`--concurrency`): one polls the feed, three follow it.
const WORKERS: usize = 4;
/// Consecutive refusals on fresh connections that count as every worker refusing: a stale worker escapes
/// sixteen connections with a chance of (3/4)^16, about 1%.
const STREAK: usize = 16;
/// Revocations measured.
const ROUNDS: usize = 15;
/// The median time until every worker refuses must stay under this: far below the old tick's 100 ms
/// (its median with three followers is about 80 ms) and far above what a wake-up takes.
const MEDIAN_BOUND: Duration = Duration::from_millis(30);
/// A round whose revocation is not refused everywhere within this long fails outright.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// The plugin configuration: the admin API as issuer, control plane and feed, default revocation settings.
fn config(admin: &AdminApi) -> Value {
    json!({
        "issuers": [{
            "issuer": admin.issuer(),
            "audiences": [AUDIENCE],
            "remote_jwks": {"cluster": CONTROL_PLANE_CLUSTER, "path": JWKS_PATH},
        }],
        "control_plane": {"cluster": CONTROL_PLANE_CLUSTER, "api_key": admin.edge_key, "edge_name": EDGE_NAME},
        "realm": "e2e",
    })
}

/// An Envoy with [`WORKERS`] workers on a listener port of its own; killed on drop.
struct Workers {
    child: Child,
    listener: SocketAddr,
    log: PathBuf,
    /// Where Envoy writes its admin address (port 0: Envoy picks one).
    admin_address: PathBuf,
    /// Keeps no idle connection, so every request opens a fresh one.
    client: reqwest::Client,
}

impl Workers {
    /// Starts Envoy with `bootstrap` (the e2e stack's, its listener moved to a free port) and `WORKERS` workers.
    fn start(mut bootstrap: Value) -> Workers {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] =
            json!(port);
        let dir = std::env::temp_dir().join(format!(
            "edgewarden-e2e-wake-{}-{}",
            std::process::id(),
            port
        ));
        std::fs::create_dir_all(&dir).expect("run dir");
        let config = dir.join("envoy.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&bootstrap).expect("json"),
        )
        .expect("write the envoy config");
        let log = dir.join("envoy.log");
        let admin_address = dir.join("admin-address");
        let out = std::fs::File::create(&log).expect("create the envoy log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &WORKERS.to_string(), "-l", "warning"])
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_address)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("start envoy");
        let listener = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(listener).is_err() {
            assert!(
                Instant::now() < deadline,
                "envoy with {WORKERS} workers did not listen within 30 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        Workers {
            child,
            listener,
            log,
            admin_address,
            client,
        }
    }

    /// The status Envoy answers `GET /` with `token`, on a connection of its own.
    async fn status(&self, token: &str) -> u16 {
        let response = self
            .client
            .get(format!("http://{}/", self.listener))
            .bearer_auth(token)
            .header("connection", "close")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET / through envoy failed: {e}; log: {}", self.log()));
        response.status().as_u16()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The filter's wake and poll counters from Envoy's admin `/stats`, for a failure message.
    async fn sync_stats(&self) -> String {
        let Ok(address) = std::fs::read_to_string(&self.admin_address) else {
            return "no admin address".to_string();
        };
        let stats = match self
            .client
            .get(format!("http://{}/stats?filter=edgewarden", address.trim()))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => return format!("admin /stats failed: {e}"),
        };
        stats
            .lines()
            .filter(|l| l.contains("revocation_wakes") || l.contains("revocation_polls"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `token` on fresh connections until `STREAK` answers in a row are `want`; returns when the first
/// answer `want` came and when the streak began, measured from `since`, and how many requests were sent.
async fn streak(
    envoy: &Workers,
    token: &Issued,
    want: u16,
    since: Instant,
) -> (Duration, Duration, usize) {
    let mut first: Option<Duration> = None;
    let mut began: Option<Duration> = None;
    let mut count = 0;
    let mut sent = 0;
    loop {
        let status = envoy.status(&token.access_token).await;
        let at = since.elapsed();
        sent += 1;
        assert!(
            at < ROUND_TIMEOUT,
            "not {STREAK} answers {want} in a row within {ROUND_TIMEOUT:?} (last {status}); log: {}",
            envoy.log()
        );
        if status == want {
            first.get_or_insert(at);
            began.get_or_insert(at);
            count += 1;
            if count >= STREAK {
                return (first.unwrap_or(at), began.unwrap_or(at), sent);
            }
        } else {
            began = None;
            count = 0;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_worker_without_waiting_for_a_tick() {
    let admin = AdminApi::start().await;
    // The e2e stack's bootstrap (filter, clusters, upstream), run again with four workers.
    let bootstrap = Arc::new(Mutex::new(Value::Null));
    let mut stack = {
        let bootstrap = Arc::clone(&bootstrap);
        Stack::start_customised(
            config(&admin),
            json!({"keys": []}),
            &[(CONTROL_PLANE_CLUSTER, admin.addr)],
            move |config, _| *bootstrap.lock().expect("lock") = config.clone(),
        )
        .await
    };
    stack.kill_envoy();
    let bootstrap = bootstrap.lock().expect("lock").clone();
    let envoy = Workers::start(bootstrap);

    let warmup = admin.issue(&TokenRequest::new("wake-warmup")).await;
    streak(&envoy, &warmup, 200, Instant::now()).await;

    let mut everywhere = Vec::with_capacity(ROUNDS);
    let mut rounds = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let token = admin.issue(&TokenRequest::new(&format!("wake-{i}"))).await;
        assert_eq!(
            envoy.status(&token.access_token).await,
            200,
            "before its revocation"
        );
        admin.revoke_jti(&token.jti).await;
        let acknowledged = Instant::now();
        let (first, all, sent) = streak(&envoy, &token, 401, acknowledged).await;
        everywhere.push(all);
        rounds.push(format!(
            "first 401 {:.1} ms, every worker {:.1} ms, {sent} requests",
            first.as_secs_f64() * 1000.0,
            all.as_secs_f64() * 1000.0
        ));
    }
    everywhere.sort();
    let median = everywhere[ROUNDS / 2];
    // Counters lag by one tick: wait for one so a failure shows what the wake-ups did.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let stats = envoy.sync_stats().await;
    assert!(
        median < MEDIAN_BOUND,
        "every worker refused a revoked token after a median of {median:?} (bound {MEDIAN_BOUND:?}): {rounds:#?}\n{stats}\nenvoy log: {}",
        envoy.log()
    );
    assert!(
        stats.contains("revocation_wakes_sent") && !stats.contains("revocation_wakes_sent: 0"),
        "the poller counted no wake-up sent: {stats}"
    );
    eprintln!("{stats}");
    eprintln!("{WORKERS} workers: {rounds:#?}");
}
