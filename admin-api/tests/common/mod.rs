//! Test harness for the admin API: builds an app on a fresh SQLite file or a fresh PostgreSQL
//! database (dropped afterwards), and small helpers to call it without a socket.
//! PostgreSQL comes from `EDGEWARDEN_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! when it is unreachable the tests fail, they never skip.

#![allow(dead_code, missing_docs)]

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use edgewarden_admin::auth::{create_api_key, Role};
use edgewarden_admin::config::{Argon2Params, Config, MasterKeySource, RateLimit};
use edgewarden_admin::{app, AppState};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use sqlx::Connection as _;
use tower::ServiceExt as _;

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn name(backend: Backend)` once per backend, as `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

pub fn postgres_admin_url() -> String {
    std::env::var("EDGEWARDEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test: a temp dir (SQLite) or a fresh PostgreSQL database.
pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub database_url: Option<String>,
    pg_name: Option<String>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => TestDb {
                dir,
                database_url: None,
                pg_name: None,
            },
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = sqlx::postgres::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "postgresql is unreachable at {admin} ({e}); start it or set EDGEWARDEN_TEST_POSTGRES_URL: these tests never skip"
                    )
                });
                let name = format!(
                    "ew_test_{}",
                    edgewarden_admin::secrets::random_id("").to_lowercase()
                );
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).expect("postgres url");
                url.set_path(&name);
                TestDb {
                    dir,
                    database_url: Some(url.to_string()),
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A configuration on this database with fast argon2 and an inline master key.
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.dir.path());
        config.database_url = self.database_url.clone();
        config.argon2 = Argon2Params::INSECURE_FAST_FOR_TESTS;
        config.master_key = MasterKeySource::Inline(
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
        );
        config.issuer = "https://issuer.test".into();
        // Tests that need cross-replica propagation must get it from LISTEN/NOTIFY, not from polling.
        config.refresh_interval_seconds = 3600;
        config.token_rate_limit = RateLimit {
            burst: 10_000,
            per_second: 10_000.0,
        };
        config
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = postgres_admin_url();
        // Drop runs inside a tokio runtime: use a separate thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = sqlx::postgres::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A running app (no socket) with an admin API key.
pub struct TestApp {
    pub state: AppState,
    pub router: Router,
    pub admin_key: String,
    pub db: TestDb,
}

/// An HTTP answer, body parsed as JSON (`Value::Null` when empty).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Answer {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        self
    }

    /// The `error.code` of an API error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestApp {
    pub async fn start(backend: Backend) -> TestApp {
        let db = TestDb::new(backend).await;
        TestApp::with_config(db.config(), db).await
    }

    pub async fn with_config(config: Config, db: TestDb) -> TestApp {
        let state = AppState::new(config).await.expect("app state");
        let admin_key = create_api_key(&state.db, Role::Admin, "test admin", None)
            .await
            .expect("admin key")
            .key;
        TestApp {
            router: app(state.clone()),
            state,
            admin_key,
            db,
        }
    }

    pub async fn call(&self, request: Request<Body>) -> Answer {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A JSON request with an optional bearer key.
    pub async fn json(
        &self,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = match body {
            Some(b) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => builder.body(Body::empty()),
        };
        self.call(request.expect("request")).await
    }

    pub async fn get(&self, uri: &str, key: Option<&str>) -> Answer {
        self.json(Method::GET, uri, key, None).await
    }

    pub async fn post(&self, uri: &str, key: Option<&str>, body: Value) -> Answer {
        self.json(Method::POST, uri, key, Some(body)).await
    }

    /// A form-encoded POST with an optional raw `Authorization` header value.
    pub async fn form(
        &self,
        uri: &str,
        authorization: Option<&str>,
        params: &[(&str, &str)],
    ) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(auth) = authorization {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        self.call(builder.body(Body::from(body)).expect("request"))
            .await
    }

    pub async fn api_key(&self, role: Role, client_id: Option<&str>) -> String {
        create_api_key(&self.state.db, role, &format!("test {role}"), client_id)
            .await
            .expect("api key")
            .key
    }

    /// Registers a client and returns its secret.
    pub async fn client(&self, client_id: &str, scopes: &[&str], roles: &[&str]) -> String {
        let answer = self
            .post(
                "/api/v1/clients",
                Some(&self.admin_key),
                json!({"client_id": client_id, "allowed_scopes": scopes, "allowed_roles": roles, "audiences": ["api://default", "api://other"], "max_lifetime_seconds": 7200}),
            )
            .await
            .expect(StatusCode::CREATED);
        answer.body["client_secret"]
            .as_str()
            .expect("secret")
            .to_owned()
    }

    /// Issues a token through `POST /api/v1/tokens` with the admin key.
    pub async fn issue(
        &self,
        subject: &str,
        client_id: &str,
        scopes: &[&str],
        refresh: bool,
    ) -> Value {
        self.post(
            "/api/v1/tokens",
            Some(&self.admin_key),
            json!({"subject": subject, "client_id": client_id, "scopes": scopes, "ttl_seconds": 600, "refresh": refresh}),
        )
        .await
        .expect(StatusCode::OK)
        .body
    }

    /// Introspects with the admin key.
    pub async fn introspect(&self, token: &str) -> Value {
        self.form(
            "/oauth/introspect",
            Some(&format!("Bearer {}", self.admin_key)),
            &[("token", token)],
        )
        .await
        .expect(StatusCode::OK)
        .body
    }
}

/// HTTP Basic credentials for a client.
pub fn basic(client_id: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"))
    )
}

/// Decodes a JWT's header and claims without verifying (test inspection only).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let mut next = || {
        let part = parts.next().expect("jwt part");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .expect("base64url"),
        )
        .expect("json")
    };
    (next(), next())
}

/// Serves `app` on a free loopback port through `serve::serve` with the state's limits, until the
/// test's runtime ends; returns the address.
pub async fn serve_on_socket(app: &TestApp) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let limits = app.state.config.serve.clone();
    let router = app.router.clone();
    tokio::spawn(async move {
        edgewarden_admin::serve::serve(listener, router, limits, std::future::pending())
            .await
            .expect("serve")
    });
    addr
}
