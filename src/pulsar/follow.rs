//! Following a topic from a tool: `ci-worker submit --wait` reads the result topic on a
//! subscription of its own, acknowledging as it goes, and removes that subscription when done.

use super::client::Client;
use super::error::PulsarIoError;
use super::subscribe::{subscribe, PulsarConsumer, SubscribeOptions};
use futures::StreamExt;

/// A consumer read one payload at a time.
pub struct Follower {
    consumer: PulsarConsumer,
}

impl Follower {
    /// Subscribes as [`subscribe`] does.
    pub async fn subscribe(
        client: &Client,
        opts: &SubscribeOptions,
    ) -> Result<Follower, PulsarIoError> {
        Ok(Follower {
            consumer: subscribe(client, opts).await?,
        })
    }

    /// The next message's payload, acknowledged (best effort) first; `None` once the consumer ended.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, pulsar::Error>> {
        let msg = match self.consumer.next().await? {
            Ok(msg) => msg,
            Err(e) => return Some(Err(e)),
        };
        self.consumer.ack(&msg).await.ok();
        Some(Ok(msg.payload.data))
    }

    /// Removes the subscription. The consumer is then forgotten, not dropped: the crate closes a
    /// dropped consumer from a task that an exiting process cuts off (an ERROR line after every
    /// run), and with the subscription gone there is nothing left to close.
    pub async fn unsubscribe(mut self) -> Result<(), pulsar::Error> {
        let outcome = self.consumer.unsubscribe().await;
        std::mem::forget(self.consumer);
        outcome
    }
}
