//! EdgeWarden's proxy-wasm filter: validates tokens inside Envoy with the `edgewarden-core` engine.
//! Host glue only, in the Kuadrant wasm-shim layout: [`root::EdgeWardenRoot`] (configuration, metrics, JWKS
//! fetching), [`http::EdgeWarden`] (one per request), and a thin [`host::Host`] adapter so the decision-to-response
//! logic in [`flow`] and [`jwks_fetch`] is unit-tested natively. No panics on any request or callout path:
//! a panic in a proxy-wasm VM takes it down for every later request.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod flow;
pub mod headers;
pub mod host;
pub mod http;
pub mod jwks_fetch;
pub mod metrics;
pub mod revocation_sync;
pub mod root;
pub mod state;
#[cfg(test)]
pub mod test_host;
pub mod usage;

/// The module's `_initialize` export: installs the panic logger and the root context factory.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)]
mod entry {
    proxy_wasm::main! {{
        // `Warn` only gates the SDK's own `log` records; the filter logs through the host, which filters by level.
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Warn);
        proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(crate::root::EdgeWardenRoot::new(context_id))
        });
    }}
}
