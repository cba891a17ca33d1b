//! The consume/settle loop both paths share.
//!
//! One task owns the consumer (the crate's ack/nack need `&mut`), takes a message only when a
//! concurrency permit is free, hands it to a spawned handler, and settles (acks or nacks) the handler's
//! verdict when it arrives. On shutdown it stops taking messages, waits for handlers up to the drain
//! timeout and nacks the rest, so that every message taken is either done or redelivered.

use super::WorkerError;
use crate::metrics::Metrics;
use crate::pulsar_io::{message_id_string, properties_of};
use futures::StreamExt;
use pulsar::proto::MessageIdData;
use pulsar::{Consumer, TokioExecutor};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// A handler's verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done: its outcome is safely on the broker.
    Ack,
    /// Not done: redeliver it (to this or another replica).
    Nack,
}

/// One received message, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub payload: Vec<u8>,
    pub properties: HashMap<String, String>,
    pub key: Option<String>,
    pub topic: String,
    /// `ledger:entry:partition[:batch]`, for logs and dead-letter properties.
    pub message_id: String,
    /// When the producer published it (the broker's clock).
    pub publish_time: std::time::SystemTime,
}

/// Runs until `stop` turns true (or the consumer ends), then drains.
pub async fn run<H, F>(
    name: &'static str,
    mut consumer: Consumer<Vec<u8>, TokioExecutor>,
    max_in_flight: usize,
    drain_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    handler: H,
) -> Result<(), WorkerError>
where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Disposition> + Send + 'static,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, Disposition)>();
    let mut pending: HashMap<u64, (String, MessageIdData)> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut seq: u64 = 0;
    let mut ended = false;

    'taking: loop {
        // A permit first, so the broker keeps the messages we cannot start yet (other replicas may).
        let permit = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break 'taking,
                Some((id, verdict)) = done_rx.recv() => {
                    settle(&mut consumer, &mut pending, &metrics, id, verdict).await;
                }
                permit = permits.clone().acquire_owned() => {
                    break permit.expect("semaphore is never closed");
                }
            }
        };
        let next = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break 'taking,
                Some((id, verdict)) = done_rx.recv() => {
                    settle(&mut consumer, &mut pending, &metrics, id, verdict).await;
                }
                next = consumer.next() => break next,
            }
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                tracing::warn!(loop_name = name, error = %e, "consumer error");
                continue;
            }
            None => {
                tracing::error!(loop_name = name, "consumer stream ended");
                ended = true;
                break;
            }
        };
        seq += 1;
        let delivery = Delivery {
            payload: msg.payload.data.clone(),
            properties: properties_of(&msg),
            key: msg.key(),
            topic: msg.topic.clone(),
            message_id: message_id_string(msg.message_id()),
            publish_time: std::time::UNIX_EPOCH
                + Duration::from_millis(msg.metadata().publish_time),
        };
        pending.insert(seq, (msg.topic.clone(), msg.message_id().clone()));
        let handler = handler.clone();
        let in_flight = metrics.in_flight.clone();
        in_flight.inc();
        let done_tx = done_tx.clone();
        let id = seq;
        tasks.spawn(async move {
            let verdict = handler(delivery).await;
            in_flight.dec();
            let _ = done_tx.send((id, verdict));
            drop(permit);
        });
    }

    // Drain: settle what finishes in time, nack the rest.
    tracing::info!(loop_name = name, in_flight = pending.len(), "draining");
    let deadline = tokio::time::Instant::now() + drain_timeout;
    while !pending.is_empty() {
        tokio::select! {
            Some((id, verdict)) = done_rx.recv() => {
                settle(&mut consumer, &mut pending, &metrics, id, verdict).await;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    tasks.abort_all();
    while let Ok((id, verdict)) = done_rx.try_recv() {
        settle(&mut consumer, &mut pending, &metrics, id, verdict).await;
    }
    let released = pending.len();
    for (_, (topic, msg_id)) in pending.drain() {
        metrics.redeliveries_requested.inc();
        let _ = consumer.nack_with_id(&topic, msg_id).await;
    }
    if released > 0 {
        tracing::warn!(
            loop_name = name,
            released,
            "released unfinished messages for redelivery"
        );
    }
    let _ = consumer.close().await;
    if ended {
        // Exit non-zero so a supervisor restarts the process with a fresh connection.
        return Err(WorkerError::Task(format!("{name}: consumer stream ended")));
    }
    Ok(())
}

/// Resolves once `stop` is true (dropping the watch guard before returning, to stay `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn settle(
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    pending: &mut HashMap<u64, (String, MessageIdData)>,
    metrics: &Metrics,
    id: u64,
    verdict: Disposition,
) {
    let Some((topic, msg_id)) = pending.remove(&id) else {
        return;
    };
    let outcome = match verdict {
        Disposition::Ack => consumer.ack_with_id(&topic, msg_id).await,
        Disposition::Nack => {
            metrics.redeliveries_requested.inc();
            consumer.nack_with_id(&topic, msg_id).await
        }
    };
    if let Err(e) = outcome {
        // The broker redelivers unacknowledged messages after a reconnect: at-least-once holds.
        tracing::warn!(?verdict, error = %e, "settling a message failed");
    }
}
