//! The submission path: request → validate → CI `POST /jobs` (retried with backoff on transient
//! failures) → `submitted` event, or a `rejected` result, or a dead letter. The request is acknowledged
//! only once that outcome is stored on the broker.

use super::context::{Context, WorkerError};
use super::io::{Broker, CiApi};
use super::recover::Check;
use super::results::{self, stored};
use super::serve::serve;
use super::{ci_calls, dead_letter, deadline_record, recover, retry};
use crate::ci::client::CiError;
use crate::ci::response::JobDetail;
use crate::ci::tree::Node;
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{Client, SubscribeOptions, SubscriptionKind};
use crate::request::{Rejection, SubmitRequest, ValidRequest};
use crate::result::normalize::normalize_job;
use crate::result::{JobResult, ObjectRef, ResultState};
use crate::shutdown::Shutdown;
use std::sync::Arc;

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
    let in_doubt = ctx.recovery.take_in_doubt(&valid.request_id).await;
    let check = recover::check_for(&claim, in_doubt, delivery.publish_time);
    let found = match check {
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
                ctx.recovery.put_in_doubt(&valid.request_id, since).await;
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
            let rejection = match &e {
                CiError::Api { body, .. } => Rejection {
                    code: if body.code.is_empty() {
                        "CiError".into()
                    } else {
                        body.code.clone()
                    },
                    message: body.message.clone(),
                },
                other => Rejection {
                    code: "CiError".into(),
                    message: other.to_string(),
                },
            };
            tracing::info!(request_id = %valid.request_id, code = %rejection.code, message = %rejection.message, "CI refused the job");
            ctx.metrics.requests_rejected.inc();
            let result = rejected(&request, &rejection);
            stored(results::publish(ctx, &result).await)
        }
    }
}

/// A job CI accepted: its `submitted` event and its deadline, both sent at once (the event leaves
/// as early as before, so it still usually precedes the final result; waiting for one receipt before
/// sending the other cost a broker round trip per request). If either cannot be stored the request
/// is redelivered, marked in doubt so that the redelivery finds this job instead of submitting again.
async fn announce<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
    result: &JobResult,
) -> Disposition {
    let deadline = deadline_record::first(
        &req.bucket,
        &req.region,
        result,
        ctx.settings.worker.job_timeout,
    );
    let (announced, scheduled) = tokio::join!(
        results::publish(ctx, result),
        ctx.deadlines.schedule(deadline)
    );
    let outcome = announced.and(scheduled);
    if outcome.is_err() {
        ctx.recovery
            .put_in_doubt(&req.request_id, std::time::SystemTime::now())
            .await;
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
    mut check: F,
) -> Result<T, CiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CiError>>,
{
    let w = &ctx.settings.worker;
    let mut attempt = 0;
    loop {
        match check().await {
            Ok(found) => return Ok(found),
            Err(e) if attempt + 1 < w.retry_max_attempts => {
                ctx.metrics.ci_retries.inc();
                let delay = retry::backoff(attempt, w.retry_base_delay, w.retry_max_delay);
                tracing::warn!(request_id, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, error = %e, "cannot check for an earlier submission yet; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn submit_with_retry<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    req: &ValidRequest,
) -> Result<JobDetail, CiError> {
    let w = &ctx.settings.worker;
    let mut attempt = 0;
    let first_attempt = std::time::SystemTime::now();
    // Set once an attempt may have created a job whose answer we never read.
    let mut in_doubt = false;
    loop {
        if in_doubt {
            match ctx
                .recovery
                .search(&ctx.ci, &ctx.ci_calls, req, first_attempt)
                .await
            {
                Ok(Some(detail)) => {
                    ctx.metrics.submissions_recovered.inc();
                    tracing::info!(request_id = %req.request_id, job_id = detail.job_id().unwrap_or(""), "a lost answer had created the job; not submitting again");
                    return Ok(detail);
                }
                Ok(None) => {}
                // Cannot tell: do not risk a second job; the request is redelivered later.
                Err(e) => return Err(e),
            }
        }
        // A slot among the submissions in flight for this one call: released before any backoff
        // below, so a throttled request waiting to retry does not keep another from going.
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
        match outcome {
            Ok(detail) => return Ok(detail),
            Err(e) if e.is_transient() && attempt + 1 < w.retry_max_attempts => {
                ctx.metrics.ci_retries.inc();
                in_doubt = in_doubt || e.may_have_created();
                let delay = retry::backoff(attempt, w.retry_base_delay, w.retry_max_delay);
                tracing::warn!(request_id = %req.request_id, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, error = %e, "transient CI failure; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                if e.is_transient() && (in_doubt || e.may_have_created()) {
                    // The redelivery must look before it submits.
                    ctx.recovery
                        .put_in_doubt(&req.request_id, first_attempt)
                        .await;
                }
                return Err(e);
            }
        }
    }
}

/// The `submitted` progress event from CI's answer.
fn submitted(req: &ValidRequest, detail: &JobDetail) -> JobResult {
    let mut result = normalize_job(detail.tree());
    result.state = ResultState::Submitted;
    result.request_id = Some(req.request_id.clone());
    result.user_data = req.user_data.clone();
    if result.output.is_none() {
        result.output = output_of(&req.ci_job);
    }
    result
}

/// A `rejected` result, filled from the request as far as it goes.
fn rejected(req: &SubmitRequest, rejection: &Rejection) -> JobResult {
    let mut result = JobResult::new(ResultState::Rejected);
    result.request_id = Some(req.request_id.clone());
    result.code = rejection.code.clone();
    result.message = rejection.message.clone();
    let job = Node::from_value(&req.job);
    let text = |path: &[&str]| job.text_at(path).map(str::to_string);
    result.tag = text(&["Tag"]);
    result.queue_id = text(&["QueueId"]);
    result.input = Some(ObjectRef {
        bucket: req.bucket.clone(),
        region: req.region.clone(),
        object: text(&["Input", "Object"]),
    });
    result.output = output_of(&job);
    result.user_data = text(&["Operation", "UserData"]);
    result
}

fn output_of(job: &Node) -> Option<ObjectRef> {
    let text = |key: &str| {
        job.text_at(&["Operation", "Output", key])
            .map(str::to_string)
    };
    let o = ObjectRef {
        bucket: text("Bucket"),
        region: text("Region"),
        object: text("Object"),
    };
    (o != ObjectRef::default()).then_some(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pulsar::props;
    use crate::worker::deadline_record::{self, Deadline};
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
            .flat_map(|m| {
                deadline_record::read(
                    m.properties.get(props::RECORD).map(String::as_str),
                    &m.payload,
                )
                .unwrap()
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
        assert_eq!(ctx.recovery.take_in_doubt("r1").await, None);
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
            ctx.recovery.take_in_doubt("r1").await.is_some(),
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
        assert_eq!(
            scheduled[0].properties[props::RECORD],
            deadline_record::RECORD_BATCH
        );
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
        assert_eq!(ctx.recovery.take_in_doubt("r1").await, None);
    }

    #[tokio::test]
    async fn in_doubt_request_that_cannot_be_checked_is_released_and_stays_in_doubt() {
        let ci = ScriptedCi::default()
            .list_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Err(refusal(503, "ServiceUnavailable")))
            .list_answers(Err(refusal(503, "ServiceUnavailable")));
        let ctx = context(ci);
        let since = SystemTime::now();
        ctx.recovery.put_in_doubt("r1", since).await;
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
        assert_eq!(ctx.recovery.take_in_doubt("r1").await, Some(since));
    }

    /// Another replica's attempt record naming `request_id`, as the done reader passes it on.
    fn attempted_elsewhere(ctx: &TestContext, request_id: &str) {
        ctx.attempts
            .observe(&crate::worker::attempts::AttemptRecord {
                version: crate::worker::attempts::RECORD_VERSION,
                writer: "another-replica".into(),
                seq: 1,
                at_ms: deadline_record::now_ms(),
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
        assert!(ctx.recovery.take_in_doubt("r1").await.is_some());
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
