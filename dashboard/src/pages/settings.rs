//! Settings: clients (register, rotate a secret), API keys (create, revoke), signing keys (rotate)
//! and webhooks. Secrets are shown once; auditors see the lists without any control that changes them.

use edgewarden_api_types::{NewApiKeyRequest, NewClientRequest, NewWebhookRequest, Role};
use leptos::prelude::*;

use crate::api;
use crate::app::Ctx;
use crate::components::{Badge, Confirm, ErrorView, Loading, RelTime, SecretOnce};
use crate::pages::{ok, refresh_on_success, words};

/// The settings page.
#[component]
pub fn Settings() -> impl IntoView {
    view! {
        <div class="page-head"><h1>"Settings"</h1></div>
        <Clients />
        <ApiKeys />
        <Issuers />
        <SigningKeys />
        <Webhooks />
    }
}

#[component]
fn Clients() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let refresh = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        refresh.track();
        async move { api::clients().await }
    });
    let client_id = RwSignal::new(String::new());
    let scopes = RwSignal::new(String::new());
    let audiences = RwSignal::new(String::new());
    let create = Action::new_local(move |r: &NewClientRequest| {
        let r = r.clone();
        async move { api::create_client(r).await }
    });
    let rotate = Action::new_local(move |id: &String| {
        let id = id.clone();
        async move { api::rotate_client_secret(&id).await }
    });
    let rotating = RwSignal::new(None::<String>);
    refresh_on_success(refresh, vec![ok(create), ok(rotate)]);
    view! {
        <section aria-labelledby="clients-h">
            <h2 id="clients-h">"Clients"</h2>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! { <p class="empty">"No client registered yet."</p> }.into_any(),
                        Ok(page) => view! {
                            <table>
                                <thead><tr>
                                    <th scope="col">"Client"</th><th scope="col">"Scopes"</th><th scope="col">"Audiences"</th>
                                    <th scope="col" class="num">"Longest lifetime"</th><th scope="col">"Secret"</th><th scope="col">"Created"</th>
                                    <Show when=move || ctx.can_write()><th scope="col">"Actions"</th></Show>
                                </tr></thead>
                                <tbody>
                                    {page.items.into_iter().map(|c| {
                                        let id = c.client_id.clone();
                                        view! {
                                            <tr>
                                                <th scope="row"><a href=format!("/tokens?client_id={}", api::encode(&c.client_id))>{c.client_id.clone()}</a> " " <span class="muted">{c.name.clone()}</span></th>
                                                <td>{c.allowed_scopes.join(" ")}</td>
                                                <td>{c.audiences.join(" ")}</td>
                                                <td class="num">{format!("{} s", c.max_lifetime_seconds)}</td>
                                                <td>{if c.has_secret { "yes" } else { "no" }}</td>
                                                <td><RelTime at=c.created_at /></td>
                                                <Show when=move || ctx.can_write()>
                                                    <td><button type="button" on:click={let id = id.clone(); move |_| rotating.set(Some(id.clone()))}>"Rotate secret"</button></td>
                                                </Show>
                                            </tr>
                                        }
                                    }).collect::<Vec<_>>()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
            {move || rotating.get().map(|id| view! {
                <Confirm
                    message=Signal::derive({ let id = id.clone(); move || format!("Give client {id} a new secret? The current secret stops working at once.") })
                    confirm_label="Rotate the secret"
                    on_confirm=Callback::new({ let id = id.clone(); move |_| { rotate.dispatch(id.clone()); rotating.set(None); } })
                    on_cancel=Callback::new(move |_| rotating.set(None))
                />
            })}
            {move || match rotate.value().get() {
                Some(Ok(c)) => view! { <SecretOnce label="client secret" value=c.client_secret /> }.into_any(),
                Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
                None => ().into_any(),
            }}
            <Show when=move || ctx.can_write()>
                <form class="inline" on:submit=move |ev| {
                    ev.prevent_default();
                    create.dispatch(NewClientRequest {
                        client_id: client_id.get_untracked().trim().to_owned(),
                        allowed_scopes: words(&scopes.get_untracked()),
                        audiences: words(&audiences.get_untracked()),
                        ..Default::default()
                    });
                }>
                    <label>"New client id" <input name="new_client_id" required prop:value=client_id on:input:target=move |ev| client_id.set(ev.target().value()) /></label>
                    <label>"Allowed scopes" <input name="new_client_scopes" prop:value=scopes on:input:target=move |ev| scopes.set(ev.target().value()) /></label>
                    <label>"Audiences" <input name="new_client_audiences" prop:value=audiences on:input:target=move |ev| audiences.set(ev.target().value()) /></label>
                    <button type="submit">"Register client"</button>
                </form>
                {move || match create.value().get() {
                    Some(Ok(c)) => view! { <SecretOnce label="client secret" value=c.client_secret /> }.into_any(),
                    Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
                    None => ().into_any(),
                }}
            </Show>
        </section>
    }
}

#[component]
fn ApiKeys() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let refresh = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        refresh.track();
        async move { api::api_keys().await }
    });
    let role = RwSignal::new("edge".to_owned());
    let name = RwSignal::new(String::new());
    let client = RwSignal::new(String::new());
    let edges = RwSignal::new(String::new());
    let create = Action::new_local(move |r: &NewApiKeyRequest| {
        let r = r.clone();
        async move { api::create_api_key(r).await }
    });
    let delete = Action::new_local(move |id: &String| {
        let id = id.clone();
        async move { api::delete_api_key(&id).await }
    });
    let deleting = RwSignal::new(None::<String>);
    refresh_on_success(refresh, vec![ok(create), ok(delete)]);
    view! {
        <section aria-labelledby="keys-h">
            <h2 id="keys-h">"API keys"</h2>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! { <p class="empty">"No API key yet."</p> }.into_any(),
                        Ok(page) => view! {
                            <table>
                                <thead><tr>
                                    <th scope="col">"Id"</th><th scope="col">"Name"</th><th scope="col">"Role"</th><th scope="col">"Client"</th><th scope="col">"Acts as edge"</th><th scope="col">"Created"</th>
                                    <Show when=move || ctx.can_write()><th scope="col">"Actions"</th></Show>
                                </tr></thead>
                                <tbody>
                                    {page.items.into_iter().map(|k| {
                                        let id = k.id.clone();
                                        view! {
                                            <tr>
                                                <td class="mono">{k.id.clone()}</td><td>{k.name.clone()}</td><td><Badge text=k.role.clone() /></td>
                                                <td>{k.client_id.clone().unwrap_or_default()}</td>
                                                <td>{edge_binding(&k.role, &k.edges)}</td>
                                                <td><RelTime at=k.created_at /></td>
                                                <Show when=move || ctx.can_write()>
                                                    <td><button type="button" class="danger" on:click={let id = id.clone(); move |_| deleting.set(Some(id.clone()))}>"Revoke key"</button></td>
                                                </Show>
                                            </tr>
                                        }
                                    }).collect::<Vec<_>>()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
            {move || deleting.get().map(|id| view! {
                <Confirm
                    message=Signal::derive({ let id = id.clone(); move || format!("Revoke API key {id}? Whatever uses it (an edge, a service) is refused from now on.") })
                    confirm_label="Revoke the key"
                    on_confirm=Callback::new({ let id = id.clone(); move |_| { delete.dispatch(id.clone()); deleting.set(None); } })
                    on_cancel=Callback::new(move |_| deleting.set(None))
                />
            })}
            {move || delete.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorView error=e /> })}
            <Show when=move || ctx.can_write()>
                <form class="inline" on:submit=move |ev| {
                    ev.prevent_default();
                    let role = role.get_untracked().parse().unwrap_or(Role::Edge);
                    let client = client.get_untracked().trim().to_owned();
                    let name = name.get_untracked().trim().to_owned();
                    let edges = if role == Role::Edge { words(&edges.get_untracked()) } else { Vec::new() };
                    create.dispatch(NewApiKeyRequest { role, name: (!name.is_empty()).then_some(name), client_id: (!client.is_empty()).then_some(client), edges });
                }>
                    <label>"Role"
                        <select name="new_key_role" prop:value=role on:change:target=move |ev| role.set(ev.target().value())>
                            <option value="edge">"edge"</option>
                            <option value="service">"service"</option>
                            <option value="auditor">"auditor"</option>
                            <option value="admin">"admin"</option>
                        </select>
                    </label>
                    <label>"Name" <input name="new_key_name" prop:value=name on:input:target=move |ev| name.set(ev.target().value()) /></label>
                    <label>"Client (service keys)" <input name="new_key_client" prop:value=client on:input:target=move |ev| client.set(ev.target().value()) /></label>
                    <label>"Edge names (edge keys)" <input name="new_key_edges" placeholder="edge-eu-1 edge-eu-2" prop:value=edges on:input:target=move |ev| edges.set(ev.target().value()) /></label>
                    <button type="submit">"Create key"</button>
                </form>
                {move || match create.value().get() {
                    Some(Ok(k)) => view! { <SecretOnce label="API key" value=k.key /> }.into_any(),
                    Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
                    None => ().into_any(),
                }}
            </Show>
        </section>
    }
}

#[component]
fn SigningKeys() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let refresh = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        refresh.track();
        async move { api::signing_keys().await }
    });
    let asking = RwSignal::new(false);
    let rotate = Action::new_local(move |_: &()| async move { api::rotate_signing_key().await });
    refresh_on_success(refresh, vec![ok(rotate)]);
    view! {
        <section aria-labelledby="signing-h">
            <h2 id="signing-h">"Signing keys"</h2>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok(keys) => view! {
                            <table>
                                <thead><tr><th scope="col">"Key id (kid)"</th><th scope="col">"Algorithm"</th><th scope="col">"Status"</th><th scope="col">"Published"</th><th scope="col">"Created"</th><th scope="col">"Retired"</th></tr></thead>
                                <tbody>
                                    {keys.into_iter().map(|k| view! {
                                        <tr>
                                            <td class="mono">{k.kid.clone()}</td><td>{k.alg.clone()}</td><td><Badge text=k.status.clone() /></td>
                                            <td>{if k.published { "in the JWKS" } else { "no" }}</td>
                                            <td><RelTime at=k.created_at /></td>
                                            <td>{k.retired_at.map(|t| view! { <RelTime at=t /> })}</td>
                                        </tr>
                                    }).collect::<Vec<_>>()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
            <Show when=move || ctx.can_write()>
                <Show when=move || asking.get() fallback=move || view! { <button type="button" on:click=move |_| asking.set(true)>"Rotate the signing key"</button> }>
                    <Confirm
                        message=Signal::derive(|| "Rotate the signing key? New tokens are signed with a new key; the current key stays in the JWKS until its last token expires, so nothing in use is refused.".to_owned())
                        confirm_label="Rotate"
                        on_confirm=Callback::new(move |_| { rotate.dispatch(()); asking.set(false); })
                        on_cancel=Callback::new(move |_| asking.set(false))
                    />
                </Show>
            </Show>
            {move || rotate.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorView error=e /> })}
        </section>
    }
}

#[component]
fn Webhooks() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let refresh = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        refresh.track();
        async move { api::webhooks().await }
    });
    let url = RwSignal::new(String::new());
    let kinds = RwSignal::new("*".to_owned());
    let create = Action::new_local(move |r: &NewWebhookRequest| {
        let r = r.clone();
        async move { api::create_webhook(r).await }
    });
    refresh_on_success(refresh, vec![ok(create)]);
    view! {
        <section aria-labelledby="hooks-h">
            <h2 id="hooks-h">"Webhooks"</h2>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok(hooks) if hooks.is_empty() => view! { <p class="empty">"No webhook yet: a webhook pushes signed events to your SIEM or chat as they happen."</p> }.into_any(),
                        Ok(hooks) => view! {
                            <table>
                                <thead><tr><th scope="col">"URL"</th><th scope="col">"Events"</th><th scope="col">"State"</th><th scope="col">"Created"</th></tr></thead>
                                <tbody>
                                    {hooks.into_iter().map(|h| view! {
                                        <tr>
                                            <td class="mono">{h.url.clone()}</td><td>{h.kinds.join(" ")}</td>
                                            <td><Badge text=(if h.active { "active" } else { "paused" }).to_owned() /></td>
                                            <td><RelTime at=h.created_at /> " by " {h.created_by.clone()}</td>
                                        </tr>
                                    }).collect::<Vec<_>>()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
            <Show when=move || ctx.can_write()>
                <form class="inline" on:submit=move |ev| {
                    ev.prevent_default();
                    create.dispatch(NewWebhookRequest {
                        url: url.get_untracked().trim().to_owned(),
                        kinds: words(&kinds.get_untracked()),
                        description: String::new(),
                    });
                }>
                    <label>"Webhook URL" <input name="new_webhook_url" type="url" required prop:value=url on:input:target=move |ev| url.set(ev.target().value()) /></label>
                    <label>"Event kinds (* for all)" <input name="new_webhook_kinds" prop:value=kinds on:input:target=move |ev| kinds.set(ev.target().value()) /></label>
                    <button type="submit">"Create webhook"</button>
                </form>
                {move || match create.value().get() {
                    Some(Ok(h)) => view! { <SecretOnce label="webhook signing secret" value=h.secret.unwrap_or_default() /> }.into_any(),
                    Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
                    None => ().into_any(),
                }}
            </Show>
        </section>
    }
}

#[component]
fn Issuers() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let refresh = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        refresh.track();
        async move { api::issuers().await }
    });
    let remove = Action::new_local(move |issuer: &String| {
        let issuer = issuer.clone();
        async move { api::remove_issuer(&issuer).await }
    });
    let removing = RwSignal::new(None::<String>);
    refresh_on_success(refresh, vec![ok(remove)]);
    view! {
        <section aria-labelledby="issuers-h">
            <h2 id="issuers-h">"Trusted issuers"</h2>
            <p class="muted">
                "Identity providers whose tokens can be revoked here (by jti, subject, client, or by pasting the token). Add one with POST /api/v1/issuers or edgewarden-admin issuer add."
            </p>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match list.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok(items) if items.is_empty() => {
                            view! { <p class="empty">"Only this admin API's own tokens can be revoked: no foreign issuer is trusted yet."</p> }
                                .into_any()
                        }
                        Ok(items) => view! {
                            <table>
                                <thead><tr>
                                    <th scope="col">"Issuer"</th><th scope="col">"Keys from"</th><th scope="col">"Tokens live up to"</th><th scope="col">"Added"</th>
                                    <Show when=move || ctx.can_write()><th scope="col">"Actions"</th></Show>
                                </tr></thead>
                                <tbody>
                                    {items.into_iter().map(|i| {
                                        let issuer = i.issuer.clone();
                                        view! {
                                            <tr>
                                                <td class="mono">{i.issuer.clone()}</td>
                                                <td class="mono">{i.jwks_uri.clone().unwrap_or_else(|| "inline JWKS".to_owned())}</td>
                                                <td>{lifetime(i.max_token_lifetime_seconds)}</td>
                                                <td><RelTime at=i.created_at /> " by " {i.created_by.clone()}</td>
                                                <Show when=move || ctx.can_write()>
                                                    <td><button type="button" class="danger" on:click={let issuer = issuer.clone(); move |_| removing.set(Some(issuer.clone()))}>"Stop trusting"</button></td>
                                                </Show>
                                            </tr>
                                        }
                                    }).collect::<Vec<_>>()}
                                </tbody>
                            </table>
                        }.into_any(),
                    }
                })}
            </Transition>
            {move || removing.get().map(|issuer| view! {
                <Confirm
                    message=Signal::derive({ let issuer = issuer.clone(); move || format!("Stop trusting {issuer}? Its tokens can no longer be revoked here; revocations already made stay in force until they expire.") })
                    confirm_label="Stop trusting"
                    on_confirm=Callback::new({ let issuer = issuer.clone(); move |_| { remove.dispatch(issuer.clone()); removing.set(None); } })
                    on_cancel=Callback::new(move |_| removing.set(None))
                />
            })}
            {move || remove.value().get().and_then(|r| r.err()).map(|e| view! { <ErrorView error=e /> })}
        </section>
    }
}

/// Which edges a key may act as: its bound names, "any (unbound)" for an edge key without names, nothing
/// for other roles.
fn edge_binding(role: &str, edges: &[String]) -> String {
    match (role, edges) {
        ("edge", []) => "any (unbound)".to_owned(),
        (_, []) => String::new(),
        (_, names) => names.join(", "),
    }
}

/// A token lifetime in the largest whole unit: "24 h", "90 min", "45 s".
fn lifetime(seconds: i64) -> String {
    match seconds {
        s if s >= 2 * 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}
