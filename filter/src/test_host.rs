//! A recording [`Host`] double for the filter's unit tests: requests, local responses, dispatched callouts,
//! shared data with Envoy's compare-and-swap semantics, counters and gauges, all kept in memory so the
//! tests can drive the request flow, the revocation poller and the usage reporter without Envoy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::types::LogLevel;

use crate::host::Host;
use crate::metrics::{Gauge, Stat};

/// The clock every test starts at (Unix seconds).
pub const NOW: u64 = 1_800_000_000;

/// One recorded host call that changes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set(u32, String, String),
    Remove(u32, String),
    Respond {
        ctx: u32,
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A local gRPC answer (HTTP 200, trailers-only).
    GrpcRespond {
        ctx: u32,
        grpc_status: u32,
        message: String,
        headers: Vec<(String, String)>,
    },
    Resume(u32),
    Dispatch {
        cluster: String,
        authority: String,
        path: String,
    },
}

/// A dispatched callout with everything that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

impl Call {
    /// A header of the call, by exact name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A recorded local response: context, status, headers, body.
pub type Response = (u32, u16, Vec<(String, String)>, String);

/// A recorded local gRPC answer: context, gRPC status, message, headers.
pub type GrpcResponse = (u32, u32, String, Vec<(String, String)>);

/// Shared data as Envoy keeps it: value and a version that changes on every write.
pub type SharedData = RefCell<HashMap<String, (Vec<u8>, u32)>>;

#[derive(Default)]
pub struct FakeHost {
    /// Unix milliseconds.
    pub now_ms: u64,
    pub requests: HashMap<u32, Vec<(String, String)>>,
    pub effective: u32,
    pub ops: Vec<Op>,
    pub calls: Vec<Call>,
    pub counts: RefCell<Vec<Stat>>,
    pub gauges: RefCell<HashMap<String, u64>>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    pub next_token: u32,
    pub refuse_dispatch: bool,
    pub shared: std::rc::Rc<SharedData>,
    pub address: Option<String>,
    /// Request properties set per context (Envoy's `wasm.<name>` filter state), in the order set.
    pub properties: HashMap<u32, Vec<(String, String)>>,
}

impl FakeHost {
    pub fn new() -> Self {
        FakeHost {
            now_ms: NOW * 1000,
            next_token: 100,
            address: Some("10.0.0.7".to_string()),
            ..FakeHost::default()
        }
    }

    /// Another VM of the same Envoy: its own contexts, the same shared data and clock.
    pub fn sibling(&self) -> Self {
        FakeHost {
            now_ms: self.now_ms,
            next_token: self.next_token + 10_000,
            shared: std::rc::Rc::clone(&self.shared),
            address: self.address.clone(),
            ..FakeHost::default()
        }
    }

    /// Moves the clock forward.
    pub fn advance_ms(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// Registers request `ctx` and makes it the effective context.
    pub fn request(&mut self, ctx: u32, path: &str, extra: &[(&str, &str)]) {
        let mut h = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), path.to_string()),
            (":authority".to_string(), "api.test".to_string()),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.requests.insert(ctx, h);
        self.effective = ctx;
    }

    pub fn header(&self, ctx: u32, name: &str) -> Option<String> {
        self.requests[&ctx]
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn counted(&self, stat: Stat) -> usize {
        self.counts.borrow().iter().filter(|s| **s == stat).count()
    }

    pub fn gauge_value(&self, name: &str) -> Option<u64> {
        self.gauges.borrow().get(name).copied()
    }

    pub fn responses(&self) -> Vec<Response> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Respond {
                    ctx,
                    status,
                    headers,
                    body,
                } => Some((*ctx, *status, headers.clone(), body.clone())),
                _ => None,
            })
            .collect()
    }

    /// The local gRPC answers: context, gRPC status, message, headers.
    pub fn grpc_responses(&self) -> Vec<GrpcResponse> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::GrpcRespond {
                    ctx,
                    grpc_status,
                    message,
                    headers,
                } => Some((*ctx, *grpc_status, message.clone(), headers.clone())),
                _ => None,
            })
            .collect()
    }

    /// The request property `name` of context `ctx` (the last value set).
    pub fn property(&self, ctx: u32, name: &str) -> Option<String> {
        self.properties
            .get(&ctx)?
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn dispatches(&self) -> usize {
        self.ops
            .iter()
            .filter(|op| matches!(op, Op::Dispatch { .. }))
            .count()
    }

    /// The last callout whose `:path` starts with `prefix`.
    pub fn last_call(&self, prefix: &str) -> Option<&Call> {
        self.calls
            .iter()
            .rev()
            .find(|c| c.header(":path").is_some_and(|p| p.starts_with(prefix)))
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
    fn request_headers(&self) -> crate::headers::HeaderMap {
        crate::headers::HeaderMap::from_pairs(
            self.requests
                .get(&self.effective)
                .map_or(&[][..], Vec::as_slice),
        )
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        let ctx = self.effective;
        let h = self.requests.entry(ctx).or_default();
        h.retain(|(k, _)| k != name);
        h.push((name.to_string(), value.to_string()));
        self.ops
            .push(Op::Set(ctx, name.to_string(), value.to_string()));
    }
    fn remove_request_header(&mut self, name: &str) {
        let ctx = self.effective;
        self.requests
            .entry(ctx)
            .or_default()
            .retain(|(k, _)| k != name);
        self.ops.push(Op::Remove(ctx, name.to_string()));
    }
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.ops.push(Op::Respond {
            ctx: self.effective,
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        });
    }
    fn send_grpc_response(&mut self, grpc_status: u32, message: &str, headers: &[(&str, &str)]) {
        self.ops.push(Op::GrpcRespond {
            ctx: self.effective,
            grpc_status,
            message: message.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }
    fn set_request_property(&mut self, name: &str, value: &str) {
        self.properties
            .entry(self.effective)
            .or_default()
            .push((name.to_string(), value.to_string()));
    }
    fn resume_request(&mut self) {
        self.ops.push(Op::Resume(self.effective));
    }
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        if self.refuse_dispatch {
            return Err("BadArgument".to_string());
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(String::new(), |(_, v)| (*v).to_string())
        };
        self.ops.push(Op::Dispatch {
            cluster: cluster.into(),
            authority: find(":authority"),
            path: find(":path"),
        });
        self.next_token += 1;
        self.calls.push(Call {
            token: self.next_token,
            cluster: cluster.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(self.next_token)
    }
    fn set_effective_context(&mut self, context_id: u32) -> bool {
        if self.requests.contains_key(&context_id) || context_id == 1 {
            self.effective = context_id;
            true
        } else {
            false
        }
    }
    fn get_shared(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.borrow().get(key).cloned()
    }
    fn set_shared(&mut self, key: &str, value: &[u8]) {
        let mut shared = self.shared.borrow_mut();
        let cas = shared.values().map(|(_, c)| *c).max().unwrap_or(0) + 1;
        shared.insert(key.to_string(), (value.to_vec(), cas));
    }
    fn set_shared_if(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        let current = self.shared.borrow().get(key).map(|(_, c)| *c);
        if current.is_some_and(|c| c != cas) {
            return false;
        }
        self.set_shared(key, value);
        true
    }
    fn client_address(&self) -> Option<String> {
        self.address.clone()
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
    fn count_n(&self, stat: Stat, n: u64) {
        for _ in 0..n {
            self.counts.borrow_mut().push(stat);
        }
    }
    fn gauge(&self, gauge: Gauge, value: u64) {
        self.gauges.borrow_mut().insert(
            crate::metrics::full_name(None, crate::metrics::gauge_name(gauge)),
            value,
        );
    }
}
