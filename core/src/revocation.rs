//! revocation (being built).
