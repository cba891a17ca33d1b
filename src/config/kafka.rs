//! `[kafka]`: the CKafka (Apache Kafka) cluster the `kafka` ingress reads completion events from.
//!
//! CKafka's endpoints: inside the VPC, PLAINTEXT; the public endpoint, SASL (PLAIN) with the user
//! name `<instanceId>#<user>` over SASL_PLAINTEXT or SASL_SSL (CKafka's "access via public
//! network" pages). The client settings built from this section are in [`crate::kafka`].

use super::error::ConfigError;
use crate::ci::rules::{closed_set, is_kafka_topic};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port` separated by commas (CKafka's "access address"); required
    /// when `worker.callback_ingress` has `kafka`.
    pub brokers: String,
    /// The consumer group the worker's replicas share the topic's partitions in.
    pub group_id: String,
    /// The topic to read; empty = `ci.kafka_topic` (the topic CI writes to).
    pub topic: String,
    /// `PLAINTEXT` (inside the VPC), `SASL_PLAINTEXT` or `SASL_SSL` (the public endpoint).
    pub security_protocol: SecurityProtocol,
    /// With SASL: `PLAIN` (CKafka's), `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: SaslMechanism,
    /// With SASL: CKafka's user name `<instanceId>#<user>`, e.g. `ckafka-abcd1234#ci-worker`.
    pub sasl_username: String,
    /// With SASL: that user's password.
    pub sasl_password: Secret,
    /// With SASL_SSL: a PEM file of the CA certificates to trust; empty = the system's (the usual
    /// locations are probed).
    pub ssl_ca_location: String,
}

closed_set! {
    /// `kafka.security_protocol`: librdkafka's `security.protocol` values CKafka offers.
    pub enum SecurityProtocol: "must be PLAINTEXT, SASL_PLAINTEXT or SASL_SSL" {
        Plaintext = "PLAINTEXT",
        SaslPlaintext = "SASL_PLAINTEXT",
        SaslSsl = "SASL_SSL",
    }
}

impl SecurityProtocol {
    /// Whether the protocol authenticates with SASL (user name and password).
    pub fn is_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

closed_set! {
    /// `kafka.sasl_mechanism`: librdkafka's built-in mechanisms (no Kerberos).
    pub enum SaslMechanism: "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" {
        Plain = "PLAIN",
        ScramSha256 = "SCRAM-SHA-256",
        ScramSha512 = "SCRAM-SHA-512",
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: String::new(),
            group_id: "ci-worker".into(),
            topic: String::new(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::Plain,
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            ssl_ca_location: String::new(),
        }
    }
}

const BROKERS_RULE: &str = "must be host:port addresses separated by commas, such as \
                            10.0.0.5:9092,10.0.0.6:9092";

/// A broker list: `host:port` entries separated by commas, at least one (`key` names the setting).
pub(super) fn check_brokers(key: &'static str, brokers: &str) -> Result<(), ConfigError> {
    let mut count = 0;
    for entry in brokers.split(',').map(str::trim) {
        let ok = entry.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(ConfigError::invalid(key, brokers, BROKERS_RULE));
        }
        count += 1;
    }
    if count == 0 {
        return Err(ConfigError::invalid(key, brokers, BROKERS_RULE));
    }
    Ok(())
}

/// CKafka's SASL user name: `<instanceId>#<user>`, both parts present.
fn is_ckafka_user(name: &str) -> bool {
    name.split_once('#').is_some_and(|(instance, user)| {
        !instance.trim().is_empty() && !user.trim().is_empty() && !user.contains('#')
    })
}

impl KafkaSettings {
    /// Checks the keys the `kafka` ingress needs (`with_ingress`) and the security settings
    /// whenever they are written; `ci_topic` is `ci.kafka_topic`, the topic read when `topic` is
    /// empty.
    pub(super) fn validate(&self, with_ingress: bool, ci_topic: &str) -> Result<(), ConfigError> {
        let invalid = ConfigError::invalid;
        if with_ingress || !self.brokers.trim().is_empty() {
            check_brokers("kafka.brokers", &self.brokers).map_err(|e| match e {
                ConfigError::Invalid { key, value, .. } if value.trim().is_empty() => {
                    ConfigError::Invalid {
                        key,
                        value,
                        allowed: format!(
                            "is required when worker.callback_ingress has kafka: {BROKERS_RULE}"
                        ),
                    }
                }
                other => other,
            })?;
        }
        if self.group_id.trim().is_empty() || self.group_id.len() > 255 {
            return Err(invalid(
                "kafka.group_id",
                &self.group_id,
                "must be 1 to 255 characters (the consumer group the replicas share)",
            ));
        }
        if !self.topic.is_empty() && !is_kafka_topic(&self.topic) {
            return Err(invalid(
                "kafka.topic",
                &self.topic,
                "must be empty (= ci.kafka_topic) or a Kafka topic name (1-249 characters of \
                 A-Z a-z 0-9 . _ -)",
            ));
        }
        if with_ingress && self.topic.is_empty() && !is_kafka_topic(ci_topic) {
            return Err(invalid(
                "kafka.topic",
                "",
                "names the topic the kafka ingress reads: set it, or ci.kafka_topic (the topic CI \
                 writes to)",
            ));
        }
        if self.security_protocol.is_sasl() {
            if !is_ckafka_user(&self.sasl_username) {
                return Err(invalid(
                    "kafka.sasl_username",
                    &self.sasl_username,
                    &format!(
                        "must be CKafka's <instanceId>#<user>, such as ckafka-abcd1234#ci-worker, \
                         with kafka.security_protocol = {}",
                        self.security_protocol
                    ),
                ));
            }
            if self.sasl_password.is_empty() {
                return Err(invalid(
                    "kafka.sasl_password",
                    "",
                    &format!(
                        "is required with kafka.security_protocol = {}",
                        self.security_protocol
                    ),
                ));
            }
        } else {
            let set = if !self.sasl_username.is_empty() {
                Some(("kafka.sasl_username", self.sasl_username.as_str()))
            } else if !self.sasl_password.is_empty() {
                Some(("kafka.sasl_password", "(set)"))
            } else {
                None
            };
            if let Some((key, value)) = set {
                return Err(invalid(
                    key,
                    value,
                    "is used only with kafka.security_protocol = SASL_PLAINTEXT or SASL_SSL \
                     (it is PLAINTEXT): set the protocol or remove the key",
                ));
            }
        }
        if !self.ssl_ca_location.is_empty() && self.security_protocol != SecurityProtocol::SaslSsl {
            return Err(invalid(
                "kafka.ssl_ca_location",
                &self.ssl_ca_location,
                "is used only with kafka.security_protocol = SASL_SSL",
            ));
        }
        Ok(())
    }

    /// The topic the `kafka` ingress reads: `topic`, or `ci_topic` (`ci.kafka_topic`) when empty.
    pub fn topic_or<'a>(&'a self, ci_topic: &'a str) -> &'a str {
        if self.topic.is_empty() {
            ci_topic
        } else {
            &self.topic
        }
    }
}
