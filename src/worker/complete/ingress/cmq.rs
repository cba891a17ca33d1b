//! The `cmq` ingress: reads the TDMQ for CMQ queue CI writes completion events into and hands each
//! event to the completion handler.
//!
//! One loop per `cmq.concurrency`: `BatchReceiveMessage` (long poll `cmq.polling_wait`, up to
//! `cmq.batch_size`) → every message through the completion handler, at once → `BatchDeleteMessage`
//! with the receipt handles of those whose outcome (results or dead letter) is stored. A message
//! whose outcome could not be stored is not deleted: CMQ shows it again after the queue's
//! visibility timeout, and one that failed `worker.max_redeliveries` times (CMQ's `dequeueCount`,
//! which every replica's receives raise) is dead-lettered and deleted. A message the worker cannot
//! read (an element of the answer that is not a message, a body that is not an event) is
//! dead-lettered with its body and the reason and deleted: it never holds up its batch. A delete
//! that fails leaves the message to come again; the completion handler suppresses the second
//! final. CMQ's "no message" answer is not an error; other errors and throttling back off
//! (`worker.retry_*`) and show in `ci_worker_cmq_calls_total`, the log and readiness (`cmq`).
//! Several replicas may read one queue: CMQ hands each message to one receiver at a time.
//!
//! TDMQ for CMQ deletes a message that was not deleted within the queue's Max Message Unack Time
//! (from its sending): an event held up longer than that is gone, and its job is found by its
//! deadline (README "TDMQ for CMQ").

use super::body::event_bytes;
use crate::cmq::api::ReceivedMessage;
use crate::cmq::client::{CmqClient, CmqError};
use crate::pulsar::consume::Disposition;
use crate::shutdown::Shutdown;
use crate::telemetry::{CmqCallLabels, IngressLabels, SourceLabel};
use crate::worker::complete::handle::{handle, SOURCE};
use crate::worker::context::Context;
use crate::worker::io::{Broker, CiApi};
use crate::worker::pace::retry;
use crate::worker::settle::inbound::Inbound;
use crate::worker::settle::{dead_letter, poison};
use backon::Retryable;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The readiness name of this source.
pub const HEALTH_NAME: &str = "cmq";
/// Deletes of one batch tried before the batch is left to CMQ's visibility timeout.
const DELETE_ATTEMPTS: u32 = 3;

/// Runs `cmq.concurrency` receive loops until `stop` is triggered; a batch being stored when it is
/// gets `worker.shutdown_timeout` to finish.
pub async fn run<B: Broker + Clone, C: CiApi>(
    ctx: Arc<Context<B, C>>,
    cmq: CmqClient,
    stop: Shutdown,
) {
    tracing::info!(
        endpoint = %ctx.settings.cmq_endpoint(),
        queue = %ctx.settings.cmq_queue(),
        batch_size = ctx.settings.cmq.batch_size,
        concurrency = ctx.settings.cmq.concurrency,
        "cmq ingress: reading completion events"
    );
    let loops: Vec<_> = (0..ctx.settings.cmq.concurrency)
        .map(|_| tokio::spawn(receive_loop(ctx.clone(), cmq.clone(), stop.clone())))
        .collect();
    for task in loops {
        let _ = task.await;
    }
    tracing::info!("cmq ingress: stopped");
}

async fn receive_loop<B: Broker + Clone, C: CiApi>(
    ctx: Arc<Context<B, C>>,
    cmq: CmqClient,
    stop: Shutdown,
) {
    let settings = &ctx.settings;
    let w = &settings.worker;
    let queue = settings.cmq_queue().to_string();
    let receive = || cmq.batch_receive(&queue, settings.cmq.batch_size, settings.cmq.polling_wait);
    while !stop.is_triggered() {
        // A receive that fails is tried again, without end, until one works or the worker stops.
        let received = tokio::select! {
            _ = stop.triggered() => break,
            r = receive
                .retry(retry::backoff(w.retry_base_delay, w.retry_max_delay, usize::MAX))
                .notify(|error: &CmqError, pause| {
                    ctx.health.set(HEALTH_NAME, false);
                    count_call(&ctx, "BatchReceiveMessage", &error.label());
                    log_failure(error, &queue, pause);
                }) => r,
        };
        let Ok(messages) = received else { continue };
        ctx.health.set(HEALTH_NAME, true);
        count_call(
            &ctx,
            "BatchReceiveMessage",
            if messages.is_empty() { "empty" } else { "ok" },
        );
        if messages.is_empty() {
            continue;
        }
        let arrived = Instant::now();
        // A batch in hand is finished even when a shutdown comes: it is bounded by the drain.
        let grace = w.shutdown_timeout;
        let origin = format!("cmq:{queue}");
        let settled = tokio::select! {
            settled = settle_batch(&ctx, &origin, &messages, arrived) => settled,
            _ = stopped_then(&stop, grace) => {
                tracing::warn!(queue, "cmq ingress: shutdown: a batch was not handled in time; CMQ shows it again");
                break;
            }
        };
        let kept = messages.len() - settled.len();
        let deletable: Vec<&str> = settled.into_iter().filter(|h| !h.is_empty()).collect();
        delete_settled(&ctx, &cmq, &queue, &deletable).await;
        if kept > 0 {
            // The broker is in trouble: give it a moment before taking more.
            let pause = retry::delay(w, 0);
            tracing::warn!(
                queue,
                kept,
                "cmq ingress: events whose outcome could not be stored; left in CMQ (shown again after its visibility timeout)"
            );
            pause_or_stop(pause, &stop).await;
        }
    }
}

/// Hands every message to the completion handler at once; returns the receipt handles of those
/// settled (outcome stored, or dead-lettered).
async fn settle_batch<'m, B: Broker + Clone, C: CiApi>(
    ctx: &Context<B, C>,
    origin: &str,
    messages: &'m [ReceivedMessage],
    arrived: Instant,
) -> Vec<&'m str> {
    let settles = messages.iter().map(|m| async move {
        match settle(ctx, origin, m).await {
            Disposition::Ack => {
                count_event(ctx, "stored");
                ctx.metrics
                    .ingress_store_duration
                    .get_or_create(&SourceLabel {
                        source: "cmq".into(),
                    })
                    .observe(arrived.elapsed().as_secs_f64());
                if m.receipt_handle.is_empty() {
                    tracing::warn!(msg_id = %m.msg_id, "cmq ingress: a message without a receipt handle cannot be deleted; CMQ drops it after the queue's unack time");
                }
                Some(m.receipt_handle.as_str())
            }
            Disposition::Retry(reason) => {
                count_event(ctx, "failed");
                tracing::warn!(msg_id = %m.msg_id, reason, "cmq ingress: event outcome not stored");
                None
            }
        }
    });
    futures::future::join_all(settles)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One message: its event through the completion handler (an unreadable one straight to the dead
/// letters), then the poison guard over CMQ's count of its receives.
async fn settle<B: Broker + Clone, C: CiApi>(
    ctx: &Context<B, C>,
    origin: &str,
    m: &ReceivedMessage,
) -> Disposition {
    let properties = HashMap::from([
        ("ci-worker-ingress".to_string(), "cmq".to_string()),
        ("cmq-msg-id".to_string(), m.msg_id.clone()),
        ("cmq-dequeue-count".to_string(), m.dequeue_count.to_string()),
    ]);
    let payload = event_bytes(&m.msg_body);
    let inbound = Inbound {
        payload: &payload,
        properties: &properties,
        key: None,
        origin,
        id: &m.msg_id,
        deliveries: u32::try_from(m.dequeue_count.max(1)).unwrap_or(u32::MAX),
    };
    let verdict = match &m.unreadable {
        Some(reason) => match dead_letter::publish(ctx, inbound, SOURCE, reason).await {
            Ok(()) => Disposition::Ack,
            Err(e) => Disposition::Retry(format!("could not dead-letter: {e}")),
        },
        None => handle(ctx, inbound).await,
    };
    poison::settle(ctx, inbound, SOURCE, verdict).await
}

/// Deletes the settled messages, retrying a failed call a few times (a message not deleted is
/// received again after its visibility timeout, and its second final suppressed).
async fn delete_settled<B: Broker + Clone, C: CiApi>(
    ctx: &Context<B, C>,
    cmq: &CmqClient,
    queue: &str,
    handles: &[&str],
) {
    if handles.is_empty() {
        return;
    }
    let w = &ctx.settings.worker;
    let deleted = (|| cmq.batch_delete(queue, handles))
        .retry(retry::backoff(
            w.retry_base_delay,
            w.retry_max_delay,
            DELETE_ATTEMPTS as usize - 1,
        ))
        .when(CmqError::is_transient)
        .notify(|error: &CmqError, _| count_call(ctx, "BatchDeleteMessage", &error.label()))
        .await;
    match deleted {
        Ok(outcome) => {
            count_call(
                ctx,
                "BatchDeleteMessage",
                if outcome.failed.is_empty() {
                    "ok"
                } else {
                    "partial"
                },
            );
            for failure in &outcome.failed {
                tracing::info!(
                    queue,
                    code = failure.code,
                    message = %failure.message,
                    "cmq ingress: a handled event was not deleted (its receipt handle expired); CMQ shows it again and its second final is suppressed"
                );
            }
        }
        Err(error) => {
            count_call(ctx, "BatchDeleteMessage", &error.label());
            tracing::warn!(
                queue,
                %error,
                events = handles.len(),
                "cmq ingress: handled events not deleted; CMQ shows them again and their second finals are suppressed"
            );
        }
    }
}

fn log_failure(error: &CmqError, queue: &str, pause: Duration) {
    if error.is_transient() {
        tracing::warn!(queue, %error, retry_in = ?pause, "cmq ingress: receive failed; retrying");
    } else {
        // Credentials, a queue that does not exist: needs an operator, but keep trying.
        tracing::error!(queue, %error, retry_in = ?pause, "cmq ingress: CMQ refused the receive; check cmq.endpoint, cmq.queue and the credentials");
    }
}

fn count_call<B: Broker + Clone, C: CiApi>(ctx: &Context<B, C>, action: &str, outcome: &str) {
    ctx.metrics
        .cmq_calls
        .get_or_create(&CmqCallLabels {
            action: action.into(),
            outcome: outcome.into(),
        })
        .inc();
}

fn count_event<B: Broker + Clone, C: CiApi>(ctx: &Context<B, C>, outcome: &str) {
    ctx.metrics
        .ingress_events
        .get_or_create(&IngressLabels {
            source: "cmq".into(),
            outcome: outcome.into(),
        })
        .inc();
}

async fn pause_or_stop(pause: Duration, stop: &Shutdown) {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = stop.triggered() => {}
    }
}

/// Resolves `grace` after `stop` is triggered.
async fn stopped_then(stop: &Shutdown, grace: Duration) {
    stop.triggered().await;
    tokio::time::sleep(grace).await;
}
