//! The submission path: request → validate → its deadline record → CI `POST /jobs` (retried with
//! backoff on transient failures) → `submitted` event, or a `rejected` result, or a dead letter. The
//! request is acknowledged only once that outcome is stored on the broker.
//!
//! Requests are read on a Failover subscription (`docs/design/replicas.md`): a request reaches a
//! second replica only when its partition changes owner. So a fresh request is submitted with no
//! check and no record; only these are first looked for at CI by their marker ([`recovery`]):
//! - the deliveries that follow a **takeover** ([`takeover`]), after `worker.takeover_grace` (the
//!   previous owner's `POST /jobs` still on its way lands meanwhile);
//! - a request **held here** longer than half the grace before its `POST /jobs` (its partition may
//!   have moved, and the new owner may have submitted it, without this replica being told);
//! - a request **in doubt** (an earlier try may have created a job whose answer was lost).
//!
//! Each request's deadline record is published before its `POST /jobs` and named in its marker,
//! so that whoever finishes the job cancels it ([`crate::worker::deadline::schedule`]); a request
//! that makes no job cancels its own.
//!
//! - this file: the handler (and its consume loop), the one place that orders the steps;
//! - [`outcome`]: what it publishes (`submitted`, `rejected`), pure;
//! - [`recovery`]: the checks at CI (looking for the job an earlier attempt created), and the
//!   requests in doubt;
//! - [`takeover`]: which deliveries another replica may have been given first, from their
//!   positions, pure.

pub mod outcome;
pub mod recovery;
pub mod takeover;

use self::outcome::{rejected, rejection_of, submitted};
use self::recovery::JobLookup;
use self::takeover::Delivery as Seen;
use crate::ci::client::CiError;
use crate::ci::response::JobDetail;
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{Client, SubscribeOptions, SubscriptionKind};
use crate::request::marker::{self, DeadlineRef};
use crate::request::{SubmitRequest, ValidRequest};
use crate::result::normalize::normalize_job;
use crate::result::JobResult;
use crate::shutdown::Shutdown;
use crate::worker::context::{request_receiver_queue, requests_in_flight, Context, WorkerError};
use crate::worker::deadline::schedule;
use crate::worker::io::{Broker, CiApi};
use crate::worker::pace::{ci_calls, retry};
use crate::worker::results::{self, stored};
use crate::worker::settle::dead_letter;
use crate::worker::settle::serve::serve;
use backon::Retryable;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

pub async fn run(ctx: Arc<Context>, client: Client, stop: Shutdown) -> Result<(), WorkerError> {
    let p = &ctx.settings.pulsar;
    let subscribe = SubscribeOptions {
        topic: p.request_topic.clone(),
        subscription: p.request_subscription.clone(),
        name_prefix: "ci-worker-submit".into(),
        receiver_queue_size: request_receiver_queue(&ctx.settings),
        // Never nacked (a nack rewinds the partition): the poison rule counts tries here.
        dead_letter: None,
        from_earliest: true,
        kind: SubscriptionKind::Failover,
    };
    serve(
        &ctx,
        client,
        stop,
        "submit",
        "request",
        subscribe,
        requests_in_flight(&ctx.settings),
        None,
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
    let mut valid = match request.validate(&ctx.settings.ci) {
        Ok(v) => v,
        Err(rejection) => {
            tracing::info!(request_id = %request.request_id, code = %rejection.code, message = %rejection.message, "request rejected");
            ctx.metrics.requests_rejected.inc();
            let result = rejected(&request, &rejection);
            return stored(results::publish(ctx, &result).await);
        }
    };
    let lookout = Lookout::new(ctx, delivery, &valid.request_id).await;
    // Looked for before the deadline is published, so that a job found costs no record.
    if lookout.check_due() {
        match lookout.check(ctx, &valid).await {
            Ok(Some(detail)) => return recovered(ctx, &valid, &detail, None).await,
            Ok(None) => {}
            Err(disposition) => return disposition,
        }
    }
    let pending = schedule::pending(
        &valid.bucket,
        &valid.region,
        &outcome::pending(&valid),
        JobLookup::of(&valid),
        ctx.settings.worker.job_timeout,
    );
    match schedule::publish_pending(&ctx.broker, &ctx.settings.pulsar.deadline_topic, pending).await
    {
        Ok(Some(at)) => valid.set_deadline(at),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(request_id = %valid.request_id, error = %e, "cannot store the request's deadline; trying again later");
            return Disposition::Retry(format!("could not store the request's deadline: {e}"));
        }
    }
    let deadline = valid.deadline();
    match submit_with_retry(ctx, &valid, &lookout).await {
        Ok(Submission::Created(detail)) => {
            ctx.metrics.jobs_submitted.inc();
            let result = submitted(&valid, &detail);
            tracing::info!(request_id = %valid.request_id, job_id = result.job_id.as_deref().unwrap_or(""), "job submitted");
            announce(ctx, &valid, &result).await
        }
        Ok(Submission::Found(detail)) => recovered(ctx, &valid, &detail, deadline).await,
        Err(e) if e.is_transient() => {
            if !ctx.recovery.is_in_doubt(&valid.request_id) {
                cancel(ctx, deadline);
            }
            tracing::warn!(request_id = %valid.request_id, error = %e, "CI still unavailable after retries; trying the request again later");
            Disposition::Retry(format!("CI unavailable after retries: {e}"))
        }
        Err(e) => {
            cancel(ctx, deadline);
            let rejection = rejection_of(&e);
            tracing::info!(request_id = %valid.request_id, code = %rejection.code, message = %rejection.message, "CI refused the job");
            ctx.metrics.requests_rejected.inc();
            let result = rejected(&request, &rejection);
            stored(results::publish(ctx, &result).await)
        }
    }
}

fn cancel<B, C>(ctx: &Context<B, C>, deadline: Option<DeadlineRef>) {
    if let Some(deadline) = deadline {
        ctx.cancel_deadline(deadline);
    }
}

/// When a request must be looked for at CI before it is submitted, and how far back.
struct Lookout {
    /// Until this instant nobody else can have submitted the request (unknown to this replica):
    /// when it was taken, or last looked for.
    clear_at: Mutex<Instant>,
    /// A look is due whatever the time (a takeover, or an earlier try in doubt).
    forced: AtomicBool,
    /// The earliest a job for it can have been created: its publish time, or this replica's first
    /// try when that lost its answer.
    since: SystemTime,
    /// Half of `worker.takeover_grace`: how long a request may be held before it is looked for.
    held_at_most: std::time::Duration,
}

impl Lookout {
    /// Classifies the delivery; after a takeover, waits out the grace first.
    async fn new<B: Broker, C: CiApi>(
        ctx: &Context<B, C>,
        delivery: &Delivery,
        request_id: &str,
    ) -> Lookout {
        let grace = ctx.settings.worker.takeover_grace;
        let in_doubt = ctx.recovery.take_in_doubt(request_id);
        // Classified once: a local retry hands the same delivery over again.
        let seen = (delivery.attempt == 1).then(|| {
            ctx.takeovers.lock().observe(
                &delivery.topic,
                delivery.position,
                delivery.publish_time,
                std::time::Instant::now(),
                SystemTime::now(),
            )
        });
        let suspect = match seen {
            Some(Seen::Suspect(takeover)) => {
                tracing::debug!(
                    request_id,
                    takeover = takeover.id,
                    "taken over from another replica: looking for its job after the grace"
                );
                tokio::time::sleep_until(Instant::from_std(takeover.at + grace)).await;
                true
            }
            _ => false,
        };
        Lookout {
            clear_at: Mutex::new(delivery.held_since),
            forced: AtomicBool::new(suspect || in_doubt.is_some()),
            since: in_doubt.map_or(delivery.publish_time, |t| t.min(delivery.publish_time)),
            held_at_most: grace / 2,
        }
    }

    /// Whether the request must be looked for before its next `POST /jobs`.
    fn check_due(&self) -> bool {
        self.forced.load(Ordering::Relaxed) || self.clear_at.lock().elapsed() > self.held_at_most
    }

    /// Looks for the request's job once; when there is none, nobody else can have submitted the
    /// request up to now.
    async fn look<B: Broker, C: CiApi>(
        &self,
        ctx: &Context<B, C>,
        req: &ValidRequest,
    ) -> Result<Option<JobDetail>, CiError> {
        let looked_at = Instant::now();
        let found = ctx
            .recovery
            .search_request(&ctx.ci, &ctx.ci_calls, req, self.since)
            .await?;
        if found.is_none() {
            self.forced.store(false, Ordering::Relaxed);
            *self.clear_at.lock() = looked_at;
        }
        Ok(found)
    }

    /// Looks for the request's job (with backoff); `Err` is the verdict when CI cannot be asked.
    async fn check<B: Broker, C: CiApi>(
        &self,
        ctx: &Context<B, C>,
        req: &ValidRequest,
    ) -> Result<Option<JobDetail>, Disposition> {
        tracing::info!(request_id = %req.request_id, "a job may exist for this request (another replica, or an earlier try); looking for it at CI");
        with_backoff(ctx, &req.request_id, || self.look(ctx, req))
            .await
            .map_err(|e| {
                if self.forced.load(Ordering::Relaxed) {
                    ctx.recovery.put_in_doubt(&req.request_id, self.since);
                }
                tracing::warn!(request_id = %req.request_id, error = %e, "cannot check for an earlier submission; trying the request again later");
                Disposition::Retry(format!("cannot check for an earlier submission: {e}"))
            })
    }
}

/// A job CI accepted: its `submitted` event. If that cannot be stored the request is tried again,
/// marked in doubt so that the next try finds this job instead of submitting again.
async fn announce<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
    result: &JobResult,
) -> Disposition {
    let outcome = results::publish(ctx, result).await;
    if outcome.is_err() {
        ctx.recovery
            .put_in_doubt(&req.request_id, SystemTime::now());
    }
    stored(outcome)
}

/// A job an earlier attempt (here or at another replica) created: announce it (unless it already
/// finished, in which case the completion path owns its result) instead of submitting again. `ours`
/// is the deadline this try published, cancelled when the job names another; a job whose marker
/// names no deadline (submitted by 0.5 or earlier) gets one.
async fn recovered<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
    detail: &JobDetail,
    ours: Option<DeadlineRef>,
) -> Disposition {
    ctx.metrics.submissions_recovered.inc();
    let result = submitted(req, detail);
    let named = marker::decode(detail.user_data()).deadline;
    if ours.is_some() && named != ours {
        cancel(ctx, ours);
    }
    let finished = normalize_job(detail.tree()).state.is_final();
    tracing::info!(request_id = %req.request_id, job_id = result.job_id.as_deref().unwrap_or(""), finished, "found the job an earlier attempt created; not submitting again");
    if finished {
        return Disposition::Ack;
    }
    if named.is_none() {
        let deadline = schedule::first(
            &req.bucket,
            &req.region,
            &result,
            ctx.settings.worker.job_timeout,
        );
        let topic = &ctx.settings.pulsar.deadline_topic;
        if let Err(e) = schedule::schedule_all(&ctx.broker, topic, vec![deadline]).await {
            ctx.recovery
                .put_in_doubt(&req.request_id, SystemTime::now());
            return Disposition::Retry(format!("could not store the job's deadline: {e}"));
        }
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
    /// The search for a job that may exist failed: cannot tell, so no retry (it could make a second
    /// job); the request is tried again later.
    Search(CiError),
}

/// What the tries came to.
enum Submission {
    /// CI created the job.
    Created(JobDetail),
    /// A job for the request existed already (a lost answer's, or another replica's).
    Found(JobDetail),
}

async fn submit_with_retry<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
    lookout: &Lookout,
) -> Result<Submission, CiError> {
    let first_attempt = SystemTime::now();
    let outcome = (|| try_submit(ctx, req, lookout))
        .retry(retry::policy(&ctx.settings.worker))
        .when(|failed| matches!(failed, TryFailed::Submit(e) if e.is_transient()))
        .notify(|failed, delay| {
            if let TryFailed::Submit(e) = failed {
                ctx.metrics.ci_retries.inc();
                if e.may_have_created() {
                    lookout.forced.store(true, Ordering::Relaxed);
                }
                tracing::warn!(request_id = %req.request_id, delay_ms = delay.as_millis() as u64, error = %e, "transient CI failure; retrying");
            }
        })
        .await;
    match outcome {
        Ok(submission) => Ok(submission),
        Err(TryFailed::Search(e)) => {
            if lookout.forced.load(Ordering::Relaxed) {
                ctx.recovery
                    .put_in_doubt(&req.request_id, first_attempt.min(lookout.since));
            }
            Err(e)
        }
        Err(TryFailed::Submit(e)) => {
            if e.is_transient() && (lookout.forced.load(Ordering::Relaxed) || e.may_have_created())
            {
                // The next try must look before it submits.
                ctx.recovery
                    .put_in_doubt(&req.request_id, first_attempt.min(lookout.since));
            }
            Err(e)
        }
    }
}

/// One try: when a job may exist (a lost answer, or the request held long), look for it first; else
/// submit.
async fn try_submit<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
    lookout: &Lookout,
) -> Result<Submission, TryFailed> {
    if lookout.check_due() {
        if let Some(detail) = lookout.look(ctx, req).await.map_err(TryFailed::Search)? {
            tracing::info!(request_id = %req.request_id, job_id = detail.job_id().unwrap_or(""), "the job exists already; not submitting again");
            return Ok(Submission::Found(detail));
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
    outcome.map(Submission::Created).map_err(TryFailed::Submit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pulsar::consume::Position;
    use crate::pulsar::props;
    use crate::result::ResultState;
    use crate::worker::record::{self, Deadline, Record};
    use crate::worker::test_context::*;
    use crate::worker::test_doubles::*;
    use std::time::{Duration, SystemTime};

    /// A request of a partition this replica has owned all along (nothing suspect).
    fn request_delivery(ctx: &TestContext, payload: impl Into<Vec<u8>>) -> Delivery {
        let d = delivery(&ctx.settings.pulsar.request_topic, payload);
        let before = Position {
            entry: d.position.entry - 1,
            ..d.position
        };
        ctx.takeovers.lock().adopt(&d.topic, before);
        d
    }

    /// A request of a partition just taken over from another replica (at start, or when one left).
    fn taken_over(ctx: &TestContext, request_id: &str) -> Delivery {
        delivery(&ctx.settings.pulsar.request_topic, request(request_id))
    }

    /// Messages stored besides the deadline records.
    fn outcomes(ctx: &TestContext) -> usize {
        ctx.broker.count() - ctx.broker.on(&ctx.settings.pulsar.deadline_topic).len()
    }

    /// The `UserData` this worker sends for `request_id` once its deadline is the `entry`-th message
    /// the test broker stored.
    fn with_deadline(request_id: &str, entry: u64) -> String {
        let at = DeadlineRef {
            partition: -1,
            ledger: 1,
            entry,
        };
        crate::request::marker::encode(request_id, Some(at), Some("mine")).unwrap()
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
        assert_eq!(deadlines(&ctx).len(), 1, "published before the POST");
        assert_eq!(
            cancelled_deadlines(&ctx),
            [(1, 0)],
            "and cancelled: there is no job"
        );
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
        // Throttled each time: no job can exist, so the next try need not look for one, and the
        // deadline is cancelled (the next try publishes its own).
        assert_eq!(ctx.recovery.take_in_doubt("r1"), None);
        assert_eq!(cancelled_deadlines(&ctx), [(1, 0)]);
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
    async fn accepted_job_gets_its_submitted_event_and_a_deadline_published_before() {
        let ci = ScriptedCi::default()
            .submit_answers(Err(refusal(429, "SlowDown")))
            .submit_answers(Ok(job("j1", "Submitted", &with_deadline("r1", 0))));
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

        // The deadline is the first message stored, before CI was asked; the job's marker names it.
        let scheduled = ctx.broker.on(&ctx.settings.pulsar.deadline_topic);
        assert_eq!(scheduled.len(), 1, "one record, whatever the tries");
        let due = scheduled[0].deliver_at.expect("a delayed message");
        // Due times are whole milliseconds.
        assert!(due + Duration::from_millis(1) >= before + ctx.settings.worker.job_timeout);
        let deadline = &deadlines(&ctx)[0];
        assert_eq!(
            (deadline.request_id.as_str(), deadline.job_id.as_str()),
            ("r1", ""),
            "published before the job existed"
        );
        assert_eq!(
            deadline
                .lookup
                .as_ref()
                .and_then(|l| l.input_object.clone()),
            JobLookup::of(&valid_request("r1")).input_object
        );
        assert_eq!(deadline.submitted.user_data.as_deref(), Some("mine"));
        let due_ms = due
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(deadline.due_at_ms, due_ms, "delivered when it is due");
        assert!(cancelled_deadlines(&ctx).is_empty());
        assert_eq!(ctx.metrics.jobs_submitted.get(), 1);
    }

    fn valid_request(request_id: &str) -> ValidRequest {
        SubmitRequest::parse(request(request_id).as_bytes())
            .unwrap()
            .validate(&settings().ci)
            .unwrap()
    }

    #[tokio::test]
    async fn each_request_gets_a_deadline_record_of_its_own() {
        let mut ci = ScriptedCi::default();
        for i in 0..5 {
            ci = ci.submit_answers(Ok(job(
                &format!("j{i}"),
                "Submitted",
                &sent_user_data(&format!("r{i}")),
            )));
        }
        let ctx = context(ci);
        for i in 0..5 {
            let d = request_delivery(&ctx, request(&format!("r{i}")));
            assert_eq!(handle(&ctx, &d).await, Disposition::Ack);
        }
        let mut ids: Vec<String> = deadlines(&ctx).into_iter().map(|d| d.request_id).collect();
        ids.sort();
        assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
        assert_eq!(ctx.broker.on(&ctx.settings.pulsar.deadline_topic).len(), 5);
    }

    #[tokio::test]
    async fn request_whose_deadline_cannot_be_stored_is_not_submitted() {
        let ctx = context(ScriptedCi::default());
        ctx.broker.refuse(&ctx.settings.pulsar.deadline_topic);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
        assert!(ctx.ci.calls().is_empty());
        assert_eq!(outcomes(&ctx), 0);
    }

    #[tokio::test]
    async fn unstored_submitted_event_leaves_the_request_in_doubt_and_its_next_try_finds_the_job() {
        let ci = ScriptedCi::default()
            .submit_answers(Ok(job("j1", "Submitted", &with_deadline("r1", 0))))
            .list_answers(Ok(jobs(
                &[
                    ("j0", "Running", &sent_user_data("r0")),
                    ("j1", "Submitted", &with_deadline("r1", 0)),
                ],
                None,
            )));
        let ctx = context(ci);
        let result_topic = ctx.settings.pulsar.result_topic.clone();
        ctx.broker.refuse(&result_topic);
        let first = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert!(matches!(first, Disposition::Retry(_)), "{first:?}");

        ctx.broker.accept(&result_topic);
        let again = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(again, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["submit", "list"], "no second submit");
        assert_eq!(ctx.metrics.submissions_recovered.get(), 1);
        assert_eq!(
            deadlines(&ctx).len(),
            1,
            "the job keeps the deadline it names"
        );
        assert!(cancelled_deadlines(&ctx).is_empty());
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

    #[tokio::test(start_paused = true)]
    async fn request_taken_over_is_looked_for_after_the_grace_and_reuses_the_job() {
        let ci = ScriptedCi::default().list_answers(Ok(jobs(
            &[("j1", "Running", &with_deadline("r1", 40))],
            None,
        )));
        let ctx = context(ci);
        let taken = tokio::time::Instant::now();
        let verdict = handle(&ctx, &taken_over(&ctx, "r1")).await;
        assert_eq!(verdict, Disposition::Ack);
        assert!(
            taken.elapsed() >= ctx.settings.worker.takeover_grace,
            "the previous owner's POST in flight had the grace to land"
        );
        assert_eq!(ctx.ci.calls(), ["list"], "found, not submitted again");
        assert_eq!(results(&ctx)[0].job_id.as_deref(), Some("j1"));
        assert!(deadlines(&ctx).is_empty(), "the job has its deadline");
        assert_eq!(ctx.metrics.submissions_recovered.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn request_taken_over_without_a_job_is_submitted_and_what_follows_is_fresh() {
        let mut settings = settings();
        settings.worker.max_in_flight = 1;
        let window = crate::worker::context::takeover_window(&settings);
        let mut ci = ScriptedCi::default();
        for i in 0..window {
            ci = ci.list_answers(Ok(jobs(&[], None))).submit_answers(Ok(job(
                &format!("j{i}"),
                "Submitted",
                &sent_user_data(&format!("r{i}")),
            )));
        }
        let ci = ci.submit_answers(Ok(job("jf", "Submitted", &sent_user_data("rf"))));
        let ctx = context_with(settings, ci);
        let first = taken_over(&ctx, "r0");
        // The takeover's window is suspect (what the previous owner can have been holding); past
        // it, requests go straight to CI.
        for i in 0..=window {
            let mut next = first.clone();
            next.position.entry += i as u64;
            next.held_since = tokio::time::Instant::now();
            let id = if i < window {
                format!("r{i}")
            } else {
                "rf".into()
            };
            next.payload = request(&id).into_bytes();
            assert_eq!(handle(&ctx, &next).await, Disposition::Ack);
        }
        let calls = ctx.ci.calls();
        assert_eq!(calls.iter().filter(|c| **c == "list").count(), window);
        assert_eq!(calls.last(), Some(&"submit"));
        assert_eq!(
            calls[calls.len() - 2],
            "submit",
            "the last was not looked for"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn job_a_previous_owner_saw_finish_is_left_to_the_completion_path() {
        let ci = ScriptedCi::default().list_answers(Ok(jobs(
            &[("j1", "Success", &with_deadline("r1", 9))],
            None,
        )));
        let ctx = context(ci);
        let verdict = handle(&ctx, &taken_over(&ctx, "r1")).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list"]);
        assert_eq!(
            ctx.broker.count(),
            0,
            "no submitted event after the final, no deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn job_submitted_by_an_older_worker_gets_a_deadline_when_found() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(&[("j1", "Running", &sent_user_data("r1"))], None)));
        let ctx = context(ci);
        let verdict = handle(&ctx, &taken_over(&ctx, "r1")).await;
        assert_eq!(verdict, Disposition::Ack);
        let deadlines = deadlines(&ctx);
        assert_eq!(deadlines.len(), 1, "its marker names none");
        assert_eq!(deadlines[0].job_id, "j1");
    }

    #[tokio::test(start_paused = true)]
    async fn request_taken_over_that_cannot_be_checked_is_tried_again_and_stays_in_doubt() {
        let ci = ScriptedCi::default()
            .list_answers(Err(refusal(500, "InternalError")))
            .list_answers(Err(refusal(500, "InternalError")))
            .list_answers(Err(refusal(500, "InternalError")));
        let ctx = context(ci);
        let verdict = handle(&ctx, &taken_over(&ctx, "r1")).await;
        assert!(matches!(verdict, Disposition::Retry(_)), "{verdict:?}");
        assert_eq!(ctx.ci.calls(), ["list", "list", "list"]);
        assert_eq!(ctx.broker.count(), 0);
        assert!(
            ctx.recovery.is_in_doubt("r1"),
            "its next try looks again first"
        );
    }

    /// CI down at the takeover: the check is retried with backoff instead of giving the request up
    /// at once.
    #[tokio::test(start_paused = true)]
    async fn a_check_that_fails_once_is_retried_and_finds_the_job() {
        let ci = ScriptedCi::default()
            .list_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Ok(jobs(
                &[("j1", "Submitted", &with_deadline("r1", 3))],
                None,
            )));
        let ctx = context(ci);
        let verdict = handle(&ctx, &taken_over(&ctx, "r1")).await;
        assert!(matches!(verdict, Disposition::Ack), "{verdict:?}");
        assert_eq!(ctx.ci.calls(), ["list", "list"], "found, not submitted");
        assert_eq!(ctx.metrics.submissions_recovered.get(), 1);
    }

    #[tokio::test]
    async fn request_held_longer_than_half_the_grace_is_looked_for_before_its_post() {
        let ci = ScriptedCi::default()
            .list_answers(Ok(jobs(&[], None)))
            .submit_answers(Ok(job("j1", "Submitted", &with_deadline("r1", 0))));
        let ctx = context(ci);
        let mut held = request_delivery(&ctx, request("r1"));
        held.held_since = tokio::time::Instant::now() - ctx.settings.worker.takeover_grace;
        assert_eq!(handle(&ctx, &held).await, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["list", "submit"]);
    }

    #[tokio::test]
    async fn a_job_found_before_a_retry_keeps_its_own_deadline_and_ours_is_cancelled() {
        // Throttled, then the partition may have moved while this replica waited: the job the new
        // owner created names the new owner's deadline.
        let ci = ScriptedCi::default()
            .submit_answers(Err(ambiguous()))
            .list_answers(Ok(jobs(
                &[("j1", "Running", &with_deadline("r1", 77))],
                None,
            )));
        let ctx = context(ci);
        let verdict = handle(&ctx, &request_delivery(&ctx, request("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        assert_eq!(ctx.ci.calls(), ["submit", "list"]);
        assert_eq!(cancelled_deadlines(&ctx), [(1, 0)]);
    }

    #[tokio::test]
    async fn lost_submit_answer_is_looked_for_before_submitting_again() {
        let ci = ScriptedCi::default()
            .submit_answers(Err(ambiguous()))
            .list_answers(Ok(jobs(
                &[("j1", "Submitted", &with_deadline("r1", 0))],
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
}
