//! Route rules: which requests need which token properties, first match wins.
//! Paths are normalised before matching (dot segments, repeated or encoded slashes, encoded unreserved
//! characters) so `/public/../admin` cannot borrow the anonymous rule of `/public`. Also holds the
//! semantic configuration checks, which are mostly about rules.

use std::borrow::Cow;

use crate::config::{Config, ConfigError, RuleConfig};
use crate::decision::Reason;
use crate::token::VerifiedToken;

/// Methods a rule may name.
pub const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Exact(String),
    Prefix(String),
}

/// A rule ready for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompiledRule {
    matcher: Matcher,
    methods: Vec<String>,
    pub(crate) allow_anonymous: bool,
    require_scopes: Vec<String>,
    require_any_scopes: Vec<String>,
    require_roles: Vec<String>,
}

/// Compiles validated rules; a rule with neither prefix nor path (impossible after validation) matches nothing.
pub(crate) fn compile(rules: &[RuleConfig]) -> Vec<CompiledRule> {
    rules
        .iter()
        .map(|r| CompiledRule {
            matcher: match (&r.r#match.path, &r.r#match.prefix) {
                (Some(path), _) => Matcher::Exact(path.clone()),
                (None, Some(prefix)) => Matcher::Prefix(prefix.clone()),
                // Unreachable after validation; a NUL-byte path never matches a real request.
                (None, None) => Matcher::Exact("\0".to_string()),
            },
            methods: r.r#match.methods.clone(),
            allow_anonymous: r.allow_anonymous,
            require_scopes: r.require_scopes.clone(),
            require_any_scopes: r.require_any_scopes.clone(),
            require_roles: r.require_roles.clone(),
        })
        .collect()
}

/// Index of the first rule matching `method` and `path` (the path is normalised first, any query is ignored).
pub(crate) fn find(rules: &[CompiledRule], method: &str, path: &str) -> Option<usize> {
    if rules.is_empty() {
        return None;
    }
    let path = normalize_path(path);
    rules.iter().position(|rule| {
        let path_ok = match &rule.matcher {
            Matcher::Exact(exact) => *path == **exact,
            Matcher::Prefix(prefix) => prefix_matches(prefix, &path),
        };
        path_ok
            && (rule.methods.is_empty()
                || rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
    })
}

/// Prefix matching on segment boundaries: `/api` matches `/api`, `/api/` and `/api/x` but not `/apix`;
/// a prefix ending in `/` (`/api/`) matches exactly what starts with it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises a request path for rule matching: drops the query and fragment, decodes percent-encoded unreserved
/// characters and encoded slashes and backslashes (`%2F`, `%5C`), turns `\` into `/`, merges repeated slashes and
/// removes `.` and `..` segments (RFC 3986 5.2.4). Upstreams differ in what they decode; matching the most decoded
/// form means an encoded path cannot slip past a rule meant for its decoded twin.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let suspicious =
        path.contains('%') || path.contains('\\') || path.contains("//") || path.contains("/.");
    if !suspicious && path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    // Decode what matters for routing; leave every other escape as it is.
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(unhex),
                bytes.get(i + 2).copied().and_then(unhex),
            ) {
                let c = hi << 4 | lo;
                if c.is_ascii_alphanumeric()
                    || matches!(c, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\')
                {
                    decoded.push(if c == b'\\' { b'/' } else { c });
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(if b == b'\\' { b'/' } else { b });
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/') {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// A rule requirement the token does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unmet {
    pub(crate) reason: Reason,
    pub(crate) description: String,
    pub(crate) required_scope: Option<String>,
}

/// Shows a token-derived list in a description: bounded in length, quoted, never the token.
pub(crate) fn show_list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    let mut shown: Vec<String> = items
        .iter()
        .take(10)
        .map(|s| crate::engine::show(s))
        .collect();
    if items.len() > 10 {
        shown.push(format!("and {} more", items.len() - 10));
    }
    shown.join(", ")
}

impl CompiledRule {
    /// Checks the scope and role requirements of this rule against a verified token.
    pub(crate) fn check(&self, token: &VerifiedToken) -> Result<(), Unmet> {
        let has_scope = |s: &String| token.scopes.iter().any(|t| t == s);
        let missing: Vec<String> = self
            .require_scopes
            .iter()
            .filter(|s| !has_scope(s))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(Unmet {
                reason: Reason::InsufficientScope,
                description: format!(
                    "missing scope {} (token has {})",
                    show_list(&missing),
                    show_list(&token.scopes)
                ),
                required_scope: Some(self.require_scopes.join(" ")),
            });
        }
        if !self.require_any_scopes.is_empty() && !self.require_any_scopes.iter().any(has_scope) {
            return Err(Unmet {
                reason: Reason::InsufficientScope,
                description: format!(
                    "requires one of scopes {} (token has {})",
                    show_list(&self.require_any_scopes),
                    show_list(&token.scopes)
                ),
                required_scope: Some(self.require_any_scopes.join(" ")),
            });
        }
        if !self.require_roles.is_empty()
            && !self.require_roles.iter().any(|r| token.roles.contains(r))
        {
            return Err(Unmet {
                reason: Reason::InsufficientRole,
                description: format!(
                    "requires one of roles {} (token has {})",
                    show_list(&self.require_roles),
                    show_list(&token.roles)
                ),
                required_scope: None,
            });
        }
        Ok(())
    }
}

fn is_header_name(name: &str) -> bool {
    // RFC 9110 token characters, lower case (HTTP/2 and Envoy use lower-case names).
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn is_scope_token(s: &str) -> bool {
    // RFC 6749 scope-token: %x21 / %x23-5B / %x5D-7E (no space, no quote, no backslash).
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn is_normalized_path(p: &str) -> bool {
    p.starts_with('/') && normalize_path(p) == p && !p.contains(['?', '#'])
}

fn check_nonempty(field: String, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    Ok(())
}

/// Semantic checks of a parsed configuration; the first problem found is returned, naming its field.
pub(crate) fn validate_config(c: &Config) -> Result<(), ConfigError> {
    if c.issuers.is_empty() {
        return Err(ConfigError::new(
            "issuers",
            "at least one issuer is required",
        ));
    }
    for (i, issuer) in c.issuers.iter().enumerate() {
        let at = |f: &str| format!("issuers[{i}].{f}");
        check_nonempty(at("issuer"), &issuer.issuer)?;
        if let Some(j) = c
            .issuers
            .iter()
            .take(i)
            .position(|o| o.issuer == issuer.issuer)
        {
            return Err(ConfigError::new(
                at("issuer"),
                format!("duplicate issuer, also issuers[{j}]"),
            ));
        }
        for (k, aud) in issuer.audiences.iter().enumerate() {
            check_nonempty(at(&format!("audiences[{k}]")), aud)?;
        }
        if issuer.jwks.is_none() && issuer.remote_jwks.is_none() {
            return Err(ConfigError::new(
                format!("issuers[{i}]"),
                "needs jwks or remote_jwks",
            ));
        }
        if let Some(remote) = &issuer.remote_jwks {
            check_nonempty(at("remote_jwks.cluster"), &remote.cluster)?;
            if !remote.path.starts_with('/') {
                return Err(ConfigError::new(
                    at("remote_jwks.path"),
                    "must start with /",
                ));
            }
            if let Some(authority) = &remote.authority {
                check_nonempty(at("remote_jwks.authority"), authority)?;
            }
            if remote.refresh_interval_seconds == 0 {
                return Err(ConfigError::new(
                    at("remote_jwks.refresh_interval_seconds"),
                    "must be at least 1",
                ));
            }
            if remote.timeout_ms == 0 {
                return Err(ConfigError::new(
                    at("remote_jwks.timeout_ms"),
                    "must be at least 1",
                ));
            }
        }
    }
    if c.clock_skew_seconds > 86_400 {
        return Err(ConfigError::new(
            "clock_skew_seconds",
            format!("{} is more than a day (86400)", c.clock_skew_seconds),
        ));
    }
    for (i, claim) in c.required_claims.iter().enumerate() {
        check_nonempty(format!("required_claims[{i}]"), claim)?;
    }
    for (i, typ) in c.allowed_typ.iter().enumerate() {
        check_nonempty(format!("allowed_typ[{i}]"), typ)?;
    }
    if c.roles_claim.is_empty() || c.roles_claim.split('.').any(str::is_empty) {
        return Err(ConfigError::new(
            "roles_claim",
            "must be a claim name or a dotted path without empty parts",
        ));
    }
    if !(256..=1_048_576).contains(&c.max_token_bytes) {
        return Err(ConfigError::new(
            "max_token_bytes",
            format!("{} is outside 256..=1048576", c.max_token_bytes),
        ));
    }
    for (i, rule) in c.rules.iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        let m = &rule.r#match;
        match (&m.prefix, &m.path) {
            (Some(_), Some(_)) => return Err(ConfigError::new(at("match"), "set exactly one of prefix or path, not both")),
            (None, None) => return Err(ConfigError::new(at("match"), "set exactly one of prefix or path")),
            (Some(p), None) if !is_normalized_path(p) => {
                return Err(ConfigError::new(
                    at("match.prefix"),
                    format!("{p:?} must start with / and be normalised (no //, . or .. segments, query or escapes)"),
                ))
            }
            (None, Some(p)) if !is_normalized_path(p) => {
                return Err(ConfigError::new(
                    at("match.path"),
                    format!("{p:?} must start with / and be normalised (no //, . or .. segments, query or escapes)"),
                ))
            }
            _ => {}
        }
        for (k, method) in m.methods.iter().enumerate() {
            if !KNOWN_METHODS.contains(&method.as_str()) {
                return Err(ConfigError::new(
                    at(&format!("match.methods[{k}]")),
                    format!(
                        "{method:?} is not an upper-case http method ({})",
                        KNOWN_METHODS.join(", ")
                    ),
                ));
            }
        }
        if rule.allow_anonymous
            && !(rule.require_scopes.is_empty()
                && rule.require_any_scopes.is_empty()
                && rule.require_roles.is_empty())
        {
            return Err(ConfigError::new(
                at("allow_anonymous"),
                "an anonymous rule cannot also require scopes or roles",
            ));
        }
        for (list, name) in [
            (&rule.require_scopes, "require_scopes"),
            (&rule.require_any_scopes, "require_any_scopes"),
        ] {
            for (k, scope) in list.iter().enumerate() {
                if !is_scope_token(scope) {
                    return Err(ConfigError::new(
                        at(&format!("{name}[{k}]")),
                        format!(
                            "{scope:?} is not a valid scope (no spaces, quotes or backslashes)"
                        ),
                    ));
                }
            }
        }
        for (k, role) in rule.require_roles.iter().enumerate() {
            check_nonempty(at(&format!("require_roles[{k}]")), role)?;
        }
    }
    match &c.token_source {
        crate::config::TokenSource::Header { name, prefix } => {
            if !is_header_name(name) {
                return Err(ConfigError::new(
                    "token_source.header",
                    format!("{name:?} is not a header name"),
                ));
            }
            if let Some(prefix) = prefix {
                check_nonempty("token_source.prefix".to_string(), prefix)?;
            }
        }
        crate::config::TokenSource::Cookie { name } => {
            check_nonempty("token_source.cookie".to_string(), name)?
        }
        crate::config::TokenSource::Query { name } => {
            check_nonempty("token_source.query".to_string(), name)?
        }
    }
    for (i, fc) in c.forward_claims.iter().enumerate() {
        check_nonempty(format!("forward_claims[{i}].claim"), &fc.claim)?;
        if !is_header_name(&fc.header) {
            return Err(ConfigError::new(
                format!("forward_claims[{i}].header"),
                format!("{:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only; any case, read lower-cased)", fc.header),
            ));
        }
    }
    if let Some(h) = &c.forward_payload_header {
        if !is_header_name(h) {
            return Err(ConfigError::new(
                "forward_payload_header",
                format!("{h:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only; any case, read lower-cased)"),
            ));
        }
    }
    if c.realm.is_empty()
        || c.realm
            .chars()
            .any(|ch| ch == '"' || ch == '\\' || ch.is_control())
    {
        return Err(ConfigError::new(
            "realm",
            "must be non-empty without quotes, backslashes or control characters",
        ));
    }
    if c.cache.max_entries > 1_000_000 {
        return Err(ConfigError::new(
            "cache.max_entries",
            format!("{} is more than 1000000", c.cache.max_entries),
        ));
    }
    if c.cache.max_ttl_seconds == 0 {
        return Err(ConfigError::new(
            "cache.max_ttl_seconds",
            "must be at least 1",
        ));
    }
    if let Some(cp) = &c.control_plane {
        check_nonempty("control_plane.cluster".to_string(), &cp.cluster)?;
        check_nonempty("control_plane.api_key".to_string(), &cp.api_key)?;
        check_nonempty("control_plane.edge_name".to_string(), &cp.edge_name)?;
        if cp.timeout_ms == 0 {
            return Err(ConfigError::new(
                "control_plane.timeout_ms",
                "must be at least 1",
            ));
        }
        if cp.snapshot_timeout_ms == 0 {
            return Err(ConfigError::new(
                "control_plane.snapshot_timeout_ms",
                "must be at least 1",
            ));
        }
        // The name travels in a request header and the admin API keeps at most 200 characters of it.
        if cp.edge_name.len() > 200 || cp.edge_name.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "control_plane.edge_name",
                "must be at most 200 characters without control characters",
            ));
        }
    }
    if c.revocation.long_poll_seconds > 300 {
        return Err(ConfigError::new(
            "revocation.long_poll_seconds",
            format!("{} is more than 300", c.revocation.long_poll_seconds),
        ));
    }
    if c.usage.max_buffered_events == 0 {
        return Err(ConfigError::new(
            "usage.max_buffered_events",
            "must be at least 1",
        ));
    }
    if c.revocation.poll_interval_ms == 0 {
        return Err(ConfigError::new(
            "revocation.poll_interval_ms",
            "must be at least 1",
        ));
    }
    if !c.revocation.feed_path.starts_with('/') {
        return Err(ConfigError::new(
            "revocation.feed_path",
            "must start with /",
        ));
    }
    if c.usage.flush_interval_ms == 0 {
        return Err(ConfigError::new(
            "usage.flush_interval_ms",
            "must be at least 1",
        ));
    }
    if !c.usage.path.starts_with('/') {
        return Err(ConfigError::new("usage.path", "must start with /"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let cases = [
            ("/api", "/api", true),
            ("/api", "/api/", true),
            ("/api", "/api/x/y", true),
            ("/api", "/apix", false),
            ("/api", "/ap", false),
            ("/api/", "/api/x", true),
            ("/api/", "/api", false),
            ("/", "/anything", true),
            ("/", "/", true),
        ];
        for (prefix, path, expected) in cases {
            assert_eq!(prefix_matches(prefix, path), expected, "{prefix} vs {path}");
        }
    }

    #[test]
    fn paths_are_normalised_before_matching() {
        let cases = [
            ("/a/b", "/a/b"),
            ("/a/b?x=1", "/a/b"),
            ("/a/b#frag", "/a/b"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E%2E/b", "/b"),
            ("/a%2fb", "/a/b"),
            ("/a%2F..%2Fadmin", "/admin"),
            ("/a\\..\\admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a/", "/a/"),
            ("", "/"),
            ("a/b", "/a/b"),
            ("/.well-known/x", "/.well-known/x"),
            ("/%", "/%"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_path(input), expected, "{input}");
        }
    }

    #[test]
    fn methods_match_case_insensitively_and_empty_means_any() {
        let rules = compile(&[
            crate::config::RuleConfig {
                r#match: crate::config::RuleMatch {
                    prefix: Some("/w".into()),
                    path: None,
                    methods: vec!["POST".into()],
                },
                allow_anonymous: false,
                require_scopes: vec![],
                require_any_scopes: vec![],
                require_roles: vec![],
            },
            crate::config::RuleConfig {
                r#match: crate::config::RuleMatch {
                    prefix: None,
                    path: Some("/w".into()),
                    methods: vec![],
                },
                allow_anonymous: true,
                require_scopes: vec![],
                require_any_scopes: vec![],
                require_roles: vec![],
            },
        ]);
        assert_eq!(find(&rules, "POST", "/w/x"), Some(0));
        assert_eq!(find(&rules, "post", "/w"), Some(0));
        assert_eq!(find(&rules, "GET", "/w"), Some(1));
        assert_eq!(find(&rules, "GET", "/w/x"), None);
        assert_eq!(find(&[], "GET", "/"), None);
    }

    #[test]
    fn show_list_bounds_untrusted_lists() {
        let many: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        assert_eq!(show_list(&[]), "none");
        assert!(show_list(&many).ends_with("\"9\", and 2 more"));
        let long = vec!["x".repeat(100)];
        assert_eq!(show_list(&long).len(), 64 + 2 + 3);
    }
}
