//! Times and durations as people read them: relative ("3 min ago") with the absolute UTC time on hover.

use leptos::prelude::*;

/// Seconds since the Unix epoch, from the browser's clock.
pub fn now() -> i64 {
    (js_sys::Date::now() / 1000.0) as i64
}

/// `2026-12-03 14:05:09 UTC` for a Unix time.
pub fn absolute(unix: i64) -> String {
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(unix as f64 * 1000.0));
    let iso = String::from(date.to_iso_string());
    // 2026-12-03T14:05:09.000Z -> 2026-12-03 14:05:09 UTC
    format!("{} UTC", iso.get(..19).unwrap_or(&iso).replace('T', " "))
}

/// "42 s", "5 min", "3 h", "2 d": a duration rounded to its largest unit.
pub fn span(seconds: i64) -> String {
    let s = seconds.abs();
    if s < 90 {
        format!("{s} s")
    } else if s < 90 * 60 {
        format!("{} min", (s + 30) / 60)
    } else if s < 36 * 3600 {
        format!("{} h", (s + 1800) / 3600)
    } else {
        format!("{} d", (s + 43_200) / 86_400)
    }
}

/// "5 min ago" or "in 3 h" relative to `now`.
pub fn relative(unix: i64, now: i64) -> String {
    let delta = unix - now;
    if delta.abs() < 5 {
        "just now".to_owned()
    } else if delta < 0 {
        format!("{} ago", span(delta))
    } else {
        format!("in {}", span(delta))
    }
}

/// A relative time with the absolute time in a tooltip and a machine-readable `datetime`.
#[component]
pub fn RelTime(
    /// Unix seconds.
    at: i64,
) -> impl IntoView {
    let iso = String::from(
        js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(at as f64 * 1000.0)).to_iso_string(),
    );
    view! { <time datetime=iso title=absolute(at)>{relative(at, now())}</time> }
}
