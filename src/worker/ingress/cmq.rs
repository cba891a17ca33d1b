//! The `cmq` ingress: reads the TDMQ for CMQ queue CI writes completion events into and stores each
//! event in `pulsar.callback_topic`, where the completion path reads it.
//!
//! One loop per `cmq.concurrency`: `BatchReceiveMessage` (long poll `cmq.polling_wait`, up to
//! `cmq.batch_size`) → publish every body, keyed by job ID → once the broker has stored them,
//! `BatchDeleteMessage` with their receipt handles. What could not be stored is not deleted: CMQ
//! shows it again after the queue's visibility timeout. A delete that fails leaves the message to be
//! received and stored again; the completion path suppresses the second copy. CMQ's "no message"
//! answer is not an error; other errors and throttling back off (`worker.retry_*`) and show in
//! `ci_worker_cmq_calls_total`, the log and readiness (`cmq`). Several replicas may read one queue:
//! CMQ hands each message to one receiver at a time.

use super::event::{event_bytes, event_key};
use crate::cmq::api::ReceivedMessage;
use crate::cmq::client::{CmqClient, CmqError};
use crate::pulsar::Outgoing;
use crate::shutdown::Shutdown;
use crate::telemetry::{CmqCallLabels, IngressLabels, SourceLabel};
use crate::worker::context::Context;
use crate::worker::io::{Broker, CiApi};
use crate::worker::pace::retry;
use backon::Retryable;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The readiness name of this source.
pub const HEALTH_NAME: &str = "cmq";
/// Deletes of one batch tried before the batch is left to CMQ's visibility timeout.
const DELETE_ATTEMPTS: u32 = 3;
/// How long storing one event may take before it counts as not stored (and is not deleted).
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

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
        let stored = tokio::select! {
            stored = store_batch(&ctx, &messages, arrived) => stored,
            _ = stopped_then(&stop, grace) => {
                tracing::warn!(queue, "cmq ingress: shutdown: a batch was not stored in time; CMQ shows it again");
                break;
            }
        };
        let not_stored = messages.len() - stored.len();
        delete_stored(&ctx, &cmq, &queue, &stored).await;
        if not_stored > 0 {
            // The broker is in trouble: give it a moment before taking more.
            let pause = retry::delay(w, 0);
            tracing::warn!(
                queue,
                not_stored,
                "cmq ingress: events not stored in the callback topic; left in CMQ (shown again after its visibility timeout)"
            );
            pause_or_stop(pause, &stop).await;
        }
    }
}

/// Stores every message's event in the callback topic; returns the receipt handles of those stored.
async fn store_batch<'m, B: Broker + Clone, C: CiApi>(
    ctx: &Context<B, C>,
    messages: &'m [ReceivedMessage],
    arrived: Instant,
) -> Vec<&'m str> {
    let topic = &ctx.settings.pulsar.callback_topic;
    let stores = messages.iter().map(|m| async move {
        let payload = event_bytes(&m.msg_body);
        let mut msg = Outgoing::new(payload.to_vec())
            .with_property("ci-worker-ingress", "cmq")
            .with_property("cmq-msg-id", m.msg_id.clone())
            .with_property("cmq-dequeue-count", m.dequeue_count.to_string());
        if let Some(key) = event_key(&payload) {
            msg = msg.with_key(key);
        }
        let outcome = tokio::time::timeout(STORE_TIMEOUT, ctx.broker.publish(topic, msg)).await;
        match outcome {
            Ok(Ok(())) => {
                count_event(ctx, "stored");
                ctx.metrics
                    .ingress_store_duration
                    .get_or_create(&SourceLabel {
                        source: "cmq".into(),
                    })
                    .observe(arrived.elapsed().as_secs_f64());
                Some(m.receipt_handle.as_str())
            }
            Ok(Err(error)) => {
                count_event(ctx, "failed");
                tracing::warn!(msg_id = %m.msg_id, %error, "cmq ingress: event not stored");
                None
            }
            Err(_) => {
                count_event(ctx, "failed");
                tracing::warn!(msg_id = %m.msg_id, "cmq ingress: event not stored within {STORE_TIMEOUT:?}");
                None
            }
        }
    });
    futures::future::join_all(stores)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Deletes the stored messages, retrying a failed call a few times (a message not deleted is
/// received again after its visibility timeout, and its second copy suppressed downstream).
async fn delete_stored<B: Broker + Clone, C: CiApi>(
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
                    "cmq ingress: a stored event was not deleted (its receipt handle expired); CMQ shows it again and its copy is suppressed"
                );
            }
        }
        Err(error) => {
            count_call(ctx, "BatchDeleteMessage", &error.label());
            tracing::warn!(
                queue,
                %error,
                events = handles.len(),
                "cmq ingress: stored events not deleted; CMQ shows them again and their copies are suppressed"
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
