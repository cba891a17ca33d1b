//! Subscribing: [`subscribe`] builds a consumer with a unique consumer name, on a Shared, Failover or
//! Key_Shared subscription (replicas share the load, by message, by partition or by key) or on a
//! non-durable subscription of its own (every replica sees every message); [`message_id_string`] and
//! [`properties_of`] read a received message.
//!
//! A [`PulsarConsumer`] is one crate consumer, or, with an HTTP lookup and a partitioned topic, one
//! crate consumer per partition, each on the broker that partition's own lookup named
//! ([`Client::route`]), read together: the crate's own multi-topic consumer keeps all its
//! partitions on one client, whose binary lookups would place them. Each partition has its own
//! consumer at the broker either way (as the crate and the Java client do), all under the one
//! consumer name, so Failover and Key_Shared assign partitions and keys as they do today.

use super::client::{Client, Route};
use super::error::PulsarIoError;
use futures::{Stream, StreamExt};
use pulsar::consumer::{ConsumerOptions, DeadLetterPolicy, InitialPosition, Message};
use pulsar::error::ConsumerError;
use pulsar::proto::{CommandConsumerStatsResponse, MessageIdData};
use pulsar::{Consumer, SubType, TokioExecutor};
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

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

/// A crate consumer of payloads as bytes.
pub type CrateConsumer = Consumer<Vec<u8>, TokioExecutor>;

/// The consumer the worker and its tools build: payloads as bytes (see the module doc).
///
/// Read as a stream, it takes from its partitions in turn. It ends as soon as one partition's
/// consumer ends (the crate gave up on it): the consume loop then builds the whole consumer again,
/// and with it looks every partition up again.
pub struct PulsarConsumer {
    /// (topic or partition name, its consumer); one entry for a single crate consumer.
    parts: Vec<(String, CrateConsumer)>,
    /// The part read first at the next poll.
    next: usize,
}

impl PulsarConsumer {
    /// The consumer of `topic` (a message's `topic` names it).
    fn part(&mut self, topic: &str) -> Result<&mut CrateConsumer, ConsumerError> {
        let only = self.parts.len() == 1;
        self.parts
            .iter_mut()
            .find(|(name, _)| only || name == topic)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                ConsumerError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("this consumer does not read {topic}"),
                ))
            })
    }

    /// The topic (or partition) names this consumer reads, in partition order.
    pub fn topics(&self) -> Vec<String> {
        self.parts.iter().map(|(name, _)| name.clone()).collect()
    }

    pub async fn ack(&mut self, msg: &Message<Vec<u8>>) -> Result<(), ConsumerError> {
        self.part(&msg.topic)?.ack(msg).await
    }

    pub async fn ack_with_id(
        &mut self,
        topic: &str,
        id: MessageIdData,
    ) -> Result<(), ConsumerError> {
        self.part(topic)?.ack_with_id(topic, id).await
    }

    pub async fn nack_with_id(
        &mut self,
        topic: &str,
        id: MessageIdData,
    ) -> Result<(), ConsumerError> {
        self.part(topic)?.nack_with_id(topic, id).await
    }

    /// The broker's stats of every partition's consumer; fails when the broker no longer knows one.
    pub async fn get_stats(&mut self) -> Result<Vec<CommandConsumerStatsResponse>, pulsar::Error> {
        let mut all = Vec::new();
        for (_, c) in &mut self.parts {
            all.extend(c.get_stats().await?);
        }
        Ok(all)
    }

    /// Closes every partition's consumer; the first failure is returned once all were tried.
    pub async fn close(&mut self) -> Result<(), pulsar::Error> {
        self.each(async |c| c.close().await).await
    }

    /// Removes the subscription from every partition; the first failure is returned once all were
    /// tried.
    pub async fn unsubscribe(&mut self) -> Result<(), pulsar::Error> {
        self.each(async |c| c.unsubscribe().await).await
    }

    /// `op` on every partition's consumer in turn, each tried whatever the others did; the first
    /// failure.
    async fn each(
        &mut self,
        mut op: impl AsyncFnMut(&mut CrateConsumer) -> Result<(), pulsar::Error>,
    ) -> Result<(), pulsar::Error> {
        let mut outcome = Ok(());
        for (_, c) in &mut self.parts {
            let done = op(c).await;
            if outcome.is_ok() {
                outcome = done;
            }
        }
        outcome
    }
}

impl Stream for PulsarConsumer {
    type Item = Result<Message<Vec<u8>>, pulsar::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let n = this.parts.len();
        for i in 0..n {
            let k = (this.next + i) % n;
            match this.parts[k].1.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => {
                    this.next = (k + 1) % n;
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

/// A consumer with a unique name, on the subscription `opts.kind` says: with an HTTP URL, each
/// partition's on the broker its own fresh lookup names.
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
    let failed = |topic: &str, source| PulsarIoError::Subscribe {
        topic: topic.to_string(),
        subscription: subscription.clone(),
        source,
    };
    let plan = Plan {
        opts,
        sub_type,
        subscription: &subscription,
        durable,
        name: format!("{}-{}", opts.name_prefix, unique),
    };
    match client.route(&opts.topic).await? {
        Route::Whole(pulsar) => {
            let partitions = pulsar
                .lookup_partitioned_topic_number(&opts.topic)
                .await
                .map_err(|e| failed(&opts.topic, e))?;
            let per_partition = per_partition_queue(opts.receiver_queue_size, partitions);
            let consumer = plan
                .build(&pulsar, &opts.topic, per_partition)
                .await
                .map_err(|e| failed(&opts.topic, e))?;
            Ok(PulsarConsumer {
                parts: vec![(opts.topic.clone(), consumer)],
                next: 0,
            })
        }
        Route::Parts(parts) => {
            let partitions = if parts.iter().any(|p| p.partition) {
                parts.len() as u32
            } else {
                0
            };
            let per_partition = per_partition_queue(opts.receiver_queue_size, partitions);
            let consumers = futures::future::try_join_all(parts.iter().map(|part| async {
                let consumer = plan
                    .build(&part.client, &part.topic, per_partition)
                    .await
                    .map_err(|e| failed(&part.topic, e))?;
                tracing::debug!(topic = %part.topic, broker = %part.broker, subscription = %subscription, "subscribed on the looked-up broker");
                Ok::<_, PulsarIoError>((part.topic.clone(), consumer))
            }))
            .await?;
            Ok(PulsarConsumer {
                parts: consumers,
                next: 0,
            })
        }
    }
}

/// What every crate consumer of one [`subscribe`] shares.
struct Plan<'a> {
    opts: &'a SubscribeOptions,
    sub_type: SubType,
    subscription: &'a str,
    durable: bool,
    name: String,
}

impl Plan<'_> {
    /// A crate consumer of `topic` (a topic, or one partition) on `pulsar`, prefetching
    /// `per_partition` per partition.
    async fn build(
        &self,
        pulsar: &super::client::CrateClient,
        topic: &str,
        per_partition: u32,
    ) -> Result<CrateConsumer, pulsar::Error> {
        let opts = self.opts;
        let mut builder = pulsar
            .consumer()
            .with_topic(topic)
            .with_subscription(self.subscription)
            .with_subscription_type(self.sub_type)
            .with_consumer_name(&self.name)
            .with_batch_size(per_partition)
            .with_options(
                ConsumerOptions::default()
                    .with_initial_position(if opts.from_earliest {
                        InitialPosition::Earliest
                    } else {
                        InitialPosition::Latest
                    })
                    .with_receiver_queue_size(per_partition)
                    .durable(self.durable),
            );
        if let Some((max, topic)) = &opts.dead_letter {
            builder = builder.with_dead_letter_policy(DeadLetterPolicy {
                max_redeliver_count: *max as usize,
                dead_letter_topic: topic.clone(),
            });
        }
        builder.build().await
    }
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
