//! jwks (being built).
