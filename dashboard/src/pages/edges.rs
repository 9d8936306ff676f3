//! Edges: every Envoy that polls the revocation feed or reports usage, with its last poll, how far
//! behind the feed it is, and its last usage report; stale and silent edges stand out.

use edgewarden_api_types::{Edge, EDGE_SILENT_AFTER_SECONDS, EDGE_STALE_AFTER_SECONDS};
use leptos::prelude::*;

use crate::api;
use crate::app::Ctx;
use crate::components::{Badge, ErrorView, Loading, RelTime};
use crate::pages::overview::fmt_count;

/// `in sync`, `behind`, `stale` or `silent`, by the same bounds the admin API's overview uses.
pub fn edge_state(edge: &Edge) -> &'static str {
    match edge.staleness_seconds {
        None => "silent",
        Some(s) if s > EDGE_SILENT_AFTER_SECONDS => "silent",
        Some(s) if s > EDGE_STALE_AFTER_SECONDS => "stale",
        Some(_) if edge.cursor_lag.unwrap_or(0) > 0 => "behind",
        Some(_) => "in sync",
    }
}

/// The edges page.
#[component]
pub fn Edges() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let edges = LocalResource::new(move || {
        ctx.tick.track();
        async move { api::edges().await }
    });
    view! {
        <div class="page-head"><h1>"Edges"</h1></div>
        <p class="muted">
            {format!("An edge is stale after {} s without a feed poll and silent after {} s; a stale edge may still accept a token revoked since.", EDGE_STALE_AFTER_SECONDS, EDGE_SILENT_AFTER_SECONDS)}
        </p>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match edges.await {
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok(page) if page.items.is_empty() => view! {
                        <p class="empty">"No edge has contacted this admin API yet. Configure the filter's control_plane to point here."</p>
                    }.into_any(),
                    Ok(page) => view! {
                        <table>
                            <thead>
                                <tr>
                                    <th scope="col">"Edge"</th>
                                    <th scope="col">"State"</th>
                                    <th scope="col">"Last poll"</th>
                                    <th scope="col" class="num">"Feed cursor"</th>
                                    <th scope="col" class="num">"Behind by"</th>
                                    <th scope="col">"Last usage report"</th>
                                    <th scope="col" class="num">"Decisions reported"</th>
                                    <th scope="col">"Address"</th>
                                </tr>
                            </thead>
                            <tbody>
                                {page.items.into_iter().map(|e| {
                                    let state = edge_state(&e);
                                    let row_class = format!("row-{}", state.replace(' ', "-"));
                                    view! {
                                        <tr class=row_class>
                                            <th scope="row">{e.name.clone()}</th>
                                            <td><Badge text=state.to_owned() /></td>
                                            <td>{match (e.last_poll, e.staleness_seconds) {
                                                (Some(t), Some(_)) => view! { <RelTime at=t /> }.into_any(),
                                                _ => view! { <span class="muted">"never"</span> }.into_any(),
                                            }}</td>
                                            <td class="num">{e.feed_cursor.map(|c| c.to_string()).unwrap_or_else(|| "–".into())}</td>
                                            <td class="num">{e.cursor_lag.map(|c| format!("{c} changes")).unwrap_or_else(|| "–".into())}</td>
                                            <td>{match e.last_report {
                                                Some(t) => view! { <RelTime at=t /> }.into_any(),
                                                None => view! { <span class="muted">"never"</span> }.into_any(),
                                            }}</td>
                                            <td class="num">{fmt_count(e.usage_events)}</td>
                                            <td>{e.address.clone().unwrap_or_default()}</td>
                                        </tr>
                                    }
                                }).collect::<Vec<_>>()}
                            </tbody>
                        </table>
                    }.into_any(),
                }
            })}
        </Transition>
    }
}
