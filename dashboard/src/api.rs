//! The only module that speaks HTTP: one typed function per admin API call the dashboard makes,
//! over the wire types of `edgewarden-api-types`, all returning [`ApiError`], which says what the
//! person at the screen can do about a failure (log in again, fix a field, retry).
//! Requests go to the same origin with the session cookie; mutations repeat the CSRF cookie in
//! `x-csrf-token`, as the admin API requires.

use std::fmt;

use edgewarden_api_types::{
    Anomaly, AnomalyUpdate, ApiKeySummary, Client, ClientWithSecret, Edge, ErrorBody, IssueRequest,
    Issued, KeyInfo, LoginRequest, NewApiKey, NewApiKeyRequest, NewClientRequest,
    NewWebhookRequest, Overview, Page, Propagation, Revocation, RevokeRequest, Series, SessionInfo,
    StoredEvent, Timeline, TokenRecord, TrustedIssuer, Webhook,
};
use gloo_net::http::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::JsCast;

/// Name of the script-readable cookie that carries the CSRF token (`admin-api/src/auth.rs`).
const CSRF_COOKIE: &str = "ew_csrf";

/// Why a call failed, in terms of what the user can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// No valid session: log in (again).
    Unauthorized,
    /// Logged in, but this role may not do it.
    Forbidden(String),
    /// The request was refused as invalid; `field` names the input to fix when there is one.
    Invalid {
        /// The field at fault.
        field: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// The thing asked about does not exist.
    NotFound(String),
    /// Too many requests: wait and retry.
    RateLimited(String),
    /// The admin API could not be reached: check the connection and retry.
    Network(String),
    /// The admin API failed: retry, then look at its log.
    Server(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Unauthorized => f.write_str("your session has ended: log in again"),
            ApiError::Forbidden(m) => write!(f, "not allowed for your role: {m}"),
            ApiError::Invalid { message, .. } => f.write_str(message),
            ApiError::NotFound(m) => write!(f, "not found: {m}"),
            ApiError::RateLimited(m) => {
                write!(f, "too many requests, wait a moment and retry: {m}")
            }
            ApiError::Network(m) => write!(
                f,
                "cannot reach the admin API ({m}): check the connection and retry"
            ),
            ApiError::Server(m) => {
                write!(f, "the admin API failed ({m}): retry, or look at its log")
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// Result of an API call.
pub type ApiResult<T> = Result<T, ApiError>;

/// The CSRF token from its cookie, if the session set one.
fn csrf_token() -> Option<String> {
    let document = web_sys::window()?.document()?;
    let cookies = document
        .dyn_into::<web_sys::HtmlDocument>()
        .ok()?
        .cookie()
        .ok()?;
    cookies
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, value)| value.to_owned())
}

async fn error_of(response: Response) -> ApiError {
    let status = response.status();
    let body: Option<ErrorBody> = response.json().await.ok();
    let message = body
        .as_ref()
        .map(|b| b.error.message.clone())
        .unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        401 => ApiError::Unauthorized,
        403 => ApiError::Forbidden(message),
        404 => ApiError::NotFound(message),
        429 => ApiError::RateLimited(message),
        400..=499 => ApiError::Invalid {
            field: body.and_then(|b| b.error.field),
            message,
        },
        _ => ApiError::Server(message),
    }
}

async fn send(method: Method, path: &str, body: Option<String>) -> ApiResult<Response> {
    let mut request = RequestBuilder::new(path)
        .method(method.clone())
        .header("accept", "application/json");
    if method != Method::GET {
        if let Some(token) = csrf_token() {
            request = request.header("x-csrf-token", &token);
        }
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| ApiError::Network(e.to_string()))?,
        None => request
            .build()
            .map_err(|e| ApiError::Network(e.to_string()))?,
    };
    let response = request
        .send()
        .await
        .map_err(|e| ApiError::Network(e.to_string()))?;
    if response.ok() {
        Ok(response)
    } else {
        Err(error_of(response).await)
    }
}

async fn get<T: DeserializeOwned>(path: &str) -> ApiResult<T> {
    let response = send(Method::GET, path, None).await?;
    response
        .json()
        .await
        .map_err(|e| ApiError::Server(format!("unexpected answer: {e}")))
}

async fn with_body<B: Serialize, T: DeserializeOwned>(
    method: Method,
    path: &str,
    body: &B,
) -> ApiResult<T> {
    let body = serde_json::to_string(body).map_err(|e| ApiError::Server(e.to_string()))?;
    let response = send(method, path, Some(body)).await?;
    response
        .json()
        .await
        .map_err(|e| ApiError::Server(format!("unexpected answer: {e}")))
}

/// Percent-encodes a query value or path segment.
pub fn encode(value: &str) -> String {
    String::from(js_sys::encode_uri_component(value))
}

/// Builds `path?k=v&...` from the pairs whose value is not empty.
pub fn with_query(path: &str, pairs: &[(&str, String)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Who is logged in.
pub async fn session() -> ApiResult<SessionInfo> {
    get("/api/v1/session").await
}

/// Logs in; the answer sets the session and CSRF cookies.
pub async fn login(username: String, password: String) -> ApiResult<SessionInfo> {
    with_body(
        Method::POST,
        "/api/v1/session",
        &LoginRequest { username, password },
    )
    .await
}

/// Logs out.
pub async fn logout() -> ApiResult<()> {
    send(Method::DELETE, "/api/v1/session", None)
        .await
        .map(|_| ())
}

/// The overview's figures for a range (`1h`, `24h`, `7d`).
pub async fn overview(range: &str) -> ApiResult<Overview> {
    get(&with_query(
        "/api/v1/overview",
        &[("range", range.to_owned())],
    ))
    .await
}

/// Decisions over time.
pub async fn series(bucket: &str, since: i64, filters: &[(&str, String)]) -> ApiResult<Series> {
    let mut pairs = vec![("bucket", bucket.to_owned()), ("since", since.to_string())];
    pairs.extend(filters.iter().cloned());
    get(&with_query("/api/v1/usage/timeseries", &pairs)).await
}

/// Token records, filtered (`status`, `subject`, `client_id`, `limit`, `offset`).
pub async fn tokens(filters: &[(&str, String)]) -> ApiResult<Page<TokenRecord>> {
    get(&with_query("/api/v1/tokens", filters)).await
}

/// One token record.
pub async fn token(jti: &str) -> ApiResult<TokenRecord> {
    get(&format!("/api/v1/tokens/{}", encode(jti))).await
}

/// One token's events, usage and failures.
pub async fn timeline(jti: &str) -> ApiResult<Timeline> {
    get(&format!("/api/v1/tokens/{}/timeline", encode(jti))).await
}

/// Issues a token (the answer is the only time it is shown).
pub async fn issue(request: IssueRequest) -> ApiResult<Issued> {
    with_body(Method::POST, "/api/v1/tokens", &request).await
}

/// Active revocations, filtered (`kind`, `limit`, `offset`).
pub async fn revocations(filters: &[(&str, String)]) -> ApiResult<Page<Revocation>> {
    get(&with_query("/api/v1/revocations", filters)).await
}

/// Records a revocation; every edge refuses what it covers once it has polled the feed.
pub async fn revoke(request: RevokeRequest) -> ApiResult<Revocation> {
    with_body(Method::POST, "/api/v1/revocations", &request).await
}

/// Which edges have applied the feed change at `cursor`.
pub async fn propagation(cursor: i64) -> ApiResult<Propagation> {
    get(&format!("/api/v1/revocations/propagation?cursor={cursor}")).await
}

/// Anomalies, filtered (`state`, `severity`, `kind`, `limit`, `offset`).
pub async fn anomalies(filters: &[(&str, String)]) -> ApiResult<Page<Anomaly>> {
    get(&with_query("/api/v1/anomalies", filters)).await
}

/// Acknowledges, resolves or reopens an anomaly.
pub async fn triage(id: &str, state: &str) -> ApiResult<Anomaly> {
    with_body(
        Method::PATCH,
        &format!("/api/v1/anomalies/{}", encode(id)),
        &AnomalyUpdate {
            state: state.to_owned(),
        },
    )
    .await
}

/// Every edge.
pub async fn edges() -> ApiResult<Page<Edge>> {
    get("/api/v1/edges?limit=500").await
}

/// A configuration an edge reported, by its hash (secrets left out by the edge).
pub async fn edge_config(hash: &str) -> ApiResult<edgewarden_api_types::EdgeConfig> {
    get(&format!("/api/v1/edges/configs/{}", encode(hash))).await
}

/// The event log, filtered (`kind`, `actor`, `subject`, `since`, `until`, `limit`, `offset`).
pub async fn events(filters: &[(&str, String)]) -> ApiResult<Page<StoredEvent>> {
    get(&with_query("/api/v1/events", filters)).await
}

/// Registered clients.
pub async fn clients() -> ApiResult<Page<Client>> {
    get("/api/v1/clients?limit=500").await
}

/// Registers a client; its secret is in the answer only.
pub async fn create_client(body: NewClientRequest) -> ApiResult<ClientWithSecret> {
    with_body(Method::POST, "/api/v1/clients", &body).await
}

/// Gives a client a new secret (the old one stops working), shown once.
pub async fn rotate_client_secret(client_id: &str) -> ApiResult<ClientWithSecret> {
    with_body(
        Method::POST,
        &format!("/api/v1/clients/{}/secret", encode(client_id)),
        &serde_json::json!({}),
    )
    .await
}

/// API keys (never the keys themselves).
pub async fn api_keys() -> ApiResult<Page<ApiKeySummary>> {
    get("/api/v1/api-keys?limit=500").await
}

/// Creates an API key; the key is in the answer only.
pub async fn create_api_key(body: NewApiKeyRequest) -> ApiResult<NewApiKey> {
    with_body(Method::POST, "/api/v1/api-keys", &body).await
}

/// Revokes an API key at once.
pub async fn delete_api_key(id: &str) -> ApiResult<()> {
    send(
        Method::DELETE,
        &format!("/api/v1/api-keys/{}", encode(id)),
        None,
    )
    .await
    .map(|_| ())
}

/// Signing keys.
pub async fn signing_keys() -> ApiResult<Vec<KeyInfo>> {
    get("/api/v1/keys").await
}

/// Rotates the signing key: new tokens are signed with a new key; the old one stays published until its tokens expire.
pub async fn rotate_signing_key() -> ApiResult<serde_json::Value> {
    with_body(Method::POST, "/api/v1/keys/rotate", &serde_json::json!({})).await
}

/// Webhooks.
pub async fn webhooks() -> ApiResult<Vec<Webhook>> {
    get("/api/v1/webhooks").await
}

/// Creates a webhook; its signing secret is in the answer only.
pub async fn create_webhook(body: NewWebhookRequest) -> ApiResult<Webhook> {
    with_body(Method::POST, "/api/v1/webhooks", &body).await
}

/// The current page as a path with its query (`/tokens?status=active`), to come back to after login.
/// The router's `search` has no leading `?`, so it is added here.
pub fn here(pathname: &str, search: &str) -> String {
    if search.is_empty() {
        pathname.to_owned()
    } else if search.starts_with('?') {
        format!("{pathname}{search}")
    } else {
        format!("{pathname}?{search}")
    }
}

/// The foreign issuers this admin API trusts (their tokens can be revoked here).
pub async fn issuers() -> ApiResult<Vec<TrustedIssuer>> {
    get("/api/v1/issuers").await
}

/// Stops trusting a foreign issuer (its recorded revocations stay until they expire).
pub async fn remove_issuer(issuer: &str) -> ApiResult<()> {
    send(
        Method::DELETE,
        &format!("/api/v1/issuers/{}", encode(issuer)),
        None,
    )
    .await
    .map(|_| ())
}

/// What the token debugger needs of this admin API: its issuer, its JWKS document as an edge fetches it,
/// and its clock.
#[derive(Clone, Debug)]
pub struct OwnIssuer {
    /// The `iss` of the tokens it issues.
    pub issuer: String,
    /// `/.well-known/jwks.json`, as text.
    pub jwks: String,
    /// The admin API's clock from the JWKS answer's `Date` header (Unix seconds), if it sent one.
    pub server_time: Option<f64>,
    /// This browser's clock when that answer arrived (Unix seconds).
    pub fetched_at: f64,
}

/// The admin API's public metadata and keys (no credential needed, nothing about a token is sent).
pub async fn own_issuer() -> ApiResult<OwnIssuer> {
    let metadata: serde_json::Value = get("/.well-known/oauth-authorization-server").await?;
    let issuer = metadata
        .get("issuer")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ApiError::Server("the metadata document names no issuer".to_owned()))?
        .to_owned();
    // Never from the browser's cache: a cached answer's Date header is as old as the answer, and the
    // debugger's clock difference is computed from it (an answer cached 8 s earlier showed 8 s of skew).
    let response = RequestBuilder::new("/.well-known/jwks.json")
        .header("accept", "application/json")
        .cache(web_sys::RequestCache::NoStore)
        .build()
        .map_err(|e| ApiError::Network(e.to_string()))?
        .send()
        .await
        .map_err(|e| ApiError::Network(e.to_string()))?;
    if !response.ok() {
        return Err(error_of(response).await);
    }
    let fetched_at = js_sys::Date::now() / 1000.0;
    let server_time = response
        .headers()
        .get("date")
        .map(|d| js_sys::Date::parse(&d) / 1000.0)
        .filter(|t| t.is_finite());
    let jwks = response
        .text()
        .await
        .map_err(|e| ApiError::Server(format!("unexpected answer: {e}")))?;
    Ok(OwnIssuer {
        issuer,
        jwks,
        server_time,
        fetched_at,
    })
}
