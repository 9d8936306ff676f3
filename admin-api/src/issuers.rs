//! Foreign issuers the admin API trusts: `POST /api/v1/issuers` (admin) registers an identity provider by
//! its `iss` and its JWKS (`jwks_uri` or inline `jwks`), `GET /api/v1/issuers` (admin, auditor) lists them,
//! `DELETE /api/v1/issuers/{issuer}` (admin, the issuer percent-encoded) stops trusting one; each change is
//! an `issuer.trusted` / `issuer.removed` event. A `jwks_uri` may be https: the system's trust store (or
//! `SSL_CERT_FILE`) decides which certificates are accepted.
//! A trusted issuer's identifiers may be revoked (`POST /api/v1/revocations` with `issuer`), and its tokens
//! may be presented for revocation: [`verify_presented`] checks them with the same `edgewarden-core`
//! engine and the same JWKS hygiene as the edges before anything is recorded.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgewarden_core::decision::Reason;
use edgewarden_core::engine::Engine;
use edgewarden_core::jwks::KeySet;
use edgewarden_core::token::{Rejection, VerifiedToken};
use serde_json::{json, Value};
use sqlx::Row as _;

use crate::auth::{is_unique_violation, Principal, Role};
use crate::db::{now, Db};
use crate::error::{ApiError, ApiResult};
use crate::events::{Event, EventBus};
use crate::extract::Json;
use crate::AppState;
pub use edgewarden_api_types::{NewIssuerRequest, TrustedIssuer};

/// Longest issuer string accepted.
pub const MAX_ISSUER_LEN: usize = 1024;
/// How long a fetched JWKS is reused before `jwks_uri` is fetched again (an unknown `kid` refetches at once).
pub const JWKS_CACHE_SECONDS: u64 = 60;
/// Largest JWKS document fetched from a `jwks_uri`.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long a foreign issuer's tokens are assumed to live at most when its registration does not say:
/// a subject or client revocation of that issuer stays in the feed this long.
pub const DEFAULT_TOKEN_LIFETIME_SECONDS: i64 = 86_400;
/// Longest `max_token_lifetime_seconds` accepted (a year, as the latest foreign `expires_at`).
pub const MAX_TOKEN_LIFETIME_SECONDS: i64 = 366 * 86_400;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/issuers", post(create).get(list))
        .route("/api/v1/issuers/{issuer}", delete(remove))
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<NewIssuerRequest>,
) -> ApiResult<Response> {
    principal.require(&[Role::Admin], "register issuers")?;
    if req.issuer == state.keys.issuer() {
        return Err(ApiError::field(
            "issuer",
            "issuer: is the admin API's own issuer, which is always trusted",
        ));
    }
    let issuer = register(&state.db, &state.events, req, &principal.actor()).await?;
    Ok((StatusCode::CREATED, Json(issuer)).into_response())
}

async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(issuer): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(&[Role::Admin], "remove issuers")?;
    unregister(&state.db, &state.events, &issuer, &principal.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Stops trusting `issuer` (the API's `DELETE /api/v1/issuers/{issuer}` and the CLI's `issuer remove`):
/// its tokens can no longer be presented, nor its identifiers newly revoked. Revocations already recorded
/// stay in the feed until they expire, so removing an issuer never un-revokes a token. A 404 when it is
/// not trusted.
pub async fn unregister(db: &Db, bus: &EventBus, issuer: &str, actor: &str) -> ApiResult<()> {
    let mut tx = db.pool.begin().await?;
    let removed = sqlx::query("DELETE FROM trusted_issuers WHERE issuer = $1")
        .bind(issuer)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(ApiError::NotFound(format!(
            "issuer {issuer:?} is not trusted; GET /api/v1/issuers lists those that are"
        )));
    }
    crate::events::record(
        bus,
        db,
        &mut tx,
        Event::new("issuer.removed", actor).details(json!({ "issuer": issuer })),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(issuer = %issuer, actor = %actor, "trusted issuer removed");
    Ok(())
}

/// Validates and stores a trusted issuer (the API's `POST /api/v1/issuers` and the CLI's `issuer add`):
/// a printable issuer, and exactly one of an http(s) `jwks_uri` or a `jwks` that passes the edge's key
/// hygiene, and an optional longest token lifetime. A 409 when the issuer is already trusted. Records an
/// `issuer.trusted` event in the same transaction.
pub async fn register(
    db: &Db,
    bus: &EventBus,
    req: NewIssuerRequest,
    actor: &str,
) -> ApiResult<TrustedIssuer> {
    crate::extract::check_identifier("issuer", &req.issuer, MAX_ISSUER_LEN)?;
    let lifetime = req
        .max_token_lifetime_seconds
        .unwrap_or(DEFAULT_TOKEN_LIFETIME_SECONDS);
    if !(1..=MAX_TOKEN_LIFETIME_SECONDS).contains(&lifetime) {
        return Err(ApiError::field(
            "max_token_lifetime_seconds",
            format!(
                "max_token_lifetime_seconds: {lifetime} is not between 1 and {MAX_TOKEN_LIFETIME_SECONDS} (366 days); give the longest lifetime of the issuer's access tokens"
            ),
        ));
    }
    let (jwks_uri, jwks) = match (req.jwks_uri, req.jwks) {
        (Some(uri), None) => (Some(check_jwks_uri(&uri)?), None),
        (None, Some(jwks)) => {
            // Symmetric keys are refused: a listed JWKS must not hold a shared secret.
            KeySet::from_jwks_value(&jwks, false)
                .map_err(|e| ApiError::field("jwks", format!("jwks: {e}")))?;
            (None, Some(jwks))
        }
        _ => {
            return Err(ApiError::bad_request(
                "exactly one of jwks_uri or jwks is required",
            ))
        }
    };
    let created_at = now();
    let mut tx = db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO trusted_issuers (issuer, jwks_uri, jwks, created_at, created_by, max_token_lifetime_seconds) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&req.issuer)
    .bind(jwks_uri.as_deref())
    .bind(jwks.as_ref().map(Value::to_string))
    .bind(created_at)
    .bind(actor)
    .bind(lifetime)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::Conflict(format!(
                "issuer {:?} is already trusted",
                req.issuer
            )))
        }
        Err(e) => return Err(e.into()),
    }
    crate::events::record(
        bus,
        db,
        &mut tx,
        Event::new("issuer.trusted", actor).details(json!({
            "issuer": req.issuer,
            "jwks_uri": jwks_uri,
            "inline_jwks": jwks.is_some(),
            "max_token_lifetime_seconds": lifetime,
        })),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(issuer = %req.issuer, actor = %actor, "trusted issuer registered");
    Ok(TrustedIssuer {
        issuer: req.issuer,
        jwks_uri,
        jwks,
        max_token_lifetime_seconds: lifetime,
        created_at,
        created_by: actor.to_owned(),
    })
}

/// An http(s) URL without credentials, as the JWKS source of an issuer.
fn check_jwks_uri(uri: &str) -> ApiResult<String> {
    let invalid = |why: &str| ApiError::field("jwks_uri", format!("jwks_uri: {why}"));
    crate::extract::check_identifier("jwks_uri", uri, 2048)?;
    let url = url::Url::parse(uri).map_err(|e| invalid(&format!("not an absolute url ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(&format!(
            "scheme {} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    Ok(url.to_string())
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<TrustedIssuer>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list issuers")?;
    Ok(Json(all(&state.db).await?))
}

/// Every trusted issuer, ordered by issuer.
pub async fn all(db: &Db) -> Result<Vec<TrustedIssuer>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT issuer, jwks_uri, jwks, created_at, created_by, max_token_lifetime_seconds FROM trusted_issuers ORDER BY issuer",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let jwks: Option<String> = row.try_get("jwks")?;
        out.push(TrustedIssuer {
            issuer: row.try_get("issuer")?,
            jwks_uri: row.try_get("jwks_uri")?,
            jwks: jwks.and_then(|j| serde_json::from_str(&j).ok()),
            max_token_lifetime_seconds: row.try_get("max_token_lifetime_seconds")?,
            created_at: row.try_get("created_at")?,
            created_by: row.try_get("created_by")?,
        });
    }
    Ok(out)
}

/// Where a trusted issuer's keys come from.
enum Source {
    Uri(String),
    Inline(Value),
}

/// The key source of a trusted issuer, or `None` when `issuer` is not trusted.
async fn source(db: &Db, issuer: &str) -> Result<Option<Source>, sqlx::Error> {
    let row = sqlx::query("SELECT jwks_uri, jwks FROM trusted_issuers WHERE issuer = $1")
        .bind(issuer)
        .fetch_optional(&db.pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let uri: Option<String> = row.try_get("jwks_uri")?;
    let jwks: Option<String> = row.try_get("jwks")?;
    Ok(match (uri, jwks) {
        (Some(uri), _) => Some(Source::Uri(uri)),
        (None, Some(jwks)) => Some(Source::Inline(
            serde_json::from_str(&jwks).unwrap_or(Value::Null),
        )),
        (None, None) => None,
    })
}

/// The longest token lifetime registered for `issuer`, or `None` when it is not a trusted foreign issuer.
pub async fn token_lifetime(db: &Db, issuer: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT max_token_lifetime_seconds FROM trusted_issuers WHERE issuer = $1")
        .bind(issuer)
        .fetch_optional(&db.pool)
        .await
}

/// JWKS documents fetched from `jwks_uri`s, by URI, with when they were fetched. Shared by every app in
/// the process: the key is the URI, and a document is public.
static FETCHED: LazyLock<Mutex<HashMap<String, (Instant, Value)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The client that fetches `jwks_uri`s: https with the system's trust store (or the PEM bundle named by
/// `SSL_CERT_FILE`), no redirects, five seconds. Built once; why it could not be is kept for every answer.
static CLIENT: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            format!(
                "no https client ({}); install the system's CA certificates or set SSL_CERT_FILE to a PEM bundle",
                error_chain(&e)
            )
        })
});

/// A 400 about the presented token; the message says why it cannot be revoked, never the token itself.
fn unverifiable(message: impl std::fmt::Display) -> ApiError {
    ApiError::field("token", format!("token: {message}"))
}

fn refused(rejection: Rejection) -> ApiError {
    unverifiable(format_args!(
        "{} ({})",
        rejection.description,
        rejection.reason.as_str()
    ))
}

/// Fetches (or reuses, within [`JWKS_CACHE_SECONDS`]) the JWKS at `uri`; `fresh` skips the cache.
async fn fetch_jwks(uri: &str, fresh: bool) -> ApiResult<Value> {
    if !fresh {
        let cache = FETCHED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, jwks)) = cache.get(uri) {
            if at.elapsed() < Duration::from_secs(JWKS_CACHE_SECONDS) {
                return Ok(jwks.clone());
            }
        }
    }
    let failed = |why: String| unverifiable(format_args!("cannot fetch the issuer's jwks: {why}"));
    let client = CLIENT.as_ref().map_err(|why| failed(why.clone()))?;
    let mut response = client
        .get(uri)
        .send()
        .await
        .map_err(|e| failed(format!("{uri}: {}", error_chain(&e.without_url()))))?;
    if !response.status().is_success() {
        return Err(failed(format!("{uri} answered {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| failed(e.without_url().to_string()))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err(failed(format!(
                "{uri} answered more than {MAX_JWKS_BYTES} bytes"
            )));
        }
    }
    // The same hygiene as at the edge for a remote JWKS: no symmetric keys, weak keys refused.
    KeySet::from_jwks_json(&body, false).map_err(|e| failed(format!("{uri}: {e}")))?;
    let jwks: Value = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
    let mut cache = FETCHED.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 1024 {
        cache.clear();
    }
    cache.insert(uri.to_owned(), (Instant::now(), jwks.clone()));
    Ok(jwks)
}

/// An error and its sources, so a TLS failure says which certificate problem it was, not only
/// "error sending request".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// An engine that trusts exactly `issuer` with `jwks`, any audience and any `typ`.
fn engine_for(issuer: &str, jwks: &Value) -> ApiResult<Engine> {
    let config = json!({"issuers": [{"issuer": issuer, "audiences": [], "jwks": jwks}]});
    Engine::from_json(config.to_string().as_bytes()).map_err(|e| {
        unverifiable(format_args!(
            "the keys of issuer {issuer:?} are not usable: {e}"
        ))
    })
}

/// The `iss` claim of a token that the engine already parsed (so it is a well-formed JWS), read without
/// verification only to pick which issuer's keys to verify it with.
fn unverified_iss(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// Verifies a presented token completely (signature, claims, time) against the admin API's own keys or,
/// when its `iss` is a trusted foreign issuer, against that issuer's keys. Every refusal is a 400 naming
/// `token` that says why (bad signature, unknown issuer, expired...).
pub async fn verify_presented(state: &AppState, token: &str) -> ApiResult<VerifiedToken> {
    let now = now() as u64;
    let rejection = match state.keys.engine().verify(token, now) {
        Ok(verified) => return Ok(verified),
        Err(r) => r,
    };
    if rejection.reason != Reason::WrongIssuer {
        return Err(refused(rejection));
    }
    let Some(iss) = unverified_iss(token) else {
        return Err(refused(rejection));
    };
    let source = source(&state.db, &iss).await?.ok_or_else(|| {
        unverifiable(format_args!(
            "issuer {iss:?} is not trusted; register it with POST /api/v1/issuers (unknown_issuer)"
        ))
    })?;
    match source {
        Source::Inline(jwks) => engine_for(&iss, &jwks)?.verify(token, now).map_err(refused),
        Source::Uri(uri) => {
            let jwks = fetch_jwks(&uri, false).await?;
            match engine_for(&iss, &jwks)?.verify(token, now) {
                // A key the cached document does not have yet: the issuer may have rotated.
                Err(r) if r.reason == Reason::UnknownKid => {
                    let jwks = fetch_jwks(&uri, true).await?;
                    engine_for(&iss, &jwks)?.verify(token, now).map_err(refused)
                }
                other => other.map_err(refused),
            }
        }
    }
}
