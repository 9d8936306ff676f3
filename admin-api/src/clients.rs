//! Registered client applications: what scopes and roles their tokens may carry, which audiences,
//! and the longest lifetime. CRUD for admins (auditors read); each client gets a generated secret,
//! shown once and stored as SHA-256 (it has 256 bits of entropy, so a slow hash adds nothing but
//! latency on every token request).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row as _;

use crate::auth::{is_unique_violation, Principal, Role};
use crate::db::{now, Db};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::revocations::{page_params, revoke, Page, Target};
use crate::secrets::{ct_eq, random_secret, sha256_hex};
use crate::AppState;
use edgewarden_api_types::NewClientRequest as CreateRequest;
pub use edgewarden_api_types::{Client, ClientWithSecret as WithSecret};

/// Prefix of generated client secrets.
pub const CLIENT_SECRET_PREFIX: &str = "ews_";

fn split(s: String) -> Vec<String> {
    s.split(' ')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn from_row(row: &AnyRow) -> Result<Client, sqlx::Error> {
    Ok(Client {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        allowed_scopes: split(row.try_get("allowed_scopes")?),
        allowed_roles: split(row.try_get("allowed_roles")?),
        audiences: split(row.try_get("audiences")?),
        max_lifetime_seconds: row.try_get("max_lifetime_seconds")?,
        has_secret: row.try_get::<Option<String>, _>("secret_hash")?.is_some(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const COLUMNS: &str =
    "client_id, name, secret_hash, allowed_scopes, allowed_roles, audiences, max_lifetime_seconds, created_at, updated_at";

/// Loads a client by id.
pub async fn find(db: &Db, client_id: &str) -> Result<Option<Client>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM clients WHERE client_id = $1"
    )))
    .bind(client_id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Checks a client's secret in constant time; `None` for unknown clients, clients without a secret,
/// and wrong secrets alike.
pub async fn authenticate(
    db: &Db,
    client_id: &str,
    secret: &str,
) -> Result<Option<Client>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM clients WHERE client_id = $1"
    )))
    .bind(client_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let stored: Option<String> = row.try_get("secret_hash")?;
    let presented = sha256_hex(secret);
    match stored {
        Some(stored) if ct_eq(stored.as_bytes(), presented.as_bytes()) => Ok(Some(from_row(&row)?)),
        _ => Ok(None),
    }
}

/// Checks one RFC 6749 scope token (printable ASCII without space, `"` or `\`).
pub fn valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn check_list(field: &str, items: &[String]) -> ApiResult<()> {
    for (i, item) in items.iter().enumerate() {
        if !valid_scope_token(item) {
            return Err(ApiError::field(
                format!("{field}[{i}]"),
                format!("{field}[{i}]: {item:?} must be 1 to 200 printable ascii characters without spaces, quotes or backslashes"),
            ));
        }
    }
    Ok(())
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/clients", post(create).get(list))
        .route(
            "/api/v1/clients/{client_id}",
            get(show).patch(update).delete(remove),
        )
        .route("/api/v1/clients/{client_id}/secret", post(rotate_secret))
}

fn check_lifetime(state: &AppState, value: i64) -> ApiResult<()> {
    let max = state.config.max_token_lifetime_seconds as i64;
    if !(1..=max).contains(&value) {
        return Err(ApiError::field(
            "max_lifetime_seconds",
            format!("max_lifetime_seconds: {value} is out of range 1..={max}"),
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateRequest>,
) -> ApiResult<Response> {
    principal.require(&[Role::Admin], "register clients")?;
    if !valid_scope_token(&req.client_id) {
        return Err(ApiError::field(
            "client_id",
            "client_id: must be 1 to 200 printable ascii characters without spaces",
        ));
    }
    check_list("allowed_scopes", &req.allowed_scopes)?;
    check_list("allowed_roles", &req.allowed_roles)?;
    check_list("audiences", &req.audiences)?;
    let lifetime = req.max_lifetime_seconds.unwrap_or(3600);
    check_lifetime(&state, lifetime)?;
    let secret = random_secret(CLIENT_SECRET_PREFIX);
    let now = now();
    let result = sqlx::query(
        "INSERT INTO clients (client_id, name, secret_hash, allowed_scopes, allowed_roles, audiences, max_lifetime_seconds, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(&req.client_id)
    .bind(req.name.as_deref().unwrap_or(&req.client_id))
    .bind(sha256_hex(&secret))
    .bind(req.allowed_scopes.join(" "))
    .bind(req.allowed_roles.join(" "))
    .bind(req.audiences.join(" "))
    .bind(lifetime)
    .bind(now)
    .execute(&state.db.pool)
    .await;
    match result {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::Conflict(format!(
                "client {:?} already exists",
                req.client_id
            )))
        }
        Err(e) => return Err(e.into()),
    }
    let client = find(&state.db, &req.client_id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("client vanished")))?;
    tracing::info!(client_id = %client.client_id, actor = %principal.actor(), "client registered");
    crate::events::record_or_log(
        &state,
        crate::events::Event::new("client.created", principal.actor()).client(&client.client_id),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(WithSecret {
            client,
            client_secret: secret,
        }),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Client>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list clients")?;
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM clients")
        .fetch_one(&state.db.pool)
        .await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM clients ORDER BY client_id LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}

async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(client_id): Path<String>,
) -> ApiResult<Json<Client>> {
    principal.require(&[Role::Admin, Role::Auditor], "read clients")?;
    find(&state.db, &client_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no client {client_id:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    name: Option<String>,
    allowed_scopes: Option<Vec<String>>,
    allowed_roles: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    max_lifetime_seconds: Option<i64>,
}

async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(client_id): Path<String>,
    Json(req): Json<UpdateRequest>,
) -> ApiResult<Json<Client>> {
    principal.require(&[Role::Admin], "change clients")?;
    let current = find(&state.db, &client_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no client {client_id:?}")))?;
    let scopes = req.allowed_scopes.unwrap_or(current.allowed_scopes);
    let roles = req.allowed_roles.unwrap_or(current.allowed_roles);
    let audiences = req.audiences.unwrap_or(current.audiences);
    check_list("allowed_scopes", &scopes)?;
    check_list("allowed_roles", &roles)?;
    check_list("audiences", &audiences)?;
    let lifetime = req
        .max_lifetime_seconds
        .unwrap_or(current.max_lifetime_seconds);
    check_lifetime(&state, lifetime)?;
    sqlx::query(
        "UPDATE clients SET name = $1, allowed_scopes = $2, allowed_roles = $3, audiences = $4, max_lifetime_seconds = $5, updated_at = $6 \
         WHERE client_id = $7",
    )
    .bind(req.name.unwrap_or(current.name))
    .bind(scopes.join(" "))
    .bind(roles.join(" "))
    .bind(audiences.join(" "))
    .bind(lifetime)
    .bind(now())
    .bind(&client_id)
    .execute(&state.db.pool)
    .await?;
    crate::events::record_or_log(
        &state,
        crate::events::Event::new("client.updated", principal.actor()).client(&client_id),
    )
    .await;
    find(&state.db, &client_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no client {client_id:?}")))
}

async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(client_id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(&[Role::Admin], "delete clients")?;
    if find(&state.db, &client_id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no client {client_id:?}")));
    }
    // Its tokens must stop working with it.
    revoke(
        &state,
        &Target::Client(client_id.clone()),
        "client deleted",
        &principal.actor(),
    )
    .await?;
    // Its API keys go with it, so a client created again with the same id does not revive them.
    let mut tx = state.db.pool.begin().await?;
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM api_keys WHERE client_id = $1 AND revoked_at IS NULL ORDER BY id",
    )
    .bind(&client_id)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL")
        .bind(now())
        .bind(&client_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM clients WHERE client_id = $1")
        .bind(&client_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    for id in &keys {
        state.api_keys.evict_id(id);
    }
    tracing::info!(client_id = %client_id, actor = %principal.actor(), api_keys = keys.len(), "client deleted with its api keys");
    crate::events::record_or_log(
        &state,
        crate::events::Event::new("client.deleted", principal.actor())
            .client(&client_id)
            .details(serde_json::json!({"api_keys_deleted": keys})),
    )
    .await;
    for id in &keys {
        crate::events::record_or_log(
            &state,
            crate::events::Event::new("api_key.deleted", principal.actor())
                .client(&client_id)
                .details(serde_json::json!({"id": id, "reason": "client deleted"})),
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(client_id): Path<String>,
) -> ApiResult<Response> {
    principal.require(&[Role::Admin], "rotate client secrets")?;
    let secret = random_secret(CLIENT_SECRET_PREFIX);
    let result =
        sqlx::query("UPDATE clients SET secret_hash = $1, updated_at = $2 WHERE client_id = $3")
            .bind(sha256_hex(&secret))
            .bind(now())
            .bind(&client_id)
            .execute(&state.db.pool)
            .await?;
    if result.rows_affected() == 0 {
        return Err(ApiError::NotFound(format!("no client {client_id:?}")));
    }
    let client = find(&state.db, &client_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no client {client_id:?}")))?;
    crate::events::record_or_log(
        &state,
        crate::events::Event::new("client.updated", principal.actor())
            .client(&client_id)
            .details(serde_json::json!({"secret_rotated": true})),
    )
    .await;
    Ok(Json(WithSecret {
        client,
        client_secret: secret,
    })
    .into_response())
}
