//! The dashboard as the admin API serves it, through `app().oneshot(...)` on SQLite and PostgreSQL: the page or
//! the build placeholder at `/` and every client route, the API's paths untouched, the security and caching
//! headers, and compression (which must leave the event stream and the long-polled feed working).
//! The binary may embed a built dist or none; each test checks what that build must do, and the serving
//! logic itself is unit-tested against a fake table in `src/dashboard.rs`.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use common::{Backend, TestApp};
use edgewarden_admin::auth::Role;
use edgewarden_admin::dashboard::{Asset, ASSETS, CONTENT_SECURITY_POLICY};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

both_backends!(
    root_is_the_dashboard_or_the_build_placeholder_without_credentials,
    client_routes_with_paths_and_queries_get_the_same_page,
    unknown_api_paths_stay_the_json_404,
    discovery_documents_stay_json_with_nosniff,
    assets_are_immutable_and_an_unknown_asset_is_404,
    head_answers_the_headers_without_the_body,
    post_to_a_client_route_is_405,
    pages_and_api_answers_are_compressed_when_the_client_accepts_it,
    event_stream_is_never_compressed_and_still_streams,
    long_polled_feed_still_wakes_and_compresses,
    dashboard_requests_add_no_metric_labels,
);

/// The embedded `index.html`, when this binary has a built dashboard.
fn index() -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == "/index.html")
}

/// A raw request: the helpers in `common` parse bodies as JSON, these tests need the bytes.
async fn raw(
    app: &TestApp,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = send(app, method, uri, headers).await;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, bytes.to_vec())
}

async fn send(app: &TestApp, method: &str, uri: &str, headers: &[(&str, &str)]) -> Response<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    app.router
        .clone()
        .oneshot(builder.body(Body::empty()).expect("request"))
        .await
        .expect("infallible")
}

fn get_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ascii header"))
}

#[track_caller]
fn assert_security_headers(headers: &HeaderMap) {
    assert_eq!(
        get_header(headers, "content-security-policy"),
        Some("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    );
    assert_eq!(
        get_header(headers, "content-security-policy"),
        Some(CONTENT_SECURITY_POLICY)
    );
    assert_eq!(
        get_header(headers, "x-content-type-options"),
        Some("nosniff")
    );
    assert_eq!(get_header(headers, "referrer-policy"), Some("no-referrer"));
    assert_eq!(get_header(headers, "x-frame-options"), Some("DENY"));
}

/// What every page (root or client route) must be in this build.
#[track_caller]
fn assert_page(uri: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) {
    assert_security_headers(headers);
    assert_eq!(
        get_header(headers, "content-type"),
        Some("text/html; charset=utf-8"),
        "{uri}"
    );
    match index() {
        Some(index) => {
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(
                get_header(headers, "cache-control"),
                Some("no-cache"),
                "{uri}"
            );
            assert_eq!(body, index.bytes, "{uri}");
        }
        None => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            assert_eq!(
                get_header(headers, "cache-control"),
                Some("no-store"),
                "{uri}"
            );
            let page = String::from_utf8_lossy(body);
            assert!(page.contains("not built into this binary"), "{uri}: {page}");
            assert!(page.contains("cargo xtask build"), "{uri}: {page}");
        }
    }
}

async fn root_is_the_dashboard_or_the_build_placeholder_without_credentials(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (status, headers, body) = raw(&app, "GET", "/", &[]).await;
    assert_page("/", status, &headers, &body);
    // A session cookie that means nothing changes nothing: the page itself is public.
    let (status, headers, body) = raw(&app, "GET", "/", &[("cookie", "ew_session=bogus")]).await;
    assert_page("/", status, &headers, &body);
}

async fn client_routes_with_paths_and_queries_get_the_same_page(backend: Backend) {
    let app = TestApp::start(backend).await;
    for uri in [
        "/tokens/abc",
        "/login?next=/x",
        "/edges/edge-1",
        "/apikeys",
        "/index.html",
    ] {
        let (status, headers, body) = raw(&app, "GET", uri, &[]).await;
        assert_page(uri, status, &headers, &body);
    }
}

async fn unknown_api_paths_stay_the_json_404(backend: Backend) {
    let app = TestApp::start(backend).await;
    for uri in [
        "/api/v1/nope",
        "/api",
        "/oauth/nope",
        "/.well-known/nope",
        "/metrics/nope",
        "/healthz/nope",
    ] {
        let answer = app
            .get(uri, Some(&app.admin_key))
            .await
            .expect(StatusCode::NOT_FOUND);
        assert_eq!(
            answer.body,
            json!({"error": {"code": "not_found", "message": "no such route"}}),
            "{uri}"
        );
        assert_eq!(
            get_header(&answer.headers, "content-type"),
            Some("application/json")
        );
        assert!(answer.headers.get("content-security-policy").is_none());
        assert_eq!(
            get_header(&answer.headers, "x-content-type-options"),
            Some("nosniff")
        );
    }
    // Unknown methods on API routes keep their own JSON 405.
    let answer = app
        .json(axum::http::Method::DELETE, "/healthz", None, None)
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.code(), "method_not_allowed");
}

async fn discovery_documents_stay_json_with_nosniff(backend: Backend) {
    let app = TestApp::start(backend).await;
    for uri in [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/api/v1/openapi.json",
        "/healthz",
    ] {
        let answer = app.get(uri, None).await.expect(StatusCode::OK);
        assert!(answer.body.is_object(), "{uri}: {}", answer.body);
        assert!(
            get_header(&answer.headers, "content-type")
                .unwrap()
                .starts_with("application/json"),
            "{uri}"
        );
        assert_eq!(
            get_header(&answer.headers, "x-content-type-options"),
            Some("nosniff"),
            "{uri}"
        );
    }
    let jwks = app.get("/.well-known/jwks.json", None).await.body;
    assert_eq!(jwks["keys"][0]["use"], "sig");
}

async fn assets_are_immutable_and_an_unknown_asset_is_404(backend: Backend) {
    let app = TestApp::start(backend).await;
    let hashed: Vec<&Asset> = ASSETS
        .iter()
        .filter(|a| a.path.starts_with("/assets/"))
        .collect();
    if index().is_some() {
        assert!(
            !hashed.is_empty(),
            "a built dashboard has its scripts under /assets/"
        );
    }
    for asset in hashed {
        let (status, headers, body) = raw(&app, "GET", asset.path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{}", asset.path);
        assert_eq!(
            get_header(&headers, "cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        let expected = if asset.path.ends_with(".wasm") {
            "application/wasm"
        } else if asset.path.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else if asset.path.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            asset.content_type
        };
        assert_eq!(get_header(&headers, "content-type"), Some(expected));
        assert_security_headers(&headers);
        assert_eq!(body, asset.bytes);
    }
    for uri in [
        "/assets/app-0000000000000000.js",
        "/assets/nope.wasm",
        "/assets/",
    ] {
        let (status, headers, body) = raw(&app, "GET", uri, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_security_headers(&headers);
        let body: Value = serde_json::from_slice(&body).expect("json 404");
        assert_eq!(body["error"]["code"], "not_found");
    }
}

async fn head_answers_the_headers_without_the_body(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (get_status, get_headers, get_body) = raw(&app, "GET", "/tokens/abc", &[]).await;
    let (status, headers, body) = raw(&app, "HEAD", "/tokens/abc", &[]).await;
    assert_eq!(status, get_status);
    assert!(body.is_empty());
    assert_eq!(
        get_header(&headers, "content-length"),
        Some(get_body.len().to_string().as_str())
    );
    assert_eq!(headers.get("content-type"), get_headers.get("content-type"));
    assert_security_headers(&headers);
}

async fn post_to_a_client_route_is_405(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (status, headers, body) = raw(&app, "POST", "/tokens/abc", &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_header(&headers, "allow"), Some("GET, HEAD"));
    let body: Value = serde_json::from_slice(&body).expect("json 405");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

async fn pages_and_api_answers_are_compressed_when_the_client_accepts_it(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (_, plain_headers, plain) = raw(&app, "GET", "/", &[]).await;
    assert!(plain_headers.get("content-encoding").is_none());
    let (status, headers, gzipped) = raw(&app, "GET", "/", &[("accept-encoding", "gzip")]).await;
    assert!(status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get_header(&headers, "content-encoding"), Some("gzip"));
    assert_eq!(get_header(&headers, "vary"), Some("accept-encoding"));
    assert!(headers.get("content-length").is_none());
    assert_security_headers(&headers);
    assert_eq!(gunzip(&gzipped), plain);
    let (_, headers, brotli) = raw(&app, "GET", "/", &[("accept-encoding", "br")]).await;
    assert_eq!(get_header(&headers, "content-encoding"), Some("br"));
    assert_ne!(brotli, plain);
    // The largest asset (the wasm, in a built dashboard) too.
    if let Some(asset) = ASSETS
        .iter()
        .filter(|a| a.path.starts_with("/assets/"))
        .max_by_key(|a| a.bytes.len())
    {
        let (_, headers, gzipped) =
            raw(&app, "GET", asset.path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(get_header(&headers, "content-encoding"), Some("gzip"));
        assert_eq!(gunzip(&gzipped), asset.bytes);
    }
    // API answers as well: the OpenAPI document is the biggest public one.
    let (_, headers, gzipped) = raw(
        &app,
        "GET",
        "/api/v1/openapi.json",
        &[("accept-encoding", "gzip, br;q=0.5")],
    )
    .await;
    assert_eq!(get_header(&headers, "content-encoding"), Some("gzip"));
    let doc: Value = serde_json::from_slice(&gunzip(&gzipped)).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    // Without Accept-Encoding the body is identity, and caches are told it varies.
    let (_, headers, body) = raw(&app, "GET", "/api/v1/openapi.json", &[]).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(get_header(&headers, "vary"), Some("accept-encoding"));
    assert_eq!(serde_json::from_slice::<Value>(&body).expect("json"), doc);
}

async fn event_stream_is_never_compressed_and_still_streams(backend: Backend) {
    let app = TestApp::start(backend).await;
    let auditor = app.api_key(Role::Auditor, None).await;
    let bearer = format!("Bearer {auditor}");
    let response = send(
        &app,
        "GET",
        "/api/v1/events/stream",
        &[("authorization", &bearer), ("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(get_header(response.headers(), "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(response.headers().get("content-encoding").is_none());
    let mut body = response.into_body();
    app.client("billing", &["read"], &[]).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("event: client.created") {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            other => panic!("no event in time ({other:?}); got {text:?}"),
        }
    }
}

async fn long_polled_feed_still_wakes_and_compresses(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.client("billing", &[], &[]).await;
    let issued = app.issue("alice", "billing", &[], false).await;
    let edge = app.api_key(Role::Edge, None).await;
    let first = app
        .get("/api/v1/revocations/feed?since=0", Some(&edge))
        .await
        .expect(StatusCode::OK);
    let cursor = first.body["cursor"].as_i64().unwrap();
    let etag = get_header(&first.headers, "etag").unwrap().to_owned();
    let bearer = format!("Bearer {edge}");
    // Nothing changed: the 304 after the wait stays bodiless and unencoded.
    let (status, headers, body) = raw(
        &app,
        "GET",
        &format!("/api/v1/revocations/feed?since={cursor}&wait=1"),
        &[
            ("authorization", &bearer),
            ("if-none-match", &etag),
            ("accept-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert!(headers.get("content-encoding").is_none());
    // A held poll is woken by a revocation and answers a gzip body holding it.
    let waiting = {
        let router = app.router.clone();
        let uri = format!("/api/v1/revocations/feed?since={cursor}&wait=20");
        let bearer = bearer.clone();
        tokio::spawn(async move {
            let request = Request::builder()
                .uri(uri)
                .header("authorization", bearer)
                .header("accept-encoding", "gzip")
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let encoding = get_header(response.headers(), "content-encoding").map(str::to_owned);
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (encoding, bytes)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "long-poll must wait while nothing changed"
    );
    app.post(
        "/api/v1/revocations",
        Some(&app.admin_key),
        json!({"jti": issued["jti"], "reason": "now"}),
    )
    .await
    .expect(StatusCode::CREATED);
    let (encoding, bytes) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(encoding.as_deref(), Some("gzip"));
    let body: Value = serde_json::from_slice(&gunzip(&bytes)).expect("json");
    assert_eq!(body["revoked_jtis"][0]["jti"], issued["jti"]);
}

async fn dashboard_requests_add_no_metric_labels(backend: Backend) {
    let app = TestApp::start(backend).await;
    for uri in [
        "/",
        "/tokens/label-probe-1",
        "/assets/label-probe-2.js",
        "/api/label-probe-3",
    ] {
        raw(&app, "GET", uri, &[]).await;
    }
    let metrics = app
        .get("/metrics", Some(&app.admin_key))
        .await
        .expect(StatusCode::OK);
    let text = metrics.body.as_str().expect("text exposition");
    assert!(text.contains("edgewarden_http_requests_total"), "{text}");
    assert!(!text.contains("label-probe"), "{text}");
    assert!(!text.contains("route=\"/\""), "{text}");
}
