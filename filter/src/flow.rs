//! The per-request logic: read the request through [`Host`], ask the engine, and turn its [`Decision`] into
//! header edits, a local 401/403 (a trailers-only gRPC answer for a gRPC call), a report-only mark, or a pause
//! while a key set is fetched; every final decision is also published as request properties for the access log.
//! It is host-agnostic so the unit tests below drive it with a recording double instead of Envoy.

use std::borrow::Cow;

use edgewarden_core::cache::CacheOutcome;
use edgewarden_core::challenge;
use edgewarden_core::config::{strip_cookie, strip_query_param, DecisionProperties, StripAction};
use edgewarden_core::decision::{Decision, Reason, Verdict};
use edgewarden_core::engine::Request;
use edgewarden_core::revocation::{NoRevocations, RevocationView};
use proxy_wasm::types::LogLevel;

use crate::headers::HeaderMap;
use crate::host::Host;
use crate::jwks_fetch::{self, Permit, Trigger};
use crate::metrics::Stat;
use crate::state::{Control, Settings, VmState, REPORT_ONLY_HEADER};

/// What became of a request after one pass through the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Let it through to the upstream (allowed, or report-only).
    Continue,
    /// Answered locally with 401 or 403.
    Denied,
    /// Paused: this request dispatched a JWKS fetch for `issuer` and resumes when it answers.
    FetchingJwks {
        /// Issuer index.
        issuer: usize,
    },
    /// Paused: another context's JWKS fetch for `issuer` is in flight; that context resumes this one.
    WaitingForJwks {
        /// Issuer index.
        issuer: usize,
    },
}

/// The `:path` without query string or fragment: what rules match on and what logs may show.
pub fn path_without_query(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    path.get(..end).unwrap_or(path)
}

/// Runs the engine on the request described by `headers`.
fn evaluate(host: &dyn Host, vm: &VmState, headers: &HeaderMap, now: u64) -> Decision {
    let full_path = headers.get(":path").unwrap_or("/");
    let method = headers.get(":method").unwrap_or("GET");
    let lookup = |name: &str| headers.get(name);
    let extracted = vm.settings.token_source.extract(&lookup, full_path);
    let mut req = Request {
        method,
        path: path_without_query(full_path),
        token: None,
    };
    let decision = {
        // Borrows end with this block: evaluation makes no host calls.
        let engine = vm.engine.borrow();
        match &extracted {
            Ok(token) => {
                req.token = token.as_deref();
                let mut cache = vm.cache.borrow_mut();
                let revocation = vm.control.as_ref().map(|c| c.revocation.borrow());
                let view: &dyn RevocationView = match &revocation {
                    Some(state) => &**state,
                    None => &NoRevocations,
                };
                engine.evaluate(&req, Some(&mut cache), view, now)
            }
            // A credential presented but unusable (`Authorization: Basic ...` where a bearer token is expected)
            // is refused on every route: the engine never downgrades a bad credential to anonymous access.
            Err(rejection) => engine.rejected(&req, rejection.clone()),
        }
    };
    match decision.cache {
        CacheOutcome::Hit => host.count(Stat::CacheHit),
        CacheOutcome::Miss => host.count(Stat::CacheMiss),
        CacheOutcome::Bypass => {}
    }
    decision
}

/// One full pass over the request of the effective context `ctx`. With `allow_fetch`, a token naming an unknown
/// `kid` of a remote issuer may pause the request while the key set is (re)fetched.
pub fn process(host: &mut dyn Host, vm: &VmState, ctx: u32, allow_fetch: bool) -> Outcome {
    let headers = host.request_headers();
    let now = host.now();
    let mut decision = evaluate(host, vm, &headers, now);
    if allow_fetch && decision.verdict == Verdict::Deny && decision.reason == Reason::UnknownKid {
        if let Some(issuer) = decision.refetch_jwks {
            // Another worker may already have fetched the rotated keys.
            if jwks_fetch::sync_from_shared(host, vm, issuer, now) {
                decision = evaluate(host, vm, &headers, now);
            }
            if decision.reason == Reason::UnknownKid {
                if let Some(outcome) = refetch(host, vm, ctx, issuer, now) {
                    return outcome;
                }
            }
        }
    }
    let outcome = apply(host, &vm.settings, &headers, &decision);
    if let Some(control) = &vm.control {
        record_usage(host, &vm.settings, control, &headers, &decision, now);
    }
    outcome
}

/// Counts the decision for the usage report, and a token let through on stale revocation state (`on_stale: allow`).
fn record_usage(
    host: &mut dyn Host,
    settings: &Settings,
    control: &Control,
    headers: &HeaderMap,
    decision: &Decision,
    now: u64,
) {
    if decision.verdict == Verdict::Allow
        && decision.token.is_some()
        && control.revocation.borrow().is_stale(now)
    {
        host.count(Stat::RevocationStaleAllowed);
    }
    let path = path_without_query(headers.get(":path").unwrap_or("/"));
    let route = settings.route_label(decision.rule);
    // The address lookup is a property read, which never re-enters the VM, so holding the reporter is sound.
    let dropped = control
        .usage
        .borrow_mut()
        .record(decision, route, path, now, &mut || host.client_address());
    if dropped > 0 {
        host.count_n(Stat::UsageDropped, dropped);
    }
}

/// Decides what to do about an unknown `kid`: fetch, wait for a fetch, or give up (None: deny as decided).
fn refetch(
    host: &mut dyn Host,
    vm: &VmState,
    ctx: u32,
    issuer: usize,
    now: u64,
) -> Option<Outcome> {
    let permit = vm.jwks.borrow().refetch_permit(issuer, now);
    match permit {
        Permit::Wait => {
            vm.jwks.borrow_mut().add_waiter(issuer, ctx);
            Some(Outcome::WaitingForJwks { issuer })
        }
        Permit::Dispatch => {
            match jwks_fetch::start_fetch(host, vm, issuer, ctx, Trigger::UnknownKid, now) {
                Ok(()) => {
                    host.count(Stat::JwksRefetch);
                    Some(Outcome::FetchingJwks { issuer })
                }
                Err(e) => {
                    // Debug only: under load every such request would repeat it; the root's tick warns.
                    host.log(LogLevel::Debug, &e);
                    None
                }
            }
        }
        Permit::RateLimited => {
            host.count(Stat::JwksRefetchRateLimited);
            None
        }
        Permit::NotRemote => None,
    }
}

/// The request properties every final decision sets (Envoy filter state `wasm.edgewarden.<field>`): the reason,
/// the matched rule's route label, and the verified token's `sub`, `client_id` and `jti` when it has them.
pub const DECISION_PROPERTIES: [&str; 5] = [
    "edgewarden.reason",
    "edgewarden.rule",
    "edgewarden.sub",
    "edgewarden.client_id",
    "edgewarden.jti",
];

/// The one property `"decision_properties": "one"` sets: every field as logfmt `key=value` pairs.
pub const DECISION_PROPERTY: &str = "edgewarden.decision";

/// Longest claim value published as a property; longer ones are cut (at a character boundary).
pub const MAX_PROPERTY_BYTES: usize = 256;

/// Publishes the decision for the access log and later filters as `decision_properties` says: one property per
/// field (each one host call, and an access log or RBAC rule reads each alone), or all of them in one, or none.
/// Only claims of a verified token are published, never the token itself, and a claim is cut to
/// [`MAX_PROPERTY_BYTES`] without control characters (an access log line must not be split by a claim).
fn publish_decision(host: &mut dyn Host, settings: &Settings, decision: &Decision) {
    let [reason, rule, sub, client_id, jti] = DECISION_PROPERTIES;
    let claims = decision.token.as_ref().map(|token| {
        [
            (sub, &token.sub),
            (client_id, &token.client_id),
            (jti, &token.jti),
        ]
    });
    match settings.decision_properties {
        DecisionProperties::None => {}
        DecisionProperties::Each => {
            host.set_request_property(reason, decision.reason.as_str());
            host.set_request_property(rule, settings.route_label(decision.rule));
            for (name, value) in claims.iter().flatten() {
                if let Some(value) = value {
                    host.set_request_property(name, &loggable(value));
                }
            }
        }
        DecisionProperties::One => {
            let mut line = String::with_capacity(256);
            logfmt_pair(&mut line, reason, decision.reason.as_str());
            logfmt_pair(&mut line, rule, settings.route_label(decision.rule));
            for (name, value) in claims.iter().flatten() {
                if let Some(value) = value {
                    logfmt_pair(&mut line, name, &loggable(value));
                }
            }
            host.set_request_property(DECISION_PROPERTY, &line);
        }
    }
}

/// Appends ` key=value` (no leading space for the first pair), `key` being the property name without its
/// `edgewarden.` prefix; a value that is empty or holds a space, `=`, `"` or a backslash is quoted, with `"` and
/// backslashes escaped, as logfmt parsers expect.
fn logfmt_pair(line: &mut String, property: &str, value: &str) {
    if !line.is_empty() {
        line.push(' ');
    }
    line.push_str(property.strip_prefix("edgewarden.").unwrap_or(property));
    line.push('=');
    let special = |b: &u8| matches!(b, b' ' | b'=' | b'"' | b'\\');
    if !value.is_empty() && !value.as_bytes().iter().any(special) {
        line.push_str(value);
        return;
    }
    line.push('"');
    // Split at the ASCII bytes to escape: every other byte, multi-byte characters included, is copied as it is.
    let mut rest = value;
    while let Some(at) = rest.bytes().position(|b| b == b'"' || b == b'\\') {
        line.push_str(&rest[..at]);
        line.push('\\');
        line.push_str(&rest[at..=at]);
        rest = &rest[at + 1..];
    }
    line.push_str(rest);
    line.push('"');
}

/// `value` without control characters, at most [`MAX_PROPERTY_BYTES`] long; borrowed when it already is.
fn loggable(value: &str) -> Cow<'_, str> {
    // Bytes, not characters, on the path every request takes: C0 controls and DEL are single bytes, and every C1
    // control (U+0080..U+009F) is encoded with the lead byte 0xC2, so a value without any of these bytes has no
    // control character. One with a 0xC2 (`é` is 0xC3, but `§` is 0xC2 0xA7) takes the exact check.
    let suspect = |b: &u8| *b < 0x20 || *b == 0x7f || *b == 0xc2;
    if value.len() <= MAX_PROPERTY_BYTES
        && (!value.as_bytes().iter().any(suspect) || !value.chars().any(char::is_control))
    {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(MAX_PROPERTY_BYTES));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_PROPERTY_BYTES {
            break;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Applies a decision to the request: header hygiene always, the decision published, then pass, mark or deny.
pub fn apply(
    host: &mut dyn Host,
    settings: &Settings,
    headers: &HeaderMap,
    decision: &Decision,
) -> Outcome {
    publish_decision(host, settings, decision);
    // Client-sent copies of headers the filter owns are removed on every request, whatever the decision,
    // so the upstream can trust them. Only headers actually present cost a host call.
    for name in settings
        .forward_headers
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(REPORT_ONLY_HEADER))
    {
        if headers.get(name).is_some() {
            host.remove_request_header(name);
        }
    }
    match decision.verdict {
        Verdict::Allow => {
            for (name, value) in decision.headers_to_set() {
                host.set_request_header(name, value);
            }
            strip_credential(host, settings, headers);
            host.count(Stat::Allowed);
            Outcome::Continue
        }
        Verdict::Deny if settings.report_only => {
            let reason = decision.reason.as_str();
            host.count(Stat::ReportOnlyWouldDeny);
            host.count(Stat::ReportOnlyWouldDenyReason(decision.reason));
            host.set_request_header(REPORT_ONLY_HEADER, &format!("{reason} {}", decision.status));
            let method = headers.get(":method").unwrap_or("-");
            let path = path_without_query(headers.get(":path").unwrap_or("-"));
            host.log(
                LogLevel::Info,
                &format!(
                    "edgewarden: report-only: would deny {method} {path} with {} {reason}: {}",
                    decision.status, decision.description
                ),
            );
            strip_credential(host, settings, headers);
            Outcome::Continue
        }
        Verdict::Deny => {
            deny(host, settings, headers, decision);
            Outcome::Denied
        }
    }
}

/// Answers 401/403 per RFC 6750 with the JSON error body; never echoes the token. A gRPC call gets what Envoy's own
/// filters give one: HTTP 200, trailers-only, `grpc-status` 16 (UNAUTHENTICATED) or 7 (PERMISSION_DENIED) and the
/// description as `grpc-message`, with the same `WWW-Authenticate` challenge.
fn deny(host: &mut dyn Host, settings: &Settings, headers: &HeaderMap, decision: &Decision) {
    host.count(Stat::Denied(decision.reason));
    let challenge = challenge::www_authenticate(&settings.realm, decision);
    if let Some(grpc_status) = challenge::grpc_status(decision) {
        if headers
            .get("content-type")
            .is_some_and(challenge::is_grpc_content_type)
        {
            host.send_grpc_response(
                grpc_status,
                &decision.description,
                &[("www-authenticate", challenge.as_str())],
            );
            return;
        }
    }
    let body = challenge::json_body(decision);
    host.send_response(
        decision.status,
        &[
            ("www-authenticate", challenge.as_str()),
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ],
        &body,
    );
}

/// Removes the credential before the request goes upstream, when `strip_token` is on:
/// the header for a header source, the one cookie for a cookie source, the one parameter for a query source.
fn strip_credential(host: &mut dyn Host, settings: &Settings, headers: &HeaderMap) {
    if !settings.strip_token {
        return;
    }
    match settings.token_source.strip_action() {
        StripAction::RemoveHeader(name) => {
            if headers.get(name).is_some() {
                host.remove_request_header(name);
            }
        }
        StripAction::RemoveCookie(name) => {
            let cookies: Vec<&str> = headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                .map(|(_, v)| v)
                .collect();
            if cookies.is_empty() {
                return;
            }
            match strip_cookie(&cookies.join("; "), name) {
                Some(kept) => host.set_request_header("cookie", &kept),
                None => host.remove_request_header("cookie"),
            }
        }
        StripAction::RemoveQueryParam(name) => {
            if let Some(path) = headers.get(":path") {
                let stripped = strip_query_param(path, name);
                if stripped != path {
                    host.set_request_header(":path", &stripped);
                }
            }
        }
    }
}

/// After a fetch completes, settles the requests that waited for it: each waiter's context is made effective,
/// its request re-evaluated with the new keys and resumed or denied; finally `own_ctx` is made effective again.
pub fn resolve_waiters(host: &mut dyn Host, vm: &VmState, waiters: &[u32], own_ctx: u32) {
    if waiters.is_empty() {
        return;
    }
    for &w in waiters {
        // A waiter whose stream already ended is gone from the host: skip it.
        if host.set_effective_context(w) && process(host, vm, w, false) == Outcome::Continue {
            host.resume_request();
        }
    }
    host.set_effective_context(own_ctx);
}

#[cfg(test)]
mod tests;
