//! Per-VM state shared by the root context and every HTTP context of one Envoy worker VM.
//! A proxy-wasm VM is single-threaded, so `Rc<RefCell<..>>` is enough; the rule that keeps it sound is that
//! no borrow is ever held across a host call (host calls may re-enter the VM), which is why every use below
//! borrows, copies out what it needs and drops the borrow before talking to Envoy.

use std::cell::RefCell;
use std::time::Duration;

use edgewarden_core::cache::TokenCache;
use edgewarden_core::config::DecisionProperties;
use edgewarden_core::config::RuleConfig;
use edgewarden_core::config::TokenSource;
use edgewarden_core::engine::Engine;
use edgewarden_core::revocation::EdgeRevocationState;

use crate::jwks_fetch::{JwksState, RemoteSource};
use crate::metrics::Metrics;
use crate::revocation_sync::RevocationSync;
use crate::usage::UsageReporter;

/// Header the filter sets on requests it lets through only because `report_only` is on.
pub const REPORT_ONLY_HEADER: &str = "x-edgewarden-report-only";

/// Filter-side settings copied out of the configuration once, so the request path does not re-read the engine's config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the credential comes from.
    pub token_source: TokenSource,
    /// Lower-case names of every header the filter may set from claims; client copies are always removed.
    pub forward_headers: Vec<String>,
    /// Remove the credential before the request goes upstream.
    pub strip_token: bool,
    /// Never deny; mark the request and count instead.
    pub report_only: bool,
    /// Realm for `WWW-Authenticate`.
    pub realm: String,
    /// The route label usage reports carry for each rule (its `prefix` or `path`); [`DEFAULT_ROUTE`] for none.
    pub route_labels: Vec<String>,
    /// How each decision is published as request properties.
    pub decision_properties: DecisionProperties,
}

/// The route label of requests that match no rule (they need a valid token, the secure default).
pub const DEFAULT_ROUTE: &str = "*";

impl Settings {
    /// The usage route label of rule `rule`.
    pub fn route_label(&self, rule: Option<usize>) -> &str {
        rule.and_then(|i| self.route_labels.get(i))
            .map_or(DEFAULT_ROUTE, String::as_str)
    }
}

/// The control-plane half of a VM, present when the configuration has `control_plane`: the revocation state
/// every request consults, the feed poller (or follower of another VM's poller), and the usage reporter.
pub struct Control {
    /// Revocation entries with their sync time and the `on_stale` policy.
    pub revocation: RefCell<EdgeRevocationState>,
    /// Lease, polling and cross-VM publication of the revocation state.
    pub sync: RefCell<RevocationSync>,
    /// This VM's usage aggregation and its batches to the admin API.
    pub usage: RefCell<UsageReporter>,
}

fn route_label(rule: &RuleConfig) -> String {
    rule.r#match
        .prefix
        .clone()
        .or_else(|| rule.r#match.path.clone())
        .unwrap_or_else(|| DEFAULT_ROUTE.to_string())
}

/// Everything one VM knows: the engine with its key sets, the token cache, JWKS fetch bookkeeping and revocations.
pub struct VmState {
    /// The token engine (configuration, key sets, rules); mutated only to install fetched key sets.
    pub engine: RefCell<Engine>,
    /// Verified-token cache; cleared whenever a key set changes.
    pub cache: RefCell<TokenCache>,
    /// Remote JWKS scheduling, rate limits and requests paused on a fetch.
    pub jwks: RefCell<JwksState>,
    /// Revocation state and usage reporting, when a control plane is configured; without one nothing is revoked.
    pub control: Option<Control>,
    /// Settings derived from the configuration.
    pub settings: Settings,
    /// Host metric ids.
    pub metrics: Metrics,
}

impl VmState {
    /// Builds the VM state from a validated engine and defined metrics; `vm_id` tells this VM apart from the
    /// other VMs of the same Envoy (the revocation poller lease) and `now_ms` is the host clock at start.
    pub fn new(engine: Engine, metrics: Metrics) -> VmState {
        VmState::with_identity(engine, metrics, 1, 0)
    }

    /// [`VmState::new`] with an explicit VM identity and start time.
    pub fn with_identity(engine: Engine, metrics: Metrics, vm_id: u64, now_ms: u64) -> VmState {
        let config = engine.config();
        let mut forward_headers: Vec<String> = config
            .forward_claims
            .iter()
            .map(|f| f.header.to_ascii_lowercase())
            .collect();
        if let Some(h) = &config.forward_payload_header {
            forward_headers.push(h.to_ascii_lowercase());
        }
        let settings = Settings {
            token_source: config.token_source.clone(),
            forward_headers,
            strip_token: config.strip_token,
            report_only: config.report_only,
            realm: config.realm.clone(),
            route_labels: config.rules.iter().map(route_label).collect(),
            decision_properties: config.decision_properties,
        };
        let control = config.control_plane.as_ref().map(|cp| Control {
            revocation: RefCell::new(EdgeRevocationState::from_config(config)),
            sync: RefCell::new(
                RevocationSync::new(cp, &config.revocation, vm_id, now_ms).for_instance(
                    cp,
                    &config.revocation,
                    config.stat_prefix.as_deref(),
                ),
            ),
            usage: RefCell::new(UsageReporter::new(cp, &config.usage, now_ms)),
        });
        let sources = config
            .issuers
            .iter()
            .enumerate()
            .filter_map(|(i, iss)| {
                iss.remote_jwks.as_ref().map(|r| RemoteSource {
                    issuer_index: i,
                    issuer: iss.issuer.clone(),
                    cluster: r.cluster.clone(),
                    authority: r.authority().to_string(),
                    path: r.path.clone(),
                    refresh_interval_seconds: r.refresh_interval_seconds,
                    timeout: Duration::from_millis(r.timeout_ms),
                    min_refetch_interval_seconds: r.min_refetch_interval_seconds,
                })
            })
            .collect();
        let cache = TokenCache::new(config.cache.max_entries);
        VmState {
            engine: RefCell::new(engine),
            cache: RefCell::new(cache),
            jwks: RefCell::new(JwksState::new(sources)),
            control,
            settings,
            metrics,
        }
    }
}
