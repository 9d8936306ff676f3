//! `EdgeWardenRoot`: the root context, one per VM. It parses the plugin configuration into the engine (refusing
//! a bad one with the field named, so Envoy rejects it), defines the metrics, creates the per-request contexts,
//! and runs the timers: remote JWKS once a second (key sets other workers published, periodic refreshes and
//! retries), and with a control plane every 100 ms the revocation lease, poll or catch-up, and usage flushes.
//! Callout answers are routed by token to the feed poller, the usage reporter or the JWKS fetcher; after the
//! poller publishes a change it wakes the other VMs' queues, and `on_queue_ready` catches a follower up at once.

use std::rc::Rc;
use std::time::Duration;

use edgewarden_core::config::ConfigError;
use edgewarden_core::engine::Engine;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::flow;
use crate::host::{flush_metrics, host_log, host_now_ms, http_call_response, Host, ProxyHost};
use crate::http::EdgeWarden;
use crate::jwks_fetch::{self, Trigger};
use crate::metrics::Metrics;
use crate::revocation_sync::report;
use crate::revocation_sync::wake::{self, ProxyQueues};
use crate::state::VmState;
use crate::{revocation_sync, usage};

/// The tick with a control plane: how soon a worker applies a revocation the poller published.
pub const CONTROL_TICK: Duration = Duration::from_millis(100);
/// The tick without one: how far Envoy's counters may lag behind the filter's (they are summed per VM).
pub const STATS_TICK: Duration = Duration::from_millis(250);

/// The per-VM root context.
pub struct EdgeWardenRoot {
    context_id: u32,
    vm: Option<Rc<VmState>>,
    next_jwks_ms: u64,
}

impl EdgeWardenRoot {
    /// A root context not yet configured.
    pub fn new(context_id: u32) -> Self {
        EdgeWardenRoot {
            context_id,
            vm: None,
            next_jwks_ms: 0,
        }
    }

    /// One timer step: JWKS when a second has passed, then the control plane.
    fn tick(&mut self) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        let now_ms = host_now_ms();
        if now_ms >= self.next_jwks_ms {
            self.next_jwks_ms = now_ms.saturating_add(1000);
            self.drive_jwks();
        }
        if let Some(control) = &vm.control {
            let mut host = ProxyHost::new(&vm.metrics);
            revocation_sync::on_tick(&mut host, control, now_ms);
            // A VM that just took the lease over republished: wake the others for that too.
            wake::keep_registered(&mut host, &mut ProxyQueues, control, now_ms);
            wake::wake_followers(&mut host, &mut ProxyQueues, control, now_ms);
            usage::on_tick(&mut host, &control.usage, now_ms);
        }
        flush_metrics(&vm.metrics);
    }

    /// Syncs shared key sets and starts every fetch that is due.
    fn drive_jwks(&self) {
        let Some(vm) = &self.vm else {
            return;
        };
        let mut host = ProxyHost::new(&vm.metrics);
        let now = host.now();
        let issuers = vm.jwks.borrow().issuers();
        for issuer in issuers {
            jwks_fetch::sync_from_shared(&mut host, vm, issuer, now);
        }
        let due = vm.jwks.borrow().due(now);
        for issuer in due {
            if let Err(e) = jwks_fetch::start_fetch(
                &mut host,
                vm,
                issuer,
                self.context_id,
                Trigger::Schedule,
                now,
            ) {
                host.log(LogLevel::Warn, &e);
            }
        }
    }
}

/// A number that tells this VM apart from the other VMs of the same Envoy (the poller lease, the wake queues, the
/// instance the admin API sees): 64 random bits from the host (WASI `random_get`), mixed with a sequence number no
/// other VM of this plugin took (a counter in shared data, bumped by compare-and-swap), the host clock in
/// nanoseconds and the root context id. The clock alone is not enough: Envoy configures its workers' VMs on their
/// own threads at the same moment, and a host clock may be coarser than a nanosecond; two VMs with one id would
/// share a wake queue and a lease, and both would poll. The `getrandom` crate is used rather than std's random
/// source, which panics on a host without `random_get`; here a failure only leaves the other ingredients.
fn vm_identity(context_id: u32) -> u64 {
    let nanos = hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let mut random = [0u8; 8];
    if getrandom::getrandom(&mut random).is_err() {
        random = [0; 8];
    }
    let ingredients = [
        nanos ^ (u64::from(context_id) << 32),
        vm_sequence(),
        u64::from_le_bytes(random),
    ];
    let mut z = 0x9e37_79b9_7f4a_7c15_u64;
    for ingredient in ingredients {
        // SplitMix64's finaliser after each: spreads the bits so nearby clocks give unrelated ids.
        z ^= ingredient;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
    }
    z.max(1)
}

/// Shared-data key of the VM counter [`vm_sequence`] bumps.
const VM_SEQUENCE_KEY: &str = "edgewarden.vm_sequence";

/// Takes the next number of a counter every VM of this plugin shares, by compare-and-swap (a few tries; 0 if the
/// host keeps refusing). Envoy's compare-and-swap does not guard a key that does not exist yet, so the first VM
/// creates it unconditionally; two VMs racing to create it may both take 1, which the random bits in
/// [`vm_identity`] still separate.
fn vm_sequence() -> u64 {
    for _ in 0..32 {
        match hostcalls::get_shared_data(VM_SEQUENCE_KEY) {
            Ok((Some(bytes), Some(cas))) => {
                let next = bytes
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes)
                    .wrapping_add(1);
                if hostcalls::set_shared_data(VM_SEQUENCE_KEY, Some(&next.to_le_bytes()), Some(cas))
                    .is_ok()
                {
                    return next;
                }
            }
            Ok(_) => {
                let _ =
                    hostcalls::set_shared_data(VM_SEQUENCE_KEY, Some(&0u64.to_le_bytes()), None);
            }
            Err(_) => return 0,
        }
    }
    0
}

/// The log line of a configuration the filter refuses (filter/README.md quotes these lines).
pub fn config_error_line(e: &ConfigError) -> String {
    format!("edgewarden: {e}")
}

impl Context for EdgeWardenRoot {
    fn on_done(&mut self) -> bool {
        if let Some(vm) = &self.vm {
            if let Some(control) = &vm.control {
                let mut host = ProxyHost::new(&vm.metrics);
                revocation_sync::release(&mut host, control);
            }
            flush_metrics(&vm.metrics);
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        let mut host = ProxyHost::new(&vm.metrics);
        if let Some(control) = &vm.control {
            // Each callout is read with its own size cap, so look at whose it is before reading the body.
            if control.sync.borrow().owns(token_id) {
                let resp =
                    http_call_response(num_headers, body_size, revocation_sync::MAX_FEED_BYTES);
                let hint = config_hint(num_headers);
                let now_ms = host_now_ms();
                revocation_sync::on_poll_response(&mut host, control, token_id, &resp, now_ms);
                wake::wake_followers(&mut host, &mut ProxyQueues, control, now_ms);
                report::on_poll_hint(&mut host, control, hint.as_deref(), now_ms);
                return;
            }
            if control.sync.borrow().owns_upload(token_id) {
                let resp =
                    http_call_response(num_headers, body_size, report::MAX_UPLOAD_ANSWER_BYTES);
                report::on_upload_response(&mut host, control, token_id, &resp);
                return;
            }
            if control.usage.borrow().owns(token_id) {
                let resp = http_call_response(num_headers, body_size, usage::MAX_ANSWER_BYTES);
                let hint = config_hint(num_headers);
                let now_ms = host_now_ms();
                usage::on_report_answer(
                    &mut host,
                    control,
                    token_id,
                    &resp,
                    hint.as_deref(),
                    now_ms,
                );
                return;
            }
        }
        if let Some((_, waiters)) =
            jwks_fetch::on_call_response(&mut host, &vm, token_id, num_headers, body_size)
        {
            flow::resolve_waiters(&mut host, &vm, &waiters, self.context_id);
        }
    }
}

/// The admin API's `x-edgewarden-config` hint on a callout answer (feed poll or usage report), if any.
fn config_hint(num_headers: usize) -> Option<Vec<u8>> {
    // A failed call has no header map to read (asking would make the SDK panic).
    (num_headers > 0)
        .then(|| {
            hostcalls::get_map_value_bytes(
                MapType::HttpCallResponseHeaders,
                report::CONFIG_HINT_HEADER,
            )
            .ok()
            .flatten()
        })
        .flatten()
}

impl RootContext for EdgeWardenRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let engine = match Engine::from_json(&bytes) {
            Ok(engine) => engine,
            Err(e) => {
                host_log(LogLevel::Error, &config_error_line(&e));
                return false;
            }
        };
        for (i, keys) in (0..).map_while(|i| engine.inline_keys(i)).enumerate() {
            if !keys.skipped().is_empty() {
                host_log(
                    LogLevel::Info,
                    &format!(
                        "edgewarden: issuers[{i}].jwks: left out: {}",
                        keys.skipped().join("; ")
                    ),
                );
            }
        }
        let metrics = Metrics::define(
            engine.config().stat_prefix.as_deref(),
            |name| hostcalls::define_metric(MetricType::Counter, name).ok(),
            |name| hostcalls::define_metric(MetricType::Gauge, name).ok(),
        );
        let now_ms = host_now_ms();
        let vm = Rc::new(VmState::with_identity(
            engine,
            metrics,
            vm_identity(self.context_id),
            now_ms,
        ));
        let remote = vm.jwks.borrow().issuers().len();
        let period = if vm.control.is_some() {
            CONTROL_TICK
        } else {
            STATS_TICK
        };
        if let Some(control) = &vm.control {
            // What this edge tells the admin API about itself on its polls and usage reports: computed once per configuration.
            let node = hostcalls::get_property(vec!["node", "id"]).ok().flatten();
            let feed_path = vm.engine.borrow().config().revocation.feed_path.clone();
            let report = report::ConfigReport::new(&bytes, node.as_deref(), &feed_path);
            let hash = report.as_ref().map(|r| r.hash.clone());
            control.usage.borrow_mut().set_config_hash(hash);
            control.sync.borrow_mut().set_report(report);
        }
        self.vm = Some(vm);
        if let Err(s) = hostcalls::set_tick_period(period) {
            host_log(
                LogLevel::Error,
                &format!(
                    "edgewarden: timer not set, keys, revocations and stats will not be refreshed: {s:?}"
                ),
            );
        }
        // The first JWKS fetch goes out now. The control plane waits for the first tick: Envoy also
        // configures a base VM that never ticks and whose callouts it cancels, and that VM must not take
        // the poller lease.
        if remote > 0 {
            self.next_jwks_ms = host_now_ms().saturating_add(1000);
            self.drive_jwks();
        }
        true
    }

    fn on_tick(&mut self) {
        self.tick();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        if let Some(control) = &vm.control {
            let mut host = ProxyHost::new(&vm.metrics);
            wake::on_queue_ready(&mut host, &mut ProxyQueues, control, queue_id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EdgeWarden::new(context_id, self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    /// Configurations whose refusal filter/README.md shows, and the line the filter logs for each.
    fn documented_refusals() -> Vec<(String, &'static str)> {
        let issuer = r#"{"issuer": "i", "jwks": {"keys": []}}"#;
        vec![
            ("{}".to_string(), "edgewarden: invalid configuration: issuers: missing field"),
            (
                r#"{"issuers": [{"jwks": {"keys": []}}]}"#.to_string(),
                "edgewarden: invalid configuration: issuers[0].issuer: missing field",
            ),
            (
                format!(
                    r#"{{"issuers": [{issuer}], "rules": [{{"match": {{"prefix": "/a"}}}}, {{"match": {{"prefix": "/b", "path": "/b"}}}}]}}"#
                ),
                "edgewarden: invalid configuration: rules[1].match: set exactly one of prefix or path, not both",
            ),
            (
                "issuers:\n- issuer: i\n".to_string(),
                "edgewarden: invalid configuration: config: the plugin configuration is not valid JSON: expected value at line 1 column 1; it must be one JSON object such as {\"issuers\": [...]} (YAML is not read here)",
            ),
            (
                String::new(),
                "edgewarden: invalid configuration: config: the plugin configuration is empty: set it to a JSON object with at least `issuers` (in Envoy, the `value` of the filter's `configuration` StringValue; in Istio, `pluginConfig`)",
            ),
            (
                format!(r#"{{"issuers": [{issuer}], "revocation": {{"on_stale": "allow"}}}}"#),
                "edgewarden: invalid configuration: revocation: does nothing without a control_plane block (the revocation feed is polled from the admin API named there): add \"control_plane\": {\"cluster\", \"api_key\", \"edge_name\"} or remove `revocation`",
            ),
            (
                format!(
                    r#"{{"issuers": [{issuer}], "control_plane": {{"cluster": "c", "api_key": "k", "edge_name": "e"}}, "revocation": {{"long_poll_seconds": 600}}}}"#
                ),
                "edgewarden: invalid configuration: revocation.long_poll_seconds: 600 is more than 300",
            ),
            (
                format!(
                    r#"{{"issuers": [{issuer}], "forward_claims": [{{"claim": "sub", "header": "X Jwt Sub"}}]}}"#
                ),
                "edgewarden: invalid configuration: forward_claims[0].header: \"x jwt sub\" is not a header name (letters, digits and !#$%&'*+-.^_`|~ only; any case, read lower-cased)",
            ),
        ]
    }

    #[test]
    fn the_readme_shows_the_configuration_errors_the_filter_logs() {
        let readme = include_str!("../README.md");
        let documented: Vec<&str> = readme
            .lines()
            .filter(|l| l.starts_with("edgewarden: invalid configuration:"))
            .collect();
        let cases = documented_refusals();
        for (config, expected) in &cases {
            let e = match Engine::from_json(config.as_bytes()) {
                Ok(_) => panic!("{config:?} was accepted"),
                Err(e) => e,
            };
            assert_eq!(config_error_line(&e), *expected, "{config:?}");
            assert!(documented.contains(expected), "README.md lacks: {expected}");
        }
        for line in documented {
            assert!(
                cases.iter().any(|(_, expected)| *expected == line),
                "README.md shows a configuration error the filter does not log: {line}"
            );
        }
    }
}
