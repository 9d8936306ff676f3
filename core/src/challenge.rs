//! RFC 6750 answers for refused requests: the `WWW-Authenticate` challenge and the JSON body, and for gRPC calls
//! the gRPC status. The challenge carries only a short fixed phrase per reason (never token-derived text), the body
//! (and a gRPC call's `grpc-message`) the full description; all are built here so the filter and the admin API answer
//! identically.

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
/// `error` is the RFC 6750 code and appears only when there is one: a request without a token gets
/// `{"error_description": "no token presented", "reason": "missing_token"}` (RFC 6750 3.1: no error code when
/// the request lacks authentication). `reason` is always there for machines; the token itself is never echoed.
pub fn json_body(d: &Decision) -> String {
    let mut body = serde_json::Map::new();
    if let Some(error) = error_code(d) {
        body.insert("error".into(), error.into());
    }
    body.insert("error_description".into(), d.description.as_ref().into());
    body.insert("reason".into(), d.reason.as_str().into());
    if let Some(scope) = &d.required_scope {
        body.insert("scope".into(), scope.clone().into());
    }
    serde_json::Value::Object(body).to_string()
}

/// gRPC status `UNAUTHENTICATED`: what a refused gRPC call gets where HTTP would answer 401.
pub const GRPC_UNAUTHENTICATED: u32 = 16;
/// gRPC status `PERMISSION_DENIED`: what a refused gRPC call gets where HTTP would answer 403.
pub const GRPC_PERMISSION_DENIED: u32 = 7;

/// The gRPC status a refused decision answers a gRPC call with, as Envoy's own filters (`jwt_authn`, `ext_authz`)
/// map their 401 and 403: [`GRPC_UNAUTHENTICATED`] or [`GRPC_PERMISSION_DENIED`]; `None` for an allowed decision.
/// The call's `grpc-message` is the decision's description, the same text as the JSON body's `error_description`.
pub fn grpc_status(d: &Decision) -> Option<u32> {
    match d.status {
        401 => Some(GRPC_UNAUTHENTICATED),
        403 => Some(GRPC_PERMISSION_DENIED),
        _ => None,
    }
}

/// Whether a request with this `content-type` is a gRPC call, decided exactly as Envoy decides it for its own local
/// replies: `application/grpc` or `application/grpc+<codec>` (`application/grpc-web` is not; Envoy's `grpc_web`
/// filter turns it into gRPC first). Envoy answers only such a request as gRPC, so only such a request may get one.
pub fn is_grpc_content_type(content_type: &str) -> bool {
    match content_type.strip_prefix("application/grpc") {
        Some(rest) => rest.is_empty() || rest.starts_with('+'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheOutcome;
    use crate::token::Rejection;

    fn decision(reason: Reason, description: &str, scope: Option<&str>) -> Decision {
        let mut d = Decision::from_rejection(
            Rejection::new(reason, description),
            None,
            CacheOutcome::Bypass,
        );
        d.required_scope = scope.map(str::to_string);
        d
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let cases = vec![
            (
                decision(Reason::MissingToken, "no token presented", None),
                r#"Bearer realm="edgewarden""#,
            ),
            (
                decision(Reason::Expired, "token expired 42s ago (leeway 60s)", None),
                r#"Bearer realm="edgewarden", error="invalid_token", error_description="token expired""#,
            ),
            (
                decision(Reason::Revoked, "token revoked by jti", None),
                r#"Bearer realm="edgewarden", error="invalid_token", error_description="token revoked""#,
            ),
            (
                decision(Reason::BadSignature, "x", None),
                r#"Bearer realm="edgewarden", error="invalid_token", error_description="token signature invalid""#,
            ),
            (
                decision(
                    Reason::InsufficientScope,
                    "missing scope \"write\"",
                    Some("read write"),
                ),
                r#"Bearer realm="edgewarden", error="insufficient_scope", error_description="token lacks a required scope", scope="read write""#,
            ),
            (
                decision(Reason::InsufficientRole, "requires one of roles", None),
                r#"Bearer realm="edgewarden", error="insufficient_scope", error_description="token lacks a required role""#,
            ),
        ];
        for (d, expected) in cases {
            assert_eq!(www_authenticate("edgewarden", &d), expected);
        }
    }

    #[test]
    fn refusals_map_to_grpc_statuses_as_envoy_maps_401_and_403() {
        for reason in Reason::ALL {
            let d = decision(*reason, "x", None);
            let expected = match reason.status() {
                401 => Some(16),
                403 => Some(7),
                _ => None,
            };
            assert_eq!(grpc_status(&d), expected, "{reason}");
        }
    }

    #[test]
    fn grpc_content_types_are_recognised_as_envoy_recognises_them() {
        for (content_type, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc+json", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/grpcx", false),
            ("application/json", false),
            ("Application/grpc", false),
            ("", false),
        ] {
            assert_eq!(is_grpc_content_type(content_type), grpc, "{content_type}");
        }
    }

    #[test]
    fn every_reason_phrase_is_quoted_string_safe() {
        for reason in Reason::ALL {
            let phrase = reason.phrase();
            assert_eq!(quoted_string_safe(phrase), phrase, "{reason}");
            assert!(!phrase.is_empty());
        }
    }

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes_and_drop_controls() {
        assert_eq!(quoted_string_safe("a\"b\\c\r\nd\te"), "a\\\"b\\\\cde");
        let d = decision(Reason::InsufficientScope, "x", Some("a\"b"));
        assert!(www_authenticate("r\"e\nalm", &d).starts_with(r#"Bearer realm="r\"ealm""#));
        assert!(www_authenticate("r", &d).ends_with(r#"scope="a\"b""#));
    }

    #[test]
    fn json_body_carries_code_description_and_reason() {
        let body: serde_json::Value = serde_json::from_str(&json_body(&decision(
            Reason::Expired,
            "token expired 42s ago (leeway 60s)",
            None,
        )))
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "invalid_token", "error_description": "token expired 42s ago (leeway 60s)", "reason": "expired"})
        );
        let missing: serde_json::Value = serde_json::from_str(&json_body(&decision(
            Reason::MissingToken,
            "no token presented",
            None,
        )))
        .unwrap();
        assert_eq!(
            missing,
            serde_json::json!({"error_description": "no token presented", "reason": "missing_token"})
        );
        let scope: serde_json::Value = serde_json::from_str(&json_body(&decision(
            Reason::InsufficientScope,
            "missing",
            Some("read"),
        )))
        .unwrap();
        assert_eq!(
            (scope["error"].as_str(), scope["scope"].as_str()),
            (Some("insufficient_scope"), Some("read"))
        );
    }
}
