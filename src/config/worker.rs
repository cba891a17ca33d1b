//! `[worker]`: how much work is in flight, retries and redeliveries, the job deadlines, and where
//! completion events come in from.

use super::error::ConfigError;
use super::value::{duration, refuse};
use crate::ci::rules::closed_set;
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// At most this many `POST /jobs` in flight, and four times as many requests handled at once
    /// (those storing their deadline record or their `submitted` event keep no `POST /jobs` from
    /// going).
    pub max_in_flight: usize,
    /// On CI's 429 `SlowDown` or 403 `QueueSaturated`, fewer `POST /jobs` in flight (× 0.7, once per
    /// round of calls), one more again per round of successes, up to `max_in_flight`.
    /// `false` = always `max_in_flight`.
    pub adaptive_concurrency: bool,
    /// Drain bound on SIGTERM/SIGINT: in-flight work past it is released (nacked) for redelivery.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Attempts of one CI call on transient failures (429, 5xx, connection errors, QueueSaturated)
    /// before the request is released for redelivery.
    pub retry_max_attempts: u32,
    /// First backoff; doubled each attempt, with full jitter, up to `retry_max_delay`.
    #[serde(with = "duration")]
    pub retry_base_delay: Duration,
    #[serde(with = "duration")]
    pub retry_max_delay: Duration,
    /// Deliveries of one message before it is moved to the dead-letter topic.
    pub max_redeliveries: u32,
    /// After this long without a completion event the worker describes the job itself.
    #[serde(with = "duration")]
    pub job_timeout: Duration,
    /// After this long a job still not finished gets a `timed_out` result.
    #[serde(with = "duration")]
    pub job_timeout_max: Duration,
    /// How long a request whose submit lost its answer stays in doubt (its next try looks for the
    /// job at CI first).
    #[serde(with = "duration")]
    pub recovery_lookback: Duration,
    /// When this replica takes over a partition of the request topic (at start, or when another
    /// replica leaves or joins), how long the requests another replica may have been holding wait
    /// before the worker looks for their jobs at CI: longer than CI takes to create a job from a
    /// `POST /jobs` already sent. A request held here longer than half of it is checked at CI before
    /// it is submitted (its partition may have moved meanwhile).
    #[serde(with = "duration")]
    pub takeover_grace: Duration,
    /// Where completion events come in from, each source feeding the completion handler:
    /// `cmq` (read the TDMQ for CMQ queue CI writes to), `http` (CI POSTs them to this worker),
    /// `kafka` (read the CKafka topic CI writes to, `[kafka]`), `pulsar` (read `pulsar.callback_topic`,
    /// which something else writes). From the environment: comma-separated.
    /// At least one, each once.
    #[serde(deserialize_with = "ingress_sources")]
    pub callback_ingress: Vec<CallbackIngress>,
}

closed_set! {
    /// One of `worker.callback_ingress`.
    pub enum CallbackIngress: "must be a list of pulsar, cmq, http, kafka" {
        Pulsar = "pulsar",
        Cmq = "cmq",
        Http = "http",
        Kafka = "kafka",
    }
}

/// `worker.callback_ingress`: known sources, each once, at least one.
fn ingress_sources<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CallbackIngress>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    if names.is_empty() {
        return Err(refuse(
            "",
            "must name at least one of pulsar, cmq, http, kafka",
        ));
    }
    let mut sources = Vec::with_capacity(names.len());
    for name in &names {
        let known = CallbackIngress::parse(name.trim());
        match known {
            Some(source) if !sources.contains(&source) => sources.push(source),
            _ => {
                return Err(refuse(
                    &names.join(","),
                    &format!(
                        "{} (each once; {name:?} is {})",
                        CallbackIngress::RULE,
                        if known.is_none() {
                            "unknown"
                        } else {
                            "repeated"
                        }
                    ),
                ))
            }
        }
    }
    Ok(sources)
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            max_in_flight: 64,
            adaptive_concurrency: true,
            shutdown_timeout: Duration::from_secs(20),
            retry_max_attempts: 6,
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(10),
            max_redeliveries: 16,
            job_timeout: Duration::from_secs(600),
            job_timeout_max: Duration::from_secs(86_400),
            recovery_lookback: Duration::from_secs(3600),
            takeover_grace: Duration::from_secs(5),
            callback_ingress: vec![CallbackIngress::Cmq],
        }
    }
}

impl WorkerSettings {
    /// Checks the bounds the types do not carry.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = ConfigError::invalid;
        if self.max_in_flight == 0 || self.max_in_flight > 10_000 {
            return Err(invalid(
                "worker.max_in_flight",
                &self.max_in_flight.to_string(),
                "must be between 1 and 10000",
            ));
        }
        if self.retry_max_attempts == 0 {
            return Err(invalid(
                "worker.retry_max_attempts",
                "0",
                "must be at least 1",
            ));
        }
        if self.retry_base_delay > self.retry_max_delay {
            return Err(invalid(
                "worker.retry_base_delay",
                &format!("{:?}", self.retry_base_delay),
                "must not exceed worker.retry_max_delay",
            ));
        }
        if self.max_redeliveries == 0 {
            return Err(invalid(
                "worker.max_redeliveries",
                "0",
                "must be at least 1",
            ));
        }
        if self.job_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "worker.job_timeout",
                &format!("{:?}", self.job_timeout),
                "must be at least 1s (TDMQ delivers delayed messages to about a second)",
            ));
        }
        if self.job_timeout > self.job_timeout_max {
            return Err(invalid(
                "worker.job_timeout",
                &format!("{:?}", self.job_timeout),
                "must not exceed worker.job_timeout_max",
            ));
        }
        Ok(())
    }

    /// Whether `callback_ingress` names `source`.
    pub fn has_ingress(&self, source: CallbackIngress) -> bool {
        self.callback_ingress.contains(&source)
    }
}
