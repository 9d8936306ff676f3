//! The engine: configuration, prepared keys and compiled rules, and the per-request decision.
//! Keys are parsed once (at construction and when a remote JWKS arrives), never per request; the
//! per-request path is: match a rule, take the verified token from the cache or verify it, then run
//! the checks that can change between requests (time, revocation, rule requirements) every time.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::cache::{CacheOutcome, TokenCache};
use crate::config::{Config, ConfigError};
use crate::decision::{Decision, Reason, Verdict};
use crate::jwks::{JwksError, Key, KeySet};
use crate::revocation::RevocationView;
use crate::rules::{self, CompiledRule};
use crate::token::{self, fingerprint, Rejection, VerifiedToken};

pub(crate) use crate::token::show;

/// One request as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// HTTP method (`:method`).
    pub method: &'a str,
    /// Request path without the query.
    pub path: &'a str,
    /// The credential from [`crate::config::TokenSource::extract`], if one was presented.
    pub token: Option<&'a str>,
}

/// Key-set generations are unique across every engine in the process, so a cache that outlives an engine
/// (a reconfiguration) can never mistake entries verified under old keys for current ones.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Clone)]
struct IssuerKeys {
    inline: KeySet,
    remote: KeySet,
    remote_configured: bool,
}

/// The token engine: configuration, per-issuer keys (inline and remote), compiled rules and the key generation.
#[derive(Debug, Clone)]
pub struct Engine {
    config: Config,
    issuers: Vec<IssuerKeys>,
    rules: Vec<CompiledRule>,
    /// `allowed_typ`, without `application/`, lower case.
    allowed_typ: Vec<String>,
    generation: u64,
}

impl Engine {
    /// Validates the configuration and builds the inline key sets (errors name `issuers[i].jwks`).
    pub fn new(config: Config) -> Result<Engine, ConfigError> {
        Engine::build(config, None)
    }

    /// Like [`Engine::new`], but an issuer whose key source `previous` has unchanged (the same `issuer`
    /// with the same inline `jwks`, or the same `remote_jwks`) takes its prepared keys from `previous`
    /// instead of preparing them again: inline keys, and remote keys already fetched. Preparing a key is
    /// most of what building an engine costs (an ES256 key's tables, an RSA key's Montgomery constants),
    /// so a configuration that changes only rules or options is built in a fraction of the time.
    pub fn reusing_keys(config: Config, previous: &Engine) -> Result<Engine, ConfigError> {
        Engine::build(config, Some(previous))
    }

    fn build(config: Config, previous: Option<&Engine>) -> Result<Engine, ConfigError> {
        config.validate()?;
        let mut issuers = Vec::with_capacity(config.issuers.len());
        for (i, issuer) in config.issuers.iter().enumerate() {
            let same_issuer = |pick: &dyn Fn(&crate::config::IssuerConfig) -> bool| {
                let previous = previous?;
                let j = previous
                    .config
                    .issuers
                    .iter()
                    .position(|p| p.issuer == issuer.issuer && pick(p))?;
                previous.issuers.get(j)
            };
            let inline = match &issuer.jwks {
                Some(jwks) => match same_issuer(&|p| p.jwks.as_ref() == Some(jwks)) {
                    Some(keys) => keys.inline.clone(),
                    None => KeySet::from_jwks_value(jwks, true).map_err(|e| {
                        ConfigError::new(format!("issuers[{i}].jwks"), e.to_string())
                    })?,
                },
                None => KeySet::default(),
            };
            let remote = match &issuer.remote_jwks {
                Some(source) => same_issuer(&|p| p.remote_jwks.as_ref() == Some(source))
                    .map(|keys| keys.remote.clone())
                    .unwrap_or_default(),
                None => KeySet::default(),
            };
            issuers.push(IssuerKeys {
                inline,
                remote,
                remote_configured: issuer.remote_jwks.is_some(),
            });
        }
        let allowed_typ = config
            .allowed_typ
            .iter()
            .map(|t| token::strip_application(t).to_ascii_lowercase())
            .collect();
        Ok(Engine {
            rules: rules::compile(&config.rules),
            issuers,
            allowed_typ,
            config,
            generation: next_generation(),
        })
    }

    /// Parses, validates and builds an engine from plugin-configuration JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Engine, ConfigError> {
        Engine::new(Config::from_json(bytes)?)
    }

    /// The configuration the engine was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current key-set generation; it changes whenever a remote key set really changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Replaces the remote key set of issuer `issuer` (symmetric keys refused). Returns the number of keys.
    /// On error the previous keys stay in place. A refresh that brings the same keys keeps the cache warm.
    pub fn set_remote_jwks(&mut self, issuer: usize, jwks: &[u8]) -> Result<usize, JwksError> {
        let keys = self
            .issuers
            .get_mut(issuer)
            .ok_or(JwksError::NoSuchIssuer(issuer))?;
        if !keys.remote_configured {
            return Err(JwksError::NotRemote(issuer));
        }
        let set = KeySet::from_jwks_json(jwks, false)?;
        let len = set.len();
        if keys.remote.is_empty() || set.digest() != keys.remote.digest() {
            keys.remote = set;
            self.generation = next_generation();
        }
        Ok(len)
    }

    /// Whether issuer `issuer` has remote keys loaded.
    pub fn has_remote_keys(&self, issuer: usize) -> bool {
        self.issuers
            .get(issuer)
            .is_some_and(|k| !k.remote.is_empty())
    }

    /// The inline key set of issuer `issuer` (empty when it has none).
    pub fn inline_keys(&self, issuer: usize) -> Option<&KeySet> {
        self.issuers.get(issuer).map(|k| &k.inline)
    }

    /// The remote key set of issuer `issuer` (empty until loaded).
    pub fn remote_keys(&self, issuer: usize) -> Option<&KeySet> {
        self.issuers.get(issuer).map(|k| &k.remote)
    }

    /// Index of the first rule matching `method` and `path` (normalised first; see [`crate::rules::normalize_path`]).
    pub fn match_rule(&self, method: &str, path: &str) -> Option<usize> {
        rules::find(&self.rules, method, path)
    }

    /// The deny decision for a credential that was presented but could not be extracted
    /// (`Authorization: Basic ...`, an empty bearer). It is refused even on anonymous routes:
    /// a bad credential is never silently downgraded to anonymous access.
    pub fn rejected(&self, req: &Request<'_>, rejection: Rejection) -> Decision {
        Decision::from_rejection(
            rejection,
            self.match_rule(req.method, req.path),
            CacheOutcome::Bypass,
        )
    }

    /// Verifies a token completely (structure, header hardening, signature, claims, time) without rules or cache:
    /// introspection uses this.
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, Rejection> {
        let verified = self.verify_untimed(token, fingerprint(token))?;
        self.check_time(&verified, now)?;
        Ok(verified)
    }

    /// Everything that does not depend on `now` or on revocation: this is exactly what the cache may skip.
    fn verify_untimed(&self, text: &str, fingerprint: u64) -> Result<VerifiedToken, Rejection> {
        let parsed = token::parse(text, self.config.max_token_bytes)?;
        let iss = match parsed.claims.get("iss") {
            Some(Value::String(iss)) => iss.as_str(),
            Some(_) => {
                return Err(Rejection::new(
                    Reason::Malformed,
                    "claim iss is not a string",
                ))
            }
            None => {
                return Err(Rejection::new(
                    Reason::WrongIssuer,
                    "token has no iss claim",
                ))
            }
        };
        let Some(issuer_index) = self.config.issuers.iter().position(|i| i.issuer == iss) else {
            return Err(Rejection::new(
                Reason::WrongIssuer,
                format!("issuer {} is not configured", show(iss)),
            ));
        };
        let key = self.select_key(issuer_index, &parsed)?;
        if !key.verify(parsed.signing_input.as_bytes(), &parsed.signature) {
            let named = key
                .kid()
                .map(|k| format!("key {}", show(k)))
                .unwrap_or_else(|| "the issuer's key".to_string());
            return Err(Rejection::new(
                Reason::BadSignature,
                format!(
                    "signature does not verify with {named} ({})",
                    key.alg().as_str()
                ),
            ));
        }
        let extracted = token::extract(&parsed.claims, &self.config.roles_claim)?;
        let mut verified = VerifiedToken {
            issuer_index,
            iss: iss.to_string(),
            sub: extracted.sub,
            aud: extracted.aud,
            exp: extracted.exp,
            nbf: extracted.nbf,
            iat: extracted.iat,
            jti: extracted.jti,
            client_id: extracted.client_id,
            scopes: extracted.scopes,
            roles: extracted.roles,
            alg: parsed.alg.as_str().to_string(),
            kid: parsed.kid,
            typ: parsed.typ,
            claims: parsed.claims,
            fingerprint,
            forwarded: Vec::new(),
        };
        self.check_static_claims(&verified)?;
        verified.forwarded = self.forward_headers(&verified, text);
        Ok(verified)
    }

    /// Picks the one key that may verify the token: exact `kid` match, or the issuer's only key for the alg when
    /// the token names no kid; the key's own alg must be the token's alg.
    fn select_key(&self, issuer: usize, parsed: &token::Parsed<'_>) -> Result<&Key, Rejection> {
        let Some(keys) = self.issuers.get(issuer) else {
            return Err(Rejection::new(
                Reason::WrongIssuer,
                "issuer index out of range",
            ));
        };
        let refetch = keys.remote_configured.then_some(issuer);
        let all = || keys.inline.keys().iter().chain(keys.remote.keys());
        let alg = parsed.alg;
        match &parsed.kid {
            Some(kid) => {
                let Some(key) = all().find(|k| k.kid() == Some(kid.as_str())) else {
                    // A key the issuer publishes for an algorithm this edge does not verify: refetching cannot help,
                    // and the answer names the algorithm rather than calling the key unknown.
                    if let Some(alg) = keys
                        .inline
                        .unsupported_alg(kid)
                        .or_else(|| keys.remote.unsupported_alg(kid))
                    {
                        return Err(Rejection::new(
                            Reason::DisallowedAlgorithm,
                            format!(
                                "algorithm {alg} is not supported by this edge (key {} of issuer {})",
                                show(kid),
                                show(&self.issuer_name(issuer))
                            ),
                        ));
                    }
                    return Err(Rejection {
                        reason: Reason::UnknownKid,
                        description: format!(
                            "no key with kid {} for issuer {}",
                            show(kid),
                            show(&self.issuer_name(issuer))
                        ),
                        refetch_jwks: refetch,
                    });
                };
                if key.alg() != alg {
                    return Err(Rejection::new(
                        Reason::DisallowedAlgorithm,
                        format!(
                            "token alg {} does not match key {} ({})",
                            alg.as_str(),
                            show(kid),
                            key.alg().as_str()
                        ),
                    ));
                }
                Ok(key)
            }
            None => {
                let mut candidates = all().filter(|k| k.alg() == alg);
                match (candidates.next(), candidates.count()) {
                    (Some(key), 0) => Ok(key),
                    (None, _) => Err(Rejection {
                        reason: Reason::UnknownKid,
                        description: format!(
                            "token names no kid and the issuer has no {} key",
                            alg.as_str()
                        ),
                        refetch_jwks: refetch,
                    }),
                    (Some(_), more) => Err(Rejection::new(
                        Reason::UnknownKid,
                        format!(
                            "token names no kid and the issuer has {} {} keys",
                            more + 1,
                            alg.as_str()
                        ),
                    )),
                }
            }
        }
    }

    fn issuer_name(&self, issuer: usize) -> String {
        self.config
            .issuers
            .get(issuer)
            .map(|i| i.issuer.clone())
            .unwrap_or_default()
    }

    /// Audience, type and required claims: fixed for a given token and configuration, so safe to cache.
    fn check_static_claims(&self, t: &VerifiedToken) -> Result<(), Rejection> {
        if let Some(issuer) = self.config.issuers.get(t.issuer_index) {
            if !issuer.audiences.is_empty() {
                if t.aud.is_empty() {
                    return Err(Rejection::new(
                        Reason::WrongAudience,
                        format!(
                            "token has no aud claim, expected one of {}",
                            rules::show_list(&issuer.audiences)
                        ),
                    ));
                }
                if !t.aud.iter().any(|a| issuer.audiences.contains(a)) {
                    return Err(Rejection::new(
                        Reason::WrongAudience,
                        format!(
                            "audience {} is not accepted, expected one of {}",
                            rules::show_list(&t.aud),
                            rules::show_list(&issuer.audiences)
                        ),
                    ));
                }
            }
        }
        if !self.allowed_typ.is_empty() {
            let Some(typ) = &t.typ else {
                return Err(Rejection::new(
                    Reason::WrongType,
                    format!(
                        "token has no typ header, expected one of {}",
                        rules::show_list(&self.config.allowed_typ)
                    ),
                ));
            };
            let bare = token::strip_application(typ);
            if !self
                .allowed_typ
                .iter()
                .any(|a| a.eq_ignore_ascii_case(bare))
            {
                return Err(Rejection::new(
                    Reason::WrongType,
                    format!(
                        "token type {} is not accepted, expected one of {}",
                        show(typ),
                        rules::show_list(&self.config.allowed_typ)
                    ),
                ));
            }
        }
        for claim in &self.config.required_claims {
            if matches!(token::lookup(&t.claims, claim), None | Some(Value::Null)) {
                return Err(Rejection::new(
                    Reason::MissingClaim,
                    format!("required claim {} is missing", show(claim)),
                ));
            }
        }
        Ok(())
    }

    /// The time checks, with `clock_skew_seconds` of leeway:
    /// expired when `exp + leeway <= now` (so exactly at `exp + leeway` the token is expired, one second earlier it is valid),
    /// not yet valid when `nbf - leeway > now`, issued in the future when `iat - leeway > now`.
    pub fn check_time(&self, t: &VerifiedToken, now: u64) -> Result<(), Rejection> {
        let leeway = self.config.clock_skew_seconds;
        match t.exp {
            Some(exp) if exp.saturating_add(leeway) <= now => {
                return Err(Rejection::new(
                    Reason::Expired,
                    format!("token expired {}s ago (leeway {leeway}s)", now - exp),
                ));
            }
            None if self.config.require_exp => {
                return Err(Rejection::new(
                    Reason::MissingExpiry,
                    "token has no exp claim and require_exp is on",
                ));
            }
            _ => {}
        }
        if let Some(nbf) = t.nbf {
            if nbf.saturating_sub(leeway) > now {
                return Err(Rejection::new(
                    Reason::NotYetValid,
                    format!(
                        "token not valid for another {}s (leeway {leeway}s)",
                        nbf - now
                    ),
                ));
            }
        }
        if let Some(iat) = t.iat {
            if iat.saturating_sub(leeway) > now {
                return Err(Rejection::new(
                    Reason::IssuedInFuture,
                    format!(
                        "token issued {}s in the future (leeway {leeway}s)",
                        iat - now
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The full per-request decision: rule match, token (cache-assisted verify), time re-check, revocation,
    /// scopes and roles, forwarded headers.
    ///
    /// A request without a token passes only on a rule with `allow_anonymous`; a request with a token must
    /// present a valid one everywhere, anonymous rules included (a bad token is never downgraded to anonymous).
    pub fn evaluate(
        &self,
        req: &Request<'_>,
        cache: Option<&mut TokenCache>,
        revocations: &dyn RevocationView,
        now: u64,
    ) -> Decision {
        let rule_index = self.match_rule(req.method, req.path);
        let rule = rule_index.and_then(|i| self.rules.get(i));
        let Some(text) = req.token else {
            return match (rule, rule_index) {
                (Some(rule), Some(i)) if rule.allow_anonymous => Decision {
                    verdict: Verdict::Allow,
                    reason: Reason::Anonymous,
                    description: format!("no token, anonymous access allowed by rules[{i}]").into(),
                    status: 200,
                    required_scope: None,
                    token: None,
                    rule: rule_index,
                    cache: CacheOutcome::Bypass,
                    refetch_jwks: None,
                },
                _ => Decision::from_rejection(
                    Rejection::new(Reason::MissingToken, "no token presented"),
                    rule_index,
                    CacheOutcome::Bypass,
                ),
            };
        };
        // Refuse oversized tokens before spending a hash on them.
        if text.len() > self.config.max_token_bytes {
            return Decision::from_rejection(
                Rejection::new(
                    Reason::TokenTooLarge,
                    format!(
                        "token is {} bytes, maximum {}",
                        text.len(),
                        self.config.max_token_bytes
                    ),
                ),
                rule_index,
                CacheOutcome::Bypass,
            );
        }
        let fp = fingerprint(text);
        let verified = match cache {
            Some(cache) => match cache.lookup(text, fp, self.generation, now) {
                Some(hit) => Ok((hit, CacheOutcome::Hit)),
                None => self.verify_untimed(text, fp).map(|t| {
                    let t = Arc::new(t);
                    let ttl_end = now.saturating_add(self.config.cache.max_ttl_seconds);
                    let expires_at = t.exp.map_or(ttl_end, |exp| exp.min(ttl_end));
                    cache.insert(text, Arc::clone(&t), expires_at, self.generation, now);
                    (t, CacheOutcome::Miss)
                }),
            },
            None => self
                .verify_untimed(text, fp)
                .map(|t| (Arc::new(t), CacheOutcome::Bypass)),
        };
        let (token, outcome) = match verified {
            Ok(v) => v,
            Err(rejection) => {
                return Decision::from_rejection(rejection, rule_index, CacheOutcome::Miss)
            }
        };
        let deny = |reason: Reason, description: String, required_scope: Option<String>| Decision {
            verdict: Verdict::Deny,
            status: reason.status(),
            reason,
            description: description.into(),
            required_scope,
            token: Some(Arc::clone(&token)),
            rule: rule_index,
            cache: outcome,
            refetch_jwks: None,
        };
        if let Err(rejection) = self.check_time(&token, now) {
            return deny(rejection.reason, rejection.description, None);
        }
        if let Some(description) = revocations.stale(now) {
            return deny(Reason::StaleRevocationState, description, None);
        }
        if let Some(description) = revocations.check(&token) {
            return deny(Reason::Revoked, description, None);
        }
        if let Some(rule) = rule {
            if let Err(unmet) = rule.check(&token) {
                return deny(unmet.reason, unmet.description, unmet.required_scope);
            }
        }
        // Kept cheap: this runs on every allowed request, cache hits included.
        let description = Cow::Borrowed(match token.exp {
            Some(_) => "token accepted",
            None => "token accepted, no expiry",
        });
        Decision {
            verdict: Verdict::Allow,
            reason: Reason::Allowed,
            description,
            status: 200,
            required_scope: None,
            token: Some(token),
            rule: rule_index,
            cache: outcome,
            refetch_jwks: None,
        }
    }

    /// `forward_claims` and `forward_payload_header` for an accepted token. Missing claims set no header
    /// (the filter removes client-sent copies of every configured header regardless).
    fn forward_headers(&self, token: &VerifiedToken, text: &str) -> Vec<(String, String)> {
        if self.config.forward_claims.is_empty() && self.config.forward_payload_header.is_none() {
            // The common case allocates nothing.
            return Vec::new();
        }
        let mut headers = Vec::with_capacity(self.config.forward_claims.len() + 1);
        for fc in &self.config.forward_claims {
            let value = match token::lookup(&token.claims, &fc.claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                Some(other) => other.to_string(),
            };
            // Header values must not carry control characters (CR/LF would split headers).
            let value: String = value.chars().filter(|c| !c.is_control()).collect();
            headers.push((fc.header.clone(), value));
        }
        if let Some(header) = &self.config.forward_payload_header {
            if let Some(payload) = text.split('.').nth(1) {
                headers.push((header.clone(), payload.to_string()));
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests;
