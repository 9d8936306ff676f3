//! The overview: at a glance for a chosen range (last hour, 24 h, 7 d), tokens issued, active,
//! revoked and expired; decisions at the edges over time; open anomalies by severity; edges with their
//! sync state. Every figure links to the page that explains it, and all of it refreshes from the live stream.

use leptos::prelude::*;

use crate::api;
use crate::app::Ctx;
use crate::components::time::now;
use crate::components::{Badge, DecisionChart, ErrorView, Loading, RelTime, Stat};
use crate::pages::{edges::edge_state, query_param, query_setter};

/// The ranges offered, with their length and the chart's bucket.
const RANGES: [(&str, &str, i64, &str, i64); 3] = [
    ("1h", "Last hour", 3600, "minute", 60),
    ("24h", "Last 24 h", 86_400, "hour", 3600),
    ("7d", "Last 7 days", 604_800, "hour", 3600),
];

/// A count grouped in thousands: `1,234,567`.
pub fn fmt_count(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The overview page.
#[component]
pub fn Overview() -> impl IntoView {
    let ctx = expect_context::<Ctx>();
    let range_param = query_param("range");
    let range = Memo::new(move |_| {
        let r = range_param.get();
        RANGES
            .iter()
            .find(|x| x.0 == r)
            .copied()
            .unwrap_or(RANGES[1])
    });
    let set_query = query_setter();
    let figures = LocalResource::new(move || {
        ctx.tick.track();
        let r = range.get();
        async move { api::overview(r.0).await }
    });
    let chart = LocalResource::new(move || {
        ctx.tick.track();
        let (_, _, len, bucket, width) = range.get();
        async move {
            let until = now() + 1;
            let since = until - len;
            api::series(bucket, since, &[])
                .await
                .map(|s| (s, since, until, width))
        }
    });
    let edges = LocalResource::new(move || {
        ctx.tick.track();
        async move { api::edges().await }
    });

    view! {
        <div class="page-head">
            <h1>"Overview"</h1>
            <div class="range" role="group" aria-label="time range">
                {RANGES
                    .iter()
                    .map(|(key, label, ..)| {
                        let key = *key;
                        let set_query = set_query.clone();
                        view! {
                            <button
                                type="button"
                                aria-pressed=move || (range.get().0 == key).to_string()
                                on:click=move |_| set_query(&[("range", key.to_owned())])
                            >
                                {*label}
                            </button>
                        }
                    })
                    .collect::<Vec<_>>()}
            </div>
        </div>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match figures.await {
                    Err(e) => view! { <ErrorView error=e /> }.into_any(),
                    Ok(o) => {
                        let t = o.tokens.clone();
                        let d = o.decisions.clone();
                        let a = o.open_anomalies.clone();
                        let e = o.edges.clone();
                        let denied_rate = if d.allowed + d.denied > 0 {
                            format!("{:.1} %", d.denied as f64 * 100.0 / (d.allowed + d.denied) as f64)
                        } else {
                            "–".to_owned()
                        };
                        view! {
                            <section aria-labelledby="tokens-h">
                                <h2 id="tokens-h">"Tokens"</h2>
                                <div class="stats">
                                    <Stat label="issued in range" value=fmt_count(t.issued_in_range) href="/events?kind=token.issued" />
                                    <Stat label="active now" value=fmt_count(t.active) href="/tokens?status=active" />
                                    <Stat label="revoked in range" value=fmt_count(t.revoked_in_range) href="/revocations" />
                                    <Stat label="expired in range" value=fmt_count(t.expired_in_range) href="/tokens?status=expired" />
                                </div>
                            </section>
                            <section aria-labelledby="decisions-h">
                                <h2 id="decisions-h">"Decisions at the edges"</h2>
                                <div class="stats">
                                    <Stat label="allowed" value=fmt_count(d.allowed) href="/edges" />
                                    <Stat label="denied" value=fmt_count(d.denied) href="/anomalies" tone={if d.denied > 0 { "warn" } else { "" }} />
                                    <Stat label="denied share" value=denied_rate href="/anomalies" />
                                </div>
                                <table class="compact">
                                    <caption>"Denied by reason"</caption>
                                    <thead><tr><th scope="col">"Reason"</th><th scope="col" class="num">"Requests"</th></tr></thead>
                                    <tbody>
                                        {if d.denied_by_reason.is_empty() {
                                            view! { <tr><td colspan="2" class="muted">"No refusals in this range."</td></tr> }.into_any()
                                        } else {
                                            d.denied_by_reason.iter().map(|r| view! {
                                                <tr><td><Badge text=r.reason.clone() /></td><td class="num">{fmt_count(r.count)}</td></tr>
                                            }).collect::<Vec<_>>().into_any()
                                        }}
                                    </tbody>
                                </table>
                            </section>
                            <section aria-labelledby="anomalies-h">
                                <h2 id="anomalies-h">"Open anomalies"</h2>
                                <div class="stats">
                                    <Stat label="high" value=fmt_count(a.high) href="/anomalies?state=open&severity=high" tone={if a.high > 0 { "bad" } else { "" }} />
                                    <Stat label="medium" value=fmt_count(a.medium) href="/anomalies?state=open&severity=medium" tone={if a.medium > 0 { "warn" } else { "" }} />
                                    <Stat label="low" value=fmt_count(a.low) href="/anomalies?state=open&severity=low" />
                                </div>
                            </section>
                            <section aria-labelledby="edges-h">
                                <h2 id="edges-h">"Edges"</h2>
                                <div class="stats">
                                    <Stat label="in sync" value=fmt_count(e.in_sync) href="/edges" />
                                    <Stat label="stale" value=fmt_count(e.stale) href="/edges" tone={if e.stale > 0 { "warn" } else { "" }} />
                                    <Stat label="silent" value=fmt_count(e.silent) href="/edges" tone={if e.silent > 0 { "bad" } else { "" }} />
                                </div>
                            </section>
                        }
                        .into_any()
                    }
                }
            })}
        </Transition>
        <section aria-labelledby="chart-h">
            <h2 id="chart-h">"Decisions over time"</h2>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match chart.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok((series, since, until, width)) => view! {
                            <DecisionChart points=series.points since until width />
                        }
                        .into_any(),
                    }
                })}
            </Transition>
        </section>
        <section aria-labelledby="edge-list-h">
            <h2 id="edge-list-h">"Edge sync"</h2>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match edges.await {
                        Err(e) => view! { <ErrorView error=e /> }.into_any(),
                        Ok(page) if page.items.is_empty() => view! {
                            <p class="empty">"No edge has polled the revocation feed yet. Point an Envoy with the filter at this admin API as its control plane."</p>
                        }.into_any(),
                        Ok(page) => view! {
                            <ul class="edge-chips">
                                {page.items.into_iter().take(12).map(|e| {
                                    let state = edge_state(&e);
                                    view! {
                                        <li>
                                            <a href="/edges">{e.name.clone()}</a>
                                            " " <Badge text=state.to_owned() />
                                            {e.last_poll.map(|t| view! { " polled " <RelTime at=t /> })}
                                        </li>
                                    }
                                }).collect::<Vec<_>>()}
                            </ul>
                        }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::fmt_count;

    #[test]
    fn counts_are_grouped_in_thousands() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(1234567), "1,234,567");
    }
}
