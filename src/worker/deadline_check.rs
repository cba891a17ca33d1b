//! The deadline path, for lost callbacks: every submitted job gets a deadline
//! ([`super::deadline_record`]), kept in Pulsar as a message on `pulsar.deadline_topic` with delayed
//! delivery at `submitted + worker.job_timeout`; this handler takes them as they come due.
//!
//! Why Pulsar and not an embedded store: the state then survives restarts *and* replica changes with
//! no volume (the container's root filesystem stays read-only), any replica can handle any deadline,
//! and it lives exactly as long as the job's other messages. Delayed delivery needs a Shared
//! subscription, which the worker uses anyway.
//!
//! When a deadline comes due and the job's final result is not out yet (see [`super::duplicates`]), the
//! worker describes the job (`GET /jobs/<id>`): a final state is published as the result (the callback
//! was lost); a job still running gets a new deadline; past `worker.job_timeout_max` the worker cancels
//! it at CI (best effort, so it does no work nobody waits for) and publishes `timed_out`.

use super::context::{Context, WorkerError};
use super::deadline_record::{now_ms, schedule, Deadline};
use super::io::{Broker, CiApi};
use super::results::publish_final;
use super::serve::serve;
use super::{ci_calls, dead_letter, done_records, retry};
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{props, Client, SubscribeOptions};
use crate::result::normalize::normalize_job;
use crate::result::{JobResult, ResultState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
        // A job's `done` record and its deadline share a key (its shard, see [`done_records`]), so they reach
        // the same consumer, which then skips the check.
        key_shared: true,
    };
    serve(
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

pub async fn handle<B: Broker, C: CiApi>(ctx: &Context<B, C>, delivery: &Delivery) -> Disposition {
    if delivery.properties.get(props::RECORD).map(String::as_str) == Some("done") {
        for job_id in done_records::ids_of(&delivery.payload) {
            ctx.finished_jobs.insert(job_id);
        }
        return Disposition::Ack;
    }
    let Ok(deadline) = serde_json::from_slice::<Deadline>(&delivery.payload) else {
        // Not ours to interpret: keep it for a human.
        return match dead_letter::publish(ctx, delivery, "deadline", "unreadable deadline record")
            .await
        {
            Ok(()) => Disposition::Ack,
            Err(e) => Disposition::Retry(e.to_string()),
        };
    };
    if ctx.finished_jobs.contains(&deadline.job_id) {
        return Disposition::Ack;
    }
    ctx.metrics.deadline_checks.inc();
    let w = &ctx.settings.worker;
    let described = ci_calls::timed(
        &ctx.metrics,
        "describe",
        ctx.ci.describe(
            &deadline.bucket,
            &deadline.region,
            &[deadline.job_id.as_str()],
        ),
    )
    .await;
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

async fn reschedule<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    deadline: &Deadline,
    after: Duration,
) -> Disposition {
    let next = Deadline {
        checks: deadline.checks + 1,
        ..deadline.clone()
    };
    match schedule(ctx, &next, after).await {
        Ok(()) => Disposition::Ack,
        Err(e) => Disposition::Retry(format!("could not reschedule the deadline: {e}")),
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
