//! Foreign issuers the admin API trusts: identity providers whose tokens it may revoke (by `jti`,
//! subject or client of that issuer, or by verifying a presented token against the issuer's keys).

use serde::{Deserialize, Serialize};

/// `POST /api/v1/issuers`: an issuer and exactly one source of its keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NewIssuerRequest {
    /// The issuer exactly as its tokens carry it in `iss` (an absolute URL, or any printable string).
    #[serde(default)]
    pub issuer: String,
    /// Where the issuer publishes its JWKS (http or https); fetched when a token is presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The issuer's JWKS document itself (`{"keys": [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// The longest lifetime of the issuer's access tokens, in seconds (default 86400, at most a year): a
    /// revocation of one of its subjects or clients stays in the feed this long, covering every token
    /// issued before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_seconds: Option<i64>,
}

/// A trusted issuer, as `GET /api/v1/issuers` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TrustedIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Where its JWKS is fetched from, when registered by URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Its JWKS document, when registered inline (public keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// How long its subject and client revocations stay in the feed, in seconds.
    pub max_token_lifetime_seconds: i64,
    /// When it was registered (Unix seconds).
    pub created_at: i64,
    /// Who registered it.
    pub created_by: String,
}
