//! `AdminApi::start()`: the real admin API binary (`e2e-admin-api`, compiled from `admin-api/src/main.rs`)
//! serving SQLite from a fresh data directory under `target/e2e-runs/` on a free loopback port, with an
//! admin and an edge API key made by its own CLI and one registered client.
//! Tests issue, refresh and revoke tokens through its HTTP API, read what edges reported, and kill and
//! restart it (same data, port and master key) to see how edges cope; it is killed on drop.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::keys::{AUDIENCE, ISSUER};
use crate::stack::{run_dir, tail};

/// The `iss` of every token the admin API issues (the same issuer the fixture tokens claim).
pub const CONTROL_PLANE_ISSUER: &str = ISSUER;
/// The name the edge reports under: its API key's name and `control_plane.edge_name`.
pub const EDGE_NAME: &str = "e2e-edge";
/// The client registered at start; its tokens carry `client_id: e2e-app`.
pub const E2E_CLIENT: &str = "e2e-app";
/// Scopes the registered client may ask for.
pub const E2E_CLIENT_SCOPES: &[&str] = &["read", "write"];
/// The master key every start uses, so a restart can decrypt the signing keys it made before.
const MASTER_KEY: &str = "5ee1c0de5ee1c0de00112233445566778899aabbccddeeff0f1e2d3c4b5a6978";
/// How long the binary may take to answer `/healthz` (first start runs the migrations).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `e2e-admin-api` executable cargo built for this test binary.
///
/// Cargo puts a package's binaries in the directory above the `deps/` directory holding its test
/// executables; that is where `CARGO_BIN_EXE_e2e-admin-api` points (only integration tests see that
/// variable, this library does not), and the e2e tests check the two agree.
pub fn admin_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in <target>/<profile>/deps/");
    let bin = dir.join(format!("e2e-admin-api{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} does not exist: the admin API binary is built by `cargo test -p edgewarden-e2e` (run the tests with `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// An HTTP answer from the admin API: status and body (JSON when it parses, else `Value::Null`).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body parsed as JSON, `Value::Null` when empty or not JSON.
    pub body: Value,
    /// The body as text.
    pub text: String,
}

impl Answer {
    /// Asserts the status is `status`, saying what the request was for (`what`) and what came back.
    #[track_caller]
    pub fn expect(self, status: u16, what: &str) -> Answer {
        assert_eq!(
            self.status, status,
            "{what}: expected the admin API to answer {status}, got {}: {}",
            self.status, self.text
        );
        self
    }

    /// The body as an issued token pair (from `POST /api/v1/tokens` or `/oauth/token`); the `jti`
    /// comes from the body when given (`/api/v1/tokens`), else from the token's claims (`/oauth/token`).
    #[track_caller]
    pub fn issued(&self) -> Issued {
        let text = |name: &str| self.body[name].as_str().map(str::to_owned);
        let access_token =
            text("access_token").unwrap_or_else(|| panic!("no access_token in {}", self.text));
        let jti = text("jti")
            .or_else(|| claims(&access_token)["jti"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no jti in the body or the token: {}", self.text));
        Issued {
            access_token,
            refresh_token: text("refresh_token"),
            jti,
            expires_in: self.body["expires_in"].as_i64().unwrap_or_default(),
        }
    }

    /// The `items` of a paged list answer.
    #[track_caller]
    pub fn items(&self) -> Vec<Value> {
        self.body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("no items in {}", self.text))
            .clone()
    }
}

/// An access token (and maybe a refresh token) the admin API issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The signed JWT.
    pub access_token: String,
    /// The opaque refresh token, when one was asked for.
    pub refresh_token: Option<String>,
    /// The access token's `jti`.
    pub jti: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

/// What to ask `POST /api/v1/tokens` for; defaults: the registered client, scope `read`, audience
/// [`AUDIENCE`], ten minutes, no refresh token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// `client_id`.
    pub client_id: String,
    /// Scopes (must be allowed for the client).
    pub scopes: Vec<String>,
    /// The `aud` (must be registered for the client).
    pub audience: String,
    /// Lifetime in seconds (at least 1, at most the client's maximum).
    pub ttl_seconds: i64,
    /// Whether to issue a refresh token too.
    pub refresh: bool,
}

impl TokenRequest {
    /// A request for `subject` with the defaults.
    pub fn new(subject: &str) -> TokenRequest {
        TokenRequest {
            subject: subject.to_owned(),
            client_id: E2E_CLIENT.to_owned(),
            scopes: vec!["read".to_owned()],
            audience: AUDIENCE.to_owned(),
            ttl_seconds: 600,
            refresh: false,
        }
    }

    /// Issues for `client_id` instead of the registered default client.
    pub fn client(mut self, client_id: &str) -> TokenRequest {
        self.client_id = client_id.to_owned();
        self
    }

    /// Asks for `scopes` instead of `read`.
    pub fn scopes(mut self, scopes: &[&str]) -> TokenRequest {
        self.scopes = scopes.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Asks for audience `audience`.
    pub fn audience(mut self, audience: &str) -> TokenRequest {
        self.audience = audience.to_owned();
        self
    }

    /// Asks for a lifetime of `seconds`.
    pub fn ttl_seconds(mut self, seconds: i64) -> TokenRequest {
        self.ttl_seconds = seconds;
        self
    }

    /// Asks for a refresh token too.
    pub fn with_refresh(mut self) -> TokenRequest {
        self.refresh = true;
        self
    }
}

/// A running `edgewarden-admin serve` with its keys; killed on drop.
#[derive(Debug)]
pub struct AdminApi {
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    /// An API key with the admin role.
    pub admin_key: String,
    /// An API key with the edge role, named [`EDGE_NAME`]: put it in `control_plane.api_key`.
    pub edge_key: String,
    /// The secret of the registered client [`E2E_CLIENT`].
    pub client_secret: String,
    bin: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    client: reqwest::Client,
}

impl AdminApi {
    /// Creates a data directory and the two API keys with the CLI, serves the API on a free
    /// loopback port, waits until `/healthz` answers, and registers the client [`E2E_CLIENT`].
    pub async fn start() -> AdminApi {
        let bin = admin_bin();
        let dir = run_dir();
        std::fs::create_dir_all(dir.join("data")).expect("create the admin data directory");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("http client");
        let mut admin = AdminApi {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin_key: String::new(),
            edge_key: String::new(),
            client_secret: String::new(),
            bin,
            dir,
            child: None,
            client,
        };
        admin.admin_key = admin.create_api_key("admin", "e2e-admin");
        admin.edge_key = admin.create_api_key("edge", EDGE_NAME);
        admin.spawn_and_wait().await;
        admin.client_secret = admin.create_client(E2E_CLIENT, E2E_CLIENT_SCOPES).await;
        admin
    }

    /// The issuer its tokens carry (`--issuer`).
    pub fn issuer(&self) -> &'static str {
        CONTROL_PLANE_ISSUER
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The directory holding its data (`data/`) and its log (`admin.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the process logged so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin.log")).unwrap_or_default()
    }

    /// Whether the process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// SIGKILLs the process (no shutdown hook runs), reaps it and waits until its port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the admin API was killed but {} still accepts connections after 5s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process if it runs, then serves again on the same port, data directory and
    /// master key, and waits until `/healthz` answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait().await;
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        // A clean environment: a DATABASE_URL or EDGEWARDEN_* of the caller must not leak in.
        command
            .env_clear()
            .env("EDGEWARDEN_DATA_DIR", self.dir.join("data"))
            .env("EDGEWARDEN_MASTER_KEY", MASTER_KEY)
            .env("EDGEWARDEN_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    /// Runs `api-key create` and returns the key it prints on stdout.
    fn create_api_key(&self, role: &str, name: &str) -> String {
        let output = self
            .command()
            .args(["api-key", "create", "--role", role, "--name", name])
            .output()
            .expect("run e2e-admin-api api-key create");
        assert!(
            output.status.success(),
            "`api-key create --role {role} --name {name}` failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            key.starts_with("ewk_") && !key.contains(char::is_whitespace),
            "`api-key create` should print exactly one key on stdout, printed {key:?}"
        );
        key
    }

    /// Creates a dashboard user with `user create` on the same data directory and environment as the
    /// running server (which sees the user at once: they share the database). `role` is `admin` or
    /// `auditor`; `password` must have at least 12 characters.
    pub fn create_user(&self, username: &str, password: &str, role: &str) {
        let output = self
            .command()
            .args(["user", "create", "--username", username, "--role", role])
            // Through the environment the CLI reads it from, not argv, as an operator would.
            .env("EDGEWARDEN_USER_PASSWORD", password)
            .output()
            .expect("run e2e-admin-api user create");
        assert!(
            output.status.success(),
            "`user create --username {username} --role {role}` failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn spawn_and_wait(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("admin.log"))
            .expect("open the admin log");
        let log_err: File = log.try_clone().expect("clone the admin log handle");
        let child = self
            .command()
            .args([
                "serve",
                "--listen",
                &self.addr.to_string(),
                "--issuer",
                CONTROL_PLANE_ISSUER,
                "--no-bootstrap-admin",
            ])
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("start e2e-admin-api serve");
        self.child = Some(child);
        let health = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the admin API exited during start with {status}; its log:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = health.get(self.url("/healthz")).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the admin API did not answer /healthz on {} within {START_TIMEOUT:?}; its log:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `method path` with `Authorization: Bearer <key>` and an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self
            .client
            .request(method.clone(), self.url(path))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} to the admin API failed: {e}"));
        answer(response).await
    }

    /// `GET path` with the admin key.
    pub async fn get(&self, path: &str) -> Answer {
        self.call(reqwest::Method::GET, path, &self.admin_key, None)
            .await
    }

    /// `POST path` with a JSON body and the admin key.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.call(reqwest::Method::POST, path, &self.admin_key, Some(body))
            .await
    }

    /// Registers client `client_id` (audience [`AUDIENCE`], tokens up to an hour) and returns its secret.
    pub async fn create_client(&self, client_id: &str, scopes: &[&str]) -> String {
        let answer = self
            .post(
                "/api/v1/clients",
                &json!({"client_id": client_id, "allowed_scopes": scopes, "audiences": [AUDIENCE], "max_lifetime_seconds": 3600}),
            )
            .await
            .expect(201, &format!("register client {client_id}"));
        answer.body["client_secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no client_secret in {}", answer.text))
            .to_owned()
    }

    /// Issues a token with `POST /api/v1/tokens` (admin key); panics unless it answers 200.
    pub async fn issue(&self, request: &TokenRequest) -> Issued {
        let body = json!({
            "subject": request.subject,
            "client_id": request.client_id,
            "scopes": request.scopes,
            "audience": request.audience,
            "ttl_seconds": request.ttl_seconds,
            "refresh": request.refresh,
        });
        self.post("/api/v1/tokens", &body)
            .await
            .expect(200, &format!("issue a token {body}"))
            .issued()
    }

    /// Issues a token for `subject` with the defaults of [`TokenRequest::new`].
    pub async fn issue_for(&self, subject: &str) -> Issued {
        self.issue(&TokenRequest::new(subject)).await
    }

    /// `POST /api/v1/revocations` with `target` (`{"jti"}`, `{"subject"}` or `{"client_id"}`); panics
    /// unless it answers 201, returns the stored revocation (with its feed `cursor`).
    pub async fn revoke(&self, target: Value) -> Value {
        let mut body = target;
        body["reason"] = json!("e2e test");
        self.post("/api/v1/revocations", &body)
            .await
            .expect(201, &format!("revoke {body}"))
            .body
    }

    /// Revokes one token by its `jti`.
    pub async fn revoke_jti(&self, jti: &str) -> Value {
        self.revoke(json!({"jti": jti})).await
    }

    /// Revokes every token of `subject` issued up to now.
    pub async fn revoke_subject(&self, subject: &str) -> Value {
        self.revoke(json!({"subject": subject})).await
    }

    /// Revokes every token of client `client_id` issued up to now.
    pub async fn revoke_client(&self, client_id: &str) -> Value {
        self.revoke(json!({"client_id": client_id})).await
    }

    /// `POST /oauth/token` with `grant_type=refresh_token` as the registered client; the raw answer
    /// (200 with a new pair, or 400 `invalid_grant` for a spent or revoked refresh token).
    pub async fn refresh(&self, refresh_token: &str) -> Answer {
        self.refresh_as(E2E_CLIENT, &self.client_secret, refresh_token)
            .await
    }

    /// `POST /oauth/token` with `grant_type=refresh_token`, authenticated as `client_id` (HTTP Basic).
    pub async fn refresh_as(&self, client_id: &str, secret: &str, refresh_token: &str) -> Answer {
        let response = self
            .client
            .post(self.url("/oauth/token"))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /oauth/token to the admin API failed: {e}"));
        answer(response).await
    }

    /// `GET /api/v1/revocations/feed?since=<since>` with the edge key, as an edge polls it.
    pub async fn feed(&self, since: i64) -> Answer {
        let path = format!("/api/v1/revocations/feed?since={since}");
        self.call(reqwest::Method::GET, &path, &self.edge_key, None)
            .await
    }

    /// The items of `GET /api/v1/edges`.
    pub async fn edges(&self) -> Vec<Value> {
        self.get("/api/v1/edges")
            .await
            .expect(200, "list edges")
            .items()
    }

    /// The edge named `name` in `GET /api/v1/edges`, if listed.
    pub async fn edge(&self, name: &str) -> Option<Value> {
        self.edges()
            .await
            .into_iter()
            .find(|e| e["name"].as_str() == Some(name))
    }

    /// `GET /api/v1/usage/timeseries` with `query` (e.g. `[("edge", "e2e-edge"), ("jti", ..)]`).
    pub async fn usage_timeseries(&self, query: &[(&str, &str)]) -> Value {
        self.get_query("/api/v1/usage/timeseries", query)
            .await
            .expect(200, "read the usage time series")
            .body
    }

    /// The sum over every point of `GET /api/v1/usage/timeseries?<query>` of decisions with `reason`.
    pub async fn usage_count(&self, query: &[(&str, &str)], reason: &str) -> i64 {
        let series = self.usage_timeseries(query).await;
        series["points"]
            .as_array()
            .map(|points| {
                points
                    .iter()
                    .map(|p| p["by_reason"][reason].as_i64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The items of `GET /api/v1/usage/failures?<query>` (newest first).
    pub async fn usage_failures(&self, query: &[(&str, &str)]) -> Vec<Value> {
        self.get_query("/api/v1/usage/failures", query)
            .await
            .expect(200, "read the usage failure samples")
            .items()
    }

    /// The items of `GET /api/v1/anomalies?<query>`.
    pub async fn anomalies(&self, query: &[(&str, &str)]) -> Vec<Value> {
        self.get_query("/api/v1/anomalies", query)
            .await
            .expect(200, "list anomalies")
            .items()
    }

    async fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        let response = self
            .client
            .get(self.url(path))
            .query(query)
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} to the admin API failed: {e}"));
        answer(response).await
    }
}

impl Drop for AdminApi {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- admin API log ({}/admin.log) ----\n{}\n---- end of admin API log ----",
                self.dir.display(),
                tail(&self.log(), 100)
            );
        }
    }
}

/// The claims of a JWT, decoded without verification (`Value::Null` when unreadable): for inspection only.
pub fn claims(token: &str) -> Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, body, text }
}

/// A loopback port nothing listens on right now (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
