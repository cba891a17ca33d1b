//! The client: one per process, connected with the `[pulsar]` settings.

use super::error::PulsarIoError;
use crate::config::PulsarSettings;
use crate::secret::Secret;
use pulsar::{
    Authentication, ConnectionRetryOptions, OperationRetryOptions, Pulsar, TokioExecutor,
};
use std::time::Duration;

pub type Client = Pulsar<TokioExecutor>;

/// Backoff between attempts while waiting for the broker: 0.5 s more per attempt, at most 5 s.
pub fn broker_retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(500 * u64::from(attempt.clamp(1, 10)))
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
