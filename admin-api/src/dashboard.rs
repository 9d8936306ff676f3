//! The web dashboard's static files, served by the admin API itself so one process and one origin hold both.
//! `build.rs` embeds `<target>/dashboard/dist` as [`ASSETS`]; [`fallback`] answers every request no route
//! matched: API prefixes keep the JSON 404, `/assets/*` are content-hashed and cached for a year, and any
//! other GET is a client-side route that gets `index.html` (revalidated on every load).
//! A binary built without the dashboard answers 503 with a page that says how to build it.
//! Being a fallback, not a route, these paths bypass `auth::enforce_roles` and `metrics::track` (both route layers):
//! they are public, and the metrics get no label per arbitrary path.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;

/// The policy on every dashboard response: the app's own scripts, styles and wasm (which needs
/// `'wasm-unsafe-eval'` to compile), requests to this origin only, nothing inline, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; connect-src 'self'; img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `Cache-Control` of content-hashed files under `/assets/`: a new build gives them new names.
pub const ASSET_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// `Cache-Control` of `index.html` and other unhashed files: revalidate on every load, so a deploy shows at once.
pub const INDEX_CACHE_CONTROL: &str = "no-cache";

/// Path prefixes that belong to the API: an unknown path under them is the API's JSON 404, never the dashboard.
pub const API_PREFIXES: &[&str] = &["/api", "/oauth", "/.well-known", "/metrics", "/healthz"];

/// One embedded file of the dashboard.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The URL path it is served at, e.g. `/assets/app-0123456789abcdef.wasm`.
    pub path: &'static str,
    /// Its `Content-Type`, from [`content_type`].
    pub content_type: &'static str,
    /// Its contents.
    pub bytes: &'static [u8],
}

mod embedded {
    // `content_type` is called only by the rows of a table that has some.
    #[allow(unused_imports)]
    use super::{content_type, Asset};
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

/// The files `build.rs` found in the dashboard's dist directory; empty when it was not built.
pub static ASSETS: &[Asset] = embedded::ASSETS;

/// The `Content-Type` for a file name, by extension; `application/octet-stream` for unknown ones.
/// A `const fn` so the generated table computes it at compile time.
pub const fn content_type(path: &str) -> &'static str {
    let p = path.as_bytes();
    if ends_with(p, b".html") {
        "text/html; charset=utf-8"
    } else if ends_with(p, b".js") || ends_with(p, b".mjs") {
        "text/javascript; charset=utf-8"
    } else if ends_with(p, b".wasm") {
        "application/wasm"
    } else if ends_with(p, b".css") {
        "text/css; charset=utf-8"
    } else if ends_with(p, b".json") || ends_with(p, b".map") {
        "application/json"
    } else if ends_with(p, b".svg") {
        "image/svg+xml"
    } else if ends_with(p, b".png") {
        "image/png"
    } else if ends_with(p, b".ico") {
        "image/x-icon"
    } else if ends_with(p, b".woff2") {
        "font/woff2"
    } else if ends_with(p, b".txt") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

const fn ends_with(s: &[u8], suffix: &[u8]) -> bool {
    if s.len() < suffix.len() {
        return false;
    }
    let start = s.len() - suffix.len();
    let mut i = 0;
    while i < suffix.len() {
        if s[start + i] != suffix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `path` is `prefix` itself or below it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether `path` belongs to the API (see [`API_PREFIXES`]).
pub fn is_api_path(path: &str) -> bool {
    API_PREFIXES.iter().any(|prefix| under(path, prefix))
}

/// The router's fallback: the dashboard from [`ASSETS`] for what no API route matched.
pub async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    serve(ASSETS, &method, uri.path(), &headers)
}

/// Answers a request no API route matched, from `assets` (a parameter so tests can pass their own table):
/// - under an API prefix: the API's JSON 404 `not_found`;
/// - a method other than GET or HEAD: JSON 405 `method_not_allowed` with `Allow: GET, HEAD`;
/// - a file of the table: 200 with its type, immutable caching under `/assets/`, `no-cache` otherwise;
/// - any other path under `/assets/`: JSON 404 (a stale or mistyped asset must not become `index.html`);
/// - anything else: `index.html` (a client-side route), or the 503 placeholder when the table has none.
///
/// Every answer but the API's 404 carries the dashboard's security headers.
pub fn serve(
    assets: &'static [Asset],
    method: &Method,
    path: &str,
    request: &HeaderMap,
) -> Response {
    if is_api_path(path) {
        return ApiError::NotFound("no such route".into()).into_response();
    }
    let response = if method != Method::GET && method != Method::HEAD {
        let mut response = (
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(json!({"error": {"code": "method_not_allowed", "message": "the dashboard answers only GET and HEAD"}})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
    } else if let Some(asset) = assets.iter().find(|a| a.path == path) {
        let cache = if under(path, "/assets") {
            ASSET_CACHE_CONTROL
        } else {
            INDEX_CACHE_CONTROL
        };
        file(asset, cache, request)
    } else if under(path, "/assets") {
        ApiError::NotFound(format!("no dashboard asset {path}")).into_response()
    } else if let Some(index) = assets.iter().find(|a| a.path == "/index.html") {
        file(index, INDEX_CACHE_CONTROL, request)
    } else {
        placeholder()
    };
    with_security_headers(response)
}

/// A file with its type and caching; unhashed files also get a weak `ETag` and answer a matching
/// `If-None-Match` with 304, so the `no-cache` revalidation costs no body.
fn file(asset: &Asset, cache_control: &'static str, request: &HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    if cache_control == ASSET_CACHE_CONTROL {
        return (headers, Body::from(asset.bytes)).into_response();
    }
    let digest = Sha256::digest(asset.bytes);
    // Weak: the compression layer may change the bytes on the wire, never the meaning.
    let etag = format!("W/\"{}\"", hex::encode(&digest[..8]));
    let matches = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag.trim_start_matches("W/"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, Body::from(asset.bytes)).into_response()
}

/// 503, not 200: this binary cannot serve the dashboard until it is rebuilt, and a smoke test or
/// `curl -f` of `/` should notice that rather than pass; not 404, because the page is the answer for
/// every client route. `no-store` so that no cache keeps it after the rebuilt binary is deployed.
fn placeholder() -> Response {
    const PAGE: &str = "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>EdgeWarden: dashboard not built</title></head>\n<body>\n<h1>The dashboard was not built into this binary</h1>\n<p>The admin API is running (see <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>), but this build of it has no dashboard.</p>\n<p>Build it with <code>cargo xtask build</code>, or run the whole stack with <code>cargo xtask demo</code>.</p>\n</body>\n</html>\n";
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;
    use http_body_util::BodyExt as _;

    static FAKE: &[Asset] = &[
        Asset {
            path: "/assets/app-0123456789abcdef.js",
            content_type: content_type("/assets/app-0123456789abcdef.js"),
            bytes: b"console.log(1)",
        },
        Asset {
            path: "/assets/app-0123456789abcdef.wasm",
            content_type: content_type("/assets/app-0123456789abcdef.wasm"),
            bytes: b"\0asm\x01\0\0\0",
        },
        Asset {
            path: "/assets/style-fedcba9876543210.css",
            content_type: content_type("/assets/style-fedcba9876543210.css"),
            bytes: b"body{}",
        },
        Asset {
            path: "/favicon.ico",
            content_type: content_type("/favicon.ico"),
            bytes: b"ico",
        },
        Asset {
            path: "/index.html",
            content_type: content_type("/index.html"),
            bytes: b"<!doctype html><title>EdgeWarden</title>",
        },
    ];

    fn get(assets: &'static [Asset], path: &str) -> Response {
        serve(assets, &Method::GET, path, &HeaderMap::new())
    }

    async fn body(response: Response) -> Vec<u8> {
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec()
    }

    fn header(response: &Response, name: HeaderName) -> &str {
        response
            .headers()
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("ascii header")
    }

    #[track_caller]
    fn assert_security_headers(response: &Response) {
        assert_eq!(
            header(response, header::CONTENT_SECURITY_POLICY),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(header(response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(header(response, header::REFERRER_POLICY), "no-referrer");
        assert_eq!(header(response, header::X_FRAME_OPTIONS), "DENY");
    }

    #[test]
    fn content_types_follow_the_extension() {
        for (path, expected) in [
            ("/index.html", "text/html; charset=utf-8"),
            (
                "/assets/app-0123456789abcdef.js",
                "text/javascript; charset=utf-8",
            ),
            ("/snippets/x/inline0.mjs", "text/javascript; charset=utf-8"),
            ("/assets/app-0123456789abcdef.wasm", "application/wasm"),
            (
                "/assets/style-0123456789abcdef.css",
                "text/css; charset=utf-8",
            ),
            ("/assets/logo-0123456789abcdef.svg", "image/svg+xml"),
            ("/favicon.ico", "image/x-icon"),
            ("/robots.txt", "text/plain; charset=utf-8"),
            ("/assets/font-0123456789abcdef.woff2", "font/woff2"),
            ("/assets/app.js.map", "application/json"),
            ("/assets/blob-0123456789abcdef", "application/octet-stream"),
            ("/wasm", "application/octet-stream"),
        ] {
            assert_eq!(content_type(path), expected, "{path}");
        }
    }

    #[test]
    fn api_prefixes_match_whole_segments_only() {
        for path in [
            "/api",
            "/api/v1/nope",
            "/oauth/token",
            "/.well-known/jwks.json",
            "/metrics",
            "/healthz",
            "/healthz/",
        ] {
            assert!(is_api_path(path), "{path}");
        }
        for path in [
            "/",
            "/apikeys",
            "/api-keys",
            "/tokens/abc",
            "/metricsboard",
            "/oauthx",
        ] {
            assert!(!is_api_path(path), "{path}");
        }
    }

    #[tokio::test]
    async fn root_and_client_routes_get_index_html_with_no_cache() {
        for path in [
            "/",
            "/index.html",
            "/tokens/abc",
            "/login",
            "/edges/edge-1/usage",
        ] {
            let response = get(FAKE, path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                header(&response, header::CONTENT_TYPE),
                "text/html; charset=utf-8"
            );
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
            assert!(header(&response, header::ETAG).starts_with("W/\""));
            assert_security_headers(&response);
            assert_eq!(
                body(response).await,
                b"<!doctype html><title>EdgeWarden</title>"
            );
        }
    }

    #[tokio::test]
    async fn hashed_assets_are_immutable_with_their_content_type() {
        for (path, content_type) in [
            (
                "/assets/app-0123456789abcdef.js",
                "text/javascript; charset=utf-8",
            ),
            ("/assets/app-0123456789abcdef.wasm", "application/wasm"),
            (
                "/assets/style-fedcba9876543210.css",
                "text/css; charset=utf-8",
            ),
        ] {
            let response = get(FAKE, path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&response, header::CONTENT_TYPE), content_type);
            assert_eq!(
                header(&response, header::CACHE_CONTROL),
                "public, max-age=31536000, immutable"
            );
            assert!(response.headers().get(header::ETAG).is_none());
            assert_security_headers(&response);
            let expected = FAKE.iter().find(|a| a.path == path).unwrap().bytes;
            assert_eq!(body(response).await, expected);
        }
    }

    #[tokio::test]
    async fn unhashed_root_files_are_served_but_revalidated() {
        let response = get(FAKE, "/favicon.ico");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, header::CONTENT_TYPE), "image/x-icon");
        assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache");
        assert_eq!(body(response).await, b"ico");
    }

    #[tokio::test]
    async fn unknown_asset_is_a_json_404_not_index_html() {
        for path in ["/assets/app-ffffffffffffffff.js", "/assets/", "/assets"] {
            let response = get(FAKE, path);
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            assert_security_headers(&response);
            let body: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
            assert_eq!(body["error"]["code"], "not_found", "{path}");
        }
    }

    #[tokio::test]
    async fn api_paths_keep_the_api_json_404_whatever_the_table() {
        for assets in [FAKE, &[]] {
            for path in [
                "/api/v1/nope",
                "/oauth/nope",
                "/.well-known/nope",
                "/metrics/x",
                "/healthz/x",
            ] {
                let response = get(assets, path);
                assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
                assert!(response
                    .headers()
                    .get(header::CONTENT_SECURITY_POLICY)
                    .is_none());
                let body: serde_json::Value =
                    serde_json::from_slice(&body(response).await).unwrap();
                assert_eq!(
                    body,
                    json!({"error": {"code": "not_found", "message": "no such route"}})
                );
            }
        }
    }

    #[tokio::test]
    async fn methods_other_than_get_and_head_are_405() {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let response = serve(FAKE, &method, "/tokens/abc", &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(header(&response, header::ALLOW), "GET, HEAD");
            assert_security_headers(&response);
            let body: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
            assert_eq!(body["error"]["code"], "method_not_allowed");
        }
        let head = serve(FAKE, &Method::HEAD, "/", &HeaderMap::new());
        assert_eq!(head.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn index_revalidation_with_its_etag_is_304_without_body() {
        let etag = header(&get(FAKE, "/"), header::ETAG).to_owned();
        for presented in [etag.clone(), format!("\"other\", {etag}"), "*".to_owned()] {
            let mut request = HeaderMap::new();
            request.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(&presented).unwrap(),
            );
            let response = serve(FAKE, &Method::GET, "/tokens/abc", &request);
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{presented}");
            assert_eq!(header(&response, header::ETAG), etag);
            assert_security_headers(&response);
            assert!(body(response).await.is_empty());
        }
        let mut request = HeaderMap::new();
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"0000000000000000\""),
        );
        assert_eq!(
            serve(FAKE, &Method::GET, "/", &request).status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn without_a_built_dashboard_pages_are_a_503_saying_how_to_build_it() {
        for path in ["/", "/tokens/abc"] {
            let response = get(&[], path);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(
                header(&response, header::CONTENT_TYPE),
                "text/html; charset=utf-8"
            );
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-store");
            assert_security_headers(&response);
            let page = String::from_utf8(body(response).await).unwrap();
            assert!(page.contains("not built into this binary"), "{page}");
            assert!(page.contains("cargo xtask build"), "{page}");
            assert!(
                !page.contains("style"),
                "the CSP forbids inline styles: {page}"
            );
        }
        assert_eq!(
            get(&[], "/assets/app-0123456789abcdef.js").status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn embedded_table_is_empty_or_a_servable_dist() {
        if ASSETS.is_empty() {
            return;
        }
        assert!(
            ASSETS.iter().any(|a| a.path == "/index.html"),
            "a dist without index.html is never embedded"
        );
        for asset in ASSETS {
            assert!(
                asset.path.starts_with('/') && !is_api_path(asset.path),
                "{}",
                asset.path
            );
            assert_eq!(asset.content_type, content_type(asset.path));
        }
        assert!(
            ASSETS.windows(2).all(|w| w[0].path < w[1].path),
            "sorted, no duplicates"
        );
    }
}
