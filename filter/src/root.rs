//! `EdgeWardenRoot`: the root context, one per VM. It parses the plugin configuration into the engine (refusing
//! a bad one with the field named, so Envoy rejects it), defines the metrics, creates the per-request contexts,
//! and runs the timers: remote JWKS once a second (key sets other workers published, periodic refreshes and
//! retries), and with a control plane every 100 ms the revocation lease, poll or catch-up, and usage flushes.
//! Callout answers are routed by token to the feed poller, the usage reporter or the JWKS fetcher.

use std::rc::Rc;
use std::time::Duration;

use edgewarden_core::engine::Engine;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MetricType};

use crate::flow;
use crate::host::{flush_metrics, host_log, host_now_ms, http_call_response, Host, ProxyHost};
use crate::http::EdgeWarden;
use crate::jwks_fetch::{self, Trigger};
use crate::metrics::Metrics;
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

/// A number that tells this VM apart from the other VMs of the same Envoy (the poller lease): the host clock in
/// nanoseconds when it was configured, mixed with the root context id. VMs are configured one after another, so
/// two never read the same nanosecond; std's random source is avoided because a host without `random_get` would
/// make it panic.
fn vm_identity(context_id: u32) -> u64 {
    let nanos = hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    // SplitMix64's finaliser: spreads the bits so nearby clocks give unrelated ids.
    let mut z = nanos ^ (u64::from(context_id) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
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
                revocation_sync::on_poll_response(
                    &mut host,
                    control,
                    token_id,
                    &resp,
                    host_now_ms(),
                );
                return;
            }
            if control.usage.borrow().owns(token_id) {
                let resp = http_call_response(num_headers, body_size, usage::MAX_ANSWER_BYTES);
                usage::on_report_response(
                    &mut host,
                    &control.usage,
                    token_id,
                    &resp,
                    host_now_ms(),
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

impl RootContext for EdgeWardenRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let engine = match Engine::from_json(&bytes) {
            Ok(engine) => engine,
            Err(e) => {
                host_log(LogLevel::Error, &format!("edgewarden: {e}"));
                return false;
            }
        };
        for (i, keys) in (0..).map_while(|i| engine.inline_keys(i)).enumerate() {
            if !keys.skipped().is_empty() {
                host_log(
                    LogLevel::Info,
                    &format!(
                        "edgewarden: issuers[{i}].jwks: left out, not signature keys: {}",
                        keys.skipped().join("; ")
                    ),
                );
            }
        }
        let metrics = Metrics::define(
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

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EdgeWarden::new(context_id, self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
