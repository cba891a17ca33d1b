//! The submission path: request → validate → CI `POST /jobs` (retried with backoff on transient
//! failures) → `submitted` event, or a `rejected` result, or a dead letter. The request is acknowledged
//! only once that outcome is stored on the broker.

use super::context::{Context, WorkerError};
use super::io::{Broker, CiApi};
use super::results::{self, stored};
use super::serve::serve;
use super::{ci_calls, dead_letter, deadline_record, recover, retry};
use crate::ci::client::CiError;
use crate::ci::response::JobDetail;
use crate::ci::tree::Node;
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{Client, SubscribeOptions};
use crate::request::{Rejection, SubmitRequest, ValidRequest};
use crate::result::normalize::normalize_job;
use crate::result::{JobResult, ObjectRef, ResultState};
use std::sync::Arc;
use tokio::sync::watch;

pub async fn run(
    ctx: Arc<Context>,
    client: Client,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
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
        key_shared: false,
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
    if let Some(since) = ctx.recovery.take_in_doubt(&valid.request_id).await {
        match recover::search(&ctx.ci, &ctx.metrics, &valid, since).await {
            Ok(Some(detail)) => return recovered(ctx, &valid, &detail).await,
            Ok(None) => {}
            Err(e) => {
                ctx.recovery.put_in_doubt(&valid.request_id, since).await;
                tracing::warn!(request_id = %valid.request_id, error = %e, "cannot check for an earlier submission; releasing the request for redelivery");
                return Disposition::Retry(format!("cannot check for an earlier submission: {e}"));
            }
        }
    } else if ctx.recovery.maybe_attempted(delivery.publish_time) {
        match ctx.recovery.lookup(&ctx.ci, &ctx.metrics, &valid).await {
            Ok(Some(detail)) => return recovered(ctx, &valid, &detail).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(request_id = %valid.request_id, error = %e, "cannot check for an earlier submission; releasing the request for redelivery");
                return Disposition::Retry(format!("cannot check for an earlier submission: {e}"));
            }
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
    let deadline = deadline_record::first(&req.bucket, &req.region, result);
    let (announced, scheduled) = tokio::join!(
        results::publish(ctx, result),
        deadline_record::schedule(ctx, &deadline, ctx.settings.worker.job_timeout)
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
            match recover::search(&ctx.ci, &ctx.metrics, req, first_attempt).await {
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
        let outcome = ci_calls::timed(
            &ctx.metrics,
            "submit",
            ctx.ci.submit(&req.bucket, &req.region, &req.ci_job),
        )
        .await;
        match outcome {
            Ok(detail) => return Ok(detail),
            Err(e) if e.is_transient() && attempt + 1 < w.retry_max_attempts => {
                ctx.metrics.ci_retries.inc();
                in_doubt = matches!(
                    e,
                    CiError::Transport {
                        ambiguous: true,
                        ..
                    } | CiError::Protocol(_)
                );
                let delay = retry::backoff(attempt, w.retry_base_delay, w.retry_max_delay);
                tracing::warn!(request_id = %req.request_id, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, error = %e, "transient CI failure; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                let ambiguous = matches!(
                    e,
                    CiError::Transport {
                        ambiguous: true,
                        ..
                    } | CiError::Protocol(_)
                );
                if e.is_transient() && (in_doubt || ambiguous) {
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
