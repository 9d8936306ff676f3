//! Who is calling and what they may do: API keys (`Authorization: Bearer <key>`, stored as SHA-256)
//! and dashboard sessions (HttpOnly SameSite=Strict cookie plus a double-submit CSRF header on
//! mutations), resolved into a [`Principal`] with one of four roles.
//! Handlers take `Principal` as an extractor and call [`Principal::require`] before doing anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use sqlx::Row as _;

use crate::db::{now, Db};
use crate::error::ApiError;
use crate::secrets::{ct_eq, random_id, random_secret, sha256_hex};
use crate::AppState;
pub use edgewarden_api_types::{NewApiKey, Role};

/// Name of the dashboard session cookie (HttpOnly).
pub const SESSION_COOKIE: &str = "ew_session";
/// Name of the CSRF cookie the dashboard reads and echoes in [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "ew_csrf";
/// Header that must repeat the CSRF token on every mutation made with a session cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Prefix of every API key, so leaked keys are recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "ewk_";

/// How the principal authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// An API key, by its id.
    ApiKey {
        /// The key's public id (`key_...`).
        id: String,
    },
    /// A dashboard session of a user.
    Session {
        /// The user's id.
        user_id: String,
    },
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// What they may do.
    pub role: Role,
    /// For service (and optionally edge) keys: the client they act for.
    pub client_id: Option<String>,
    /// Human name of the key or username, for audit records.
    pub name: String,
    /// For edge keys bound to edge names: the names it may poll the feed and report usage as.
    /// `None` for every other credential, and for an unbound edge key (see [`Principal::require_edge`]).
    pub edges: Option<Vec<String>>,
    /// How they authenticated.
    pub credential: Credential,
}

impl Principal {
    /// 403 unless the principal has one of `roles`; `action` completes "role edge may not ...".
    pub fn require(&self, roles: &[Role], action: &str) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "role {} may not {action}",
                self.role
            )))
        }
    }

    /// 403 unless the principal is an admin, or a service acting for `client_id`.
    pub fn require_client(&self, client_id: &str, action: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Service if self.client_id.as_deref() == Some(client_id) => Ok(()),
            Role::Service => Err(ApiError::Forbidden(format!(
                "service key for client {:?} may not {action} for client {client_id:?}",
                self.client_id.as_deref().unwrap_or("")
            ))),
            role => Err(ApiError::Forbidden(format!("role {role} may not {action}"))),
        }
    }

    /// 403 unless this principal may act as the edge named `edge` (in `x-edgewarden-edge` on a feed
    /// poll, or `edge` in a usage report): an edge key bound to edge names may act only as one of them,
    /// so one edge's key cannot overwrite another edge's sync state or pin a usage report on it.
    /// Admins act as any edge. An unbound edge key (created without `--edge`, as every key created
    /// before keys were bound) still acts as any edge, so upgrading does not cut edges off from the
    /// feed; its first use per process logs a warning that names the key to replace.
    pub fn require_edge(&self, edge: &str) -> Result<(), ApiError> {
        if self.role != Role::Edge {
            return Ok(());
        }
        let Some(bound) = &self.edges else {
            warn_unbound_once(self, edge);
            return Ok(());
        };
        if bound.iter().any(|b| b == edge) {
            return Ok(());
        }
        let names = bound
            .iter()
            .map(|b| format!("{b:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(ApiError::Forbidden(format!(
            "this edge key is bound to edge {names} and may not act as edge {edge:?}: \
             give each edge its own key (`edgewarden-admin api-key create --role edge --edge {edge}`)"
        )))
    }

    /// The string recorded as the actor of an action: `api_key:key_0123 (deploy bot)` or `user:alice`.
    pub fn actor(&self) -> String {
        match &self.credential {
            Credential::ApiKey { id } => format!("api_key:{id} ({})", self.name),
            Credential::Session { .. } => format!("user:{}", self.name),
        }
    }
}

/// Logs once per key and process that an unbound edge key acted as an edge.
fn warn_unbound_once(principal: &Principal, edge: &str) {
    static WARNED: Mutex<Option<std::collections::HashSet<String>>> = Mutex::new(None);
    let Credential::ApiKey { id } = &principal.credential else {
        return;
    };
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    let warned = warned.get_or_insert_with(Default::default);
    if warned.len() < 10_000 && warned.insert(id.clone()) {
        tracing::warn!(
            key = %id,
            name = %principal.name,
            edge,
            "edge key is not bound to an edge name and may act as any edge; replace it with one created with --edge"
        );
    }
}

/// How often one address's bad API keys or refused logins leave a log line and an event, at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Logs and records (throttled per address) a request with an API key that is unknown or deleted.
/// Neither the key nor any part of it is written anywhere.
async fn report_bad_api_key(state: &AppState, address: &str, method: &Method, path: &str) {
    if !state.api_keys.report("auth.bad_api_key", address) {
        return;
    }
    tracing::warn!(
        address,
        %method,
        path,
        "request with an unknown or deleted api key (logged once a minute per address)"
    );
    crate::events::record_or_log(
        state,
        crate::events::Event::new("auth.bad_api_key", format!("address:{address}")).details(
            serde_json::json!({"address": address, "method": method.as_str(), "path": path,
                               "note": "first of this minute from this address"}),
        ),
    )
    .await;
}

/// Recently validated API keys, so thousands of edges polling every second cost no database read.
/// A key deleted on this replica is evicted at once; on other replicas within `ttl`.
/// It also holds the throttle of credential-failure reports (bad keys, refused logins): at most one
/// log line and event per kind and address a minute, whatever the flood.
#[derive(Debug)]
pub struct ApiKeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
    reports: crate::ratelimit::Throttle,
}

impl ApiKeyCache {
    /// A cache keeping entries for `ttl`.
    pub fn new(ttl: Duration) -> ApiKeyCache {
        ApiKeyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
            reports: crate::ratelimit::Throttle::new(REPORT_EVERY),
        }
    }

    fn get(&self, hash: &str) -> Option<Principal> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, hash: String, principal: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 50_000 {
            entries.clear();
        }
        entries.insert(hash, (principal, Instant::now()));
    }

    /// True when a credential failure of `kind` from `address` should be logged and recorded now
    /// (the first of its kind from that address this minute).
    pub fn report(&self, kind: &str, address: &str) -> bool {
        self.reports.allow(&format!("{kind} {address}"))
    }

    /// Forgets every cached key with this id (after it is deleted).
    pub fn evict_id(&self, id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (p, _)| p.credential != Credential::ApiKey { id: id.to_owned() });
    }
}

/// Creates an API key with `role` (service keys must name a client) and returns the secret once.
/// Does not check that the client exists nor bind an edge key to edge names: the API and the CLI
/// create keys with [`create_checked_api_key`].
pub async fn create_api_key(
    db: &Db,
    role: Role,
    name: &str,
    client_id: Option<&str>,
) -> Result<NewApiKey, ApiError> {
    if role == Role::Service && client_id.is_none() {
        return Err(service_needs_client());
    }
    insert_api_key(db, role, name, client_id, &[]).await
}

fn service_needs_client() -> ApiError {
    ApiError::field(
        "client_id",
        "client_id: a service key must be bound to a client: name it with `--client-id <client>` \
         (CLI) or `\"client_id\"` (API)",
    )
}

/// Creates an API key as `POST /api/v1/api-keys` and `edgewarden-admin api-key create` do, refusing
/// what could not work: a key for a client that does not exist (create the client first), edge names
/// on a key that is not an edge key. An edge key with `edges` may poll the feed and report usage only under those names ([`Principal::require_edge`]).
pub async fn create_checked_api_key(
    db: &Db,
    role: Role,
    name: &str,
    client_id: Option<&str>,
    edges: &[String],
) -> Result<NewApiKey, ApiError> {
    crate::extract::check_identifier("name", name, 200)?;
    match (role, client_id) {
        (Role::Service, None) => return Err(service_needs_client()),
        (_, Some(client_id)) => {
            crate::extract::check_identifier("client_id", client_id, 200)?;
            if crate::clients::find(db, client_id).await?.is_none() {
                return Err(ApiError::field(
                    "client_id",
                    format!(
                        "client_id: no client {client_id:?}; create the client first: \
                         POST /api/v1/clients {{\"client_id\": {client_id:?}}} \
                         (or the dashboard's Clients page), then create the key"
                    ),
                ));
            }
        }
        (_, None) => {}
    }
    if !edges.is_empty() && role != Role::Edge {
        return Err(ApiError::field(
            "edges",
            format!("edges: a {role} key cannot be bound to edges; only edge keys take edge names"),
        ));
    }
    for (i, edge) in edges.iter().enumerate() {
        crate::extract::check_identifier(&format!("edges[{i}]"), edge, 200)?;
    }
    let mut unique: Vec<String> = Vec::with_capacity(edges.len());
    for edge in edges {
        if !unique.contains(edge) {
            unique.push(edge.clone());
        }
    }
    insert_api_key(db, role, name, client_id, &unique).await
}

async fn insert_api_key(
    db: &Db,
    role: Role,
    name: &str,
    client_id: Option<&str>,
    edges: &[String],
) -> Result<NewApiKey, ApiError> {
    let id = random_id("key_");
    let key = random_secret(API_KEY_PREFIX);
    // NULL for an unbound key; otherwise a JSON array of the edge names.
    let bound = (!edges.is_empty())
        .then(|| serde_json::to_string(edges))
        .transpose()
        .map_err(|e| ApiError::Internal(e.into()))?;
    sqlx::query("INSERT INTO api_keys (id, name, role, client_id, key_hash, created_at, edges) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&id)
        .bind(name)
        .bind(role.as_str())
        .bind(client_id)
        .bind(sha256_hex(&key))
        .bind(now())
        .bind(bound)
        .execute(&db.pool)
        .await?;
    Ok(NewApiKey {
        id,
        key,
        role,
        name: name.to_owned(),
        client_id: client_id.map(str::to_owned),
        edges: edges.to_vec(),
    })
}

/// The edge names stored for a key (`NULL`: unbound).
pub fn parse_edges(stored: Option<String>) -> Result<Option<Vec<String>>, ApiError> {
    stored
        .map(|s| serde_json::from_str::<Vec<String>>(&s))
        .transpose()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("api_keys.edges is not a json array: {e}")))
}

/// Resolves an API key to its principal, or `None` when it is unknown or deleted.
pub async fn lookup_api_key(state: &AppState, key: &str) -> Result<Option<Principal>, ApiError> {
    let hash = sha256_hex(key);
    if let Some(p) = state.api_keys.get(&hash) {
        return Ok(Some(p));
    }
    load_api_key(state, hash).await
}

/// Resolves an API key from the database, bypassing (and refreshing) the cache.
async fn load_api_key(state: &AppState, hash: String) -> Result<Option<Principal>, ApiError> {
    let row = sqlx::query("SELECT id, name, role, client_id, key_hash, edges FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .bind(&hash)
        .fetch_optional(&state.db.pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let stored: String = row.try_get("key_hash")?;
    if !ct_eq(stored.as_bytes(), hash.as_bytes()) {
        return Ok(None);
    }
    let role: String = row.try_get("role")?;
    let principal = Principal {
        role: role
            .parse()
            .map_err(|e: String| ApiError::Internal(anyhow::anyhow!(e)))?,
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        edges: parse_edges(row.try_get("edges")?)?,
        credential: Credential::ApiKey {
            id: row.try_get("id")?,
        },
    };
    state.api_keys.put(hash, principal.clone());
    Ok(Some(principal))
}

/// How often a held request (event stream, feed long-poll) re-checks the credential it was opened with.
pub const REVALIDATE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How a held request re-checks its credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recheck {
    /// From the database every time: a deletion on any replica is seen at the next check. For event
    /// streams, which are few (one per open dashboard or auditor).
    Database,
    /// Through the API key cache: a deletion on this replica is seen at the next check, on another one
    /// once the cache entry expires (`api_key_cache_seconds`). For feed long-polls, which every edge holds.
    Cached,
}

/// Completes once the credential of a held request no longer authenticates `principal` with the same
/// role: its API key deleted, its session logged out or expired, its user's role changed. Checks every
/// [`REVALIDATE_EVERY`]; a database error keeps the request and checks again at the next tick.
pub async fn credential_revoked(
    state: AppState,
    headers: HeaderMap,
    principal: Principal,
    recheck: Recheck,
) {
    // One check per distinct credential for all the requests that hold it (`held.rs`).
    crate::held::credential_revoked(state, headers, principal, recheck).await
}

pub(crate) async fn still_valid(
    state: &AppState,
    headers: &HeaderMap,
    principal: &Principal,
    recheck: Recheck,
) -> Result<bool, ApiError> {
    let current = match &principal.credential {
        Credential::ApiKey { .. } => match bearer(headers).ok().flatten() {
            Some(key) if recheck == Recheck::Database => {
                load_api_key(state, sha256_hex(key)).await?
            }
            Some(key) => lookup_api_key(state, key).await?,
            None => None,
        },
        Credential::Session { .. } => match cookie(headers, SESSION_COOKIE) {
            Some(session) => crate::session::lookup(state, session)
                .await?
                .map(|(p, _)| p),
            None => None,
        },
    };
    Ok(current.is_some_and(|p| p.role == principal.role && p.credential == principal.credential))
}

/// Reads one cookie from the request headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The bearer credential of an `Authorization` header, if that header is a Bearer one.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("authorization header is not valid ascii".into()))?;
    match value.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
            Ok(Some(key.trim()))
        }
        _ => Err(ApiError::Unauthorized(
            "authorization header must be `Bearer <api key>`".into(),
        )),
    }
}

/// The caller's network address (when served through a socket) for rate limiting and records.
pub fn client_address(parts_extensions: &axum::http::Extensions) -> String {
    parts_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
        .unwrap_or_else(|| "local".to_owned())
}

/// The caller's address as an extractor (`local` when the app is called without a socket, as in tests).
#[derive(Clone, Debug)]
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_address(&parts.extensions)))
    }
}

/// Route-level access control, applied to every route before its handler runs (so a forbidden caller
/// learns nothing from input validation): the roles allowed on each method and path come from
/// [`crate::openapi::OPERATIONS`], which is also what the OpenAPI document publishes. Routes marked
/// `public` or `client` (OAuth client authentication) authenticate inside their handlers; a route
/// missing from the table is refused (fail closed). The resolved principal is stored in the request
/// extensions so the handler's `Principal` extractor does not authenticate twice.
pub async fn enforce_roles(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    // axum answers HEAD with the GET handler (without the body), so HEAD follows GET's rule.
    let method = match request.method().as_str().to_ascii_lowercase() {
        m if m == "head" => "get".to_owned(),
        m => m,
    };
    let Some(path) = path else {
        return next.run(request).await;
    };
    let op = crate::openapi::OPERATIONS
        .iter()
        .find(|op| op.path == path && op.method == method);
    let Some(op) = op else {
        tracing::error!(method = %method, path = %path, "route missing from openapi::OPERATIONS, refusing it");
        return ApiError::Forbidden(format!("{method} {path} has no access rule")).into_response();
    };
    let roles: Vec<&str> = op.roles.split(' ').collect();
    let api = path.starts_with("/api/");
    if roles.contains(&"public") || roles.contains(&"client") {
        return json_rejection(api, next.run(request).await).await;
    }
    let (mut parts, body) = request.into_parts();
    let principal = match Principal::authenticate(&mut parts, &state).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !roles.contains(&principal.role.as_str()) {
        let what = op
            .summary
            .split(" (")
            .next()
            .unwrap_or(op.summary)
            .to_lowercase();
        return ApiError::Forbidden(format!(
            "role {} may not call {} {path} ({what}); roles allowed: {}",
            principal.role,
            method.to_ascii_uppercase(),
            roles.join(", ")
        ))
        .into_response();
    }
    parts.extensions.insert(principal);
    json_rejection(
        api,
        next.run(axum::extract::Request::from_parts(parts, body))
            .await,
    )
    .await
}

/// axum's own extractors reject in plain text (a path parameter that is not valid UTF-8, say); under
/// `/api/` every error is answered in the API's JSON shape, so such a 4xx is rewritten into it with the
/// same status and text. `/oauth/*` keeps its own (RFC 6749) shape.
async fn json_rejection(api: bool, response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let plain = response.status().is_client_error()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/plain"));
    if !api || !plain {
        return response;
    }
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 16 * 1024)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_lowercase();
    let code = match status.as_u16() {
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        _ => "invalid_request",
    };
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        Principal::authenticate(parts, state).await
    }
}

impl Principal {
    /// Resolves the request's API key or session cookie (checking CSRF on mutations).
    pub async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<Principal, ApiError> {
        if let Some(key) = bearer(&parts.headers)? {
            if let Some(principal) = lookup_api_key(state, key).await? {
                return Ok(principal);
            }
            let address = client_address(&parts.extensions);
            report_bad_api_key(state, &address, &parts.method, parts.uri.path()).await;
            return Err(ApiError::Unauthorized("unknown or deleted api key".into()));
        }
        if let Some(session) = cookie(&parts.headers, SESSION_COOKIE) {
            let (principal, csrf_hash) =
                crate::session::lookup(state, session)
                    .await?
                    .ok_or_else(|| {
                        ApiError::Unauthorized("session expired or unknown, log in again".into())
                    })?;
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            if !safe {
                let presented = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if presented.is_empty()
                    || !ct_eq(sha256_hex(presented).as_bytes(), csrf_hash.as_bytes())
                {
                    return Err(ApiError::Forbidden(format!(
                        "missing or wrong {CSRF_HEADER} header: mutations with a session cookie must repeat the csrf token"
                    )));
                }
            }
            return Ok(principal);
        }
        Err(ApiError::Unauthorized(
            "missing credentials: send `Authorization: Bearer <api key>` or a session cookie"
                .into(),
        ))
    }
}

/// Creates a dashboard user; `password` is hashed with argon2id.
pub async fn create_user(
    state_db: &Db,
    argon: &crate::config::Argon2Params,
    username: &str,
    password: &str,
    role: Role,
) -> Result<String, ApiError> {
    if username.trim().is_empty() {
        return Err(ApiError::field("username", "username: must not be empty"));
    }
    check_password("password", password)?;
    let hash = crate::secrets::hash_password(password, argon)?;
    let id = random_id("usr_");
    let result = sqlx::query("INSERT INTO users (id, username, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(username)
        .bind(hash)
        .bind(role.as_str())
        .bind(now())
        .execute(&state_db.pool)
        .await;
    match result {
        Ok(_) => Ok(id),
        Err(e) if is_unique_violation(&e) => Err(ApiError::Conflict(format!(
            "user {username:?} already exists"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Shortest password accepted for a dashboard user.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// 400 naming `field` unless `password` is long enough (at least [`MIN_PASSWORD_CHARS`] characters).
pub fn check_password(field: &str, password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ApiError::field(
            field,
            format!("{field}: {chars} characters, minimum {MIN_PASSWORD_CHARS}"),
        ));
    }
    Ok(())
}

/// Stores a new password hash for user `user_id` and ends every session of that user except the
/// one whose id hash is `keep` (the session that asked for the change). Returns the sessions ended.
pub async fn set_password_hash(
    db: &Db,
    user_id: &str,
    hash: &str,
    keep: Option<&str>,
) -> Result<u64, ApiError> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(hash)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id_hash <> $2")
        .bind(user_id)
        .bind(keep.unwrap_or(""))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(ended)
}

/// Sets the password of user `username` (the CLI's `user password`) and ends all of their sessions.
/// Returns the sessions ended; 404 when there is no such user.
pub async fn set_password(
    db: &Db,
    argon: &crate::config::Argon2Params,
    username: &str,
    password: &str,
) -> Result<u64, ApiError> {
    check_password("password", password)?;
    let user_id: Option<String> = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&db.pool)
        .await?;
    let Some(user_id) = user_id else {
        return Err(ApiError::NotFound(format!(
            "no user {username:?}; create one with `edgewarden-admin user create --username {username}`"
        )));
    };
    let hash = crate::secrets::hash_password(password, argon)?;
    set_password_hash(db, &user_id, &hash, None).await
}

/// True when a database error is a uniqueness violation (both engines).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.message().contains("UNIQUE constraint failed")
                || d.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}
