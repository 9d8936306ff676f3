//! envoy/istio-wasmplugin.yaml as Istio runs it. The manifest is read as YAML (saphyr), and its `pluginConfig`
//! becomes the bytes istiod hands the filter: `protomarshal.ToJSON` of the `google.protobuf.Struct` (jsonpb:
//! compact, keys sorted, every number a double written by Go's encoding/json, HTML-safe string escapes) in the
//! `configuration` StringValue of a Wasm filter named `<namespace>.<name>`, root id `pluginName`, the V8
//! runtime, the agent's environment variables and `failure_policy` from `failStrategy` (pilot's
//! `WasmPluginWrapper.buildPluginConfig`). A real Envoy with that filter, the clusters the manifest names (a
//! Keycloak-like key server that answers only its own host name, the real admin API as control plane) and two
//! workers as a sidecar has, answers as the manifest's comments promise: anonymous and protected routes, scopes
//! by method, claims forwarded and the token stripped, clock leeway, both issuers, and a revocation through the
//! admin API refused at the edge within seconds. The manifest's other fields are held to what Istio and
//! `cargo xtask package` expect.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgewarden_e2e::stack::{envoy_bin, filter_wasm};
use edgewarden_e2e::{echo, eventually, jwks, now, AdminApi, TestKey, TokenBuilder, Upstream};
use jwt_compact::alg::Es256;
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::{Algorithm, AlgorithmSignature};
use saphyr::{LoadableYamlNode as _, Scalar, Yaml};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The placeholder the manifest carries where an operator puts the edge key.
const API_KEY_PLACEHOLDER: &str = "ewk_replace_with_an_edge_key";
/// How long a revocation may take to reach the edge here (the manifest promises milliseconds; the control-plane
/// tests hold the edge to 2 s).
const REVOCATION_BOUND: Duration = Duration::from_secs(5);

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The manifest as JSON, the form the Kubernetes API server stores it in and istiod reads it from; parsed with
/// saphyr (YAML 1.2 in safe Rust).
fn manifest() -> Value {
    let text = repo_file("envoy/istio-wasmplugin.yaml");
    let documents = Yaml::load_from_str(&text)
        .unwrap_or_else(|e| panic!("envoy/istio-wasmplugin.yaml is not YAML: {e}"));
    assert_eq!(
        documents.len(),
        1,
        "envoy/istio-wasmplugin.yaml should hold one document"
    );
    yaml_to_json(&documents[0], "")
}

/// A YAML node as JSON; `at` is its path, for the message when the manifest holds what JSON cannot.
fn yaml_to_json(node: &Yaml<'_>, at: &str) -> Value {
    match node {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => json!(b),
        Yaml::Value(Scalar::Integer(i)) => json!(i),
        Yaml::Value(Scalar::FloatingPoint(f)) => json!(f.into_inner()),
        Yaml::Value(Scalar::String(s)) => json!(s.as_ref()),
        Yaml::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &format!("{at}[{i}]")))
                .collect(),
        ),
        Yaml::Mapping(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let Yaml::Value(Scalar::String(key)) = key else {
                        panic!("{at}: a key that is not a string ({key:?}): Kubernetes objects are JSON");
                    };
                    let path = format!("{at}.{key}");
                    (key.to_string(), yaml_to_json(value, &path))
                })
                .collect(),
        ),
        other => panic!("{at}: {other:?} has no JSON form (tags, aliases and bad values are not used in a manifest)"),
    }
}

/// `value` as golang/protobuf's jsonpb writes a `google.protobuf.Struct` with no indent, which is what istiod's
/// `protomarshal.ToJSON(pluginConfig)` puts in the filter's `configuration`: no whitespace, object keys sorted,
/// every number a double, strings escaped by Go's encoding/json (HTML-safe).
fn jsonpb(value: &Value) -> String {
    let mut out = String::new();
    write_jsonpb(value, &mut out);
    out
}

fn write_jsonpb(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_float(n.as_f64().expect("a JSON number is finite"))),
        Value::String(s) => go_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jsonpb(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_string(key, out);
                out.push(':');
                write_jsonpb(&map[key], out);
            }
            out.push('}');
        }
    }
}

/// A float64 as Go's encoding/json writes it: shortest round-trip digits, plain notation from 1e-6 up to 1e21,
/// exponent notation (`1e+21`, `1e-7`) outside.
fn go_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{f:e}");
        let (mantissa, exponent) = text.split_once('e').expect("exponent notation");
        match exponent.strip_prefix('-') {
            Some(digits) => format!("{mantissa}e-{digits}"),
            None => format!("{mantissa}e+{exponent}"),
        }
    } else {
        format!("{f}")
    }
}

/// A string as Go's encoding/json writes it with HTML escaping on (the default `json.Marshal` uses).
fn go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)))
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The Envoy filter istiod builds from the WasmPlugin, with the module where Istio's agent puts the image it
/// pulled (a local file) and `configuration` the jsonpb string of `pluginConfig`.
fn istio_wasm_filter(manifest: &Value, configuration: &str, wasm: &Path) -> Value {
    let spec = &manifest["spec"];
    let name = format!(
        "{}.{}",
        manifest["metadata"]["namespace"]
            .as_str()
            .expect("metadata.namespace"),
        manifest["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
    );
    let failure_policy = match spec["failStrategy"].as_str().unwrap_or("FAIL_CLOSE") {
        "FAIL_CLOSE" => "FAIL_CLOSED",
        "FAIL_OPEN" => "FAIL_OPEN",
        "FAIL_RELOAD" => "FAIL_RELOAD",
        other => panic!("failStrategy {other} is not one Istio knows"),
    };
    let mut environment = json!({"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"});
    if let Some(policy) = spec["imagePullPolicy"].as_str() {
        environment["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = json!(policy);
    }
    json!({
        "name": format!("extenstions.istio.io/wasmplugin/{name}"),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": spec["pluginName"].as_str().unwrap_or_default(),
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.display().to_string()}},
                    "environment_variables": {"key_values": environment},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "failure_policy": failure_policy,
            }
        }
    })
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

/// A sidecar-like Envoy: one inbound listener with `filter` then the router, and static clusters.
fn bootstrap(filter: Value, clusters: &[(&str, SocketAddr)]) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "virtualInbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound_0.0.0.0_8080",
                        "route_config": {"name": "inbound", "virtual_hosts": [{
                            "name": "inbound", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound|8080||", "timeout": "10s"}}]
                        }]},
                        "http_filters": [
                            filter,
                            {"name": "envoy.filters.http.router",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                        ]
                    }
                }]}]
            }],
            "clusters": clusters.iter().map(|(name, addr)| cluster(name, *addr)).collect::<Vec<_>>()
        }
    })
}

/// Envoy started with a bootstrap, with two workers (two wasm VMs, as a sidecar runs); killed on drop, its
/// log printed when the test fails.
struct Envoy {
    child: Child,
    dir: PathBuf,
    listener: SocketAddr,
}

impl Envoy {
    async fn start(config: &Value) -> Envoy {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/e2e-runs")
            .join(format!("istio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the run directory");
        let config_path = dir.join("envoy.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(config).expect("json"),
        )
        .expect("write the envoy config");
        let log = std::fs::File::create(dir.join("envoy.log")).expect("create the envoy log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args([
                "--concurrency",
                "2",
                "-l",
                "warning",
                "--disable-hot-restart",
            ])
            .arg("--admin-address-path")
            .arg(dir.join("admin-address"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let mut envoy = Envoy {
            child,
            dir,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        envoy.listener = envoy.wait_ready().await;
        envoy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> SocketAddr {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                panic!("envoy refused the Istio-shaped configuration and exited with {status}; its log:\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "envoy not ready after 60 s; its log:\n{}",
                self.log()
            );
            let admin = std::fs::read_to_string(self.dir.join("admin-address"))
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            if let Some(admin) = admin {
                let ready = client.get(format!("http://{admin}/ready")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    let listeners: Option<Value> = match client
                        .get(format!("http://{admin}/listeners?format=json"))
                        .send()
                        .await
                    {
                        Ok(r) => r.json().await.ok(),
                        Err(_) => None,
                    };
                    let socket = listeners.as_ref().map(|l| {
                        l["listener_statuses"][0]["local_address"]["socket_address"].clone()
                    });
                    if let Some(port) = socket.as_ref().and_then(|s| s["port_value"].as_u64()) {
                        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
                        if TcpStream::connect(addr).is_ok() {
                            return addr;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- envoy log ({}/envoy.log) ----\n{}",
                self.dir.display(),
                lines[lines.len().saturating_sub(200)..].join("\n")
            );
        }
    }
}

/// A key server that, like Keycloak behind virtual hosting, serves its key set only at `path` for `host`,
/// and remembers every `Host` it was asked for.
struct KeyServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Site {
    host: String,
    path: String,
    keys: Value,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn serve_keys(State(site): State<Site>, request: Request) -> impl IntoResponse {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    site.seen.lock().expect("lock").push(host.clone());
    if host == site.host && request.uri().path() == site.path {
        (StatusCode::OK, Json(site.keys.clone()))
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such site"})),
        )
    }
}

impl KeyServer {
    async fn start(host: &str, path: &str, keys: Value) -> KeyServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let site = Site {
            host: host.to_owned(),
            path: path.to_owned(),
            keys,
            seen: Arc::clone(&seen),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let router = Router::new().fallback(serve_keys).with_state(site);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        KeyServer { addr, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A token of the manifest's first issuer, signed with the public demo key (envoy/demo-keys/) its inline JWKS
/// holds: `sub`, `scope`, expiring `exp_in` seconds from now.
fn demo_token(issuer: &str, audience: &str, subject: &str, scope: &str, exp_in: i64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = now();
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "demo-es256"});
    let claims = json!({
        "iss": issuer, "aud": audience, "sub": subject, "scope": scope,
        "iat": now.saturating_add_signed(exp_in.min(0) - 60), "exp": now.saturating_add_signed(exp_in),
        "jti": format!("istio-{now}-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let text = repo_file("envoy/demo-keys/demo-es256.private.jwk.json");
    let jwk: JsonWebKey<'_> = serde_json::from_str(&text).expect("the demo key is a JWK");
    let key: <Es256 as Algorithm>::SigningKey = (&jwk).try_into().expect("an ES256 private key");
    let signature = Es256.sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_bytes()))
}

/// One request through the edge and what came back.
#[derive(Debug)]
struct Answer {
    status: u16,
    challenge: String,
    body: String,
}

struct Edge {
    client: reqwest::Client,
    listener: SocketAddr,
}

impl Edge {
    async fn send(&self, method: &str, path: &str, token: Option<&str>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .client
            .request(method.clone(), format!("http://{}{path}", self.listener));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} through envoy failed: {e}"));
        let status = response.status().as_u16();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.text().await.unwrap_or_default();
        Answer {
            status,
            challenge,
            body,
        }
    }

    async fn expect(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        status: u16,
        what: &str,
    ) -> Answer {
        let answer = self.send(method, path, token).await;
        assert_eq!(
            answer.status, status,
            "{what}: {method} {path} answered {answer:?}"
        );
        answer
    }
}

#[test]
fn jsonpb_writes_what_go_writes() {
    let value = json!({
        "b": [1, 300, 10000, 1.5, -0.25, 1e21, 0.0000001, 123456789012.0],
        "a": {"z": true, "y": null, "x": "<a href=\"x\">&\n\t\u{1}\u{2028}"},
        "on_stale": "deny",
    });
    assert_eq!(
        jsonpb(&value),
        r#"{"a":{"x":"\u003ca href=\"x\"\u003e\u0026\n\t\u0001\u2028","y":null,"z":true},"b":[1,300,10000,1.5,-0.25,1e+21,1e-7,123456789012],"on_stale":"deny"}"#
    );
}

#[test]
fn the_manifest_agrees_with_istio_and_with_cargo_xtask_package() {
    let manifest = manifest();
    assert_eq!(manifest["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(manifest["kind"], "WasmPlugin");
    let spec = &manifest["spec"];
    // The image `cargo xtask package` writes: its name and default tag (the workspace version).
    let url = spec["url"].as_str().expect("spec.url");
    let image = url
        .strip_prefix("oci://")
        .unwrap_or_else(|| panic!("spec.url should be the packaged OCI image, is {url}"));
    assert!(
        image.ends_with(&format!("/edgewarden-filter:{}", env!("CARGO_PKG_VERSION"))),
        "spec.url should name the image and tag `cargo xtask package` writes (edgewarden-filter:{}), names {image}",
        env!("CARGO_PKG_VERSION")
    );
    // A committed digest would pin one build and refuse every later one: the manifest says where to get it.
    assert!(
        spec.get("sha256").is_none(),
        "spec.sha256 pins one build; leave it to the operator (it is target/oci/image.sha256)"
    );
    let text = repo_file("envoy/istio-wasmplugin.yaml");
    for needle in ["cargo xtask package", "target/oci/image.sha256"] {
        assert!(
            text.contains(needle),
            "the manifest should tell operators about {needle}"
        );
    }
    // Claims are forwarded before Istio's own authn/authz filters see the request.
    assert_eq!(spec["phase"], "AUTHN");
    // Inbound only: on outbound listeners the filter would demand tokens on the workload's own calls.
    assert_eq!(spec["match"], json!([{"mode": "SERVER"}]));
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert!(
        spec["selector"]["matchLabels"]
            .as_object()
            .is_some_and(|labels| !labels.is_empty()),
        "a selector, so the plugin does not land on every workload of the namespace"
    );
    assert!(
        matches!(spec["type"].as_str(), None | Some("HTTP")),
        "an HTTP filter"
    );
    assert!(
        spec.get("pluginName").is_none(),
        "the filter does not read a root id; the Envoy test runs it with the empty one Istio then sets"
    );
    assert_eq!(
        spec["pluginConfig"]["control_plane"]["api_key"], API_KEY_PLACEHOLDER,
        "the api_key is a placeholder, never a real key"
    );
}

#[tokio::test]
async fn the_istio_manifest_loaded_as_istio_loads_it_keeps_every_promise() {
    let manifest = manifest();
    let mut plugin_config = manifest["spec"]["pluginConfig"].clone();
    let demo = plugin_config["issuers"][0].clone();
    let keycloak = plugin_config["issuers"][1].clone();
    let control_plane = plugin_config["control_plane"].clone();
    let issuer = demo["issuer"]
        .as_str()
        .expect("issuers[0].issuer")
        .to_owned();
    let audience = demo["audiences"][0]
        .as_str()
        .expect("issuers[0].audiences")
        .to_owned();
    let edge_name = control_plane["edge_name"]
        .as_str()
        .expect("control_plane.edge_name");
    let realm = plugin_config["realm"].as_str().expect("realm").to_owned();

    // The control plane: the real admin API, an edge key bound to the manifest's edge name, and the demo issuer
    // trusted, so a leaked demo token can be revoked by presenting it.
    let admin = AdminApi::start().await;
    let edge_key = admin
        .post(
            "/api/v1/api-keys",
            &json!({"role": "edge", "name": edge_name, "edges": [edge_name]}),
        )
        .await
        .expect(201, "create the edge key the manifest's comment describes")
        .body["key"]
        .as_str()
        .expect("the new key")
        .to_owned();
    admin
        .post(
            "/api/v1/issuers",
            &json!({"issuer": issuer, "jwks": demo["jwks"]}),
        )
        .await
        .expect(201, "trust the manifest's demo issuer");
    assert_eq!(control_plane["api_key"], API_KEY_PLACEHOLDER);
    plugin_config["control_plane"]["api_key"] = json!(edge_key);

    // Keycloak: its key set, served only to the authority the manifest configures.
    let authority = keycloak["remote_jwks"]["authority"]
        .as_str()
        .expect("remote_jwks.authority");
    let key_server = KeyServer::start(
        authority,
        keycloak["remote_jwks"]["path"]
            .as_str()
            .expect("remote_jwks.path"),
        jwks(&[TestKey::Es256A]),
    )
    .await;

    let configuration = jsonpb(&plugin_config);
    let upstream = Upstream::start().await;
    let filter = istio_wasm_filter(&manifest, &configuration, &filter_wasm());
    let config = bootstrap(
        filter,
        &[
            ("inbound|8080||", upstream.addr),
            (
                keycloak["remote_jwks"]["cluster"]
                    .as_str()
                    .expect("remote_jwks.cluster"),
                key_server.addr,
            ),
            (
                control_plane["cluster"]
                    .as_str()
                    .expect("control_plane.cluster"),
                admin.addr,
            ),
        ],
    );
    let envoy = Envoy::start(&config).await;
    let ready_at = Instant::now();
    let edge = Edge {
        client: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("http client"),
        listener: envoy.listener,
    };

    // /public is anonymous; every /api route asks for a token with the realm's challenge.
    edge.expect("GET", "/public/hello", None, 200, "anonymous route")
        .await;
    let missing = edge
        .expect("GET", "/api/orders", None, 401, "no token")
        .await;
    assert_eq!(missing.challenge, format!(r#"Bearer realm="{realm}""#));

    // Until the first sync with the control plane, on_stale (deny) applies to requests with tokens.
    let reader = demo_token(&issuer, &audience, "alice", "read", 600);
    eventually(
        "a read token passes once the edge has synced",
        Duration::from_secs(15),
        || async {
            let answer = edge.send("GET", "/api/orders", Some(&reader)).await;
            if answer.status == 200 {
                Ok(())
            } else {
                Err(format!("{answer:?}"))
            }
        },
    )
    .await;
    let synced_after = ready_at.elapsed();

    // Claims forwarded, client copies replaced, the token stripped.
    let forwarded = echo(
        edge.client
            .get(format!("http://{}/api/orders", edge.listener))
            .bearer_auth(&reader)
            .header("x-edgewarden-sub", "mallory")
            .send()
            .await
            .expect("request through envoy"),
    )
    .await;
    assert_eq!(forwarded.header_values("x-edgewarden-sub"), ["alice"]);
    assert_eq!(
        forwarded.header("x-edgewarden-scope").as_deref(),
        Some("read")
    );
    assert_eq!(
        forwarded.header("authorization"),
        None,
        "strip_token: the token must not reach the workload"
    );

    // Scopes by route and method.
    let writer = demo_token(&issuer, &audience, "bob", "read write", 600);
    let administrator = demo_token(&issuer, &audience, "carol", "admin", 600);
    let refused = edge
        .expect(
            "POST",
            "/api/orders",
            Some(&reader),
            403,
            "a write with a read token",
        )
        .await;
    assert!(
        refused.challenge.contains("insufficient_scope"),
        "{refused:?}"
    );
    edge.expect(
        "POST",
        "/api/orders",
        Some(&writer),
        200,
        "a write with a write token",
    )
    .await;
    edge.expect(
        "DELETE",
        "/api/orders/7",
        Some(&writer),
        200,
        "a delete with a write token",
    )
    .await;
    edge.expect(
        "GET",
        "/api/admin/users",
        Some(&reader),
        403,
        "admin route, read token",
    )
    .await;
    edge.expect(
        "PUT",
        "/api/admin/users",
        Some(&writer),
        403,
        "admin route, any method",
    )
    .await;
    edge.expect(
        "GET",
        "/api/admin/users",
        Some(&administrator),
        200,
        "admin route, admin token",
    )
    .await;
    edge.expect(
        "GET",
        "/apiary",
        None,
        401,
        "no rule matches: a token is needed",
    )
    .await;
    edge.expect(
        "GET",
        "/apiary",
        Some(&administrator),
        200,
        "no rule matches: any valid token",
    )
    .await;

    // clock_skew_seconds: 60.
    let just_expired = demo_token(&issuer, &audience, "dave", "read", -30);
    edge.expect(
        "GET",
        "/api/orders",
        Some(&just_expired),
        200,
        "expired 30 s ago, within the leeway",
    )
    .await;
    let long_expired = demo_token(&issuer, &audience, "dave", "read", -120);
    let expired = edge
        .expect(
            "GET",
            "/api/orders",
            Some(&long_expired),
            401,
            "expired 120 s ago",
        )
        .await;
    assert!(expired.challenge.contains("expired"), "{expired:?}");
    assert!(
        expired.body.contains("invalid_token"),
        "the JSON error body names the error: {expired:?}"
    );

    // The second issuer: keys fetched through the Istio-named cluster from the configured authority.
    let keycloak_token = TokenBuilder::new(TestKey::Es256A)
        .claim(
            "iss",
            keycloak["issuer"].as_str().expect("issuers[1].issuer"),
        )
        .claim(
            "aud",
            keycloak["audiences"][0]
                .as_str()
                .expect("issuers[1].audiences"),
        )
        .scope("read")
        .sign();
    edge.expect(
        "GET",
        "/api/orders",
        Some(&keycloak_token),
        200,
        "a Keycloak token",
    )
    .await;
    assert!(
        key_server.seen().iter().all(|host| host == authority),
        "the key set was fetched with Host {:?}, not {authority}",
        key_server.seen()
    );

    // A revocation through the admin API reaches both workers' VMs.
    let leaked = demo_token(&issuer, &audience, "erin", "read", 600);
    edge.expect(
        "GET",
        "/api/orders",
        Some(&leaked),
        200,
        "before the revocation",
    )
    .await;
    admin
        .post(
            "/api/v1/revocations",
            &json!({"token": leaked, "reason": "leaked in a paste"}),
        )
        .await
        .expect(201, "revoke the leaked demo token by presenting it");
    let (_, revoked_after) = eventually(
        "the edge refuses the revoked token",
        REVOCATION_BOUND,
        || async {
            // Fresh connections spread over both workers; ten refusals in a row.
            for _ in 0..10 {
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .build()
                    .expect("client");
                let response = client
                    .get(format!("http://{}/api/orders", edge.listener))
                    .bearer_auth(&leaked)
                    .header("connection", "close")
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let challenge = response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if response.status() != 401 || !challenge.contains("revoked") {
                    return Err(format!("{} {challenge}", response.status()));
                }
            }
            Ok(())
        },
    )
    .await;
    edge.expect(
        "GET",
        "/api/orders",
        Some(&reader),
        200,
        "other tokens still pass",
    )
    .await;

    // The admin API knows the edge by the manifest's name.
    assert!(
        admin.edge(edge_name).await.is_some(),
        "the admin API lists no edge {edge_name}: {:?}",
        admin.edges().await
    );
    eprintln!(
        "istio manifest: configuration {} bytes of jsonpb; first sync {synced_after:.2?} after Envoy was ready; revocation refused on every worker {revoked_after:.2?} after the admin API's 201",
        configuration.len()
    );
    assert!(
        !envoy.log().contains("panicked"),
        "the filter panicked:\n{}",
        envoy.log()
    );
}
