//! A message as any source handed it to the worker, borrowed: what a handler reads, and what a dead
//! letter and the poison guard need to say where it came from. A Pulsar [`Delivery`] is one; the
//! completion path's other sources (a CMQ message, an HTTP POST, a Kafka record) make one of what
//! they received, so that every source goes through the same handler and the same settling.

use crate::pulsar::consume::Delivery;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub payload: &'a [u8],
    pub properties: &'a HashMap<String, String>,
    pub key: Option<&'a str>,
    /// Where it came from: a topic (a partitioned topic's partition), `cmq:<queue>`,
    /// `kafka:<topic>/<partition>`, `http`.
    pub origin: &'a str,
    /// Its id there: a Pulsar message id, a CMQ `msgId`, a Kafka offset. The poison guard keeps a
    /// failure history per id.
    pub id: &'a str,
    /// Deliveries of it the source has counted, this one included (CMQ's `dequeueCount`, across
    /// replicas); 1 when the source does not count them.
    pub deliveries: u32,
}

impl<'a> From<&'a Delivery> for Inbound<'a> {
    fn from(d: &'a Delivery) -> Self {
        Inbound {
            payload: &d.payload,
            properties: &d.properties,
            key: d.key.as_deref(),
            origin: &d.topic,
            id: &d.message_id,
            // The broker's redelivery count misses redeliveries after a consumer died; the poison
            // guard counts failures itself.
            deliveries: 1,
        }
    }
}
