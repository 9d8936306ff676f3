//! The whole plugin configuration as one serde tree, parsed strictly (`deny_unknown_fields` everywhere).
//! Errors name the field path (`issuers[0].remote_jwks.cluster: missing field`) because the filter refuses
//! to start on a bad configuration and the operator must see at once what to fix.

use std::borrow::Cow;

use serde::Deserialize;

use crate::decision::Reason;
use crate::token::Rejection;

/// The whole plugin configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Trusted issuers; at least one.
    pub issuers: Vec<IssuerConfig>,
    /// Leeway applied to `exp`, `nbf` and `iat` (seconds).
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// Claims that must be present in every token.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Accepted header `typ` values (case-insensitive, `application/` prefix ignored); empty accepts any.
    #[serde(default)]
    pub allowed_typ: Vec<String>,
    /// Whether a token without `exp` is refused.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Claim holding the roles; a dotted path walks nested objects (`realm_access.roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Tokens longer than this are refused before any decoding.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Route rules; the first match wins, no match requires a valid token.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Where the credential is read from.
    #[serde(default)]
    pub token_source: TokenSource,
    /// Claims copied into request headers on success.
    #[serde(default)]
    pub forward_claims: Vec<ForwardClaim>,
    /// If set, the base64url JSON payload is forwarded in this header (lower-cased when read) on success.
    #[serde(default, deserialize_with = "lower_case_opt")]
    pub forward_payload_header: Option<String>,
    /// Remove the credential before the request reaches the upstream.
    #[serde(default)]
    pub strip_token: bool,
    /// Decide and report, but let every request through.
    #[serde(default)]
    pub report_only: bool,
    /// How the decision is published for the access log and later filters (Envoy filter state).
    #[serde(default)]
    pub decision_properties: DecisionProperties,
    /// The `realm` of `WWW-Authenticate` challenges.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Verified-token cache settings.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Control-plane connection (revocation feed, usage reports).
    #[serde(default)]
    pub control_plane: Option<ControlPlaneConfig>,
    /// Revocation polling settings.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// Usage reporting settings.
    #[serde(default)]
    pub usage: UsageConfig,
    /// Names this plugin instance in its stats: `edgewarden.<stat_prefix>.<stat>` instead of `edgewarden.<stat>`,
    /// so two EdgeWarden filters in one Envoy keep their counters and gauges apart.
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// One trusted issuer and where its keys come from.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact value of the `iss` claim.
    pub issuer: String,
    /// Accepted audiences; empty means no audience check.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Inline JWKS object (`{"keys": [...]}`); the only place symmetric (`kty: oct`) keys are accepted.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// JWKS fetched through an Envoy cluster.
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwksConfig>,
}

impl std::fmt::Debug for IssuerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Inline JWKS may hold HMAC secrets (`k`): show only how many keys there are.
        let keys = self.jwks.as_ref().map(|j| {
            let n = j
                .get("keys")
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len);
            format!("<{n} inline keys>")
        });
        f.debug_struct("IssuerConfig")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("jwks", &keys)
            .field("remote_jwks", &self.remote_jwks)
            .finish()
    }
}

/// A JWKS fetched by the filter through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// Envoy cluster name.
    pub cluster: String,
    /// HTTP path of the JWKS document.
    pub path: String,
    /// `:authority` (Host) of the fetch; defaults to [`default_authority`] of the cluster.
    #[serde(default)]
    pub authority: Option<String>,
    /// Periodic refresh interval.
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval_seconds: u64,
    /// Fetch timeout.
    #[serde(default = "default_jwks_timeout")]
    pub timeout_ms: u64,
    /// Minimum time between two refetches triggered by unknown `kid`s.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval_seconds: u64,
}

impl RemoteJwksConfig {
    /// The `:authority` to send: the configured one, else [`default_authority`] of the cluster.
    pub fn authority(&self) -> Cow<'_, str> {
        match &self.authority {
            Some(a) => Cow::Borrowed(a),
            None => default_authority(&self.cluster),
        }
    }
}

/// The `:authority` of calls through `cluster` when the configuration sets none. An Istio cluster name
/// (`outbound|<port>|<subset>|<host>`) is not a host name a server's virtual hosting knows, so it gives
/// `<host>:<port>` (`<host>` alone for ports 80 and 443); any other cluster name is used as it is.
pub fn default_authority(cluster: &str) -> Cow<'_, str> {
    let mut parts = cluster.split('|');
    if let (Some("outbound" | "inbound"), Some(port), Some(_subset), Some(host), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        if !host.is_empty() {
            return match port {
                "" | "80" | "443" => Cow::Borrowed(host),
                port => Cow::Owned(format!("{host}:{port}")),
            };
        }
    }
    Cow::Borrowed(cluster)
}
/// One route rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// What requests the rule applies to.
    #[serde(rename = "match")]
    pub r#match: RuleMatch,
    /// Requests without a token pass (a presented but invalid token is still refused).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// All of these scopes are required.
    #[serde(default)]
    pub require_scopes: Vec<String>,
    /// At least one of these scopes is required.
    #[serde(default)]
    pub require_any_scopes: Vec<String>,
    /// At least one of these roles is required.
    #[serde(default)]
    pub require_roles: Vec<String>,
}

/// The request matcher of a rule: exactly one of `prefix` / `path`, optional methods.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// Path prefix, matched on segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Upper-case HTTP methods; empty matches any method.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// Where the credential is read from.
/// JSON: `{"header": "authorization", "prefix": "Bearer "}` (the default), `{"cookie": "session"}` or `{"query": "access_token"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "TokenSourceJson")]
pub enum TokenSource {
    /// A request header (lower-case name), with an optional scheme prefix matched case-insensitively.
    Header {
        /// Lower-case header name.
        name: String,
        /// Scheme prefix such as `"Bearer "`; `None` takes the whole header value.
        prefix: Option<String>,
    },
    /// A cookie.
    Cookie {
        /// Cookie name.
        name: String,
    },
    /// A query parameter.
    Query {
        /// Parameter name.
        name: String,
    },
}

impl Default for TokenSource {
    fn default() -> Self {
        TokenSource::Header {
            name: "authorization".to_string(),
            prefix: Some("Bearer ".to_string()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSourceJson {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    query: Option<String>,
}

impl TryFrom<TokenSourceJson> for TokenSource {
    type Error = String;

    fn try_from(j: TokenSourceJson) -> Result<Self, Self::Error> {
        let given = [j.header.is_some(), j.cookie.is_some(), j.query.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            return Err("needs exactly one of header, cookie or query".to_string());
        }
        if j.prefix.is_some() && j.header.is_none() {
            return Err("prefix is only valid with header".to_string());
        }
        if let Some(name) = j.header {
            Ok(TokenSource::Header {
                name: name.to_ascii_lowercase(),
                prefix: j.prefix,
            })
        } else if let Some(name) = j.cookie {
            Ok(TokenSource::Cookie { name })
        } else if let Some(name) = j.query {
            Ok(TokenSource::Query { name })
        } else {
            Err("needs exactly one of header, cookie or query".to_string())
        }
    }
}

/// How the filter removes the credential when `strip_token` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripAction<'a> {
    /// Remove this request header.
    RemoveHeader(&'a str),
    /// Rewrite the `cookie` header without this cookie (see [`strip_cookie`]).
    RemoveCookie(&'a str),
    /// Rewrite `:path` without this query parameter (see [`strip_query_param`]).
    RemoveQueryParam(&'a str),
}

impl TokenSource {
    /// Pulls the credential out of a request. `header` looks a header up by lower-case name; `path` is the `:path` with query.
    /// `Ok(None)` means no credential was presented; `Err` means one was presented but is unusable
    /// (`Authorization: Basic ...` when Bearer is expected, an empty bearer token, bad percent-encoding).
    pub fn extract<'a>(
        &self,
        header: &dyn Fn(&str) -> Option<&'a str>,
        path: &'a str,
    ) -> Result<Option<Cow<'a, str>>, Rejection> {
        match self {
            TokenSource::Header { name, prefix } => {
                let Some(value) = header(name) else {
                    return Ok(None);
                };
                extract_from_header(name, value, prefix.as_deref()).map(|t| Some(Cow::Borrowed(t)))
            }
            TokenSource::Cookie { name } => {
                let Some(cookies) = header("cookie") else {
                    return Ok(None);
                };
                match find_cookie(cookies, name) {
                    None => Ok(None),
                    Some("") => Err(Rejection::new(
                        Reason::Malformed,
                        format!("cookie {name:?} is empty"),
                    )),
                    Some(v) => Ok(Some(Cow::Borrowed(v))),
                }
            }
            TokenSource::Query { name } => match find_query_param(path, name) {
                None => Ok(None),
                Some("") => Err(Rejection::new(
                    Reason::Malformed,
                    format!("query parameter {name:?} is empty"),
                )),
                Some(raw) => percent_decode(raw).map(Some).ok_or_else(|| {
                    Rejection::new(
                        Reason::Malformed,
                        format!("query parameter {name:?} has bad percent-encoding"),
                    )
                }),
            },
        }
    }

    /// What the filter must do to remove the credential for `strip_token`.
    pub fn strip_action(&self) -> StripAction<'_> {
        match self {
            TokenSource::Header { name, .. } => StripAction::RemoveHeader(name),
            TokenSource::Cookie { name } => StripAction::RemoveCookie(name),
            TokenSource::Query { name } => StripAction::RemoveQueryParam(name),
        }
    }

    /// Header names the filter removes for `strip_token`: the token header, or `cookie` is rewritten instead
    /// (empty for cookie and query sources, which [`TokenSource::strip_action`] describes).
    pub fn strip_headers(&self) -> Vec<&str> {
        match self {
            TokenSource::Header { name, .. } => vec![name.as_str()],
            TokenSource::Cookie { .. } | TokenSource::Query { .. } => Vec::new(),
        }
    }
}

fn extract_from_header<'a>(
    name: &str,
    value: &'a str,
    prefix: Option<&str>,
) -> Result<&'a str, Rejection> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let token = match prefix {
        None => value,
        Some(prefix) => {
            let scheme = prefix.trim_end();
            let (found, rest) = match value.split_once([' ', '\t']) {
                Some((found, rest)) => (found, rest),
                None => (value, ""),
            };
            if !found.eq_ignore_ascii_case(scheme) {
                let shown: String = found.chars().take(16).filter(|c| !c.is_control()).collect();
                return Err(Rejection::new(
                    Reason::Malformed,
                    format!("{name} header uses the {shown:?} scheme, expected {scheme:?}"),
                ));
            }
            rest.trim_start_matches([' ', '\t'])
        }
    };
    if token.is_empty() {
        return Err(Rejection::new(
            Reason::Malformed,
            format!("{name} header carries an empty token"),
        ));
    }
    Ok(token)
}

fn find_cookie<'a>(cookies: &'a str, name: &str) -> Option<&'a str> {
    cookies.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim() == name {
            let v = v.trim();
            Some(
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v),
            )
        } else {
            None
        }
    })
}

fn find_query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a query value (`+` stays `+`: JWTs never contain it unencoded). `None` on bad escapes or non-UTF-8.
fn percent_decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(bytes.next()?)?;
            let lo = hex_value(bytes.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The `cookie` header value without the cookie `name`; `None` when no cookie is left (remove the header).
pub fn strip_cookie(cookie_header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = cookie_header
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty() && pair.split_once('=').map(|(k, _)| k.trim()) != Some(name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// The `:path` without the query parameter `name` (and without a dangling `?`).
pub fn strip_query_param(path: &str, name: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// A claim copied into a request header on success.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardClaim {
    /// Claim name; a dotted path walks nested objects.
    pub claim: String,
    /// Header name, lower-cased when read (HTTP header names are case-insensitive; Envoy keeps them lower case).
    #[serde(deserialize_with = "lower_case")]
    pub header: String,
}

/// Reads a header name in any case as its lower-case form.
fn lower_case<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|s| s.to_ascii_lowercase())
}

/// [`lower_case`] for an optional header name.
fn lower_case_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d).map(|s| s.map(|s| s.to_ascii_lowercase()))
}

/// Verified-token cache settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Maximum number of cached tokens; 0 disables the cache.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// Upper bound on how long an entry lives when the token has no `exp`.
    #[serde(default = "default_cache_max_ttl")]
    pub max_ttl_seconds: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: default_cache_entries(),
            max_ttl_seconds: default_cache_max_ttl(),
        }
    }
}

/// Connection to the EdgeWarden control plane (admin API).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// Envoy cluster of the admin API.
    pub cluster: String,
    /// API key the edge presents; never logged.
    pub api_key: String,
    /// Name of this edge, as registered in the admin API.
    pub edge_name: String,
    /// `:authority` (Host) of calls; defaults to [`default_authority`] of the cluster.
    #[serde(default)]
    pub authority: Option<String>,
    /// Call timeout.
    #[serde(default = "default_control_plane_timeout")]
    pub timeout_ms: u64,
    /// Timeout of a poll that fetches a full snapshot (the first one, and after the admin API forgot the
    /// edge's cursor): a million revocations take the admin API seconds to list.
    #[serde(default = "default_snapshot_timeout")]
    pub snapshot_timeout_ms: u64,
}

impl ControlPlaneConfig {
    /// The `:authority` to send: the configured one, else [`default_authority`] of the cluster.
    pub fn authority(&self) -> Cow<'_, str> {
        match &self.authority {
            Some(a) => Cow::Borrowed(a),
            None => default_authority(&self.cluster),
        }
    }
}

impl std::fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key is a credential: keep it out of logs and panics.
        f.debug_struct("ControlPlaneConfig")
            .field("cluster", &self.cluster)
            .field("api_key", &"<redacted>")
            .field("edge_name", &self.edge_name)
            .field("authority", &self.authority)
            .field("timeout_ms", &self.timeout_ms)
            .field("snapshot_timeout_ms", &self.snapshot_timeout_ms)
            .finish()
    }
}

/// How each request's decision is published as request properties (Envoy filter state `wasm.<name>`), for
/// access logs and later filters. Each property is one host call into Envoy (in Envoy 1.40 about 7,500
/// instructions for a request's first, 3,000 for each further one), so the choice is a cost on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionProperties {
    /// One property per field: `edgewarden.reason`, `edgewarden.rule`, `edgewarden.sub`,
    /// `edgewarden.client_id`, `edgewarden.jti` (up to five host calls).
    #[default]
    Each,
    /// One property, `edgewarden.decision`, holding every field as `key=value` pairs (logfmt).
    One,
    /// None: the decision is only counted in stats and usage reports.
    None,
}

/// What to do when the revocation state is older than `max_staleness_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    /// Refuse token-bearing requests (fail closed).
    #[default]
    Deny,
    /// Keep accepting tokens (fail open).
    Allow,
}

/// Revocation feed polling settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// Poll interval of the feed.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_ms: u64,
    /// Age after which the revocation state counts as stale.
    #[serde(default = "default_max_staleness")]
    pub max_staleness_seconds: u64,
    /// Fail closed or open on stale state.
    #[serde(default)]
    pub on_stale: OnStale,
    /// Feed path on the control plane.
    #[serde(default = "default_feed_path")]
    pub feed_path: String,
    /// How long the control plane may hold a poll open until a revocation arrives (`wait=`); 0 polls
    /// every `poll_interval_ms` instead.
    #[serde(default = "default_long_poll")]
    pub long_poll_seconds: u64,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            poll_interval_ms: default_poll_interval(),
            max_staleness_seconds: default_max_staleness(),
            on_stale: OnStale::Deny,
            feed_path: default_feed_path(),
            long_poll_seconds: default_long_poll(),
        }
    }
}

/// Usage reporting settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// How often buffered usage events are sent.
    #[serde(default = "default_usage_flush")]
    pub flush_interval_ms: u64,
    /// Buffer bound; older events are dropped (and counted) beyond it.
    #[serde(default = "default_usage_buffer")]
    pub max_buffered_events: usize,
    /// Usage path on the control plane.
    #[serde(default = "default_usage_path")]
    pub path: String,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            flush_interval_ms: default_usage_flush(),
            max_buffered_events: default_usage_buffer(),
            path: default_usage_path(),
        }
    }
}

fn default_clock_skew() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_roles_claim() -> String {
    "roles".to_string()
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_realm() -> String {
    "edgewarden".to_string()
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_cache_max_ttl() -> u64 {
    300
}
fn default_refresh_interval() -> u64 {
    300
}
fn default_jwks_timeout() -> u64 {
    5000
}
fn default_min_refetch() -> u64 {
    10
}
fn default_control_plane_timeout() -> u64 {
    2000
}
fn default_snapshot_timeout() -> u64 {
    60_000
}
fn default_poll_interval() -> u64 {
    1000
}
fn default_max_staleness() -> u64 {
    300
}
fn default_feed_path() -> String {
    "/api/v1/revocations/feed".to_string()
}
fn default_long_poll() -> u64 {
    20
}
fn default_usage_flush() -> u64 {
    10_000
}
fn default_usage_buffer() -> usize {
    10_000
}
fn default_usage_path() -> String {
    "/api/v1/usage".to_string()
}

/// A configuration problem, naming the field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    /// Field path, e.g. `issuers[0].remote_jwks.cluster`.
    pub field: String,
    /// What is wrong, e.g. `missing field`.
    pub problem: String,
}

impl ConfigError {
    /// A configuration error for `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// Parses plugin-configuration JSON; errors name the field path, e.g. `issuers[0].remote_jwks.cluster: missing field`.
    /// Only parses: call [`Config::validate`] (or [`crate::Engine::new`], which does) for the semantic checks.
    /// Text that is not JSON at all is refused as such, with line and column; `revocation` or `usage` without
    /// `control_plane` is refused too (they would do nothing).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new("config", EMPTY_CONFIG));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let config: Config = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
        de.end().map_err(|e| not_json(&e))?;
        if config.control_plane.is_none() {
            // Both blocks have defaults, so the parsed tree cannot tell whether they were written.
            let given: ControlPlaneBlocks = serde_json::from_slice(bytes)
                .map_err(|e| ConfigError::new("config", e.to_string()))?;
            for (key, written, what) in [
                (
                    "revocation",
                    given.revocation.is_some(),
                    "the revocation feed is polled from",
                ),
                (
                    "usage",
                    given.usage.is_some(),
                    "usage reports are posted to",
                ),
            ] {
                if written {
                    return Err(ConfigError::new(
                        key,
                        format!(
                            "does nothing without a control_plane block ({what} the admin API named there): \
                             add \"control_plane\": {{\"cluster\", \"api_key\", \"edge_name\"}} or remove `{key}`"
                        ),
                    ));
                }
            }
        }
        Ok(config)
    }

    /// Semantic checks that serde cannot express (non-empty issuers, exactly one of prefix/path,
    /// upper-case known methods, header names, ...). Errors name the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(prefix) = &self.stat_prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 64
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ConfigError::new(
                    "stat_prefix",
                    format!(
                        "{prefix:?} is not a stat name part: use 1 to 64 letters, digits, `_` or `-` (no dots)"
                    ),
                ));
            }
        }
        crate::rules::validate_config(self)
    }
}

/// What stands in a reported configuration where a secret was left out.
pub const REDACTED: &str = "<redacted>";

/// JWK members that hold secret key material: the HMAC key (`k`) and the private parts of RSA, EC and OKP keys.
const SECRET_JWK_MEMBERS: &[&str] = &["k", "d", "p", "q", "dp", "dq", "qi", "oth"];

/// The plugin configuration as an edge reports it to the admin API: the JSON it was given, with
/// `control_plane.api_key` and every secret member of an inline JWK (`k`, `d`, ...) replaced by [`REDACTED`],
/// written compactly. The document stays a configuration the engine parses (apart from the redacted keys), so
/// the dashboard can read it and the debugger decide with it. `None` if the bytes are not one JSON object.
pub fn redacted_config(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    doc.as_object()?;
    if let Some(key) = doc
        .get_mut("control_plane")
        .and_then(|cp| cp.get_mut("api_key"))
    {
        *key = serde_json::Value::String(REDACTED.to_string());
    }
    for jwk in inline_jwks_mut(&mut doc) {
        for member in SECRET_JWK_MEMBERS {
            if let Some(value) = jwk.get_mut(*member) {
                *value = serde_json::Value::String(REDACTED.to_string());
            }
        }
    }
    serde_json::to_vec(&doc).ok()
}

/// The hash an edge reports its configuration by: lower-case hex SHA-256 of the [`redacted_config`] bytes.
pub fn config_hash(redacted: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(redacted)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a reported configuration still carries a secret: the field path of every `control_plane.api_key` or
/// secret JWK member whose value is not [`REDACTED`]. The admin API refuses such a document.
pub fn unredacted_secrets(doc: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    let redacted = |v: &serde_json::Value| v.as_str() == Some(REDACTED);
    if let Some(key) = doc.get("control_plane").and_then(|cp| cp.get("api_key")) {
        if !redacted(key) {
            found.push("control_plane.api_key".to_string());
        }
    }
    if let Some(issuers) = doc.get("issuers").and_then(serde_json::Value::as_array) {
        for (i, issuer) in issuers.iter().enumerate() {
            let keys = issuer
                .get("jwks")
                .and_then(|j| j.get("keys"))
                .and_then(serde_json::Value::as_array);
            for (j, jwk) in keys.into_iter().flatten().enumerate() {
                for member in SECRET_JWK_MEMBERS {
                    if jwk.get(*member).is_some_and(|v| !redacted(v)) {
                        found.push(format!("issuers[{i}].jwks.keys[{j}].{member}"));
                    }
                }
            }
        }
    }
    found
}

/// Every inline JWK object of a configuration document (`issuers[].jwks.keys[]`).
fn inline_jwks_mut(doc: &mut serde_json::Value) -> impl Iterator<Item = &mut serde_json::Value> {
    doc.get_mut("issuers")
        .and_then(serde_json::Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(|issuer| issuer.get_mut("jwks")?.get_mut("keys")?.as_array_mut())
        .flatten()
}

/// The problem reported for an empty plugin configuration.
pub const EMPTY_CONFIG: &str = "the plugin configuration is empty: set it to a JSON object with at least \
     `issuers` (in Envoy, the `value` of the filter's `configuration` StringValue; in Istio, `pluginConfig`)";

/// The top-level keys whose presence [`Config::from_json`] checks against `control_plane`.
#[derive(Deserialize)]
struct ControlPlaneBlocks {
    #[serde(default)]
    revocation: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
}

/// A syntax error: the configuration is not JSON (or not one JSON value), with where and what to do.
fn not_json(e: &serde_json::Error) -> ConfigError {
    ConfigError::new(
        "config",
        format!(
            "the plugin configuration is not valid JSON: {} at line {} column {}; \
             it must be one JSON object such as {{\"issuers\": [...]}} (YAML is not read here)",
            strip_position(&e.to_string()),
            e.line(),
            e.column()
        ),
    )
}

/// Turns a serde path error into a [`ConfigError`] whose field is the full path of the offending key:
/// for "missing field `x`" and "unknown field `x`" the key itself is appended to the path.
fn path_error(err: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    if err.inner().is_syntax() || err.inner().is_eof() {
        return not_json(err.inner());
    }
    let path = err.path().to_string();
    let message = strip_position(&err.inner().to_string());
    let base = if path == "." { String::new() } else { path };
    let join = |key: &str| {
        if base.is_empty() {
            key.to_string()
        } else {
            format!("{base}.{key}")
        }
    };
    for (marker, problem) in [
        ("missing field `", "missing field"),
        ("unknown field `", "unknown field"),
    ] {
        if let Some(rest) = message.strip_prefix(marker) {
            if let Some((key, tail)) = rest.split_once('`') {
                let field = if problem == "unknown field" && base.ends_with(key) {
                    base.clone()
                } else {
                    join(key)
                };
                return ConfigError::new(field, format!("{problem}{tail}"));
            }
        }
    }
    ConfigError::new(
        if base.is_empty() {
            "config".to_string()
        } else {
            base
        },
        message,
    )
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message.get(..i).unwrap_or(message).to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::test_support::config_json;

    fn parse_err(v: serde_json::Value) -> ConfigError {
        Config::from_json(v.to_string().as_bytes())
            .and_then(|c| c.validate().map(|_| c))
            .unwrap_err()
    }

    #[test]
    fn a_reported_configuration_leaves_out_the_api_key_and_inline_secrets() {
        let config = json!({
            "issuers": [{"issuer": "i", "jwks": {"keys": [
                {"kty": "oct", "kid": "h", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
                {"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "d": "private"},
            ]}}],
            "control_plane": {"cluster": "c", "api_key": "ew_live_key", "edge_name": "e"},
            "clock_skew_seconds": 30,
        });
        let bytes = config.to_string();
        let redacted = redacted_config(bytes.as_bytes()).unwrap();
        let text = String::from_utf8(redacted.clone()).unwrap();
        for secret in ["ew_live_key", "c2VjcmV0", "private"] {
            assert!(!text.contains(secret), "{secret} left in {text}");
        }
        let doc: serde_json::Value = serde_json::from_slice(&redacted).unwrap();
        assert_eq!(doc["control_plane"]["api_key"], REDACTED);
        assert_eq!(doc["control_plane"]["edge_name"], "e");
        assert_eq!(doc["issuers"][0]["jwks"]["keys"][0]["k"], REDACTED);
        assert_eq!(doc["issuers"][0]["jwks"]["keys"][0]["kid"], "h");
        assert_eq!(doc["issuers"][0]["jwks"]["keys"][1]["d"], REDACTED);
        assert_eq!(doc["clock_skew_seconds"], 30);
        assert!(unredacted_secrets(&doc).is_empty());
        assert_eq!(
            unredacted_secrets(&config),
            vec![
                "control_plane.api_key",
                "issuers[0].jwks.keys[0].k",
                "issuers[0].jwks.keys[1].d"
            ]
        );
        // The same configuration gives the same document and hash; another one another hash.
        assert_eq!(redacted_config(bytes.as_bytes()).unwrap(), redacted);
        let hash = config_hash(&redacted);
        assert_eq!(hash.len(), 64);
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let other = redacted_config(br#"{"issuers": [], "clock_skew_seconds": 5}"#).unwrap();
        assert_ne!(config_hash(&other), hash);
        assert_eq!(redacted_config(b"[1, 2]"), None);
        assert_eq!(redacted_config(b"not json"), None);
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c =
            Config::from_json(br#"{"issuers": [{"issuer": "i", "jwks": {"keys": []}}]}"#).unwrap();
        assert_eq!(c.clock_skew_seconds, 60);
        assert!(c.require_exp);
        assert_eq!(c.roles_claim, "roles");
        assert_eq!(c.max_token_bytes, 8192);
        assert_eq!(
            c.token_source,
            TokenSource::Header {
                name: "authorization".into(),
                prefix: Some("Bearer ".into())
            }
        );
        assert_eq!(c.realm, "edgewarden");
        assert_eq!(c.cache.max_entries, 10_000);
        assert_eq!(c.revocation.on_stale, OnStale::Deny);
        assert_eq!(c.revocation.feed_path, "/api/v1/revocations/feed");
        assert_eq!(c.usage.path, "/api/v1/usage");
        assert!(!c.report_only && !c.strip_token);
        assert_eq!(c.decision_properties, DecisionProperties::Each);
    }

    #[test]
    fn decision_properties_take_each_one_or_none() {
        for (value, expected) in [
            ("each", DecisionProperties::Each),
            ("one", DecisionProperties::One),
            ("none", DecisionProperties::None),
        ] {
            let c = Config::from_json(
                config_json(json!({"decision_properties": value}))
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
            assert_eq!(c.decision_properties, expected);
        }
        let err = Config::from_json(
            config_json(json!({"decision_properties": "all"}))
                .to_string()
                .as_bytes(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("decision_properties"), "{err}");
    }

    #[test]
    fn parse_errors_name_the_field_path() {
        let mut missing_cluster = config_json(json!({}));
        missing_cluster["issuers"][1]["remote_jwks"] = json!({"path": "/jwks"});
        let mut unknown_in_issuer = config_json(json!({}));
        unknown_in_issuer["issuers"][0]["audience"] = json!("api");
        let mut wrong_type = config_json(json!({}));
        wrong_type["rules"] = json!([{"match": {"prefix": "/", "methods": "GET"}}]);
        let cases = vec![
            (
                missing_cluster,
                "issuers[1].remote_jwks.cluster",
                "missing field",
            ),
            (
                unknown_in_issuer,
                "issuers[0].audience",
                "unknown field, expected one of `issuer`, `audiences`, `jwks`, `remote_jwks`",
            ),
            (
                wrong_type,
                "rules[0].match.methods",
                "invalid type: string \"GET\", expected a sequence",
            ),
            (json!({}), "issuers", "missing field"),
            (
                config_json(json!({"clock_skew_seconds": -1})),
                "clock_skew_seconds",
                "invalid value: integer `-1`, expected u64",
            ),
            (
                config_json(json!({"token_source": {"cookie": "a", "query": "b"}})),
                "token_source",
                "needs exactly one of header, cookie or query",
            ),
            (
                config_json(json!({"token_source": {"cookie": "a", "prefix": "x"}})),
                "token_source",
                "prefix is only valid with header",
            ),
            (
                config_json(json!({"revocation": {"on_stale": "maybe"}})),
                "revocation.on_stale",
                "unknown variant `maybe`, expected `deny` or `allow`",
            ),
            (
                config_json(json!({"bogus": 1})),
                "bogus",
                "unknown field, expected one of `issuers`, `clock_skew_seconds`",
            ),
        ];
        for (value, field, problem) in cases {
            let err = Config::from_json(value.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{value}");
            assert!(err.problem.starts_with(problem), "{value}: {}", err.problem);
        }
        let err = Config::from_json(b"{\"issuers\": [] } trailing").unwrap_err();
        assert_eq!(err.field, "config");
        assert_eq!(
            Config::from_json(b"{}").unwrap_err().to_string(),
            "invalid configuration: issuers: missing field"
        );
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = vec![
            (
                json!({"issuers": []}),
                "issuers",
                "at least one issuer is required",
            ),
            (
                json!({"issuers": [{"issuer": "i"}]}),
                "issuers[0]",
                "needs jwks or remote_jwks",
            ),
            (
                json!({"issuers": [{"issuer": "", "jwks": {}}]}),
                "issuers[0].issuer",
                "must not be empty",
            ),
            (
                json!({"issuers": [{"issuer": "i", "jwks": {}}, {"issuer": "i", "jwks": {}}]}),
                "issuers[1].issuer",
                "duplicate issuer, also issuers[0]",
            ),
            (
                json!({"issuers": [{"issuer": "i", "remote_jwks": {"cluster": "c", "path": "jwks"}}]}),
                "issuers[0].remote_jwks.path",
                "must start with /",
            ),
            (
                json!({"issuers": [{"issuer": "i", "remote_jwks": {"cluster": " ", "path": "/jwks"}}]}),
                "issuers[0].remote_jwks.cluster",
                "must not be empty",
            ),
        ];
        for (value, field, problem) in cases {
            let err = parse_err(value.clone());
            assert_eq!(
                (err.field.as_str(), err.problem.as_str()),
                (field, problem),
                "{value}"
            );
        }
        let rule_cases = vec![
            (
                json!({"match": {}}),
                "rules[0].match",
                "set exactly one of prefix or path",
            ),
            (
                json!({"match": {"prefix": "/a", "path": "/a"}}),
                "rules[0].match",
                "set exactly one of prefix or path, not both",
            ),
            (
                json!({"match": {"prefix": "a"}}),
                "rules[0].match.prefix",
                "",
            ),
            (
                json!({"match": {"path": "/a/../b"}}),
                "rules[0].match.path",
                "",
            ),
            (
                json!({"match": {"path": "/a?x=1"}}),
                "rules[0].match.path",
                "",
            ),
            (
                json!({"match": {"prefix": "/", "methods": ["get"]}}),
                "rules[0].match.methods[0]",
                "",
            ),
            (
                json!({"match": {"prefix": "/", "methods": ["GET", "FETCH"]}}),
                "rules[0].match.methods[1]",
                "",
            ),
            (
                json!({"match": {"prefix": "/"}, "allow_anonymous": true, "require_scopes": ["a"]}),
                "rules[0].allow_anonymous",
                "an anonymous rule cannot also require scopes or roles",
            ),
            (
                json!({"match": {"prefix": "/"}, "require_scopes": ["a b"]}),
                "rules[0].require_scopes[0]",
                "",
            ),
            (
                json!({"match": {"prefix": "/"}, "require_any_scopes": [""]}),
                "rules[0].require_any_scopes[0]",
                "",
            ),
        ];
        for (rule, field, problem) in rule_cases {
            let err = parse_err(config_json(json!({"rules": [rule.clone()]})));
            assert_eq!(err.field, field, "{rule}: {}", err.problem);
            if !problem.is_empty() {
                assert_eq!(err.problem, problem);
            }
        }
        let top_cases = vec![
            (json!({"max_token_bytes": 10}), "max_token_bytes"),
            (json!({"clock_skew_seconds": 100_000}), "clock_skew_seconds"),
            (json!({"roles_claim": "a..b"}), "roles_claim"),
            (json!({"realm": "a\"b"}), "realm"),
            (
                json!({"forward_claims": [{"claim": "sub", "header": "X Sub"}]}),
                "forward_claims[0].header",
            ),
            (
                json!({"forward_payload_header": "bad header"}),
                "forward_payload_header",
            ),
            (
                json!({"token_source": {"header": "bad header"}}),
                "token_source.header",
            ),
            (
                json!({"cache": {"max_entries": 2_000_000}}),
                "cache.max_entries",
            ),
            (
                json!({"control_plane": {"cluster": "c", "api_key": "", "edge_name": "e"}}),
                "control_plane.api_key",
            ),
            (
                json!({"control_plane": {"cluster": "c", "api_key": "k", "edge_name": "e"},
                       "revocation": {"feed_path": "feed"}}),
                "revocation.feed_path",
            ),
            (json!({"stat_prefix": ""}), "stat_prefix"),
            (json!({"stat_prefix": "a.b"}), "stat_prefix"),
            (json!({"stat_prefix": "x".repeat(65)}), "stat_prefix"),
            (json!({"required_claims": [""]}), "required_claims[0]"),
        ];
        for (extra, field) in top_cases {
            assert_eq!(
                parse_err(config_json(extra.clone())).field,
                field,
                "{extra}"
            );
        }
        assert!(config_json(json!({})).is_object());
        let full = config_json(json!({
            "control_plane": {"cluster": "admin", "api_key": "k", "edge_name": "edge-1"},
            "token_source": {"cookie": "session"},
            "forward_claims": [{"claim": "sub", "header": "x-jwt-sub"}],
            "rules": [{"match": {"prefix": "/api/", "methods": ["GET"]}, "require_any_scopes": ["read"]}]
        }));
        Config::from_json(full.to_string().as_bytes())
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn text_that_is_not_json_is_refused_as_such_with_line_and_column() {
        for (text, expected) in [
            (
                "issuers:\n  - issuer: i\n",
                "the plugin configuration is not valid JSON: expected value at line 1 column 1; ",
            ),
            (
                "{\"issuers\": [",
                "the plugin configuration is not valid JSON: EOF while parsing a list at line 1 column 13; ",
            ),
            (
                "{\"issuers\": []} x",
                "the plugin configuration is not valid JSON: trailing characters at line 1 column 17; ",
            ),
        ] {
            let err = Config::from_json(text.as_bytes()).unwrap_err();
            assert_eq!(err.field, "config", "{text}");
            assert!(err.problem.starts_with(expected), "{text}: {}", err.problem);
            assert!(err.problem.contains("one JSON object"), "{}", err.problem);
        }
        for empty in ["", "  \n"] {
            let err = Config::from_json(empty.as_bytes()).unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.problem.as_str()),
                ("config", EMPTY_CONFIG)
            );
        }
    }

    #[test]
    fn revocation_or_usage_without_a_control_plane_is_refused_naming_the_block() {
        for key in ["revocation", "usage"] {
            let err = Config::from_json(config_json(json!({key: {}})).to_string().as_bytes())
                .unwrap_err();
            assert_eq!(err.field, key);
            assert!(
                err.problem
                    .starts_with("does nothing without a control_plane block"),
                "{}",
                err.problem
            );
            assert!(
                err.problem.ends_with(&format!("or remove `{key}`")),
                "{}",
                err.problem
            );
        }
        let with = config_json(json!({
            "control_plane": {"cluster": "c", "api_key": "k", "edge_name": "e"},
            "revocation": {}, "usage": {}
        }));
        assert!(Config::from_json(with.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn header_names_are_read_in_any_case() {
        let c = crate::test_support::config(json!({
            "forward_claims": [{"claim": "sub", "header": "X-Jwt-Sub"}],
            "forward_payload_header": "X-Payload"
        }));
        c.validate().unwrap();
        assert_eq!(c.forward_claims[0].header, "x-jwt-sub");
        assert_eq!(c.forward_payload_header.as_deref(), Some("x-payload"));
    }

    #[test]
    fn stat_prefix_names_the_instance() {
        let c = crate::test_support::config(json!({"stat_prefix": "public-api_2"}));
        c.validate().unwrap();
        assert_eq!(c.stat_prefix.as_deref(), Some("public-api_2"));
        assert_eq!(crate::test_support::config(json!({})).stat_prefix, None);
    }

    #[test]
    fn the_default_authority_is_a_host_name_even_for_istio_cluster_names() {
        for (cluster, expected) in [
            ("idp", "idp"),
            ("keycloak.example.com:8443", "keycloak.example.com:8443"),
            (
                "outbound|8080||keycloak.identity.svc.cluster.local",
                "keycloak.identity.svc.cluster.local:8080",
            ),
            (
                "outbound|443|v1|keycloak.example.com",
                "keycloak.example.com",
            ),
            ("outbound|80||admin.svc", "admin.svc"),
            ("outbound|8080||", "outbound|8080||"),
            ("a|b", "a|b"),
        ] {
            assert_eq!(default_authority(cluster), expected, "{cluster}");
        }
        let remote: RemoteJwksConfig = serde_json::from_value(json!({
            "cluster": "outbound|8080||keycloak.identity.svc.cluster.local", "path": "/certs"
        }))
        .unwrap();
        assert_eq!(
            remote.authority(),
            "keycloak.identity.svc.cluster.local:8080"
        );
        let set: RemoteJwksConfig = serde_json::from_value(json!({
            "cluster": "outbound|8080||keycloak.identity.svc.cluster.local", "path": "/certs",
            "authority": "keycloak.example.com"
        }))
        .unwrap();
        assert_eq!(set.authority(), "keycloak.example.com");
        let cp: ControlPlaneConfig = serde_json::from_value(
            json!({"cluster": "outbound|8080||admin.edgewarden.svc.cluster.local", "api_key": "k", "edge_name": "e"}),
        )
        .unwrap();
        assert_eq!(cp.authority(), "admin.edgewarden.svc.cluster.local:8080");
    }

    #[test]
    fn inline_hmac_secrets_stay_out_of_debug_output() {
        let c = crate::test_support::config(json!({}));
        let shown = format!("{c:?}");
        assert!(shown.contains("<5 inline keys>"), "{shown}");
        assert!(!shown.contains(&crate::test_support::b64(crate::test_support::HMAC_SECRET)));
    }

    #[test]
    fn control_plane_api_key_is_redacted_in_debug_output() {
        let c: ControlPlaneConfig = serde_json::from_value(
            json!({"cluster": "c", "api_key": "secret-key-123", "edge_name": "e"}),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("secret-key-123"));
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn bearer_extraction_from_the_authorization_header() {
        let source = TokenSource::default();
        let cases: Vec<(&str, Result<Option<&str>, &str>)> = vec![
            ("Bearer abc.def.ghi", Ok(Some("abc.def.ghi"))),
            ("bearer abc", Ok(Some("abc"))),
            ("BEARER   abc", Ok(Some("abc"))),
            ("  Bearer abc  ", Ok(Some("abc"))),
            (
                "Basic dXNlcjpwYXNz",
                Err(r#"authorization header uses the "Basic" scheme, expected "Bearer""#),
            ),
            ("Bearer", Err("authorization header carries an empty token")),
            (
                "Bearer    ",
                Err("authorization header carries an empty token"),
            ),
            (
                "Bearerabc",
                Err(r#"authorization header uses the "Bearerabc" scheme, expected "Bearer""#),
            ),
            (
                "abc.def.ghi",
                Err(r#"authorization header uses the "abc.def.ghi" scheme, expected "Bearer""#),
            ),
        ];
        for (value, expected) in cases {
            let pairs = [("authorization", value)];
            let got = source.extract(&headers(&pairs), "/");
            match expected {
                Ok(token) => assert_eq!(got.unwrap().as_deref(), token, "{value:?}"),
                Err(description) => {
                    let err = got.unwrap_err();
                    assert_eq!(
                        (err.reason, err.description.as_str()),
                        (Reason::Malformed, description),
                        "{value:?}"
                    );
                }
            }
        }
        assert_eq!(source.extract(&headers(&[]), "/").unwrap(), None);
        assert_eq!(source.strip_headers(), vec!["authorization"]);
        assert_eq!(
            source.strip_action(),
            StripAction::RemoveHeader("authorization")
        );
    }

    #[test]
    fn custom_header_without_prefix_takes_the_whole_value() {
        let source = TokenSource::Header {
            name: "x-token".into(),
            prefix: None,
        };
        let pairs = [("x-token", " abc.def.ghi ")];
        assert_eq!(
            source.extract(&headers(&pairs), "/").unwrap().as_deref(),
            Some("abc.def.ghi")
        );
        let empty = [("x-token", "  ")];
        assert!(source.extract(&headers(&empty), "/").is_err());
    }

    #[test]
    fn cookie_extraction() {
        let source = TokenSource::Cookie {
            name: "session".into(),
        };
        let cases: Vec<(&str, Option<&str>)> = vec![
            ("session=abc.def.ghi", Some("abc.def.ghi")),
            ("a=1; session=abc; b=2", Some("abc")),
            ("a=1;session=\"abc\"", Some("abc")),
            ("sessionx=abc; xsession=def", None),
            ("a=1", None),
        ];
        for (cookie, expected) in cases {
            let pairs = [("cookie", cookie)];
            assert_eq!(
                source.extract(&headers(&pairs), "/").unwrap().as_deref(),
                expected,
                "{cookie}"
            );
        }
        assert!(source
            .extract(&headers(&[("cookie", "session=")]), "/")
            .is_err());
        assert_eq!(source.extract(&headers(&[]), "/").unwrap(), None);
        assert_eq!(
            strip_cookie("a=1; session=abc; b=2", "session").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(strip_cookie("session=abc", "session"), None);
    }

    #[test]
    fn query_extraction() {
        let source = TokenSource::Query {
            name: "access_token".into(),
        };
        let cases: Vec<(&str, Result<Option<&str>, ()>)> = vec![
            ("/a?access_token=abc.def.ghi", Ok(Some("abc.def.ghi"))),
            ("/a?x=1&access_token=abc&y=2", Ok(Some("abc"))),
            ("/a?access_token=a%2Eb", Ok(Some("a.b"))),
            ("/a?access_tokenx=abc", Ok(None)),
            ("/a", Ok(None)),
            ("/a?access_token=", Err(())),
            ("/a?access_token=%zz", Err(())),
        ];
        for (path, expected) in cases {
            let got = source.extract(&headers(&[]), path);
            match expected {
                Ok(token) => assert_eq!(got.unwrap().as_deref(), token, "{path}"),
                Err(()) => assert_eq!(got.unwrap_err().reason, Reason::Malformed, "{path}"),
            }
        }
        assert_eq!(
            strip_query_param("/a?x=1&access_token=abc&y=2", "access_token"),
            "/a?x=1&y=2"
        );
        assert_eq!(
            strip_query_param("/a?access_token=abc", "access_token"),
            "/a"
        );
        assert_eq!(strip_query_param("/a", "access_token"), "/a");
    }

    #[test]
    fn token_source_json_spellings() {
        let parse = |v: serde_json::Value| serde_json::from_value::<TokenSource>(v).unwrap();
        assert_eq!(
            parse(json!({"header": "X-Api-Token"})),
            TokenSource::Header {
                name: "x-api-token".into(),
                prefix: None
            }
        );
        assert_eq!(
            parse(json!({"cookie": "s"})),
            TokenSource::Cookie { name: "s".into() }
        );
        assert_eq!(
            parse(json!({"query": "t"})),
            TokenSource::Query { name: "t".into() }
        );
    }
}
