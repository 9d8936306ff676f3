//! Anomalies: what the detectors found in the edges' reports, by severity and state, with the
//! evidence written out readably; admins triage them (acknowledge, resolve, reopen) and can revoke
//! the token, subject or client an anomaly concerns in one step.

use edgewarden_api_types::{Anomaly, RevokeRequest};
use leptos::prelude::*;
use serde_json::Value;

use crate::api;
use crate::app::Ctx;
use crate::components::time::absolute;
use crate::components::{Badge, Confirm, ErrorView, Loading, Pager, RelTime};
use crate::pages::revocations::PropagationView;
use crate::pages::{filter_setter, offset_param, page_callback, query_param};

const LIMIT: i64 = 50;

/// "failure_burst_address" -> "failure burst address".
fn spaced(s: &str) -> String {
    s.replace(['_', '.'], " ")
}

/// A readable value: times as times, lists joined, objects as `key: value`.
fn readable(key: &str, v: &Value) -> String {
    match v {
        Value::Number(n)
            if (key.ends_with("_at")
                || key == "iat"
                || key == "nbf"
                || key == "allowed_until"
                || key == "interval_end")
                && n.as_i64().is_some_and(|t| t > 1_000_000_000) =>
        {
            absolute(n.as_i64().unwrap_or_default())
        }
        Value::Number(n) if key.ends_with("seconds") || key.starts_with("seconds") => {
            format!("{n} s")
        }
        Value::String(s) => s.clone(),
        Value::Bool(b) => {
            if *b {
                "yes".into()
            } else {
                "no".into()
            }
        }
        Value::Null => "–".into(),
        Value::Array(items) => items
            .iter()
            .map(|i| readable("", i))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}: {}", spaced(k), readable(k, v)))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// The anomalies page.
#[component]
pub fn Anomalies() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let state = query_param("state");
    let severity = query_param("severity");
    let offset = offset_param();
    let refresh = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        refresh.track();
        ctx.tick.track();
        let filters = vec![
            ("state", state.get()),
            ("severity", severity.get()),
            ("limit", LIMIT.to_string()),
            ("offset", offset.get().to_string()),
        ];
        async move { api::anomalies(&filters).await }
    });
    let on_state = filter_setter("state");
    let on_severity = filter_setter("severity");
    let on_page = page_callback();
    view! {
        <div class="page-head"><h1>"Anomalies"</h1></div>
        <div class="filters">
            <label>
                "State"
                <select prop:value=state on:change:target=move |ev| on_state(ev.target().value())>
                    <option value="">"any"</option>
                    <option value="open">"open"</option>
                    <option value="acknowledged">"acknowledged"</option>
                    <option value="resolved">"resolved"</option>
                </select>
            </label>
            <label>
                "Severity"
                <select prop:value=severity on:change:target=move |ev| on_severity(ev.target().value())>
                    <option value="">"any"</option>
                    <option value="high">"high"</option>
                    <option value="medium">"medium"</option>
                    <option value="low">"low"</option>
                </select>
            </label>
        </div>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match list.await {
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok(page) if page.items.is_empty() => view! { <p class="empty">"No anomaly matches these filters."</p> }.into_any(),
                    Ok(page) => view! {
                        <ul class="cards">
                            {page.items.into_iter().map(|a| view! { <AnomalyCard anomaly=a refresh /> }).collect::<Vec<_>>()}
                        </ul>
                        <Pager total=page.total limit=page.limit offset=page.offset on_page />
                    }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn AnomalyCard(anomaly: Anomaly, refresh: RwSignal<u32>) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let id = anomaly.id.clone();
    let triage = Action::new_local(move |(id, to): &(String, &'static str)| {
        let (id, to) = (id.clone(), *to);
        async move { api::triage(&id, to).await }
    });
    Effect::new(move |_| {
        if triage.value().with(|v| matches!(v, Some(Ok(_)))) {
            refresh.update(|n| *n += 1);
        }
    });
    // A token the anomaly already found revoked needs no second revocation.
    let already_revoked = anomaly.kind.contains("revoked");
    let target = match anomaly.subject_kind.as_str() {
        "token" if already_revoked => None,
        "token" => Some((
            "token",
            RevokeRequest {
                jti: Some(anomaly.subject.clone()),
                ..Default::default()
            },
        )),
        "subject" => Some((
            "subject",
            RevokeRequest {
                subject: Some(anomaly.subject.clone()),
                ..Default::default()
            },
        )),
        "client" => Some((
            "client",
            RevokeRequest {
                client_id: Some(anomaly.subject.clone()),
                ..Default::default()
            },
        )),
        _ => None,
    };
    let asking = RwSignal::new(false);
    let revoke = Action::new_local(move |r: &RevokeRequest| {
        let r = r.clone();
        async move { api::revoke(r).await }
    });
    let subject_link = match anomaly.subject_kind.as_str() {
        "token" => view! { <a class="mono" href=format!("/tokens/{}", api::encode(&anomaly.subject))>{anomaly.subject.clone()}</a> }.into_any(),
        "subject" => view! { <a href=format!("/tokens?subject={}", api::encode(&anomaly.subject))>{anomaly.subject.clone()}</a> }.into_any(),
        "client" => view! { <a href=format!("/tokens?client_id={}", api::encode(&anomaly.subject))>{anomaly.subject.clone()}</a> }.into_any(),
        _ => view! { <span class="mono">{anomaly.subject.clone()}</span> }.into_any(),
    };
    let evidence = match &anomaly.evidence {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| view! { <dt>{spaced(k)}</dt><dd>{readable(k, v)}</dd> })
            .collect::<Vec<_>>(),
        _ => Vec::new(),
    };
    let st = anomaly.state.clone();
    let kind_words = spaced(&anomaly.kind);
    let subject_kind = anomaly.subject_kind.clone();
    view! {
        <li class=format!("card anomaly severity-{}", anomaly.severity) data-anomaly-id=anomaly.id.clone()>
            <div class="card-head">
                <Badge text=anomaly.severity.clone() />
                <h2>{kind_words}</h2>
                <Badge text=anomaly.state.clone() />
            </div>
            <p>{subject_kind} " " {subject_link}
                " — seen " {anomaly.occurrences} {if anomaly.occurrences == 1 { " time" } else { " times" }}
                ", first " <RelTime at=anomaly.created_at />
                {anomaly.last_seen.map(|t| view! { ", last " <RelTime at=t /> })}
            </p>
            <dl class="evidence">{evidence}</dl>
            <Show when=move || ctx.can_write()>
                <div class="actions">
                    {
                        let (id1, id2, id3) = (id.clone(), id.clone(), id.clone());
                        let st = st.clone();
                        view! {
                            <Show when={let st = st.clone(); move || st == "open"}>
                                <button type="button" on:click={let id = id1.clone(); move |_| { triage.dispatch((id.clone(), "acknowledged")); }}>"Acknowledge"</button>
                            </Show>
                            <Show when={let st = st.clone(); move || st != "resolved"}>
                                <button type="button" on:click={let id = id2.clone(); move |_| { triage.dispatch((id.clone(), "resolved")); }}>"Resolve"</button>
                            </Show>
                            <Show when={let st = st.clone(); move || st != "open"}>
                                <button type="button" on:click={let id = id3.clone(); move |_| { triage.dispatch((id.clone(), "open")); }}>"Reopen"</button>
                            </Show>
                        }
                    }
                    {target.clone().map(|(what, _)| view! {
                        <button type="button" class="danger" on:click=move |_| asking.set(true)>{format!("Revoke this {what}")}</button>
                    })}
                </div>
                {
                    let target = target.clone();
                    let subject = anomaly.subject.clone();
                    let kind = anomaly.kind.clone();
                    move || target.clone().filter(|_| asking.get() && revoke.value().with(|v| v.is_none())).map(|(what, request)| {
                        let subject = subject.clone();
                        let kind = kind.clone();
                        view! {
                            <Confirm
                                message=Signal::derive(move || format!("Revoke {what} {subject}{}? Every edge refuses it as soon as it polls the revocation feed.", if what == "token" { "" } else { " (every token issued to it until now)" }))
                                confirm_label="Revoke at every edge"
                                on_confirm=Callback::new(move |_| {
                                    let mut r = request.clone();
                                    r.reason = Some(format!("anomaly: {}", spaced(&kind)));
                                    revoke.dispatch(r);
                                })
                                on_cancel=Callback::new(move |_| asking.set(false))
                            />
                        }
                    })
                }
            </Show>
            {move || triage.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorView error=e /> })}
            {move || match revoke.value().get() {
                Some(Ok(r)) => view! { <PropagationView cursor=r.cursor /> }.into_any(),
                Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
                None => ().into_any(),
            }}
        </li>
    }
}
