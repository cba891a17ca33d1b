//! Publishing: [`Outgoing`] messages through a [`Publisher`].
//!
//! The publisher keeps one producer per topic (creating a producer per message is the classic
//! throughput killer) and waits for the broker's receipt so callers ack their input only after their
//! output is stored. Batching is off except on the topics named with [`Publisher::batch`] (the
//! results): the crate acknowledges a whole batch with its first message, so a batch consumed by this
//! crate (the worker's own topics) could lose the rest of it when a consumer dies.

use super::client::{broker_retry_delay, Client};
use super::error::PulsarIoError;
use crate::shutdown::Shutdown;
use pulsar::producer::{Message as OutMessage, ProducerOptions};
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

type SharedProducer = Arc<Mutex<Producer<TokioExecutor>>>;
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
                    let producer = self
                        .client
                        .for_topic(topic)
                        .await?
                        .producer()
                        .with_topic(topic)
                        .with_name(format!("{}-{}", self.name_prefix, uuid::Uuid::new_v4()))
                        .with_options(
                            self.batched
                                .get(topic)
                                .map_or_else(producer_options, |b| b.options()),
                        )
                        .build()
                        .await
                        .map_err(|source| PulsarIoError::Producer {
                            topic: topic.to_string(),
                            source,
                        })?;
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
    /// other and the producer be rebuilt at every check. The broker answering the topic's partition
    /// lookup is the check instead.
    pub async fn check(&self, topic: &str) -> Result<(), PulsarIoError> {
        let producer = self.producer(topic).await?;
        let partitioned = producer.lock().await.partitions().is_some();
        let result = if partitioned {
            match self.client.for_topic(topic).await {
                Ok(pulsar) => pulsar
                    .lookup_partitioned_topic_number(topic)
                    .await
                    .map(drop),
                Err(e) => return Err(e),
            }
        } else {
            producer.lock().await.check_connection().await
        };
        if let Err(source) = result {
            self.forget(topic, &producer);
            return Err(PulsarIoError::Check {
                topic: topic.to_string(),
                source,
            });
        }
        Ok(())
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
