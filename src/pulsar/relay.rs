//! The benchmark's raw relay: the least a consumer→producer forwarder on the same `pulsar` crate
//! does with the worker's settings — a consumer from [`subscribe`] as the caller configures it, one
//! [`RawProducer`] (the worker's producer options), a bound on messages in flight, each message
//! acknowledged individually once the broker has stored its copy, payloads forwarded unread.

use super::client::Client;
use super::raw::RawProducer;
use super::subscribe::{subscribe, SubscribeOptions};
use anyhow::{bail, Context as _, Result};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use pulsar::error::{ConnectionError, ProducerError};
use pulsar::proto::MessageIdData;

/// Forwards `from` to topic `to` until the consumer or the producer fails (the benchmark kills it).
pub async fn run(
    client: &Client,
    from: &SubscribeOptions,
    to: &str,
    max_in_flight: usize,
) -> Result<()> {
    let mut consumer = subscribe(client, from).await?;
    let mut producer = RawProducer::new(client, to, "ci-worker-bench-relay")
        .await
        .context("creating the relay's producer")?;
    let mut in_flight = FuturesUnordered::new();
    let mut slow_downs: u64 = 0;
    let mut forwarded: u64 = 0;
    tracing::info!(from = %from.topic, to = %to, max_in_flight, "bench relay started");
    loop {
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let (topic, id, receipt): (String, MessageIdData, Result<(), pulsar::Error>) = done;
                let outcome = match receipt {
                    Ok(()) => consumer.ack_with_id(&topic, id).await,
                    Err(_) => consumer.nack_with_id(&topic, id).await,
                };
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "bench relay: settling failed");
                }
                forwarded += 1;
                if forwarded % 10_000 == 0 {
                    tracing::info!(forwarded, slow_downs, "bench relay progress");
                }
            }
            next = consumer.next(), if in_flight.len() < max_in_flight => {
                let msg = match next {
                    Some(Ok(msg)) => msg,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "bench relay: consumer error");
                        continue;
                    }
                    None => bail!("the relay's consumer ended"),
                };
                let topic = msg.topic.clone();
                let id = msg.message_id().clone();
                let payload = msg.payload.data;
                let receipt = loop {
                    match producer.send(payload.clone(), None).await {
                        Ok(receipt) => break receipt,
                        Err(pulsar::Error::Producer(ProducerError::Connection(
                            ConnectionError::SlowDown,
                        ))) => {
                            slow_downs += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(e) => bail!("the relay's producer failed: {e}"),
                    }
                };
                in_flight.push(async move { (topic, id, receipt.await) });
            }
        }
    }
}
