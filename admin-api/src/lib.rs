//! EdgeWarden admin API (being built).
