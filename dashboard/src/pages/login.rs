//! The login page: username and password against the admin API's session endpoint, then back to the
//! page the user was sent from (`?next=`), which must be a path of this site.

use leptos::prelude::*;
use leptos_router::hooks::use_navigate;

use crate::api;
use crate::app::Ctx;
use crate::pages::query_param;

/// Only same-site paths are followed after login, never another origin.
fn safe_next(next: &str) -> String {
    if next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.starts_with("/login")
    {
        next.to_owned()
    } else {
        "/".to_owned()
    }
}

/// The login form.
#[component]
pub fn Login() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let next = query_param("next");
    let username = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let navigate = use_navigate();
    let login = Action::new_local(move |(u, p): &(String, String)| {
        let (u, p) = (u.clone(), p.clone());
        async move { api::login(u, p).await }
    });
    Effect::new(move |_| {
        if let Some(Ok(session)) = login.value().get() {
            ctx.session.set(Some(session));
            ctx.checked.set(true);
            navigate(&safe_next(&next.get_untracked()), Default::default());
        }
    });
    let error = move || match login.value().get() {
        Some(Err(api::ApiError::Unauthorized)) => Some("wrong username or password".to_owned()),
        Some(Err(e)) => Some(e.to_string()),
        _ => None,
    };
    view! {
        <main id="main" class="login">
            <form
                class="card"
                on:submit=move |ev| {
                    ev.prevent_default();
                    login.dispatch((username.get_untracked(), password.get_untracked()));
                }
            >
                <h1>"EdgeWarden"</h1>
                <p class="muted">"Log in to see and take back the tokens your edges enforce."</p>
                <Show when=move || !next.get().is_empty()>
                    <p class="note">"Your session has ended or you are not logged in: log in to continue."</p>
                </Show>
                <label>
                    "Username"
                    <input
                        name="username"
                        autocomplete="username"
                        required
                        prop:value=username
                        on:input:target=move |ev| username.set(ev.target().value())
                    />
                </label>
                <label>
                    "Password"
                    <input
                        name="password"
                        type="password"
                        autocomplete="current-password"
                        required
                        prop:value=password
                        on:input:target=move |ev| password.set(ev.target().value())
                    />
                </label>
                {move || error().map(|e| view! { <p class="error" role="alert">{e}</p> })}
                <button type="submit" class="primary" disabled=move || login.pending().get()>
                    {move || if login.pending().get() { "Logging in…" } else { "Log in" }}
                </button>
            </form>
        </main>
    }
}
