//! decision (being built).
