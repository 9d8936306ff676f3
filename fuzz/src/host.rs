//! An in-memory [`Host`] for the fuzz targets: the filter's logic runs against it exactly as against Envoy,
//! with request headers, proxy-wasm shared data (with Envoy's compare-and-swap versions) and callout tokens
//! kept in memory. Logs are formatted by the filter before they get here and then dropped.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use edgewarden_filter::headers::HeaderMap;
use edgewarden_filter::host::Host;
use edgewarden_filter::metrics::{Gauge, Stat};
use proxy_wasm::types::LogLevel;

/// Shared data as Envoy keeps it: value and a version that changes on every write.
pub type Shared = BTreeMap<String, (Vec<u8>, u32)>;

/// The fuzz targets' host.
#[derive(Debug, Default)]
pub struct FuzzHost {
    /// Unix milliseconds.
    pub now_ms: u64,
    /// What `request_headers` answers.
    pub headers: HeaderMap,
    /// Shared data of every VM of the plugin.
    pub shared: RefCell<Shared>,
    /// The next callout token.
    pub next_token: u32,
    /// Local responses sent: status and body.
    pub responses: Vec<(u16, String)>,
    /// Callouts dispatched: token, cluster and `:path`.
    pub calls: Vec<(u32, String, String)>,
    /// Log lines written (their count only; the text is built either way).
    pub logs: RefCell<usize>,
}

impl FuzzHost {
    /// A host at `now_ms` with no request and empty shared data.
    pub fn at(now_ms: u64) -> FuzzHost {
        FuzzHost {
            now_ms,
            next_token: 1,
            ..FuzzHost::default()
        }
    }
}

impl Host for FuzzHost {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn request_headers(&self) -> HeaderMap {
        self.headers.clone()
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        std::hint::black_box((name, value));
    }

    fn remove_request_header(&mut self, name: &str) {
        std::hint::black_box(name);
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &str) {
        std::hint::black_box(headers);
        self.responses.push((status, body.to_string()));
    }

    fn send_grpc_response(&mut self, grpc_status: u32, message: &str, headers: &[(&str, &str)]) {
        std::hint::black_box(headers);
        self.responses
            .push((200, format!("grpc-status {grpc_status}: {message}")));
    }

    fn set_request_property(&mut self, name: &str, value: &str) {
        // An access log line must never be split by a published claim.
        assert!(
            !value.chars().any(char::is_control),
            "request property {name} holds a control character: {value:?}"
        );
        std::hint::black_box((name, value));
    }

    fn resume_request(&mut self) {}

    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        std::hint::black_box((body, timeout));
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        let path = headers
            .iter()
            .find(|(k, _)| *k == ":path")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        self.calls.push((token, cluster.to_string(), path));
        Ok(token)
    }

    fn set_effective_context(&mut self, _context_id: u32) -> bool {
        true
    }

    fn get_shared(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.borrow().get(key).cloned()
    }

    fn set_shared(&mut self, key: &str, value: &[u8]) {
        let mut shared = self.shared.borrow_mut();
        let cas = shared.get(key).map_or(1, |(_, cas)| cas.wrapping_add(1));
        shared.insert(key.to_string(), (value.to_vec(), cas));
    }

    fn set_shared_if(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        let mut shared = self.shared.borrow_mut();
        match shared.get(key) {
            Some((_, current)) if *current != cas => false,
            _ => {
                shared.insert(key.to_string(), (value.to_vec(), cas.wrapping_add(1)));
                true
            }
        }
    }

    fn client_address(&self) -> Option<String> {
        Some("192.0.2.7".to_string())
    }

    fn log(&self, _level: LogLevel, message: &str) {
        std::hint::black_box(message);
        *self.logs.borrow_mut() += 1;
    }

    fn count_n(&self, stat: Stat, n: u64) {
        std::hint::black_box((stat, n));
    }

    fn gauge(&self, gauge: Gauge, value: u64) {
        std::hint::black_box((gauge, value));
    }
}
