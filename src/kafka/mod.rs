//! Kafka (CKafka) clients: the librdkafka settings the worker's `kafka` ingress and the emulator's
//! delivery build their `rdkafka` consumer and producer from. Nothing here connects: a
//! [`ClientConfig`] becomes a client with `create()` / `create_with_context()` where it is used.
//!
//! The password goes into the configuration only; `rdkafka` hides `sasl.password` from
//! `ClientConfig`'s `Debug` and `config_map()`, and [`summary`] is what may be logged.

use crate::config::{KafkaSettings, SecurityProtocol};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::ClientConfig;

/// `client.id` of the worker's consumers (in the broker's logs and CKafka's consumer list).
pub const WORKER_CLIENT_ID: &str = "ci-worker";

/// The connection and security settings of `[kafka]`: brokers, `security.protocol` and, with SASL,
/// the mechanism, CKafka's `<instanceId>#<user>` and the password (with SASL_SSL, the CA file or
/// the system's CA locations).
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers(&settings.brokers))
        .set("client.id", WORKER_CLIENT_ID)
        .set("security.protocol", settings.security_protocol.as_str())
        // librdkafka's log lines go through the `log` crate into the process's tracing.
        .set_log_level(RDKafkaLogLevel::Info);
    if settings.security_protocol.is_sasl() {
        config
            .set("sasl.mechanism", settings.sasl_mechanism.as_str())
            .set("sasl.username", &settings.sasl_username)
            .set("sasl.password", settings.sasl_password.expose());
    }
    if settings.security_protocol == SecurityProtocol::SaslSsl {
        // OpenSSL is linked statically (rdkafka's `ssl-vendored`): its compiled-in CA directory is
        // not the system's, so the system's usual bundle locations are probed unless a file is given.
        let ca = if settings.ssl_ca_location.is_empty() {
            "probe"
        } else {
            settings.ssl_ca_location.as_str()
        };
        config.set("ssl.ca.location", ca);
    }
    config
}

/// [`client_config`] plus the consumer group of `[kafka]`: offsets committed by the worker only
/// (`enable.auto.commit=false`: an offset moves once the event's outcome is stored), a new group
/// starting at the topic's oldest event (`auto.offset.reset=earliest`: nothing CI wrote before the
/// first start is skipped), and incremental rebalancing (`cooperative-sticky`: a replica joining
/// or leaving moves only the partitions that must move, the others keep being read).
pub fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A missing topic is an error to report, never one to create.
        .set("allow.auto.create.topics", "false");
    config
}

/// A producer to `brokers` (PLAINTEXT) that waits for every in-sync replica (`acks=all`); one
/// attempt's delivery is bounded by `message.timeout.ms` (`delivery_timeout_ms`) and the caller
/// retries after it. Not idempotent: a completion event may come twice anyway (CI redelivers,
/// consumers check for duplicates), and an idempotent producer turns some timeouts into a fatal
/// error that would need a new producer.
pub fn producer_config(
    brokers_list: &str,
    client_id: &str,
    delivery_timeout_ms: u64,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers(brokers_list))
        .set("client.id", client_id)
        .set("acks", "all")
        .set("message.timeout.ms", delivery_timeout_ms.to_string())
        .set_log_level(RDKafkaLogLevel::Info);
    config
}

/// What a log line may say about a client's settings: every key but the secret ones, whose values
/// `rdkafka` replaces with a placeholder.
pub fn summary(config: &ClientConfig) -> String {
    config
        .config_map()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A comma list without the spaces an operator may put after the commas.
fn brokers(list: &str) -> String {
    list.split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SaslMechanism;
    use crate::secret::Secret;

    fn sasl_ssl() -> KafkaSettings {
        KafkaSettings {
            brokers: "ckafka-abcd1234.ap-guangzhou.ckafka.tencentcloudmq.com:50004, b2:9093".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::Plain,
            sasl_username: "ckafka-abcd1234#ci-worker".into(),
            sasl_password: Secret::new("hunter2"),
            ..KafkaSettings::default()
        }
    }

    #[test]
    fn the_consumer_commits_itself_from_the_oldest_event_in_a_cooperative_group() {
        let config = consumer_config(&KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            ..KafkaSettings::default()
        });
        for (key, value) in [
            ("bootstrap.servers", "127.0.0.1:9092"),
            ("security.protocol", "PLAINTEXT"),
            ("group.id", "ci-worker"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("allow.auto.create.topics", "false"),
        ] {
            assert_eq!(config.get(key), Some(value), "{key}");
        }
        assert_eq!(config.get("sasl.username"), None);
        assert_eq!(config.get("ssl.ca.location"), None);
    }

    #[test]
    fn sasl_settings_reach_librdkafka_and_the_password_no_log() {
        let config = consumer_config(&sasl_ssl());
        assert_eq!(
            config.get("bootstrap.servers"),
            Some("ckafka-abcd1234.ap-guangzhou.ckafka.tencentcloudmq.com:50004,b2:9093")
        );
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(
            config.get("sasl.username"),
            Some("ckafka-abcd1234#ci-worker")
        );
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
        assert_eq!(config.get("ssl.ca.location"), Some("probe"));
        let printed = format!("{config:?} {}", summary(&config));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("ckafka-abcd1234#ci-worker"), "{printed}");
        // librdkafka accepts every key and value (an unknown one fails here, not at start-up).
        config.create_native_config().unwrap();
        let plain = KafkaSettings {
            security_protocol: SecurityProtocol::SaslPlaintext,
            ssl_ca_location: String::new(),
            ..sasl_ssl()
        };
        assert_eq!(client_config(&plain).get("ssl.ca.location"), None);
        let with_ca = KafkaSettings {
            ssl_ca_location: "/etc/ckafka/ca.pem".into(),
            ..sasl_ssl()
        };
        assert_eq!(
            client_config(&with_ca).get("ssl.ca.location"),
            Some("/etc/ckafka/ca.pem")
        );
    }

    #[test]
    fn the_producer_settings_are_librdkafkas() {
        let config = producer_config("127.0.0.1:9092", "tencent-ci-emulator", 10_000);
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("message.timeout.ms"), Some("10000"));
        config.create_native_config().unwrap();
    }
}
