//! What the edges report and what the admin API makes of it: usage series, failure samples,
//! edges, anomalies and the event log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /api/v1/usage/timeseries`: decisions over time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Series {
    /// `minute` or `hour`.
    pub bucket: String,
    /// Start of the range (Unix seconds).
    pub since: i64,
    /// End of the range (Unix seconds, exclusive).
    pub until: i64,
    /// Buckets that have decisions, oldest first (empty buckets are left out).
    pub points: Vec<Point>,
}

/// One bucket of a usage time series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Point {
    /// Bucket start (Unix seconds).
    pub t: i64,
    /// All decisions in the bucket.
    pub total: i64,
    /// Decisions per reason (`ok` for allowed).
    pub by_reason: BTreeMap<String, i64>,
}

/// A failure sample an edge reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Failure {
    /// Id (`uf_...`).
    pub id: String,
    /// Reporting edge.
    pub edge: String,
    /// When it happened (edge clock).
    pub at: i64,
    /// Token id.
    pub jti: Option<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// Request path.
    pub route: Option<String>,
    /// Decision reason.
    pub reason: String,
    /// Client address.
    pub client_address: String,
    /// The token's `iat`.
    pub iat: Option<i64>,
    /// The token's `nbf`.
    pub nbf: Option<i64>,
}

/// One edge as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Edge {
    /// Name from `x-edgewarden-edge` / the usage batch.
    pub name: String,
    /// Address of the last poll or report.
    pub address: Option<String>,
    /// Unix seconds of the last feed poll.
    pub last_poll: Option<i64>,
    /// Cursor the edge sent on its last poll (what it has applied).
    pub feed_cursor: Option<i64>,
    /// How many feed changes it is behind the current cursor.
    pub cursor_lag: Option<i64>,
    /// Seconds since the last poll.
    pub staleness_seconds: Option<i64>,
    /// Unix seconds of the last usage report.
    pub last_report: Option<i64>,
    /// Usage reports received.
    pub reports: i64,
    /// Decisions reported in total.
    pub usage_events: i64,
    /// First time seen.
    pub first_seen: i64,
    /// Every Envoy that polled under this name, each with its own poll, cursor, staleness and configuration
    /// (an edge that sends no instance id shows up as one instance with an empty `instance`).
    #[serde(default)]
    pub instances: Vec<EdgeInstance>,
    /// Whether the instances reported different configurations (more than one distinct `config_hash`).
    #[serde(default)]
    pub configs_differ: bool,
}

/// One Envoy process polling under an edge name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EdgeInstance {
    /// The id the Envoy process made for itself at start (`x-edgewarden-instance`); empty for an edge that
    /// sends none (a filter from before instances were told apart).
    pub instance: String,
    /// Envoy's node id (`--service-node`, `x-edgewarden-node`), when it sent one.
    pub node: Option<String>,
    /// Address of its last poll.
    pub address: Option<String>,
    /// Unix seconds of its last feed poll.
    pub last_poll: Option<i64>,
    /// Cursor it sent on its last poll (what it has applied).
    pub feed_cursor: Option<i64>,
    /// How many feed changes it is behind the current cursor.
    pub cursor_lag: Option<i64>,
    /// Seconds since its last poll.
    pub staleness_seconds: Option<i64>,
    /// SHA-256 (hex) of the configuration it runs, secrets left out (`x-edgewarden-config-hash`).
    pub config_hash: Option<String>,
    /// Whether the admin API holds that configuration (`GET /api/v1/edges/configs/{hash}`).
    pub config_known: bool,
    /// Unix seconds it was first seen.
    pub first_seen: i64,
}

/// `GET /api/v1/edges/configs/{hash}`: a configuration an edge reported, secrets left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EdgeConfig {
    /// SHA-256 (hex) of the document as the edge sent it.
    pub hash: String,
    /// The plugin configuration, with `control_plane.api_key` and inline key secrets replaced by `<redacted>`.
    pub document: Value,
    /// Unix seconds it was first reported.
    pub first_seen: i64,
    /// The edge name that reported it first.
    pub edge: String,
    /// The instance that reported it first (empty when it sent none).
    pub instance: String,
}

/// `POST /api/v1/edges/config`: the configuration was stored (201) or already known (200).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EdgeConfigAccepted {
    /// SHA-256 (hex) of the document, the hash the edge reports on its polls.
    pub hash: String,
    /// True if this upload stored it, false if the admin API had it already.
    pub stored: bool,
}

/// Largest configuration document an edge may report (`POST /api/v1/edges/config`), in bytes.
pub const EDGE_CONFIG_MAX_BYTES: usize = 256 * 1024;

/// An anomaly as the API answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Anomaly {
    /// Id (`anm_...`).
    pub id: String,
    /// What was detected (`failure_burst_address`, `revoked_token_reuse`, ...).
    pub kind: String,
    /// `low`, `medium` or `high`.
    pub severity: String,
    /// `token`, `client`, `subject`, `address` or `edge`.
    pub subject_kind: String,
    /// The token id, client id, subject, address or edge name.
    pub subject: String,
    /// Latest evidence (a JSON object whose keys depend on the kind).
    pub evidence: Value,
    /// `open`, `acknowledged` or `resolved`.
    pub state: String,
    /// How many times it was raised while open.
    pub occurrences: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// Unix seconds of the last finding.
    pub last_seen: Option<i64>,
}

/// `PATCH /api/v1/anomalies/{id}`: triage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AnomalyUpdate {
    /// `open`, `acknowledged` or `resolved`.
    pub state: String,
}

/// A recorded event, as the API answers it and webhooks deliver it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StoredEvent {
    /// Time-ordered id (`evt_...`).
    pub id: String,
    /// Unix seconds.
    pub at: i64,
    /// Kind (`token.issued`, `revocation.created`, ...).
    pub kind: String,
    /// Who did it.
    pub actor: String,
    /// Token subject concerned, if any.
    pub subject: Option<String>,
    /// Client concerned, if any.
    pub client_id: Option<String>,
    /// Token concerned, if any.
    pub jti: Option<String>,
    /// Kind-specific details.
    pub details: Value,
}

/// Every event kind the event log records; the live stream names each server-sent event after its kind.
pub const EVENT_KINDS: &[&str] = &[
    "token.issued",
    "token.refreshed",
    "token.revoked",
    "token.first_use",
    "token.last_use",
    "revocation.created",
    "refresh_family.revoked",
    "client.created",
    "client.updated",
    "client.deleted",
    "api_key.created",
    "api_key.deleted",
    "user.created",
    "user.password_changed",
    "auth.login",
    "auth.login_failed",
    "auth.locked",
    "auth.rate_limited",
    "auth.bad_api_key",
    "signing_key.rotated",
    "anomaly.opened",
    "anomaly.updated",
    "webhook.created",
    "webhook.updated",
    "webhook.deleted",
    "issuer.trusted",
    "issuer.removed",
];

/// An edge whose last feed poll is older than this is `stale`: it may be enforcing an old revocation state.
pub const EDGE_STALE_AFTER_SECONDS: i64 = 120;
/// An edge silent for longer than this (or that never polled) is `silent`: probably gone or cut off.
pub const EDGE_SILENT_AFTER_SECONDS: i64 = 10 * EDGE_STALE_AFTER_SECONDS;
