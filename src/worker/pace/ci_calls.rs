//! Every CI call the worker makes goes through [`timed`]: it waits for the process's pace (one
//! token bucket for all CI calls, see [`super::rate::Pace`]), then makes the call and records
//! its outcome and duration (`ci_calls`, `ci_call_duration`) and tells the pace how CI answered.

use super::rate::Pace;
use crate::ci::client::CiError;
use crate::config::Settings;
use crate::telemetry::Metrics;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// What every CI call of a process shares: its metrics and its pace.
pub struct CiCalls {
    pub metrics: Arc<Metrics>,
    pub pace: Pace,
}

impl CiCalls {
    /// The pace of `ci.max_requests_per_second`, adapting to CI's 429s with `ci.adaptive_rate`.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> CiCalls {
        let ceiling = Some(settings.ci.max_requests_per_second).filter(|r| *r > 0.0);
        CiCalls {
            pace: Pace::new(ceiling, settings.ci.adaptive_rate, metrics.clone()),
            metrics,
        }
    }

    /// No pace at all, never adapting (tests of code that makes CI calls outside a worker).
    #[cfg(test)]
    pub fn unpaced(metrics: Arc<Metrics>) -> CiCalls {
        CiCalls {
            pace: Pace::new(None, false, metrics.clone()),
            metrics,
        }
    }
}

/// Waits for the pace, then awaits `call` (CI operation `op`) and records its outcome and duration
/// (from when it went out: the wait for the pace is not CI's latency).
pub async fn timed<T>(
    calls: &CiCalls,
    op: &str,
    call: impl Future<Output = Result<T, CiError>>,
) -> Result<T, CiError> {
    let token = calls.pace.acquire().await;
    let started = Instant::now();
    let outcome = call.await;
    record(&calls.metrics, op, &outcome, started.elapsed());
    let rate_limited = matches!(&outcome, Err(e) if e.is_rate_limited());
    calls.pace.observe(token, outcome.is_ok(), rate_limited);
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
