//! Revocations as the API records and lists them.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/revocations`: exactly one of `jti`, `subject`, `client_id` or `token`, with a reason.
/// `issuer` names whose identifiers `jti`, `subject` and `client_id` are (default: the admin API's own);
/// a foreign issuer must be registered with `POST /api/v1/issuers`. A `token` is verified against the
/// admin API's own keys and every trusted issuer's, and its `iss`, `jti` and `exp` are recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// A token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Every token of this subject issued up to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Every token of this client issued up to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The issuer the `jti`, `subject` or `client_id` belongs to; absent means the admin API's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When the revoked foreign token expires (Unix seconds): required with a foreign `jti`, optional
    /// with a foreign subject or client (it bounds how long the entry stays in the feed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// A whole access token to revoke (own or of a trusted issuer); verified, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Why (required, kept in the audit log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A stored revocation, as answered by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Revocation {
    /// `jti`, `subject` or `client`.
    pub kind: String,
    /// The revoked jti, subject or client id.
    pub value: String,
    /// Why.
    pub reason: String,
    /// The issuer it applies to; absent for revocations recorded before revocations named their issuer,
    /// which apply to every issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Who.
    pub actor: String,
    /// When (Unix seconds).
    pub revoked_at: i64,
    /// When every token it covers has expired.
    pub expires_at: i64,
    /// Feed cursor of the change.
    pub cursor: i64,
}
