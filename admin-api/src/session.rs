//! Dashboard sessions: `POST /api/v1/session` logs in with username and password (rate limited per
//! address, locked per account after repeated wrong passwords, hashing bounded by the password gate),
//! `GET` says who is logged in, `DELETE` logs out.
//! The session id travels in an HttpOnly SameSite=Strict cookie and is stored as SHA-256; a second,
//! script-readable cookie carries the CSRF token the dashboard echoes in `x-csrf-token` on mutations.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use sqlx::Row as _;

use crate::auth::{cookie, Credential, Principal, CSRF_COOKIE, SESSION_COOKIE};
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::secrets::{random_secret, sha256_hex, verify_password};
use crate::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/session", post(login).get(whoami).delete(logout))
}

/// Resolves a session cookie value to the user's principal and the stored CSRF hash.
pub async fn lookup(state: &AppState, session: &str) -> ApiResult<Option<(Principal, String)>> {
    let row = sqlx::query(
        "SELECT u.id, u.username, u.role, s.csrf_hash FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.id_hash = $1 AND s.expires_at > $2",
    )
    .bind(sha256_hex(session))
    .bind(now())
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let role: String = row.try_get("role")?;
    let principal = Principal {
        role: role
            .parse()
            .map_err(|e: String| ApiError::Internal(anyhow::anyhow!(e)))?,
        client_id: None,
        name: row.try_get("username")?,
        edges: None,
        credential: Credential::Session {
            user_id: row.try_get("id")?,
        },
    };
    Ok(Some((principal, row.try_get("csrf_hash")?)))
}

async fn login(State(state): State<AppState>, req: axum::extract::Request) -> ApiResult<Response> {
    let address = crate::auth::client_address(req.extensions());
    state.login_limiter.check(&format!("login:{address}"))?;
    let Json(body): Json<LoginRequest> = Json::from_request(req, &state).await?;
    // Before any hashing: a locked account costs nothing, whichever address asks.
    state.login_lockout.check(&body.username)?;
    let row = sqlx::query("SELECT id, password_hash, role FROM users WHERE username = $1")
        .bind(&body.username)
        .fetch_optional(&state.db.pool)
        .await?;
    // Verify against a dummy hash for unknown users so both paths cost the same.
    let (user_id, hash, role) = match row {
        Some(r) => (
            Some(r.try_get::<String, _>("id")?),
            r.try_get::<String, _>("password_hash")?,
            r.try_get::<String, _>("role")?,
        ),
        None => (None, state.dummy_hash.clone(), String::new()),
    };
    let password = body.password;
    let ok = state
        .password_gate
        .run(move || verify_password(&password, &hash))
        .await?;
    let Some(user_id) = user_id.filter(|_| ok) else {
        // Unknown usernames count as well, so a lockout does not tell which accounts exist.
        state.login_lockout.failed(&body.username);
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    };
    state.login_lockout.succeeded(&body.username);
    let session = random_secret("");
    let csrf = random_secret("");
    let expires_at = now() + state.config.session_lifetime_seconds as i64;
    sqlx::query("INSERT INTO sessions (id_hash, user_id, csrf_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(sha256_hex(&session))
        .bind(&user_id)
        .bind(sha256_hex(&csrf))
        .bind(now())
        .bind(expires_at)
        .execute(&state.db.pool)
        .await?;
    // Expired sessions are swept on login, which is rare enough to be free.
    sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(now())
        .execute(&state.db.pool)
        .await?;
    let secure = if state.config.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let max_age = state.config.session_lifetime_seconds;
    let info = SessionInfo {
        username: body.username,
        role: role
            .parse()
            .map_err(|e: String| ApiError::Internal(anyhow::anyhow!(e)))?,
        csrf_token: Some(csrf.clone()),
        expires_at: Some(expires_at),
    };
    let mut response = (StatusCode::OK, Json(info)).into_response();
    let headers = response.headers_mut();
    append_cookie(headers, format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"))?;
    append_cookie(
        headers,
        format!("{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict; Max-Age={max_age}{secure}"),
    )?;
    Ok(response)
}

fn append_cookie(headers: &mut HeaderMap, cookie: String) -> ApiResult<()> {
    let value = HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.into()))?;
    headers.append(header::SET_COOKIE, value);
    Ok(())
}

async fn whoami(principal: Principal) -> ApiResult<Json<SessionInfo>> {
    Ok(Json(SessionInfo {
        username: principal.name,
        role: principal.role,
        csrf_token: None,
        expires_at: None,
    }))
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    principal: Principal,
) -> ApiResult<Response> {
    if !matches!(principal.credential, Credential::Session { .. }) {
        return Err(ApiError::bad_request(
            "no session to end: this request was authenticated with an api key",
        ));
    }
    if let Some(session) = cookie(&headers, SESSION_COOKIE) {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(sha256_hex(session))
            .execute(&state.db.pool)
            .await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    append_cookie(
        headers,
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    )?;
    append_cookie(
        headers,
        format!("{CSRF_COOKIE}=; Path=/; SameSite=Strict; Max-Age=0"),
    )?;
    Ok(response)
}

use axum::extract::FromRequest as _;
use edgewarden_api_types::{LoginRequest, SessionInfo};
