//! Tokens: every token the admin API issued, with status, subject, client, scopes, issue and expiry
//! times; filtered by status, subject or client (kept in the URL), found by jti, paged on the server.

use leptos::prelude::*;
use leptos_router::hooks::use_navigate;

use crate::api;
use crate::app::Ctx;
use crate::components::{Badge, ErrorView, Loading, Pager, RelTime};
use crate::pages::{filter_setter, offset_param, page_callback, query_param, query_setter};

const LIMIT: i64 = 50;

/// The token list.
#[component]
pub fn Tokens() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let status = query_param("status");
    let subject = query_param("subject");
    let client = query_param("client_id");
    let offset = offset_param();
    let set_query = query_setter();
    let navigate = use_navigate();
    let list = LocalResource::new(move || {
        let filters = vec![
            ("status", status.get()),
            ("subject", subject.get()),
            ("client_id", client.get()),
            ("limit", LIMIT.to_string()),
            ("offset", offset.get().to_string()),
        ];
        async move { api::tokens(&filters).await }
    });
    let subject_input = RwSignal::new(subject.get_untracked());
    let client_input = RwSignal::new(client.get_untracked());
    let jti_input = RwSignal::new(String::new());
    let apply = {
        let set_query = set_query.clone();
        move || {
            set_query(&[
                ("subject", subject_input.get_untracked().trim().to_owned()),
                ("client_id", client_input.get_untracked().trim().to_owned()),
                ("offset", String::new()),
            ])
        }
    };
    let on_status = filter_setter("status");
    let on_page = page_callback();

    view! {
        <div class="page-head">
            <h1>"Tokens"</h1>
            <Show when=move || ctx.can_write()>
                <a class="button primary" href="/tokens/new">"Issue a token"</a>
            </Show>
        </div>
        <div class="filters">
            <form class="inline" on:submit={
                let apply = apply.clone();
                move |ev| { ev.prevent_default(); apply(); }
            }>
                <label>
                    "Status"
                    <select
                        prop:value=status
                        on:change:target=move |ev| on_status(ev.target().value())
                    >
                        <option value="">"any"</option>
                        <option value="active">"active"</option>
                        <option value="expired">"expired"</option>
                        <option value="revoked">"revoked"</option>
                    </select>
                </label>
                <label>
                    "Subject"
                    <input name="subject" prop:value=subject_input on:input:target=move |ev| subject_input.set(ev.target().value()) />
                </label>
                <label>
                    "Client"
                    <input name="client_id" prop:value=client_input on:input:target=move |ev| client_input.set(ev.target().value()) />
                </label>
                <button type="submit">"Filter"</button>
            </form>
            <form class="inline" on:submit=move |ev| {
                ev.prevent_default();
                let jti = jti_input.get_untracked().trim().to_owned();
                if !jti.is_empty() {
                    navigate(&format!("/tokens/{}", api::encode(&jti)), Default::default());
                }
            }>
                <label>
                    "Token id (jti)"
                    <input name="jti" prop:value=jti_input on:input:target=move |ev| jti_input.set(ev.target().value()) />
                </label>
                <button type="submit">"Open"</button>
            </form>
        </div>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match list.await {
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok(page) if page.items.is_empty() => view! {
                        <p class="empty">"No token matches these filters."</p>
                    }.into_any(),
                    Ok(page) => view! {
                        <table>
                            <thead>
                                <tr>
                                    <th scope="col">"Token id"</th>
                                    <th scope="col">"Status"</th>
                                    <th scope="col">"Subject"</th>
                                    <th scope="col">"Client"</th>
                                    <th scope="col">"Scopes"</th>
                                    <th scope="col">"Issued"</th>
                                    <th scope="col">"Expires"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {page.items.iter().map(|t| view! {
                                    <tr>
                                        <td><a class="mono" href=format!("/tokens/{}", api::encode(&t.jti))>{t.jti.clone()}</a></td>
                                        <td><Badge text=t.status.clone() /></td>
                                        <td>{t.subject.clone()}</td>
                                        <td>{t.client_id.clone()}</td>
                                        <td>{t.scopes.join(" ")}</td>
                                        <td><RelTime at=t.issued_at /></td>
                                        <td><RelTime at=t.expires_at /></td>
                                    </tr>
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
