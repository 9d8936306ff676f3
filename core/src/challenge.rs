//! RFC 6750 answers for refused requests: the `WWW-Authenticate` challenge and the JSON body.
//! The challenge carries only a short fixed phrase per reason (never token-derived text), the body
//! the full description; both are built here so the filter and the admin API answer identically.

use crate::decision::{Decision, Reason};

/// Makes `s` safe inside an RFC 7230 quoted-string: escapes `"` and `\`, drops control characters.
pub fn quoted_string_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The RFC 6750 error code of a decision: `None` when no token was presented (and for allowed decisions),
/// `insufficient_scope` for 403, else `invalid_token`.
pub fn error_code(d: &Decision) -> Option<&'static str> {
    match d.reason {
        Reason::Allowed | Reason::Anonymous | Reason::MissingToken => None,
        r if r.status() == 403 => Some("insufficient_scope"),
        _ => Some("invalid_token"),
    }
}

/// The `WWW-Authenticate` header value for a decision.
///
/// - missing token: `Bearer realm="edgewarden"` (no error code, RFC 6750 3.1)
/// - other 401: `Bearer realm="edgewarden", error="invalid_token", error_description="token expired"`
/// - 403: `Bearer realm="edgewarden", error="insufficient_scope", error_description="...", scope="read write"`
pub fn www_authenticate(realm: &str, d: &Decision) -> String {
    let mut out = format!("Bearer realm=\"{}\"", quoted_string_safe(realm));
    if let Some(code) = error_code(d) {
        out.push_str(", error=\"");
        out.push_str(code);
        out.push_str("\", error_description=\"");
        out.push_str(&quoted_string_safe(d.reason.phrase()));
        out.push('"');
        if code == "insufficient_scope" {
            if let Some(scope) = &d.required_scope {
                out.push_str(", scope=\"");
                out.push_str(&quoted_string_safe(scope));
                out.push('"');
            }
        }
    }
    out
}

/// The JSON body for a decision: `{"error": "invalid_token", "error_description": "token expired 42s ago (leeway 60s)", "reason": "expired"}`.
/// `error` is the RFC 6750 code (`missing_token` when no token was presented); the token itself is never echoed.
pub fn json_body(d: &Decision) -> String {
    let error = error_code(d).unwrap_or_else(|| d.reason.as_str());
    let mut body = serde_json::Map::new();
    body.insert("error".into(), error.into());
    body.insert("error_description".into(), d.description.clone().into());
    body.insert("reason".into(), d.reason.as_str().into());
    if let Some(scope) = &d.required_scope {
        body.insert("scope".into(), scope.clone().into());
    }
    serde_json::Value::Object(body).to_string()
}
