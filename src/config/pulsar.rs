//! `[pulsar]`: the broker, the topics and subscriptions, and the batching of results.

use super::error::ConfigError;
use super::value::{self, duration, refuse, Renamed, Unit};
use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PulsarSettings {
    /// `pulsar://host:port` or `pulsar+ssl://host:port` (binary protocol, lookups on the
    /// connection), or `http://host:port` / `https://host:port` (HTTP lookup, the service URL TDMQ
    /// for Pulsar 2.7.1+ gives: each topic's broker, each partition's of a partitioned topic, is
    /// looked up over HTTP, then reached over the binary protocol at the `brokerUrl` it answered,
    /// `brokerUrlTls` for https). Kept as text (the client takes it so); its form is checked on
    /// loading.
    #[serde(deserialize_with = "pulsar_url")]
    pub url: String,
    /// JWT for token authentication (TDMQ role token); empty = no authentication.
    pub token: Secret,
    pub request_topic: String,
    pub request_subscription: String,
    pub callback_topic: String,
    pub callback_subscription: String,
    pub result_topic: String,
    pub dead_letter_topic: String,
    /// Internal: delayed deadline records (one per request, published before its `POST /jobs` and
    /// cancelled by whoever finishes the job), due when the worker should ask CI about a job whose
    /// completion event has not come; read on a Shared subscription (`request_subscription`), the
    /// only kind TDMQ delays messages on. Must not be partitioned.
    pub deadline_topic: String,
    /// Unused since 0.6 (replicas no longer tell each other what they did): still read, so that
    /// configurations naming it load unchanged; the topic can be deleted once no 0.5 replica runs.
    pub done_topic: String,
    /// Producer batching on `result_topic`: results stored together, one broker entry per batch
    /// (up to `result_batch_max_messages` or 1 MiB, sent `result_batch_delay` after its first
    /// result at the latest). Each result is still acknowledged to the worker on its own, and its
    /// input acknowledged only after that. Safe for consumers on Apache's Java, C++, Python and Go
    /// clients (they acknowledge an entry once all its messages are acknowledged; a batch redelivered
    /// after a consumer crash comes again whole, as duplicates). Turn it off for consumers on the
    /// Rust `pulsar` crate (it acknowledges the whole entry with its first message) and for
    /// Key_Shared consumers that need each request's results in order on one consumer (the broker
    /// routes a batch by its first key). See README "Results".
    pub result_batching: bool,
    /// Most results in one batch (`result_batching`).
    pub result_batch_max_messages: u32,
    /// How long a batch waits for more results after its first (`result_batching`); at most 1 s.
    #[serde(with = "duration")]
    pub result_batch_delay: Duration,
}

/// The longest `result_batch_delay`: each result waits up to this long before it is sent.
const MAX_BATCH_DELAY: Duration = Duration::from_secs(1);

/// Keys of this section spelled in a unit, still read.
pub(super) const RENAMED: &[Renamed] = &[Renamed {
    old: "pulsar.result_batch_delay_ms",
    new: "pulsar.result_batch_delay",
    unit: Unit::Millis,
    bounds: Some((
        0..=1000,
        "must be at most 1000 (each result waits up to this long before it is sent)",
    )),
}];

const URL_RULE: &str =
    "must be pulsar://host:port or pulsar+ssl://host:port (binary protocol), or \
     http://host:port or https://host:port (HTTP lookup, TDMQ's service URL)";

/// `pulsar.url`: the binary protocol's schemes, or an http(s) address (HTTP lookup); a host either way.
fn pulsar_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let binary = ["pulsar://", "pulsar+ssl://"]
        .iter()
        .any(|scheme| text.starts_with(scheme))
        && url::Url::parse(&text).is_ok_and(|u| u.host().is_some());
    if binary || value::HttpUrl::parse(&text).is_some() {
        Ok(text)
    } else {
        Err(refuse(&text, URL_RULE))
    }
}

impl PulsarSettings {
    /// How `url` is used, for `ci-worker config` (a password in the URL is left out).
    pub fn url_usage(&self) -> String {
        let shown = match url::Url::parse(&self.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => self.url.clone(),
        };
        if self.url.starts_with("http://") || self.url.starts_with("https://") {
            let field = if self.url.starts_with("https://") {
                "brokerUrlTls"
            } else {
                "brokerUrl"
            };
            format!(
                "pulsar.url {shown}: HTTP lookup (GET /lookup/v2/topic/<domain>/<tenant>/<namespace>/<topic> \
                 of the topic or of each of its partitions, per producer or consumer, then the binary \
                 protocol to each topic's {field})"
            )
        } else {
            format!("pulsar.url {shown}: binary protocol, lookups on the connection")
        }
    }

    /// Checks what the types do not: batching bounds, topic names and their roles.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = ConfigError::invalid;
        if self.result_batching && self.result_batch_max_messages < 2 {
            return Err(invalid(
                "pulsar.result_batch_max_messages",
                &self.result_batch_max_messages.to_string(),
                "must be at least 2 while pulsar.result_batching is on (set result_batching = false \
                 for one message per entry)",
            ));
        }
        if self.result_batch_delay > MAX_BATCH_DELAY {
            return Err(invalid(
                "pulsar.result_batch_delay",
                &value::humane(self.result_batch_delay),
                "must be at most 1s (each result waits up to this long before it is sent)",
            ));
        }
        let topics = [
            ("pulsar.request_topic", &self.request_topic),
            ("pulsar.callback_topic", &self.callback_topic),
            ("pulsar.result_topic", &self.result_topic),
            ("pulsar.dead_letter_topic", &self.dead_letter_topic),
            ("pulsar.deadline_topic", &self.deadline_topic),
            ("pulsar.done_topic", &self.done_topic),
        ];
        let subscriptions = [
            ("pulsar.request_subscription", &self.request_subscription),
            ("pulsar.callback_subscription", &self.callback_subscription),
        ];
        for (key, value) in topics.iter().chain(&subscriptions) {
            if value.trim().is_empty() || value.chars().any(char::is_whitespace) {
                return Err(invalid(
                    key,
                    value,
                    "must be a non-empty name without spaces",
                ));
            }
        }
        // Delayed delivery needs a persistent topic; a topic of two roles would mix their records.
        if !self.deadline_topic.starts_with("persistent://") {
            return Err(invalid(
                "pulsar.deadline_topic",
                &self.deadline_topic,
                "must be a persistent://tenant/namespace/topic name (delayed delivery needs a persistent topic)",
            ));
        }
        for (i, (key, value)) in topics.iter().enumerate() {
            if let Some((other, _)) = topics[..i]
                .iter()
                .find(|(_, v)| topic_name(v) == topic_name(value))
            {
                return Err(invalid(
                    key,
                    value,
                    &format!("must differ from {other}: each topic has one role"),
                ));
            }
        }
        Ok(())
    }
}

impl Default for PulsarSettings {
    fn default() -> Self {
        PulsarSettings {
            url: "pulsar://127.0.0.1:6650".into(),
            token: Secret::default(),
            request_topic: "persistent://public/default/ci-requests".into(),
            request_subscription: "ci-worker".into(),
            callback_topic: "persistent://public/default/ci-callbacks".into(),
            callback_subscription: "ci-worker".into(),
            result_topic: "persistent://public/default/ci-results".into(),
            dead_letter_topic: "persistent://public/default/ci-dead-letter".into(),
            deadline_topic: "persistent://public/default/ci-worker-deadlines".into(),
            done_topic: "persistent://public/default/ci-worker-done".into(),
            result_batching: true,
            result_batch_max_messages: 1000,
            result_batch_delay: Duration::from_millis(1),
        }
    }
}

/// A topic's full name: Pulsar reads `name` alone as `persistent://public/default/name`.
fn topic_name(topic: &str) -> String {
    if topic.contains("://") {
        topic.to_string()
    } else {
        format!("persistent://public/default/{topic}")
    }
}
