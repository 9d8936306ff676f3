//! The decisions chart: SVG written in `view!` (no JavaScript library, nothing the CSP has to allow),
//! stacked bars per time bucket, allowed at the bottom and refusals above split by reason.

use std::collections::BTreeMap;

use edgewarden_api_types::Point;
use leptos::prelude::*;

use crate::components::time::absolute;

/// Reasons that mean the request went through.
pub fn is_allowed(reason: &str) -> bool {
    matches!(reason, "allowed" | "anonymous")
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 200.0;
const PAD_LEFT: f64 = 48.0;
const PAD_BOTTOM: f64 = 22.0;

/// Decisions over time, allowed vs denied by reason.
#[component]
pub fn DecisionChart(
    /// Buckets with decisions (empty buckets may be missing).
    points: Vec<Point>,
    /// Range start (Unix seconds).
    since: i64,
    /// Range end (Unix seconds).
    until: i64,
    /// Bucket width in seconds.
    width: i64,
) -> impl IntoView {
    let buckets = ((until - since) / width).max(1);
    let mut reasons: BTreeMap<String, i64> = BTreeMap::new();
    for p in &points {
        for (r, n) in &p.by_reason {
            if !is_allowed(r) {
                *reasons.entry(r.clone()).or_default() += n;
            }
        }
    }
    // Largest refusal reasons first, so the legend reads in order of weight.
    let mut order: Vec<(String, i64)> = reasons.into_iter().collect();
    order.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let order: Vec<String> = order.into_iter().map(|(r, _)| r).collect();
    let max = points.iter().map(|p| p.total).max().unwrap_or(0).max(1);
    let bar_w = ((WIDTH - PAD_LEFT) / buckets as f64).max(1.0);
    let scale = (HEIGHT - PAD_BOTTOM) / max as f64;
    let total_allowed: i64 = points
        .iter()
        .flat_map(|p| p.by_reason.iter())
        .filter(|(r, _)| is_allowed(r))
        .map(|(_, n)| n)
        .sum();
    let total: i64 = points.iter().map(|p| p.total).sum();
    let summary = format!(
        "decisions from {} to {}: {total} in all, {total_allowed} allowed, {} denied",
        absolute(since),
        absolute(until),
        total - total_allowed
    );
    let bars = points
        .iter()
        .filter(|p| p.t >= since - width && p.t < until)
        .map(|p| {
            let x = PAD_LEFT + ((p.t - since).max(0) / width) as f64 * bar_w;
            let mut y = HEIGHT - PAD_BOTTOM;
            let allowed: i64 = p
                .by_reason
                .iter()
                .filter(|(r, _)| is_allowed(r))
                .map(|(_, n)| n)
                .sum();
            let mut rects = Vec::new();
            let mut segments = vec![("allowed".to_owned(), allowed, "series-allowed".to_owned())];
            for (i, r) in order.iter().enumerate() {
                let n = p.by_reason.get(r).copied().unwrap_or(0);
                segments.push((r.clone(), n, format!("series-{}", i.min(7))));
            }
            for (label, n, class) in segments {
                if n == 0 {
                    continue;
                }
                let h = n as f64 * scale;
                y -= h;
                rects.push(view! {
                    <rect
                        class=class
                        x=format!("{x:.1}")
                        y=format!("{y:.1}")
                        width=format!("{:.1}", (bar_w - 1.0).max(1.0))
                        height=format!("{h:.1}")
                    >
                        <title>{format!("{}: {n} {label}", absolute(p.t))}</title>
                    </rect>
                });
            }
            rects
        })
        .collect::<Vec<_>>();
    let legend = std::iter::once(("allowed".to_owned(), "series-allowed".to_owned()))
        .chain(
            order
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("denied: {r}"), format!("series-{}", i.min(7)))),
        )
        .map(|(label, class)| {
            view! {
                <li>
                    <span class=format!("swatch {class}") aria-hidden="true"></span>
                    {label}
                </li>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <figure class="chart">
            <svg
                viewBox=format!("0 0 {WIDTH} {HEIGHT}")
                role="img"
                aria-label=summary.clone()
                preserveAspectRatio="none"
            >
                <line class="axis" x1=PAD_LEFT y1=HEIGHT - PAD_BOTTOM x2=WIDTH y2=HEIGHT - PAD_BOTTOM></line>
                <text class="tick" x="2" y="12">{max.to_string()}</text>
                <text class="tick" x="2" y=HEIGHT - PAD_BOTTOM>"0"</text>
                <text class="tick" x=PAD_LEFT y=HEIGHT - 4.0>{absolute(since)}</text>
                <text class="tick end" x=WIDTH y=HEIGHT - 4.0>{absolute(until)}</text>
                {bars}
            </svg>
            <figcaption>
                <ul class="legend">{legend}</ul>
            </figcaption>
        </figure>
    }
}
