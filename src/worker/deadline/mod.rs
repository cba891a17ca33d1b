//! The deadline path, for lost callbacks: every request gets a deadline record ([`schedule`]) on
//! `pulsar.deadline_topic`, published before its `POST /jobs` and delayed until
//! `submitted + worker.job_timeout`; whoever finishes the job cancels it (acknowledges it by the id
//! the job's marker names), so only the deadlines of jobs whose final result did not come are
//! delivered. This handler takes them as they come due.
//!
//! Why Pulsar and not an embedded store: the state then survives restarts *and* replica changes with
//! no volume (the container's root filesystem stays read-only), any replica can handle any deadline,
//! and it lives exactly as long as the job's other messages. The subscription is Shared: TDMQ for
//! Pulsar delays messages on no other kind. Its loop also carries out the cancels
//! ([`crate::worker::Context::cancel_deadline`]).
//!
//! A record published before its job existed does not know the job's id: the job is found in CI's
//! list by its marker ([`crate::worker::submit::recovery`]), and counts only if its marker names this
//! very record (a request tried again, or taken over, publishes another; a refused one made none).
//! For each due job whose final result is not out here ([`crate::worker::finished`]) the worker
//! describes it (`GET /jobs/<id>,…`, up to [`DESCRIBE_BATCH`] ids per call): a final state is
//! published as the result (the callback was lost); a job still running gets a new deadline; past
//! `worker.job_timeout_max` the worker cancels it at CI (best effort, so it does no work nobody
//! waits for) and publishes `timed_out`. [`decide`] is that choice, apart from I/O.
//!
//! - this file: the handler (and its consume loop): read a record, find, describe, settle each job;
//! - [`decide`]: the choice for one due job, pure;
//! - [`schedule`]: deadline records written (one per request, delayed, the 10-day cap).

pub mod decide;
pub mod schedule;

use self::decide::{decide, next, timed_out, Decision};
use self::schedule::{schedule_all, DUE_TOLERANCE};
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{Client, SubscribeOptions, SubscriptionKind};
use crate::request::marker::{self, DeadlineRef};
use crate::shutdown::Shutdown;
use crate::worker::context::{Context, WorkerError};
use crate::worker::io::{Broker, CiApi};
use crate::worker::pace::{ci_calls, retry};
use crate::worker::record::{self, now_ms, Deadline, Record};
use crate::worker::results::publish_final;
use crate::worker::settle::dead_letter;
use crate::worker::settle::serve::serve;
use crate::worker::submit::recovery::JobAt;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Job ids per describe call (CI's page states no limit; ten keeps a URL and an answer small).
pub const DESCRIBE_BATCH: usize = 10;
/// Describe calls of one record at once.
const DESCRIBES_AT_ONCE: usize = 4;

pub async fn run(ctx: Arc<Context>, client: Client, stop: Shutdown) -> Result<(), WorkerError> {
    let p = &ctx.settings.pulsar;
    let subscribe = SubscribeOptions {
        topic: p.deadline_topic.clone(),
        subscription: p.request_subscription.clone(),
        name_prefix: "ci-worker-deadline".into(),
        receiver_queue_size: 100,
        dead_letter: None,
        from_earliest: true,
        kind: SubscriptionKind::Shared,
    };
    let cancels = ctx.take_deadline_cancels();
    serve(
        &ctx,
        client,
        stop,
        "deadline",
        "deadline",
        subscribe,
        16,
        cancels,
        |ctx, d| async move { handle(&ctx, &d).await },
    )
    .await
}

pub async fn handle<B: Broker, C: CiApi>(ctx: &Context<B, C>, delivery: &Delivery) -> Disposition {
    let deadlines = match record::read(&delivery.payload) {
        Ok(Record::Deadlines(deadlines)) => Ok(deadlines),
        Err(e) => Err(format!("unreadable deadline record: {e}")),
    };
    let deadlines = match deadlines {
        Ok(deadlines) => deadlines,
        // Not ours to interpret: keep it for a human.
        Err(reason) => {
            return match dead_letter::publish(ctx, delivery, "deadline", &reason).await {
                Ok(()) => Disposition::Ack,
                Err(e) => Disposition::Retry(e.to_string()),
            }
        }
    };
    let now = now_ms();
    let early = now + DUE_TOLERANCE.as_millis() as u64;
    let mut again = Vec::new();
    let here = DeadlineRef {
        partition: -1,
        ledger: delivery.position.ledger,
        entry: delivery.position.entry,
    };
    let (pending, mut known): (Vec<Deadline>, Vec<Deadline>) =
        deadlines.into_iter().partition(|d| d.job_id.is_empty());
    let found: Vec<Result<Option<Deadline>, Deadline>> = futures::stream::iter(pending)
        .map(|d| find_job(ctx, d, here, early))
        .buffer_unordered(DESCRIBES_AT_ONCE)
        .collect()
        .await;
    for outcome in found {
        match outcome {
            Ok(Some(d)) => known.push(d),
            Ok(None) => {}
            Err(later) => again.push(later),
        }
    }
    let mut due: BTreeMap<(String, String), Vec<Deadline>> = BTreeMap::new();
    for d in known {
        if ctx.finished_jobs.contains(&d.job_id) {
            continue;
        }
        if d.due_at_ms > early {
            // Delivered before it is due: its wait was longer than one delay may be.
            again.push(d);
        } else {
            due.entry((d.bucket.clone(), d.region.clone()))
                .or_default()
                .push(d);
        }
    }
    let chunks: Vec<Vec<Deadline>> = due
        .into_values()
        .flat_map(|ds| {
            ds.chunks(DESCRIBE_BATCH)
                .map(<[Deadline]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let outcomes: Vec<Result<Vec<Deadline>, String>> = futures::stream::iter(chunks)
        .map(|chunk| check(ctx, chunk))
        .buffer_unordered(DESCRIBES_AT_ONCE)
        .collect()
        .await;
    for outcome in outcomes {
        match outcome {
            Ok(rearm) => again.extend(rearm),
            // Finals not stored: the whole record is redelivered; the finals that were stored are
            // then skipped as finished.
            Err(reason) => return Disposition::Retry(reason),
        }
    }
    if again.is_empty() {
        return Disposition::Ack;
    }
    match schedule_all(&ctx.broker, &ctx.settings.pulsar.deadline_topic, again).await {
        Ok(()) => Disposition::Ack,
        Err(e) => Disposition::Retry(format!("could not reschedule deadlines: {e}")),
    }
}

/// The job of a deadline published before it existed, found by its marker: `Ok(Some)` the deadline
/// with its job, `Ok(None)` when no job names this record (nothing to check), `Err` the deadline to
/// look again later (early, or CI could not be listed). `here` is where this record is.
async fn find_job<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    mut d: Deadline,
    here: DeadlineRef,
    early: u64,
) -> Result<Option<Deadline>, Deadline> {
    let record = d
        .first_record
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(here);
    let Some(lookup) = d.lookup.clone() else {
        tracing::warn!(request_id = %d.request_id, "a deadline without a job id nor a way to find it; dropped");
        return Ok(None);
    };
    if d.due_at_ms > early {
        d.first_record = Some(record.to_string());
        return Err(d);
    }
    let job = JobAt {
        request_id: &d.request_id,
        bucket: &d.bucket,
        region: &d.region,
        lookup: &lookup,
    };
    let since = record::from_unix_ms(d.submitted_at_ms);
    match ctx
        .recovery
        .search(&ctx.ci, &ctx.ci_calls, &job, since)
        .await
    {
        Ok(Some(detail)) if marker::decode(detail.user_data()).deadline == Some(record) => {
            d.job_id = detail.job_id().unwrap_or_default().to_string();
            d.submitted.job_id = Some(d.job_id.clone());
            Ok(Some(d))
        }
        Ok(_) => {
            tracing::debug!(request_id = %d.request_id, %record, "no job names this deadline record; nothing to check");
            Ok(None)
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(request_id = %d.request_id, error = %e, "cannot look for the deadline's job; looking later");
            d.first_record = Some(record.to_string());
            let delay = retry::delay(&ctx.settings.worker, d.checks).max(Duration::from_secs(1));
            Err(next(&d, delay))
        }
        Err(e) => {
            tracing::warn!(request_id = %d.request_id, error = %e, "CI refuses to list the deadline's job; dropped");
            Ok(None)
        }
    }
}

/// Describes one bucket's jobs at once and settles each; returns the deadlines to arm again, or why
/// a final result could not be stored.
async fn check<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    chunk: Vec<Deadline>,
) -> Result<Vec<Deadline>, String> {
    let w = &ctx.settings.worker;
    let (bucket, region) = (chunk[0].bucket.clone(), chunk[0].region.clone());
    let ids: Vec<&str> = chunk.iter().map(|d| d.job_id.as_str()).collect();
    ctx.metrics.deadline_checks.inc_by(chunk.len() as u64);
    let described = ci_calls::timed(
        &ctx.ci_calls,
        "describe",
        ctx.ci.describe(&bucket, &region, &ids),
    )
    .await;
    let details = match described {
        Ok(r) => r.jobs,
        Err(e) if e.is_transient() => {
            tracing::warn!(jobs = chunk.len(), %bucket, error = %e, "cannot describe the jobs; checking later");
            return Ok(chunk
                .into_iter()
                .map(|d| {
                    let delay = retry::delay(w, d.checks).max(Duration::from_secs(1));
                    next(&d, delay)
                })
                .collect());
        }
        Err(e) => {
            tracing::warn!(jobs = chunk.len(), %bucket, error = %e, "CI refuses to describe the jobs");
            Vec::new()
        }
    };
    let mut rearm = Vec::new();
    for d in chunk {
        let detail = details.iter().find(|j| j.job_id() == Some(&d.job_id));
        let age = Duration::from_millis(now_ms().saturating_sub(d.submitted_at_ms));
        let verdict = match decide(&d, detail, age, w.job_timeout, w.job_timeout_max) {
            Decision::CheckAgain(after) => {
                rearm.push(next(&d, after));
                continue;
            }
            Decision::Final(result) => {
                tracing::info!(request_id = %d.request_id, job_id = %d.job_id, state = result.state.as_str(), "job finished without a completion event; publishing what CI says");
                ctx.metrics.callbacks_lost.inc();
                publish_final(ctx, &result).await
            }
            Decision::TimedOut { cancel } => {
                if cancel {
                    let cancel = ctx.ci.cancel(&d.bucket, &d.region, &d.job_id);
                    if let Err(e) = ci_calls::timed(&ctx.ci_calls, "cancel", cancel).await {
                        tracing::warn!(request_id = %d.request_id, job_id = %d.job_id, error = %e, "could not cancel the timed-out job at CI");
                    }
                }
                tracing::warn!(request_id = %d.request_id, job_id = %d.job_id, age_s = age.as_secs(), cancelled_before = !cancel, "job timed out");
                publish_final(ctx, &timed_out(&d, age)).await
            }
        };
        if let Disposition::Retry(reason) = verdict {
            return Err(reason);
        }
    }
    Ok(rearm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pulsar::props;
    use crate::result::{JobResult, ResultState};
    use crate::worker::deadline::schedule::first;
    use crate::worker::record::JobLookup;
    use crate::worker::test_context::*;
    use crate::worker::test_doubles::*;
    use std::time::SystemTime;

    /// The deadline of job `j1`, submitted for request `r1`, `age` ago.
    fn deadline(age: Duration) -> Deadline {
        let mut submitted = JobResult::new(ResultState::Submitted);
        submitted.request_id = Some("r1".into());
        submitted.job_id = Some("j1".into());
        submitted.user_data = Some("mine".into());
        let mut d = first(BUCKET, REGION, &submitted, Duration::ZERO);
        d.submitted_at_ms -= age.as_millis() as u64;
        d
    }

    /// A record of `deadlines`, delivered.
    fn record(ctx: &TestContext, deadlines: &[Deadline]) -> Delivery {
        let stored = record::message(&Record::Deadlines(deadlines.to_vec()));
        delivery(&ctx.settings.pulsar.deadline_topic, stored.payload)
    }

    fn due(ctx: &TestContext, d: &Deadline) -> Delivery {
        record(ctx, std::slice::from_ref(d))
    }

    /// The deadlines scheduled, with when their record is delivered.
    fn scheduled(ctx: &TestContext) -> Vec<(Deadline, SystemTime)> {
        ctx.broker
            .on(&ctx.settings.pulsar.deadline_topic)
            .iter()
            .flat_map(|m| {
                let at = m.deliver_at.expect("delayed");
                let Ok(Record::Deadlines(ds)) = record::read(&m.payload) else {
                    panic!("not a deadline record")
                };
                ds.into_iter().map(move |d| (d, at))
            })
            .collect()
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
        // Due times are whole milliseconds.
        assert!(*at + Duration::from_millis(1) >= before + ctx.settings.worker.job_timeout);
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
        assert!(
            dead[0].properties[props::DLQ_REASON].starts_with("unreadable deadline record: "),
            "{:?}",
            dead[0].properties
        );
        assert!(ctx.ci.calls().is_empty());
        assert_eq!(dead_letters(&ctx, "deadline"), 1);
    }

    /// The deadline of job `job`, submitted for request `r-<job>`, `age` ago.
    fn deadline_of(job: &str, age: Duration) -> Deadline {
        let mut d = deadline(age);
        d.job_id = job.into();
        d.request_id = format!("r-{job}");
        d.submitted.job_id = Some(job.into());
        d
    }

    #[tokio::test]
    async fn a_record_costs_one_describe_for_its_unfinished_jobs_and_settles_each() {
        let ci = ScriptedCi::default().describe_answers(Ok(jobs(
            &[
                ("j2", "Success", &sent_user_data("r-j2")),
                ("j3", "Running", &sent_user_data("r-j3")),
            ],
            None,
        )));
        let ctx = context(ci);
        ctx.finished_jobs.insert("j1");
        let age = Duration::from_secs(600);
        let ds = [
            deadline_of("j1", age),
            deadline_of("j2", age),
            deadline_of("j3", age),
        ];
        assert_eq!(handle(&ctx, &record(&ctx, &ds)).await, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["describe"], "one call for j2 and j3");
        assert_eq!(ctx.metrics.deadline_checks.get(), 2);
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].job_id.as_deref(), Some("j2"));
        assert_eq!(results[0].request_id.as_deref(), Some("r-j2"));
        let again = scheduled(&ctx);
        assert_eq!(again.len(), 1, "only the running job is armed again");
        assert_eq!(again[0].0.job_id, "j3");
        assert_eq!(again[0].0.checks, 1);
        assert!(
            ctx.finished_jobs.contains("j2"),
            "a late event is a duplicate"
        );
    }

    #[tokio::test]
    async fn a_record_of_finished_jobs_costs_nothing() {
        let ctx = context(ScriptedCi::default());
        let ids: Vec<String> = (0..25).map(|i| format!("j{i}")).collect();
        let ds: Vec<Deadline> = ids
            .iter()
            .map(|job| deadline_of(job, Duration::from_secs(600)))
            .collect();
        for id in &ids {
            ctx.finished_jobs.insert(id);
        }
        assert_eq!(handle(&ctx, &record(&ctx, &ds)).await, Disposition::Ack);
        assert!(ctx.ci.calls().is_empty());
        assert_eq!(ctx.broker.count(), 0, "no result, no new deadline");
    }

    #[tokio::test]
    async fn many_due_jobs_are_described_ten_at_a_time() {
        let mut ci = ScriptedCi::default();
        for _ in 0..3 {
            ci = ci.describe_answers(Ok(jobs(&[], None)));
        }
        let ctx = context(ci);
        let ds: Vec<Deadline> = (0..25)
            .map(|i| deadline_of(&format!("j{i}"), Duration::from_secs(600)))
            .collect();
        assert_eq!(handle(&ctx, &record(&ctx, &ds)).await, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["describe", "describe", "describe"]);
        let again = scheduled(&ctx);
        assert_eq!(
            again.len(),
            25,
            "CI knows none of them yet: all checked again"
        );
        assert_eq!(
            ctx.broker.on(&ctx.settings.pulsar.deadline_topic).len(),
            1,
            "in one record"
        );
    }

    #[tokio::test]
    async fn a_deadline_delivered_before_it_is_due_is_armed_again_without_asking_ci() {
        let ctx = context(ScriptedCi::default());
        let mut d = deadline(Duration::from_secs(60));
        // Due in 20 days: a record may be delayed 10 at most.
        d.due_at_ms = now_ms() + 20 * 86_400_000;
        assert_eq!(handle(&ctx, &due(&ctx, &d)).await, Disposition::Ack);
        assert!(ctx.ci.calls().is_empty());
        let again = scheduled(&ctx);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.due_at_ms, d.due_at_ms, "still due when it was");
        assert_eq!(again[0].0.checks, d.checks, "not a check");
        let delay = again[0].1.duration_since(SystemTime::now()).unwrap();
        assert!(delay <= schedule::MAX_DELAY, "{delay:?}");
        assert!(delay > schedule::MAX_DELAY - Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_record_of_0_4_is_still_handled() {
        let ci = ScriptedCi::default()
            .describe_answers(Ok(jobs(&[("j1", "Failed", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let old =
            serde_json::json!({"version": 2, "deadlines": [deadline(Duration::from_secs(600))]});
        let mut d = delivery(
            &ctx.settings.pulsar.deadline_topic,
            serde_json::to_vec(&old).unwrap(),
        );
        d.properties
            .insert("ci-worker-record".into(), "deadlines".into());
        assert_eq!(handle(&ctx, &d).await, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["describe"]);
        assert_eq!(results(&ctx)[0].state, ResultState::Failed);
    }

    #[tokio::test]
    async fn a_record_of_another_kind_is_dead_lettered() {
        let ctx = context(ScriptedCi::default());
        let done = br#"{"version":3,"record":"done","body":["j1"]}"#.to_vec();
        let d = delivery(&ctx.settings.pulsar.deadline_topic, done);
        assert_eq!(handle(&ctx, &d).await, Disposition::Ack);
        let dead = ctx.broker.on(&ctx.settings.pulsar.dead_letter_topic);
        assert!(dead[0].properties[props::DLQ_REASON].starts_with("unreadable deadline record"));
    }

    /// The deadline of request `r1` as published before its job existed, delivered.
    fn pending_due(ctx: &TestContext) -> (Delivery, DeadlineRef) {
        let mut known = JobResult::new(ResultState::Submitted);
        known.request_id = Some("r1".into());
        known.user_data = Some("mine".into());
        let lookup = JobLookup {
            queue_id: None,
            tag: "DigitalWatermark".into(),
            input_object: Some("in/a.mp4".into()),
        };
        let d = schedule::pending(BUCKET, REGION, &known, lookup, Duration::ZERO);
        let delivered = due(ctx, &d);
        let here = DeadlineRef {
            partition: -1,
            ledger: delivered.position.ledger,
            entry: delivered.position.entry,
        };
        (delivered, here)
    }

    fn naming(request_id: &str, deadline: DeadlineRef) -> String {
        marker::encode(request_id, Some(deadline), Some("mine")).unwrap()
    }

    #[tokio::test]
    async fn a_deadline_published_before_its_job_finds_the_job_by_its_marker() {
        let ctx0 = context(ScriptedCi::default());
        let (delivered, here) = pending_due(&ctx0);
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(&[("j1", "Running", &naming("r1", here))], None)))
            .describe_answers(Ok(jobs(&[("j1", "Success", &naming("r1", here))], None)));
        let ctx = context(ci);
        assert_eq!(handle(&ctx, &delivered).await, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list", "describe"]);
        let queries = ctx.ci.list_queries.lock().unwrap();
        assert_eq!(queries[0].input_object.as_deref(), Some("in/a.mp4"));
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].state, ResultState::Succeeded);
        assert_eq!(results[0].job_id.as_deref(), Some("j1"));
        assert_eq!(results[0].user_data.as_deref(), Some("mine"));
        assert_eq!(ctx.metrics.callbacks_lost.get(), 1);
    }

    #[tokio::test]
    async fn a_deadline_no_job_names_is_dropped() {
        let ctx0 = context(ScriptedCi::default());
        let (delivered, here) = pending_due(&ctx0);
        let elsewhere = DeadlineRef {
            entry: here.entry + 1,
            ..here
        };
        // The request was tried again under another record (or refused: no job at all).
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(
                &[("j1", "Running", &naming("r1", elsewhere))],
                None,
            )))
            .list_answers(Ok(jobs(&[], None)));
        let ctx = context(ci);
        assert_eq!(handle(&ctx, &delivered).await, Disposition::Ack);
        let (again, _) = pending_due(&ctx0);
        assert_eq!(handle(&ctx, &again).await, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list", "list"], "nothing described");
        assert_eq!(ctx.broker.count(), 0, "no result, no new deadline");
    }

    #[tokio::test]
    async fn a_deadline_whose_job_cannot_be_looked_for_is_armed_again_naming_its_first_record() {
        let ctx0 = context(ScriptedCi::default());
        let (delivered, here) = pending_due(&ctx0);
        let ci = ScriptedCi::default().list_answers(Err(refusal(503, "ServiceUnavailable")));
        let ctx = context(ci);
        assert_eq!(handle(&ctx, &delivered).await, Disposition::Ack);
        let again = scheduled(&ctx);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.job_id, "");
        assert_eq!(again[0].0.first_record, Some(here.to_string()));
    }

    #[tokio::test]
    async fn a_final_not_stored_redelivers_the_record_and_the_stored_ones_are_then_skipped() {
        let ci = ScriptedCi::default().describe_answers(Ok(jobs(
            &[("j1", "Success", &sent_user_data("r-j1"))],
            None,
        )));
        let ctx = context(ci);
        ctx.broker.refuse(&ctx.settings.pulsar.result_topic);
        let ds = [deadline_of("j1", Duration::from_secs(600))];
        let verdict = handle(&ctx, &record(&ctx, &ds)).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
        assert!(
            !ctx.finished_jobs.contains("j1"),
            "not out, so not finished"
        );
        assert!(scheduled(&ctx).is_empty());
    }
}
