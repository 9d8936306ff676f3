//! One page per file. Pages hold their state in signals and keep their filters in the URL, so a
//! filtered view can be bookmarked and shared.

pub mod anomalies;
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
