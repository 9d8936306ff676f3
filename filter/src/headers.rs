//! The request's headers, read in one host call and looked up in place.
//!
//! Envoy hands the whole header map over as one buffer (a count, a length pair per header, then every name and
//! value, each NUL-terminated). The SDK's `get_map_bytes` copies each name and each value into its own
//! allocation, which on the cached path cost more than the rest of the filter's own work. [`HeaderMap`] keeps
//! the buffer and remembers where each name and value sits.
//!
//! Text rules are the ones the filter has always applied: names are ASCII tokens (Envoy's codecs refuse
//! anything else); a value that is not UTF-8 (any client can send `X-Anything: \xff`) keeps its valid parts and
//! gets U+FFFD for the rest, so a credential carrying such bytes fails to parse as a token instead of failing
//! the VM. Only such values are copied, and only once they are read: nothing is checked up front.

use std::cell::OnceCell;
use std::ops::Range;

/// Where one name or value sits in the buffer, and its repaired copy once one was needed (text that is not
/// UTF-8, made on first access: most headers of a request are never looked at, so none is checked up front).
#[derive(Debug, Clone)]
struct Text {
    range: Range<usize>,
    repaired: OnceCell<Box<str>>,
}

impl Text {
    fn new(range: Range<usize>) -> Text {
        Text {
            range,
            repaired: OnceCell::new(),
        }
    }
}

/// Request headers in Envoy's serialised form, with the position of each pair.
#[derive(Debug, Clone, Default)]
pub struct HeaderMap {
    buf: Vec<u8>,
    entries: Vec<(Text, Text)>,
}

impl HeaderMap {
    /// Parses a map in proxy-wasm's serialised form. A buffer that does not follow it (Envoy never sends one)
    /// yields the pairs read before the fault.
    pub fn from_serialized(buf: Vec<u8>) -> HeaderMap {
        let count = read_u32(&buf, 0).unwrap_or(0);
        let mut data = count.saturating_mul(8).saturating_add(4);
        let mut entries = Vec::with_capacity(count.min(256));
        for n in 0..count {
            let sizes = n.saturating_mul(8).saturating_add(4);
            let (Some(name_len), Some(value_len)) =
                (read_u32(&buf, sizes), read_u32(&buf, sizes + 4))
            else {
                break;
            };
            let name = data..data.saturating_add(name_len);
            let value_start = name.end.saturating_add(1);
            let value = value_start..value_start.saturating_add(value_len);
            if value.end > buf.len() {
                break;
            }
            data = value.end.saturating_add(1);
            entries.push((Text::new(name), Text::new(value)));
        }
        HeaderMap { buf, entries }
    }

    /// A map holding `pairs`, through the same serialised form Envoy sends (tests and native builds).
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> HeaderMap {
        HeaderMap::from_serialized(serialize(pairs))
    }

    /// The raw bytes of a name or value, as the client sent them.
    fn bytes(&self, text: &Text) -> &[u8] {
        self.buf.get(text.range.clone()).unwrap_or_default()
    }

    /// A name or value as text: in place when it is UTF-8, otherwise its repaired copy (made once).
    fn str<'a>(&'a self, text: &'a Text) -> &'a str {
        let bytes = self.bytes(text);
        // simdutf8 checks 64 bytes a step with WebAssembly SIMD, where the standard library's check goes a word at a
        // time: a bearer token is hundreds of bytes and is checked on every request, cache hits included.
        match simdutf8::basic::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => text
                .repaired
                .get_or_init(|| String::from_utf8_lossy(bytes).into()),
        }
    }

    /// The first value of header `name` (compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        // Names compared as bytes (ASCII case folding is all the comparison does; a name that is not UTF-8 can
        // never equal an ASCII one); a value is only turned into text once its name matched. Envoy hands names over
        // lowercased and callers ask in lowercase, so an exact compare (a `memcmp`) settles nearly every name; the
        // byte-by-byte case fold, about 14 instructions a byte, runs only where the exact compare failed.
        let wanted = name.as_bytes();
        self.entries
            .iter()
            .find(|(k, _)| {
                let key = self.bytes(k);
                key.len() == wanted.len() && (key == wanted || key.eq_ignore_ascii_case(wanted))
            })
            .map(|(_, v)| self.str(v))
    }

    /// Every `(name, value)` pair, in the order Envoy holds them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries
            .iter()
            .map(|(name, value)| (self.str(name), self.str(value)))
    }

    /// How many pairs the map holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map holds no pair.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many names and values have needed a repaired copy so far (tests).
    #[cfg(test)]
    fn repaired(&self) -> usize {
        self.entries
            .iter()
            .flat_map(|(k, v)| [k, v])
            .filter(|t| t.repaired.get().is_some())
            .count()
    }
}

/// A little-endian `u32` at `at`, as a `usize`.
fn read_u32(buf: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

/// `pairs` in proxy-wasm's serialised map form.
pub fn serialize<N: AsRef<str>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&len(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.as_ref().len()));
        out.extend_from_slice(&len(value.as_ref().len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref().as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

/// Reads the current request's header map from the host in one call, without the SDK's per-pair copies;
/// an empty map if the host has none to give.
#[allow(unsafe_code)]
pub fn read_request_headers() -> HeaderMap {
    use proxy_wasm::types::{MapType, Status};

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
    let status =
        unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
    if status != Status::Ok || data.is_null() {
        return HeaderMap::default();
    }
    // SAFETY: on `Ok` the host allocated `size` bytes through the SDK's `proxy_on_memory_allocate` (a boxed
    // slice of exactly `size` bytes, so capacity and length are both `size`), filled them, and handed them
    // over; nothing else refers to them. This is how the SDK's own `get_map_bytes` takes the buffer.
    let buf = unsafe { Vec::from_raw_parts(data, size, size) };
    HeaderMap::from_serialized(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_headers_up_in_place_case_insensitively() {
        let map = HeaderMap::from_pairs(&[
            (":path", "/orders?id=1"),
            (":method", "GET"),
            ("authorization", "Bearer abc.def.ghi"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("empty", ""),
        ]);
        assert_eq!(map.len(), 6);
        assert_eq!(map.get(":path"), Some("/orders?id=1"));
        assert_eq!(map.get("Authorization"), Some("Bearer abc.def.ghi"));
        assert_eq!(map.get("cookie"), Some("a=1"));
        assert_eq!(map.get("empty"), Some(""));
        assert_eq!(map.get("missing"), None);
        let cookies: Vec<&str> = map
            .iter()
            .filter(|(k, _)| *k == "cookie")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(map.repaired(), 0, "valid text is never copied");
    }

    #[test]
    fn values_that_are_not_utf8_become_text_instead_of_failing() {
        let map = HeaderMap::from_pairs(&[
            ("x-evil", b"caf\xe9\xff".as_slice()),
            ("authorization", b"Bearer abc".as_slice()),
        ]);
        assert_eq!(map.get("authorization"), Some("Bearer abc"));
        assert_eq!(
            map.repaired(),
            0,
            "a value is repaired only when it is read"
        );
        assert_eq!(map.get("x-evil"), Some("caf\u{fffd}\u{fffd}"));
        assert_eq!(map.get("x-evil"), Some("caf\u{fffd}\u{fffd}"));
        assert_eq!(map.repaired(), 1);
    }

    #[test]
    fn a_buffer_out_of_shape_yields_what_was_read_and_never_panics() {
        let whole = serialize(&[("a", "1"), ("bb", "22")]);
        for cut in 0..whole.len() {
            let map = HeaderMap::from_serialized(whole.get(..cut).unwrap_or_default().to_vec());
            assert!(map.len() <= 2, "cut at {cut}");
        }
        assert_eq!(HeaderMap::from_serialized(whole).len(), 2);
        // A count far beyond the buffer, and lengths that overflow.
        let mut lying = u32::MAX.to_le_bytes().to_vec();
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::from_serialized(lying).is_empty());
        assert!(HeaderMap::from_serialized(Vec::new()).is_empty());
    }
}
