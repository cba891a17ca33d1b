//! The submission path: request → validate → CI `POST /jobs` (retried with backoff on transient
//! failures) → `submitted` event, or a `rejected` result, or a dead letter. The request is acknowledged
//! only once that outcome is stored on the broker.
//!
//! - this file: the handler (and its consume loop), the one place that orders the steps;
//! - [`outcome`]: what it publishes (`submitted`, `rejected`), pure;
//! - [`check`]: which check at CI a request needs before it is submitted, pure;
//! - [`recovery`]: those checks at CI (looking for a job an earlier attempt created), and the
//!   requests in doubt;
//! - [`takeover`]: which deliveries of a Failover subscription another replica may have been given
//!   first, from their positions, pure (the ownership design of `docs/design/replicas.md`).

pub mod check;
pub mod outcome;
pub mod recovery;
pub mod takeover;

use self::check::Check;
use self::outcome::{rejected, rejection_of, submitted};
use crate::ci::client::CiError;
use crate::ci::response::JobDetail;
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{Client, SubscribeOptions, SubscriptionKind};
use crate::request::{SubmitRequest, ValidRequest};
use crate::result::normalize::normalize_job;
use crate::result::JobResult;
use crate::shutdown::Shutdown;
use crate::worker::context::{Context, WorkerError};
use crate::worker::deadline::schedule;
use crate::worker::io::{Broker, CiApi};
use crate::worker::pace::{ci_calls, retry};
use crate::worker::results::{self, stored};
use crate::worker::settle::dead_letter;
use crate::worker::settle::serve::serve;
use backon::Retryable;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

pub async fn run(ctx: Arc<Context>, client: Client, stop: Shutdown) -> Result<(), WorkerError> {
    let p = &ctx.settings.pulsar;
    let subscribe = SubscribeOptions {
        topic: p.request_topic.clone(),
        subscription: p.request_subscription.clone(),
        name_prefix: "ci-worker-submit".into(),
        receiver_queue_size: ctx.settings.worker.max_in_flight.clamp(1, 1000) as u32,
        dead_letter: Some((
            ctx.settings.worker.max_redeliveries,
            p.dead_letter_topic.clone(),
        )),
        from_earliest: true,
        kind: SubscriptionKind::Shared,
    };
    serve(
        &ctx,
        client,
        stop,
        "submit",
        "request",
        subscribe,
        ctx.settings.worker.max_in_flight,
        |ctx, d| async move { handle(&ctx, &d).await },
    )
    .await
}

pub async fn handle<B: Broker, C: CiApi>(ctx: &Context<B, C>, delivery: &Delivery) -> Disposition {
    ctx.metrics.requests_consumed.inc();
    let request = match SubmitRequest::parse(&delivery.payload) {
        Ok(r) => r,
        Err(unreadable) => {
            return stored(dead_letter::publish(ctx, delivery, "request", &unreadable.0).await)
        }
    };
    let valid = match request.validate(&ctx.settings.ci) {
        Ok(v) => v,
        Err(rejection) => {
            tracing::info!(request_id = %request.request_id, code = %rejection.code, message = %rejection.message, "request rejected");
            ctx.metrics.requests_rejected.inc();
            let result = rejected(&request, &rejection);
            return stored(results::publish(ctx, &result).await);
        }
    };
    // Announce the attempt before anything else can create a job, and learn whether another
    // attempt (of any replica) came first.
    let claim = match ctx.attempts.claim(&valid.request_id).await {
        Ok(claim) => claim,
        Err(e) => {
            tracing::warn!(request_id = %valid.request_id, error = %e, "cannot record the attempt; releasing the request for redelivery");
            return Disposition::Retry(format!("cannot record the attempt: {e}"));
        }
    };
    let in_doubt = ctx.recovery.take_in_doubt(&valid.request_id);
    let found = match check::check_for(&claim, in_doubt, delivery.publish_time) {
        Check::None => Ok(None),
        Check::Marker(since) => {
            tracing::info!(request_id = %valid.request_id, "a job may exist for this request (an earlier attempt); looking for it at CI");
            with_backoff(ctx, &valid.request_id, || {
                ctx.recovery.search(&ctx.ci, &ctx.ci_calls, &valid, since)
            })
            .await
        }
        Check::RestartScan(not_before) => {
            with_backoff(ctx, &valid.request_id, || {
                ctx.recovery
                    .lookup(&ctx.ci, &ctx.ci_calls, &valid, not_before)
            })
            .await
        }
    };
    match found {
        Ok(Some(detail)) => return recovered(ctx, &valid, &detail).await,
        Ok(None) => {}
        Err(e) => {
            if let Some(since) = in_doubt {
                ctx.recovery.put_in_doubt(&valid.request_id, since);
            }
            tracing::warn!(request_id = %valid.request_id, error = %e, "cannot check for an earlier submission; releasing the request for redelivery");
            return Disposition::Retry(format!("cannot check for an earlier submission: {e}"));
        }
    }
    match submit_with_retry(ctx, &valid).await {
        Ok(detail) => {
            ctx.metrics.jobs_submitted.inc();
            let result = submitted(&valid, &detail);
            tracing::info!(request_id = %valid.request_id, job_id = result.job_id.as_deref().unwrap_or(""), "job submitted");
            announce(ctx, &valid, &result).await
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(request_id = %valid.request_id, error = %e, "CI still unavailable after retries; releasing the request for redelivery");
            Disposition::Retry(format!("CI unavailable after retries: {e}"))
        }
        Err(e) => {
            let rejection = rejection_of(&e);
            tracing::info!(request_id = %valid.request_id, code = %rejection.code, message = %rejection.message, "CI refused the job");
            ctx.metrics.requests_rejected.inc();
            let result = rejected(&request, &rejection);
            stored(results::publish(ctx, &result).await)
        }
    }
}

/// A job CI accepted: its `submitted` event and its deadline, both sent at once (waiting for one
/// receipt before sending the other would cost a broker round trip per request; sent together, the
/// event still usually precedes the final result). If either cannot be stored the request is
/// redelivered, marked in doubt so that the redelivery finds this job instead of submitting again.
async fn announce<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
    result: &JobResult,
) -> Disposition {
    let deadline = schedule::first(
        &req.bucket,
        &req.region,
        result,
        ctx.settings.worker.job_timeout,
    );
    let (announced, scheduled) = tokio::join!(
        results::publish(ctx, result),
        ctx.deadlines.schedule(deadline)
    );
    let outcome = match (announced, scheduled) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) => Err(e.to_string()),
        (_, Err(e)) => Err(e.to_string()),
    };
    if outcome.is_err() {
        ctx.recovery
            .put_in_doubt(&req.request_id, SystemTime::now());
    }
    stored(outcome)
}

/// A job an earlier attempt created: announce it (unless it already finished, in which case the
/// completion path owns its result) instead of submitting again.
async fn recovered<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
    detail: &JobDetail,
) -> Disposition {
    ctx.metrics.submissions_recovered.inc();
    let result = submitted(req, detail);
    let finished = normalize_job(detail.tree()).state.is_final();
    tracing::info!(request_id = %req.request_id, job_id = result.job_id.as_deref().unwrap_or(""), finished, "found the job an earlier attempt created; not submitting again");
    if finished {
        return Disposition::Ack;
    }
    announce(ctx, req, &result).await
}

/// Runs a check against CI (the search for an earlier submission) up to `worker.retry_max_attempts`
/// times with backoff, so that a CI outage holds the request here rather than spending its
/// redeliveries at once (each counts toward `worker.max_redeliveries` and the dead-letter topic).
async fn with_backoff<B: Broker, C: CiApi, T, F, Fut>(
    ctx: &Context<B, C>,
    request_id: &str,
    check: F,
) -> Result<T, CiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CiError>>,
{
    check
        .retry(retry::policy(&ctx.settings.worker))
        .notify(|e, delay| {
            ctx.metrics.ci_retries.inc();
            tracing::warn!(request_id, delay_ms = delay.as_millis() as u64, error = %e, "cannot check for an earlier submission yet; retrying");
        })
        .await
}

/// Why one try at `POST /jobs` did not give a job.
enum TryFailed {
    /// CI's answer to the submit.
    Submit(CiError),
    /// The search for the job a lost answer may have created failed: cannot tell, so no retry (it
    /// could make a second job); the request is redelivered later.
    Search(CiError),
}

async fn submit_with_retry<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
) -> Result<JobDetail, CiError> {
    let first_attempt = SystemTime::now();
    // Set once an attempt may have created a job whose answer we never read.
    let in_doubt = AtomicBool::new(false);
    let outcome = (|| try_submit(ctx, req, first_attempt, &in_doubt))
        .retry(retry::policy(&ctx.settings.worker))
        .when(|failed| matches!(failed, TryFailed::Submit(e) if e.is_transient()))
        .notify(|failed, delay| {
            if let TryFailed::Submit(e) = failed {
                ctx.metrics.ci_retries.inc();
                if e.may_have_created() {
                    in_doubt.store(true, Ordering::Relaxed);
                }
                tracing::warn!(request_id = %req.request_id, delay_ms = delay.as_millis() as u64, error = %e, "transient CI failure; retrying");
            }
        })
        .await;
    match outcome {
        Ok(detail) => Ok(detail),
        Err(TryFailed::Search(e)) => Err(e),
        Err(TryFailed::Submit(e)) => {
            if e.is_transient() && (in_doubt.load(Ordering::Relaxed) || e.may_have_created()) {
                // The redelivery must look before it submits.
                ctx.recovery.put_in_doubt(&req.request_id, first_attempt);
            }
            Err(e)
        }
    }
}

/// One try: when an earlier try may have created the job, look for it first; else submit.
async fn try_submit<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
    first_attempt: SystemTime,
    in_doubt: &AtomicBool,
) -> Result<JobDetail, TryFailed> {
    if in_doubt.load(Ordering::Relaxed) {
        let found = ctx
            .recovery
            .search(&ctx.ci, &ctx.ci_calls, req, first_attempt)
            .await
            .map_err(TryFailed::Search)?;
        if let Some(detail) = found {
            ctx.metrics.submissions_recovered.inc();
            tracing::info!(request_id = %req.request_id, job_id = detail.job_id().unwrap_or(""), "a lost answer had created the job; not submitting again");
            return Ok(detail);
        }
    }
    // A slot among the submissions in flight for this one call: released before any backoff, so a
    // throttled request waiting to retry does not keep another from going.
    let slot = ctx.submissions.acquire().await;
    let outcome = ci_calls::timed(
        &ctx.ci_calls,
        "submit",
        ctx.ci.submit(&req.bucket, &req.region, &req.ci_job),
    )
    .await;
    slot.finish(match &outcome {
        Ok(_) => Some(false),
        Err(e) if e.is_throttled() => Some(true),
        Err(_) => None,
    });
    outcome.map_err(TryFailed::Submit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pulsar::props;
    use crate::result::ResultState;
    use crate::worker::record::{self, Deadline, Record};
    use crate::worker::test_context::*;
    use crate::worker::test_doubles::*;
    use std::time::{Duration, SystemTime};

    fn request_delivery(ctx: &TestContext, payload: impl Into<Vec<u8>>) -> Delivery {
        delivery(&ctx.settings.pulsar.request_topic, payload)
    }

    /// A request published before this process started (a restart may have left it half done).
    fn earlier_delivery(ctx: &TestContext, request_id: &str) -> Delivery {
        let mut d = request_delivery(ctx, request(request_id));
        d.publish_time = ctx.recovery.started_at - Duration::from_secs(3600);
        d
    }

    /// Messages stored besides the attempt records.
    fn outcomes(ctx: &TestContext) -> usize {
        ctx.broker.count() - ctx.broker.on(&ctx.settings.pulsar.done_topic).len()
    }

    fn deadlines(ctx: &TestContext) -> Vec<Deadline> {
        ctx.broker
            .on(&ctx.settings.pulsar.deadline_topic)
            .iter()
            .flat_map(|m| match record::read(&m.payload) {
                Ok(Record::Deadlines(ds)) => ds,
                other => panic!("not a deadline record: {other:?}"),
            })
            .collect()
    }

    fn ambiguous() -> CiError {
        CiError::Transport {
            message: "connection reset after the request was sent".into(),
            ambiguous: true,
        }
    }

    #[tokio::test]
    async fn unreadable_request_is_dead_lettered_untouched() {
        let ctx = context(ScriptedCi::default());
        let verdict = handle(&ctx, &request_delivery(&ctx, "not json")).await;
        assert_eq!(verdict, Disposition::Ack);
        let dead = ctx.broker.on(&ctx.settings.pulsar.dead_letter_topic);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].payload, b"not json");
        assert!(dead[0].properties[props::DLQ_REASON].contains("not valid JSON"));
        assert_eq!(outcomes(&ctx), 1, "no result, no deadline");
        assert!(ctx.ci.calls().is_empty());
    }

    #[tokio::test]
    async fn unreadable_request_whose_dead_letter_is_not_stored_is_redelivered() {
        let ctx = context(ScriptedCi::default());
        ctx.broker.refuse(&ctx.settings.pulsar.dead_letter_topic);
        let verdict = handle(&ctx, &request_delivery(&ctx, "[1]")).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
    }

    #[tokio::test]
    async fn invalid_request_gets_a_rejected_result_and_no_ci_call() {
        let ctx = context(ScriptedCi::default());
        let payload = r#"{"request_id": "r1", "region": "ap-chongqing", "job": {}}"#;
        let verdict = handle(&ctx, &request_delivery(&ctx, payload)).await;
        assert_eq!(verdict, Disposition::Ack);
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].state, ResultState::Rejected);
        assert_eq!(results[0].request_id.as_deref(), Some("r1"));
        assert_eq!(results[0].code, "InvalidRequest");
        assert!(results[0].message.contains("bucket is required"));
        let stored = ctx.broker.on(&ctx.settings.pulsar.result_topic);
        assert_eq!(stored[0].key.as_deref(), Some("r1"));
        assert_eq!(stored[0].properties["state"], "rejected");
        assert!(ctx.ci.calls().is_empty());
        assert!(deadlines(&ctx).is_empty());
        assert_eq!(ctx.metrics.requests_rejected.get(), 1);
    }

    #[tokio::test]
    async fn ci_refusal_gets_a_rejected_result_with_cis_code() {
        let ci = ScriptedCi::default().submit_answers(Err(refusal(400, "InvalidParameter")));
        let ctx = context(ci);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["submit"], "a refusal is not retried");
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].state, ResultState::Rejected);
        assert_eq!(results[0].code, "InvalidParameter");
        assert_eq!(results[0].message, "InvalidParameter (test)");
        assert_eq!(results[0].user_data.as_deref(), Some("mine"));
        assert!(deadlines(&ctx).is_empty());
        assert_eq!(ctx.metrics.requests_rejected.get(), 1);
        assert_eq!(ctx.metrics.jobs_submitted.get(), 0);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_then_the_request_is_released() {
        let ci = ScriptedCi::default()
            .submit_answers(Err(refusal(429, "SlowDown")))
            .submit_answers(Err(refusal(429, "SlowDown")))
            .submit_answers(Err(refusal(403, "QueueSaturated")));
        let ctx = context(ci);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        let Disposition::Retry(reason) = verdict else {
            panic!("released for redelivery, not {verdict:?}");
        };
        assert!(reason.contains("CI unavailable after retries"), "{reason}");
        // worker.retry_max_attempts = 3.
        assert_eq!(ctx.ci.calls(), ["submit", "submit", "submit"]);
        assert_eq!(ctx.metrics.ci_retries.get(), 2);
        assert_eq!(
            outcomes(&ctx),
            0,
            "nothing is published for a released request"
        );
        // Throttled each time: no job can exist, so the redelivery need not look for one.
        assert_eq!(ctx.recovery.take_in_doubt("r1"), None);
    }

    #[tokio::test]
    async fn server_error_after_post_is_looked_for_before_submitting_again() {
        // A gateway's 502 can follow a job CI accepted.
        let ci = ScriptedCi::default()
            .submit_answers(Err(refusal(502, "BadGateway")))
            .list_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(
            ctx.ci.calls(),
            ["submit", "list"],
            "found, not submitted again"
        );
        assert_eq!(results(&ctx)[0].job_id.as_deref(), Some("j1"));
        assert_eq!(ctx.metrics.submissions_recovered.get(), 1);
    }

    #[tokio::test]
    async fn server_errors_to_the_end_leave_the_request_in_doubt() {
        let ci = ScriptedCi::default()
            .submit_answers(Err(refusal(504, "GatewayTimeout")))
            .list_answers(Ok(jobs(&[], None)))
            .submit_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Ok(jobs(&[], None)))
            .submit_answers(Err(refusal(500, "InternalError")));
        let ctx = context(ci);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
        assert_eq!(
            ctx.ci.calls(),
            ["submit", "list", "submit", "list", "submit"]
        );
        assert!(
            ctx.recovery.take_in_doubt("r1").is_some(),
            "the redelivery looks first"
        );
    }

    #[tokio::test]
    async fn accepted_job_gets_its_submitted_event_and_a_deadline() {
        let ci = ScriptedCi::default()
            .submit_answers(Err(refusal(429, "SlowDown")))
            .submit_answers(Ok(job("j1", "Submitted", &sent_user_data("r1"))));
        let ctx = context(ci);
        let before = SystemTime::now();
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["submit", "submit"]);
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        let event = &results[0];
        assert_eq!(event.state, ResultState::Submitted);
        assert_eq!(event.request_id.as_deref(), Some("r1"));
        assert_eq!(event.job_id.as_deref(), Some("j1"));
        assert_eq!(
            event.user_data.as_deref(),
            Some("mine"),
            "the marker is not shown"
        );
        let stored = ctx.broker.on(&ctx.settings.pulsar.result_topic);
        assert_eq!(stored[0].key.as_deref(), Some("r1"));
        assert_eq!(stored[0].properties["job_id"], "j1");

        let scheduled = ctx.broker.on(&ctx.settings.pulsar.deadline_topic);
        assert_eq!(scheduled.len(), 1);
        let due = scheduled[0].deliver_at.expect("a delayed message");
        assert!(due >= before + ctx.settings.worker.job_timeout);
        let deadline = &deadlines(&ctx)[0];
        assert_eq!(
            (deadline.request_id.as_str(), deadline.job_id.as_str()),
            ("r1", "j1")
        );
        assert_eq!(
            (deadline.bucket.as_str(), deadline.region.as_str()),
            (BUCKET, REGION)
        );
        assert_eq!(deadline.checks, 0);
        assert_eq!(&deadline.submitted, event);
        let due_ms = due
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(deadline.due_at_ms, due_ms, "delivered when it is due");
        assert_eq!(ctx.metrics.jobs_submitted.get(), 1);
    }

    #[tokio::test]
    async fn jobs_submitted_together_share_one_deadline_record() {
        let mut ci = ScriptedCi::default();
        for i in 0..5 {
            ci = ci.submit_answers(Ok(job(
                &format!("j{i}"),
                "Submitted",
                &sent_user_data(&format!("r{i}")),
            )));
        }
        let ctx = context(ci);
        let deliveries: Vec<Delivery> = (0..5)
            .map(|i| request_delivery(&ctx, request(&format!("r{i}"))))
            .collect();
        let verdicts = futures::future::join_all(deliveries.iter().map(|d| handle(&ctx, d))).await;
        assert!(
            verdicts.iter().all(|v| *v == Disposition::Ack),
            "{verdicts:?}"
        );
        assert_eq!(
            ctx.broker.on(&ctx.settings.pulsar.deadline_topic).len(),
            1,
            "one record"
        );
        let mut ids: Vec<String> = deadlines(&ctx).into_iter().map(|d| d.job_id).collect();
        ids.sort();
        assert_eq!(ids, ["j0", "j1", "j2", "j3", "j4"]);
    }

    #[tokio::test]
    async fn unstored_deadline_leaves_the_request_in_doubt_and_its_redelivery_finds_the_job() {
        let ci = ScriptedCi::default()
            .submit_answers(Ok(job("j1", "Submitted", &sent_user_data("r1"))))
            .list_answers(Ok(jobs(
                &[
                    ("j0", "Running", &sent_user_data("r0")),
                    ("j1", "Submitted", &sent_user_data("r1")),
                ],
                None,
            )));
        let ctx = context(ci);
        let deadline_topic = ctx.settings.pulsar.deadline_topic.clone();
        ctx.broker.refuse(&deadline_topic);
        let first = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert!(matches!(first, Disposition::Retry(_)), "{first:?}");

        ctx.broker.accept(&deadline_topic);
        let redelivered = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(redelivered, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["submit", "list"], "no second submit");
        assert_eq!(ctx.metrics.submissions_recovered.get(), 1);
        let deadlines = deadlines(&ctx);
        assert_eq!(deadlines.len(), 1);
        assert_eq!(deadlines[0].job_id, "j1");
        assert!(results(&ctx)
            .iter()
            .all(|r| r.job_id.as_deref() == Some("j1") && r.state == ResultState::Submitted));
        assert_eq!(ctx.recovery.take_in_doubt("r1"), None);
    }

    #[tokio::test]
    async fn in_doubt_request_that_cannot_be_checked_is_released_and_stays_in_doubt() {
        let ci = ScriptedCi::default()
            .list_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Err(refusal(503, "ServiceUnavailable")));
        let ctx = context(ci);
        let since = SystemTime::now();
        ctx.recovery.put_in_doubt("r1", since);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
        // worker.retry_max_attempts = 3, with backoff between them.
        assert_eq!(
            ctx.ci.calls(),
            ["list", "list", "list"],
            "never submitted while in doubt"
        );
        assert_eq!(ctx.metrics.ci_retries.get(), 2);
        assert_eq!(outcomes(&ctx), 0);
        assert_eq!(ctx.recovery.take_in_doubt("r1"), Some(since));
    }

    /// Another replica's attempt record naming `request_id`, as the done reader passes it on.
    fn attempted_elsewhere(ctx: &TestContext, request_id: &str) {
        ctx.attempts.observe(&record::Attempt {
            writer: "another-replica".into(),
            seq: 1,
            at_ms: record::now_ms(),
            requests: vec![request_id.into()],
        });
    }

    #[tokio::test]
    async fn request_another_replica_attempted_reuses_the_job_it_created() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        attempted_elsewhere(&ctx, "r1");
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list"], "found, not submitted again");
        assert_eq!(results(&ctx)[0].job_id.as_deref(), Some("j1"));
        assert_eq!(deadlines(&ctx)[0].job_id, "j1");
        assert_eq!(ctx.metrics.submissions_recovered.get(), 1);
    }

    #[tokio::test]
    async fn request_another_replica_attempted_without_a_job_is_submitted() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(&[], None)))
            .submit_answers(Ok(job("j1", "Submitted", &sent_user_data("r1"))));
        let ctx = context(ci);
        attempted_elsewhere(&ctx, "r1");
        attempted_elsewhere(&ctx, "r2");
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list", "submit"]);
        assert_eq!(results(&ctx)[0].job_id.as_deref(), Some("j1"));
    }

    #[tokio::test]
    async fn request_whose_attempt_cannot_be_recorded_is_not_submitted() {
        let ctx = context(ScriptedCi::default());
        ctx.broker.refuse(&ctx.settings.pulsar.done_topic);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
        assert!(ctx.ci.calls().is_empty());
    }

    #[tokio::test]
    async fn lost_submit_answer_is_looked_for_before_submitting_again() {
        let ci = ScriptedCi::default()
            .submit_answers(Err(ambiguous()))
            .list_answers(Ok(jobs(
                &[("j1", "Submitted", &sent_user_data("r1"))],
                None,
            )));
        let ctx = context(ci);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["submit", "list"]);
        assert_eq!(results(&ctx)[0].job_id.as_deref(), Some("j1"));
        assert_eq!(deadlines(&ctx).len(), 1);
        assert_eq!(ctx.metrics.submissions_recovered.get(), 1);
    }

    #[tokio::test]
    async fn lost_submit_answer_that_created_nothing_is_submitted_again() {
        let ci = ScriptedCi::default()
            .submit_answers(Err(ambiguous()))
            .list_answers(Ok(jobs(
                &[("j0", "Submitted", &sent_user_data("r0"))],
                None,
            )))
            .submit_answers(Ok(job("j1", "Submitted", &sent_user_data("r1"))));
        let ctx = context(ci);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["submit", "list", "submit"]);
        assert_eq!(results(&ctx)[0].job_id.as_deref(), Some("j1"));
        assert_eq!(ctx.metrics.submissions_recovered.get(), 0);
    }

    #[tokio::test]
    async fn lost_answer_on_the_last_attempt_leaves_the_request_in_doubt() {
        let ci = ScriptedCi::default()
            .submit_answers(Err(refusal(429, "SlowDown")))
            .submit_answers(Err(refusal(429, "SlowDown")))
            .submit_answers(Err(ambiguous()));
        let ctx = context(ci);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
        assert!(ctx.recovery.take_in_doubt("r1").is_some());
    }

    #[tokio::test]
    async fn requests_from_before_a_restart_share_one_scan_and_are_not_submitted_twice() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(
                &[
                    ("j0", "Running", &sent_user_data("r0")),
                    ("j1", "Running", &sent_user_data("r1")),
                ],
                None,
            )))
            .submit_answers(Ok(job("j2", "Submitted", &sent_user_data("r2"))));
        let ctx = context(ci);
        let found = handle(&ctx, &earlier_delivery(&ctx, "r1")).await;
        assert_eq!(found, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list"]);
        assert_eq!(results(&ctx)[0].job_id.as_deref(), Some("j1"));
        assert_eq!(deadlines(&ctx)[0].job_id, "j1");

        // Not in the scan: the earlier process never submitted it.
        let not_found = handle(&ctx, &earlier_delivery(&ctx, "r2")).await;
        assert_eq!(not_found, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list", "submit"], "the scan is shared");
        assert_eq!(results(&ctx)[1].job_id.as_deref(), Some("j2"));
        // The scan looks back `worker.recovery_lookback` (plus clock skew) from the start.
        let queries = ctx.ci.list_queries.lock().unwrap();
        let since = chrono::DateTime::parse_from_str(
            queries[0].start_creation_time.as_deref().unwrap(),
            "%Y-%m-%dT%H:%M:%S%z",
        )
        .unwrap();
        let started: chrono::DateTime<chrono::Utc> = ctx.recovery.started_at.into();
        let looked_back = started.signed_duration_since(since).num_seconds();
        let lookback = ctx.settings.worker.recovery_lookback.as_secs() as i64;
        assert!(
            (lookback..=lookback + 121).contains(&looked_back),
            "{looked_back}"
        );
    }

    #[tokio::test]
    async fn job_an_earlier_process_saw_finish_is_left_to_the_completion_path() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(&[("j1", "Success", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let verdict = handle(&ctx, &earlier_delivery(&ctx, "r1")).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list"]);
        assert_eq!(
            outcomes(&ctx),
            0,
            "no submitted event after the final, no deadline"
        );
    }

    #[tokio::test]
    async fn request_from_before_a_restart_that_cannot_be_checked_is_released() {
        let ci = ScriptedCi::default()
            .list_answers(Err(refusal(500, "InternalError")))
            .list_answers(Err(refusal(500, "InternalError")))
            .list_answers(Err(refusal(500, "InternalError")));
        let ctx = context(ci);
        let verdict = handle(&ctx, &earlier_delivery(&ctx, "r1")).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
        assert_eq!(ctx.ci.calls(), ["list", "list", "list"]);
        assert_eq!(outcomes(&ctx), 0);
    }

    /// CI down at start-up: the check is retried with backoff instead of releasing the request at
    /// once (a release spends one of its redeliveries before the dead-letter topic).
    #[tokio::test]
    async fn a_check_that_fails_once_is_retried_and_finds_the_job() {
        let ci = ScriptedCi::default()
            .list_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Ok(jobs(
                &[("j1", "Submitted", &sent_user_data("r1"))],
                None,
            )));
        let ctx = context(ci);
        let verdict = handle(&ctx, &earlier_delivery(&ctx, "r1")).await;
        assert!(matches!(verdict, Disposition::Ack), "{verdict:?}");
        assert_eq!(ctx.ci.calls(), ["list", "list"], "found, not submitted");
        assert_eq!(ctx.metrics.submissions_recovered.get(), 1);
    }
}
