//! Per-VM state shared by the root context and every HTTP context of one Envoy worker VM.
//! A proxy-wasm VM is single-threaded, so `Rc<RefCell<..>>` is enough; the rule that keeps it sound is that
//! no borrow is ever held across a host call (host calls may re-enter the VM), which is why every use below
//! borrows, copies out what it needs and drops the borrow before talking to Envoy.

use std::cell::RefCell;
use std::time::Duration;

use edgewarden_core::cache::TokenCache;
use edgewarden_core::config::TokenSource;
use edgewarden_core::engine::Engine;
use edgewarden_core::revocation::{NoRevocations, RevocationView};

use crate::jwks_fetch::{JwksState, RemoteSource};
use crate::metrics::Metrics;

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
}

/// Everything one VM knows: the engine with its key sets, the token cache, JWKS fetch bookkeeping and revocations.
pub struct VmState {
    /// The token engine (configuration, key sets, rules); mutated only to install fetched key sets.
    pub engine: RefCell<Engine>,
    /// Verified-token cache; cleared whenever a key set changes.
    pub cache: RefCell<TokenCache>,
    /// Remote JWKS scheduling, rate limits and requests paused on a fetch.
    pub jwks: RefCell<JwksState>,
    /// Revocation view consulted on every request, cache hit or not; issue 4 swaps in the polled, shared state.
    pub revocations: RefCell<Box<dyn RevocationView>>,
    /// Settings derived from the configuration.
    pub settings: Settings,
    /// Host metric ids.
    pub metrics: Metrics,
}

impl VmState {
    /// Builds the VM state from a validated engine and defined metrics.
    pub fn new(engine: Engine, metrics: Metrics) -> VmState {
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
        };
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
            revocations: RefCell::new(Box::new(NoRevocations)),
            settings,
            metrics,
        }
    }
}
