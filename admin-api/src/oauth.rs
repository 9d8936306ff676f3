//! The OAuth 2.0 endpoints, form-encoded as their RFCs say, answering errors in the RFC 6749 5.2 shape:
//! `POST /oauth/token` (client_credentials and refresh_token grants; refresh tokens rotate on every
//! use, and a spent one presented again revokes its whole family and raises an anomaly, RFC 9700 4.14.2),
//! `POST /oauth/revoke` (RFC 7009) and `POST /oauth/introspect` (RFC 7662, verified by the same
//! `edgewarden-core` engine as the edges; inactive tokens reveal only `{"active": false}`).
//! Callers authenticate as a client (HTTP Basic or `client_secret_post`) or, for revoke and
//! introspect, with an API key.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sqlx::Row as _;

use crate::auth::{client_address, lookup_api_key, Principal, Role};
use crate::clients::{self, Client};
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::revocations::{begin_change, notify_change, revoke_family_in, revoke_verified};
use crate::secrets::sha256_hex;
use crate::tokens::{check_grant, issue_in, RefreshPlan, REFRESH_PREFIX};
use crate::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke_endpoint))
        .route("/oauth/introspect", post(introspect))
}

/// Parses a form body; repeated parameters are an error (RFC 6749 3.2).
async fn form(req: Request) -> ApiResult<(HeaderMap, String, HashMap<String, String>)> {
    let headers = req.headers().clone();
    let address = client_address(req.extensions());
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return Err(ApiError::oauth(
                "invalid_request",
                format!("content-type must be application/x-www-form-urlencoded, got {ct}"),
            ));
        }
    }
    let body = crate::extract::body_bytes(req)
        .await
        .map_err(|e| ApiError::oauth("invalid_request", e.to_string()))?;
    let mut params = HashMap::new();
    for (k, v) in form_urlencoded::parse(&body) {
        if params.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::oauth(
                "invalid_request",
                format!("parameter {k} is repeated"),
            ));
        }
    }
    Ok((headers, address, params))
}

/// Who is calling an OAuth endpoint.
enum Caller {
    Client(Client),
    Key(Principal),
}

/// Authenticates the client by HTTP Basic (RFC 6749 2.3.1, form-urlencoded id and secret) or by
/// `client_id` + `client_secret` in the body; for revoke/introspect also accepts an API key.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    allow_api_key: bool,
) -> ApiResult<Caller> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let basic = auth
        .and_then(|a| a.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("basic"))
        .map(|(_, v)| v.trim());
    let bearer = auth
        .and_then(|a| a.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, v)| v.trim());
    let (id, secret) = match (basic, params.get("client_secret")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::oauth(
                "invalid_request",
                "use one client authentication method, not two",
            ))
        }
        (Some(b64), None) => {
            let decoded = STANDARD
                .decode(b64)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::oauth("invalid_client", "basic credentials are not valid base64")
                })?;
            let (id, secret) = decoded.split_once(':').ok_or_else(|| {
                ApiError::oauth("invalid_client", "basic credentials lack a colon")
            })?;
            let unescape = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (unescape(id), unescape(secret))
        }
        (None, Some(secret)) => {
            let id = params.get("client_id").ok_or_else(|| {
                ApiError::oauth("invalid_request", "client_secret without client_id")
            })?;
            (id.clone(), secret.clone())
        }
        (None, None) => {
            if let (true, Some(key)) = (allow_api_key, bearer) {
                let principal = lookup_api_key(state, key).await?.ok_or_else(|| {
                    ApiError::oauth("invalid_client", "unknown or deleted api key")
                })?;
                return Ok(Caller::Key(principal));
            }
            return Err(ApiError::oauth(
                "invalid_client",
                "client authentication required (http basic or client_secret_post)",
            ));
        }
    };
    clients::authenticate(&state.db, &id, &secret)
        .await?
        .map(Caller::Client)
        .ok_or_else(|| ApiError::oauth("invalid_client", "unknown client or wrong secret"))
}

/// An API key whose role may not use this endpoint: 403, in the RFC 6749 5.2 shape like every other
/// `/oauth/*` error (`unauthorized_client`: the caller is authenticated but not allowed this).
fn refused(description: String) -> ApiError {
    ApiError::OAuth {
        status: axum::http::StatusCode::FORBIDDEN,
        error: "unauthorized_client",
        description,
    }
}

fn no_store(body: Value) -> Response {
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn scopes_param(params: &HashMap<String, String>) -> Option<Vec<String>> {
    params.get("scope").map(|s| {
        s.split(' ')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Maps a validation failure of a requested grant into OAuth's vocabulary.
fn grant_error(e: ApiError) -> ApiError {
    match e {
        ApiError::BadRequest {
            field: Some(f),
            message,
        } if f.starts_with("scopes") => ApiError::oauth("invalid_scope", message),
        ApiError::BadRequest { message, .. } => ApiError::oauth("invalid_request", message),
        other => other,
    }
}

async fn token(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let (headers, address, params) = form(req).await?;
    state.token_limiter.check(&format!("oauth:{address}"))?;
    // A service API key acts as the client it is bound to; other API keys are not clients.
    let (client, actor) = match authenticate(&state, &headers, &params, true).await? {
        Caller::Client(client) => {
            let actor = format!("client:{}", client.client_id);
            (client, actor)
        }
        Caller::Key(p) if p.role == Role::Service => {
            let id = p.client_id.clone().unwrap_or_default();
            let client = clients::find(&state.db, &id)
                .await?
                .ok_or_else(|| ApiError::oauth("invalid_client", format!("the service key's client {id:?} no longer exists")))?;
            (client, p.actor())
        }
        Caller::Key(p) => {
            return Err(refused(format!(
                "role {} may not use the token endpoint: authenticate as a client (HTTP Basic or client_secret_post) or with a service key",
                p.role
            )))
        }
    };
    let grant_type = params.get("grant_type").map(String::as_str).unwrap_or("");
    match grant_type {
        "client_credentials" => {
            // Default to everything the client may have (RFC 6749 3.3 lets the server pick).
            let scopes = scopes_param(&params).unwrap_or_else(|| client.allowed_scopes.clone());
            let audience = params
                .get("audience")
                .or_else(|| params.get("resource"))
                .cloned()
                .into_iter()
                .collect();
            let grant = check_grant(
                &state,
                &client,
                &client.client_id,
                scopes,
                vec![],
                audience,
                None,
            )
            .map_err(grant_error)?;
            let mut tx = state.db.pool.begin().await?;
            // RFC 6749 4.4.3: no refresh token for client credentials.
            let issued = issue_in(&state, &mut tx, &client.client_id, &grant, None, &actor).await?;
            tx.commit().await?;
            Ok(no_store(json!({
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
                "scope": grant.scopes.join(" "),
            })))
        }
        "refresh_token" => refresh(&state, &client, &params, &address, &actor).await,
        "" => Err(ApiError::oauth("invalid_request", "grant_type is required")),
        other => Err(ApiError::oauth(
            "unsupported_grant_type",
            format!(
                "grant_type {other:?} is not supported, use client_credentials or refresh_token"
            ),
        )),
    }
}

async fn refresh(
    state: &AppState,
    client: &Client,
    params: &HashMap<String, String>,
    address: &str,
    actor: &str,
) -> ApiResult<Response> {
    let presented = params
        .get("refresh_token")
        .ok_or_else(|| ApiError::oauth("invalid_request", "refresh_token is required"))?;
    let hash = sha256_hex(presented);
    let row = sqlx::query(
        "SELECT family_id, client_id, subject, scopes, roles, audience, expires_at, state, used_at FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::oauth("invalid_grant", "unknown refresh token"));
    };
    let family_id: String = row.try_get("family_id")?;
    let owner: String = row.try_get("client_id")?;
    let subject: String = row.try_get("subject")?;
    if owner != client.client_id {
        return Err(ApiError::oauth(
            "invalid_grant",
            "refresh token was issued to another client",
        ));
    }
    let token_state: String = row.try_get("state")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    let now = now();
    match token_state.as_str() {
        "used" => {
            let used_at: Option<i64> = row.try_get("used_at")?;
            reuse_detected(state, &family_id, &subject, client, address, used_at).await?;
            return Err(ApiError::oauth(
                "invalid_grant",
                "refresh token was already used; its whole family is now revoked",
            ));
        }
        "revoked" => return Err(ApiError::oauth("invalid_grant", "refresh token is revoked")),
        _ if expires_at <= now => {
            return Err(ApiError::oauth(
                "invalid_grant",
                format!("refresh token expired {}s ago", now - expires_at),
            ));
        }
        _ => {}
    }
    let split = |s: String| -> Vec<String> {
        s.split(' ')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let granted_scopes = split(row.try_get("scopes")?);
    let scopes = match scopes_param(params) {
        None => granted_scopes,
        Some(asked) => {
            // RFC 6749 6: a refresh may narrow the scope, never widen it.
            if let Some(extra) = asked.iter().find(|s| !granted_scopes.contains(s)) {
                return Err(ApiError::oauth(
                    "invalid_scope",
                    format!("scope {extra:?} was not granted originally"),
                ));
            }
            asked
        }
    };
    let roles = split(row.try_get("roles")?);
    let audience = split(row.try_get("audience")?);
    // Re-check against the client's current registration: a narrowed client narrows its refreshes.
    let grant =
        check_grant(state, client, &subject, scopes, roles, audience, None).map_err(grant_error)?;
    let mut tx = state.db.pool.begin().await?;
    let spent = sqlx::query("UPDATE refresh_tokens SET state = 'used', used_at = $1 WHERE token_hash = $2 AND state = 'active'")
        .bind(now)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
    if spent.rows_affected() != 1 {
        // Lost a race with a concurrent use of the same token: that is reuse too.
        tx.rollback().await?;
        reuse_detected(state, &family_id, &subject, client, address, Some(now)).await?;
        return Err(ApiError::oauth(
            "invalid_grant",
            "refresh token was already used; its whole family is now revoked",
        ));
    }
    let plan = RefreshPlan {
        family_id,
        expires_at: Some(expires_at),
    };
    let issued = issue_in(state, &mut tx, &client.client_id, &grant, Some(plan), actor).await?;
    crate::events::record(
        &state.events,
        &state.db,
        &mut tx,
        crate::events::Event::new("token.refreshed", actor)
            .jti(&issued.jti)
            .subject(&subject)
            .client(&client.client_id)
            .details(json!({"address": address})),
    )
    .await?;
    tx.commit().await?;
    Ok(no_store(json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "refresh_token": issued.refresh_token,
        "scope": grant.scopes.join(" "),
    })))
}

/// RFC 9700 4.14.2: a spent refresh token came back, so either the client or an attacker holds a
/// stolen copy. Revoke every token of the family and record an anomaly.
async fn reuse_detected(
    state: &AppState,
    family_id: &str,
    subject: &str,
    client: &Client,
    address: &str,
    first_used_at: Option<i64>,
) -> ApiResult<()> {
    let reason = "refresh token reuse detected";
    let mut tx = state.db.pool.begin().await?;
    let seq = begin_change(&mut tx).await?;
    let revoked = revoke_family_in(
        &mut tx,
        state.keys.issuer(),
        family_id,
        seq,
        reason,
        "system:refresh-reuse",
    )
    .await?;
    notify_change(&state.db, &mut tx, seq).await?;
    let now = now();
    let evidence = json!({
        "family_id": family_id,
        "client_id": client.client_id,
        "address": address,
        "first_used_at": first_used_at,
        "reused_at": now,
        "access_tokens_revoked": revoked,
    });
    sqlx::query(
        "INSERT INTO anomalies (id, kind, severity, subject_kind, subject, evidence, state, created_at, updated_at) \
         VALUES ($1, 'refresh_token_reuse', 'high', 'subject', $2, $3, 'open', $4, $4) \
         ON CONFLICT (kind, subject_kind, subject) WHERE state IN ('open', 'acknowledged') \
         DO UPDATE SET evidence = excluded.evidence, occurrences = anomalies.occurrences + 1, last_seen = excluded.updated_at, updated_at = excluded.updated_at",
    )
    .bind(crate::secrets::random_id("anm_"))
    .bind(subject)
    .bind(evidence.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    crate::events::record(
        &state.events,
        &state.db,
        &mut tx,
        crate::events::Event::new("refresh_family.revoked", "system:refresh-reuse")
            .subject(subject)
            .client(&client.client_id)
            .details(evidence),
    )
    .await?;
    tx.commit().await?;
    state.feed.advance(seq);
    tracing::warn!(client_id = %client.client_id, family_id = %family_id, "refresh token reuse: family revoked");
    Ok(())
}

/// The client a caller may act for: a client itself, an admin (any), a service key (its own).
fn caller_client(caller: &Caller, action: &str) -> ApiResult<Option<String>> {
    match caller {
        Caller::Client(c) => Ok(Some(c.client_id.clone())),
        Caller::Key(p) if p.role == Role::Admin => Ok(None),
        Caller::Key(p) if p.role == Role::Service => {
            Ok(Some(p.client_id.clone().unwrap_or_default()))
        }
        Caller::Key(p) if p.role == Role::Auditor && action == "introspect" => Ok(None),
        Caller::Key(p) => Err(refused(format!(
            "role {} may not {action} tokens: use a client's credentials, an admin key or a service key{}",
            p.role,
            if action == "introspect" { " (or an auditor key)" } else { "" }
        ))),
    }
}

async fn revoke_endpoint(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let (headers, address, params) = form(req).await?;
    state.token_limiter.check(&format!("oauth:{address}"))?;
    let caller = authenticate(&state, &headers, &params, true).await?;
    let only_client = caller_client(&caller, "revoke")?;
    let actor = match &caller {
        Caller::Client(c) => format!("client:{}", c.client_id),
        Caller::Key(p) => p.actor(),
    };
    let token = params
        .get("token")
        .ok_or_else(|| ApiError::oauth("invalid_request", "token is required"))?;
    // RFC 7009 2.2: invalid, unknown or foreign tokens get the same 200 as revoked ones.
    if token.starts_with(REFRESH_PREFIX) {
        let row =
            sqlx::query("SELECT family_id, client_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(sha256_hex(token))
                .fetch_optional(&state.db.pool)
                .await?;
        if let Some(row) = row {
            let family_id: String = row.try_get("family_id")?;
            let owner: String = row.try_get("client_id")?;
            if only_client.as_deref().is_none_or(|c| c == owner) {
                let mut tx = state.db.pool.begin().await?;
                let seq = begin_change(&mut tx).await?;
                revoke_family_in(
                    &mut tx,
                    state.keys.issuer(),
                    &family_id,
                    seq,
                    "revoked via /oauth/revoke",
                    &actor,
                )
                .await?;
                crate::events::record(
                    &state.events,
                    &state.db,
                    &mut tx,
                    crate::events::Event::new("refresh_family.revoked", &actor)
                        .client(&owner)
                        .details(
                            json!({"family_id": family_id, "reason": "revoked via /oauth/revoke"}),
                        ),
                )
                .await?;
                notify_change(&state.db, &mut tx, seq).await?;
                tx.commit().await?;
                state.feed.advance(seq);
            }
        }
    } else if let Ok(verified) = crate::issuers::verify_presented(&state, token).await {
        // The same verify-and-record path as `POST /api/v1/revocations {"token"}`: the admin API's own
        // tokens and those of its trusted issuers. A foreign token's `client_id` names a client of the
        // foreign issuer, not one registered here, so only an admin key may revoke foreign tokens.
        let owner = verified.client_id.clone().unwrap_or_default();
        let own = verified.iss == state.keys.issuer();
        if only_client.as_deref().is_none_or(|c| own && c == owner) {
            match revoke_verified(&state, &verified, "revoked via /oauth/revoke", &actor).await {
                Ok(_) | Err(ApiError::NotFound(_)) | Err(ApiError::BadRequest { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(no_store(json!({})))
}

async fn introspect(State(state): State<AppState>, req: Request) -> ApiResult<Response> {
    let (headers, address, params) = form(req).await?;
    state.token_limiter.check(&format!("oauth:{address}"))?;
    let caller = authenticate(&state, &headers, &params, true).await?;
    let only_client = caller_client(&caller, "introspect")?;
    let token = params
        .get("token")
        .ok_or_else(|| ApiError::oauth("invalid_request", "token is required"))?;
    let inactive = || no_store(json!({"active": false}));
    let now = now();
    if token.starts_with(REFRESH_PREFIX) {
        let row = sqlx::query("SELECT client_id, subject, scopes, issued_at, expires_at, state FROM refresh_tokens WHERE token_hash = $1")
            .bind(sha256_hex(token))
            .fetch_optional(&state.db.pool)
            .await?;
        let Some(row) = row else {
            return Ok(inactive());
        };
        let owner: String = row.try_get("client_id")?;
        let token_state: String = row.try_get("state")?;
        let exp: i64 = row.try_get("expires_at")?;
        if token_state != "active"
            || exp <= now
            || only_client.as_deref().is_some_and(|c| c != owner)
        {
            return Ok(inactive());
        }
        return Ok(no_store(json!({
            "active": true,
            "token_type": "refresh_token",
            "client_id": owner,
            "sub": row.try_get::<String, _>("subject")?,
            "scope": row.try_get::<String, _>("scopes")?,
            "iat": row.try_get::<i64, _>("issued_at")?,
            "exp": exp,
            "iss": state.keys.issuer(),
        })));
    }
    let Ok(verified) = state.keys.engine().verify(token, now as u64) else {
        return Ok(inactive());
    };
    if only_client
        .as_deref()
        .is_some_and(|c| Some(c) != verified.client_id.as_deref())
    {
        return Ok(inactive());
    }
    let iat = verified.iat.map(|i| i as i64).unwrap_or(0);
    let revoked = crate::revocations::is_revoked(
        &state.db,
        &verified.iss,
        verified.jti.as_deref(),
        verified.sub.as_deref(),
        verified.client_id.as_deref(),
        iat,
    )
    .await?;
    // Only tokens this service issued and still knows about are active.
    let known: Option<String> = match verified.jti.as_deref() {
        Some(jti) => {
            sqlx::query_scalar("SELECT jti FROM tokens WHERE jti = $1")
                .bind(jti)
                .fetch_optional(&state.db.pool)
                .await?
        }
        None => None,
    };
    if revoked || known.is_none() {
        return Ok(inactive());
    }
    let mut body = Map::new();
    body.insert("active".into(), Value::Bool(true));
    body.insert("token_type".into(), Value::String("Bearer".into()));
    body.insert("scope".into(), Value::String(verified.scopes.join(" ")));
    for (name, value) in [
        ("client_id", verified.client_id.clone()),
        ("sub", verified.sub.clone()),
        ("iss", Some(verified.iss.clone())),
        ("jti", verified.jti.clone()),
    ] {
        if let Some(v) = value {
            body.insert(name.into(), Value::String(v));
        }
    }
    for (name, value) in [
        ("exp", verified.exp),
        ("iat", verified.iat),
        ("nbf", verified.nbf),
    ] {
        if let Some(v) = value {
            body.insert(name.into(), Value::from(v));
        }
    }
    body.insert(
        "aud".into(),
        match verified.aud.as_slice() {
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        },
    );
    if !verified.roles.is_empty() {
        body.insert(
            "roles".into(),
            Value::Array(verified.roles.iter().cloned().map(Value::String).collect()),
        );
    }
    Ok(no_store(Value::Object(body)))
}
