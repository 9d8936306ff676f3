//! The thin host adapter: every call the filter's logic makes into Envoy goes through [`Host`].
//! The proxy-wasm SDK's trait methods `unwrap` host statuses and its hostcalls cannot run natively,
//! so the logic in `flow` and `jwks_fetch` talks to this small trait instead: [`ProxyHost`] forwards to
//! `proxy_wasm::hostcalls` and turns failures into logged no-ops, and the unit tests use a recording double.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, GrpcStatusCode, LogLevel, MapType};

use crate::headers::{self, HeaderMap};
use crate::metrics::{Gauge, Metrics, Stat};

/// Everything the filter's decision logic needs from the proxy, for the context that is currently effective.
pub trait Host {
    /// Current time as Unix seconds; fails closed to 0 (every token then looks issued in the future) if the host cannot tell.
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }
    /// Current time as Unix milliseconds (0 if the host cannot tell): timers of the poller and the reporter.
    fn now_ms(&self) -> u64;
    /// All request headers (lower-case names, as Envoy stores them, pseudo-headers included).
    fn request_headers(&self) -> HeaderMap;
    /// Replaces every value of a request header with one value.
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Removes every value of a request header.
    fn remove_request_header(&mut self, name: &str);
    /// Answers the request locally; the request never reaches the upstream.
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &str);
    /// Answers a gRPC call locally as gRPC does: HTTP 200, trailers-only, `grpc-status` `grpc_status` and
    /// `grpc-message` `message` (Envoy percent-encodes it), plus `headers`; the call never reaches the upstream.
    fn send_grpc_response(&mut self, grpc_status: u32, message: &str, headers: &[(&str, &str)]);
    /// Sets a property of the current request that the access log and later filters read: Envoy keeps it as the
    /// filter state object `wasm.<name>` (a proxy-wasm filter cannot write dynamic metadata; see `filter/README.md`).
    fn set_request_property(&mut self, name: &str, value: &str);
    /// Resumes a request paused by an earlier callback.
    fn resume_request(&mut self);
    /// Starts an HTTP call through an Envoy cluster (`headers` include the pseudo-headers); returns the callout token.
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String>;
    /// Starts an HTTP GET for a key set through an Envoy cluster; returns the callout token.
    fn dispatch_get(
        &mut self,
        cluster: &str,
        authority: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<u32, String> {
        self.dispatch(
            cluster,
            &[
                (":method", "GET"),
                (":path", path),
                (":authority", authority),
                ("accept", "application/json, application/jwk-set+json"),
            ],
            None,
            timeout,
        )
    }
    /// Makes later host calls act on another context of this VM; false if that context is gone.
    fn set_effective_context(&mut self, context_id: u32) -> bool;
    /// Reads a value shared by all VMs of this plugin, with its compare-and-swap version.
    fn get_shared(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Publishes a value to all VMs of this plugin (last writer wins).
    fn set_shared(&mut self, key: &str, value: &[u8]);
    /// Publishes a value only if it still has version `cas` (Envoy's compare-and-swap); false if another VM
    /// wrote it in between (or the host refused).
    fn set_shared_if(&mut self, key: &str, value: &[u8], cas: u32) -> bool;
    /// The downstream client's address without port (`source.address`), if the host tells.
    fn client_address(&self) -> Option<String>;
    /// Writes a log line through Envoy's logger.
    fn log(&self, level: LogLevel, message: &str);
    /// Adds `n` to a counter.
    fn count_n(&self, stat: Stat, n: u64);
    /// Increments a counter.
    fn count(&self, stat: Stat) {
        self.count_n(stat, 1);
    }
    /// Sets a gauge.
    fn gauge(&self, gauge: Gauge, value: u64);
}

/// The real adapter over `proxy_wasm::hostcalls`; host failures are logged at debug level and otherwise ignored.
/// The SDK panics on host statuses it does not expect and on text that is not UTF-8, so every call here is one
/// whose statuses it handles, with inputs a request cannot make it refuse (see [`headers::read_request_headers`]
/// and [`http_call_response`]).
pub struct ProxyHost<'a> {
    metrics: &'a Metrics,
}

impl<'a> ProxyHost<'a> {
    /// An adapter that counts into `metrics` (defined once per VM by the root context).
    pub fn new(metrics: &'a Metrics) -> Self {
        ProxyHost { metrics }
    }
}

/// Logs through the host; usable before any metrics exist (configuration errors).
pub fn host_log(level: LogLevel, message: &str) {
    // If even logging fails there is nowhere left to report it.
    let _ = hostcalls::log(level, message);
}

/// Hands the counts summed since the last call to Envoy's counters.
pub fn flush_metrics(metrics: &Metrics) {
    metrics.flush(|id, n| {
        // A failed increment only loses a sample; never worth failing anything for.
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    });
}

/// Current Unix time in milliseconds from the host clock, 0 if the host cannot tell.
pub fn host_now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Strips the port from an Envoy address (`10.0.0.7:5123` -> `10.0.0.7`, `[::1]:80` -> `::1`).
pub fn address_without_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        // One colon: IPv4 with port. More: a bare IPv6 address, keep it whole.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

/// Sets request property `path` (one segment) to `value` with one host call and no allocation, and returns the
/// host's status code (0 is Ok) where the SDK's `set_property` panics on any status but Ok and allocates the
/// path twice on every call (2,600 of EdgeWarden's instructions per request for the five decision properties,
/// `cargo xtask bench --suite instructions`). A one-segment path is its bytes alone, as the SDK serialises it.
/// The status comes back as a plain integer, so no value the host returns can be an invalid enum.
#[allow(unsafe_code)]
fn set_property_raw(path: &[u8], value: &[u8]) -> u32 {
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
    }
    // SAFETY: both pointers and sizes describe live slices for the whole call; the host only reads them.
    unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) }
}

/// The SDK's enum for a gRPC status code; a code outside 0..=16 (none is ever passed) is `UNKNOWN`.
fn grpc_status_code(code: u32) -> GrpcStatusCode {
    match code {
        0 => GrpcStatusCode::Ok,
        1 => GrpcStatusCode::Cancelled,
        3 => GrpcStatusCode::InvalidArgument,
        4 => GrpcStatusCode::DeadlineExceeded,
        5 => GrpcStatusCode::NotFound,
        6 => GrpcStatusCode::AlreadyExists,
        7 => GrpcStatusCode::PermissionDenied,
        8 => GrpcStatusCode::ResourceExhausted,
        9 => GrpcStatusCode::FailedPrecondition,
        10 => GrpcStatusCode::Aborted,
        11 => GrpcStatusCode::OutOfRange,
        12 => GrpcStatusCode::Unimplemented,
        13 => GrpcStatusCode::Internal,
        14 => GrpcStatusCode::Unavailable,
        15 => GrpcStatusCode::DataLoss,
        16 => GrpcStatusCode::Unauthenticated,
        _ => GrpcStatusCode::Unknown,
    }
}

/// Reads the `:status` and body of the HTTP call response being delivered; a body larger than `max_body`
/// bytes is not read at all (`body: None`, `body_size` tells the caller why).
///
/// A call that failed (timeout, reset, a response over Envoy's buffer limit) is delivered with no headers, and
/// then Envoy has no response header map: asking it for `:status` returns `BadArgument`, on which the SDK
/// panics. So nothing is read unless `num_headers` says there is something to read.
pub fn http_call_response(num_headers: usize, body_size: usize, max_body: usize) -> CallResponse {
    if num_headers == 0 {
        return CallResponse {
            status: None,
            body: None,
            body_size,
        };
    }
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.trim().parse::<u16>().ok());
    if body_size == 0 || body_size > max_body {
        return CallResponse {
            status,
            body: None,
            body_size,
        };
    }
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten();
    CallResponse {
        status,
        body,
        body_size,
    }
}

/// What came back from a dispatched HTTP call: no status means the call failed (reset, timeout, no healthy host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResponse {
    /// The `:status` pseudo-header, if any.
    pub status: Option<u16>,
    /// The body, if it was read (absent when empty or larger than the cap).
    pub body: Option<Vec<u8>>,
    /// The body size the host announced.
    pub body_size: usize,
}

impl Host for ProxyHost<'_> {
    fn now_ms(&self) -> u64 {
        host_now_ms()
    }

    fn request_headers(&self) -> HeaderMap {
        headers::read_request_headers()
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        if let Err(s) = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)) {
            self.log(
                LogLevel::Debug,
                &format!("edgewarden: set header {name} failed: {s:?}"),
            );
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        if let Err(s) = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name) {
            self.log(
                LogLevel::Debug,
                &format!("edgewarden: remove header {name} failed: {s:?}"),
            );
        }
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &str) {
        if let Err(s) = hostcalls::send_http_response(
            u32::from(status),
            headers.to_vec(),
            Some(body.as_bytes()),
        ) {
            self.log(
                LogLevel::Error,
                &format!("edgewarden: local response failed: {s:?}"),
            );
        }
    }

    fn send_grpc_response(&mut self, grpc_status: u32, message: &str, headers: &[(&str, &str)]) {
        let metadata: Vec<(&str, &[u8])> =
            headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        if let Err(s) =
            hostcalls::send_grpc_response(grpc_status_code(grpc_status), Some(message), metadata)
        {
            self.log(
                LogLevel::Error,
                &format!("edgewarden: local grpc response failed: {s:?}"),
            );
        }
    }

    fn set_request_property(&mut self, name: &str, value: &str) {
        // Envoy answers NotFound only outside a request and BadArgument only for a property declared read-only or
        // typed, which this filter never declares; either way the request goes on without the property.
        let status = set_property_raw(name.as_bytes(), value.as_bytes());
        if status != 0 {
            self.log(
                LogLevel::Debug,
                &format!("edgewarden: property {name} not set: host status {status}"),
            );
        }
    }

    fn resume_request(&mut self) {
        if let Err(s) = hostcalls::resume_http_request() {
            self.log(
                LogLevel::Debug,
                &format!("edgewarden: resume failed: {s:?}"),
            );
        }
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
            .map_err(|s| format!("{s:?}"))
    }

    fn set_effective_context(&mut self, context_id: u32) -> bool {
        hostcalls::set_effective_context(context_id).is_ok()
    }

    fn get_shared(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), Some(cas))) => Some((v, cas)),
            _ => None,
        }
    }

    fn set_shared(&mut self, key: &str, value: &[u8]) {
        if let Err(s) = hostcalls::set_shared_data(key, Some(value), None) {
            self.log(
                LogLevel::Debug,
                &format!("edgewarden: shared data {key} not set: {s:?}"),
            );
        }
    }

    fn set_shared_if(&mut self, key: &str, value: &[u8], cas: u32) -> bool {
        hostcalls::set_shared_data(key, Some(value), Some(cas)).is_ok()
    }

    fn client_address(&self) -> Option<String> {
        let bytes = hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()?;
        let text = String::from_utf8(bytes).ok()?;
        Some(address_without_port(&text).to_string())
    }

    fn log(&self, level: LogLevel, message: &str) {
        host_log(level, message);
    }

    fn count_n(&self, stat: Stat, n: u64) {
        // Summed in memory; the root context's timer hands the sums to Envoy (`flush_metrics`).
        self.metrics.add(stat, n);
    }

    fn gauge(&self, gauge: Gauge, value: u64) {
        if let Some(id) = self.metrics.gauge_id(gauge) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn grpc_status_codes_keep_their_number() {
        for code in 0..=16u32 {
            assert_eq!(grpc_status_code(code) as u32, code);
        }
        assert_eq!(grpc_status_code(17) as u32, 2);
    }

    #[test]
    fn addresses_lose_their_port() {
        for (address, expected) in [
            ("10.0.0.7:5123", "10.0.0.7"),
            ("[::1]:80", "::1"),
            ("::1", "::1"),
            ("10.0.0.7", "10.0.0.7"),
            ("", ""),
        ] {
            assert_eq!(address_without_port(address), expected, "{address}");
        }
    }
}
