//! Revocations as the API records and lists them.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/revocations`: exactly one of `jti`, `subject` or `client_id`, with a reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Why (required, kept in the audit log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A stored revocation, as answered by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `jti`, `subject` or `client`.
    pub kind: String,
    /// The revoked jti, subject or client id.
    pub value: String,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// When (Unix seconds).
    pub revoked_at: i64,
    /// When every token it covers has expired.
    pub expires_at: i64,
    /// Feed cursor of the change.
    pub cursor: i64,
}
