//! The `Host` of the filter's key-set fetches (issue 15): a JWKS server that, like any server with virtual
//! hosting, answers only for the host names it serves. Reached through an Envoy cluster named the Istio way
//! (`outbound|<port>||<host>`), the filter sends `<host>:<port>`, never the cluster name; a configured
//! `remote_jwks.authority` is sent as it is.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use edgewarden_e2e::{jwks, Stack, TestKey, TokenBuilder, AUDIENCE, ISSUER, JWKS_PATH};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The Istio-style cluster name the tests give Envoy's cluster to the JWKS server.
const ISTIO_CLUSTER: &str = "outbound|8080||keys.identity.svc.cluster.local";

/// A JWKS server that serves the key set only to requests for `host`, and remembers every `Host` it saw.
struct VirtualHostJwks {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Site {
    host: String,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn jwks_for_host(State(site): State<Site>, request: Request) -> impl IntoResponse {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    site.seen.lock().unwrap().push(host.clone());
    if host == site.host {
        (StatusCode::OK, Json(jwks(&[TestKey::Es256A])))
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such site"})),
        )
    }
}

impl VirtualHostJwks {
    async fn start(host: &str) -> VirtualHostJwks {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let site = Site {
            host: host.to_string(),
            seen: Arc::clone(&seen),
        };
        let router = Router::new()
            .route(JWKS_PATH, get(jwks_for_host))
            .with_state(site);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        VirtualHostJwks { addr, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for VirtualHostJwks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(remote_jwks: Value) -> Value {
    json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "remote_jwks": remote_jwks}],
        "realm": "e2e",
    })
}

/// Starts Envoy with the JWKS server behind [`ISTIO_CLUSTER`] and checks a token signed with its key passes.
async fn token_passes(server: &VirtualHostJwks, remote_jwks: Value) {
    let stack = Stack::start_with_clusters(
        config(remote_jwks),
        json!({"keys": []}),
        &[(ISTIO_CLUSTER, server.addr)],
    )
    .await;
    let token = TokenBuilder::new(TestKey::Es256A).sign();
    let r = stack.get_with_token("/x", &token).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(
        status,
        200,
        "the key set was not fetched; the JWKS server saw Host {:?}; answer: {body}",
        server.seen()
    );
}

#[tokio::test]
async fn key_set_fetches_send_a_host_name_never_an_istio_cluster_name() {
    // No authority configured: the service host and port from the cluster name.
    let server = VirtualHostJwks::start("keys.identity.svc.cluster.local:8080").await;
    token_passes(
        &server,
        json!({"cluster": ISTIO_CLUSTER, "path": JWKS_PATH}),
    )
    .await;
    assert!(
        !server.seen().iter().any(|h| h.contains('|')),
        "a cluster name went out as Host: {:?}",
        server.seen()
    );
    // A configured authority is sent as it is.
    let server = VirtualHostJwks::start("idp.example.com").await;
    token_passes(
        &server,
        json!({"cluster": ISTIO_CLUSTER, "path": JWKS_PATH, "authority": "idp.example.com"}),
    )
    .await;
}
