//! Small building blocks every page uses: loading and error states, badges, figures, a pager,
//! a confirmation dialog and the show-once secret box.

use leptos::prelude::*;
use leptos_router::hooks::{use_location, use_navigate};

use crate::api::{self, encode, ApiError};
use crate::app::Ctx;

/// What a list shows while it loads.
#[component]
pub fn Loading() -> impl IntoView {
    view! { <p class="loading" role="status">"Loading…"</p> }
}

/// A failed call, said plainly; an ended session sends the user to the login page and back here afterwards.
#[component]
pub fn ErrorView(
    /// The failure.
    error: ApiError,
) -> impl IntoView {
    if error == ApiError::Unauthorized {
        let ctx = expect_context::<Ctx>();
        let location = use_location();
        let navigate = use_navigate();
        let here = api::here(
            &location.pathname.get_untracked(),
            &location.search.get_untracked(),
        );
        ctx.session.set(None);
        request_animation_frame(move || {
            navigate(
                &format!("/login?next={}", encode(&here)),
                Default::default(),
            )
        });
    }
    view! { <p class="error" role="alert">{error.to_string()}</p> }
}

/// A status shown as a word with a colour class (colour is never the only signal).
#[component]
pub fn Badge(
    /// The word shown, also the CSS modifier (`active`, `revoked`, `high`, ...).
    text: String,
) -> impl IntoView {
    let class = format!("badge badge-{}", text.replace([' ', '_'], "-"));
    view! { <span class=class>{text}</span> }
}

/// One headline figure that links to the page explaining it.
#[component]
pub fn Stat(
    /// What it counts.
    label: &'static str,
    /// The figure.
    value: String,
    /// The page that lists what it counts.
    #[prop(into)]
    href: String,
    /// Extra CSS class (`warn`, `bad`).
    #[prop(optional)]
    tone: &'static str,
) -> impl IntoView {
    view! {
        <a class=format!("stat {tone}") href=href>
            <span class="stat-value">{value}</span>
            <span class="stat-label">{label}</span>
        </a>
    }
}

/// Previous / next links for an offset-paged list.
#[component]
pub fn Pager(
    /// Items in the whole list.
    total: i64,
    /// Page size.
    limit: i64,
    /// Current offset.
    offset: i64,
    /// Moves to another offset.
    on_page: Callback<i64>,
) -> impl IntoView {
    let last = (offset + limit).min(total);
    let first = if total == 0 { 0 } else { offset + 1 };
    view! {
        <nav class="pager" aria-label="pages">
            <button
                type="button"
                disabled={offset == 0}
                on:click=move |_| on_page.run((offset - limit).max(0))
            >
                "← Previous"
            </button>
            <span>{format!("{first}–{last} of {total}")}</span>
            <button
                type="button"
                disabled={last >= total}
                on:click=move |_| on_page.run(offset + limit)
            >
                "Next →"
            </button>
        </nav>
    }
}

/// A confirmation step for a destructive action: says what it will do, then asks.
#[component]
pub fn Confirm(
    /// What will happen, in full.
    message: Signal<String>,
    /// Label of the confirming button.
    confirm_label: &'static str,
    /// Runs the action.
    on_confirm: Callback<()>,
    /// Closes without acting.
    on_cancel: Callback<()>,
) -> impl IntoView {
    view! {
        <div class="confirm" role="alertdialog" aria-modal="false" aria-labelledby="confirm-text">
            <p id="confirm-text">{message}</p>
            <div class="actions">
                <button type="button" class="danger" on:click=move |_| on_confirm.run(())>
                    {confirm_label}
                </button>
                <button type="button" on:click=move |_| on_cancel.run(())>
                    "Cancel"
                </button>
            </div>
        </div>
    }
}

/// A secret shown once, with a copy button and the warning that it will not be shown again.
#[component]
pub fn SecretOnce(
    /// What the secret is ("access token", "client secret", ...).
    label: &'static str,
    /// The secret.
    value: String,
) -> impl IntoView {
    let copied = RwSignal::new(false);
    let to_copy = value.clone();
    let copy = move |_| {
        if let Some(window) = web_sys::window() {
            let _ = window.navigator().clipboard().write_text(&to_copy);
            copied.set(true);
        }
    };
    view! {
        <div class="secret-once">
            <p class="warning" role="note">
                {format!("This {label} is shown once and will not be shown again: copy it now.")}
            </p>
            <label>
                {label}
                <textarea readonly rows="4" class="secret">{value}</textarea>
            </label>
            <button type="button" on:click=copy>
                {move || if copied.get() { "Copied" } else { "Copy" }}
            </button>
        </div>
    }
}
