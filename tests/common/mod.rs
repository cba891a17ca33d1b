//! Shared helpers for the integration tests that talk to a real Apache Pulsar broker.
//!
//! Each test file includes this with `mod common;` and uses a subset, hence the
//! `#[allow(dead_code)]`s. The broker comes from `scripts/test.sh` (which starts it and exports the
//! variables below) or from `scripts/pulsar.sh start` by hand (the defaults match its defaults):
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `PULSAR_URL` | `pulsar://127.0.0.1:6650` | broker without authentication |
//! | `PULSAR_ADMIN_URL` | `http://127.0.0.1:8080` | its admin REST API |
//! | `PULSAR_AUTH_URL` | `pulsar://127.0.0.1:6651` | broker with JWT token authentication |
//! | `PULSAR_AUTH_ADMIN_URL` | `http://127.0.0.1:8081` | its admin REST API (needs the token) |
//! | `PULSAR_AUTH_TOKEN` | read from `PULSAR_AUTH_TOKEN_FILE` | admin JWT for the auth broker |
//! | `PULSAR_AUTH_TOKEN_FILE` | `.cache/pulsar/data-6651/auth/admin.token` | file holding that JWT |

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use pulsar::{
    consumer::Message, Authentication, Consumer, DeserializeMessage, Pulsar, TokioExecutor,
};

const HOW_TO_START: &str = "run the tests with `scripts/test.sh` (it starts the brokers), \
     or start one by hand with `scripts/pulsar.sh start` \
     (and `PULSAR_PORT=6651 PULSAR_HTTP_PORT=8081 PULSAR_AUTH=token scripts/pulsar.sh start` \
     for the token-auth broker)";

fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => default.to_string(),
    }
}

/// `pulsar://` URL of the broker without authentication.
pub fn pulsar_url() -> String {
    env_or("PULSAR_URL", "pulsar://127.0.0.1:6650")
}

/// `http://` URL of that broker's admin REST API.
pub fn admin_url() -> String {
    env_or("PULSAR_ADMIN_URL", "http://127.0.0.1:8080")
}

/// The broker's stats of `topic` (`GET /admin/v2/<topic>/stats`); `null` when it has none to give
/// (a topic not created yet).
pub async fn topic_stats(topic: &str) -> serde_json::Value {
    let url = format!(
        "{}/admin/v2/{}/stats",
        admin_url(),
        topic.replace("://", "/")
    );
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// `pulsar://` URL of the broker that requires a JWT.
pub fn auth_pulsar_url() -> String {
    env_or("PULSAR_AUTH_URL", "pulsar://127.0.0.1:6651")
}

/// `http://` URL of the token broker's admin REST API (send `Authorization: Bearer <token>`).
pub fn auth_admin_url() -> String {
    env_or("PULSAR_AUTH_ADMIN_URL", "http://127.0.0.1:8081")
}

/// The admin JWT (`{"sub":"admin"}`) accepted by the token broker.
pub fn auth_token() -> String {
    if let Ok(t) = std::env::var("PULSAR_AUTH_TOKEN") {
        if !t.trim().is_empty() {
            return t.trim().to_string();
        }
    }
    let file = std::env::var("PULSAR_AUTH_TOKEN_FILE")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/pulsar/data-6651/auth/admin.token")
        });
    match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => panic!(
            "no Pulsar auth token: PULSAR_AUTH_TOKEN is not set and {} is missing or empty; {HOW_TO_START}",
            file.display()
        ),
    }
}

/// `persistent://public/default/<prefix>-<uuid>`: a topic no other test (or earlier run) uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("persistent://public/default/{}", unique_name(prefix))
}

/// `<prefix>-<uuid>`: for subscription, consumer and producer names.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `host:port` of a `pulsar://host:port` URL.
fn host_port(url: &str) -> String {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .trim_end_matches('/');
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Fails fast, with a message that says what to do, when nothing listens at `url`.
/// (The client itself would retry for minutes before giving up.)
pub async fn require_broker(url: &str) {
    let addr = host_port(url);
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("no Pulsar broker answers at {url} ({e}); {HOW_TO_START}"),
        Err(_) => panic!("no Pulsar broker answers at {url} (connect timed out); {HOW_TO_START}"),
    }
}

/// A client of the broker without authentication ([`pulsar_url`]).
pub async fn client() -> Pulsar<TokioExecutor> {
    client_for(&pulsar_url(), None).await
}

/// A client of the token broker ([`auth_pulsar_url`]) that sends [`auth_token`].
pub async fn auth_client() -> Pulsar<TokioExecutor> {
    client_for(&auth_pulsar_url(), Some(auth_token())).await
}

/// A client of `url`, with a JWT if given; panics with a clear message if it cannot connect.
pub async fn client_for(url: &str, token: Option<String>) -> Pulsar<TokioExecutor> {
    require_broker(url).await;
    let mut builder = Pulsar::builder(url, TokioExecutor);
    if let Some(token) = token {
        builder = builder.with_auth(Authentication {
            name: "token".to_string(),
            data: token.into_bytes(),
        });
    }
    match tokio::time::timeout(Duration::from_secs(60), builder.build()).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("cannot connect a Pulsar client to {url}: {e}; {HOW_TO_START}"),
        Err(_) => panic!("connecting a Pulsar client to {url} took over 60 s; {HOW_TO_START}"),
    }
}

/// Awaits `fut` for at most `secs` seconds, panicking with `what` on timeout.
pub async fn within<F: Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s waiting for {what}"),
    }
}

/// The next message of `consumer`, waiting at most `secs` seconds.
pub async fn next_message<T: DeserializeMessage + 'static>(
    consumer: &mut Consumer<T, TokioExecutor>,
    secs: u64,
) -> Message<T> {
    match within(secs, "a message", consumer.next()).await {
        Some(Ok(msg)) => msg,
        Some(Err(e)) => panic!("consumer error: {e}"),
        None => panic!("consumer stream ended"),
    }
}

/// The properties of a received message, as (key, value) pairs in arrival order.
pub fn properties<T>(msg: &Message<T>) -> Vec<(String, String)> {
    msg.metadata()
        .properties
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}
