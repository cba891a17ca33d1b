//! Pulsar I/O: the only module that knows the `pulsar` crate's API.
//!
//! - [`connect`] builds one client per process (token auth, generous reconnection budget, since the
//!   crate gives up after its retry budget and a worker must outlive broker restarts).
//! - [`Publisher`] keeps one producer per topic (creating a producer per message is the classic
//!   throughput killer), batching off (the crate has no batch-index acks, so batches consumed by it can
//!   lose messages on redelivery), and waits for the broker's receipt so callers ack their input only
//!   after their output is stored.
//! - [`subscribe`] builds a Shared consumer with a unique consumer name, so replicas share the load.

use crate::config::PulsarSettings;
use crate::secret::Secret;
use pulsar::consumer::{ConsumerOptions, DeadLetterPolicy, InitialPosition};
use pulsar::error::ConnectionError;
use pulsar::producer::{Message as OutMessage, ProducerOptions};
use pulsar::{
    Authentication, ConnectionRetryOptions, Consumer, OperationRetryOptions, Producer, Pulsar,
    SubType, TokioExecutor,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

pub type Client = Pulsar<TokioExecutor>;

pub mod consume;

/// Property names the worker writes on dead letters (documented in the README).
pub mod props {
    /// Why the message was dead-lettered.
    pub const DLQ_REASON: &str = "ci-worker-dlq-reason";
    /// The topic the message was consumed from.
    pub const SOURCE_TOPIC: &str = "ci-worker-source-topic";
    /// The message id it had there (`ledger:entry:partition[:batch]`).
    pub const SOURCE_MESSAGE_ID: &str = "ci-worker-source-message-id";
    /// RFC 3339 time of dead-lettering.
    pub const DLQ_AT: &str = "ci-worker-dlq-at";
    /// Records on the deadline topic: `deadline` (due when the job should be checked) or `done`
    /// (the job's final result is out; its deadline needs no check).
    pub const RECORD: &str = "ci-worker-record";
    /// Poison messages: how many deliveries failed, and when the first did.
    pub const ATTEMPTS: &str = "ci-worker-attempts";
    pub const FIRST_FAILURE_AT: &str = "ci-worker-first-failure-at";
}

#[derive(Debug, thiserror::Error)]
pub enum PulsarIoError {
    #[error("cannot connect to Pulsar at {url}: {source}{}", refused_hint(.source))]
    Connect {
        url: String,
        #[source]
        source: pulsar::Error,
    },
    #[error("cannot create a producer on {topic}: {source}")]
    Producer {
        topic: String,
        #[source]
        source: pulsar::Error,
    },
    #[error("publishing to {topic} failed: {message}")]
    Publish { topic: String, message: String },
    #[error("the producer on {topic} is not connected: {source}")]
    Check {
        topic: String,
        #[source]
        source: pulsar::Error,
    },
    #[error("cannot subscribe to {topic} as {subscription}: {source}")]
    Subscribe {
        topic: String,
        subscription: String,
        #[source]
        source: pulsar::Error,
    },
}

impl PulsarIoError {
    /// Whether the broker refused us for a reason that waiting cannot fix (authentication,
    /// authorization, a bad or missing topic), as opposed to being slow, restarting or out of reach.
    /// Start-up gives up at once on a refusal and keeps retrying everything else.
    pub fn is_refusal(&self) -> bool {
        match self {
            PulsarIoError::Connect { source, .. } if handshake_refused(source) => true,
            PulsarIoError::Connect { source, .. }
            | PulsarIoError::Producer { source, .. }
            | PulsarIoError::Check { source, .. }
            | PulsarIoError::Subscribe { source, .. } => is_refusal(source),
            PulsarIoError::Publish { .. } => false,
        }
    }
}

/// The crate reports every refused handshake as this one `Other` I/O error (and logs the broker's
/// reason just before); a connection that was refused or timed out it would have kept retrying.
fn handshake_refused(e: &pulsar::Error) -> bool {
    matches!(e, pulsar::Error::Connection(ConnectionError::Io(io))
        if io.kind() == std::io::ErrorKind::Other)
}

/// What the crate's error hides: it drops the broker's reason for a refused handshake.
fn refused_hint(e: &pulsar::Error) -> &'static str {
    if handshake_refused(e) {
        " (the broker refused the handshake: check pulsar.token; the broker's reason is logged \
         just above)"
    } else {
        ""
    }
}

/// Backoff between attempts while waiting for the broker: 0.5 s more per attempt, at most 5 s.
pub fn broker_retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(500 * u64::from(attempt.clamp(1, 10)))
}

fn is_refusal(e: &pulsar::Error) -> bool {
    use pulsar::error::{ConsumerError, ProducerError, ServiceDiscoveryError};
    use pulsar::message::proto::ServerError;
    let connection = |c: &ConnectionError| match c {
        ConnectionError::PulsarError(Some(code), _) => Some(*code),
        ConnectionError::Authentication(_) => Some(ServerError::AuthenticationError),
        _ => None,
    };
    let code = match e {
        pulsar::Error::Authentication(_) => Some(ServerError::AuthenticationError),
        pulsar::Error::Connection(c)
        | pulsar::Error::Producer(ProducerError::Connection(c))
        | pulsar::Error::Consumer(ConsumerError::Connection(c))
        | pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Connection(c)) => connection(c),
        pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(code, _)) => *code,
        _ => None,
    };
    matches!(
        code,
        Some(
            ServerError::AuthenticationError
                | ServerError::AuthorizationError
                | ServerError::TopicNotFound
                | ServerError::InvalidTopicName
                | ServerError::NotAllowedError
                | ServerError::UnsupportedVersionError
                | ServerError::IncompatibleSchema
                | ServerError::TopicTerminatedError
        )
    )
}

/// Connects to `url`, with JWT authentication when `token` is set.
pub async fn connect(url: &str, token: &Secret) -> Result<Client, PulsarIoError> {
    let mut builder = Pulsar::builder(url, TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            // The crate's default (12) gives up within about a minute: a broker restart can take longer.
            max_retries: 1_000_000,
            connection_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            connection_max_idle: Duration::from_secs(300),
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
            max_retries: None,
        });
    if !token.is_empty() {
        builder = builder.with_auth(Authentication {
            name: "token".into(),
            data: token.expose().as_bytes().to_vec(),
        });
    }
    builder
        .build()
        .await
        .map_err(|source| PulsarIoError::Connect {
            url: url.to_string(),
            source,
        })
}

/// Connects with the `[pulsar]` settings.
pub async fn connect_with(settings: &PulsarSettings) -> Result<Client, PulsarIoError> {
    connect(&settings.url, &settings.token).await
}

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

type SharedProducer = Arc<Mutex<Producer<TokioExecutor>>>;
/// A topic's producer, built once by whichever publish needs it first while the others wait on it.
type ProducerSlot = Arc<tokio::sync::OnceCell<SharedProducer>>;

/// Publishes to any number of topics through one cached producer each. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    /// Held only to find a topic's slot, never while a producer is built: a topic whose producer
    /// cannot be created (a broker that leaves the request unanswered) must not hold up the others.
    producers: Arc<std::sync::Mutex<HashMap<String, ProducerSlot>>>,
    name_prefix: String,
    /// Counts producers dropped after a failure (the `pulsar_reconnects` metric).
    rebuilds: Option<prometheus_client::metrics::counter::Counter>,
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
        }
    }

    /// Counts every producer rebuilt after a failure on `counter`.
    pub fn count_rebuilds(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Publisher {
        self.rebuilds = Some(counter);
        self
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProducerSlot>> {
        self.producers.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn producer(&self, topic: &str) -> Result<SharedProducer, PulsarIoError> {
        let slot = {
            let mut slots = self.slots();
            match slots.get(topic) {
                Some(slot) => slot.clone(),
                None => slots.entry(topic.to_string()).or_default().clone(),
            }
        };
        let producer = slot
            .get_or_try_init(|| async {
                let producer = self
                    .client
                    .producer()
                    .with_topic(topic)
                    .with_name(format!("{}-{}", self.name_prefix, uuid::Uuid::new_v4()))
                    .with_options(producer_options())
                    .build()
                    .await
                    .map_err(|source| PulsarIoError::Producer {
                        topic: topic.to_string(),
                        source,
                    })?;
                Ok::<_, PulsarIoError>(Arc::new(Mutex::new(producer)))
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
            let receipt = {
                let mut guard = producer.lock().await;
                guard.send_non_blocking(msg.clone().into_message()).await
            };
            let outcome = match receipt {
                Ok(future) => future.await.map(|_| ()),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => return Ok(()),
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
    pub async fn check(&self, topic: &str) -> Result<(), PulsarIoError> {
        let producer = self.producer(topic).await?;
        let result = producer.lock().await.check_connection().await;
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
        stop: &crate::shutdown::Shutdown,
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

/// How a consumer is built.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub topic: String,
    pub subscription: String,
    /// Prefix of the unique consumer name.
    pub name_prefix: String,
    /// Messages the broker may push ahead of processing.
    pub receiver_queue_size: u32,
    /// After this many redeliveries the crate moves a message to `dead_letter_topic` (Shared only).
    pub dead_letter: Option<(u32, String)>,
    /// Where a new subscription starts: the earliest stored message (workers: nothing published before
    /// the first start is missed) or only new ones (followers such as `ci-worker submit --wait`).
    pub from_earliest: bool,
    /// Key_Shared instead of Shared: every message of one key goes to the same consumer (while the
    /// set of consumers is stable). Delayed delivery works with both.
    pub key_shared: bool,
}

/// A Shared consumer with a unique name.
pub async fn subscribe(
    client: &Client,
    opts: &SubscribeOptions,
) -> Result<Consumer<Vec<u8>, TokioExecutor>, PulsarIoError> {
    let mut builder = client
        .consumer()
        .with_topic(&opts.topic)
        .with_subscription(&opts.subscription)
        .with_subscription_type(if opts.key_shared {
            SubType::KeyShared
        } else {
            SubType::Shared
        })
        .with_consumer_name(format!("{}-{}", opts.name_prefix, uuid::Uuid::new_v4()))
        .with_options(
            ConsumerOptions::default()
                .with_initial_position(if opts.from_earliest {
                    InitialPosition::Earliest
                } else {
                    InitialPosition::Latest
                })
                .with_receiver_queue_size(opts.receiver_queue_size),
        );
    if let Some((max, topic)) = &opts.dead_letter {
        builder = builder.with_dead_letter_policy(DeadLetterPolicy {
            max_redeliver_count: *max as usize,
            dead_letter_topic: topic.clone(),
        });
    }
    builder
        .build()
        .await
        .map_err(|source| PulsarIoError::Subscribe {
            topic: opts.topic.clone(),
            subscription: opts.subscription.clone(),
            source,
        })
}

/// `ledger:entry:partition[:batch]`, the form Pulsar's tools print.
pub fn message_id_string(id: &pulsar::proto::MessageIdData) -> String {
    match id.batch_index {
        Some(b) => format!(
            "{}:{}:{}:{}",
            id.ledger_id,
            id.entry_id,
            id.partition.unwrap_or(-1),
            b
        ),
        None => format!(
            "{}:{}:{}",
            id.ledger_id,
            id.entry_id,
            id.partition.unwrap_or(-1)
        ),
    }
}

/// The properties of a received message.
pub fn properties_of(msg: &pulsar::consumer::Message<Vec<u8>>) -> HashMap<String, String> {
    msg.metadata()
        .properties
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulsar::error::{ProducerError, ServiceDiscoveryError};
    use pulsar::message::proto::ServerError;

    fn producer_error(source: pulsar::Error) -> PulsarIoError {
        PulsarIoError::Producer {
            topic: "t".into(),
            source,
        }
    }

    #[test]
    fn refusals_are_told_apart_from_a_broker_that_is_not_ready() {
        let server = |code| {
            pulsar::Error::Producer(ProducerError::Connection(ConnectionError::PulsarError(
                Some(code),
                None,
            )))
        };
        for code in [
            ServerError::AuthenticationError,
            ServerError::AuthorizationError,
            ServerError::TopicNotFound,
            ServerError::NotAllowedError,
        ] {
            assert!(producer_error(server(code)).is_refusal(), "{code:?}");
        }
        let lookup = pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(
            Some(ServerError::AuthorizationError),
            Some("role has no produce permission".into()),
        ));
        assert!(producer_error(lookup).is_refusal());

        for waitable in [
            server(ServerError::ServiceNotReady),
            server(ServerError::TooManyRequests),
            server(ServerError::MetadataError),
            pulsar::Error::Connection(ConnectionError::Disconnected),
            pulsar::Error::Producer(ProducerError::Connection(ConnectionError::Io(
                std::io::Error::from(std::io::ErrorKind::TimedOut),
            ))),
        ] {
            let e = producer_error(waitable);
            assert!(!e.is_refusal(), "{e}");
        }
    }

    #[test]
    fn a_refused_handshake_says_so() {
        let fatal = pulsar::Error::Connection(ConnectionError::Io(std::io::Error::other(
            "fatal error when connecting to the Pulsar server",
        )));
        let e = PulsarIoError::Connect {
            url: "pulsar://b:6650".into(),
            source: fatal,
        };
        assert!(e.is_refusal());
        assert!(e.to_string().contains("refused the handshake"), "{e}");
        let unreachable = PulsarIoError::Connect {
            url: "pulsar://b:6650".into(),
            source: pulsar::Error::Connection(ConnectionError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))),
        };
        assert!(!unreachable.is_refusal());
        assert!(!unreachable.to_string().contains("refused the handshake"));
    }
}
