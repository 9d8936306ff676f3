//! `GET /api/v1/openapi.json`: an OpenAPI 3.1 description of every route, public like the other
//! discovery documents (it describes the API, not its data). It is built from [`OPERATIONS`], one row per
//! method and path; a test compares that table with the routes registered in the source and calls each
//! one through the router, so the document cannot drift from the code.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::AppState;

/// One operation of the API.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// Lowercase HTTP method.
    pub method: &'static str,
    /// Path template with `{param}` segments, as registered in axum.
    pub path: &'static str,
    /// Tag grouping it in the document.
    pub tag: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Roles allowed (`public` for no credentials, `client` for OAuth client authentication).
    pub roles: &'static str,
    /// Query parameters.
    pub query: &'static [&'static str],
    /// Request body content type, if any.
    pub body: Option<&'static str>,
    /// Success status.
    pub ok: u16,
}

// A positional constructor keeps the table below one readable row per operation.
#[allow(clippy::too_many_arguments)]
const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    roles: &'static str,
    query: &'static [&'static str],
    body: Option<&'static str>,
    ok: u16,
) -> Operation {
    Operation {
        method,
        path,
        tag,
        summary,
        roles,
        query,
        body,
        ok,
    }
}

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const PAGE: &[&str] = &["limit", "offset"];

/// Every operation the router serves.
pub const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/healthz",
        "discovery",
        "Liveness and database reachability",
        "public",
        &[],
        None,
        200,
    ),
    op(
        "get",
        "/.well-known/jwks.json",
        "discovery",
        "Public signing keys (RFC 7517)",
        "public",
        &[],
        None,
        200,
    ),
    op(
        "get",
        "/.well-known/oauth-authorization-server",
        "discovery",
        "Authorization server metadata (RFC 8414)",
        "public",
        &[],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/openapi.json",
        "discovery",
        "This document",
        "public",
        &[],
        None,
        200,
    ),
    op(
        "get",
        "/metrics",
        "observability",
        "Prometheus metrics",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "post",
        "/api/v1/session",
        "session",
        "Log in to the dashboard (sets the session and CSRF cookies)",
        "public",
        &[],
        JSON,
        200,
    ),
    op(
        "get",
        "/api/v1/session",
        "session",
        "Who is logged in",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "delete",
        "/api/v1/session",
        "session",
        "Log out",
        "admin auditor",
        &[],
        None,
        204,
    ),
    op(
        "post",
        "/api/v1/api-keys",
        "api keys",
        "Create an API key (shown once)",
        "admin",
        &[],
        JSON,
        201,
    ),
    op(
        "get",
        "/api/v1/api-keys",
        "api keys",
        "List API keys",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "delete",
        "/api/v1/api-keys/{id}",
        "api keys",
        "Delete an API key",
        "admin",
        &[],
        None,
        204,
    ),
    op(
        "get",
        "/api/v1/keys",
        "keys",
        "List signing keys",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "post",
        "/api/v1/keys/rotate",
        "keys",
        "Rotate the signing key",
        "admin",
        &[],
        JSON,
        200,
    ),
    op(
        "post",
        "/api/v1/clients",
        "clients",
        "Register a client (secret shown once)",
        "admin",
        &[],
        JSON,
        201,
    ),
    op(
        "get",
        "/api/v1/clients",
        "clients",
        "List clients",
        "admin auditor",
        PAGE,
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/clients/{client_id}",
        "clients",
        "Show a client",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "patch",
        "/api/v1/clients/{client_id}",
        "clients",
        "Change a client",
        "admin",
        &[],
        JSON,
        200,
    ),
    op(
        "delete",
        "/api/v1/clients/{client_id}",
        "clients",
        "Delete a client",
        "admin",
        &[],
        None,
        204,
    ),
    op(
        "post",
        "/api/v1/clients/{client_id}/secret",
        "clients",
        "Rotate a client's secret",
        "admin",
        &[],
        None,
        200,
    ),
    op(
        "post",
        "/api/v1/tokens",
        "tokens",
        "Issue an access token (and optionally a refresh token)",
        "admin service",
        &[],
        JSON,
        200,
    ),
    op(
        "get",
        "/api/v1/tokens",
        "tokens",
        "List token records",
        "admin auditor",
        &["status", "subject", "client_id", "limit", "offset"],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/tokens/{jti}",
        "tokens",
        "Show a token record",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/tokens/{jti}/timeline",
        "tokens",
        "One token's events, usage and failures",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "post",
        "/api/v1/revocations",
        "revocations",
        "Revoke a token, subject or client",
        "admin service",
        &[],
        JSON,
        201,
    ),
    op(
        "get",
        "/api/v1/revocations",
        "revocations",
        "List active revocations",
        "admin auditor",
        &["kind", "limit", "offset"],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/revocations/feed",
        "revocations",
        "Revocation feed for edges (delta or snapshot, long-poll, pageable)",
        "admin auditor edge",
        &["since", "wait", "limit", "after"],
        None,
        200,
    ),
    op(
        "post",
        "/oauth/token",
        "oauth",
        "Token endpoint: client_credentials and refresh_token grants",
        "client service",
        &[],
        FORM,
        200,
    ),
    op(
        "post",
        "/oauth/revoke",
        "oauth",
        "Token revocation (RFC 7009)",
        "client admin service",
        &[],
        FORM,
        200,
    ),
    op(
        "post",
        "/oauth/introspect",
        "oauth",
        "Token introspection (RFC 7662)",
        "client admin auditor service",
        &[],
        FORM,
        200,
    ),
    op(
        "post",
        "/api/v1/usage",
        "usage",
        "Report a batch of edge decisions and failure samples",
        "admin edge",
        &[],
        JSON,
        202,
    ),
    op(
        "get",
        "/api/v1/usage/timeseries",
        "usage",
        "Decisions over time in minute or hour buckets",
        "admin auditor",
        &[
            "bucket",
            "since",
            "until",
            "subject",
            "client_id",
            "jti",
            "route",
            "reason",
            "edge",
        ],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/usage/failures",
        "usage",
        "Failure samples reported by edges",
        "admin auditor",
        &[
            "client_address",
            "subject",
            "client_id",
            "jti",
            "reason",
            "edge",
            "since",
            "limit",
            "offset",
        ],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/overview",
        "overview",
        "Tokens, decisions, open anomalies and edges at a glance (range 1h, 24h or 7d)",
        "admin auditor",
        &["range"],
        None,
        200,
    ),
    op(
        "post",
        "/api/v1/issuers",
        "issuers",
        "Trust a foreign issuer (its jwks_uri or inline jwks) for revocation",
        "admin",
        &[],
        JSON,
        201,
    ),
    op(
        "get",
        "/api/v1/issuers",
        "issuers",
        "List the trusted foreign issuers",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/revocations/propagation",
        "revocations",
        "Which edges have applied the feed change at a cursor, and how long each took",
        "admin auditor",
        &["cursor"],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/edges",
        "edges",
        "Edges with last poll, cursor, staleness and last report",
        "admin auditor",
        &["stale_after", "limit", "offset"],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/anomalies",
        "anomalies",
        "List anomalies",
        "admin auditor",
        &[
            "state",
            "kind",
            "severity",
            "subject",
            "subject_kind",
            "limit",
            "offset",
        ],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/anomalies/{id}",
        "anomalies",
        "Show an anomaly",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "patch",
        "/api/v1/anomalies/{id}",
        "anomalies",
        "Acknowledge, resolve or reopen an anomaly",
        "admin",
        &[],
        JSON,
        200,
    ),
    op(
        "get",
        "/api/v1/events",
        "events",
        "Query the event log",
        "admin auditor",
        &[
            "kind",
            "subject",
            "client_id",
            "jti",
            "actor",
            "since",
            "until",
            "limit",
            "offset",
        ],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/events/stream",
        "events",
        "Live event stream (server-sent events)",
        "admin auditor",
        &["kind"],
        None,
        200,
    ),
    op(
        "post",
        "/api/v1/webhooks",
        "webhooks",
        "Create a webhook (secret shown once)",
        "admin",
        &[],
        JSON,
        201,
    ),
    op(
        "get",
        "/api/v1/webhooks",
        "webhooks",
        "List webhooks",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "get",
        "/api/v1/webhooks/{id}",
        "webhooks",
        "Show a webhook",
        "admin auditor",
        &[],
        None,
        200,
    ),
    op(
        "patch",
        "/api/v1/webhooks/{id}",
        "webhooks",
        "Change a webhook",
        "admin",
        &[],
        JSON,
        200,
    ),
    op(
        "delete",
        "/api/v1/webhooks/{id}",
        "webhooks",
        "Delete a webhook",
        "admin",
        &[],
        None,
        204,
    ),
    op(
        "get",
        "/api/v1/webhooks/{id}/deliveries",
        "webhooks",
        "A webhook's deliveries",
        "admin auditor",
        &["state", "limit", "offset"],
        None,
        200,
    ),
];

fn operation_id(op: &Operation) -> String {
    let mut id = op.method.to_owned();
    for segment in op
        .path
        .split(['/', '.', '-'])
        .filter(|s| !s.is_empty() && *s != "api" && *s != "v1")
    {
        let segment = segment.trim_matches(|c| c == '{' || c == '}');
        let mut chars = segment.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars.filter(|c| c.is_ascii_alphanumeric()));
        }
    }
    id
}

fn description(op: &Operation, ok: u16) -> &'static str {
    match (ok, op.method) {
        (201, _) => "created",
        (202, _) => "accepted",
        (204, _) => "done, no content",
        _ => "success",
    }
}

/// Builds the document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        for q in op.query {
            let schema = if [
                "limit",
                "offset",
                "since",
                "until",
                "wait",
                "stale_after",
                "cursor",
            ]
            .contains(q)
            {
                json!({"type": "integer"})
            } else {
                json!({"type": "string"})
            };
            parameters.push(json!({"name": q, "in": "query", "required": false, "schema": schema}));
        }
        let ok_content = match (op.ok, op.path) {
            (204, _) => None,
            (_, "/metrics") => Some(json!({"text/plain": {"schema": {"type": "string"}}})),
            (_, "/api/v1/events/stream") => {
                Some(json!({"text/event-stream": {"schema": {"type": "string"}}}))
            }
            _ => Some(json!({"application/json": {"schema": {"type": "object"}}})),
        };
        let mut ok = json!({"description": description(op, op.ok)});
        if let Some(content) = ok_content {
            ok["content"] = content;
        }
        let mut responses = Map::new();
        responses.insert(op.ok.to_string(), ok);
        if op.path == "/api/v1/revocations/feed" {
            responses.insert(
                "304".into(),
                json!({"description": "nothing changed since the cursor (If-None-Match)"}),
            );
        }
        if op.path == "/api/v1/usage" {
            responses.insert("413".into(), json!({"description": "batch too large", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
        }
        let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        for (status, what) in [
            ("400", "invalid input; the error names the field"),
            ("401", "missing or unknown credentials"),
            ("403", "role not allowed"),
            ("404", "not found"),
        ] {
            if op.roles == "public" && (status == "401" || status == "403") {
                continue;
            }
            let mut e = error.clone();
            e["description"] = Value::String(what.into());
            responses.insert(status.into(), e);
        }
        let mut operation = json!({
            "operationId": operation_id(op),
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": parameters,
            "responses": responses,
            "x-roles": op.roles.split(' ').collect::<Vec<_>>(),
        });
        operation["security"] = match op.roles {
            "public" => json!([]),
            "client" => json!([{"clientBasic": []}]),
            r if r.starts_with("client") => json!([{"clientBasic": []}, {"apiKey": []}]),
            _ => json!([{"apiKey": []}, {"session": []}]),
        };
        if let Some(content_type) = op.body {
            operation["requestBody"] = json!({"required": true, "content": {content_type: {"schema": {"type": "object"}}}});
        }
        let item = paths
            .entry(op.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        item[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "EdgeWarden admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Issues, refreshes, revokes and introspects tokens, publishes the revocation feed, ingests edge usage, detects anomalies.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key (`ewk_...`)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ew_session", "description": "dashboard session; mutations must repeat the csrf token in x-csrf-token"},
                "clientBasic": {"type": "http", "scheme": "basic", "description": "OAuth client id and secret"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}},
                },
            },
        },
    })
}

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(openapi))
}

async fn openapi() -> Response {
    let mut response = axum::Json(document()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
