//! The benchmark's own traffic, closer to the crate than the worker's: a producer that pipelines
//! without retries (its receipts are awaited by the caller, in windows), and an Exclusive follower
//! that acknowledges cumulatively, so that the broker does not pay for one ack per message on the
//! benchmark's side.

use super::client::Client;
use super::error::PulsarIoError;
use super::publish::producer_options;
use super::subscribe::CrateConsumer;
use futures::StreamExt;
use pulsar::consumer::{ConsumerOptions, InitialPosition, Message as InMessage};
use pulsar::producer::{Message as OutMessage, SendFuture};
use pulsar::{Producer, SubType, TokioExecutor};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// One producer with the worker's options ([`producer_options`]): batching off, so consumers see one
/// message per entry, and waiting for room instead of failing when the connection's queue is full.
pub struct RawProducer(Producer<TokioExecutor>);

impl RawProducer {
    /// A producer on `topic` named `<name_prefix>-<uuid>`.
    pub async fn new(
        client: &Client,
        topic: &str,
        name_prefix: &str,
    ) -> Result<RawProducer, PulsarIoError> {
        client
            .for_topic(topic)
            .await?
            .producer()
            .with_topic(topic)
            .with_name(format!("{name_prefix}-{}", uuid::Uuid::new_v4()))
            .with_options(producer_options())
            .build()
            .await
            .map(RawProducer)
            .map_err(|source| PulsarIoError::Producer {
                topic: topic.to_string(),
                source,
            })
    }

    /// Hands one message to the crate; the receipt resolves once the broker has stored it.
    pub async fn send(
        &mut self,
        payload: Vec<u8>,
        key: Option<String>,
    ) -> Result<Receipt, pulsar::Error> {
        self.0
            .send_non_blocking(OutMessage {
                payload,
                partition_key: key,
                ..OutMessage::default()
            })
            .await
            .map(Receipt)
    }

    pub async fn close(mut self) {
        let _ = self.0.close().await;
    }
}

/// The broker's receipt for one message sent by a [`RawProducer`].
pub struct Receipt(SendFuture);

impl Future for Receipt {
    type Output = Result<(), pulsar::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.map(|_| ()))
    }
}

/// An Exclusive subscription from the earliest message, under a subscription name of its own.
pub struct Tail(CrateConsumer);

/// One message received by a [`Tail`].
pub struct TailMessage(InMessage<Vec<u8>>);

impl Tail {
    /// Subscribes to `topic` now, before the process under test publishes anything to it.
    pub async fn subscribe(client: &Client, topic: &str) -> Result<Tail, PulsarIoError> {
        let subscription = format!("ci-worker-bench-{}", uuid::Uuid::new_v4());
        client
            .for_topic(topic)
            .await?
            .consumer()
            .with_topic(topic)
            .with_subscription(&subscription)
            .with_subscription_type(SubType::Exclusive)
            .with_options(
                ConsumerOptions::default()
                    .with_initial_position(InitialPosition::Earliest)
                    .with_receiver_queue_size(2000),
            )
            .build()
            .await
            .map(Tail)
            .map_err(|source| PulsarIoError::Subscribe {
                topic: topic.to_string(),
                subscription,
                source,
            })
    }

    /// The next message; `None` once the consumer ended.
    pub async fn next(&mut self) -> Option<Result<TailMessage, pulsar::Error>> {
        Some(self.0.next().await?.map(TailMessage))
    }

    /// Acknowledges `msg` and everything before it (best effort).
    pub async fn ack_through(&mut self, msg: &TailMessage) {
        let _ = self.0.cumulative_ack(&msg.0).await;
    }

    pub async fn close(mut self) {
        let _ = self.0.close().await;
    }
}

impl TailMessage {
    /// The producing client's clock when it sent the message (ms since epoch).
    pub fn publish_ms(&self) -> u64 {
        self.0.metadata().publish_time
    }

    pub fn key(&self) -> Option<String> {
        self.0.key()
    }

    /// The value of property `name`, if set.
    pub fn property(&self, name: &str) -> Option<String> {
        self.0
            .metadata()
            .properties
            .iter()
            .find(|kv| kv.key == name)
            .map(|kv| kv.value.clone())
    }

    pub fn payload(&self) -> &[u8] {
        &self.0.payload.data
    }
}
