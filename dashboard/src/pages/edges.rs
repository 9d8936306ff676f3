//! Edges: every Envoy that polls the revocation feed or reports usage, grouped by edge name, with its last
//! poll, how far behind the feed it is, and its last usage report; stale and silent edges stand out.
//! Under each name every Envoy instance is listed apart, with the configuration it reported (issuers,
//! audiences, leeway, rules in order, token source, report-only mode, revocation settings, decision
//! properties, read by the engine's own parser), and an edge whose instances run different
//! configurations is flagged.

use std::collections::{BTreeMap, HashMap};

use edgewarden_api_types::{
    Edge, EdgeConfig, EdgeInstance, EDGE_SILENT_AFTER_SECONDS, EDGE_STALE_AFTER_SECONDS,
};
use edgewarden_core::config::{Config, DecisionProperties, TokenSource};
use leptos::prelude::*;

use crate::api;
use crate::app::Ctx;
use crate::components::{Badge, ErrorView, Loading, RelTime};
use crate::pages::debugger::describe_rule;
use crate::pages::overview::fmt_count;

/// `in sync`, `behind`, `stale` or `silent`, by the same bounds the admin API's overview uses.
pub fn edge_state(edge: &Edge) -> &'static str {
    state_of(edge.staleness_seconds, edge.cursor_lag)
}

fn state_of(staleness: Option<i64>, lag: Option<i64>) -> &'static str {
    match staleness {
        None => "silent",
        Some(s) if s > EDGE_SILENT_AFTER_SECONDS => "silent",
        Some(s) if s > EDGE_STALE_AFTER_SECONDS => "stale",
        Some(_) if lag.unwrap_or(0) > 0 => "behind",
        Some(_) => "in sync",
    }
}

/// The first twelve hex digits of a configuration hash, as people compare them.
pub fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// One instance's name for people: its id (or "unnamed" for a filter that sends none) and node.
pub fn instance_label(i: &EdgeInstance) -> String {
    let id = if i.instance.is_empty() {
        "unnamed instance".to_owned()
    } else {
        i.instance.clone()
    };
    match &i.node {
        Some(node) => format!("{id} (node {node})"),
        None => id,
    }
}

/// Rows of a configuration as the page shows them: a label and its values.
type Rows = Vec<(&'static str, Vec<String>)>;

/// What the Edges page shows of one reported configuration, row by row, as the engine reads it.
fn describe(config: &Config) -> Rows {
    let issuers = config
        .issuers
        .iter()
        .map(|i| {
            let audiences = if i.audiences.is_empty() {
                "any audience".to_owned()
            } else {
                format!("audiences {}", i.audiences.join(", "))
            };
            let keys = match (&i.remote_jwks, &i.jwks) {
                (Some(r), _) => format!("keys from cluster {} at {}", r.cluster, r.path),
                (None, Some(j)) => format!(
                    "{} inline keys",
                    j.get("keys")
                        .and_then(serde_json::Value::as_array)
                        .map_or(0, Vec::len)
                ),
                (None, None) => "no keys".to_owned(),
            };
            format!("{}: {audiences}; {keys}", i.issuer)
        })
        .collect();
    let rules = if config.rules.is_empty() {
        vec!["none: every request needs a valid token".to_owned()]
    } else {
        config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| format!("rules[{i}]: {}", describe_rule(r)))
            .collect()
    };
    let source = match &config.token_source {
        TokenSource::Header {
            name,
            prefix: Some(p),
        } => format!("header {name}, scheme {:?}", p.trim()),
        TokenSource::Header { name, prefix: None } => format!("header {name}, whole value"),
        TokenSource::Cookie { name } => format!("cookie {name}"),
        TokenSource::Query { name } => format!("query parameter {name}"),
    };
    let revocation = match &config.control_plane {
        None => "no control plane: nothing is ever revoked at this edge".to_owned(),
        Some(cp) => format!(
            "feed via cluster {} every {} ms, held up to {} s; stale after {} s, then {}",
            cp.cluster,
            config.revocation.poll_interval_ms,
            config.revocation.long_poll_seconds,
            config.revocation.max_staleness_seconds,
            match config.revocation.on_stale {
                edgewarden_core::config::OnStale::Deny => "deny tokens",
                edgewarden_core::config::OnStale::Allow => "allow tokens",
            }
        ),
    };
    vec![
        ("Issuers", issuers),
        ("Leeway", vec![format!("{} s", config.clock_skew_seconds)]),
        ("Rules, in order", rules),
        ("Token source", vec![source]),
        (
            "Report-only",
            vec![if config.report_only {
                "on: nothing is refused, decisions are only reported".to_owned()
            } else {
                "off: refusals are enforced".to_owned()
            }],
        ),
        ("Revocation", vec![revocation]),
        (
            "Decision properties",
            vec![match config.decision_properties {
                DecisionProperties::Each => {
                    "each: edgewarden.reason, .rule, .sub, .client_id and .jti, for access logs and later filters"
                        .to_owned()
                }
                DecisionProperties::One => {
                    "one: edgewarden.decision, every field as key=value pairs".to_owned()
                }
                DecisionProperties::None => {
                    "none: decisions are only counted in stats and usage reports".to_owned()
                }
            }],
        ),
    ]
}

/// The documents of every configuration hash the listed edges reported, fetched once each (a hash names
/// one document forever).
async fn fetch_configs(
    edges: &[Edge],
    cache: StoredValue<HashMap<String, Result<EdgeConfig, String>>>,
) -> HashMap<String, Result<EdgeConfig, String>> {
    for edge in edges {
        for i in &edge.instances {
            let Some(hash) = i.config_hash.as_ref().filter(|_| i.config_known) else {
                continue;
            };
            if cache.with_value(|c| c.contains_key(hash)) {
                continue;
            }
            let got = api::edge_config(hash).await.map_err(|e| e.to_string());
            cache.update_value(|c| {
                c.insert(hash.clone(), got);
            });
        }
    }
    cache.get_value()
}

/// The edges page.
#[component]
pub fn Edges() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let cache = StoredValue::new(HashMap::new());
    let edges = LocalResource::new(move || {
        ctx.tick.track();
        async move {
            let page = api::edges().await?;
            let configs = fetch_configs(&page.items, cache).await;
            Ok::<_, api::ApiError>((page, configs))
        }
    });
    view! {
        <div class="page-head"><h1>"Edges"</h1></div>
        <p class="muted">
            {format!("An edge is stale after {} s without a feed poll and silent after {} s; a stale edge may still accept a token revoked since. Each Envoy polling under an edge name is listed apart, with the configuration it runs (secrets stay at the edge).", EDGE_STALE_AFTER_SECONDS, EDGE_SILENT_AFTER_SECONDS)}
        </p>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match edges.await {
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok((page, _)) if page.items.is_empty() => view! {
                        <p class="empty">"No edge has contacted this admin API yet. Configure the filter's control_plane to point here."</p>
                    }.into_any(),
                    Ok((page, configs)) => view! {
                        <table>
                            <thead>
                                <tr>
                                    <th scope="col">"Edge"</th>
                                    <th scope="col">"State"</th>
                                    <th scope="col" class="num">"Instances"</th>
                                    <th scope="col">"Last poll"</th>
                                    <th scope="col" class="num">"Feed cursor"</th>
                                    <th scope="col" class="num">"Behind by"</th>
                                    <th scope="col">"Last usage report"</th>
                                    <th scope="col" class="num">"Decisions reported"</th>
                                    <th scope="col">"Address"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {page.items.iter().map(|e| {
                                    let state = edge_state(e);
                                    let row_class = format!("row-{}", state.replace(' ', "-"));
                                    let instances = e.instances.len();
                                    view! {
                                        <tr class=row_class>
                                            <th scope="row"><a href=format!("#edge-{}", anchor(&e.name))>{e.name.clone()}</a></th>
                                            <td><Badge text=state.to_owned() /></td>
                                            <td class="num">
                                                {instances}
                                                {e.configs_differ.then(|| view! { " " <span class="badge badge-differs">"configurations differ"</span> })}
                                            </td>
                                            <td>{match (e.last_poll, e.staleness_seconds) {
                                                (Some(t), Some(_)) => view! { <RelTime at=t /> }.into_any(),
                                                _ => view! { <span class="muted">"never"</span> }.into_any(),
                                            }}</td>
                                            <td class="num">{e.feed_cursor.map(|c| c.to_string()).unwrap_or_else(|| "–".into())}</td>
                                            <td class="num">{e.cursor_lag.map(|c| format!("{c} changes")).unwrap_or_else(|| "–".into())}</td>
                                            <td>{match e.last_report {
                                                Some(t) => view! { <RelTime at=t /> }.into_any(),
                                                None => view! { <span class="muted">"never"</span> }.into_any(),
                                            }}</td>
                                            <td class="num">{fmt_count(e.usage_events)}</td>
                                            <td>{e.address.clone().unwrap_or_default()}</td>
                                        </tr>
                                    }
                                }).collect::<Vec<_>>()}
                            </tbody>
                        </table>
                        {page.items.into_iter().map(|e| view! { <EdgeDetail edge=e configs=configs.clone() /> }).collect::<Vec<_>>()}
                    }.into_any(),
                }
            })}
        </Transition>
    }
}

/// An edge name as a fragment id.
fn anchor(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// One edge: its instances, and the configurations they reported side by side, rows that differ marked.
#[component]
fn EdgeDetail(edge: Edge, configs: HashMap<String, Result<EdgeConfig, String>>) -> impl IntoView {
    // Distinct configurations in the order their first instance was seen, with the instances running each.
    let mut order: Vec<String> = Vec::new();
    let mut runners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in &edge.instances {
        if let Some(hash) = &i.config_hash {
            if !order.contains(hash) {
                order.push(hash.clone());
            }
            runners
                .entry(hash.clone())
                .or_default()
                .push(instance_label(i));
        }
    }
    let described: Vec<(String, Result<Rows, String>)> = order
        .iter()
        .map(|hash| {
            let parsed = match configs.get(hash) {
                None => Err("not received yet: the edge sends it after its next poll".to_owned()),
                Some(Err(e)) => Err(e.clone()),
                Some(Ok(doc)) => Config::from_json(doc.document.to_string().as_bytes())
                    .map(|c| describe(&c))
                    .map_err(|e| format!("the engine cannot read it: {e}")),
            };
            (hash.clone(), parsed)
        })
        .collect();
    // A row differs when two readable configurations disagree on it.
    let differing: Vec<&'static str> = {
        let readable: Vec<&Rows> = described
            .iter()
            .filter_map(|(_, d)| d.as_ref().ok())
            .collect();
        let labels: Vec<&'static str> = readable
            .first()
            .map(|rows| rows.iter().map(|(l, _)| *l).collect())
            .unwrap_or_default();
        labels
            .into_iter()
            .filter(|label| {
                let values: Vec<Option<&Vec<String>>> = readable
                    .iter()
                    .map(|rows| rows.iter().find(|(l, _)| l == label).map(|(_, v)| v))
                    .collect();
                values.windows(2).any(|w| w.first() != w.get(1))
            })
            .collect()
    };
    let differs = move |label: &str| differing.contains(&label);
    let id = format!("edge-{}", anchor(&edge.name));
    let heading = format!("edge-h-{}", anchor(&edge.name));
    let labelled_by = heading.clone();
    let name = edge.name.clone();
    view! {
        <section class="edge-detail" id=id aria-labelledby=labelled_by data-edge=name.clone()>
            <h2 id=heading>{format!("{name}: {} instance{}", edge.instances.len(), if edge.instances.len() == 1 { "" } else { "s" })}</h2>
            {edge.configs_differ.then(|| view! {
                <p class="differs" role="note">
                    <span class="badge badge-differs">"configurations differ"</span>
                    " The instances of this edge run different configurations: a token may be accepted by one and refused by another. Rows marked “differs” below disagree."
                </p>
            })}
            <table class="instances">
                <caption>{format!("Envoy instances polling as {name}")}</caption>
                <thead>
                    <tr>
                        <th scope="col">"Instance"</th>
                        <th scope="col">"State"</th>
                        <th scope="col">"Last poll"</th>
                        <th scope="col" class="num">"Feed cursor"</th>
                        <th scope="col" class="num">"Behind by"</th>
                        <th scope="col">"Configuration"</th>
                        <th scope="col">"Address"</th>
                    </tr>
                </thead>
                <tbody>
                    {edge.instances.iter().map(|i| {
                        let state = state_of(i.staleness_seconds, i.cursor_lag);
                        let row_class = format!("row-{}", state.replace(' ', "-"));
                        let config = match (&i.config_hash, i.config_known) {
                            (None, _) => "not reported (a filter from before configurations were reported)".to_owned(),
                            (Some(h), true) => short_hash(h),
                            (Some(h), false) => format!("{} (document not received yet)", short_hash(h)),
                        };
                        view! {
                            <tr class=row_class data-instance=i.instance.clone()>
                                <th scope="row" class="mono">{instance_label(i)}</th>
                                <td><Badge text=state.to_owned() /></td>
                                <td>{match i.last_poll {
                                    Some(t) => view! { <RelTime at=t /> }.into_any(),
                                    None => view! { <span class="muted">"never"</span> }.into_any(),
                                }}</td>
                                <td class="num">{i.feed_cursor.map(|c| c.to_string()).unwrap_or_else(|| "–".into())}</td>
                                <td class="num">{i.cursor_lag.map(|c| format!("{c} changes")).unwrap_or_else(|| "–".into())}</td>
                                <td class="mono">{config}</td>
                                <td>{i.address.clone().unwrap_or_default()}</td>
                            </tr>
                        }
                    }).collect::<Vec<_>>()}
                </tbody>
            </table>
            <div class="edge-configs">
                {described.into_iter().map(|(hash, parsed)| {
                    let who = runners.get(&hash).cloned().unwrap_or_default().join(", ");
                    let title = format!("Configuration {}", short_hash(&hash));
                    match parsed {
                        Err(message) => view! {
                            <div class="card edge-config" data-hash=hash.clone()>
                                <h3>{title}</h3>
                                <p class="muted">{format!("run by {who}")}</p>
                                <p>{message}</p>
                            </div>
                        }.into_any(),
                        Ok(rows) => view! {
                            <div class="card edge-config" data-hash=hash.clone()>
                                <h3>{title}</h3>
                                <p class="muted">{format!("run by {who}")}</p>
                                <dl class="facts">
                                    {rows.into_iter().map(|(label, values)| {
                                        let marked = differs(label);
                                        view! {
                                            <dt>
                                                {label}
                                                {marked.then(|| view! { " " <span class="badge badge-differs">"differs"</span> })}
                                            </dt>
                                            <dd class:differs-value=marked>
                                                {if values.len() == 1 {
                                                    values.into_iter().next().unwrap_or_default().into_any()
                                                } else {
                                                    view! { <ol class="plain">{values.into_iter().map(|v| view! { <li>{v}</li> }).collect::<Vec<_>>()}</ol> }.into_any()
                                                }}
                                            </dd>
                                        }
                                    }).collect::<Vec<_>>()}
                                </dl>
                            </div>
                        }.into_any(),
                    }
                }).collect::<Vec<_>>()}
            </div>
        </section>
    }
}
