//! Issue a token (admins): subject, client, scopes, roles, audience, lifetime, refresh. The new
//! token is shown once with a copy button and the warning that it will not be shown again.

use edgewarden_api_types::{Audience, Client, IssueRequest};
use leptos::prelude::*;

use crate::api;
use crate::app::Ctx;
use crate::components::{ErrorView, Loading, SecretOnce};
use crate::pages::words;

/// The issue page.
#[component]
pub fn IssueToken() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let clients = LocalResource::new(|| async { api::clients().await });
    view! {
        <div class="page-head"><h1>"Issue a token"</h1></div>
        <Show
            when=move || ctx.can_write()
            fallback=|| view! { <p class="note">"Only admins can issue tokens; your role can read them."</p> }
        >
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match clients.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! {
                            <p class="empty">"Register a client first (Settings → Clients): every token belongs to one."</p>
                        }.into_any(),
                        Ok(page) => view! { <IssueForm clients=page.items /> }.into_any(),
                    }
                })}
            </Transition>
        </Show>
    }
}

#[component]
fn IssueForm(clients: Vec<Client>) -> impl IntoView {
    let first = clients.first().cloned();
    let clients = StoredValue::new(clients);
    let client_id = RwSignal::new(
        first
            .as_ref()
            .map(|c| c.client_id.clone())
            .unwrap_or_default(),
    );
    let subject = RwSignal::new(String::new());
    let scopes = RwSignal::new(String::new());
    let roles = RwSignal::new(String::new());
    let audience = RwSignal::new(String::new());
    let ttl = RwSignal::new(String::new());
    let refresh = RwSignal::new(false);
    let selected = Memo::new(move |_| {
        clients.with_value(|cs| cs.iter().find(|c| c.client_id == client_id.get()).cloned())
    });
    let issue = Action::new_local(move |r: &IssueRequest| {
        let r = r.clone();
        async move { api::issue(r).await }
    });
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let aud = words(&audience.get_untracked());
        let request = IssueRequest {
            subject: subject.get_untracked().trim().to_owned(),
            client_id: client_id.get_untracked(),
            scopes: words(&scopes.get_untracked()),
            roles: words(&roles.get_untracked()),
            audience: match aud.len() {
                0 => None,
                1 => aud.into_iter().next().map(Audience::One),
                _ => Some(Audience::Many(aud)),
            },
            ttl_seconds: ttl.get_untracked().trim().parse().ok(),
            refresh: refresh.get_untracked(),
        };
        issue.dispatch(request);
    };
    view! {
        <form class="stack" on:submit=submit>
            <label>
                "Client"
                <select name="client_id" prop:value=client_id on:change:target=move |ev| client_id.set(ev.target().value())>
                    {clients.with_value(|cs| cs.iter().map(|c| view! { <option value=c.client_id.clone()>{format!("{} ({})", c.client_id, c.name)}</option> }).collect::<Vec<_>>())}
                </select>
            </label>
            <label>
                "Subject (sub)"
                <input name="subject" required prop:value=subject on:input:target=move |ev| subject.set(ev.target().value()) />
            </label>
            <label>
                "Scopes, separated by spaces"
                <input name="scopes" prop:value=scopes on:input:target=move |ev| scopes.set(ev.target().value()) />
                <span class="hint">{move || selected.get().map(|c| format!("allowed for this client: {}", if c.allowed_scopes.is_empty() { "none".to_owned() } else { c.allowed_scopes.join(" ") }))}</span>
            </label>
            <label>
                "Roles, separated by spaces"
                <input name="roles" prop:value=roles on:input:target=move |ev| roles.set(ev.target().value()) />
                <span class="hint">{move || selected.get().map(|c| format!("allowed for this client: {}", if c.allowed_roles.is_empty() { "none".to_owned() } else { c.allowed_roles.join(" ") }))}</span>
            </label>
            <label>
                "Audience (empty for the client's default)"
                <input name="audience" prop:value=audience on:input:target=move |ev| audience.set(ev.target().value()) />
                <span class="hint">{move || selected.get().map(|c| format!("allowed: {}", c.audiences.join(" ")))}</span>
            </label>
            <label>
                "Lifetime in seconds (empty for the client's maximum)"
                <input name="ttl_seconds" type="number" min="1" prop:value=ttl on:input:target=move |ev| ttl.set(ev.target().value()) />
                <span class="hint">{move || selected.get().map(|c| format!("at most {} s", c.max_lifetime_seconds))}</span>
            </label>
            <label class="check">
                <input name="refresh" type="checkbox" prop:checked=refresh on:change:target=move |ev| refresh.set(ev.target().checked()) />
                "Also issue a refresh token"
            </label>
            <button type="submit" class="primary" disabled=move || issue.pending().get()>"Issue"</button>
        </form>
        {move || match issue.value().get() {
            None => ().into_any(),
            Some(Err(e)) => view! { <ErrorView error=e /> }.into_any(),
            Some(Ok(issued)) => view! {
                <section class="issued" aria-labelledby="issued-h">
                    <h2 id="issued-h">"Token issued"</h2>
                    <p>
                        "Token id " <a class="mono" href=format!("/tokens/{}", api::encode(&issued.jti))>{issued.jti.clone()}</a>
                        {format!(", expires in {} s.", issued.expires_in)}
                    </p>
                    <SecretOnce label="access token" value=issued.access_token.clone() />
                    {issued.refresh_token.clone().map(|r| view! { <SecretOnce label="refresh token" value=r /> })}
                </section>
            }.into_any(),
        }}
    }
}
