//! The benchmark's own Pulsar traffic: pre-publishing, counting what arrives on a topic, the raw
//! relay it compares the worker with, and deleting its topics afterwards.

use crate::config::Settings;
use crate::pulsar::{Client, SubscribeOptions};
use anyhow::{bail, Context as _, Result};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::producer::Message;
use pulsar::proto::{CommandSendReceipt, MessageIdData};
use pulsar::{Consumer, Producer, SubType, TokioExecutor};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Receipts awaited at once while pre-publishing.
const PUBLISH_WINDOW: usize = 1000;

/// A producer for the benchmark's own messages: batching off (as the worker's and the emulator's,
/// so consumers see one message per entry), and waiting for room instead of failing when the
/// connection's queue is full.
pub async fn producer(client: &Client, topic: &str) -> Result<Producer<TokioExecutor>> {
    client
        .producer()
        .with_topic(topic)
        .with_name(format!("ci-worker-bench-{}", uuid::Uuid::new_v4()))
        .with_options(crate::pulsar::producer_options())
        .build()
        .await
        .with_context(|| format!("creating a producer on {topic}"))
}

/// Publishes `payloads` (with `key(i)` as key) and waits until the broker has stored all of them.
pub async fn publish_all(
    client: &Client,
    topic: &str,
    count: u64,
    mut payload: impl FnMut(u64) -> (Vec<u8>, Option<String>),
) -> Result<Duration> {
    let started = Instant::now();
    let mut producer = producer(client, topic).await?;
    let mut receipts = VecDeque::with_capacity(PUBLISH_WINDOW);
    for i in 0..count {
        let (payload, key) = payload(i);
        let receipt = producer
            .send_non_blocking(Message {
                payload,
                partition_key: key,
                ..Message::default()
            })
            .await
            .with_context(|| format!("publishing to {topic}"))?;
        receipts.push_back(receipt);
        if receipts.len() >= PUBLISH_WINDOW {
            if let Some(r) = receipts.pop_front() {
                r.await.with_context(|| format!("publishing to {topic}"))?;
            }
        }
    }
    for r in receipts {
        r.await.with_context(|| format!("publishing to {topic}"))?;
    }
    let _ = producer.close().await;
    Ok(started.elapsed())
}

/// One message seen on a followed topic.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `publish_time` of the message: the producing client's clock when it sent it (ms since epoch).
    pub publish_ms: u64,
    /// When the benchmark received it.
    pub received: Instant,
    pub key: Option<String>,
    /// The `state` property (results).
    pub state: Option<String>,
    pub payload: Option<Vec<u8>>,
}

/// An Exclusive subscription from the earliest message, created now (before anything is published to
/// the topic by the process under test). Acked cumulatively, so the broker does not pay for one ack
/// per message on the benchmark's side.
pub async fn follow(client: &Client, topic: &str) -> Result<Consumer<Vec<u8>, TokioExecutor>> {
    client
        .consumer()
        .with_topic(topic)
        .with_subscription(format!("ci-worker-bench-{}", uuid::Uuid::new_v4()))
        .with_subscription_type(SubType::Exclusive)
        .with_options(
            ConsumerOptions::default()
                .with_initial_position(InitialPosition::Earliest)
                .with_receiver_queue_size(2000),
        )
        .build()
        .await
        .with_context(|| format!("subscribing to {topic}"))
}

/// Receives until `done` says so or `limit` passes. `keep_payload` keeps each message's payload.
pub async fn collect(
    mut consumer: Consumer<Vec<u8>, TokioExecutor>,
    limit: Duration,
    keep_payload: bool,
    mut done: impl FnMut(&Seen) -> bool + Send,
) -> Result<Vec<Seen>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => bail!("consumer error: {e}"),
            Ok(None) => bail!("consumer ended after {} messages", seen.len()),
            Err(_) => bail!("timed out after {limit:?} with {} messages", seen.len()),
        };
        let meta = next.metadata();
        let s = Seen {
            publish_ms: meta.publish_time,
            received: Instant::now(),
            key: next.key(),
            state: meta
                .properties
                .iter()
                .find(|kv| kv.key == "state")
                .map(|kv| kv.value.clone()),
            payload: keep_payload.then(|| next.payload.data.clone()),
        };
        let finished = done(&s);
        seen.push(s);
        if finished || seen.len() % 1000 == 0 {
            let _ = consumer.cumulative_ack(&next).await;
        }
        if finished {
            let _ = consumer.close().await;
            return Ok(seen);
        }
    }
}

/// Deletes topics through the admin REST API (best effort; the broker keeps them otherwise).
pub async fn delete_topics(admin_url: &str, token: &str, topics: &[String]) -> usize {
    let http = reqwest::Client::new();
    let mut deleted = 0;
    for topic in topics {
        let Some(path) = topic.strip_prefix("persistent://") else {
            continue;
        };
        let url = format!(
            "{}/admin/v2/persistent/{path}?force=true",
            admin_url.trim_end_matches('/')
        );
        let mut req = http.delete(&url).timeout(Duration::from_secs(30));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => deleted += 1,
            Ok(r) => tracing::warn!(topic, status = %r.status(), "bench: could not delete a topic"),
            Err(e) => tracing::warn!(topic, error = %e, "bench: could not delete a topic"),
        }
    }
    deleted
}

/// The raw relay limit: the least a consumer→producer forwarder on the same `pulsar` crate does with
/// the worker's settings — a Shared consumer from `crate::pulsar::subscribe` (receiver queue 1000, the
/// dead-letter policy), one producer with batching off, the same bound on messages in flight
/// (`max(worker.max_in_flight, 256)`), each message acknowledged individually once the broker has
/// stored its copy — forwarding `pulsar.callback_topic` to `pulsar.result_topic` without reading it.
/// Its producer has the worker's options ([`crate::pulsar::producer_options`]). Runs until killed.
pub async fn relay(settings: &Settings) -> Result<()> {
    let p = &settings.pulsar;
    let client = crate::pulsar::connect_with(p).await?;
    let mut consumer = crate::pulsar::subscribe(
        &client,
        &SubscribeOptions {
            topic: p.callback_topic.clone(),
            subscription: p.callback_subscription.clone(),
            name_prefix: "ci-worker-bench-relay".into(),
            receiver_queue_size: 1000,
            dead_letter: Some((
                settings.worker.max_redeliveries,
                p.dead_letter_topic.clone(),
            )),
            from_earliest: true,
            key_shared: false,
        },
    )
    .await?;
    let mut producer = client
        .producer()
        .with_topic(&p.result_topic)
        .with_name(format!("ci-worker-bench-relay-{}", uuid::Uuid::new_v4()))
        .with_options(crate::pulsar::producer_options())
        .build()
        .await
        .context("creating the relay's producer")?;
    let max_in_flight = settings.worker.max_in_flight.max(256);
    let mut in_flight = FuturesUnordered::new();
    let mut slow_downs: u64 = 0;
    let mut forwarded: u64 = 0;
    tracing::info!(from = %p.callback_topic, to = %p.result_topic, max_in_flight, "bench relay started");
    loop {
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let (topic, id, receipt): (String, MessageIdData, Result<CommandSendReceipt, pulsar::Error>) = done;
                let outcome = match receipt {
                    Ok(_) => consumer.ack_with_id(&topic, id).await,
                    Err(_) => consumer.nack_with_id(&topic, id).await,
                };
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "bench relay: settling failed");
                }
                forwarded += 1;
                if forwarded % 10_000 == 0 {
                    tracing::info!(forwarded, slow_downs, "bench relay progress");
                }
            }
            next = consumer.next(), if in_flight.len() < max_in_flight => {
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "bench relay: consumer error");
                        continue;
                    }
                    None => bail!("the relay's consumer ended"),
                };
                let topic = msg.topic.clone();
                let id = msg.message_id().clone();
                let payload = msg.payload.data;
                let receipt = loop {
                    let out = Message { payload: payload.clone(), ..Message::default() };
                    match producer.send_non_blocking(out).await {
                        Ok(receipt) => break receipt,
                        Err(pulsar::Error::Producer(pulsar::error::ProducerError::Connection(
                            pulsar::error::ConnectionError::SlowDown,
                        ))) => {
                            slow_downs += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(e) => bail!("the relay's producer failed: {e}"),
                    }
                };
                in_flight.push(async move { (topic, id, receipt.await) });
            }
        }
    }
}
