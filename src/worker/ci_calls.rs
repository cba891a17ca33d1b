//! The metrics of every CI call the worker makes (`ci_calls`, `ci_call_duration`): [`timed`] wraps
//! one call.

use crate::ci::client::CiError;
use crate::telemetry::Metrics;
use std::future::Future;
use std::time::Instant;

/// Awaits `call` (CI operation `op`) and records its outcome and duration.
pub async fn timed<T>(
    metrics: &Metrics,
    op: &str,
    call: impl Future<Output = Result<T, CiError>>,
) -> Result<T, CiError> {
    let started = Instant::now();
    let outcome = call.await;
    record(metrics, op, &outcome, started.elapsed());
    outcome
}

fn record<T>(metrics: &Metrics, op: &str, outcome: &Result<T, CiError>, took: std::time::Duration) {
    let (label, status) = match outcome {
        Ok(_) => ("ok", Some(200)),
        Err(e @ CiError::Api { status, .. }) => (
            if e.is_transient() {
                "transient"
            } else {
                "permanent"
            },
            Some(*status),
        ),
        Err(e) if e.is_transient() => ("transient", None),
        Err(_) => ("permanent", None),
    };
    metrics.ci_call(op, label, status, took);
}
