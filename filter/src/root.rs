//! `EdgeWardenRoot`: the root context, one per VM. It parses the plugin configuration into the engine (refusing
//! a bad one with the field named, so Envoy rejects it), defines the metrics, creates the per-request contexts,
//! and drives remote JWKS: a first fetch at once, then a one-second tick that picks up key sets other workers
//! published and starts any periodic refresh or retry that is due.

use std::rc::Rc;
use std::time::Duration;

use edgewarden_core::engine::Engine;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MetricType};

use crate::flow;
use crate::host::{host_log, http_call_response, Host, ProxyHost};
use crate::http::EdgeWarden;
use crate::jwks_fetch::{self, Trigger, MAX_JWKS_BYTES};
use crate::metrics::Metrics;
use crate::state::VmState;

/// How often the root context looks at remote key sets; each issuer's own intervals decide what actually runs.
pub const TICK: Duration = Duration::from_secs(1);

/// The per-VM root context.
pub struct EdgeWardenRoot {
    context_id: u32,
    vm: Option<Rc<VmState>>,
}

impl EdgeWardenRoot {
    /// A root context not yet configured.
    pub fn new(context_id: u32) -> Self {
        EdgeWardenRoot {
            context_id,
            vm: None,
        }
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

impl Context for EdgeWardenRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = self.vm.clone() else {
            return;
        };
        let mut host = ProxyHost::new(&vm.metrics);
        let resp = http_call_response(body_size, MAX_JWKS_BYTES);
        let now = host.now();
        // `None`: not a JWKS fetch. Other root-owned callouts (the revocation feed and usage reports of
        // issue 4) are matched by their own token here, and their state lives beside `jwks` in `VmState`.
        if let Some((_, waiters)) =
            jwks_fetch::on_fetch_response(&mut host, &vm, token_id, &resp, now)
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
        let metrics =
            Metrics::define(|name| hostcalls::define_metric(MetricType::Counter, name).ok());
        let vm = Rc::new(VmState::new(engine, metrics));
        let remote = vm.jwks.borrow().issuers().len();
        self.vm = Some(vm);
        if remote > 0 {
            if let Err(s) = hostcalls::set_tick_period(TICK) {
                host_log(
                    LogLevel::Error,
                    &format!("edgewarden: jwks refresh timer not set: {s:?}"),
                );
            }
            self.drive_jwks();
        }
        true
    }

    fn on_tick(&mut self) {
        self.drive_jwks();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EdgeWarden::new(context_id, self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
