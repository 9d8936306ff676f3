//! EdgeWarden proxy-wasm filter (being built).
