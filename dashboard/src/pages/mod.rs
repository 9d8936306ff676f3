//! One page per file. Pages hold their state in signals and keep their filters in the URL, so a
//! filtered view can be bookmarked and shared.

pub mod anomalies;
pub mod debugger;
pub mod edges;
pub mod events;
pub mod issue;
pub mod login;
pub mod overview;
pub mod revocations;
pub mod settings;
pub mod token;
pub mod tokens;

use leptos::prelude::*;
use leptos_router::hooks::{use_location, use_navigate, use_query_map};

use crate::api;

/// One query parameter of the current URL, empty when absent.
pub fn query_param(name: &'static str) -> Memo<String> {
    let query = use_query_map();
    Memo::new(move |_| query.with(|q| q.get(name).unwrap_or_default()))
}

/// Returns a function that replaces the given query parameters (empty values are removed) and keeps the others.
pub fn query_setter() -> impl Fn(&[(&str, String)]) + Clone {
    let query = use_query_map();
    let location = use_location();
    let navigate = use_navigate();
    move |changes: &[(&str, String)]| {
        let mut pairs: Vec<(String, String)> = query.with_untracked(|q| {
            q.clone()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        });
        for (name, value) in changes {
            pairs.retain(|(k, _)| k != name);
            if !value.is_empty() {
                pairs.push(((*name).to_owned(), value.clone()));
            }
        }
        let borrowed: Vec<(&str, String)> =
            pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let url = api::with_query(&location.pathname.get_untracked(), &borrowed);
        navigate(&url, Default::default());
    }
}

/// The offset parameter of a paged list.
pub fn offset_param() -> Memo<i64> {
    let raw = query_param("offset");
    Memo::new(move |_| raw.get().parse().unwrap_or(0).max(0))
}

/// A filter change: sets `name` in the URL and goes back to the first page.
pub fn filter_setter(name: &'static str) -> impl Fn(String) + Clone {
    let set_query = query_setter();
    move |value: String| set_query(&[(name, value), ("offset", String::new())])
}

/// The pager's callback: moves the list to another offset, kept in the URL.
pub fn page_callback() -> Callback<i64> {
    let set_query = query_setter();
    Callback::new(move |o: i64| {
        set_query(&[("offset", if o == 0 { String::new() } else { o.to_string() })])
    })
}

/// Bumps `refresh` whenever one of `succeeded` says its last action succeeded, so the list it changed reloads.
pub fn refresh_on_success(refresh: RwSignal<u32>, succeeded: Vec<Signal<bool>>) {
    Effect::new(move |_| {
        if succeeded.iter().any(|s| s.get()) {
            refresh.update(|n| *n += 1);
        }
    });
}

/// True while an action's last answer is a success.
pub fn ok<I: 'static, O: 'static, E: 'static>(action: Action<I, Result<O, E>>) -> Signal<bool> {
    Signal::derive(move || action.value().with(|v| matches!(v, Some(Ok(_)))))
}

/// A list typed into one field, separated by spaces or commas (scopes, audiences, event kinds).
pub fn words(s: &str) -> Vec<String> {
    s.split([' ', ','])
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}
