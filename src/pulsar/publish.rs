//! Publishing: [`Outgoing`] messages through a [`Publisher`].
//!
//! The publisher keeps one producer per topic (creating a producer per message is the classic
//! throughput killer) and waits for the broker's receipt so callers ack their input only after their
//! output is stored. Batching is off except on the topics named with [`Publisher::batch`] (the
//! results): the crate acknowledges a whole batch with its first message, so a batch consumed by this
//! crate (the worker's own topics) could lose the rest of it when a consumer dies.
//!
//! With an HTTP lookup, a partitioned topic's producer is one crate producer per partition, each on
//! the broker that partition's own lookup named ([`Client::route`]), and a message goes to the
//! partition the crate's partitioned producer would choose ([`choose_partition`]).

use super::client::{broker_retry_delay, Client, CrateClient, Route};
use super::error::PulsarIoError;
use crate::shutdown::Shutdown;
use pulsar::producer::{Message as OutMessage, ProducerOptions, SendFuture};
use pulsar::routing_policy::RoutingPolicy;
use pulsar::{Producer, TokioExecutor};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub payload: Vec<u8>,
    pub key: Option<String>,
    pub properties: HashMap<String, String>,
    /// Delayed delivery (honoured by Shared / Key_Shared subscriptions only).
    pub deliver_at: Option<SystemTime>,
}

impl Outgoing {
    pub fn new(payload: impl Into<Vec<u8>>) -> Outgoing {
        Outgoing {
            payload: payload.into(),
            ..Outgoing::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Outgoing {
        self.key = Some(key.into());
        self
    }

    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Outgoing {
        self.properties.insert(name.into(), value.into());
        self
    }

    fn into_message(self) -> OutMessage {
        OutMessage {
            payload: self.payload,
            properties: self.properties,
            partition_key: self.key,
            deliver_at_time: self.deliver_at.and_then(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as i64)
            }),
            ..OutMessage::default()
        }
    }
}

/// The options of every producer the worker builds (the benchmark's relay uses them too, so that it
/// measures the same settings): batching off (see the module doc), and under load wait for room in
/// the crate's send queue rather than fail with SlowDown (which would needlessly rebuild the
/// producer).
pub fn producer_options() -> ProducerOptions {
    ProducerOptions {
        batch_size: None,
        block_queue_if_full: true,
        ..ProducerOptions::default()
    }
}

/// Producer batching of one topic ([`Publisher::batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_messages: u32,
    pub max_delay: Duration,
}

/// Bytes of one batch at most. The crate keeps one batch in flight per producer (the next is sent
/// once the broker has stored the last), so a batch must carry a whole round trip's results: with
/// the Apache clients' 128 KiB (about 36 results of 3.5 KiB) the results topped out near 15,000/s.
/// Well under the broker's 5 MiB message limit.
const BATCH_MAX_BYTES: usize = 1024 * 1024;

impl Batching {
    fn options(self) -> ProducerOptions {
        ProducerOptions {
            batch_size: Some(self.max_messages),
            batch_byte_size: Some(BATCH_MAX_BYTES),
            batch_timeout: Some(self.max_delay),
            ..producer_options()
        }
    }
}

/// A topic's producer: one crate producer (a binary URL's, which routes among the partitions
/// itself, or a topic that is not partitioned), or one per partition, routed here.
struct TopicProducer {
    /// One, or each partition's in partition order.
    parts: Vec<Producer<TokioExecutor>>,
    routing: Option<RoutingPolicy>,
    /// The partition chosen last (round robin).
    last: usize,
}

impl TopicProducer {
    fn one(producer: Producer<TokioExecutor>) -> TopicProducer {
        TopicProducer {
            parts: vec![producer],
            routing: None,
            last: 0,
        }
    }

    async fn send_non_blocking(
        &mut self,
        message: OutMessage,
    ) -> Result<SendFuture, pulsar::Error> {
        let n = match self.parts.len() {
            1 => 0,
            len => choose_partition(self.routing.as_ref(), &message, len, &mut self.last),
        };
        self.parts[n].send_non_blocking(message).await
    }

    fn partitioned(&self) -> bool {
        self.parts.len() > 1 || self.parts.iter().any(|p| p.partitions().is_some())
    }

    async fn check_connection(&self) -> Result<(), pulsar::Error> {
        for p in &self.parts {
            p.check_connection().await?;
        }
        Ok(())
    }

    /// Closes every partition's producer; the first failure is returned once all were tried.
    async fn close(&mut self) -> Result<(), pulsar::Error> {
        let mut outcome = Ok(());
        for p in &mut self.parts {
            let closed = p.close().await;
            if outcome.is_ok() {
                outcome = closed;
            }
        }
        outcome
    }
}

/// The partition (of `n`) `message` goes to, as the crate's partitioned producer chooses with the
/// same `routing`: by the key's hash under `RoundRobin` when the message has a key, the policy's
/// choice under `Custom`, the last partition again under `Single`, else the next in turn after
/// `last` (which it updates).
pub fn choose_partition(
    routing: Option<&RoutingPolicy>,
    message: &OutMessage,
    n: usize,
    last: &mut usize,
) -> usize {
    let n = n.max(1);
    let chosen = match (routing, &message.partition_key) {
        (Some(RoutingPolicy::RoundRobin), Some(key)) => {
            return RoutingPolicy::compute_partition_index_for_key(key, n)
        }
        (Some(RoutingPolicy::Custom(policy)), _) => return policy.route(message, n) % n,
        (Some(RoutingPolicy::Single), _) => *last % n,
        _ => (*last + 1) % n,
    };
    *last = chosen;
    chosen
}

type SharedProducer = Arc<Mutex<TopicProducer>>;
/// A topic's producer, built once by whichever publish needs it first while the others wait on it.
type ProducerSlot = Arc<tokio::sync::OnceCell<SharedProducer>>;

/// Publishes to any number of topics through one cached producer each. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    /// Held only to find a topic's slot, never while a producer is built: a topic whose producer
    /// cannot be created (a broker that leaves the request unanswered) must not hold up the others.
    producers: Arc<parking_lot::Mutex<HashMap<String, ProducerSlot>>>,
    name_prefix: String,
    /// Counts producers dropped after a failure (the `pulsar_reconnects` metric).
    rebuilds: Option<prometheus_client::metrics::counter::Counter>,
    /// Topics whose producers batch.
    batched: Arc<HashMap<String, Batching>>,
}

/// A crate producer on `topic` (a topic, or one partition) on `pulsar`.
async fn build(
    pulsar: &CrateClient,
    topic: &str,
    name: &str,
    options: &ProducerOptions,
) -> Result<Producer<TokioExecutor>, PulsarIoError> {
    pulsar
        .producer()
        .with_topic(topic)
        .with_name(name)
        .with_options(options.clone())
        .build()
        .await
        .map_err(|source| PulsarIoError::Producer {
            topic: topic.to_string(),
            source,
        })
}

/// Attempts of one publish; each failure drops the producer so the next attempt builds a fresh one
/// (the crate has had producers that never recover after a broker restart).
const PUBLISH_ATTEMPTS: u32 = 5;

/// How long one start-up check may take: well above a healthy broker's answer (milliseconds, a few
/// seconds while it loads topics), well below the 30 s a lost answer would otherwise cost.
const STARTUP_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl Publisher {
    /// `name_prefix` names the producers (`<prefix>-<uuid>`), which shows up in the broker's stats.
    pub fn new(client: Client, name_prefix: &str) -> Publisher {
        Publisher {
            client,
            producers: Arc::default(),
            name_prefix: name_prefix.to_string(),
            rebuilds: None,
            batched: Arc::default(),
        }
    }

    /// Batches what is published to `topic` (see the module doc for whose consumers may read it).
    pub fn batch(mut self, topic: &str, batching: Batching) -> Publisher {
        Arc::make_mut(&mut self.batched).insert(topic.to_string(), batching);
        self
    }

    /// Counts every producer rebuilt after a failure on `counter`.
    pub fn count_rebuilds(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Publisher {
        self.rebuilds = Some(counter);
        self
    }

    fn slots(&self) -> parking_lot::MutexGuard<'_, HashMap<String, ProducerSlot>> {
        self.producers.lock()
    }

    async fn producer(&self, topic: &str) -> Result<SharedProducer, PulsarIoError> {
        let slot = {
            let mut slots = self.slots();
            match slots.get(topic) {
                Some(slot) => slot.clone(),
                None => slots.entry(topic.to_string()).or_default().clone(),
            }
        };
        if let Some(producer) = slot.get() {
            return Ok(producer.clone());
        }
        // Boxed: the builder's future is several KiB, and inlined it would be copied into every
        // publish's future (measured: that memcpy is a fifth of the completion path's samples).
        let producer = slot
            .get_or_try_init(|| {
                Box::pin(async {
                    let options = self
                        .batched
                        .get(topic)
                        .map_or_else(producer_options, |b| b.options());
                    let name = format!("{}-{}", self.name_prefix, uuid::Uuid::new_v4());
                    let producer = match self.client.route(topic).await? {
                        Route::Whole(pulsar) => {
                            TopicProducer::one(build(&pulsar, topic, &name, &options).await?)
                        }
                        Route::Parts(parts) if parts.iter().all(|p| !p.partition) => {
                            let part = &parts[0];
                            TopicProducer::one(
                                build(&part.client, &part.topic, &name, &options).await?,
                            )
                        }
                        Route::Parts(parts) => {
                            let built = futures::future::try_join_all(parts.iter().map(|part| {
                                let (name, options) = (&name, &options);
                                async move {
                                    let producer =
                                        build(&part.client, &part.topic, name, options).await?;
                                    tracing::debug!(topic = %part.topic, broker = %part.broker, "producer on the looked-up broker");
                                    Ok::<_, PulsarIoError>(producer)
                                }
                            }))
                            .await?;
                            TopicProducer {
                                last: rand::random_range(0..built.len()),
                                parts: built,
                                routing: options.routing_policy.clone(),
                            }
                        }
                    };
                    Ok::<_, PulsarIoError>(Arc::new(Mutex::new(producer)))
                })
            })
            .await?;
        Ok(producer.clone())
    }

    fn forget_topic(&self, topic: &str) {
        self.slots().remove(topic);
    }

    fn forget(&self, topic: &str, failed: &SharedProducer) {
        let mut slots = self.slots();
        let current = slots.get(topic).and_then(|slot| slot.get());
        if current.is_some_and(|p| Arc::ptr_eq(p, failed)) {
            slots.remove(topic);
            if let Some(c) = &self.rebuilds {
                c.inc();
            }
        }
    }

    /// Publishes `msg` to `topic` and waits until the broker has stored it.
    pub async fn publish(&self, topic: &str, msg: Outgoing) -> Result<(), PulsarIoError> {
        self.publish_at(topic, msg).await.map(drop)
    }

    /// Like [`Publisher::publish`], and says where the broker stored it (ledger, entry), when its
    /// receipt tells.
    pub async fn publish_at(
        &self,
        topic: &str,
        msg: Outgoing,
    ) -> Result<Option<(u64, u64)>, PulsarIoError> {
        let mut last_error = String::new();
        for attempt in 0..PUBLISH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
            }
            let producer = match self.producer(topic).await {
                Ok(p) => p,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            // Enqueue under the lock, await the receipt outside it, so concurrent publishes pipeline.
            // The crate's send future is tens of KiB: boxed, it is not part of every waiting
            // publisher's state (a handler waiting for its receipt), nor copied with it.
            let receipt = {
                let mut guard = producer.lock().await;
                Box::pin(guard.send_non_blocking(msg.clone().into_message())).await
            };
            let outcome = match receipt {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(receipt) => {
                    return Ok(receipt.message_id.map(|id| (id.ledger_id, id.entry_id)));
                }
                Err(e) => {
                    last_error = e.to_string();
                    tracing::warn!(topic, attempt, error = %e, "publish failed; rebuilding producer");
                    self.forget(topic, &producer);
                }
            }
        }
        Err(PulsarIoError::Publish {
            topic: topic.to_string(),
            message: last_error,
        })
    }

    /// Checks that a producer on `topic` is connected (readiness).
    ///
    /// A partitioned topic's producer is not pinged: the crate pings all its partitions at once,
    /// mostly over one connection, which keeps a single pong slot, so the pings would cancel each
    /// other and the producer be rebuilt at every check. The cluster answering the topic's partition
    /// lookup (over HTTP with an HTTP URL) is the check instead.
    pub async fn check(&self, topic: &str) -> Result<(), PulsarIoError> {
        let producer = self.producer(topic).await?;
        let partitioned = producer.lock().await.partitioned();
        let result = if partitioned {
            self.client.partitions(topic).await.map(drop)
        } else {
            let connected = producer.lock().await.check_connection().await;
            connected.map_err(|source| PulsarIoError::Check {
                topic: topic.to_string(),
                source,
            })
        };
        if result.is_err() {
            self.forget(topic, &producer);
        }
        result
    }

    /// Waits until the broker accepts a producer on `topic`, retrying with backoff what a starting
    /// or restarting broker answers, and attempts that get no answer; returns at once on a refusal,
    /// and with `Ok(false)` when `stop` is triggered first.
    pub async fn wait_until_connected(
        &self,
        topic: &str,
        stop: &Shutdown,
    ) -> Result<bool, PulsarIoError> {
        let mut attempt = 0u32;
        loop {
            let outcome = tokio::select! {
                // The broker's answer to the producer's creation is the proof; no ping on top (the
                // crate keeps one pong slot per connection, and a ping racing its keep-alive ping
                // has been seen to wait for the next one, 30 s later).
                outcome = tokio::time::timeout(STARTUP_CHECK_TIMEOUT, self.producer(topic)) => outcome,
                _ = stop.triggered() => return Ok(false),
            };
            let error = match outcome {
                Ok(Ok(_)) => return Ok(true),
                Ok(Err(e)) if e.is_refusal() => return Err(e),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {STARTUP_CHECK_TIMEOUT:?}"),
            };
            // The hung attempt's producer may be half made: build a fresh one next time.
            self.forget_topic(topic);
            attempt += 1;
            tracing::warn!(
                topic,
                attempt,
                error,
                "broker not ready for a producer yet; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(broker_retry_delay(attempt)) => {}
                _ = stop.triggered() => return Ok(false),
            }
        }
    }

    /// Closes every producer (flushes what they hold).
    pub async fn close(&self) {
        let producers: Vec<SharedProducer> = self
            .slots()
            .drain()
            .filter_map(|(_, slot)| slot.get().cloned())
            .collect();
        for p in producers {
            let _ = p.lock().await.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str) -> OutMessage {
        Outgoing::new("x").with_key(key).into_message()
    }

    #[test]
    fn without_a_policy_partitions_take_turns_whatever_the_key() {
        // The worker's producer options set no policy: the crate's partitioned producer then
        // takes the partitions in turn, keys or not.
        assert!(producer_options().routing_policy.is_none());
        let mut last = 2;
        let chosen: Vec<usize> = (0..6)
            .map(|i| choose_partition(None, &keyed(&format!("k{}", i % 2)), 4, &mut last))
            .collect();
        assert_eq!(chosen, [3, 0, 1, 2, 3, 0]);
    }

    #[test]
    fn round_robin_routes_a_key_by_its_hash_and_the_rest_in_turn() {
        let policy = RoutingPolicy::RoundRobin;
        let mut last = 0;
        let a = choose_partition(Some(&policy), &keyed("request-a"), 4, &mut last);
        for _ in 0..5 {
            assert_eq!(
                choose_partition(Some(&policy), &keyed("request-a"), 4, &mut last),
                a
            );
        }
        assert_eq!(
            a,
            RoutingPolicy::compute_partition_index_for_key("request-a", 4)
        );
        let plain = Outgoing::new("x").into_message();
        let turns: Vec<usize> = (0..4)
            .map(|_| choose_partition(Some(&policy), &plain, 4, &mut last))
            .collect();
        assert_eq!(turns, [1, 2, 3, 0], "keyed messages leave the turn alone");
    }

    #[test]
    fn single_and_custom_policies_are_followed() {
        let mut last = 3;
        let plain = Outgoing::new("x").into_message();
        for _ in 0..3 {
            assert_eq!(
                choose_partition(Some(&RoutingPolicy::Single), &plain, 4, &mut last),
                3
            );
        }
        struct Second;
        impl pulsar::routing_policy::CustomRoutingPolicy for Second {
            fn route(&self, _: &OutMessage, _: usize) -> usize {
                1
            }
        }
        let custom = RoutingPolicy::Custom(Arc::new(Second));
        assert_eq!(choose_partition(Some(&custom), &plain, 4, &mut last), 1);
        assert_eq!(choose_partition(None, &plain, 1, &mut last), 0);
    }
}
