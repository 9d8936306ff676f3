//! The proxy-wasm floor: the least a filter can do in Envoy's V8 runtime (read the `authorization` header,
//! let the request through). `cargo xtask bench` runs it beside EdgeWarden so the figures tell apart what the
//! proxy-wasm boundary costs every request (context creation, callbacks, one host call) from EdgeWarden's work.
//!
//! Given a plugin configuration, the floor instead makes the host calls that configuration lists, one per line,
//! with no work of its own between them. The instructions suite gives it the calls EdgeWarden makes on its cached
//! path, so what Envoy spends answering them is told apart from what EdgeWarden's own code costs:
//!
//! - `headers`: the whole request header map in one call (`proxy_get_header_map_pairs`), as EdgeWarden reads it;
//! - `header NAME`: one request header;
//! - `clock`: the current time;
//! - `property NAME VALUE`: a request property (the value is the rest of the line) (`proxy_set_property`), as EdgeWarden publishes its decision;
//! - `set NAME VALUE`: a request header set;
//! - `remove NAME`: a request header removed.
//!
//! A line it does not know is skipped; the bench checks the answers, not the floor.

/// One host call of the configured script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// The whole request header map.
    Headers,
    /// One request header.
    Header(String),
    /// The current time.
    Clock,
    /// A request property set to a value.
    Property(String, String),
    /// A request header set to a value.
    Set(String, String),
    /// A request header removed.
    Remove(String),
}

/// The script a plugin configuration describes (see the module's documentation); empty for no configuration.
pub fn parse_script(text: &str) -> Vec<Call> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
            // A name is one word; a value is the rest of the line, spaces included.
            let (name, value) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
            let name = (!name.is_empty()).then(|| name.to_string());
            let value = (!value.trim().is_empty()).then(|| value.trim().to_string());
            match verb {
                "headers" => Some(Call::Headers),
                "header" => Some(Call::Header(name?)),
                "clock" => Some(Call::Clock),
                "property" => Some(Call::Property(name?, value?)),
                "set" => Some(Call::Set(name?, value?)),
                "remove" => Some(Call::Remove(name?)),
                _ => None,
            }
        })
        .collect()
}

/// The module's `_initialize` export: installs the root context factory.
#[cfg(target_arch = "wasm32")]
#[allow(missing_docs)]
mod entry {
    use std::rc::Rc;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MapType, Status};

    use super::{parse_script, Call};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(FloorRoot { script: Rc::new(Vec::new()) })
        });
    }}

    struct FloorRoot {
        script: Rc<Vec<Call>>,
    }

    impl Context for FloorRoot {}

    impl RootContext for FloorRoot {
        fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
            let text = self
                .get_plugin_configuration()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            self.script = Rc::new(parse_script(&text));
            true
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            if self.script.is_empty() {
                // Zero-sized: the plain floor allocates nothing per request.
                return Some(Box::new(Floor));
            }
            Some(Box::new(Scripted {
                script: Rc::clone(&self.script),
            }))
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
            let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "authorization");
            Action::Continue
        }
    }

    /// The floor making the configured host calls.
    struct Scripted {
        script: Rc<Vec<Call>>,
    }

    impl Context for Scripted {}

    impl HttpContext for Scripted {
        fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
            for call in self.script.iter() {
                match call {
                    Call::Headers => drop(header_map()),
                    Call::Header(name) => {
                        let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name);
                    }
                    Call::Clock => {
                        let _ = hostcalls::get_current_time();
                    }
                    Call::Property(name, value) => set_property(name, value),
                    Call::Set(name, value) => {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            name,
                            Some(value.as_str()),
                        );
                    }
                    Call::Remove(name) => {
                        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                    }
                }
            }
            Action::Continue
        }
    }

    /// The request's header map as one buffer, taken the way EdgeWarden takes it (`filter/src/headers.rs`).
    #[allow(unsafe_code)]
    fn header_map() -> Vec<u8> {
        #[link(wasm_import_module = "env")]
        extern "C" {
            fn proxy_get_header_map_pairs(
                map_type: MapType,
                return_map_data: *mut *mut u8,
                return_map_size: *mut usize,
            ) -> Status;
        }
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer and a size into the two locations, which live for the whole call.
        let status = unsafe {
            proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size)
        };
        if status != Status::Ok || data.is_null() {
            return Vec::new();
        }
        // SAFETY: as in `filter/src/headers.rs`: the host allocated exactly `size` bytes through the SDK's
        // `proxy_on_memory_allocate`, filled them and handed them over.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }

    /// `proxy_set_property` without the SDK's copies, as EdgeWarden calls it (`filter/src/host.rs`).
    #[allow(unsafe_code)]
    fn set_property(path: &str, value: &str) {
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
        unsafe {
            proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_script, Call};

    #[test]
    fn a_script_lists_its_calls_in_order_and_skips_what_it_does_not_know() {
        let script = parse_script(
            "headers\nclock\nproperty edgewarden.decision reason=allowed rule=*\nset x-a 1\nremove authorization\nheader :path\nfly away\nset x-b\n",
        );
        assert_eq!(
            script,
            vec![
                Call::Headers,
                Call::Clock,
                Call::Property("edgewarden.decision".into(), "reason=allowed rule=*".into()),
                Call::Set("x-a".into(), "1".into()),
                Call::Remove("authorization".into()),
                Call::Header(":path".into()),
            ]
        );
        assert!(parse_script("").is_empty());
    }
}
