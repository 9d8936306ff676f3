//! API key management over HTTP for admins: create (the key is shown once), list, delete.
//! The CLI (`edgewarden-admin api-key create`) uses the same [`crate::auth::create_api_key`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::Router;
use serde::Deserialize;
use sqlx::Row as _;

use crate::auth::{create_checked_api_key, parse_edges, Principal, Role};
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::revocations::{page_params, Page};
use crate::AppState;
use edgewarden_api_types::ApiKeySummary as KeySummary;
use edgewarden_api_types::NewApiKeyRequest as CreateRequest;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/api-keys", post(create).get(list))
        .route("/api/v1/api-keys/{id}", delete(remove))
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateRequest>,
) -> ApiResult<Response> {
    principal.require(&[Role::Admin], "create api keys")?;
    let name = req.name.unwrap_or_else(|| format!("{} key", req.role));
    let key = create_checked_api_key(
        &state.db,
        req.role,
        &name,
        req.client_id.as_deref(),
        &req.edges,
    )
    .await?;
    tracing::info!(id = %key.id, role = %key.role, actor = %principal.actor(), "api key created");
    crate::events::record_or_log(&state, crate::events::Event::new("api_key.created", principal.actor()).details(serde_json::json!({"id": key.id, "role": key.role, "name": key.name, "client_id": key.client_id, "edges": key.edges}))).await;
    Ok((StatusCode::CREATED, Json(key)).into_response())
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
) -> ApiResult<Json<Page<KeySummary>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list api keys")?;
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")
        .fetch_one(&state.db.pool)
        .await?;
    let rows = sqlx::query(
        "SELECT id, name, role, client_id, edges, created_at FROM api_keys WHERE revoked_at IS NULL ORDER BY created_at, id LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(KeySummary {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                client_id: r.try_get("client_id")?,
                edges: parse_edges(r.try_get("edges")?)?.unwrap_or_default(),
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(Page {
        items,
        total,
        limit,
        offset,
    }))
}

async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(&[Role::Admin], "delete api keys")?;
    let result =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now())
            .bind(&id)
            .execute(&state.db.pool)
            .await?;
    if result.rows_affected() == 0 {
        return Err(ApiError::NotFound(format!("no api key {id:?}")));
    }
    state.api_keys.evict_id(&id);
    tracing::info!(id = %id, actor = %principal.actor(), "api key deleted");
    crate::events::record_or_log(
        &state,
        crate::events::Event::new("api_key.deleted", principal.actor())
            .details(serde_json::json!({"id": id})),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
