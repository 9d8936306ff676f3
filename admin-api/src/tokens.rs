//! Token issuance and the token records: `POST /api/v1/tokens` signs an RFC 9068 access token
//! (`typ: at+jwt`) for a subject of a registered client, optionally with an opaque refresh token;
//! `GET /api/v1/tokens` and `GET /api/v1/tokens/{jti}` list and show the records.
//! A record holds the jti, subject, client, scopes, expiry and status, never the token; refresh
//! tokens are stored as SHA-256 only.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use crate::auth::{ClientAddr, Principal, Role};
use crate::clients::{self, valid_scope_token, Client};
use crate::db::now;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Query};
use crate::revocations::{page_params, Page};
use crate::secrets::{random_jti, random_secret, sha256_hex};
use crate::AppState;
pub use edgewarden_api_types::{Audience, IssueRequest as CreateRequest, Issued, TokenRecord};

/// Prefix of refresh tokens, so leaked ones are recognisable.
pub const REFRESH_PREFIX: &str = "ewr_";

/// The RFC 9068 claims set of an access token.
#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: Value,
    exp: i64,
    iat: i64,
    jti: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    scope: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
}

/// What to issue, already validated against the client.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The `sub` claim.
    pub subject: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Roles granted.
    pub roles: Vec<String>,
    /// Audiences (one or more).
    pub audience: Vec<String>,
    /// Access-token lifetime.
    pub ttl_seconds: i64,
}

/// What to do when an issuance asks for something the client's `field` does not list: which field to set,
/// and how (`PATCH /api/v1/clients/{id}`, or the field of `POST /api/v1/clients` when registering it).
fn not_in_client_list(client: &Client, field: &str, list: &[String], wanted: &str) -> String {
    let mut wanted_list: Vec<&str> = list.iter().map(String::as_str).collect();
    wanted_list.push(wanted);
    let current = if list.is_empty() {
        format!("its {field} is empty")
    } else {
        format!("its {field} are {}", list.join(", "))
    };
    let wanted_json = wanted_list
        .iter()
        .map(|w| serde_json::Value::from(*w).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{current}; add it to the client's {field} with PATCH /api/v1/clients/{} {{\"{field}\": [{wanted_json}]}}",
        client.client_id,
    )
}

/// Validates a requested grant against `client`'s registration; every failure names its field.
pub fn check_grant(
    state: &AppState,
    client: &Client,
    subject: &str,
    scopes: Vec<String>,
    roles: Vec<String>,
    audience: Vec<String>,
    ttl_seconds: Option<i64>,
) -> ApiResult<Grant> {
    crate::extract::check_identifier("subject", subject, 512)?;
    for (i, scope) in scopes.iter().enumerate() {
        if !valid_scope_token(scope) {
            return Err(ApiError::field(
                format!("scopes[{i}]"),
                format!("scopes[{i}]: {scope:?} is not a valid scope token"),
            ));
        }
        if !client.allowed_scopes.contains(scope) {
            return Err(ApiError::field(
                format!("scopes[{i}]"),
                format!(
                    "scopes[{i}]: scope {scope:?} is not allowed for client {:?}: {}",
                    client.client_id,
                    not_in_client_list(client, "allowed_scopes", &client.allowed_scopes, scope)
                ),
            ));
        }
    }
    for (i, role) in roles.iter().enumerate() {
        if !client.allowed_roles.contains(role) {
            return Err(ApiError::field(
                format!("roles[{i}]"),
                format!(
                    "roles[{i}]: role {role:?} is not allowed for client {:?}: {}",
                    client.client_id,
                    not_in_client_list(client, "allowed_roles", &client.allowed_roles, role)
                ),
            ));
        }
    }
    let audience = if audience.is_empty() {
        vec![client
            .audiences
            .first()
            .cloned()
            .unwrap_or_else(|| state.config.default_audience.clone())]
    } else {
        for (i, aud) in audience.iter().enumerate() {
            let allowed = if client.audiences.is_empty() {
                aud == &state.config.default_audience
            } else {
                client.audiences.contains(aud)
            };
            if !allowed {
                let hint = if client.audiences.is_empty() {
                    format!(
                        "a client without audiences may only name the default audience {:?}; {}",
                        state.config.default_audience,
                        not_in_client_list(client, "audiences", &client.audiences, aud)
                    )
                } else {
                    not_in_client_list(client, "audiences", &client.audiences, aud)
                };
                return Err(ApiError::field(
                    "audience",
                    format!(
                        "audience: {aud:?} (index {i}) is not registered for client {:?}: {hint}",
                        client.client_id
                    ),
                ));
            }
        }
        audience
    };
    let max = client
        .max_lifetime_seconds
        .min(state.config.max_token_lifetime_seconds as i64);
    let ttl = ttl_seconds.unwrap_or(max.min(3600));
    if ttl < 1 || ttl > max {
        return Err(ApiError::field(
            "ttl_seconds",
            format!(
                "ttl_seconds: {ttl} is out of range 1..={max} (client {:?} maximum)",
                client.client_id
            ),
        ));
    }
    let dedup = |v: Vec<String>| {
        let mut out: Vec<String> = Vec::with_capacity(v.len());
        for s in v {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    };
    Ok(Grant {
        subject: subject.to_owned(),
        scopes: dedup(scopes),
        roles: dedup(roles),
        audience: dedup(audience),
        ttl_seconds: ttl,
    })
}

/// Signs an access token for `grant` and records it (and a refresh token when `refresh` is
/// `Some(family)`: a new family id, or the family being rotated) inside `tx`.
pub async fn issue_in(
    state: &AppState,
    tx: &mut Transaction<'static, Any>,
    client_id: &str,
    grant: &Grant,
    refresh: Option<RefreshPlan>,
    issued_by: &str,
) -> ApiResult<Issued> {
    let now = now();
    let exp = now + grant.ttl_seconds;
    let jti = random_jti();
    let scope = grant.scopes.join(" ");
    let aud = match grant.audience.as_slice() {
        [one] => Value::String(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::String).collect()),
    };
    let claims = AccessClaims {
        iss: state.keys.issuer(),
        sub: &grant.subject,
        aud,
        exp,
        iat: now,
        jti: &jti,
        client_id,
        scope: &scope,
        roles: &grant.roles,
    };
    let (access_token, kid) = state.keys.sign(&claims).map_err(ApiError::Internal)?;
    let family_id = refresh.as_ref().map(|r| r.family_id.clone());
    sqlx::query(
        "INSERT INTO tokens (jti, subject, client_id, scopes, roles, audience, kid, issued_at, expires_at, family_id, issued_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&jti)
    .bind(&grant.subject)
    .bind(client_id)
    .bind(&scope)
    .bind(grant.roles.join(" "))
    .bind(grant.audience.join(" "))
    .bind(&kid)
    .bind(now)
    .bind(exp)
    .bind(&family_id)
    .bind(issued_by)
    .execute(&mut **tx)
    .await?;
    let refresh_token = match refresh {
        None => None,
        Some(plan) => {
            let token = random_secret(REFRESH_PREFIX);
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family_id, client_id, subject, scopes, roles, audience, access_jti, issued_at, expires_at, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active')",
            )
            .bind(sha256_hex(&token))
            .bind(&plan.family_id)
            .bind(client_id)
            .bind(&grant.subject)
            .bind(&scope)
            .bind(grant.roles.join(" "))
            .bind(grant.audience.join(" "))
            .bind(&jti)
            .bind(now)
            .bind(plan.expires_at.unwrap_or(now + state.config.refresh_token_lifetime_seconds as i64))
            .execute(&mut **tx)
            .await?;
            Some(token)
        }
    };
    crate::events::record(&state.events, &state.db, tx, crate::events::Event::new("token.issued", issued_by).jti(&jti).subject(&grant.subject).client(client_id).details(serde_json::json!({"scopes": grant.scopes, "expires_at": exp, "refresh": refresh_token.is_some()}))).await?;
    Ok(Issued {
        access_token,
        token_type: "Bearer".into(),
        expires_in: grant.ttl_seconds,
        refresh_token,
        jti,
    })
}

/// Where a new refresh token goes.
#[derive(Clone, Debug)]
pub struct RefreshPlan {
    /// Family the refresh token belongs to (all rotations of one original grant).
    pub family_id: String,
    /// Absolute expiry inherited from the family; `None` starts a new lifetime.
    pub expires_at: Option<i64>,
}

impl RefreshPlan {
    /// A new family.
    pub fn new_family() -> RefreshPlan {
        RefreshPlan {
            family_id: random_jti(),
            expires_at: None,
        }
    }
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", post(create).get(list))
        .route("/api/v1/tokens/{jti}", get(show))
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ClientAddr(_address): ClientAddr,
    Json(req): Json<CreateRequest>,
) -> ApiResult<Json<Issued>> {
    principal.require(&[Role::Admin, Role::Service], "issue tokens")?;
    principal.require_client(&req.client_id, "issue tokens")?;
    state
        .token_limiter
        .check(&format!("issue:{}", principal.actor()))?;
    let client = clients::find(&state.db, &req.client_id)
        .await?
        .ok_or_else(|| {
            ApiError::field(
                "client_id",
                format!("client_id: no client {:?}", req.client_id),
            )
        })?;
    let audience = match req.audience {
        None => vec![],
        Some(Audience::One(a)) => vec![a],
        Some(Audience::Many(v)) => v,
    };
    let grant = check_grant(
        &state,
        &client,
        &req.subject,
        req.scopes,
        req.roles,
        audience,
        req.ttl_seconds,
    )?;
    let mut tx = state.db.pool.begin().await?;
    let refresh = req.refresh.then(RefreshPlan::new_family);
    let issued = issue_in(
        &state,
        &mut tx,
        &client.client_id,
        &grant,
        refresh,
        &principal.actor(),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(jti = %issued.jti, client_id = %client.client_id, actor = %principal.actor(), "token issued");
    Ok(Json(issued))
}

fn split(s: String) -> Vec<String> {
    s.split(' ')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn record(row: &AnyRow, now: i64) -> Result<TokenRecord, sqlx::Error> {
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    Ok(TokenRecord {
        jti: row.try_get("jti")?,
        subject: row.try_get("subject")?,
        client_id: row.try_get("client_id")?,
        scopes: split(row.try_get("scopes")?),
        roles: split(row.try_get("roles")?),
        audience: split(row.try_get("audience")?),
        kid: row.try_get("kid")?,
        issued_at: row.try_get("issued_at")?,
        expires_at,
        status: if revoked_at.is_some() {
            "revoked"
        } else if expires_at <= now {
            "expired"
        } else {
            "active"
        }
        .to_owned(),
        revoked_at,
        revoke_reason: row.try_get("revoke_reason")?,
        family_id: row.try_get("family_id")?,
        issued_by: row.try_get("issued_by")?,
    })
}

const COLUMNS: &str =
    "jti, subject, client_id, scopes, roles, audience, kid, issued_at, expires_at, revoked_at, revoke_reason, family_id, issued_by";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<TokenRecord>>> {
    principal.require(&[Role::Admin, Role::Auditor], "list tokens")?;
    let (limit, offset) = page_params(q.limit, q.offset)?;
    let status_clause = match q.status.as_deref() {
        None | Some("") => "1 = 1",
        Some("active") => "revoked_at IS NULL AND expires_at > $1",
        Some("expired") => "revoked_at IS NULL AND expires_at <= $1",
        Some("revoked") => "revoked_at IS NOT NULL",
        Some(other) => {
            return Err(ApiError::field(
                "status",
                format!("status: {other:?} is not one of active, expired, revoked"),
            ));
        }
    };
    let subject = q.subject.unwrap_or_default();
    let client_id = q.client_id.unwrap_or_default();
    // Placeholders are numbered the same in both queries; unused ones are compared to themselves. An
    // absent filter is left out rather than written `($2 = '' OR subject = $2)`, which SQLite cannot
    // answer from an index: it would scan every token.
    let subject_clause = if subject.is_empty() {
        "$2 = $2"
    } else {
        "subject = $2"
    };
    let client_clause = if client_id.is_empty() {
        "$3 = $3"
    } else {
        "client_id = $3"
    };
    let filter =
        format!("WHERE {status_clause} AND {subject_clause} AND {client_clause} AND $1 = $1");
    let now = now();
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM tokens {filter}"
    )))
    .bind(now)
    .bind(&subject)
    .bind(&client_id)
    .fetch_one(&state.db.pool)
    .await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM tokens {filter} ORDER BY issued_at DESC, jti LIMIT $4 OFFSET $5"
    )))
    .bind(now)
    .bind(&subject)
    .bind(&client_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| record(r, now))
        .collect::<Result<Vec<_>, _>>()?;
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
    Path(jti): Path<String>,
) -> ApiResult<Json<TokenRecord>> {
    principal.require(&[Role::Admin, Role::Auditor], "read tokens")?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM tokens WHERE jti = $1"
    )))
    .bind(&jti)
    .fetch_optional(&state.db.pool)
    .await?;
    let row = row.ok_or_else(|| ApiError::NotFound(format!("no token with jti {jti:?}")))?;
    Ok(Json(record(&row, now())?))
}
