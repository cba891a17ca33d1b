//! What the worker tells its operators: Prometheus metrics and the consume loops' health.
//! Depends on nothing else of the crate, so every layer may report into it.

mod health;
mod metrics;

pub use health::Health;
pub use metrics::{
    CiCallLabels, CmqCallLabels, FormatLabel, IngressLabels, Metrics, OpLabel, SourceLabel,
    StateLabel,
};
