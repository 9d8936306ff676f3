//! challenge (being built).
