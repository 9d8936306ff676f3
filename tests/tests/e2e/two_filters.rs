//! Two EdgeWarden filters in one Envoy (issue 15): two listeners, each with its own plugin configuration, in the
//! same VM (`vm_id`), as an operator runs a public and an internal listener. With a `stat_prefix` each, their
//! counters stay apart and each has gauges of its own that never take the other's values: `alpha` syncs from the
//! real admin API, `beta`'s control plane is down, and the gauges say so, read after read.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgewarden_e2e::stack::{envoy_bin, filter_wasm};
use edgewarden_e2e::{eventually, AdminApi, TestKey, TokenBuilder, Upstream, EDGE_NAME};
use serde_json::{json, Value};

use crate::base_config;

fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}
        }}}]}]}
    })
}

/// A listener named `name` whose only HTTP filter before the router is EdgeWarden with `plugin_config`.
fn listener(name: &str, plugin_config: &Value) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"name": name, "virtual_hosts": [{
                    "name": name, "domains": ["*"],
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
                                // The same VM for both plugins: the case where they could also share state.
                                "vm_config": {
                                    "vm_id": "edgewarden",
                                    "runtime": "envoy.wasm.runtime.v8",
                                    "code": {"local": {"filename": filter_wasm().display().to_string()}}
                                },
                                "configuration": {
                                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                                    "value": plugin_config.to_string()
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
    })
}

/// The plugin configuration of one instance: the e2e issuer with inline keys, a control plane through
/// `cluster`, polls that never wait (so a healthy feed keeps the staleness gauge at 0 or 1).
fn instance(stat_prefix: &str, cluster: &str, edge_key: &str) -> Value {
    let mut config = base_config();
    config["stat_prefix"] = json!(stat_prefix);
    config["control_plane"] =
        json!({"cluster": cluster, "api_key": edge_key, "edge_name": EDGE_NAME});
    config["revocation"] =
        json!({"poll_interval_ms": 200, "long_poll_seconds": 0, "on_stale": "deny"});
    config["usage"] = json!({"flush_interval_ms": 500});
    config
}

/// Envoy with the two listeners; killed on drop, its log printed if the test fails.
struct TwoFilterEnvoy {
    child: Child,
    dir: PathBuf,
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    client: reqwest::Client,
}

impl TwoFilterEnvoy {
    async fn start(bootstrap: &Value) -> TwoFilterEnvoy {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/e2e-runs")
            .join(format!("two-filters-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(bootstrap).unwrap()).unwrap();
        let log = File::create(dir.join("envoy.log")).unwrap();
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
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut envoy = TwoFilterEnvoy {
            child,
            dir,
            admin: "127.0.0.1:0".parse().unwrap(),
            listeners: Vec::new(),
            client,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited during start with {status}:\n{}", envoy.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "envoy not ready:\n{}",
                envoy.log()
            );
            if let Some(listeners) = envoy.ready().await {
                envoy.listeners = listeners;
                return envoy;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Both listeners' addresses once admin `/ready` answers 200.
    async fn ready(&mut self) -> Option<Vec<(String, SocketAddr)>> {
        let admin: SocketAddr = std::fs::read_to_string(self.dir.join("admin-address"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        self.admin = admin;
        let ready = self
            .client
            .get(format!("http://{admin}/ready"))
            .send()
            .await
            .ok()?;
        if !ready.status().is_success() {
            return None;
        }
        let listeners: Value = self
            .client
            .get(format!("http://{admin}/listeners?format=json"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let found: Vec<(String, SocketAddr)> = listeners["listener_statuses"]
            .as_array()?
            .iter()
            .filter_map(|l| {
                let socket = &l["local_address"]["socket_address"];
                let addr = format!(
                    "{}:{}",
                    socket["address"].as_str()?,
                    socket["port_value"].as_u64()?
                );
                Some((l["name"].as_str()?.to_string(), addr.parse().ok()?))
            })
            .collect();
        (found.len() == 2).then_some(found)
    }

    fn url(&self, listener: &str, path: &str) -> String {
        let addr = self
            .listeners
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
            .unwrap();
        format!("http://{addr}{path}")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// The value of `wasmcustom.edgewarden.<name>` (counter or gauge), None when Envoy does not list it.
    async fn stat(&self, name: &str) -> Option<u64> {
        let stats = self
            .client
            .get(format!("http://{}/stats", self.admin))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let full = format!("wasmcustom.edgewarden.{name}");
        stats.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            (n == full).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

impl Drop for TwoFilterEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- envoy log ----\n{}\n---- end ----", self.log());
        }
    }
}

#[tokio::test]
async fn two_filters_in_one_envoy_keep_their_counters_and_gauges_apart() {
    let admin = AdminApi::start().await;
    let upstream = Upstream::start().await;
    // A port nothing listens on: beta's admin API is down from the start.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                listener("alpha", &instance("alpha", "control_plane", &admin.edge_key)),
                listener("beta", &instance("beta", "dead_control_plane", &admin.edge_key)),
            ],
            "clusters": [
                cluster("upstream", upstream.addr),
                cluster("control_plane", admin.addr),
                cluster("dead_control_plane", dead),
            ]
        }
    });
    // One revoked subject, so alpha's state holds one entry and beta's none.
    admin.revoke_subject("mallory").await;
    let envoy = TwoFilterEnvoy::start(&bootstrap).await;

    let token = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    eventually(
        "alpha to sync and let a valid token through",
        Duration::from_secs(15),
        || async {
            let r = envoy
                .client
                .get(envoy.url("alpha", "/read"))
                .bearer_auth(&token)
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    for _ in 0..2 {
        let r = envoy
            .client
            .get(envoy.url("alpha", "/read"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..2 {
        let r = envoy
            .client
            .get(envoy.url("beta", "/read"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }

    // Counters: each instance counts only its own requests.
    eventually(
        "each instance's counters to hold its own requests",
        Duration::from_secs(5),
        || async {
            let seen = (
                envoy.stat("alpha.requests_allowed").await,
                envoy.stat("beta.requests_allowed").await.unwrap_or(0),
                envoy
                    .stat("alpha.requests_denied.missing_token")
                    .await
                    .unwrap_or(0),
                envoy.stat("beta.requests_denied.missing_token").await,
            );
            if seen == (Some(3), 0, 0, Some(2)) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        envoy.stat("requests_allowed").await,
        None,
        "no unprefixed stats with a stat_prefix"
    );

    // Gauges: beta has never synced, so its staleness grows from start-up; alpha's stays at 0 or 1.
    eventually(
        "beta's staleness to pass 3 s",
        Duration::from_secs(15),
        || async {
            match envoy.stat("beta.revocation_staleness_seconds").await {
                Some(s) if s >= 3 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    for _ in 0..8 {
        let alpha = (
            envoy.stat("alpha.revocation_staleness_seconds").await,
            envoy.stat("alpha.revocation_entries").await,
        );
        let beta = (
            envoy.stat("beta.revocation_staleness_seconds").await,
            envoy.stat("beta.revocation_entries").await,
            envoy.stat("beta.revocation_cursor").await,
        );
        assert!(
            matches!(alpha, (Some(0 | 1), Some(1))),
            "alpha's gauges (staleness, entries) took another value: {alpha:?}"
        );
        assert!(
            matches!(beta, (Some(s), Some(0), Some(0)) if s >= 3),
            "beta's gauges (staleness, entries, cursor) took another value: {beta:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(envoy.stat("alpha.revocation_cursor").await.unwrap_or(0) >= 1);
    assert!(
        envoy
            .stat("beta.revocation_poll_failures")
            .await
            .unwrap_or(0)
            >= 1
    );
    assert_eq!(
        envoy
            .stat("alpha.revocation_poll_failures")
            .await
            .unwrap_or(0),
        0
    );
}
