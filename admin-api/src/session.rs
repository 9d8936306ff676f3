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

use crate::auth::{cookie, ClientAddr, Credential, Principal, CSRF_COOKIE, SESSION_COOKIE};
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::secrets::{random_secret, sha256_hex, verify_password};
use crate::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/session", post(login).get(whoami).delete(logout))
        .route("/api/v1/session/password", post(change_password))
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
    if let Err(e) = state.login_limiter.check(&format!("login:{address}")) {
        report_rate_limited(&state, &address).await;
        return Err(e);
    }
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
    let known = user_id.is_some();
    let password = body.password;
    let ok = state
        .password_gate
        .run(move || verify_password(&password, &hash))
        .await?;
    let Some(user_id) = user_id.filter(|_| ok) else {
        // Unknown usernames count as well, so a lockout does not tell which accounts exist.
        let locked = state.login_lockout.failed(&body.username);
        report_failed_login(&state, &address, &body.username, known, locked).await;
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    };
    state.login_lockout.succeeded(&body.username);
    tracing::info!(username = %body.username, address, "login");
    crate::events::record_or_log(
        &state,
        crate::events::Event::new("auth.login", format!("user:{}", body.username))
            .details(serde_json::json!({"address": address})),
    )
    .await;
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

/// Logs and records a refused login. The username is recorded only when it names a user, so a
/// password typed into the username field never reaches the log or the events; the password never does.
async fn report_failed_login(
    state: &AppState,
    address: &str,
    username: &str,
    known: bool,
    locked: bool,
) {
    let user = known.then_some(username);
    tracing::warn!(
        address,
        username = user,
        "failed login: wrong username or password"
    );
    crate::events::record_or_log(
        state,
        crate::events::Event::new("auth.login_failed", format!("address:{address}")).details(
            serde_json::json!({"address": address, "username": user, "known_user": known}),
        ),
    )
    .await;
    if locked {
        tracing::warn!(
            address,
            username = user,
            "account locked after repeated wrong passwords"
        );
        crate::events::record_or_log(
            state,
            crate::events::Event::new("auth.locked", "system:lockout").details(serde_json::json!({
                "username": user, "known_user": known, "address": address,
                "failures": state.config.login_lockout_failures,
                "locked_seconds": state.config.login_lockout.as_secs(),
            })),
        )
        .await;
    }
}

/// Logs and records a login refused by the per-address rate limit, at most once a minute per address.
async fn report_rate_limited(state: &AppState, address: &str) {
    if !state.api_keys.report("auth.rate_limited", address) {
        return;
    }
    tracing::warn!(
        address,
        "login rate limit hit (logged once a minute per address)"
    );
    crate::events::record_or_log(
        state,
        crate::events::Event::new("auth.rate_limited", format!("address:{address}")).details(
            serde_json::json!({"address": address, "limit": "logins per address",
                               "note": "first of this minute from this address"}),
        ),
    )
    .await;
}

/// `POST /api/v1/session/password`: the logged-in user changes their own password, giving the current
/// one. Only with a session (and its CSRF header, as every session mutation); the user's other sessions
/// end, this one stays. Wrong current passwords count towards the account's lockout like wrong logins.
async fn change_password(
    State(state): State<AppState>,
    headers: HeaderMap,
    ClientAddr(address): ClientAddr,
    principal: Principal,
    Json(body): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    let Credential::Session { user_id } = &principal.credential else {
        return Err(ApiError::bad_request(
            "no session: a password is changed by its user logged in to the dashboard; \
             an operator sets one with `edgewarden-admin user password --username <name>`",
        ));
    };
    state.login_lockout.check(&principal.name)?;
    crate::auth::check_password("new_password", &body.new_password)?;
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&state.db.pool)
        .await?;
    let current = body.current_password;
    let ok = state
        .password_gate
        .run(move || verify_password(&current, &hash))
        .await?;
    if !ok {
        let locked = state.login_lockout.failed(&principal.name);
        report_failed_login(&state, &address, &principal.name, true, locked).await;
        return Err(ApiError::field(
            "current_password",
            "current_password: wrong password",
        ));
    }
    let argon = state.config.argon2.clone();
    let new = body.new_password;
    let hash = state
        .password_gate
        .run(move || crate::secrets::hash_password(&new, &argon))
        .await?
        .map_err(ApiError::Internal)?;
    let keep = cookie(&headers, SESSION_COOKIE).map(sha256_hex);
    let ended = crate::auth::set_password_hash(&state.db, user_id, &hash, keep.as_deref()).await?;
    tracing::info!(username = %principal.name, address, sessions_ended = ended, "password changed");
    crate::events::record_or_log(
        &state,
        crate::events::Event::new("user.password_changed", principal.actor()).details(
            serde_json::json!({"username": principal.name, "other_sessions_ended": ended}),
        ),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
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
use edgewarden_api_types::{LoginRequest, PasswordChange, SessionInfo};
