//! Revocations: the active ones (who, when, what, why), a form to revoke by jti, subject or client
//! that says what it will cover before it acts, and afterwards the propagation: which edges have
//! applied it and how long each took, updating until every edge has it or one is stale.

use edgewarden_api_types::RevokeRequest;
use leptos::prelude::*;

use crate::api;
use crate::app::Ctx;
use crate::components::{Badge, Confirm, ErrorView, Loading, Pager, RelTime};
use crate::pages::overview::fmt_count;
use crate::pages::{filter_setter, offset_param, page_callback, query_param};

const LIMIT: i64 = 50;
/// How often the propagation view asks again, and for how long.
const POLL_MS: u64 = 500;
const POLL_FOR_MS: f64 = 120_000.0;

/// The revocations page.
#[component]
pub fn Revocations() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let kind = query_param("kind");
    let offset = offset_param();
    let refresh = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        refresh.track();
        ctx.tick.track();
        let filters = vec![
            ("kind", kind.get()),
            ("limit", LIMIT.to_string()),
            ("offset", offset.get().to_string()),
        ];
        async move { api::revocations(&filters).await }
    });
    let on_kind = filter_setter("kind");
    let on_page = page_callback();
    view! {
        <div class="page-head"><h1>"Revocations"</h1></div>
        <Show when=move || ctx.can_write()>
            <RevokeForm refresh />
        </Show>
        <div class="filters">
            <label>
                "Kind"
                <select prop:value=kind on:change:target=move |ev| on_kind(ev.target().value())>
                    <option value="">"any"</option>
                    <option value="jti">"token (jti)"</option>
                    <option value="subject">"subject"</option>
                    <option value="client">"client"</option>
                </select>
            </label>
        </div>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match list.await {
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok(page) if page.items.is_empty() => view! { <p class="empty">"No active revocation."</p> }.into_any(),
                    Ok(page) => view! {
                        <table>
                            <thead><tr>
                                <th scope="col">"What"</th><th scope="col">"Value"</th><th scope="col">"Issuer"</th><th scope="col">"Reason"</th>
                                <th scope="col">"By"</th><th scope="col">"When"</th><th scope="col">"Leaves the feed"</th><th scope="col" class="num">"Cursor"</th>
                            </tr></thead>
                            <tbody>
                                {page.items.iter().map(|r| {
                                    let value = if r.kind == "jti" {
                                        view! { <a class="mono" href=format!("/tokens/{}", api::encode(&r.value))>{r.value.clone()}</a> }.into_any()
                                    } else {
                                        view! { <span>{r.value.clone()}</span> }.into_any()
                                    };
                                    view! {
                                        <tr>
                                            <td><Badge text=r.kind.clone() /></td>
                                            <td>{value}</td>
                                            <td>{r.issuer.clone().unwrap_or_else(|| "any".to_owned())}</td>
                                            <td>{r.reason.clone()}</td>
                                            <td class="mono">{r.actor.clone()}</td>
                                            <td><RelTime at=r.revoked_at /></td>
                                            <td><RelTime at=r.expires_at /></td>
                                            <td class="num">{r.cursor}</td>
                                        </tr>
                                    }
                                }).collect::<Vec<_>>()}
                            </tbody>
                        </table>
                        <Pager total=page.total limit=page.limit offset=page.offset on_page />
                    }.into_any(),
                }
            })}
        </Transition>
    }
}

/// Revoke by jti, subject or client: the confirmation says what it covers (for a subject or a
/// client, how many active tokens), and the propagation shows it reaching the edges.
#[component]
fn RevokeForm(refresh: RwSignal<u32>) -> impl IntoView {
    let what = RwSignal::new("jti".to_owned());
    let value = RwSignal::new(String::new());
    let reason = RwSignal::new(String::new());
    let issuer = RwSignal::new(String::new());
    let asking = RwSignal::new(false);
    let coverage = LocalResource::new(move || {
        let (what, value, asking) = (what.get(), value.get(), asking.get());
        async move {
            if !asking || value.trim().is_empty() {
                return None;
            }
            if !issuer.get().trim().is_empty() {
                return None;
            }
            let field = match what.as_str() {
                "subject" => "subject",
                "client_id" => "client_id",
                _ => return Some(Ok(1)),
            };
            Some(
                api::tokens(&[
                    ("status", "active".into()),
                    (field, value.trim().to_owned()),
                    ("limit", "1".into()),
                ])
                .await
                .map(|p| p.total),
            )
        }
    });
    let revoke = Action::new_local(move |request: &RevokeRequest| {
        let request = request.clone();
        async move { api::revoke(request).await }
    });
    Effect::new(move |_| {
        if revoke.value().with(|v| matches!(v, Some(Ok(_)))) {
            asking.set(false);
            refresh.update(|n| *n += 1);
        }
    });
    let message = Signal::derive(move || {
        let v = value.get();
        let covered = coverage.get().flatten();
        let reach = match (what.get().as_str(), covered) {
            ("jti", _) => format!("token {v}"),
            ("token", _) => {
                "the token you pasted (the admin API verifies it first; it is never stored)"
                    .to_owned()
            }
            (w, Some(Ok(n))) => format!(
                "every token of {} {v} issued until now ({} active now)",
                if w == "subject" { "subject" } else { "client" },
                fmt_count(n)
            ),
            (w, Some(Err(_))) | (w, None) => format!(
                "every token of {} {v} issued until now",
                if w == "subject" { "subject" } else { "client" }
            ),
        };
        let iss = issuer.get();
        let reach = if iss.trim().is_empty() || what.get() == "token" {
            reach
        } else {
            format!("{reach} under issuer {}", iss.trim())
        };
        format!("Revoke {reach}? Every edge refuses them as soon as it polls the revocation feed. This cannot be undone.")
    });
    let valid = move || !value.get().trim().is_empty() && !reason.get().trim().is_empty();
    view! {
            <section class="actions-panel" aria-labelledby="revoke-h">
                <h2 id="revoke-h">"Revoke"</h2>
                <form class="inline" on:submit=move |ev| { ev.prevent_default(); if valid() { asking.set(true); } }>
                    <label>
                        "What"
                        <select name="what" prop:value=what on:change:target=move |ev| what.set(ev.target().value())>
                            <option value="jti">"a token (jti)"</option>
                            <option value="subject">"a subject"</option>
                            <option value="client_id">"a client"</option>
                            <option value="token">"a token (paste it whole)"</option>
                        </select>
                    </label>
                    <label>
                        "Value"
                        <input name="value" required prop:value=value on:input:target=move |ev| { value.set(ev.target().value()); asking.set(false); } />
                    </label>
                    <label>
                        "Issuer (empty: this admin API)"
                        <input
                            name="issuer"
                            prop:value=issuer
                            on:input:target=move |ev| {
                                issuer.set(ev.target().value());
                                asking.set(false);
                            }
                        />
                    </label>
                    <label>
                        "Reason"
                        <input name="reason" required prop:value=reason on:input:target=move |ev| reason.set(ev.target().value()) />
                    </label>
                    <button type="submit" class="danger" disabled=move || !valid()>"Revoke…"</button>
                </form>
                <Show when=move || asking.get()>
                    <Confirm
                        message
                        confirm_label="Revoke at every edge"
                        on_confirm=Callback::new(move |_| {
                            let v = value.get_untracked().trim().to_owned();
    let iss = issuer.get_untracked().trim().to_owned();
                            let mut request = RevokeRequest {
                                reason: Some(reason.get_untracked()),
                                issuer: (!iss.is_empty()).then_some(iss),
                                ..Default::default()
                            };
                            match what.get_untracked().as_str() {
                                "subject" => request.subject = Some(v),
                                "token" => request.token = Some(v),
                                "client_id" => request.client_id = Some(v),
                                _ => request.jti = Some(v),
                            }
                            revoke.dispatch(request);
                        })
                        on_cancel=Callback::new(move |_| asking.set(false))
                    />
                </Show>
                {move || match revoke.value().get() {
                    Some(Ok(r)) => view! { <PropagationView cursor=r.cursor /> }.into_any(),
                    Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
                    None => ().into_any(),
                }}
            </section>
        }
}

/// Which edges have applied the revocation at `cursor`, asked again every half second until every
/// edge that is not stale has it (or two minutes have passed).
#[component]
pub fn PropagationView(
    /// Feed cursor of the revocation.
    cursor: i64,
) -> impl IntoView {
    let round = RwSignal::new(0u32);
    let started = js_sys::Date::now();
    let state = LocalResource::new(move || {
        round.track();
        async move { api::propagation(cursor).await }
    });
    Effect::new(move |_| {
        // Done once every edge has it and each applied edge's time is known (an edge's poll is in
        // memory a moment before its time is written).
        let done = state
            .get()
            .map(|r| {
                r.map(|p| {
                    p.complete
                        && p.edges
                            .iter()
                            .all(|e| !e.applied || e.applied_after_seconds.is_some())
                })
                .unwrap_or(true)
            })
            .unwrap_or(false);
        if !done && js_sys::Date::now() - started < POLL_FOR_MS {
            set_timeout(
                move || round.update(|n| *n += 1),
                std::time::Duration::from_millis(POLL_MS),
            );
        }
    });
    view! {
        <section class="propagation" aria-live="polite" aria-labelledby="prop-h">
            <h3 id="prop-h">{format!("Propagation of feed change {cursor}")}</h3>
            {move || match state.get() {
                None => view! { <p class="loading">"Asking the edges…"</p> }.into_any(),
                Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
                Some(Ok(p)) => {
                    let applied = p.edges.iter().filter(|e| e.applied).count();
                    let total = p.edges.len();
                    let headline = if total == 0 {
                        "No edge is known to this admin API yet.".to_owned()
                    } else if p.complete {
                        format!("Applied at every edge ({applied} of {total}).")
                    } else {
                        format!("Applied at {applied} of {total} edges; waiting for the others…")
                    };
                    view! {
                        <p class=if p.complete { "ok" } else { "warn" } data-testid="propagation-status">{headline}</p>
                        <table class="compact">
                            <thead><tr><th scope="col">"Edge"</th><th scope="col">"State"</th><th scope="col" class="num">"Took"</th><th scope="col" class="num">"Edge cursor"</th></tr></thead>
                            <tbody>
                                {p.edges.iter().map(|e| {
                                    let state = if e.applied { "applied" } else if e.stale { "stale" } else { "pending" };
                                    view! {
                                        <tr>
                                            <th scope="row">{e.edge.clone()}</th>
                                            <td><Badge text=state.to_owned() /></td>
                                            <td class="num">{e.applied_after_seconds.map(|s| if s < 1.0 { format!("{:.0} ms", s * 1000.0) } else { format!("{s:.1} s") }).unwrap_or_else(|| "–".into())}</td>
                                            <td class="num">{e.feed_cursor.map(|c| c.to_string()).unwrap_or_else(|| "–".into())}</td>
                                        </tr>
                                    }
                                }).collect::<Vec<_>>()}
                            </tbody>
                        </table>
                    }.into_any()
                }
            }}
        </section>
    }
}
