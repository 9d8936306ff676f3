//! The wire contract between the admin API and the dashboard: every JSON body the dashboard reads or
//! sends is declared here once, and both sides depend on this crate, so a renamed field fails to
//! compile instead of failing in a browser.
//! Serde types only: no axum, no sqlx, nothing that cannot build for `wasm32-unknown-unknown`.

mod admin;
mod common;
mod issuers;
mod observe;
mod revocations;
mod tokens;

pub use admin::{
    ApiKeySummary, Client, ClientWithSecret, KeyInfo, NewApiKey, NewApiKeyRequest,
    NewClientRequest, NewWebhookRequest, Webhook,
};
pub use common::{ErrorBody, ErrorDetail, LoginRequest, Page, PasswordChange, Role, SessionInfo};
pub use issuers::{NewIssuerRequest, TrustedIssuer};
pub use observe::{
    Anomaly, AnomalyUpdate, Edge, EdgeConfig, EdgeConfigAccepted, EdgeInstance, Failure, Point,
    Series, StoredEvent, EDGE_CONFIG_MAX_BYTES, EDGE_SILENT_AFTER_SECONDS,
    EDGE_STALE_AFTER_SECONDS, EVENT_KINDS,
};
pub use revocations::{Revocation, RevokeRequest};
pub use tokens::{
    Audience, IssueRequest, Issued, Timeline, TimelineToken, TokenRecord, TokenUsage,
};

use serde::{Deserialize, Serialize};

/// `GET /api/v1/overview?range=1h|24h|7d`: the figures the dashboard's overview shows at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Overview {
    /// Server time the figures were computed at (Unix seconds).
    pub now: i64,
    /// Length of the range the `*_in_range` figures cover, in seconds.
    pub range_seconds: i64,
    /// Token counts.
    pub tokens: TokenCounts,
    /// Decisions the edges reported in the range.
    pub decisions: DecisionTotals,
    /// Anomalies that are open now (state `open`), by severity.
    pub open_anomalies: SeverityCounts,
    /// Edges by sync state.
    pub edges: EdgeCounts,
}

/// Token figures of the overview.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenCounts {
    /// Tokens issued within the range.
    pub issued_in_range: i64,
    /// Tokens that are neither expired nor revoked now.
    pub active: i64,
    /// Tokens revoked within the range.
    pub revoked_in_range: i64,
    /// Tokens whose expiry fell within the range and that were never revoked.
    pub expired_in_range: i64,
}

/// Decision totals of the overview.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DecisionTotals {
    /// Requests the edges allowed.
    pub allowed: i64,
    /// Requests the edges refused.
    pub denied: i64,
    /// Refusals per reason code (`token_expired`, `revoked`, ...), largest first.
    pub denied_by_reason: Vec<ReasonCount>,
}

/// One reason and how often it occurred.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReasonCount {
    /// Reason code as the edge reports it.
    pub reason: String,
    /// Occurrences.
    pub count: i64,
}

/// Counts per anomaly severity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SeverityCounts {
    /// `high`.
    pub high: i64,
    /// `medium`.
    pub medium: i64,
    /// `low`.
    pub low: i64,
}

/// Edges by sync state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EdgeCounts {
    /// Every edge the admin API has heard from.
    pub total: i64,
    /// Polled within the stale bound (120 s, the admin API's `edges::STALE_AFTER_SECONDS`).
    pub in_sync: i64,
    /// Polled, but not within the stale bound (and within ten of them).
    pub stale: i64,
    /// Never polled, or silent for more than ten stale bounds (20 minutes).
    pub silent: i64,
}

/// `GET /api/v1/revocations/propagation?cursor=N`: which edges have applied the feed change at `cursor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Propagation {
    /// The feed cursor of the revocation.
    pub cursor: i64,
    /// When the revocation was recorded (Unix seconds, with milliseconds as the fraction).
    pub revoked_at: f64,
    /// Server time of this answer.
    pub now: f64,
    /// One row per known edge.
    pub edges: Vec<EdgePropagation>,
    /// True when every edge that is not stale has applied it.
    pub complete: bool,
}

/// One edge's progress towards a revocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EdgePropagation {
    /// Edge name.
    pub edge: String,
    /// True once the edge polled with a cursor at or past the revocation's.
    pub applied: bool,
    /// Seconds (millisecond precision) from the revocation to the first poll that showed it applied;
    /// absent when not applied, or applied before the admin API kept propagation history.
    pub applied_after_seconds: Option<f64>,
    /// The newest cursor the edge polled with.
    pub feed_cursor: Option<i64>,
    /// Seconds since the edge's last poll.
    pub staleness_seconds: Option<i64>,
    /// True when the edge has not polled for longer than the stale bound: it may never apply it.
    pub stale: bool,
}
