//! The proxy-wasm floor: the least a filter can do in Envoy's V8 runtime (read the `authorization` header,
//! let the request through). `cargo xtask bench` runs it beside EdgeWarden so the figures tell apart what the
//! proxy-wasm boundary costs every request (context creation, callbacks, one host call) from EdgeWarden's work.

/// The module's `_initialize` export: installs the root context factory.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)]
mod entry {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MapType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot) });
    }}

    struct FloorRoot;

    impl Context for FloorRoot {}

    impl RootContext for FloorRoot {
        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Floor))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Floor;

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            // The bytes form: the text one panics on a value that is not UTF-8.
            let _ = proxy_wasm::hostcalls::get_map_value_bytes(
                MapType::HttpRequestHeaders,
                "authorization",
            );
            Action::Continue
        }
    }
}
