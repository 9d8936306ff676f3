//! `GET /api/v1/openapi.json`: an OpenAPI 3.1 description of every route, public like the other
//! discovery documents (it describes the API, not its data). It is built from [`OPERATIONS`], one row per
//! method and path; a test compares that table with the routes registered in the source and calls each
//! one through the router, so the document cannot drift from the code.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
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
        "/api/v1/session/password",
        "session",
        "Change the logged-in user's password (ends the user's other sessions)",
        "admin auditor",
        &[],
        JSON,
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
        &["kind", "value", "limit", "offset"],
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
        "get",
        "/api/v1/revocations/snapshot",
        "revocations",
        "Edge snapshot: the revocation state at one feed cursor in checksummed binary pages",
        "admin auditor edge",
        &["page", "id", "cursor", "now"],
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
        "delete",
        "/api/v1/issuers/{issuer}",
        "issuers",
        "Stop trusting a foreign issuer (percent-encode it); revocations already recorded stay until they expire",
        "admin",
        &[],
        None,
        204,
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
        "post",
        "/api/v1/edges/config",
        "edges",
        "An edge reports the configuration it runs, secrets left out (x-edgewarden-edge names it)",
        "admin edge",
        &[],
        JSON,
        200,
    ),
    op(
        "get",
        "/api/v1/edges/configs/{hash}",
        "edges",
        "A configuration an edge reported, by its hash",
        "admin auditor",
        &[],
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
    // Only the `/api/v1` prefix is dropped: `/api/v1/api-keys` must not collide with `/api/v1/keys`.
    let path = op.path.strip_prefix("/api/v1").unwrap_or(op.path);
    for segment in path.split(['/', '.', '-']).filter(|s| !s.is_empty()) {
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

/// The component schemas of the document. The wire types of `edgewarden-api-types` (and the few bodies
/// defined in this crate) derive theirs with schemars, doc comments becoming descriptions and serde
/// attributes shaping them; request bodies are described as they are read (a `#[serde(default)]` field is
/// optional), responses as they are written (a skipped `None` is absent). The bodies built with `json!`
/// elsewhere in the crate are described by hand in [`Schemas::hand_written`].
struct Schemas {
    requests: SchemaGenerator,
    responses: SchemaGenerator,
    hand_written: Map<String, Value>,
}

impl Schemas {
    fn new() -> Schemas {
        let settings = || {
            SchemaSettings::draft2020_12().with(|s| {
                s.definitions_path = "/components/schemas".into();
                s.meta_schema = None;
            })
        };
        let mut schemas = Schemas {
            requests: settings().for_deserialize().into_generator(),
            responses: settings().for_serialize().into_generator(),
            hand_written: Map::new(),
        };
        schemas.hand_written();
        schemas
    }

    /// The schema of a request body of type `T`: a `$ref` to its component.
    fn request<T: JsonSchema>(&mut self) -> Value {
        self.requests.subschema_for::<T>().to_value()
    }

    /// The schema of a response body of type `T`: a `$ref` to its component (or an array of them).
    fn response<T: JsonSchema>(&mut self) -> Value {
        self.responses.subschema_for::<T>().to_value()
    }

    /// A `$ref` to one of the hand-written components.
    fn named(&self, name: &str) -> Value {
        assert!(
            self.hand_written.contains_key(name),
            "no hand-written schema {name}"
        );
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// Every component. A type read in requests and written in responses under one name must come out
    /// the same both ways (a unit test checks the document for it).
    fn into_components(mut self) -> Map<String, Value> {
        let mut all = self.hand_written;
        for (name, schema) in self
            .requests
            .take_definitions(true)
            .into_iter()
            .chain(self.responses.take_definitions(true))
        {
            if let Some(existing) = all.get(&name) {
                assert_eq!(
                    existing, &schema,
                    "schema {name} differs between requests and responses: rename one side"
                );
            }
            all.insert(name, schema);
        }
        all
    }

    /// Bodies the crate builds with `json!` or reads field by field (forms, the feed, the usage batch).
    fn hand_written(&mut self) {
        let s = &mut self.hand_written;
        let mut add = |name: &str, schema: Value| {
            s.insert(name.to_owned(), schema);
        };
        add(
            "Error",
            json!({
                "type": "object",
                "description": "Every error of the admin API outside `/oauth/*`.",
                "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string", "description": "Machine-readable code (`unauthorized`, `forbidden`, `invalid_request`, `not_found`, `conflict`, `rate_limited`, `internal`)."},
                    "message": {"type": "string", "description": "What went wrong and what to do, for a person."},
                    "field": {"type": "string", "description": "The request field at fault, when one is."}}}},
            }),
        );
        add(
            "OAuthError",
            json!({
                "type": "object",
                "description": "An `/oauth/*` error, in the RFC 6749 section 5.2 shape.",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string", "description": "`invalid_request`, `invalid_client`, `invalid_grant`, `unauthorized_client`, `unsupported_grant_type`, `invalid_scope` or `access_denied`."},
                    "error_description": {"type": "string", "description": "What went wrong and what to do, for a person."},
                },
            }),
        );
        add(
            "Health",
            json!({
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "unavailable"], "description": "`unavailable` (with status 503) when the database does not answer."},
                    "feed_cursor": {"type": "integer", "description": "The revocation feed's current cursor."},
                },
            }),
        );
        add(
            "Jwks",
            json!({
                "type": "object",
                "description": "The public signing keys (RFC 7517): the active key and recently retired ones.",
                "required": ["keys"],
                "properties": {"keys": {"type": "array", "items": {"type": "object", "required": ["kty", "kid"], "additionalProperties": true, "properties": {
                    "kty": {"type": "string"}, "kid": {"type": "string"}, "alg": {"type": "string"}, "use": {"type": "string"}}}}},
            }),
        );
        let string_list = json!({"type": "array", "items": {"type": "string"}});
        let mut metadata = Map::new();
        for name in [
            "issuer",
            "token_endpoint",
            "jwks_uri",
            "revocation_endpoint",
            "introspection_endpoint",
            "service_documentation",
        ] {
            metadata.insert(name.into(), json!({"type": "string"}));
        }
        for name in [
            "grant_types_supported",
            "response_types_supported",
            "token_endpoint_auth_methods_supported",
            "revocation_endpoint_auth_methods_supported",
            "introspection_endpoint_auth_methods_supported",
            "token_endpoint_auth_signing_alg_values_supported",
        ] {
            metadata.insert(name.into(), string_list.clone());
        }
        add(
            "AuthorizationServerMetadata",
            json!({
                "type": "object",
                "description": "RFC 8414 metadata; `issuer` is the admin API's `--issuer` (default `http://<listen>`), the `iss` of every token it signs.",
                "required": ["issuer", "token_endpoint", "jwks_uri"],
                "properties": metadata,
            }),
        );
        add(
            "OpenApiDocument",
            json!({"type": "object", "description": "This OpenAPI 3.1 document.", "required": ["openapi", "info", "paths"]}),
        );
        let alg = json!({"type": "string", "enum": ["ES256", "EdDSA", "RS256"]});
        add(
            "RotateKeyRequest",
            json!({
                "type": "object",
                "description": "Optional: an empty body rotates to a key of the configured `--signing-alg`.",
                "additionalProperties": false,
                "properties": {"alg": alg},
            }),
        );
        add(
            "RotatedKey",
            json!({
                "type": "object",
                "required": ["kid", "alg"],
                "properties": {"kid": {"type": "string", "description": "The new active key's id."}, "alg": alg},
            }),
        );
        add(
            "ClientUpdate",
            json!({
                "type": "object",
                "description": "The fields to change; absent fields keep their value. Each list replaces the client's list.",
                "additionalProperties": false,
                "properties": {
                    "name": {"type": "string", "description": "Display name."},
                    "allowed_scopes": {"type": "array", "items": {"type": "string"}, "description": "Scopes its tokens may carry (replaces the list)."},
                    "allowed_roles": {"type": "array", "items": {"type": "string"}, "description": "Roles its tokens may carry (replaces the list)."},
                    "audiences": {"type": "array", "items": {"type": "string"}, "description": "Audiences its tokens may name; the first is the default."},
                    "max_lifetime_seconds": {"type": "integer", "description": "Longest access-token lifetime in seconds (1 up to `--max-token-lifetime`)."},
                },
            }),
        );
        let opt_string = json!({"type": ["string", "null"]});
        let opt_integer = json!({"type": ["integer", "null"]});
        add(
            "UsageCount",
            json!({
                "type": "object",
                "description": "Decisions of one kind during the interval.",
                "additionalProperties": false,
                "required": ["route", "reason", "count"],
                "properties": {
                    "token_fingerprint": opt_string, "jti": opt_string, "subject": opt_string, "client_id": opt_string,
                    "route": {"type": "string", "description": "Request path (without query)."},
                    "reason": {"type": "string", "description": "Decision reason (`ok` when allowed)."},
                    "count": {"type": "integer"},
                    "addresses": {"type": "array", "items": {"type": "string"}, "description": "Client addresses seen."},
                },
            }),
        );
        add(
            "UsageFailure",
            json!({
                "type": "object",
                "description": "One refused request.",
                "additionalProperties": false,
                "required": ["reason", "client_address", "at"],
                "properties": {
                    "jti": opt_string, "subject": opt_string, "client_id": opt_string, "route": opt_string,
                    "reason": {"type": "string"},
                    "client_address": {"type": "string"},
                    "at": {"type": "integer", "description": "When (Unix seconds, edge clock)."},
                    "iat": opt_integer, "nbf": opt_integer,
                },
            }),
        );
        add(
            "UsageBatch",
            json!({
                "type": "object",
                "description": "One batch of decisions from an edge.",
                "additionalProperties": false,
                "required": ["edge", "interval_start", "interval_end"],
                "properties": {
                    "edge": {"type": "string"},
                    "interval_start": {"type": "integer"},
                    "interval_end": {"type": "integer"},
                    "dropped": {"type": "integer", "minimum": 0, "description": "Events the edge had to drop."},
                    "counts": {"type": "array", "items": {"$ref": "#/components/schemas/UsageCount"}},
                    "failures": {"type": "array", "items": {"$ref": "#/components/schemas/UsageFailure"}},
                },
            }),
        );
        add(
            "EdgeConfigDocument",
            json!({
                "type": "object",
                "description": "The plugin configuration an edge runs, as the filter reports it: `control_plane.api_key` and inline key secrets (`k`, `d`, ...) replaced by \"<redacted>\" (a document carrying one is refused). Its SHA-256 is the hash the edge sends on its polls; at most 256 KiB.",
            }),
        );
        add(
            "UsageAccepted",
            json!({
                "type": "object",
                "required": ["accepted_counts", "accepted_failures", "bucket"],
                "properties": {"accepted_counts": {"type": "integer"}, "accepted_failures": {"type": "integer"}, "bucket": {"type": "integer", "description": "The minute bucket the batch was counted in."}},
            }),
        );
        let iss = json!({"type": "string", "description": "The issuer it applies to; absent (entries from before revocations named their issuer) means any."});
        add(
            "RevocationFeed",
            json!({
                "type": "object",
                "description": "The revocation feed an edge polls: a delta since `since`, or a full snapshot.",
                "required": ["cursor", "full", "now", "revoked_jtis", "revoked_subjects", "revoked_clients"],
                "properties": {
                    "cursor": {"type": "integer", "description": "Send this as `since` next time."},
                    "full": {"type": "boolean", "description": "True for a complete snapshot that replaces the edge's state."},
                    "now": {"type": "integer"},
                    "total": {"type": "object", "description": "Size of the whole listing, on the first page of a paged listing.", "required": ["jtis", "subjects", "clients"],
                        "properties": {"jtis": {"type": "integer"}, "subjects": {"type": "integer"}, "clients": {"type": "integer"}}},
                    "next": {"type": "string", "description": "Send this as `after` to get the next page."},
                    "revoked_jtis": {"type": "array", "items": {"type": "object", "required": ["jti", "exp"], "properties": {"jti": {"type": "string"}, "exp": {"type": "integer"}, "iss": iss}}},
                    "revoked_subjects": {"type": "array", "items": {"type": "object", "required": ["subject", "revoked_at", "expires_at"], "properties": {"subject": {"type": "string"}, "revoked_at": {"type": "integer"}, "expires_at": {"type": "integer"}, "iss": iss}}},
                    "revoked_clients": {"type": "array", "items": {"type": "object", "required": ["client_id", "revoked_at", "expires_at"], "properties": {"client_id": {"type": "string"}, "revoked_at": {"type": "integer"}, "expires_at": {"type": "integer"}, "iss": iss}}},
                },
            }),
        );
        let client_auth = json!({
            "client_id": {"type": "string", "description": "With `client_secret` (client_secret_post), instead of HTTP Basic."},
            "client_secret": {"type": "string"},
        });
        let with_auth = |mut props: Value| {
            for (k, v) in client_auth.as_object().into_iter().flatten() {
                props[k] = v.clone();
            }
            props
        };
        add(
            "OAuthTokenRequest",
            json!({
                "type": "object",
                "required": ["grant_type"],
                "properties": with_auth(json!({
                    "grant_type": {"type": "string", "enum": ["client_credentials", "refresh_token"]},
                    "scope": {"type": "string", "description": "Space-separated scopes, each in the client's `allowed_scopes`; all of them when absent (client_credentials)."},
                    "audience": {"type": "string", "description": "One of the client's `audiences` (`resource` is accepted too)."},
                    "resource": {"type": "string"},
                    "refresh_token": {"type": "string", "description": "For the refresh_token grant (rotated on every use)."},
                })),
            }),
        );
        add(
            "OAuthToken",
            json!({
                "type": "object",
                "required": ["access_token", "token_type", "expires_in", "scope"],
                "properties": {
                    "access_token": {"type": "string"},
                    "token_type": {"type": "string", "enum": ["Bearer"]},
                    "expires_in": {"type": "integer"},
                    "refresh_token": {"type": ["string", "null"], "description": "The new refresh token (refresh_token grant only)."},
                    "scope": {"type": "string"},
                },
            }),
        );
        let token_form = |what: &str| {
            json!({
                "type": "object",
                "required": ["token"],
                "properties": with_auth(json!({
                    "token": {"type": "string", "description": what},
                    "token_type_hint": {"type": "string"},
                })),
            })
        };
        add(
            "OAuthRevokeRequest",
            token_form("The access or refresh token to revoke."),
        );
        add(
            "OAuthIntrospectRequest",
            token_form("The access or refresh token to describe."),
        );
        add(
            "OAuthRevoked",
            json!({"type": "object", "description": "Always empty: unknown and foreign tokens get the same answer (RFC 7009 2.2)."}),
        );
        add(
            "OAuthIntrospection",
            json!({
                "type": "object",
                "description": "RFC 7662; an inactive, unknown or other client's token is only `{\"active\": false}`.",
                "required": ["active"],
                "properties": {
                    "active": {"type": "boolean"},
                    "token_type": {"type": "string", "enum": ["Bearer", "refresh_token"]},
                    "scope": {"type": "string"}, "client_id": {"type": "string"}, "sub": {"type": "string"},
                    "iss": {"type": "string"}, "jti": {"type": "string"},
                    "exp": {"type": "integer"}, "iat": {"type": "integer"}, "nbf": {"type": "integer"},
                    "aud": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "roles": {"type": "array", "items": {"type": "string"}},
                },
            }),
        );
    }
}

/// The request and response body schemas of one operation (`None` where there is no JSON or form body).
fn bodies(op: &Operation, s: &mut Schemas) -> (Option<Value>, Option<Value>) {
    use edgewarden_api_types as t;
    let (req, res) = match (op.method, op.path) {
        ("get", "/healthz") => (None, Some(s.named("Health"))),
        ("get", "/.well-known/jwks.json") => (None, Some(s.named("Jwks"))),
        ("get", "/.well-known/oauth-authorization-server") => {
            (None, Some(s.named("AuthorizationServerMetadata")))
        }
        ("get", "/api/v1/openapi.json") => (None, Some(s.named("OpenApiDocument"))),
        ("post", "/api/v1/session") => (
            Some(s.request::<t::LoginRequest>()),
            Some(s.response::<t::SessionInfo>()),
        ),
        ("get", "/api/v1/session") => (None, Some(s.response::<t::SessionInfo>())),
        ("post", "/api/v1/session/password") => (Some(s.request::<t::PasswordChange>()), None),
        ("post", "/api/v1/api-keys") => (
            Some(s.request::<t::NewApiKeyRequest>()),
            Some(s.response::<t::NewApiKey>()),
        ),
        ("get", "/api/v1/api-keys") => (None, Some(s.response::<t::Page<t::ApiKeySummary>>())),
        ("get", "/api/v1/keys") => (None, Some(s.response::<Vec<t::KeyInfo>>())),
        ("post", "/api/v1/keys/rotate") => (
            Some(s.named("RotateKeyRequest")),
            Some(s.named("RotatedKey")),
        ),
        ("post", "/api/v1/clients") => (
            Some(s.request::<t::NewClientRequest>()),
            Some(s.response::<t::ClientWithSecret>()),
        ),
        ("get", "/api/v1/clients") => (None, Some(s.response::<t::Page<t::Client>>())),
        ("get", "/api/v1/clients/{client_id}") => (None, Some(s.response::<t::Client>())),
        ("patch", "/api/v1/clients/{client_id}") => (
            Some(s.named("ClientUpdate")),
            Some(s.response::<t::Client>()),
        ),
        ("post", "/api/v1/clients/{client_id}/secret") => {
            (None, Some(s.response::<t::ClientWithSecret>()))
        }
        ("post", "/api/v1/tokens") => (
            Some(s.request::<t::IssueRequest>()),
            Some(s.response::<t::Issued>()),
        ),
        ("get", "/api/v1/tokens") => (None, Some(s.response::<t::Page<t::TokenRecord>>())),
        ("get", "/api/v1/tokens/{jti}") => (None, Some(s.response::<t::TokenRecord>())),
        ("get", "/api/v1/tokens/{jti}/timeline") => (None, Some(s.response::<t::Timeline>())),
        ("post", "/api/v1/revocations") => (
            Some(s.request::<t::RevokeRequest>()),
            Some(s.response::<t::Revocation>()),
        ),
        ("get", "/api/v1/revocations") => (None, Some(s.response::<t::Page<t::Revocation>>())),
        ("get", "/api/v1/revocations/feed") => (None, Some(s.named("RevocationFeed"))),
        ("get", "/api/v1/revocations/propagation") => (None, Some(s.response::<t::Propagation>())),
        ("post", "/oauth/token") => (
            Some(s.named("OAuthTokenRequest")),
            Some(s.named("OAuthToken")),
        ),
        ("post", "/oauth/revoke") => (
            Some(s.named("OAuthRevokeRequest")),
            Some(s.named("OAuthRevoked")),
        ),
        ("post", "/oauth/introspect") => (
            Some(s.named("OAuthIntrospectRequest")),
            Some(s.named("OAuthIntrospection")),
        ),
        ("post", "/api/v1/usage") => (Some(s.named("UsageBatch")), Some(s.named("UsageAccepted"))),
        ("get", "/api/v1/usage/timeseries") => (None, Some(s.response::<t::Series>())),
        ("get", "/api/v1/usage/failures") => (None, Some(s.response::<t::Page<t::Failure>>())),
        ("get", "/api/v1/overview") => (None, Some(s.response::<t::Overview>())),
        ("post", "/api/v1/issuers") => (
            Some(s.request::<t::NewIssuerRequest>()),
            Some(s.response::<t::TrustedIssuer>()),
        ),
        ("get", "/api/v1/issuers") => (None, Some(s.response::<Vec<t::TrustedIssuer>>())),
        ("get", "/api/v1/edges") => (None, Some(s.response::<t::Page<t::Edge>>())),
        ("post", "/api/v1/edges/config") => (
            Some(s.named("EdgeConfigDocument")),
            Some(s.response::<t::EdgeConfigAccepted>()),
        ),
        ("get", "/api/v1/edges/configs/{hash}") => (None, Some(s.response::<t::EdgeConfig>())),
        ("get", "/api/v1/anomalies") => (None, Some(s.response::<t::Page<t::Anomaly>>())),
        ("get", "/api/v1/anomalies/{id}") => (None, Some(s.response::<t::Anomaly>())),
        ("patch", "/api/v1/anomalies/{id}") => (
            Some(s.request::<t::AnomalyUpdate>()),
            Some(s.response::<t::Anomaly>()),
        ),
        ("get", "/api/v1/events") => (None, Some(s.response::<t::Page<t::StoredEvent>>())),
        ("post", "/api/v1/webhooks") => (
            Some(s.request::<t::NewWebhookRequest>()),
            Some(s.response::<t::Webhook>()),
        ),
        ("get", "/api/v1/webhooks") => (None, Some(s.response::<Vec<t::Webhook>>())),
        ("get", "/api/v1/webhooks/{id}") => (None, Some(s.response::<t::Webhook>())),
        ("patch", "/api/v1/webhooks/{id}") => (
            Some(s.request::<crate::webhooks::UpdateRequest>()),
            Some(s.response::<t::Webhook>()),
        ),
        ("get", "/api/v1/webhooks/{id}/deliveries") => (
            None,
            Some(s.response::<t::Page<crate::webhooks::Delivery>>()),
        ),
        _ => (None, None),
    };
    (req, res)
}

/// Builds the document.
pub fn document() -> Value {
    let mut schemas = Schemas::new();
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
                "page",
                "now",
            ]
            .contains(q)
            {
                json!({"type": "integer"})
            } else {
                json!({"type": "string"})
            };
            parameters.push(json!({"name": q, "in": "query", "required": false, "schema": schema}));
        }
        let (request, response) = bodies(op, &mut schemas);
        let ok_content = match (op.ok, op.path) {
            (204, _) => None,
            (_, "/metrics") => Some(json!({"text/plain": {"schema": {"type": "string"}}})),
            (_, "/api/v1/events/stream") => {
                Some(json!({"text/event-stream": {"schema": {"type": "string"}}}))
            }
            (_, "/api/v1/revocations/snapshot") => Some(
                json!({"application/vnd.edgewarden.snapshot": {"schema": {"type": "string", "format": "binary"}}}),
            ),
            _ => response.map(|schema| json!({"application/json": {"schema": schema}})),
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
        if op.path == "/api/v1/revocations/snapshot" {
            responses.insert(
                "409".into(),
                json!({"description": "that snapshot can no longer be built: start again at page 0"}),
            );
        }
        let oauth = op.path.starts_with("/oauth/");
        let error_schema = if oauth { "OAuthError" } else { "Error" };
        let error =
            json!({"content": {"application/json": {"schema": schemas.named(error_schema)}}});
        if op.path == "/api/v1/anomalies/{id}" && op.method == "patch" {
            let mut e = error.clone();
            e["description"] = Value::String(
                "reopening it would make a second live anomaly of its kind and subject; triage the live one".into(),
            );
            responses.insert("409".into(), e);
        }
        if op.path == "/api/v1/usage" {
            let mut e = error.clone();
            e["description"] = Value::String("batch too large".into());
            responses.insert("413".into(), e);
        }
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
            // A row added to OPERATIONS without a schema in `bodies` is a bare object here (the served
            // document never panics); the unit test below fails until `bodies` names one.
            let schema = request.unwrap_or_else(|| json!({"type": "object"}));
            // An empty body rotates to the configured algorithm.
            let required = op.path != "/api/v1/keys/rotate";
            operation["requestBody"] =
                json!({"required": required, "content": {content_type: {"schema": schema}}});
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
            "description": "Issues, refreshes, revokes and introspects tokens, publishes the revocation feed, ingests edge usage, detects anomalies. The `iss` of every token it signs is its `--issuer` (default `http://<listen>`): edges must be configured with exactly that issuer.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key (`ewk_...`)"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ew_session", "description": "dashboard session; mutations must repeat the csrf token in x-csrf-token"},
                "clientBasic": {"type": "http", "scheme": "basic", "description": "OAuth client id and secret"},
            },
            "schemas": schemas.into_components(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_json_body_references_a_real_component() {
        let doc = document();
        let components = doc["components"]["schemas"].as_object().unwrap();
        for op in OPERATIONS {
            let operation = &doc["paths"][op.path][op.method];
            let mut bodies = vec![&operation["responses"][op.ok.to_string()]];
            if op.body.is_some() {
                bodies.push(&operation["requestBody"]);
            }
            for body in bodies {
                let Some(content) = body.get("content").and_then(Value::as_object) else {
                    assert_eq!(op.ok, 204, "{} {} has no body schema", op.method, op.path);
                    continue;
                };
                for (media, entry) in content {
                    // JSON bodies only: event streams and the edge snapshot's binary pages have no component.
                    if !(media == "application/json" || media.ends_with("+json")) {
                        continue;
                    }
                    let schema = &entry["schema"];
                    let mut found = Vec::new();
                    refs(schema, &mut found);
                    assert!(
                        !found.is_empty(),
                        "{} {} {media}: {schema} names no component",
                        op.method,
                        op.path
                    );
                }
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}"));
            assert!(components.contains_key(name), "dangling $ref {r}");
        }
        let client = &components["NewClientRequest"]["properties"];
        for field in [
            "allowed_scopes",
            "allowed_roles",
            "audiences",
            "max_lifetime_seconds",
        ] {
            assert!(
                client[field]["description"]
                    .as_str()
                    .is_some_and(|d| d.len() > 40),
                "NewClientRequest.{field} is not described"
            );
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<String> = OPERATIONS.iter().map(operation_id).collect();
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "duplicate operationId");
    }
}
