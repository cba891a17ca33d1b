//! Lost callbacks: every submitted job gets a deadline, kept in Pulsar as a message on
//! `pulsar.deadline_topic` with delayed delivery at `submitted + worker.job_timeout`.
//!
//! Why Pulsar and not an embedded store: the state then survives restarts *and* replica changes with
//! no volume (the container's root filesystem stays read-only), any replica can handle any deadline,
//! and it lives exactly as long as the job's other messages. Delayed delivery needs a Shared
//! subscription, which the worker uses anyway.
//!
//! When a deadline comes due and the job's final result is not out yet (see [`super::finished`]), the
//! worker describes the job (`GET /jobs/<id>`): a final state is published as the result (the callback
//! was lost); a job still running gets a new deadline; past `worker.job_timeout_max` the worker cancels
//! it at CI (best effort, so it does no work nobody waits for) and publishes `timed_out`.

use super::{retry, Context, WorkerError};
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{props, Client, Outgoing, SubscribeOptions};
use crate::result::normalize::normalize_job;
use crate::result::{JobResult, ResultState};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// A pending job, as stored on the deadline topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deadline {
    pub request_id: String,
    pub job_id: String,
    /// Where the job lives (its CI host).
    pub bucket: String,
    pub region: String,
    /// The `submitted` event, the base of a `timed_out` result.
    pub submitted: JobResult,
    /// Unix milliseconds of the submission.
    pub submitted_at_ms: u64,
    /// Describes done so far.
    pub checks: u32,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Schedules `deadline` for `after` from now.
pub async fn schedule(
    ctx: &Context,
    deadline: &Deadline,
    after: Duration,
) -> Result<(), crate::pulsar::PulsarIoError> {
    let mut msg = Outgoing::new(serde_json::to_vec(deadline).expect("deadline serializes"))
        .with_key(super::done::shard_key(&deadline.job_id))
        .with_property(props::RECORD, "deadline");
    msg.deliver_at = Some(SystemTime::now() + after);
    ctx.publisher
        .publish(&ctx.settings.pulsar.deadline_topic, msg)
        .await
}

/// A new deadline for a job just submitted (`submitted` is its `submitted` event).
pub fn first(bucket: &str, region: &str, submitted: &JobResult) -> Deadline {
    Deadline {
        request_id: submitted.request_id.clone().unwrap_or_default(),
        job_id: submitted.job_id.clone().unwrap_or_default(),
        bucket: bucket.to_string(),
        region: region.to_string(),
        submitted: submitted.clone(),
        submitted_at_ms: now_ms(),
        checks: 0,
    }
}

pub async fn run(
    ctx: Arc<Context>,
    client: Client,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let p = &ctx.settings.pulsar;
    let subscribe = SubscribeOptions {
        topic: p.deadline_topic.clone(),
        subscription: p.request_subscription.clone(),
        name_prefix: "ci-worker-deadline".into(),
        receiver_queue_size: 100,
        dead_letter: None,
        from_earliest: true,
        // A job's `done` record and its deadline share a key (its shard, see `done`), so they reach
        // the same consumer, which then skips the check.
        key_shared: true,
    };
    super::serve(
        &ctx,
        client,
        stop,
        "deadline",
        "deadline",
        subscribe,
        16,
        |ctx, d| async move { handle(&ctx, &d).await },
    )
    .await
}

pub async fn handle(ctx: &Context, delivery: &Delivery) -> Disposition {
    if delivery.properties.get(props::RECORD).map(String::as_str) == Some("done") {
        for job_id in super::done::ids_of(&delivery.payload) {
            ctx.finished.insert(job_id);
        }
        return Disposition::Ack;
    }
    let Ok(deadline) = serde_json::from_slice::<Deadline>(&delivery.payload) else {
        // Not ours to interpret: keep it for a human.
        return match super::dead_letter::publish(
            ctx,
            delivery,
            "deadline",
            "unreadable deadline record",
        )
        .await
        {
            Ok(()) => Disposition::Ack,
            Err(e) => Disposition::Retry(e.to_string()),
        };
    };
    if ctx.finished.contains(&deadline.job_id) {
        return Disposition::Ack;
    }
    ctx.metrics.deadline_checks.inc();
    let w = &ctx.settings.worker;
    let started = std::time::Instant::now();
    let described = ctx
        .ci
        .describe(
            &deadline.bucket,
            &deadline.region,
            &[deadline.job_id.as_str()],
        )
        .await;
    super::submission::record_call(ctx, "describe", &described, started.elapsed());
    let age = Duration::from_millis(now_ms().saturating_sub(deadline.submitted_at_ms));
    let detail = match described {
        Ok(r) => r
            .jobs
            .into_iter()
            .find(|j| j.job_id() == Some(&deadline.job_id)),
        Err(e) if e.is_transient() => {
            tracing::warn!(request_id = %deadline.request_id, job_id = %deadline.job_id, error = %e, "cannot describe the job; checking later");
            let delay = retry::backoff(deadline.checks, w.retry_base_delay, w.retry_max_delay)
                .max(Duration::from_secs(1));
            return reschedule(ctx, &deadline, delay).await;
        }
        Err(e) => {
            tracing::warn!(request_id = %deadline.request_id, job_id = %deadline.job_id, error = %e, "CI refuses to describe the job");
            None
        }
    };
    if let Some(detail) = &detail {
        let mut result = normalize_job(detail.tree());
        if result.state.is_final() {
            result.request_id = Some(deadline.request_id.clone());
            result.user_data = deadline.submitted.user_data.clone();
            tracing::info!(request_id = %deadline.request_id, job_id = %deadline.job_id, state = result.state.as_str(), "job finished without a completion event; publishing what CI says");
            ctx.metrics.callbacks_lost.inc();
            return publish_final(ctx, &result).await;
        }
    }
    if age >= w.job_timeout_max {
        let cancel = ctx
            .ci
            .cancel(&deadline.bucket, &deadline.region, &deadline.job_id)
            .await;
        if let Err(e) = &cancel {
            tracing::warn!(request_id = %deadline.request_id, job_id = %deadline.job_id, error = %e, "could not cancel the timed-out job at CI");
        }
        let result = timed_out(&deadline, age);
        tracing::warn!(request_id = %deadline.request_id, job_id = %deadline.job_id, age_s = age.as_secs(), "job timed out");
        return publish_final(ctx, &result).await;
    }
    let remaining = w.job_timeout_max - age;
    reschedule(ctx, &deadline, w.job_timeout.min(remaining)).await
}

async fn reschedule(ctx: &Context, deadline: &Deadline, after: Duration) -> Disposition {
    let next = Deadline {
        checks: deadline.checks + 1,
        ..deadline.clone()
    };
    match schedule(ctx, &next, after).await {
        Ok(()) => Disposition::Ack,
        Err(e) => Disposition::Retry(format!("could not reschedule the deadline: {e}")),
    }
}

/// Publishes a final result unless this process already did for the job.
pub async fn publish_final(ctx: &Context, result: &JobResult) -> Disposition {
    let job_id = result.job_id.clone().unwrap_or_default();
    if !job_id.is_empty() && !ctx.finished.insert(&job_id) {
        tracing::info!(
            job_id,
            "final result already published; skipping the duplicate"
        );
        ctx.metrics.duplicates_suppressed.inc();
        return Disposition::Ack;
    }
    match ctx.publish_result(result).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            ctx.finished.remove(&job_id);
            Disposition::Retry(format!("could not store the result: {e}"))
        }
    }
}

fn timed_out(deadline: &Deadline, age: Duration) -> JobResult {
    let mut r = deadline.submitted.clone();
    r.state = ResultState::TimedOut;
    r.code = "TimedOut".into();
    r.message = format!(
        "no final state from CI after {}s (worker.job_timeout_max); the job was cancelled at CI",
        age.as_secs()
    );
    r.started_at = None;
    r.finished_at = None;
    r
}
