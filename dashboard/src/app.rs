//! The app shell: the session and live-update context, the header, and every route in one place.

use edgewarden_api_types::{Role, SessionInfo, StoredEvent};
use leptos::prelude::*;
use leptos_router::components::{Outlet, ParentRoute, Route, Router, Routes, A};
use leptos_router::hooks::{use_location, use_navigate};
use leptos_router::path;

use crate::api;
use crate::components::live;
use crate::pages;

/// What every page can read: who is logged in, and the live event stream.
#[derive(Clone, Copy)]
pub struct Ctx {
    /// The logged-in user, `None` before login or after the session ended.
    pub session: RwSignal<Option<SessionInfo>>,
    /// True once the first session check has answered.
    pub checked: RwSignal<bool>,
    /// Recent events from the live stream, newest first.
    pub events: RwSignal<Vec<StoredEvent>>,
    /// Events received on the live stream since the page loaded.
    pub received: RwSignal<u64>,
    /// Bumped (throttled) when events arrive: pages that show live figures refetch on it.
    pub tick: RwSignal<u64>,
    /// Whether the live stream is connected.
    pub connected: RwSignal<bool>,
}

impl Ctx {
    /// True when the logged-in user may change things (admins); auditors see no mutating control.
    pub fn can_write(&self) -> bool {
        self.session
            .with(|s| s.as_ref().is_some_and(|s| s.role == Role::Admin))
    }
}

/// The whole app.
#[component]
pub fn App() -> impl IntoView {
    let ctx = Ctx {
        session: RwSignal::new(None),
        checked: RwSignal::new(false),
        events: RwSignal::new(Vec::new()),
        received: RwSignal::new(0),
        tick: RwSignal::new(0),
        connected: RwSignal::new(false),
    };
    provide_context(ctx);
    leptos::task::spawn_local(async move {
        if let Ok(session) = api::session().await {
            ctx.session.set(Some(session));
        }
        ctx.checked.set(true);
    });
    // One live stream while someone is logged in; dropped (closed) at logout or session end.
    let stream = StoredValue::new_local(None::<live::Live>);
    Effect::new(move |_| {
        let logged_in = ctx.session.with(|s| s.is_some());
        stream.update_value(|s| {
            if logged_in && s.is_none() {
                *s = live::connect(ctx);
            } else if !logged_in {
                *s = None;
                ctx.connected.set(false);
            }
        });
    });

    // A page the browser keeps in its back/forward cache must not hold its stream open: six such
    // pages would take every connection the browser allows to this host. Close on pagehide, reopen on pageshow.
    let _ = window_event_listener_untyped("pagehide", move |_| {
        stream.update_value(|s| *s = None);
        ctx.connected.set(false);
    });
    let _ = window_event_listener_untyped("pageshow", move |_| {
        if ctx.session.with_untracked(|s| s.is_some()) {
            stream.update_value(|s| {
                if s.is_none() {
                    *s = live::connect(ctx);
                }
            });
        }
    });

    view! {
        <Router>
            <a class="skip" href="#main">"Skip to content"</a>
            <Routes fallback=|| view! { <main id="main"><h1>"Page not found"</h1><p><a href="/">"Back to the overview"</a></p></main> }>
                <Route path=path!("/login") view=pages::login::Login />
                <ParentRoute path=path!("") view=Layout>
                    <Route path=path!("") view=pages::overview::Overview />
                    <Route path=path!("tokens") view=pages::tokens::Tokens />
                    <Route path=path!("tokens/new") view=pages::issue::IssueToken />
                    <Route path=path!("tokens/:jti") view=pages::token::TokenDetail />
                    <Route path=path!("revocations") view=pages::revocations::Revocations />
                    <Route path=path!("anomalies") view=pages::anomalies::Anomalies />
                    <Route path=path!("edges") view=pages::edges::Edges />
                    <Route path=path!("events") view=pages::events::Events />
                    <Route path=path!("debugger") view=pages::debugger::Debugger />
                    <Route path=path!("settings") view=pages::settings::Settings />
                </ParentRoute>
            </Routes>
        </Router>
    }
}

/// The frame of every page behind the login: header, navigation, and the page itself.
/// Without a session it sends the user to the login page, which brings them back here afterwards.
#[component]
fn Layout() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let location = use_location();
    let navigate = use_navigate();
    Effect::new(move |_| {
        if ctx.checked.get() && ctx.session.with(|s| s.is_none()) {
            let here = api::here(
                &location.pathname.get_untracked(),
                &location.search.get_untracked(),
            );
            navigate(
                &format!("/login?next={}", api::encode(&here)),
                Default::default(),
            );
        }
    });
    view! {
        <Show
            when=move || ctx.session.with(|s| s.is_some())
            fallback=|| view! { <main id="main"><p class="loading" role="status">"Checking your session…"</p></main> }
        >
            <Header />
            <main id="main" tabindex="-1">
                <Outlet />
            </main>
        </Show>
    }
}

#[component]
fn Header() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let navigate = use_navigate();
    let logout = Action::new_local(move |_: &()| async move { api::logout().await });
    Effect::new(move |_| {
        if logout.value().with(|v| v.is_some()) {
            ctx.session.set(None);
            navigate("/login", Default::default());
        }
    });
    let who = move || {
        ctx.session.with(|s| {
            s.as_ref()
                .map(|s| (s.username.clone(), s.role.to_string()))
                .unwrap_or_default()
        })
    };
    view! {
        <header class="top">
            <a class="brand" href="/">"EdgeWarden"</a>
            <nav aria-label="main">
                <A href="/" exact=true>"Overview"</A>
                <A href="/tokens">"Tokens"</A>
                <A href="/revocations">"Revocations"</A>
                <A href="/anomalies">"Anomalies"</A>
                <A href="/edges">"Edges"</A>
                <A href="/events">"Events"</A>
                <A href="/debugger">"Debugger"</A>
                <A href="/settings">"Settings"</A>
            </nav>
            <div class="who">
                <span class="live" class:on=move || ctx.connected.get() title="live updates from the event stream">
                    {move || if ctx.connected.get() { "● live" } else { "○ offline" }}
                </span>
                <span data-testid="who">
                    {move || who().0} " " <span class="role">{move || format!("({})", who().1)}</span>
                </span>
                <button type="button" on:click=move |_| { logout.dispatch(()); }>"Log out"</button>
            </div>
        </header>
    }
}
