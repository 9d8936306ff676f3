//! `EdgeWarden`: the HTTP context, one per request. It only adapts proxy-wasm callbacks to the host-agnostic
//! logic in `flow` and `jwks_fetch`, and remembers whether its request is paused on a key-set fetch so that a
//! stream ending early hands the fetch (or its place in the queue) back to the VM.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::flow::{self, Outcome};
use crate::host::{Host, ProxyHost};
use crate::jwks_fetch;
use crate::metrics::Metrics;
use crate::state::VmState;

/// The per-request context.
pub struct EdgeWarden {
    context_id: u32,
    vm: Option<Rc<VmState>>,
    paused: Option<Outcome>,
}

impl EdgeWarden {
    /// A context for request `context_id`; `vm` is `None` only if the plugin never configured successfully.
    pub fn new(context_id: u32, vm: Option<Rc<VmState>>) -> Self {
        EdgeWarden {
            context_id,
            vm,
            paused: None,
        }
    }
}

impl Context for EdgeWarden {
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
        let Some((_, waiters)) =
            jwks_fetch::on_call_response(&mut host, &vm, token_id, num_headers, body_size)
        else {
            return;
        };
        self.paused = None;
        // Our own request first, then everyone who queued behind our fetch.
        if flow::process(&mut host, &vm, self.context_id, false) == Outcome::Continue {
            host.resume_request();
        }
        flow::resolve_waiters(&mut host, &vm, &waiters, self.context_id);
    }

    fn on_done(&mut self) -> bool {
        if let (Some(vm), Some(paused)) = (&self.vm, self.paused.take()) {
            match paused {
                Outcome::FetchingJwks { .. } => vm.jwks.borrow_mut().orphan(self.context_id),
                Outcome::WaitingForJwks { .. } => {
                    vm.jwks.borrow_mut().remove_waiter(self.context_id)
                }
                Outcome::Continue | Outcome::Denied => {}
            }
        }
        true
    }
}

impl HttpContext for EdgeWarden {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(vm) = self.vm.clone() else {
            // Unreachable in practice (Envoy refuses a plugin whose on_configure failed); fail closed anyway.
            let metrics = Metrics::default();
            let mut host = ProxyHost::new(&metrics);
            host.send_response(
                500,
                &[("content-type", "application/json")],
                r#"{"error": "server_error", "error_description": "edgewarden is not configured"}"#,
            );
            return Action::Pause;
        };
        let mut host = ProxyHost::new(&vm.metrics);
        match flow::process(&mut host, &vm, self.context_id, true) {
            Outcome::Continue => Action::Continue,
            Outcome::Denied => Action::Pause,
            paused @ (Outcome::FetchingJwks { .. } | Outcome::WaitingForJwks { .. }) => {
                self.paused = Some(paused);
                Action::Pause
            }
        }
    }
}
