//! The client: one per process, connected with the `[pulsar]` settings.
//!
//! A [`Client`] is one of two things, by `pulsar.url`'s scheme:
//! - `pulsar://` / `pulsar+ssl://`: one crate client on that URL; the crate looks topics and their
//!   partitions up itself, over its connection.
//! - `http://` / `https://` (TDMQ 2.7.1+'s service URL): at every producer or consumer built, an
//!   HTTP lookup ([`super::lookup`]) of the topic, or of each partition of a partitioned topic, and
//!   one crate client per broker URL those lookups answered (cached: a connection per broker, as
//!   the crate keeps). [`Client::route`] hands out, per partition, the client of the broker its
//!   own lookup named, and each partition's producer or consumer is built on it
//!   ([`super::publish`], [`super::subscribe`]). Every rebuild routes again, so a topic that moved
//!   is looked up again when a producer or consumer is rebuilt after a failure.
//!
//! What the crate still does on its own, and cannot be told otherwise: before creating a producer
//! or consumer on a topic, and when it reconnects one, it sends its binary `CommandLookupTopic`
//! (without a listener name) over the client's connection and connects to the URL answered; no
//! public API takes a broker address already looked up (`TopicConsumer::new` and the producer's
//! constructor are private; `ServiceDiscovery` is a struct over the crate's connection manager, not
//! a trait). Asked on the connection to the broker the HTTP lookup named, the broker that owns the
//! partition answers its own address — on the listener that connection came in on, when the cluster
//! binds each listener to an address of its own (PIP-95) — so the crate stays where the HTTP lookup
//! sent it. When the topic moved meanwhile, the crate follows the broker's binary redirect; when
//! that address cannot be reached, the crate gives up within its connection retry budget
//! ([`LOOKUP_RETRIES`]) and the rebuild that follows looks up over HTTP again; so does a broker
//! that keeps answering `ServiceNotReady`.

use super::error::PulsarIoError;
use super::lookup::{is_http_url, parts, HttpLookup, TopicName};
use crate::config::PulsarSettings;
use crate::secret::Secret;
use pulsar::message::proto::command_get_topics_of_namespace::Mode;
use pulsar::{
    Authentication, ConnectionRetryOptions, OperationRetryOptions, Pulsar, TokioExecutor,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The crate's client.
pub type CrateClient = Pulsar<TokioExecutor>;

/// The process's Pulsar client (see the module doc). Cheap to clone.
#[derive(Clone)]
pub struct Client(Kind);

#[derive(Clone)]
enum Kind {
    Binary(CrateClient),
    Lookup(Arc<Resolver>),
}

/// A crate client for one broker, built by whichever caller needs it first.
type BrokerSlot = Arc<OnceCell<CrateClient>>;

struct Resolver {
    lookup: HttpLookup,
    token: Secret,
    /// Held only to find a broker's slot, never while a client is built.
    brokers: parking_lot::Mutex<HashMap<String, BrokerSlot>>,
}

/// How long a crate client keeps at something before the operation that needed it fails.
#[derive(Debug, Clone, Copy)]
pub struct Retries {
    /// Attempts to (re)connect to a broker, with backoff up to 5 s.
    pub connection: u32,
    /// Lookups, subscriptions and producer creations answered `ServiceNotReady` (or busy) tried
    /// again, 0.5 s apart; `None`: without end.
    pub operation: Option<u32>,
}

/// A binary URL's client: practically forever (the crate's default, 12 connection attempts, gives
/// up within about a minute, and a broker restart can take longer): there is no other way back to
/// the cluster than this client's own lookups.
pub const BINARY_RETRIES: Retries = Retries {
    connection: 1_000_000,
    operation: None,
};

/// A crate client of an HTTP lookup: about a minute of connection attempts, 10 s of a broker not
/// ready. Past that the producer or consumer fails and is rebuilt, and its partition looked up
/// over HTTP again, as the Java client looks up again on every reconnect (the crate's own
/// reconnect looks up over the binary protocol, on the connection it had).
pub const LOOKUP_RETRIES: Retries = Retries {
    connection: 15,
    operation: Some(20),
};

/// Where a topic's producers and consumers are built ([`Client::route`]).
pub enum Route {
    /// A binary URL: the one crate client, which looks the topic and its partitions up itself.
    Whole(CrateClient),
    /// An HTTP lookup: the topic, or each of its partitions in partition order, on the crate
    /// client of the broker its own lookup named.
    Parts(Vec<Part>),
}

/// One topic, or one partition, and where it is served.
pub struct Part {
    /// The topic as the caller named it, or `<topic>-partition-<n>` (as the crate names partitions).
    pub topic: String,
    /// The broker URL its lookup answered.
    pub broker: String,
    pub client: CrateClient,
    /// Whether this is one partition of a partitioned topic.
    pub partition: bool,
}

impl Client {
    /// Where to build `topic`'s producer or consumer: the one client (binary URL), or, after fresh
    /// HTTP lookups of the topic's partitions (or of the topic when it is not partitioned), each
    /// partition on the client of its own broker.
    pub async fn route(&self, topic: &str) -> Result<Route, PulsarIoError> {
        let resolver = match &self.0 {
            Kind::Binary(client) => return Ok(Route::Whole(client.clone())),
            Kind::Lookup(resolver) => resolver,
        };
        let name = TopicName::parse(topic)?;
        let partitions = resolver.lookup.partitions(&name).await?;
        let looked_up = parts(&name, partitions)
            .into_iter()
            .enumerate()
            .map(|(n, part)| {
                let shown = if partitions > 0 {
                    format!("{topic}-partition-{n}")
                } else {
                    topic.to_string()
                };
                async move {
                    let broker = resolver.lookup.broker_of(&part).await?;
                    tracing::debug!(topic = %shown, broker, "HTTP lookup");
                    let client = resolver.client_of(&broker).await?;
                    Ok::<_, PulsarIoError>(Part {
                        topic: shown,
                        broker,
                        client,
                        partition: partitions > 0,
                    })
                }
            });
        Ok(Route::Parts(
            futures::future::try_join_all(looked_up).await?,
        ))
    }

    /// The crate client to build a producer or consumer on `topic` with: the one client (binary
    /// URL), or, after a fresh HTTP lookup, the client of the broker serving `topic` (its first
    /// partition when it is partitioned: the crate then looks the other partitions up itself, over
    /// that broker's connection; [`Client::route`] looks each up over HTTP).
    pub async fn for_topic(&self, topic: &str) -> Result<CrateClient, PulsarIoError> {
        Ok(self.for_topic_at(topic).await?.0)
    }

    /// [`Client::for_topic`], and the broker URL the lookup answered (`None`: binary URL).
    async fn for_topic_at(
        &self,
        topic: &str,
    ) -> Result<(CrateClient, Option<String>), PulsarIoError> {
        match &self.0 {
            Kind::Binary(client) => Ok((client.clone(), None)),
            Kind::Lookup(resolver) => {
                let broker = resolver.lookup.broker_url(topic).await?;
                tracing::debug!(topic, broker, "HTTP lookup");
                let client = resolver.client_of(&broker).await?;
                Ok((client, Some(broker)))
            }
        }
    }

    /// How many partitions `topic` has (0: not partitioned), asked over HTTP with an HTTP URL.
    pub async fn partitions(&self, topic: &str) -> Result<u32, PulsarIoError> {
        match &self.0 {
            Kind::Binary(client) => {
                client
                    .lookup_partitioned_topic_number(topic)
                    .await
                    .map_err(|source| PulsarIoError::Partitions {
                        topic: topic.to_string(),
                        source,
                    })
            }
            Kind::Lookup(resolver) => Ok(resolver
                .lookup
                .partitions(&TopicName::parse(topic)?)
                .await?),
        }
    }

    /// Whether `topic` exists, asked without creating it (a lookup or a producer would, where the
    /// broker allows auto-creation): `Some(partitions)` (0: not partitioned) or `None`. A topic that
    /// is not partitioned is found in its namespace's list.
    pub async fn existing_partitions(&self, topic: &str) -> Result<Option<u32>, PulsarIoError> {
        let partitions = self.partitions(topic).await?;
        if partitions > 0 {
            return Ok(Some(partitions));
        }
        let name = TopicName::parse(topic)?;
        let namespace = format!("{}/{}", name.tenant, name.namespace);
        let listed = self
            .for_topic(topic)
            .await?
            .get_topics_of_namespace(namespace.clone(), Mode::All)
            .await
            .map_err(|source| PulsarIoError::ListTopics { namespace, source })?;
        Ok(listed.contains(&name.to_string()).then_some(0))
    }

    /// The broker URL a fresh lookup answers for `topic` (its first partition when partitioned);
    /// `None` with a binary URL (the crate looks up over its connection).
    pub async fn broker_url(&self, topic: &str) -> Result<Option<String>, PulsarIoError> {
        match &self.0 {
            Kind::Binary(_) => Ok(None),
            Kind::Lookup(resolver) => Ok(Some(resolver.lookup.broker_url(topic).await?)),
        }
    }

    /// Whether this client looks topics up over HTTP.
    pub fn is_http_lookup(&self) -> bool {
        matches!(self.0, Kind::Lookup(_))
    }
}

impl Resolver {
    /// The crate client of `broker`, built on first use.
    async fn client_of(&self, broker: &str) -> Result<CrateClient, PulsarIoError> {
        let slot = {
            let mut brokers = self.brokers.lock();
            brokers.entry(broker.to_string()).or_default().clone()
        };
        let client = slot
            .get_or_try_init(|| build(broker, &self.token, LOOKUP_RETRIES))
            .await?;
        Ok(client.clone())
    }
}

/// A client on a crate client connected elsewhere (tests): binary, as from a `pulsar://` URL.
impl From<CrateClient> for Client {
    fn from(client: CrateClient) -> Client {
        Client(Kind::Binary(client))
    }
}

/// Backoff between attempts while waiting for the broker: 0.5 s more per attempt, at most 5 s.
pub fn broker_retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(500 * u64::from(attempt.clamp(1, 10)))
}

/// A crate client on the binary URL `url`, with JWT authentication when `token` is set, retrying
/// as `retries` says.
async fn build(url: &str, token: &Secret, retries: Retries) -> Result<CrateClient, PulsarIoError> {
    let mut builder = Pulsar::builder(url, TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retries: retries.connection,
            connection_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            connection_max_idle: Duration::from_secs(300),
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
            max_retries: retries.operation,
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

/// Connects to `url`, with JWT authentication when `token` is set. A binary URL connects now; an
/// HTTP one only sets up the lookup (the first [`Client::for_topic`] reaches the cluster; see
/// [`connect_with`]).
pub async fn connect(url: &str, token: &Secret) -> Result<Client, PulsarIoError> {
    if is_http_url(url) {
        return Ok(Client(Kind::Lookup(Arc::new(Resolver {
            lookup: HttpLookup::new(url, token)?,
            token: token.clone(),
            brokers: parking_lot::Mutex::default(),
        }))));
    }
    Ok(Client(Kind::Binary(
        build(url, token, BINARY_RETRIES).await?,
    )))
}

/// Connects with the `[pulsar]` settings. With an HTTP URL, looks up `pulsar.result_topic` and
/// connects to its broker before returning, so that a wrong URL or token fails here, as a binary
/// URL's handshake does; a cluster out of reach or answering 5xx is waited for (as the crate
/// waits for a binary URL), a refusal returned at once.
pub async fn connect_with(settings: &PulsarSettings) -> Result<Client, PulsarIoError> {
    let client = connect(&settings.url, &settings.token).await?;
    if client.is_http_lookup() {
        let mut attempt = 0u32;
        loop {
            match client.for_topic_at(&settings.result_topic).await {
                Ok((_, broker)) => {
                    tracing::info!(
                        url = %settings.url,
                        topic = %settings.result_topic,
                        broker = broker.unwrap_or_default(),
                        "Pulsar through HTTP lookup: connected to the topic's broker"
                    );
                    break;
                }
                Err(e) if e.is_refusal() => return Err(e),
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(attempt, error = %e, "HTTP lookup not answered yet; retrying");
                    tokio::time::sleep(broker_retry_delay(attempt)).await;
                }
            }
        }
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Cluster {
        broker: Mutex<String>,
        lookups: AtomicUsize,
        auth: Mutex<Vec<Option<String>>>,
    }

    type Json = ([(axum::http::header::HeaderName, &'static str); 1], String);

    fn json(v: serde_json::Value) -> Json {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
    }

    /// A lookup service answering `cluster.broker` for every topic, counting lookups.
    async fn serve(cluster: Arc<Cluster>) -> String {
        async fn lookup(State(c): State<Arc<Cluster>>, headers: axum::http::HeaderMap) -> Json {
            c.lookups.fetch_add(1, Ordering::SeqCst);
            c.auth.lock().unwrap().push(
                headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_string()),
            );
            let broker = c.broker.lock().unwrap().clone();
            json(serde_json::json!({"brokerUrl": broker, "httpUrl": "http://x:8080"}))
        }
        async fn partitions() -> Json {
            json(serde_json::json!({"partitions": 0}))
        }
        let app = axum::Router::new()
            .route(
                "/lookup/v2/topic/persistent/{tenant}/{ns}/{topic}",
                get(lookup),
            )
            .route(
                "/admin/v2/persistent/{tenant}/{ns}/{topic}/partitions",
                get(partitions),
            )
            .with_state(cluster);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn every_call_looks_up_again_and_follows_a_moved_topic() {
        let cluster = Arc::new(Cluster::default());
        *cluster.broker.lock().unwrap() = "pulsar://broker-a:6650".into();
        let url = serve(cluster.clone()).await;
        let client = connect(&url, &Secret::new("the.jwt")).await.unwrap();
        assert!(client.is_http_lookup());
        let first = client.broker_url("my-topic").await.unwrap();
        assert_eq!(first.as_deref(), Some("pulsar://broker-a:6650"));
        *cluster.broker.lock().unwrap() = "pulsar://broker-b:6650".into();
        let second = client.broker_url("my-topic").await.unwrap();
        assert_eq!(second.as_deref(), Some("pulsar://broker-b:6650"));
        assert_eq!(cluster.lookups.load(Ordering::SeqCst), 2);
        assert!(cluster
            .auth
            .lock()
            .unwrap()
            .iter()
            .all(|a| a.as_deref() == Some("Bearer the.jwt")));
    }
}
