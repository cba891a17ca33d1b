//! Storing outcomes on the broker: every result (progress events and finals alike) goes through
//! [`publish`]; a final result through [`publish_final`], which publishes it once per job.
//! [`stored`] turns a publish's outcome into the handler's verdict.

use crate::pulsar::consume::Disposition;
use crate::pulsar::{Outgoing, PulsarIoError};
use crate::result::JobResult;
use crate::worker::context::Context;
use crate::worker::io::{Broker, CiApi};

/// Publishes a result keyed by `request_id` (or the job id for jobs this worker did not submit) and
/// waits for the broker to store it.
pub async fn publish<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    result: &JobResult,
) -> Result<(), PulsarIoError> {
    let key = result
        .request_id
        .clone()
        .or_else(|| result.job_id.clone())
        .unwrap_or_default();
    let mut msg = Outgoing::new(result.to_json())
        .with_key(key)
        .with_property("state", result.state.as_str());
    if let Some(job_id) = &result.job_id {
        msg = msg.with_property("job_id", job_id.clone());
    }
    ctx.broker
        .publish(&ctx.settings.pulsar.result_topic, msg)
        .await?;
    ctx.metrics.result(result.state.as_str());
    if result.state.is_final() {
        if let Some(took) = job_duration(result) {
            ctx.metrics.job_duration.observe(took);
        }
    }
    Ok(())
}

/// Publishes a final result unless its job's final result is already out (a duplicate event, or a
/// deadline racing the completion event).
pub async fn publish_final<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    result: &JobResult,
) -> Disposition {
    let job_id = result.job_id.clone().unwrap_or_default();
    if !job_id.is_empty() && !ctx.finished_jobs.insert(&job_id) {
        tracing::info!(
            job_id,
            "final result already published; skipping the duplicate"
        );
        ctx.metrics.duplicates_suppressed.inc();
        return Disposition::Ack;
    }
    match publish(ctx, result).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            // Not out after all: the redelivery must not take it for a duplicate.
            ctx.finished_jobs.remove(&job_id);
            Disposition::Retry(format!("could not store the result: {e}"))
        }
    }
}

/// Ack only what is stored; a failed publish leaves the input for redelivery.
pub fn stored(outcome: Result<(), impl std::fmt::Display>) -> Disposition {
    match outcome {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "could not store the outcome; will be redelivered");
            Disposition::Retry(format!("could not store the outcome: {e}"))
        }
    }
}

/// Seconds from CI's creation time to the final state, when CI gave both.
fn job_duration(result: &JobResult) -> Option<f64> {
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    let (created, finished) = (parse(&result.created_at)?, parse(&result.finished_at)?);
    let ms = (finished - created).num_milliseconds();
    (ms >= 0).then(|| ms as f64 / 1000.0)
}
