//! One token: its claims (never the token itself), its timeline (issued, first and last use,
//! revoked, by whom and why), its usage by route, edge and decision, the addresses it was refused
//! from, and a Revoke button that shows the revocation reaching every edge.

use std::collections::BTreeMap;

use edgewarden_api_types::{RevokeRequest, TokenRecord};
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

use crate::api;
use crate::app::Ctx;
use crate::components::{Badge, Confirm, ErrorView, Loading, RelTime};
use crate::pages::overview::fmt_count;
use crate::pages::revocations::PropagationView;

/// The token detail page.
#[component]
pub fn TokenDetail() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let params = use_params_map();
    let jti = Memo::new(move |_| params.with(|p| p.get("jti").unwrap_or_default()));
    let refresh = RwSignal::new(0u32);
    // Lives outside the record's Transition: the record refetches after a revocation and rebuilds
    // what is inside it, and the propagation view must outlive that.
    let revoked_cursor = RwSignal::new(None::<i64>);
    let record = LocalResource::new(move || {
        refresh.track();
        let jti = jti.get();
        async move { api::token(&jti).await }
    });
    let timeline = LocalResource::new(move || {
        refresh.track();
        ctx.tick.track();
        let jti = jti.get();
        async move { api::timeline(&jti).await }
    });
    view! {
        <div class="page-head">
            <h1>"Token " <span class="mono">{jti}</span></h1>
        </div>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match record.await {
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok(t) => view! { <Claims token=t.clone() /> <RevokeToken token=t refresh revoked_cursor /> }.into_any(),
                }
            })}
        </Transition>
        {move || revoked_cursor.get().map(|cursor| view! { <PropagationView cursor /> })}
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match timeline.await {
                    Err(api::ApiError::NotFound(_)) => view! { <p class="empty">"Nothing has happened to this token yet."</p> }.into_any(),
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok(tl) => {
                        let mut by_route: BTreeMap<(String, String, String), i64> = BTreeMap::new();
                        for u in &tl.usage {
                            *by_route.entry((u.route.clone(), u.edge.clone(), u.reason.clone())).or_default() += u.count;
                        }
                        let mut addresses: BTreeMap<String, (i64, i64)> = BTreeMap::new();
                        for f in &tl.failures {
                            let e = addresses.entry(f.client_address.clone()).or_insert((0, f.at));
                            e.0 += 1;
                            e.1 = e.1.max(f.at);
                        }
                        let summary = tl.token.clone();
                        view! {
                            <section aria-labelledby="use-h">
                                <h2 id="use-h">"Use"</h2>
                                {summary.map(|s| view! {
                                    <dl class="facts">
                                        <dt>"Uses reported"</dt><dd>{fmt_count(s.use_count)}</dd>
                                        <dt>"First use"</dt><dd>{s.first_used_at.map(|t| view! { <RelTime at=t /> }.into_any()).unwrap_or_else(|| "never".into_any())}</dd>
                                        <dt>"Last use"</dt><dd>{s.last_used_at.map(|t| view! { <RelTime at=t /> }.into_any()).unwrap_or_else(|| "never".into_any())}</dd>
                                    </dl>
                                })}
                                <table class="compact">
                                    <caption>"Usage by route, edge and decision"</caption>
                                    <thead><tr><th scope="col">"Route"</th><th scope="col">"Edge"</th><th scope="col">"Decision"</th><th scope="col" class="num">"Requests"</th></tr></thead>
                                    <tbody>
                                        {if by_route.is_empty() {
                                            view! { <tr><td colspan="4" class="muted">"No edge has reported this token yet."</td></tr> }.into_any()
                                        } else {
                                            by_route.into_iter().map(|((route, edge, reason), n)| view! {
                                                <tr><td class="mono">{route}</td><td>{edge}</td><td><Badge text=reason /></td><td class="num">{fmt_count(n)}</td></tr>
                                            }).collect::<Vec<_>>().into_any()
                                        }}
                                    </tbody>
                                </table>
                                <table class="compact">
                                    <caption>"Addresses it was refused from"</caption>
                                    <thead><tr><th scope="col">"Address"</th><th scope="col" class="num">"Refusals"</th><th scope="col">"Last"</th></tr></thead>
                                    <tbody>
                                        {if addresses.is_empty() {
                                            view! { <tr><td colspan="3" class="muted">"No refusal sampled."</td></tr> }.into_any()
                                        } else {
                                            addresses.into_iter().map(|(a, (n, last))| view! {
                                                <tr><td class="mono">{a}</td><td class="num">{n}</td><td><RelTime at=last /></td></tr>
                                            }).collect::<Vec<_>>().into_any()
                                        }}
                                    </tbody>
                                </table>
                            </section>
                            <section aria-labelledby="timeline-h">
                                <h2 id="timeline-h">"Timeline"</h2>
                                <ol class="timeline">
                                    {tl.events.iter().map(|e| {
                                        let reason = e.details.get("reason").and_then(|r| r.as_str()).map(|r| format!(" — {r}")).unwrap_or_default();
                                        view! {
                                            <li>
                                                <RelTime at=e.at /> " " <strong>{e.kind.clone()}</strong>
                                                " by " <span class="mono">{e.actor.clone()}</span>
                                                {reason}
                                            </li>
                                        }
                                    }).collect::<Vec<_>>()}
                                </ol>
                            </section>
                        }.into_any()
                    }
                }
            })}
        </Transition>
    }
}

#[component]
fn Claims(token: TokenRecord) -> impl IntoView {
    view! {
        <section aria-labelledby="claims-h">
            <h2 id="claims-h">"Claims"</h2>
            <dl class="facts">
                <dt>"Status"</dt><dd><Badge text=token.status.clone() /></dd>
                <dt>"Subject (sub)"</dt><dd><a href=format!("/tokens?subject={}", api::encode(&token.subject))>{token.subject.clone()}</a></dd>
                <dt>"Client (client_id)"</dt><dd><a href=format!("/tokens?client_id={}", api::encode(&token.client_id))>{token.client_id.clone()}</a></dd>
                <dt>"Scopes"</dt><dd>{if token.scopes.is_empty() { "none".to_owned() } else { token.scopes.join(" ") }}</dd>
                <dt>"Roles"</dt><dd>{if token.roles.is_empty() { "none".to_owned() } else { token.roles.join(" ") }}</dd>
                <dt>"Audience"</dt><dd>{token.audience.join(" ")}</dd>
                <dt>"Issued (iat)"</dt><dd><RelTime at=token.issued_at /></dd>
                <dt>"Expires (exp)"</dt><dd><RelTime at=token.expires_at /></dd>
                <dt>"Signing key (kid)"</dt><dd class="mono">{token.kid.clone()}</dd>
                <dt>"Issued by"</dt><dd class="mono">{token.issued_by.clone()}</dd>
                {token.family_id.clone().map(|f| view! { <dt>"Refresh family"</dt><dd class="mono">{f}</dd> })}
                {token.revoked_at.map(|t| view! { <dt>"Revoked"</dt><dd><RelTime at=t /> {token.revoke_reason.clone().map(|r| format!(" — {r}"))}</dd> })}
            </dl>
        </section>
    }
}

/// The Revoke button, its confirmation and, afterwards, the propagation to every edge.
#[component]
fn RevokeToken(
    token: TokenRecord,
    refresh: RwSignal<u32>,
    revoked_cursor: RwSignal<Option<i64>>,
) -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let asking = RwSignal::new(false);
    let reason = RwSignal::new(String::new());
    let jti = StoredValue::new(token.jti.clone());
    let revoke = Action::new_local(move |(jti, reason): &(String, String)| {
        let request = RevokeRequest {
            jti: Some(jti.clone()),
            reason: Some(reason.clone()),
            ..Default::default()
        };
        async move { api::revoke(request).await }
    });
    Effect::new(move |_| {
        if let Some(Ok(r)) = revoke.value().get() {
            revoked_cursor.set(Some(r.cursor));
            refresh.update(|n| *n += 1);
        }
    });
    let message = Signal::derive({
        let (jti, subject) = (token.jti.clone(), token.subject.clone());
        move || {
            format!("Revoke token {jti} of {subject}? Every edge refuses it as soon as it polls the revocation feed. Reason: {}", reason.get())
        }
    });
    let active = token.status == "active";
    view! {
        <Show when=move || ctx.can_write() && active && revoke.value().with(|v| v.is_none())>
            <section class="actions-panel" aria-label="revoke">
                <Show
                    when=move || asking.get()
                    fallback=move || view! {
                        <button type="button" class="danger" on:click=move |_| asking.set(true)>"Revoke"</button>
                    }
                >
                    <label>
                        "Reason (kept in the audit log)"
                        <input name="reason" required prop:value=reason on:input:target=move |ev| reason.set(ev.target().value()) />
                    </label>
                    <Confirm
                        message
                        confirm_label="Revoke at every edge"
                        on_confirm=Callback::new(move |_| {
                            let r = reason.get_untracked();
                            let r = if r.trim().is_empty() { "revoked from the dashboard".to_owned() } else { r };
                            revoke.dispatch((jti.get_value(), r));
                        })
                        on_cancel=Callback::new(move |_| asking.set(false))
                    />
                </Show>
            </section>
        </Show>
        {move || revoke.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorView error=e /> })}
    }
}
