//! Tokens: issuance, records and one token's timeline.

use serde::{Deserialize, Serialize};

use crate::{Failure, StoredEvent};

/// `POST /api/v1/tokens`: what to issue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// The `sub` claim.
    pub subject: String,
    /// A registered client.
    pub client_id: String,
    /// Scopes (each allowed for the client).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles (each allowed for the client).
    #[serde(default)]
    pub roles: Vec<String>,
    /// One audience or several; the client's first audience when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<Audience>,
    /// Lifetime; the client's maximum when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Also issue a refresh token.
    #[serde(default)]
    pub refresh: bool,
}

/// One audience or a list of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

/// An issued access token (and refresh token): the only time the token itself is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Issued {
    /// The signed JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The opaque refresh token, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The access token's id.
    pub jti: String,
}

/// A token record (never the token itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenRecord {
    /// Token id.
    pub jti: String,
    /// `sub`.
    pub subject: String,
    /// `client_id`.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Granted roles.
    pub roles: Vec<String>,
    /// Audiences.
    pub audience: Vec<String>,
    /// Signing key id.
    pub kid: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// `active`, `expired` or `revoked`.
    pub status: String,
    /// When revoked.
    pub revoked_at: Option<i64>,
    /// Why revoked.
    pub revoke_reason: Option<String>,
    /// Refresh family, if issued with one.
    pub family_id: Option<String>,
    /// Who issued it.
    pub issued_by: String,
}

/// `GET /api/v1/tokens/{jti}/timeline`: everything known of one token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Timeline {
    /// The token id asked about.
    pub jti: String,
    /// The token's record summary; `None` for a jti only edges have reported (not issued here).
    pub token: Option<TimelineToken>,
    /// Its events, oldest first.
    pub events: Vec<StoredEvent>,
    /// Its usage per bucket, edge, route and reason.
    pub usage: Vec<TokenUsage>,
    /// Failure samples the edges reported for it.
    pub failures: Vec<Failure>,
}

/// The summary part of a [`Timeline`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TimelineToken {
    /// `sub`.
    pub subject: String,
    /// `client_id`.
    pub client_id: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// When revoked.
    pub revoked_at: Option<i64>,
    /// First use an edge reported.
    pub first_used_at: Option<i64>,
    /// Last use an edge reported.
    pub last_used_at: Option<i64>,
    /// Uses the edges reported.
    pub use_count: i64,
}

/// One row of a token's usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenUsage {
    /// Bucket start (Unix seconds).
    pub t: i64,
    /// Edge name.
    pub edge: String,
    /// Route (the rule's name or prefix).
    pub route: String,
    /// Decision reason (`ok` when allowed).
    pub reason: String,
    /// Requests.
    pub count: i64,
}
