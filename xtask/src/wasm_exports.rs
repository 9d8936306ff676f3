//! Keeps Envoy from calling into the VM for proxy-wasm callbacks the filter does not implement.
//!
//! The proxy-wasm Rust SDK exports every callback of the ABI (`proxy_on_response_headers`, `proxy_on_log`, ...),
//! each forwarding to a default trait method that does nothing. Envoy's host calls an exported callback on every
//! request whether or not it does anything, and skips one that is not exported (`ContextBase::onResponseHeaders`
//! and friends check the export first). Each such call is a crossing into V8 on the request path: for a GET,
//! response headers, response body and log are three of the seven calls a request makes.
//!
//! So after `cargo build`, the export entries of those callbacks are removed from the `.wasm`, in place. Only the
//! export section changes: the functions stay (unreferenced), nothing else moves, and running it again is a no-op.
//! A callback added to the filter later must come off [`UNUSED_CALLBACKS`], or Envoy will never call it.

use std::ops::Range;
use std::path::Path;

use crate::util::{bail, Error, Result};

/// Callbacks neither the filter nor the proxy-wasm floor implements. Kept: `proxy_on_context_create`,
/// `proxy_on_request_headers`, `proxy_on_http_call_response`, `proxy_on_done`, `proxy_on_delete` (the SDK frees
/// the context there), `proxy_on_vm_start`, `proxy_on_configure`, `proxy_on_tick`, `proxy_on_queue_ready` (the
/// revocation poller wakes the other VMs through shared queues), `proxy_on_memory_allocate`.
pub const UNUSED_CALLBACKS: &[&str] = &[
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_log",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_data",
    "proxy_on_upstream_connection_close",
    "proxy_on_foreign_function",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
];

/// The export section's id in the binary format.
const EXPORT_SECTION: u8 = 7;

/// Removes the exports named in `unused` from the module at `path`; returns how many it removed.
pub fn strip_file(path: &Path, unused: &[&str]) -> Result<usize> {
    let module = std::fs::read(path)
        .map_err(|e| Error::msg(format!("cannot read {}: {e}", path.display())))?;
    let (stripped, removed) =
        strip(&module, unused).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    if removed > 0 {
        // Written aside and renamed, so an interrupted run never leaves a half-written module for Envoy.
        let aside = path.with_extension("wasm.stripping");
        std::fs::write(&aside, &stripped)
            .and_then(|()| std::fs::rename(&aside, path))
            .map_err(|e| Error::msg(format!("cannot rewrite {}: {e}", path.display())))?;
    }
    Ok(removed)
}

/// The module without the exports named in `unused`, and how many were removed.
pub fn strip(module: &[u8], unused: &[&str]) -> Result<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(module.len());
    out.extend_from_slice(&module[..8.min(module.len())]);
    let mut removed = 0;
    for Section { id, whole, payload } in sections(module)? {
        if id != EXPORT_SECTION {
            out.extend_from_slice(&module[whole]);
            continue;
        }
        let exports = exports(&module[payload])?;
        let kept: Vec<&[u8]> = exports
            .iter()
            .filter(|(name, _)| !unused.iter().any(|u| u.as_bytes() == *name))
            .map(|(_, entry)| *entry)
            .collect();
        removed += exports.len() - kept.len();
        let mut body = Vec::new();
        push_leb(
            &mut body,
            u32::try_from(kept.len()).map_err(|_| Error::msg("too many exports"))?,
        );
        for entry in kept {
            body.extend_from_slice(entry);
        }
        out.push(id);
        push_leb(
            &mut out,
            u32::try_from(body.len()).map_err(|_| Error::msg("export section too large"))?,
        );
        out.extend_from_slice(&body);
    }
    Ok((out, removed))
}

/// One section of a module: its id, its whole extent and its payload's extent.
struct Section {
    id: u8,
    whole: Range<usize>,
    payload: Range<usize>,
}

/// Each section of the module, in order.
fn sections(module: &[u8]) -> Result<Vec<Section>> {
    if module.get(..4) != Some(b"\0asm".as_slice()) || module.len() < 8 {
        bail!("not a WebAssembly module (no \\0asm header)");
    }
    let mut sections = Vec::new();
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        let (size, payload_at) = leb_u32(module, at + 1)?;
        let end = payload_at
            .checked_add(size as usize)
            .filter(|&end| end <= module.len())
            .ok_or_else(|| Error::msg(format!("section {id} at byte {at} runs past the end")))?;
        sections.push(Section {
            id,
            whole: at..end,
            payload: payload_at..end,
        });
        at = end;
    }
    Ok(sections)
}

/// The entries of an export section's payload: each one's name and its whole encoding.
fn exports(payload: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    let (count, mut at) = leb_u32(payload, 0)?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let start = at;
        let (name_len, name_at) = leb_u32(payload, at)?;
        let name_end = name_at + name_len as usize;
        let name = payload
            .get(name_at..name_end)
            .ok_or_else(|| Error::msg("export name runs past the section"))?;
        // Kind byte, then the index.
        at = leb_u32(payload, name_end + 1)?.1;
        entries.push((name, &payload[start..at.min(payload.len())]));
    }
    if at != payload.len() {
        bail!(
            "export section has {} trailing bytes",
            payload.len().saturating_sub(at)
        );
    }
    Ok(entries)
}

/// Reads an unsigned LEB128 `u32` at `at`; returns it and the offset after it.
fn leb_u32(bytes: &[u8], mut at: usize) -> Result<(u32, usize)> {
    let mut value: u32 = 0;
    for shift in (0..35).step_by(7) {
        let Some(&byte) = bytes.get(at) else {
            bail!("truncated LEB128 number at byte {at}");
        };
        at += 1;
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    bail!("LEB128 number longer than 5 bytes before byte {at}")
}

/// Appends `value` as unsigned LEB128.
fn push_leb(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The names a module exports (for the checks below).
#[cfg(test)]
fn export_names(module: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for Section { id, payload, .. } in sections(module)? {
        if id == EXPORT_SECTION {
            for (name, _) in exports(&module[payload])? {
                names.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with a type section, and an export section exporting function 0 under each name.
    fn module(names: &[&str]) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        // Type section: one `() -> ()` type.
        m.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
        let mut exports = Vec::new();
        push_leb(&mut exports, names.len() as u32);
        for name in names {
            push_leb(&mut exports, name.len() as u32);
            exports.extend_from_slice(name.as_bytes());
            exports.extend_from_slice(&[0, 0]);
        }
        m.push(EXPORT_SECTION);
        push_leb(&mut m, exports.len() as u32);
        m.extend_from_slice(&exports);
        // A custom section after it, which must survive untouched.
        m.extend_from_slice(&[0, 3, 1, b'x', 9]);
        m
    }

    #[test]
    fn removes_only_the_named_exports_and_keeps_every_other_section() {
        let original = module(&[
            "proxy_on_log",
            "proxy_on_request_headers",
            "memory",
            "proxy_on_response_body",
        ]);
        let (stripped, removed) = strip(&original, UNUSED_CALLBACKS).unwrap();
        assert_eq!(removed, 2);
        assert_eq!(
            export_names(&stripped).unwrap(),
            ["proxy_on_request_headers", "memory"]
        );
        assert_eq!(stripped, module(&["proxy_on_request_headers", "memory"]));
    }

    #[test]
    fn stripping_twice_changes_nothing_more() {
        let (once, _) = strip(
            &module(&["proxy_on_log", "proxy_on_tick"]),
            UNUSED_CALLBACKS,
        )
        .unwrap();
        let (twice, removed) = strip(&once, UNUSED_CALLBACKS).unwrap();
        assert_eq!(removed, 0);
        assert_eq!(once, twice);
    }

    #[test]
    fn section_sizes_are_re_encoded_when_they_shrink_across_a_leb_byte() {
        // 200 bytes of export names: the section size needs two LEB bytes before and one after.
        let long = "proxy_on_log";
        let mut names = vec![long; 16];
        names.push("memory");
        let (stripped, removed) = strip(&module(&names), UNUSED_CALLBACKS).unwrap();
        assert_eq!(removed, 16);
        assert_eq!(export_names(&stripped).unwrap(), ["memory"]);
    }

    #[test]
    fn refuses_what_is_not_a_module_or_is_truncated() {
        assert!(strip(b"not wasm", UNUSED_CALLBACKS).is_err());
        let mut cut = module(&["proxy_on_log"]);
        cut.truncate(cut.len() - 8);
        assert!(strip(&cut, UNUSED_CALLBACKS).is_err());
    }

    #[test]
    fn no_callback_the_filter_needs_is_on_the_list() {
        for needed in [
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_http_call_response",
            "proxy_on_done",
            "proxy_on_delete",
            "proxy_on_vm_start",
            "proxy_on_configure",
            "proxy_on_tick",
            "proxy_on_memory_allocate",
        ] {
            assert!(!UNUSED_CALLBACKS.contains(&needed), "{needed}");
        }
    }
}
