//! The benchmark's own Pulsar traffic: pre-publishing, counting what arrives on a topic, the raw
//! relay it compares the worker with, and deleting its topics afterwards.

use crate::config::Settings;
use crate::pulsar::raw::{RawProducer, Receipt, Tail};
use crate::pulsar::{Client, SubscribeOptions, SubscriptionKind};
use anyhow::{bail, Context as _, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Receipts awaited at once while pre-publishing.
const PUBLISH_WINDOW: usize = 1000;

/// A producer for the benchmark's own messages: batching off (as the worker's and the emulator's,
/// so consumers see one message per entry), and waiting for room instead of failing when the
/// connection's queue is full.
pub async fn producer(client: &Client, topic: &str) -> Result<RawProducer> {
    RawProducer::new(client, topic, "ci-worker-bench")
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
            .send(payload, key)
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
    producer.close().await;
    Ok(started.elapsed())
}

/// What a paced publication achieved.
#[derive(Debug, Clone, Copy)]
pub struct Paced {
    pub published: u64,
    /// From the first message's scheduled time to the last one handed to the crate.
    pub secs: f64,
    /// The worst delay of a message behind its scheduled time.
    pub max_lag: Duration,
}

impl Paced {
    /// Messages per second achieved.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.published as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Publishes `count` messages at `rate` per second, one at a time on a timer (message `i` at start +
/// i/rate; none waits for an earlier one's receipt, whose receipts are awaited by a task of their
/// own), counting each in `published` as it is handed to the crate; fails if the broker refused one.
pub async fn publish_paced(
    client: &Client,
    topic: &str,
    rate: f64,
    count: u64,
    published: &AtomicU64,
    mut payload: impl FnMut(u64) -> (Vec<u8>, Option<String>),
) -> Result<Paced> {
    let mut producer = producer(client, topic).await?;
    let (receipt_tx, mut receipt_rx) = tokio::sync::mpsc::unbounded_channel::<Receipt>();
    let receipts = tokio::spawn(async move {
        let mut failed = 0u64;
        while let Some(r) = receipt_rx.recv().await {
            if r.await.is_err() {
                failed += 1;
            }
        }
        failed
    });
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut max_lag = Duration::ZERO;
    for i in 0..count {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(at));
        let (payload, key) = payload(i);
        let receipt = producer
            .send(payload, key)
            .await
            .with_context(|| format!("publishing to {topic}"))?;
        published.fetch_add(1, Ordering::Relaxed);
        let _ = receipt_tx.send(receipt);
    }
    let secs = start.elapsed().as_secs_f64();
    drop(receipt_tx);
    let failed = receipts.await.unwrap_or(0);
    producer.close().await;
    if failed > 0 {
        bail!("{failed} of {count} messages to {topic} were not stored by the broker");
    }
    Ok(Paced {
        published: count,
        secs,
        max_lag,
    })
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
pub async fn follow(client: &Client, topic: &str) -> Result<Tail> {
    Tail::subscribe(client, topic)
        .await
        .with_context(|| format!("subscribing to {topic}"))
}

/// Receives until `done` says so or `limit` passes. `keep_payload` keeps each message's payload.
pub async fn collect(
    mut consumer: Tail,
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
        let s = Seen {
            publish_ms: next.publish_ms(),
            received: Instant::now(),
            key: next.key(),
            state: next.property("state"),
            payload: keep_payload.then(|| next.payload().to_vec()),
        };
        let finished = done(&s);
        seen.push(s);
        if finished || seen.len() % 1000 == 0 {
            consumer.ack_through(&next).await;
        }
        if finished {
            consumer.close().await;
            return Ok(seen);
        }
    }
}

/// A request to the admin REST API about a persistent `topic`: `{admin_url}/admin/v2/persistent/
/// {tenant}/{ns}/{topic}{suffix}`, with the token when there is one; `None` for another topic kind.
pub fn admin_topic_request(
    http: &reqwest::Client,
    method: reqwest::Method,
    admin_url: &str,
    token: &str,
    topic: &str,
    suffix: &str,
) -> Option<reqwest::RequestBuilder> {
    let path = topic.strip_prefix("persistent://")?;
    let url = format!(
        "{}/admin/v2/persistent/{path}{suffix}",
        admin_url.trim_end_matches('/')
    );
    let req = http.request(method, url).timeout(Duration::from_secs(30));
    Some(if token.is_empty() {
        req
    } else {
        req.bearer_auth(token)
    })
}

/// The persistent topics of `namespace` (`tenant/ns`) as the broker lists them
/// (`GET /admin/v2/persistent/{tenant}/{ns}`): partitions as `<topic>-partition-<i>`.
pub async fn namespace_topics(
    http: &reqwest::Client,
    admin_url: &str,
    token: &str,
    namespace: &str,
) -> Result<Vec<String>> {
    let url = format!(
        "{}/admin/v2/persistent/{namespace}",
        admin_url.trim_end_matches('/')
    );
    let mut req = http.get(&url).timeout(Duration::from_secs(30));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("listing the topics of {namespace}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("listing the topics of {namespace}"))?;
    if !status.is_success() {
        bail!("listing the topics of {namespace}: HTTP {status} {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("the topics of {namespace}: {text}"))
}

/// Deletes topics through the admin REST API (best effort; the broker keeps them otherwise).
pub async fn delete_topics(admin_url: &str, token: &str, topics: &[String]) -> usize {
    let http = reqwest::Client::new();
    let mut deleted = 0;
    for topic in topics {
        let Some(req) = admin_topic_request(
            &http,
            reqwest::Method::DELETE,
            admin_url,
            token,
            topic,
            "?force=true",
        ) else {
            continue;
        };
        let resp = match req.send().await {
            // A partitioned topic (409 to a plain delete) is deleted with its partitions.
            Ok(r) if r.status().as_u16() == 409 => {
                match admin_topic_request(
                    &http,
                    reqwest::Method::DELETE,
                    admin_url,
                    token,
                    topic,
                    "/partitions?force=true",
                ) {
                    Some(req) => req.send().await,
                    None => Ok(r),
                }
            }
            other => other,
        };
        match resp {
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
    let from = SubscribeOptions {
        topic: p.callback_topic.clone(),
        subscription: p.callback_subscription.clone(),
        name_prefix: "ci-worker-bench-relay".into(),
        receiver_queue_size: 1000,
        dead_letter: Some((
            settings.worker.max_redeliveries,
            p.dead_letter_topic.clone(),
        )),
        from_earliest: true,
        kind: SubscriptionKind::Shared,
    };
    let max_in_flight = settings.worker.max_in_flight.max(256);
    crate::pulsar::relay::run(&client, &from, &p.result_topic, max_in_flight).await
}
