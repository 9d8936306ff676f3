//! The live connection: one `EventSource` on `/api/v1/events/stream` per session, feeding the
//! recent events and a throttled "something changed" tick that pages watch to refetch without a reload.
//! The browser reconnects by itself and sends `Last-Event-ID`, so nothing is missed across a drop.

use edgewarden_api_types::{StoredEvent, EVENT_KINDS};
use leptos::prelude::*;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

use crate::app::Ctx;

/// How many recent events the live tail keeps in memory.
pub const KEEP: usize = 500;
/// Pages refetch at most this often when events arrive.
const TICK_MS: f64 = 1500.0;
/// Usage reports raise no event, so figures that come from them refresh on this period as well.
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// The open stream and the callbacks it holds; dropping it closes the stream.
pub struct Live {
    source: web_sys::EventSource,
    _on_event: Closure<dyn FnMut(web_sys::MessageEvent)>,
    _on_open: Closure<dyn FnMut(web_sys::Event)>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
    refresh: Option<leptos::leptos_dom::helpers::IntervalHandle>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.source.close();
        if let Some(refresh) = self.refresh.take() {
            refresh.clear();
        }
    }
}

/// Opens the stream and wires it into `ctx`.
pub fn connect(ctx: Ctx) -> Option<Live> {
    let source = web_sys::EventSource::new("/api/v1/events/stream").ok()?;
    let last_tick = std::rc::Rc::new(std::cell::Cell::new(0.0f64));
    let pending = std::rc::Rc::new(std::cell::Cell::new(false));
    let on_event =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
            let Some(data) = e.data().as_string() else {
                return;
            };
            if let Ok(event) = serde_json::from_str::<StoredEvent>(&data) {
                ctx.events.update(|list| {
                    list.insert(0, event);
                    list.truncate(KEEP);
                });
                ctx.received.update(|n| *n += 1);
            }
            // Throttle the refetch tick: at most one per TICK_MS, and never lose the last one.
            let now = js_sys::Date::now();
            if now - last_tick.get() >= TICK_MS {
                last_tick.set(now);
                ctx.tick.update(|n| *n += 1);
            } else if !pending.get() {
                pending.set(true);
                let pending = pending.clone();
                let last_tick = last_tick.clone();
                set_timeout(
                    move || {
                        pending.set(false);
                        last_tick.set(js_sys::Date::now());
                        ctx.tick.update(|n| *n += 1);
                    },
                    std::time::Duration::from_millis(TICK_MS as u64),
                );
            }
        });
    for kind in EVENT_KINDS.iter().chain(["lagged"].iter()) {
        let _ = source.add_event_listener_with_callback(kind, on_event.as_ref().unchecked_ref());
    }
    let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| ctx.connected.set(true));
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| ctx.connected.set(false));
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let refresh =
        set_interval_with_handle(move || ctx.tick.update(|n| *n += 1), REFRESH_EVERY).ok();
    Some(Live {
        refresh,
        source,
        _on_event: on_event,
        _on_open: on_open,
        _on_error: on_error,
    })
}
