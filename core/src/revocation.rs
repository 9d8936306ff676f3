//! The seam through which the engine asks whether a verified token has been revoked.
//! The engine consults it on every request, cache hit or miss, after signature and time checks,
//! because revocation can change while a token sits in the cache. Issue 4 supplies the real view
//! (fed by the control plane); [`NoRevocations`] is the view when no control plane is configured.

use crate::token::VerifiedToken;

/// Read-only view of the current revocation state.
pub trait RevocationView {
    /// `Some(description)` when the token is revoked ("token revoked" family): by `jti`,
    /// or its subject or client revoked at or after its `iat`.
    fn check(&self, token: &VerifiedToken) -> Option<String>;

    /// `Some(description)` when the revocation state is too old to trust and token-bearing requests
    /// must be refused (`on_stale: deny`); the default says the state is fresh.
    fn stale(&self, _now: u64) -> Option<String> {
        None
    }
}

/// A revocation view that revokes nothing and is never stale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoRevocations;

impl RevocationView for NoRevocations {
    fn check(&self, _token: &VerifiedToken) -> Option<String> {
        None
    }
}
