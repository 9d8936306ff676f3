//! Administration: clients, API keys, signing keys and webhooks.

use serde::{Deserialize, Serialize};

use crate::Role;

/// A registered client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Client {
    /// Identifier, also the `client_id` claim.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// Scopes (the `scope` claim) its tokens may carry: every scope an issuance asks for must be listed
    /// here, and an empty list allows none. A `client_credentials` grant without `scope` gets all of them.
    pub allowed_scopes: Vec<String>,
    /// Roles (the `roles` claim) its tokens may carry; an empty list allows none.
    pub allowed_roles: Vec<String>,
    /// Audiences (`aud`) its tokens may name; the first is the default when an issuance names none.
    /// An empty list allows only the admin API's `--default-audience` (default `edgewarden`).
    pub audiences: Vec<String>,
    /// Longest access-token lifetime in seconds: a longer `ttl_seconds` is refused, and an issuance without
    /// one gets this or 3600, whichever is shorter (never more than the admin API's `--max-token-lifetime`).
    pub max_lifetime_seconds: i64,
    /// Whether it has a secret (and so may use `/oauth/*` client authentication).
    pub has_secret: bool,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

/// A client together with its newly generated secret (shown once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClientWithSecret {
    /// The client.
    #[serde(flatten)]
    pub client: Client,
    /// The secret (`ews_...`), shown only in this answer.
    pub client_secret: String,
}

/// An API key as listed (never the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ApiKeySummary {
    /// Public id.
    pub id: String,
    /// Name given.
    pub name: String,
    /// Role granted.
    pub role: String,
    /// Client it is bound to.
    pub client_id: Option<String>,
    /// Edge names an edge key may poll the feed and report usage as; empty for other roles and for
    /// edge keys created before keys were bound to edges (those may still act as any edge).
    #[serde(default)]
    pub edges: Vec<String>,
    /// Creation time.
    pub created_at: i64,
}

/// A freshly created API key: the secret is shown once and never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NewApiKey {
    /// Public id of the key.
    pub id: String,
    /// The key itself (`ewk_...`).
    pub key: String,
    /// Role granted.
    pub role: Role,
    /// Name given.
    pub name: String,
    /// Client it is bound to.
    pub client_id: Option<String>,
    /// Edge names the key may poll the feed and report usage as (edge keys).
    #[serde(default)]
    pub edges: Vec<String>,
}

/// A signing key as listed by `GET /api/v1/keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct KeyInfo {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// Algorithm.
    pub alg: String,
    /// `active` or `retired`.
    pub status: String,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Retirement time, if retired.
    pub retired_at: Option<i64>,
    /// Whether the key is published in the JWKS right now.
    pub published: bool,
}

/// A webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Webhook {
    /// Id (`whk_...`).
    pub id: String,
    /// Where events are POSTed.
    pub url: String,
    /// Event kinds delivered (`*` for all).
    pub kinds: Vec<String>,
    /// Free text.
    pub description: String,
    /// False while paused.
    pub active: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
    /// The signing secret: only in the answer to the creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// `POST /api/v1/clients`: register a client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NewClientRequest {
    /// Identifier, also the `client_id` claim.
    pub client_id: String,
    /// Display name (the id when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Scopes (the `scope` claim) its tokens may carry: every scope an issuance asks for must be listed
    /// here. Absent or empty allows none, so list the scopes before issuing scoped tokens.
    #[serde(default)]
    pub allowed_scopes: Vec<String>,
    /// Roles (the `roles` claim) its tokens may carry; absent or empty allows none.
    #[serde(default)]
    pub allowed_roles: Vec<String>,
    /// Audiences (`aud`) its tokens may name; the first is the default when an issuance names none.
    /// Absent or empty allows only the admin API's `--default-audience` (default `edgewarden`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Longest access-token lifetime in seconds, 1 up to the admin API's `--max-token-lifetime`
    /// (default 86400); 3600 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<i64>,
}

/// `POST /api/v1/api-keys`: create an API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyRequest {
    /// Role granted.
    pub role: Role,
    /// Name, to recognise it in lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Client it is bound to (required for `service` keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// For `edge` keys: the edge names (`x-edgewarden-edge`, usage `edge`) the key may poll the feed and
    /// report usage as; a poll or report under any other name is refused with 403. Only edge keys
    /// take it; an edge key created without it is unbound and may act as any edge (as keys created
    /// before this field existed do).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<String>,
}

/// `POST /api/v1/webhooks`: create a webhook (its signing secret is in the answer only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NewWebhookRequest {
    /// Where events are POSTed (https, or http to a loopback address).
    pub url: String,
    /// Event kinds delivered (`*` for all, or a `prefix.*`).
    pub kinds: Vec<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
}
