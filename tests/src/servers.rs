//! The loopback servers a stack runs beside Envoy: an upstream that echoes what it received
//! (so tests can see which headers EdgeWarden forwarded, removed or added) and a JWKS endpoint
//! whose key set a test can swap at any moment (key rotation) and whose fetches it can count.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The path the JWKS server answers on.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// A server task that stops when dropped.
#[derive(Debug)]
struct Served(JoinHandle<()>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(router: Router) -> (SocketAddr, Served) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, Served(task))
}

/// The echo upstream: answers 200 with `{"method", "path", "headers": {name: [values]}}`.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _served: Served,
}

impl Upstream {
    /// Starts the upstream on a free loopback port.
    pub async fn start() -> Upstream {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new().fallback(echo).with_state(Arc::clone(&hits));
        let (addr, served) = serve(router).await;
        Upstream {
            addr,
            hits,
            _served: served,
        }
    }

    /// Requests that reached the upstream so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo(State(hits): State<Arc<AtomicUsize>>, request: Request) -> Json<Value> {
    hits.fetch_add(1, Ordering::SeqCst);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    Json(json!({
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    }))
}

/// What the upstream saw for one request, parsed from its echo.
#[derive(Debug, Clone)]
pub struct Echo(pub Value);

impl Echo {
    /// Every value of header `name` (lower-case) that reached the upstream.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.0["headers"][name]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The single value of header `name`, if the upstream saw it (panics on duplicates: a spoofing smell).
    pub fn header(&self, name: &str) -> Option<String> {
        let values = self.header_values(name);
        assert!(
            values.len() <= 1,
            "upstream saw {name} {} times: {values:?}",
            values.len()
        );
        values.into_iter().next()
    }

    /// The path with query the upstream saw.
    pub fn path(&self) -> String {
        self.0["path"].as_str().unwrap_or_default().to_string()
    }
}

/// A JWKS endpoint at [`JWKS_PATH`] whose key set can be replaced while Envoy runs.
#[derive(Debug)]
pub struct JwksServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<JwksState>,
    _served: Served,
}

#[derive(Debug)]
struct JwksState {
    jwks: RwLock<Value>,
    fetches: AtomicUsize,
}

impl JwksServer {
    /// Starts serving `jwks` on a free loopback port.
    pub async fn start(jwks: Value) -> JwksServer {
        let state = Arc::new(JwksState {
            jwks: RwLock::new(jwks),
            fetches: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route(JWKS_PATH, get(serve_jwks))
            .with_state(Arc::clone(&state));
        let (addr, served) = serve(router).await;
        JwksServer {
            addr,
            state,
            _served: served,
        }
    }

    /// Replaces the key set served from now on.
    pub fn set(&self, jwks: Value) {
        *self.state.jwks.write().expect("jwks lock") = jwks;
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

async fn serve_jwks(State(state): State<Arc<JwksState>>) -> impl IntoResponse {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let body = state.jwks.read().map(|j| j.clone()).unwrap_or(Value::Null);
    (StatusCode::OK, Json(body))
}
