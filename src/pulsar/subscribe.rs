//! Subscribing: [`subscribe`] builds a consumer with a unique consumer name, on a Shared, Failover or
//! Key_Shared subscription (replicas share the load, by message, by partition or by key) or on a
//! non-durable subscription of its own (every replica sees every message); [`message_id_string`] and
//! [`properties_of`] read a received message.

use super::client::Client;
use super::error::PulsarIoError;
use pulsar::consumer::{ConsumerOptions, DeadLetterPolicy, InitialPosition};
use pulsar::{Consumer, SubType, TokioExecutor};
use std::collections::HashMap;

/// How a consumer is built.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub topic: String,
    pub subscription: String,
    /// Prefix of the unique consumer name.
    pub name_prefix: String,
    /// Messages the broker may push ahead of processing, all partitions together
    /// ([`per_partition_queue`]).
    pub receiver_queue_size: u32,
    /// After this many redeliveries the crate moves a message to `dead_letter_topic` (the broker
    /// counts redeliveries on Shared and Key_Shared subscriptions only).
    pub dead_letter: Option<(u32, String)>,
    /// Where a new subscription starts: the earliest stored message (workers: nothing published before
    /// the first start is missed) or only new ones (followers such as `ci-worker submit --wait`).
    pub from_earliest: bool,
    pub kind: SubscriptionKind,
}

/// Who gets a message of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    /// `subscription` is durable and Shared: each message goes to one of its consumers. The only
    /// kind TDMQ for Pulsar honours message delays on (not Key_Shared, not Exclusive).
    Shared,
    /// A non-durable Exclusive subscription named `subscription` plus a unique suffix: this consumer
    /// alone sees every message published while it is connected, and the broker keeps nothing for it
    /// once it is gone (a replica killed leaves no backlog behind).
    OwnNonDurable,
    /// `subscription` is durable and Failover: each partition has one active consumer, so a message
    /// reaches another replica only when its partition changes owner. A nack rewinds the whole
    /// partition (`docs/design/pulsar-facts.md`, fact 3), so the consume loop never sends one here.
    Failover,
    /// `subscription` is durable and Key_Shared (the broker's auto-split hash ranges): every message
    /// of one key goes to the same consumer while the consumers stay the same.
    KeyShared,
}

/// The consumer the worker and its tools build: payloads as bytes.
pub type PulsarConsumer = Consumer<Vec<u8>, TokioExecutor>;

/// A consumer with a unique name, on the subscription `opts.kind` says (on the broker a fresh lookup
/// names, with an HTTP URL).
pub async fn subscribe(
    client: &Client,
    opts: &SubscribeOptions,
) -> Result<PulsarConsumer, PulsarIoError> {
    let unique = uuid::Uuid::new_v4();
    let (sub_type, subscription, durable) = match opts.kind {
        SubscriptionKind::Shared => (SubType::Shared, opts.subscription.clone(), true),
        SubscriptionKind::Failover => (SubType::Failover, opts.subscription.clone(), true),
        SubscriptionKind::KeyShared => (SubType::KeyShared, opts.subscription.clone(), true),
        SubscriptionKind::OwnNonDurable => (
            SubType::Exclusive,
            format!("{}-{}", opts.subscription, unique.simple()),
            false,
        ),
    };
    let pulsar = client.for_topic(&opts.topic).await?;
    let partitions = pulsar
        .lookup_partitioned_topic_number(&opts.topic)
        .await
        .map_err(|source| PulsarIoError::Subscribe {
            topic: opts.topic.clone(),
            subscription: subscription.clone(),
            source,
        })?;
    let per_partition = per_partition_queue(opts.receiver_queue_size, partitions);
    let mut builder = pulsar
        .consumer()
        .with_topic(&opts.topic)
        .with_subscription(&subscription)
        .with_subscription_type(sub_type)
        .with_consumer_name(format!("{}-{}", opts.name_prefix, unique))
        .with_batch_size(per_partition)
        .with_options(
            ConsumerOptions::default()
                .with_initial_position(if opts.from_earliest {
                    InitialPosition::Earliest
                } else {
                    InitialPosition::Latest
                })
                .with_receiver_queue_size(per_partition)
                .durable(durable),
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
            subscription,
            source,
        })
}

/// The receiver queue, and the permits the consumer grants the broker, of each partition's consumer,
/// so that all partitions together prefetch about `total`.
///
/// Both matter for acknowledgements, not only for memory: the crate's consumer engine sends acks
/// from the same queue as the messages it pushes into the receiver channel, and waits while that
/// channel is full. An ack therefore leaves only after the messages the broker pushed before it
/// reached the application; the crate's default permits (1,000 per partition, whatever the
/// receiver queue) let a backlog delay acks for seconds, and a replica killed meanwhile left
/// requests whose outcome was stored to be handled again.
pub fn per_partition_queue(total: u32, partitions: u32) -> u32 {
    total.div_ceil(partitions.max(1)).max(1)
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
    use super::per_partition_queue;

    #[test]
    fn partitions_share_the_prefetch() {
        assert_eq!(per_partition_queue(8, 0), 8, "not partitioned");
        assert_eq!(per_partition_queue(8, 1), 8);
        assert_eq!(per_partition_queue(8, 4), 2);
        assert_eq!(per_partition_queue(10, 4), 3, "rounded up");
        assert_eq!(per_partition_queue(2, 16), 1, "at least one each");
        assert_eq!(per_partition_queue(0, 1), 1);
    }
}
