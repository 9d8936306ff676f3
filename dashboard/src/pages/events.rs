//! Events: the audit log with filters (kind, actor, subject, time range) kept in the URL, a live
//! tail from the server-sent event stream that can be paused, and an export of the filtered events
//! as CSV or JSON lines.

use edgewarden_api_types::{StoredEvent, EVENT_KINDS};
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::api;
use crate::app::Ctx;
use crate::components::time::{absolute, now};
use crate::components::{ErrorView, Loading, Pager, RelTime};
use crate::pages::{filter_setter, offset_param, page_callback, query_param, query_setter};

const LIMIT: i64 = 50;
/// Most events one export fetches (500 per request).
const EXPORT_MAX: i64 = 20_000;

fn since_of(range: &str) -> String {
    match range {
        "1h" => (now() - 3600).to_string(),
        "24h" => (now() - 86_400).to_string(),
        "7d" => (now() - 604_800).to_string(),
        "30d" => (now() - 30 * 86_400).to_string(),
        _ => String::new(),
    }
}

fn csv_field(s: &str) -> String {
    // Quote every field; a leading formula character is neutralised so a spreadsheet never runs it.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn to_csv(events: &[StoredEvent]) -> String {
    let mut out = String::from("id,at,time_utc,kind,actor,subject,client_id,jti,details\n");
    for e in events {
        let row = [
            e.id.clone(),
            e.at.to_string(),
            absolute(e.at),
            e.kind.clone(),
            e.actor.clone(),
            e.subject.clone().unwrap_or_default(),
            e.client_id.clone().unwrap_or_default(),
            e.jti.clone().unwrap_or_default(),
            e.details.to_string(),
        ];
        out.push_str(
            &row.iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
    }
    out
}

fn to_jsonl(events: &[StoredEvent]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .map(|l| l + "\n")
        .collect()
}

/// Offers `content` as a file download.
fn download(name: &str, mime: &str, content: &str) -> Option<()> {
    let parts = js_sys::Array::of1(&wasm_bindgen::JsValue::from_str(content));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &options).ok()?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).ok()?;
    let document = web_sys::window()?.document()?;
    let a: web_sys::HtmlAnchorElement = document.create_element("a").ok()?.dyn_into().ok()?;
    a.set_href(&url);
    a.set_download(name);
    a.click();
    web_sys::Url::revoke_object_url(&url).ok()
}

/// The events page.
#[component]
pub fn Events() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let kind = query_param("kind");
    let actor = query_param("actor");
    let subject = query_param("subject");
    let range = query_param("range");
    let offset = offset_param();
    let set_query = query_setter();
    let filters = move || {
        vec![
            ("kind", kind.get()),
            ("actor", actor.get()),
            ("subject", subject.get()),
            ("since", since_of(&range.get())),
        ]
    };
    let list = LocalResource::new(move || {
        let mut f = filters();
        f.push(("limit", LIMIT.to_string()));
        f.push(("offset", offset.get().to_string()));
        async move { api::events(&f).await }
    });
    let actor_input = RwSignal::new(actor.get_untracked());
    let subject_input = RwSignal::new(subject.get_untracked());
    let paused = RwSignal::new(false);
    // The tail shows what arrived while the page is open; pausing freezes the view, not the stream.
    let frozen = RwSignal::new(Vec::<StoredEvent>::new());
    let tail = move || {
        if paused.get() {
            frozen.get()
        } else {
            let (k, a, s) = (kind.get(), actor.get(), subject.get());
            ctx.events.with(|list| {
                list.iter()
                    .filter(|e| {
                        k.is_empty()
                            || e.kind == k
                            || (k.ends_with(".*") && e.kind.starts_with(k.trim_end_matches('*')))
                    })
                    .filter(|e| a.is_empty() || e.actor == a)
                    .filter(|e| s.is_empty() || e.subject.as_deref() == Some(s.as_str()))
                    .take(50)
                    .cloned()
                    .collect()
            })
        }
    };
    let opened_at = js_sys::Date::now();
    let opened_count = ctx.received.get_untracked();
    let rate = move || {
        let secs = ((js_sys::Date::now() - opened_at) / 1000.0).max(1.0);
        format!(
            "{:.2} events/s",
            (ctx.received.get() - opened_count) as f64 / secs
        )
    };
    let export = Action::new_local(move |format: &&'static str| {
        let format = *format;
        let f = filters();
        async move {
            let mut all = Vec::new();
            let mut offset = 0;
            loop {
                let mut q = f.clone();
                q.push(("limit", "500".into()));
                q.push(("offset", offset.to_string()));
                let page = api::events(&q).await?;
                let n = page.items.len() as i64;
                all.extend(page.items);
                offset += n;
                if n == 0 || offset >= page.total || offset >= EXPORT_MAX {
                    break;
                }
            }
            let (name, mime, body) = if format == "csv" {
                ("edgewarden-events.csv", "text/csv", to_csv(&all))
            } else {
                (
                    "edgewarden-events.jsonl",
                    "application/x-ndjson",
                    to_jsonl(&all),
                )
            };
            download(name, mime, &body);
            Ok::<usize, api::ApiError>(all.len())
        }
    });
    let apply = {
        let s = set_query.clone();
        move || {
            s(&[
                ("actor", actor_input.get_untracked().trim().to_owned()),
                ("subject", subject_input.get_untracked().trim().to_owned()),
                ("offset", String::new()),
            ])
        }
    };
    let on_kind = filter_setter("kind");
    let on_range = filter_setter("range");
    let on_page = page_callback();
    view! {
        <div class="page-head">
            <h1>"Events"</h1>
            <div class="actions">
                <button type="button" on:click=move |_| { export.dispatch("csv"); } disabled=move || export.pending().get()>"Export CSV"</button>
                <button type="button" on:click=move |_| { export.dispatch("jsonl"); } disabled=move || export.pending().get()>"Export JSON lines"</button>
            </div>
        </div>
        {move || match export.value().get() {
            Some(Ok(n)) => view! { <p class="ok" role="status">{format!("Exported {n} events.")}</p> }.into_any(),
            Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
            None => ().into_any(),
        }}
        <form class="filters inline" on:submit=move |ev| { ev.prevent_default(); apply(); }>
            <label>
                "Kind"
                <select prop:value=kind on:change:target=move |ev| on_kind(ev.target().value())>
                    <option value="">"any"</option>
                    <option value="token.*">"token.*"</option>
                    <option value="anomaly.*">"anomaly.*"</option>
                    {EVENT_KINDS.iter().map(|k| view! { <option value=*k>{*k}</option> }).collect::<Vec<_>>()}
                </select>
            </label>
            <label>
                "Actor"
                <input name="actor" prop:value=actor_input on:input:target=move |ev| actor_input.set(ev.target().value()) />
            </label>
            <label>
                "Subject"
                <input name="subject" prop:value=subject_input on:input:target=move |ev| subject_input.set(ev.target().value()) />
            </label>
            <label>
                "Time range"
                <select prop:value=range on:change:target=move |ev| on_range(ev.target().value())>
                    <option value="">"all"</option>
                    <option value="1h">"last hour"</option>
                    <option value="24h">"last 24 h"</option>
                    <option value="7d">"last 7 days"</option>
                    <option value="30d">"last 30 days"</option>
                </select>
            </label>
            <button type="submit">"Filter"</button>
        </form>
        <section class="tail" aria-labelledby="tail-h">
            <div class="card-head">
                <h2 id="tail-h">"Live tail"</h2>
                <span class="muted">{rate}</span>
                <button type="button" aria-pressed=move || paused.get().to_string() on:click=move |_| {
                    if !paused.get_untracked() { frozen.set(tail()); }
                    paused.update(|p| *p = !*p);
                }>{move || if paused.get() { "Resume" } else { "Pause" }}</button>
            </div>
            <ol class="events live" aria-live="off">
                {move || {
                    let items = tail();
                    if items.is_empty() {
                        view! { <li class="muted">"Waiting for events… (new events appear here as they happen)"</li> }.into_any()
                    } else {
                        items.into_iter().map(|e| view! { <EventRow event=e /> }).collect::<Vec<_>>().into_any()
                    }
                }}
            </ol>
        </section>
        <section aria-labelledby="log-h">
            <h2 id="log-h">"Log"</h2>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! { <p class="empty">"No event matches these filters."</p> }.into_any(),
                        Ok(page) => view! {
                            <ol class="events">{page.items.into_iter().map(|e| view! { <EventRow event=e /> }).collect::<Vec<_>>()}</ol>
                            <Pager total=page.total limit=page.limit offset=page.offset on_page />
                        }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

/// One event: time, kind, actor, what it concerns; details expand.
#[component]
fn EventRow(event: StoredEvent) -> impl IntoView {
    let details = serde_json::to_string_pretty(&event.details).unwrap_or_default();
    view! {
        <li>
            <details>
                <summary>
                    <RelTime at=event.at /> " " <strong>{event.kind.clone()}</strong>
                    " by " <span class="mono">{event.actor.clone()}</span>
                    {event.subject.clone().map(|s| format!(" · subject {s}"))}
                    {event.client_id.clone().map(|c| format!(" · client {c}"))}
                    {event.jti.clone().map(|j| format!(" · token {j}"))}
                </summary>
                {event.jti.clone().map(|j| view! { <p>"Token " <a class="mono" href=format!("/tokens/{}", api::encode(&j))>{j.clone()}</a></p> })}
                <pre>{details}</pre>
            </details>
        </li>
    }
}
