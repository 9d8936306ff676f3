//! The verified token and the rejection type, plus the token-text fingerprint.
//! A [`VerifiedToken`] is what survives parsing, header hardening and signature verification:
//! the claims the engine and the filter need, already typed, so the hot path never re-reads JSON.

use serde::Serialize;

use crate::decision::Reason;

/// A token whose structure, header and signature were verified, with its claims extracted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifiedToken {
    /// Index of the issuer (in `Config::issuers`) whose key verified the token.
    pub issuer_index: usize,
    /// The `iss` claim.
    pub iss: String,
    /// The `sub` claim.
    pub sub: Option<String>,
    /// The `aud` claim, normalised to a list.
    pub aud: Vec<String>,
    /// The `exp` claim (Unix seconds).
    pub exp: Option<u64>,
    /// The `nbf` claim (Unix seconds).
    pub nbf: Option<u64>,
    /// The `iat` claim (Unix seconds).
    pub iat: Option<u64>,
    /// The `jti` claim.
    pub jti: Option<String>,
    /// `client_id`, falling back to `azp`.
    pub client_id: Option<String>,
    /// Scopes from `scope` (space-delimited) and `scp` (string or array), deduplicated, in order of appearance.
    pub scopes: Vec<String>,
    /// Roles from the configured `roles_claim`.
    pub roles: Vec<String>,
    /// The header `alg`.
    pub alg: String,
    /// The header `kid`.
    pub kid: Option<String>,
    /// The header `typ`.
    pub typ: Option<String>,
    /// The full payload, for `forward_claims` and introspection.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Fast non-cryptographic hash of the token text (see [`fingerprint`]): a cache and usage key, never the token itself.
    pub fingerprint: u64,
    /// The request headers `forward_claims` and `forward_payload_header` set when this token is let through, built
    /// once when it is verified: a cache hit sets them without looking claims up or copying them again.
    pub forwarded: Vec<(String, String)>,
}

/// Why a token was refused; `reason` is machine-readable, `description` human with figures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {description}")]
pub struct Rejection {
    /// Machine-readable reason.
    pub reason: Reason,
    /// Human description with figures; never contains the token.
    pub description: String,
    /// `Some(issuer index)` when refetching that issuer's JWKS may help (unknown `kid`).
    pub refetch_jwks: Option<usize>,
}

impl Rejection {
    /// A rejection with no refetch hint.
    pub fn new(reason: Reason, description: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            description: description.into(),
            refetch_jwks: None,
        }
    }
}

/// A fast, non-cryptographic 64-bit hash of the token text (FxHash-style word mixing with a final avalanche).
/// Used as the cache key and as the token's identity in usage events and logs, so the token itself never leaves memory.
/// It is not collision resistant: the cache compares the full text on every hit.
pub fn fingerprint(token: &str) -> u64 {
    fingerprint_bytes(token.as_bytes())
}

/// [`fingerprint`] over raw bytes.
pub fn fingerprint_bytes(bytes: &[u8]) -> u64 {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut hash: u64 = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(SEED);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        for (slot, byte) in word.iter_mut().zip(rest) {
            *slot = *byte;
        }
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(SEED);
    }
    // fmix64 from MurmurHash3: spreads the entropy of every input byte over all output bits,
    // which Fx mixing alone does not do for the high bits hash tables index on.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    hash
}

use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::jwks::Alg;

/// A token split, decoded and header-checked, but not yet verified.
#[derive(Debug)]
pub(crate) struct Parsed<'t> {
    pub(crate) alg: Alg,
    pub(crate) kid: Option<String>,
    pub(crate) typ: Option<String>,
    pub(crate) claims: Map<String, Value>,
    /// The ASCII `header.payload` the signature covers.
    pub(crate) signing_input: &'t str,
    pub(crate) signature: Vec<u8>,
}

/// A JSON object whose top-level keys must be unique (serde_json would silently keep the last one,
/// which lets two parsers disagree about the same token).
struct UniqueMap(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueMap, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if map.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate key {}", show(&key))));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueMap(map))
            }
        }
        d.deserialize_map(V)
    }
}

/// Shows untrusted text (a kid, an issuer, a claim) in a description: quoted, escaped, at most 64 characters.
pub(crate) fn show(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", s.get(..cut).unwrap_or("")),
        None => format!("{s:?}"),
    }
}

fn malformed(description: impl Into<String>) -> Rejection {
    Rejection::new(Reason::Malformed, description)
}

fn unsupported(description: impl Into<String>) -> Rejection {
    Rejection::new(Reason::UnsupportedHeader, description)
}

/// Checks a segment is non-empty unpadded base64url before decoding it, so the error says what is wrong.
fn decode_segment(segment: &str, part: &str) -> Result<Vec<u8>, Rejection> {
    if segment.is_empty() {
        return Err(malformed(format!("token {part} is empty")));
    }
    if let Some(bad) = segment
        .bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
    {
        return Err(malformed(if bad == b'=' {
            format!("token {part} has base64 padding, which jws compact forbids")
        } else {
            format!("token {part} has a character outside base64url")
        }));
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| malformed(format!("token {part} is not canonical base64url")))
}

fn first_non_space(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn optional_string(value: Option<Value>, name: &str) -> Result<Option<String>, Rejection> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(malformed(format!("header {name} is not a string"))),
    }
}

/// Splits, decodes and checks a JWS compact token (RFC 7515, hardened per RFC 8725) without verifying it.
pub(crate) fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, Rejection> {
    if token.len() > max_bytes {
        return Err(Rejection::new(
            Reason::TokenTooLarge,
            format!("token is {} bytes, maximum {max_bytes}", token.len()),
        ));
    }
    if token.is_empty() {
        return Err(malformed("token is empty"));
    }
    if token.starts_with('{') {
        return Err(malformed(
            "json serialization is not accepted, only jws compact",
        ));
    }
    let segments = token.bytes().filter(|b| *b == b'.').count() + 1;
    if segments == 5 {
        return Err(unsupported(
            "jwe (5 segments) is not accepted, only signed jws",
        ));
    }
    let mut parts = token.splitn(3, '.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), 3) =
        (parts.next(), parts.next(), parts.next(), segments)
    else {
        return Err(malformed(format!(
            "token has {segments} segments, expected 3"
        )));
    };
    let header_json = decode_segment(header_b64, "header")?;
    if first_non_space(&header_json) != Some(b'{') {
        return Err(malformed("token header is not a json object"));
    }
    // Parsed as a map with unique keys: a repeated parameter (`"alg":"ES256","alg":"none"`) is refused
    // because two parsers could pick different ones.
    let UniqueMap(mut header) = serde_json::from_slice(&header_json).map_err(|e| {
        malformed(format!(
            "token header is not valid json: {}",
            strip_position(&e)
        ))
    })?;

    let alg_name = match header.remove("alg") {
        Some(Value::String(alg)) => alg,
        Some(_) => return Err(malformed("header alg is not a string")),
        None => return Err(malformed("header has no alg")),
    };
    if alg_name.trim().eq_ignore_ascii_case("none") {
        return Err(Rejection::new(
            Reason::DisallowedAlgorithm,
            "alg none is never accepted",
        ));
    }
    let alg = Alg::parse(&alg_name).ok_or_else(|| {
        Rejection::new(
            Reason::DisallowedAlgorithm,
            if crate::jwks::is_unsupported_signature_alg(&alg_name) {
                // A registered algorithm (ES384, RS512): the name is one of a fixed list, safe to show bare.
                format!("algorithm {alg_name} is not supported by this edge (it verifies ES256, RS256, PS256, EdDSA, HS256)")
            } else {
                format!(
                    "algorithm {} is not allowed (allowed: ES256, RS256, PS256, EdDSA, HS256)",
                    show(&alg_name)
                )
            },
        )
    })?;
    if header.contains_key("crit") {
        return Err(unsupported("crit header is not supported"));
    }
    if header.contains_key("b64") {
        return Err(unsupported(
            "b64 header (unencoded payload) is not supported",
        ));
    }
    if header.contains_key("enc") {
        return Err(unsupported("enc header (jwe) is not accepted"));
    }
    if header.contains_key("zip") {
        return Err(unsupported("zip header is not supported"));
    }
    for name in ["jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256"] {
        if header.contains_key(name) {
            return Err(unsupported(format!(
                "{name} header is not accepted: keys come from configuration only"
            )));
        }
    }
    if let Some(cty) = optional_string(header.remove("cty"), "cty")? {
        let bare = strip_application(&cty);
        if bare.eq_ignore_ascii_case("jwt") {
            return Err(unsupported("nested jwt (cty JWT) is not accepted"));
        }
        if !bare.eq_ignore_ascii_case("json") {
            return Err(unsupported(format!(
                "content type {} is not accepted, only json",
                show(&cty)
            )));
        }
    }
    let kid = optional_string(header.remove("kid"), "kid")?;
    let typ = optional_string(header.remove("typ"), "typ")?;

    let payload_json = decode_segment(payload_b64, "payload")?;
    if first_non_space(&payload_json) != Some(b'{') {
        return Err(malformed("token payload is not a json object"));
    }
    let UniqueMap(claims) = serde_json::from_slice(&payload_json).map_err(|e| {
        malformed(format!(
            "token payload is not valid json: {}",
            strip_position(&e)
        ))
    })?;
    let signature = decode_segment(signature_b64, "signature")?;
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .unwrap_or(token);
    Ok(Parsed {
        alg,
        kid,
        typ,
        claims,
        signing_input,
        signature,
    })
}

/// `application/at+jwt` and `at+jwt` are the same type (RFC 8725 3.11, RFC 7515 4.1.9).
pub(crate) fn strip_application(media_type: &str) -> &str {
    match media_type.get(..12) {
        Some(head) if head.eq_ignore_ascii_case("application/") => {
            media_type.get(12..).unwrap_or("")
        }
        _ => media_type,
    }
}

fn strip_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(i) => message.get(..i).unwrap_or(&message).to_string(),
        None => message,
    }
}

/// Reads a NumericDate claim: a JSON number that is a non-negative integer (an integral float like `1.7e9` is accepted).
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, Rejection> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let bad = || {
        malformed(format!(
            "claim {name} is not a non-negative integral json number"
        ))
    };
    match value {
        Value::Number(n) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else if let Some(f) = n.as_f64() {
                // 2^64 as f64; anything at or above does not fit a u64.
                if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0
                {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(Some(f as u64))
                } else {
                    Err(bad())
                }
            } else {
                Err(bad())
            }
        }
        Value::Null => Err(bad()),
        _ => Err(bad()),
    }
}

/// Looks a claim up by exact name first, then as a dotted path through nested objects (`realm_access.roles`).
pub(crate) fn lookup<'c>(claims: &'c Map<String, Value>, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, Rejection> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(malformed(format!("claim {name} is not a string"))),
    }
}

fn string_list(
    value: Option<&Value>,
    name: &str,
    split_spaces: bool,
) -> Result<Vec<String>, Rejection> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if split_spaces => {
            Ok(s.split_ascii_whitespace().map(str::to_string).collect())
        }
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| malformed(format!("claim {name} has a non-string entry")))
            })
            .collect(),
        Some(_) => Err(malformed(format!(
            "claim {name} is not a string or an array of strings"
        ))),
    }
}

/// Everything from the payload the engine needs, typed once.
pub(crate) struct Extracted {
    pub(crate) sub: Option<String>,
    pub(crate) aud: Vec<String>,
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
    pub(crate) jti: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) roles: Vec<String>,
}

/// Types the registered and access-token claims; a claim of the wrong JSON type is malformed.
pub(crate) fn extract(
    claims: &Map<String, Value>,
    roles_claim: &str,
) -> Result<Extracted, Rejection> {
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    let aud = string_list(claims.get("aud"), "aud", false)?;
    let client_id = match string_claim(claims, "client_id")? {
        Some(id) => Some(id),
        None => string_claim(claims, "azp")?,
    };
    if matches!(claims.get("scope"), Some(Value::Array(_))) {
        return Err(malformed("claim scope is not a space-delimited string"));
    }
    let mut scopes: Vec<String> = Vec::new();
    let from_scope = string_list(claims.get("scope"), "scope", true)?;
    let from_scp = string_list(claims.get("scp"), "scp", true)?;
    for scope in from_scope.into_iter().chain(from_scp) {
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    let roles = string_list(lookup(claims, roles_claim), roles_claim, false)?;
    Ok(Extracted {
        sub: string_claim(claims, "sub")?,
        aud,
        exp,
        nbf,
        iat,
        jti: string_claim(claims, "jti")?,
        client_id,
        scopes,
        roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_spreads_small_changes() {
        assert_eq!(fingerprint("abc"), fingerprint("abc"));
        let inputs = [
            "",
            "a",
            "b",
            "ab",
            "ba",
            "abcdefgh",
            "abcdefgi",
            "abcdefghi",
            "abcdefgh\0",
        ];
        let mut seen = std::collections::HashSet::new();
        for i in inputs {
            assert!(seen.insert(fingerprint(i)), "collision on {i:?}");
        }
        // A one-bit change flips roughly half the output bits.
        let flipped = (fingerprint("token-0") ^ fingerprint("token-1")).count_ones();
        assert!((16..=48).contains(&flipped), "{flipped}");
    }

    #[test]
    fn show_quotes_escapes_and_truncates() {
        assert_eq!(show("a\"b"), r#""a\"b""#);
        assert_eq!(show("a\nb"), r#""a\nb""#);
        let long = "é".repeat(100);
        assert_eq!(show(&long), format!("{:?}...", "é".repeat(64)));
    }

    #[test]
    fn strip_application_only_strips_the_prefix() {
        assert_eq!(strip_application("application/at+jwt"), "at+jwt");
        assert_eq!(strip_application("APPLICATION/jwt"), "jwt");
        assert_eq!(strip_application("at+jwt"), "at+jwt");
        assert_eq!(strip_application("app"), "app");
    }

    #[test]
    fn lookup_prefers_exact_names_then_walks_dotted_paths() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "https://example.com/roles": ["a"],
            "realm_access": {"roles": ["b"]},
            "realm_access.roles": ["c"]
        }))
        .unwrap();
        assert_eq!(
            lookup(&claims, "https://example.com/roles"),
            Some(&serde_json::json!(["a"]))
        );
        assert_eq!(
            lookup(&claims, "realm_access.roles"),
            Some(&serde_json::json!(["c"]))
        );
        let nested: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"a": {"b": {"c": 1}}})).unwrap();
        assert_eq!(lookup(&nested, "a.b.c"), Some(&serde_json::json!(1)));
        assert_eq!(lookup(&nested, "a.x.c"), None);
        assert_eq!(lookup(&nested, "a.b.c.d"), None);
    }
}
