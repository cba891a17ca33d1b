//! The client: one per process, connected with the `[pulsar]` settings.
//!
//! A [`Client`] is one of two things, by `pulsar.url`'s scheme:
//! - `pulsar://` / `pulsar+ssl://`: one crate client on that URL; the crate looks topics up over
//!   its connection.
//! - `http://` / `https://` (TDMQ 2.7.1+'s service URL): an HTTP lookup ([`super::lookup`]) per
//!   producer or consumer built, and one crate client per broker URL the lookups answered (cached:
//!   a connection per broker, as the crate keeps). Every (re)build of a producer or consumer asks
//!   [`Client::for_topic`] again, so a topic that moved to another broker is looked up again on
//!   reconnect.

use super::error::PulsarIoError;
use super::lookup::{is_http_url, HttpLookup};
use crate::config::PulsarSettings;
use crate::secret::Secret;
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

impl Client {
    /// The crate client to build a producer or consumer on `topic` with: the one client (binary
    /// URL), or, after a fresh HTTP lookup, the client of the broker that serves `topic`.
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
                let slot = {
                    let mut brokers = resolver.brokers.lock();
                    brokers.entry(broker.clone()).or_default().clone()
                };
                let client = slot
                    .get_or_try_init(|| build(&broker, &resolver.token))
                    .await?;
                Ok((client.clone(), Some(broker)))
            }
        }
    }

    /// The broker URL a fresh lookup answers for `topic`; `None` with a binary URL (the crate looks
    /// up over its connection).
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

/// A crate client on the binary URL `url`, with JWT authentication when `token` is set.
async fn build(url: &str, token: &Secret) -> Result<CrateClient, PulsarIoError> {
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
    Ok(Client(Kind::Binary(build(url, token).await?)))
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
