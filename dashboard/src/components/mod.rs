//! Shared components: they take typed props and hold no fetch logic (that is `api.rs` and the pages).

pub mod chart;
pub mod common;
pub mod live;
pub mod time;

pub use chart::DecisionChart;
pub use common::{Badge, Confirm, ErrorView, Loading, Pager, SecretOnce, Stat};
pub use time::RelTime;
