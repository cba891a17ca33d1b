//! The Kafka cluster of the sections that send events through the `kafka` ingress (`ingress`,
//! `messages`): `--kafka-brokers` stands for CI's CKafka instance. Each runner gets a fresh topic of
//! `--kafka-partitions` partitions (deleted at the end unless `--keep-topics`) and a producer that
//! writes as CI's delivery does (`acks=all`, keyed by job id). A leaf, like `source.rs`: the
//! worker's settings for it are beside the other sources' ([`Bench::use_ingress`]).

use crate::kafka::producer_config;
use anyhow::{bail, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use std::time::Duration;

/// How long one produce may wait for the broker before it counts as failed.
const DELIVERY_TIMEOUT_MS: u64 = 30_000;
/// How long an admin call (create, delete, metadata) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The benchmark's Kafka cluster: an admin client and the topics made on it.
pub(super) struct KafkaSide {
    brokers: String,
    partitions: i32,
    admin: AdminClient<DefaultClientContext>,
    created: Vec<String>,
}

impl KafkaSide {
    /// An admin client of `brokers`, checked by a metadata request so that a missing broker is named
    /// before any worker starts.
    pub(super) async fn connect(brokers: &str, partitions: i32) -> Result<KafkaSide> {
        if partitions < 1 {
            bail!("--kafka-partitions must be at least 1");
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .context("a Kafka admin client")?;
        // librdkafka's metadata call blocks its thread until the broker answers.
        let admin = tokio::task::spawn_blocking(move || {
            admin
                .inner()
                .fetch_metadata(None, ADMIN_TIMEOUT)
                .map(|_| admin)
        })
        .await
        .context("the Kafka metadata task")?
        .with_context(|| {
            format!(
                "no Kafka broker answers at --kafka-brokers {brokers} (scripts/kafka.sh start; \
                 scripts/bench.sh starts it when a section names kafka)"
            )
        })?;
        Ok(KafkaSide {
            brokers: brokers.to_string(),
            partitions,
            admin,
            created: Vec::new(),
        })
    }

    /// A fresh topic named `name` (a unique one), the characters Kafka refuses left out.
    pub(super) async fn new_topic(&mut self, name: &str) -> Result<String> {
        // Kafka's rule: letters, digits, `.`, `_` and `-`, at most 249.
        let topic: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(249)
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let created = self
            .admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    self.partitions,
                    TopicReplication::Fixed(1),
                )],
                &options,
            )
            .await
            .with_context(|| format!("CreateTopics {topic}"))?;
        for result in created {
            if let Err((name, code)) = result {
                bail!("the Kafka broker did not create topic {name}: {code}");
            }
        }
        self.created.push(topic.clone());
        Ok(topic)
    }

    /// A producer as CI's delivery is: every in-sync replica acknowledges each event.
    pub(super) fn producer(&self) -> Result<FutureProducer> {
        producer_config(&self.brokers, "ci-worker-bench", DELIVERY_TIMEOUT_MS)
            .create()
            .context("the benchmark's Kafka producer")
    }

    /// Deletes the topics made so far; how many were deleted.
    pub(super) async fn delete_topics(&mut self) -> usize {
        if self.created.is_empty() {
            return 0;
        }
        let names: Vec<&str> = self.created.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let deleted = match self.admin.delete_topics(&names, &options).await {
            Ok(results) => results.iter().filter(|r| r.is_ok()).count(),
            Err(err) => {
                eprintln!("bench: deleting the Kafka topics failed: {err}");
                0
            }
        };
        self.created.clear();
        deleted
    }
}
