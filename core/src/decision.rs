//! The outcome of evaluating one request: a verdict, a machine-readable reason and a human description.
//! The filter turns a [`Decision`] into an HTTP answer (see `challenge`), the admin API and the
//! dashboard show it as is, so every refusal carries both a stable snake_case code and figures.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;

use crate::cache::CacheOutcome;
use crate::token::{Rejection, VerifiedToken};

/// Why a request was allowed or refused; the snake_case spelling from [`Reason::as_str`] is a stable interface
/// (metrics labels, JSON bodies, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A valid token satisfied the matched rule.
    Allowed,
    /// No token was presented and the matched rule allows anonymous access.
    Anonymous,
    /// No token was presented where one is required.
    MissingToken,
    /// The credential is not a well-formed JWS compact token (or was presented in an unusable way).
    Malformed,
    /// The token is longer than `max_token_bytes`.
    TokenTooLarge,
    /// The token header uses a feature the engine refuses (crit, b64, nested JWT, JWE, embedded keys, ...).
    UnsupportedHeader,
    /// The `alg` is not allowed (`none`, unknown, or not the algorithm of the selected key).
    DisallowedAlgorithm,
    /// The signature does not verify with the selected key.
    BadSignature,
    /// No key of the issuer matches the token's `kid`.
    UnknownKid,
    /// `exp + leeway <= now`.
    Expired,
    /// `nbf - leeway > now`.
    NotYetValid,
    /// `iat - leeway > now`.
    IssuedInFuture,
    /// The token has no `exp` although `require_exp` is on.
    MissingExpiry,
    /// The token's `iss` is missing or not a configured issuer.
    WrongIssuer,
    /// The token's `aud` does not intersect the issuer's configured audiences.
    WrongAudience,
    /// The header `typ` is not in `allowed_typ`.
    WrongType,
    /// A claim listed in `required_claims` is missing.
    MissingClaim,
    /// The token lacks a scope the matched rule requires.
    InsufficientScope,
    /// The token lacks a role the matched rule requires.
    InsufficientRole,
    /// The revocation view reports the token as revoked.
    Revoked,
    /// The revocation state is too old to be trusted and the configuration says to deny.
    StaleRevocationState,
}

impl Reason {
    /// Every reason, in declaration order (for metrics registration and exhaustive tests).
    pub const ALL: &'static [Reason] = &[
        Reason::Allowed,
        Reason::Anonymous,
        Reason::MissingToken,
        Reason::Malformed,
        Reason::TokenTooLarge,
        Reason::UnsupportedHeader,
        Reason::DisallowedAlgorithm,
        Reason::BadSignature,
        Reason::UnknownKid,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::MissingExpiry,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::WrongType,
        Reason::MissingClaim,
        Reason::InsufficientScope,
        Reason::InsufficientRole,
        Reason::Revoked,
        Reason::StaleRevocationState,
    ];

    /// The stable snake_case code of this reason, e.g. `"missing_token"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Anonymous => "anonymous",
            Reason::MissingToken => "missing_token",
            Reason::Malformed => "malformed",
            Reason::TokenTooLarge => "token_too_large",
            Reason::UnsupportedHeader => "unsupported_header",
            Reason::DisallowedAlgorithm => "disallowed_algorithm",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKid => "unknown_kid",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::MissingExpiry => "missing_expiry",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongType => "wrong_type",
            Reason::MissingClaim => "missing_claim",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::InsufficientRole => "insufficient_role",
            Reason::Revoked => "revoked",
            Reason::StaleRevocationState => "stale_revocation_state",
        }
    }

    /// The HTTP status this reason answers with: 200 when allowed, 403 for missing scope or role, else 401.
    pub fn status(&self) -> u16 {
        match self {
            Reason::Allowed | Reason::Anonymous => 200,
            Reason::InsufficientScope | Reason::InsufficientRole => 403,
            _ => 401,
        }
    }

    /// Whether this reason lets the request through.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Reason::Allowed | Reason::Anonymous)
    }

    /// A short fixed phrase for the `error_description` of a `WWW-Authenticate` challenge.
    /// It never contains token-derived text, so it is safe to send to any client.
    pub fn phrase(&self) -> &'static str {
        match self {
            Reason::Allowed => "token accepted",
            Reason::Anonymous => "anonymous access",
            Reason::MissingToken => "token missing",
            Reason::Malformed => "token malformed",
            Reason::TokenTooLarge => "token too large",
            Reason::UnsupportedHeader => "token header not supported",
            Reason::DisallowedAlgorithm => "token algorithm not allowed",
            Reason::BadSignature => "token signature invalid",
            Reason::UnknownKid => "token signing key unknown",
            Reason::Expired => "token expired",
            Reason::NotYetValid => "token not yet valid",
            Reason::IssuedInFuture => "token issued in the future",
            Reason::MissingExpiry => "token has no expiry",
            Reason::WrongIssuer => "token issuer not accepted",
            Reason::WrongAudience => "token audience not accepted",
            Reason::WrongType => "token type not accepted",
            Reason::MissingClaim => "token lacks a required claim",
            Reason::InsufficientScope => "token lacks a required scope",
            Reason::InsufficientRole => "token lacks a required role",
            Reason::Revoked => "token revoked",
            Reason::StaleRevocationState => "revocation state unavailable",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the request goes on to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let the request through.
    Allow,
    /// Answer it with `status` and a challenge.
    Deny,
}

/// The full outcome of [`crate::Engine::evaluate`] for one request.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// Machine-readable reason.
    pub reason: Reason,
    /// Human description with figures, e.g. `token expired 42s ago (leeway 60s)`; never contains the token.
    /// Borrowed for an accepted token: the allow path, cache hits included, allocates no text.
    pub description: Cow<'static, str>,
    /// 200, 401 or 403: what would be answered (report-only handling is the filter's business).
    pub status: u16,
    /// Space-delimited scopes for the `insufficient_scope` challenge.
    pub required_scope: Option<String>,
    /// The verified token, when one was presented and verified (also on 403 and on time failures after a cache hit).
    pub token: Option<Arc<VerifiedToken>>,
    /// Index of the matched rule, if any.
    pub rule: Option<usize>,
    /// Whether the token cache was hit, missed or not used.
    pub cache: CacheOutcome,
    /// `Some(issuer index)` when the token named an unknown `kid`: the filter refetches that issuer's JWKS
    /// (rate-limited) and evaluates again.
    pub refetch_jwks: Option<usize>,
}

impl Decision {
    /// Request headers to set on the way to the upstream (`forward_claims`, `forward_payload_header`): the verified
    /// token's, on allow only.
    pub fn headers_to_set(&self) -> &[(String, String)] {
        match (&self.verdict, &self.token) {
            (Verdict::Allow, Some(token)) => &token.forwarded,
            _ => &[],
        }
    }

    /// A deny decision built from a rejection, for the rule `rule`.
    pub fn from_rejection(
        rejection: Rejection,
        rule: Option<usize>,
        cache: CacheOutcome,
    ) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            status: rejection.reason.status(),
            reason: rejection.reason,
            description: rejection.description.into(),
            required_scope: None,
            token: None,
            rule,
            cache,
            refetch_jwks: rejection.refetch_jwks,
        }
    }

    /// Whether the request goes through.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_unique_snake_case_codes_and_statuses() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let code = reason.as_str();
            assert!(seen.insert(code), "duplicate {code}");
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(code)
            );
            let expected = match reason {
                Reason::Allowed | Reason::Anonymous => 200,
                Reason::InsufficientScope | Reason::InsufficientRole => 403,
                _ => 401,
            };
            assert_eq!(reason.status(), expected, "{code}");
        }
        assert_eq!(Reason::ALL.len(), 21);
    }
}
