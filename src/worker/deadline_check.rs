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
use crate::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(ctx: Arc<Context>, client: Client, stop: Shutdown) -> Result<(), WorkerError> {
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
        // Past job_timeout_max a cancelled job is the worker's own cancel, whose `timed_out` did not
        // get out (a restart between the cancel and the publish): finish what it started.
        if result.state == ResultState::Cancelled && age >= w.job_timeout_max {
            let result = timed_out(&deadline, age);
            tracing::warn!(request_id = %deadline.request_id, job_id = %deadline.job_id, age_s = age.as_secs(), "job timed out (cancelled at CI before)");
            return publish_final(ctx, &result).await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::deadline_record::first;
    use crate::worker::done_records::shard_key;
    use crate::worker::test_context::*;
    use crate::worker::test_doubles::*;
    use std::time::SystemTime;

    /// The deadline of job `j1`, submitted for request `r1`, `age` ago.
    fn deadline(age: Duration) -> Deadline {
        let mut submitted = JobResult::new(ResultState::Submitted);
        submitted.request_id = Some("r1".into());
        submitted.job_id = Some("j1".into());
        submitted.user_data = Some("mine".into());
        let mut d = first(BUCKET, REGION, &submitted);
        d.submitted_at_ms -= age.as_millis() as u64;
        d
    }

    fn due(ctx: &TestContext, d: &Deadline) -> Delivery {
        let mut delivery = delivery(
            &ctx.settings.pulsar.deadline_topic,
            serde_json::to_vec(d).unwrap(),
        );
        delivery.key = Some(shard_key(&d.job_id));
        delivery
            .properties
            .insert(props::RECORD.into(), "deadline".into());
        delivery
    }

    fn done_record(ctx: &TestContext, ids: &str) -> Delivery {
        let mut delivery = delivery(&ctx.settings.pulsar.deadline_topic, ids);
        delivery
            .properties
            .insert(props::RECORD.into(), "done".into());
        delivery
    }

    /// The deadlines scheduled, with when each is due.
    fn scheduled(ctx: &TestContext) -> Vec<(Deadline, SystemTime)> {
        ctx.broker
            .on(&ctx.settings.pulsar.deadline_topic)
            .iter()
            .map(|m| {
                assert_eq!(m.properties[props::RECORD], "deadline");
                assert_eq!(m.key, Some(shard_key("j1")));
                (
                    serde_json::from_slice(&m.payload).unwrap(),
                    m.deliver_at.expect("delayed"),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn job_whose_done_record_came_is_not_described() {
        let ctx = context(ScriptedCi::default());
        assert_eq!(
            handle(&ctx, &done_record(&ctx, "j0\nj1")).await,
            Disposition::Ack
        );
        let verdict = handle(&ctx, &due(&ctx, &deadline(Duration::from_secs(600)))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert!(ctx.ci.calls().is_empty(), "no GET /jobs");
        assert_eq!(ctx.broker.count(), 0, "no result, no new deadline");
        assert_eq!(ctx.metrics.deadline_checks.get(), 0);
    }

    #[tokio::test]
    async fn job_whose_final_this_process_published_is_not_described() {
        let ctx = context(ScriptedCi::default());
        ctx.finished_jobs.insert("j1");
        let verdict = handle(&ctx, &due(&ctx, &deadline(Duration::from_secs(600)))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert!(ctx.ci.calls().is_empty());
        assert_eq!(ctx.broker.count(), 0);
    }

    #[tokio::test]
    async fn job_finished_without_a_completion_event_gets_what_ci_says() {
        let ci = ScriptedCi::default()
            .describe_answers(Ok(jobs(&[("j1", "Failed", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let verdict = handle(&ctx, &due(&ctx, &deadline(Duration::from_secs(600)))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["describe"]);
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].state, ResultState::Failed);
        assert_eq!(results[0].request_id.as_deref(), Some("r1"));
        assert_eq!(results[0].job_id.as_deref(), Some("j1"));
        assert_eq!(results[0].user_data.as_deref(), Some("mine"));
        assert!(
            scheduled(&ctx).is_empty(),
            "a finished job needs no new deadline"
        );
        assert_eq!(ctx.metrics.callbacks_lost.get(), 1);
        assert_eq!(ctx.metrics.deadline_checks.get(), 1);
        // A completion event arriving after all is a duplicate.
        assert!(ctx.finished_jobs.contains("j1"));
    }

    #[tokio::test]
    async fn job_still_running_gets_a_new_deadline() {
        let ci = ScriptedCi::default()
            .describe_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let before = SystemTime::now();
        let verdict = handle(&ctx, &due(&ctx, &deadline(Duration::from_secs(600)))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["describe"]);
        assert!(results(&ctx).is_empty());
        let scheduled = scheduled(&ctx);
        assert_eq!(scheduled.len(), 1);
        let (next, at) = &scheduled[0];
        assert_eq!(next.checks, 1);
        assert_eq!(next.job_id, "j1");
        assert!(*at >= before + ctx.settings.worker.job_timeout);
    }

    #[tokio::test]
    async fn new_deadline_is_no_later_than_job_timeout_max() {
        let ci = ScriptedCi::default()
            .describe_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let age = ctx.settings.worker.job_timeout_max - Duration::from_secs(30);
        let verdict = handle(&ctx, &due(&ctx, &deadline(age))).await;
        assert_eq!(verdict, Disposition::Ack);
        let (_, at) = scheduled(&ctx)[0];
        assert!(at <= SystemTime::now() + Duration::from_secs(30));
    }

    /// The worker cancelled the job at job_timeout_max but stopped before its `timed_out` was
    /// stored; the redelivered deadline finds the job `Cancel` at CI and still ends it `timed_out`.
    #[tokio::test]
    async fn a_job_cancelled_past_job_timeout_max_ends_timed_out() {
        let ci = ScriptedCi::default()
            .describe_answers(Ok(jobs(&[("j1", "Cancel", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let age = ctx.settings.worker.job_timeout_max + Duration::from_secs(1);
        let verdict = handle(&ctx, &due(&ctx, &deadline(age))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["describe"], "not cancelled twice");
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].state, ResultState::TimedOut);
    }

    #[tokio::test]
    async fn job_past_job_timeout_max_is_cancelled_and_timed_out() {
        let ci = ScriptedCi::default()
            .describe_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let age = ctx.settings.worker.job_timeout_max + Duration::from_secs(1);
        let verdict = handle(&ctx, &due(&ctx, &deadline(age))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["describe", "cancel"]);
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].state, ResultState::TimedOut);
        assert_eq!(results[0].code, "TimedOut");
        assert_eq!(results[0].request_id.as_deref(), Some("r1"));
        assert!(scheduled(&ctx).is_empty());
    }

    #[tokio::test]
    async fn job_ci_does_not_know_is_checked_again_until_job_timeout_max() {
        let ci = ScriptedCi::default().describe_answers(Ok(jobs(&[], None)));
        let ctx = context(ci);
        let verdict = handle(&ctx, &due(&ctx, &deadline(Duration::from_secs(600)))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert!(results(&ctx).is_empty());
        assert_eq!(scheduled(&ctx).len(), 1);
    }

    #[tokio::test]
    async fn describe_failure_checks_again_soon() {
        let ci = ScriptedCi::default().describe_answers(Err(refusal(503, "ServiceUnavailable")));
        let ctx = context(ci);
        let mut d = deadline(Duration::from_secs(600));
        d.checks = 4;
        let verdict = handle(&ctx, &due(&ctx, &d)).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(
            ctx.ci.calls(),
            ["describe"],
            "no cancel on a transient failure"
        );
        assert!(results(&ctx).is_empty());
        let (next, at) = scheduled(&ctx)[0].clone();
        assert_eq!(next.checks, 5);
        // Backoff (capped at worker.retry_max_delay), at least a second: well before job_timeout.
        assert!(at <= SystemTime::now() + Duration::from_secs(2));
    }

    #[tokio::test]
    async fn unstored_new_deadline_is_redelivered() {
        let ci = ScriptedCi::default()
            .describe_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        ctx.broker.refuse(&ctx.settings.pulsar.deadline_topic);
        let verdict = handle(&ctx, &due(&ctx, &deadline(Duration::from_secs(600)))).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
    }

    #[tokio::test]
    async fn unreadable_deadline_is_dead_lettered() {
        let ctx = context(ScriptedCi::default());
        let d = delivery(&ctx.settings.pulsar.deadline_topic, "{}");
        assert_eq!(handle(&ctx, &d).await, Disposition::Ack);
        let dead = ctx.broker.on(&ctx.settings.pulsar.dead_letter_topic);
        assert_eq!(dead.len(), 1);
        assert_eq!(
            dead[0].properties[props::DLQ_REASON],
            "unreadable deadline record"
        );
        assert!(ctx.ci.calls().is_empty());
        assert_eq!(dead_letters(&ctx, "deadline"), 1);
    }
}
