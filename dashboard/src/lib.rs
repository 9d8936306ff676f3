//! EdgeWarden's web console, a Leptos client-side app compiled to `wasm32-unknown-unknown`.
//! The admin API serves it at `/`; `static/boot.js` loads the generated glue, which calls [`start`].
//! Routes are declared once in `app.rs`, one page per file under `pages/`, shared components under
//! `components/`, and `api.rs` is the only module that speaks HTTP.

pub mod api;
pub mod app;
pub mod components;
pub mod pages;

use wasm_bindgen::prelude::wasm_bindgen;

/// Entry point the generated glue runs once the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}
