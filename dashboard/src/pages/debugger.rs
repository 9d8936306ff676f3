//! The token debugger: "why was this request refused?". A pasted token (or `Authorization` header, or
//! curl line) is decoded and decided in the browser by `edgewarden-core`, the engine the filter runs,
//! against this admin API's issuer or a pasted filter configuration, for a method and path.
//! The token never leaves the page: it lives in a signal only (no URL, no storage), and the only
//! requests made are for the admin API's public metadata and JWKS and, by `jti`, subject or client,
//! its revocation list. The revocations found are decided by the engine's own revocation check, as the
//! edge's copy of the feed is, so a revoked token gets the edge's answer word for word.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgewarden_api_types::{Revocation, RevokeRequest};
use edgewarden_core::challenge;
use edgewarden_core::config::RuleConfig;
use edgewarden_core::decision::Decision;
use edgewarden_core::engine::{Engine, Request};
use edgewarden_core::revocation::{
    NoRevocations, PrincipalRevocation, RevocationKey, RevocationSet, RevocationView,
};
use edgewarden_core::token::{Rejection, VerifiedToken};
use leptos::prelude::*;
use serde_json::{json, Value};

use crate::api::{self, OwnIssuer};
use crate::app::Ctx;
use crate::components::{Confirm, ErrorView, Loading};
use crate::pages::{query_param, query_setter};

/// The debugger page.
#[component]
pub fn Debugger() -> impl IntoView {
    let own = LocalResource::new(|| async { api::own_issuer().await });
    view! {
        <div class="page-head"><h1>"Token debugger"</h1></div>
        <p class="muted">
            "Paste a token, an Authorization header or a curl line: this page decides it with the edge's own engine, in your browser. "
            "The token is never sent anywhere and never stored; close the tab and it is gone."
        </p>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match own.await {
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok(own) => view! { <Workbench own=own /> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn Workbench(own: OwnIssuer) -> impl IntoView {
    let own = StoredValue::new(own);
    let paste = RwSignal::new(String::new());
    let method_q = query_param("method");
    let path_q = query_param("path");
    let set_query = query_setter();
    let method = RwSignal::new(method_q.get_untracked());
    let path = RwSignal::new(path_q.get_untracked());
    let use_config = RwSignal::new(false);
    let from_edge = RwSignal::new(false);
    let picked = RwSignal::new(String::new());
    let pick_note = RwSignal::new(None::<String>);
    let config_text = RwSignal::new(String::new());
    let reported = LocalResource::new(|| async { api::edges().await });
    // Picking an edge fills the configuration with the one it reported (secrets left out by the edge).
    let pick = move |hash: String| {
        picked.set(hash.clone());
        if hash.is_empty() {
            return;
        }
        pick_note.set(Some("loading the edge's configuration…".to_owned()));
        leptos::task::spawn_local(async move {
            match api::edge_config(&hash).await {
                Ok(doc) => {
                    config_text
                        .set(serde_json::to_string_pretty(&doc.document).unwrap_or_default());
                    pick_note.set(Some(format!(
                        "configuration {} reported by edge {}; secrets stay at the edge",
                        crate::pages::edges::short_hash(&doc.hash),
                        doc.edge
                    )));
                }
                Err(e) => pick_note.set(Some(format!("cannot load that configuration: {e}"))),
            }
        });
    };
    let jwks_text = RwSignal::new(String::new());
    let result = RwSignal::new(None::<(u32, Result<Analysis, String>)>);
    // Counts decisions, so a page (or a test) can tell a new answer from the previous one, and an answer
    // still waiting for its revocation lookup from a newer one.
    let runs = RwSignal::new(0u32);
    let engines =
        StoredValue::new_local(None::<((Option<String>, String), Result<Engine, String>)>);

    let decide = move || {
        let method_v = Some(method.get_untracked().trim().to_uppercase())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "GET".to_owned());
        let path_v = Some(path.get_untracked().trim().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        set_query(&[("method", method_v.clone()), ("path", path_v.clone())]);
        let config = if use_config.get_untracked() {
            Some(config_text.get_untracked())
        } else {
            None
        };
        let jwks = jwks_text.get_untracked();
        // The engine is built once per configuration (parsing it and its keys is most of the work), as
        // the filter builds it once per configuration load, and reused for every token decided after.
        let key = (config.clone(), jwks.clone());
        let fresh = engines.with_value(|e| e.as_ref().is_none_or(|(k, _)| *k != key));
        if fresh {
            // A configuration the filter would refuse is kept with its message (it names the field).
            let built = own.with_value(|own| build_engine(own, config.as_deref(), &jwks));
            engines.set_value(Some((key, built)));
        }
        let token = paste.get_untracked();
        let analysis = engines.with_value(|e| match e.as_ref().map(|(_, built)| built) {
            Some(Ok(engine)) => {
                own.with_value(|own| analyze(engine, own, &token, &method_v, &path_v))
            }
            Some(Err(message)) => Err(message.clone()),
            None => Err("no engine was built".to_owned()),
        });
        let run = runs.get_untracked() + 1;
        runs.set(run);
        let mut analysis = match analysis {
            Ok(a) if !a.lookups.is_empty() => a,
            other => {
                result.set(Some((run, other)));
                return;
            }
        };
        // The edge decides with its copy of the feed; the page looks the token's jti, subject and client up
        // (by value, never sending the token) and decides again with what it found, at the same `now`.
        leptos::task::spawn_local(async move {
            let found = look_up_revocations(&analysis.lookups).await;
            if runs.get_untracked() != run {
                return; // a newer decision was asked for meanwhile
            }
            if let (Ok(hits), Some(jwt)) = (&found, find_token(&token)) {
                let set = revocation_set(hits);
                engines.with_value(|e| {
                    if let Some((_, Ok(engine))) = e.as_ref() {
                        let request = Request {
                            method: &method_v,
                            path: &path_v,
                            token: Some(&jwt),
                        };
                        analysis.decide(engine, &request, &set);
                    }
                });
            }
            analysis.revocations = Some(found.map_err(|e| e.to_string()));
            result.set(Some((run, Ok(analysis))));
        });
    };

    view! {
        <form class="debugger" on:submit=move |ev| { ev.prevent_default(); decide(); }>
            <label class="wide">"Token, Authorization header or curl line"
                <textarea name="debug_token" rows="4" autocomplete="off" spellcheck="false"
                    placeholder="eyJhbGciOi... or Authorization: Bearer eyJ... or curl -H 'Authorization: Bearer eyJ...' https://api.example.com/orders"
                    prop:value=paste on:input:target=move |ev| paste.set(ev.target().value())></textarea>
            </label>
            <label>"Method"
                <input name="debug_method" placeholder="GET" prop:value=method on:input:target=move |ev| method.set(ev.target().value()) />
            </label>
            <label>"Path"
                <input name="debug_path" placeholder="/orders/42" prop:value=path on:input:target=move |ev| path.set(ev.target().value()) />
            </label>
            <fieldset>
                <legend>"Decide as"</legend>
                <label class="choice">
                    <input type="radio" name="debug_source" value="own" prop:checked=move || !use_config.get() on:change=move |_| { use_config.set(false); from_edge.set(false); } />
                    {move || own.with_value(|o| format!("an edge that trusts this admin API ({}), no rules", o.issuer))}
                </label>
                <label class="choice">
                    <input type="radio" name="debug_source" value="config" prop:checked=move || use_config.get() && !from_edge.get() on:change=move |_| { use_config.set(true); from_edge.set(false); } />
                    "an edge with this filter configuration"
                </label>
                <label class="choice">
                    <input type="radio" name="debug_source" value="edge" prop:checked=move || from_edge.get() on:change=move |_| { use_config.set(true); from_edge.set(true); } />
                    "one of the edges, with the configuration it reported"
                </label>
            </fieldset>
            <Show when=move || from_edge.get()>
                <Transition fallback=Loading>
                    {move || Suspend::new(async move {
                        match reported.await {
                            Err(e) => view! { <ErrorView error=e /> }.into_any(),
                            Ok(page) => {
                                let options: Vec<(String, String)> = page.items.iter().flat_map(|e| {
                                    e.instances.iter().filter(|i| i.config_known).filter_map(|i| {
                                        let hash = i.config_hash.clone()?;
                                        Some((hash.clone(), format!("{} / {} — configuration {}", e.name, crate::pages::edges::instance_label(i), crate::pages::edges::short_hash(&hash))))
                                    }).collect::<Vec<_>>()
                                }).collect();
                                if options.is_empty() {
                                    view! { <p class="muted">"No edge has reported its configuration yet: edges report it on their first poll after start."</p> }.into_any()
                                } else {
                                    view! {
                                        <label class="wide">"Edge"
                                            <select name="debug_edge" prop:value=move || picked.get() on:change:target=move |ev| pick(ev.target().value())>
                                                <option value="">"Pick an edge instance…"</option>
                                                {options.into_iter().map(|(hash, label)| view! { <option value=hash>{label}</option> }).collect::<Vec<_>>()}
                                            </select>
                                        </label>
                                    }.into_any()
                                }
                            }
                        }
                    })}
                </Transition>
                {move || pick_note.get().map(|note| view! { <p class="muted" id="debug-picked" role="status">{note}</p> })}
            </Show>
            <Show when=move || use_config.get()>
                <label class="wide">"Filter configuration (the pluginConfig JSON)"
                    <textarea name="debug_config" rows="8" spellcheck="false" prop:value=config_text on:input:target=move |ev| config_text.set(ev.target().value())></textarea>
                </label>
                <label class="wide">"JWKS for issuers with remote_jwks (optional; this admin API's own is used for its issuer)"
                    <textarea name="debug_jwks" rows="3" spellcheck="false" prop:value=jwks_text on:input:target=move |ev| jwks_text.set(ev.target().value())></textarea>
                </label>
            </Show>
            <button type="submit">"Decide"</button>
        </form>
        {move || result.get().map(|(run, r)| match r {
            Err(message) => view! { <div class="error" role="alert" id="debug-error" data-run=run.to_string()><p>{message}</p></div> }.into_any(),
            Ok(a) => view! { <Report analysis=a own_issuer=own.with_value(|o| o.issuer.clone()) run=run /> }.into_any(),
        })}
    }
}

/// Everything the page shows about one token and request.
#[derive(Clone, Debug)]
struct Analysis {
    header: Value,
    claims: Value,
    now: u64,
    leeway: u64,
    /// Seconds this browser's clock is ahead of the admin API's (negative: behind), when known.
    skew: Option<i64>,
    signature: Result<VerifiedToken, Rejection>,
    rule: Option<(usize, String)>,
    verdict_allowed: bool,
    status: u16,
    reason: &'static str,
    description: String,
    www_authenticate: Option<String>,
    body: Option<String>,
    /// How long decoding and deciding took in this browser, in milliseconds.
    took_ms: f64,
    /// What the edge would answer at the admin API's clock instead of this browser's, when that differs:
    /// (status, reason, description).
    at_server_clock: Option<(u16, &'static str, String)>,
    /// The token's jti, subject and client, as looked up in the revocation list.
    lookups: Vec<(&'static str, String)>,
    /// The revocations found for them (`None`: not looked up, nothing to look up by).
    revocations: Option<Result<Vec<Revocation>, String>>,
}

impl Analysis {
    /// Decides `request` with `revocations` at this analysis's `now` (and at the admin API's clock when
    /// the two differ by more than the `Date` header's one-second resolution) and records the answer.
    fn decide(&mut self, engine: &Engine, request: &Request<'_>, revocations: &dyn RevocationView) {
        let decision = engine.evaluate(request, None, revocations, self.now);
        let realm = &engine.config().realm;
        let allowed = decision.is_allowed();
        self.verdict_allowed = allowed;
        self.status = decision.status;
        self.reason = decision.reason.as_str();
        self.description = decision.description.to_string();
        self.www_authenticate = (!allowed).then(|| challenge::www_authenticate(realm, &decision));
        self.body = (!allowed).then(|| challenge::json_body(&decision));
        self.at_server_clock = self
            .skew
            .filter(|s| s.unsigned_abs() > SKEW_RESOLUTION)
            .map(|s| self.now.saturating_add_signed(-s))
            .map(|server_now| engine.evaluate(request, None, revocations, server_now))
            .filter(|other: &Decision| other.reason != decision.reason)
            .map(|other| {
                (
                    other.status,
                    other.reason.as_str(),
                    other.description.to_string(),
                )
            });
    }
}

/// Seconds of clock difference the admin API's `Date` header cannot tell from none (it has whole seconds,
/// and the answer takes time to arrive).
const SKEW_RESOLUTION: u64 = 2;

/// The token's identifiers the revocation list is searched by: `jti`, `sub` and `client_id` (or `azp`).
fn lookups_of(claims: &Value) -> Vec<(&'static str, String)> {
    [("jti", "jti"), ("subject", "sub"), ("client", "client_id")]
        .into_iter()
        .filter_map(|(kind, claim)| {
            claims
                .get(claim)
                .or_else(|| (claim == "client_id").then(|| claims.get("azp")).flatten())
                .and_then(Value::as_str)
                .map(|v| (kind, v.to_owned()))
        })
        .collect()
}

/// Every revocation that names one of `lookups`, of any issuer (the engine's check scopes them).
async fn look_up_revocations(
    lookups: &[(&'static str, String)],
) -> Result<Vec<Revocation>, api::ApiError> {
    let mut hits = Vec::new();
    for (kind, value) in lookups {
        let page =
            api::revocations(&[("kind", (*kind).to_owned()), ("value", value.clone())]).await?;
        hits.extend(page.items);
    }
    Ok(hits)
}

/// The revocation state an edge would hold for `hits`, keyed as the feed keys them.
fn revocation_set(hits: &[Revocation]) -> RevocationSet {
    let mut set = RevocationSet::new();
    for r in hits {
        let key = RevocationKey::of_entry(r.issuer.as_deref(), &r.value);
        let principal = PrincipalRevocation {
            revoked_at: r.revoked_at.max(0) as u64,
            expires_at: r.expires_at.max(0) as u64,
        };
        match r.kind.as_str() {
            "jti" => set.insert_jti(key, principal.expires_at),
            "subject" => set.insert_subject(key, principal),
            "client" => set.insert_client(key, principal),
            _ => {}
        }
    }
    set
}

fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or_else(js_sys::Date::now)
}

fn analyze(
    engine: &Engine,
    own: &OwnIssuer,
    paste: &str,
    method: &str,
    path: &str,
) -> Result<Analysis, String> {
    let started = now_ms();
    let token = find_token(paste).ok_or_else(|| {
        "no token found: paste a JWT (three base64url parts separated by dots), an Authorization header or a curl line that carries one".to_owned()
    })?;
    let (header, claims) = decode(&token)?;
    let now = (js_sys::Date::now() / 1000.0) as u64;
    let leeway = engine.config().clock_skew_seconds;
    let signature = engine.verify(&token, now);
    let rule = engine.match_rule(method, path).map(|i| {
        let text = engine
            .config()
            .rules
            .get(i)
            .map(describe_rule)
            .unwrap_or_default();
        (i, text)
    });
    let request = Request {
        method,
        path,
        token: Some(&token),
    };
    let lookups = lookups_of(&claims);
    let mut analysis = Analysis {
        header,
        claims,
        now,
        leeway,
        skew: own
            .server_time
            .map(|server| (own.fetched_at - server).round() as i64),
        signature,
        rule,
        verdict_allowed: false,
        status: 0,
        reason: "",
        description: String::new(),
        www_authenticate: None,
        body: None,
        took_ms: 0.0,
        at_server_clock: None,
        lookups,
        revocations: None,
    };
    analysis.decide(engine, &request, &NoRevocations);
    analysis.took_ms = now_ms() - started;
    Ok(analysis)
}

/// The engine an edge would run: this admin API's issuer and keys, or a pasted configuration (validated
/// by the code the filter runs at load) with remote JWKS filled from this admin API or the pasted JWKS.
fn build_engine(own: &OwnIssuer, config: Option<&str>, jwks: &str) -> Result<Engine, String> {
    let Some(config) = config else {
        let own_jwks: Value = serde_json::from_str(&own.jwks)
            .map_err(|e| format!("this admin API's JWKS is not JSON: {e}"))?;
        let config = json!({"issuers": [{"issuer": own.issuer, "jwks": own_jwks}]});
        return Engine::from_json(config.to_string().as_bytes())
            .map_err(|e| format!("this admin API's keys are not usable: {e}"));
    };
    let config = without_redacted_keys(config.trim())?;
    let mut engine = Engine::from_json(config.as_bytes())
        .map_err(|e| format!("the filter would refuse this configuration at load: {e}"))?;
    let issuers: Vec<(String, bool)> = engine
        .config()
        .issuers
        .iter()
        .map(|i| (i.issuer.clone(), i.remote_jwks.is_some()))
        .collect();
    for (index, (issuer, remote)) in issuers.into_iter().enumerate() {
        if !remote {
            continue;
        }
        let document = if issuer == own.issuer {
            own.jwks.clone()
        } else if !jwks.trim().is_empty() {
            jwks.trim().to_owned()
        } else {
            continue;
        };
        engine
            .set_remote_jwks(index, document.as_bytes())
            .map_err(|e| format!("issuers[{index}] ({issuer}): the JWKS is not usable: {e}"))?;
    }
    Ok(engine)
}

/// A configuration an edge reported has its inline secret keys replaced by `"<redacted>"` (they never leave
/// the edge): those keys are left out here, so the rest decides as the edge does. An issuer left with no
/// key at all cannot be decided for, and says so. Text that is not a JSON object is passed on unchanged
/// for the engine's parser to name the problem.
fn without_redacted_keys(config: &str) -> Result<String, String> {
    use edgewarden_core::config::REDACTED;
    let Ok(mut doc) = serde_json::from_str::<Value>(config) else {
        return Ok(config.to_owned());
    };
    let Some(issuers) = doc.get_mut("issuers").and_then(Value::as_array_mut) else {
        return Ok(config.to_owned());
    };
    let mut changed = false;
    for (index, issuer) in issuers.iter_mut().enumerate() {
        let Some(keys) = issuer
            .get_mut("jwks")
            .and_then(|j| j.get_mut("keys"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        let before = keys.len();
        keys.retain(|k| {
            !k.as_object()
                .is_some_and(|o| o.values().any(|v| v.as_str() == Some(REDACTED)))
        });
        if keys.len() != before {
            changed = true;
            if keys.is_empty() {
                return Err(format!(
                    "issuers[{index}] verifies with inline secret keys, which the edge keeps to itself (\"{REDACTED}\" in its report): paste its configuration with the keys to decide tokens of that issuer"
                ));
            }
        }
    }
    Ok(if changed {
        doc.to_string()
    } else {
        config.to_owned()
    })
}

/// The first JWT-shaped word of a paste: a raw token, `Authorization: Bearer <t>`, `Bearer <t>` or a
/// curl line with `-H 'Authorization: Bearer <t>'`.
fn find_token(paste: &str) -> Option<String> {
    paste
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ',' | ';'))
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && parts[0].len() >= 4
                && parts[1].len() >= 2
                && parts.iter().all(|p| {
                    p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        })
        .map(str::to_owned)
}

/// Header and claims, decoded without verification (for display only).
fn decode(token: &str) -> Result<(Value, Value), String> {
    let mut parts = token.split('.');
    let mut part = |name: &str| -> Result<Value, String> {
        let text = parts.next().unwrap_or_default();
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| format!("the {name} is not base64url: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the {name} is not JSON: {e}"))
    };
    Ok((part("header")?, part("payload")?))
}

/// A rule in words: what it matches and what it requires.
pub(crate) fn describe_rule(rule: &RuleConfig) -> String {
    let mut words = Vec::new();
    let methods = if rule.r#match.methods.is_empty() {
        "any method".to_owned()
    } else {
        rule.r#match.methods.join(", ")
    };
    let what = match (&rule.r#match.path, &rule.r#match.prefix) {
        (Some(path), _) => format!("{methods} on exactly {path}"),
        (None, Some(prefix)) => format!("{methods} under {prefix}"),
        (None, None) => format!("{methods} on any path"),
    };
    words.push(what);
    if rule.allow_anonymous {
        words.push("anonymous access allowed".to_owned());
    }
    if !rule.require_scopes.is_empty() {
        words.push(format!(
            "requires every scope of: {}",
            rule.require_scopes.join(" ")
        ));
    }
    if !rule.require_any_scopes.is_empty() {
        words.push(format!(
            "requires one scope of: {}",
            rule.require_any_scopes.join(" ")
        ));
    }
    if !rule.require_roles.is_empty() {
        words.push(format!(
            "requires a role of: {}",
            rule.require_roles.join(" ")
        ));
    }
    words.join("; ")
}

/// "42 s ago" / "in 3 min", for a difference in seconds (positive: in the past).
fn ago(seconds: i64) -> String {
    let (n, future) = (seconds.unsigned_abs(), seconds < 0);
    let text = match n {
        n if n < 120 => format!("{n} s"),
        n if n < 7200 => format!("{} min", n / 60),
        n if n < 172_800 => format!("{} h", n / 3600),
        n => format!("{} d", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn utc(at: i64) -> String {
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(at as f64 * 1000.0));
    String::from(date.to_iso_string())
}

/// One line per time claim: absolute, relative to now, and what the edge does with its leeway.
fn time_lines(claims: &Value, now: u64, leeway: u64) -> Vec<(&'static str, String)> {
    let now = now as i64;
    let leeway = leeway as i64;
    let mut lines = Vec::new();
    let at = |name: &str| claims.get(name).and_then(Value::as_i64);
    if let Some(exp) = at("exp") {
        let verdict = if now < exp {
            format!("valid for {}", ago(now - exp).trim_start_matches("in "))
        } else if now < exp + leeway {
            format!(
                "expired {}; the edge still accepts it for {} s (leeway {leeway} s)",
                ago(now - exp),
                exp + leeway - now
            )
        } else {
            format!(
                "expired {}; the edge accepted it until {} (leeway {leeway} s)",
                ago(now - exp),
                ago(now - exp - leeway)
            )
        };
        lines.push(("exp", format!("{} — {verdict}", utc(exp))));
    }
    if let Some(nbf) = at("nbf") {
        let verdict = if nbf <= now + leeway {
            "in force".to_owned()
        } else {
            format!(
                "not valid yet: starts {} (leeway {leeway} s)",
                ago(now - nbf)
            )
        };
        lines.push(("nbf", format!("{} — {verdict}", utc(nbf))));
    }
    if let Some(iat) = at("iat") {
        let verdict = if iat <= now + leeway {
            format!("issued {}", ago(now - iat))
        } else {
            format!(
                "issued in the future ({}): the issuer's clock runs ahead",
                ago(now - iat)
            )
        };
        lines.push(("iat", format!("{} — {verdict}", utc(iat))));
    }
    lines
}

#[component]
fn Report(analysis: Analysis, own_issuer: String, run: u32) -> impl IntoView {
    let a = analysis;
    let times = time_lines(&a.claims, a.now, a.leeway);
    let skew_line = match a.skew {
        None => "the admin API sent no Date header: clock difference unknown".to_owned(),
        Some(s) if s.unsigned_abs() <= SKEW_RESOLUTION => format!(
            "this browser and the admin API agree within {SKEW_RESOLUTION} s (the Date header has whole seconds): the clock does not explain this answer"
        ),
        Some(s) => {
            let direction = if s > 0 { "ahead of" } else { "behind" };
            let matters = if s.unsigned_abs() > a.leeway {
                format!(
                    "more than the edge's leeway of {} s: the times below are off by that much",
                    a.leeway
                )
            } else {
                format!("within the edge's leeway of {} s", a.leeway)
            };
            let explains = match &a.at_server_clock {
                Some((status, reason, description)) => format!(
                    "by the admin API's clock the edge would answer {status} ({reason}): {description}; the clock difference explains this answer"
                ),
                None => "by the admin API's clock the answer is the same: the clock difference does not explain it".to_owned(),
            };
            format!(
                "this browser's clock is {} s {direction} the admin API's; {matters}; {explains}",
                s.unsigned_abs()
            )
        }
    };
    let signature = match &a.signature {
        Ok(t) => format!(
            "verified with {} key {} of issuer {}",
            t.alg,
            t.kid.as_deref().unwrap_or("(no kid)"),
            t.iss
        ),
        Err(r) => match r.reason.as_str() {
            // Time and claim checks come after the signature in `verify`: a refusal for them means
            // the signature itself verified.
            "expired" | "not_yet_valid" | "issued_in_future" | "missing_expiry"
            | "wrong_audience" | "wrong_type" | "missing_claim" => {
                "verified (the token is refused for another reason, below)".to_owned()
            }
            reason => format!("not verified: {} ({reason})", r.description),
        },
    };
    let rule = match &a.rule {
        Some((i, text)) => format!("rules[{i}]: {text}"),
        None => "no rule matches: a valid token is required, with no scope or role".to_owned(),
    };
    let header = serde_json::to_string_pretty(&a.header).unwrap_or_default();
    let claims = serde_json::to_string_pretty(&a.claims).unwrap_or_default();
    let verdict = if a.verdict_allowed && a.reason == "allowed" {
        format!("allowed: {}", a.description)
    } else if a.verdict_allowed {
        format!("allowed ({}): {}", a.reason, a.description)
    } else {
        format!(
            "refused with {} ({}): {}",
            a.status, a.reason, a.description
        )
    };
    let verdict_class = if a.verdict_allowed {
        "verdict allowed"
    } else {
        "verdict denied"
    };
    let iss = a
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let lookups = a.lookups.clone();
    let revocations = a.revocations.clone().unwrap_or_else(|| Ok(Vec::new()));
    let took = format!(
        "decoded and decided in {:.2} ms, in this browser",
        a.took_ms
    );
    view! {
        <section aria-labelledby="verdict-h" class="debug-report">
            <h2 id="verdict-h">"Decision"</h2>
            <p class=verdict_class id="debug-verdict" data-reason=a.reason data-status=a.status.to_string() data-run=run.to_string()>{verdict}</p>
            {a.www_authenticate.clone().map(|h| view! {
                <p>"WWW-Authenticate: " <code id="debug-challenge">{h}</code></p>
                <p>"Body: " <code id="debug-body">{a.body.clone().unwrap_or_default()}</code></p>
            })}
            <p class="muted" id="debug-took">{took}</p>
            <dl class="facts">
                <dt>"Signature"</dt><dd id="debug-signature">{signature}</dd>
                <dt>"Rule"</dt><dd id="debug-rule">{rule}</dd>
                <dt>"Clock"</dt><dd id="debug-clock">{skew_line}</dd>
                {times.into_iter().map(|(name, line)| view! { <dt>{name}</dt><dd class="mono">{line}</dd> }).collect::<Vec<_>>()}
            </dl>
            <RevocationCheck lookups=lookups found=revocations iss=iss own_issuer=own_issuer exp=a.claims.get("exp").and_then(Value::as_i64) />
            <h2>"Header"</h2>
            <pre class="mono" id="debug-header">{header}</pre>
            <h2>"Claims"</h2>
            <pre class="mono" id="debug-claims">{claims}</pre>
        </section>
    }
}

/// Whether the token's jti, subject or client is revoked for its issuer (`found`: what the lookup by value
/// found, never by sending the token), with a Revoke button for admins.
#[component]
fn RevocationCheck(
    lookups: Vec<(&'static str, String)>,
    found: Result<Vec<Revocation>, String>,
    iss: String,
    own_issuer: String,
    exp: Option<i64>,
) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let own = iss == own_issuer;
    let found = found.map(|hits| {
        let hits: Vec<Revocation> = hits
            .into_iter()
            .filter(|r| {
                // An entry with no issuer (recorded before revocations named one) applies to all.
                r.issuer
                    .as_deref()
                    .is_none_or(|i| i == iss || (i == own_issuer && iss.is_empty()))
            })
            .collect();
        (lookups, hits)
    });
    let revoke = Action::new_local(move |r: &RevokeRequest| {
        let r = r.clone();
        async move { api::revoke(r).await }
    });
    let confirming = RwSignal::new(None::<RevokeRequest>);
    let iss = StoredValue::new(iss);
    view! {
        <h2>"Revocation"</h2>
        {match found {
                    Err(e) => view! { <p class="error" role="alert" id="debug-revocation">{format!("revocations not checked, so the decision above leaves them out: {e}")}</p> }.into_any(),
                    Ok((lookups, hits)) => {
                        let summary = if hits.is_empty() {
                            "not revoked: no revocation names its jti, subject or client".to_owned()
                        } else {
                            hits.iter().map(|r| format!("{} {} revoked ({})", r.kind, r.value, r.reason)).collect::<Vec<_>>().join("; ")
                        };
                        let jti = lookups.iter().find(|(k, _)| *k == "jti").map(|(_, v)| v.clone());
                        view! {
                            <p id="debug-revocation">{summary}</p>
                            <Show when=move || ctx.can_write() && hits.is_empty()>
                                {jti.clone().map(|jti| view! {
                                    <button type="button" class="danger" on:click=move |_| {
                                        let issuer = iss.get_value();
                                        let foreign = !own && !issuer.is_empty();
                                        confirming.set(Some(RevokeRequest {
                                            jti: Some(jti.clone()),
                                            issuer: foreign.then_some(issuer),
                                            // A foreign jti stays in the feed until the token's exp.
                                            expires_at: if foreign { exp } else { None },
                                            reason: Some("revoked from the token debugger".to_owned()),
                                            ..Default::default()
                                        }));
                                    }>"Revoke this token"</button>
                                })}
                            </Show>
                        }.into_any()
                    }
        }}
        {move || confirming.get().map(|request| {
            let message = format!(
                "Revoke token {}? Every edge refuses it within seconds.",
                request.jti.clone().unwrap_or_default()
            );
            view! {
                <Confirm
                    message=Signal::derive(move || message.clone())
                    confirm_label="Revoke"
                    on_confirm=Callback::new({ let request = request.clone(); move |_| { revoke.dispatch(request.clone()); confirming.set(None); } })
                    on_cancel=Callback::new(move |_| confirming.set(None))
                />
            }
        })}
        {move || revoke.value().get().map(|r| match r {
            Ok(r) => view! { <p class="note" id="debug-revoked">{format!("revoked {} {}: the edges pick it up within seconds", r.kind, r.value)}</p> }.into_any(),
            Err(e) => view! { <ErrorView error=e /> }.into_any(),
        })}
    }
}
