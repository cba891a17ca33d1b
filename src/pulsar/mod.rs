//! Pulsar I/O: the only module that knows the `pulsar` crate's API.
//!
//! # Layout
//!
//! - [`client`]: [`connect`] builds one client per process (token auth, a generous reconnection
//!   budget, since the crate gives up after its retry budget and a worker must outlive broker
//!   restarts), and the backoff while waiting for the broker. [`Client::route`] says where every
//!   producer and consumer is built: on the one client of a binary URL, or with an HTTP URL each
//!   partition on the client of the broker its own fresh lookup names.
//! - [`lookup`]: HTTP lookup (`pulsar.url` `http://` / `https://`, TDMQ 2.7.1+'s service URL),
//!   which the crate lacks: topic names to lookup paths, a topic's partitions, the broker URL to
//!   use, the REST calls.
//! - [`error`]: [`PulsarIoError`], and which of the broker's answers are refusals that waiting
//!   cannot fix.
//! - [`publish`]: [`Outgoing`] messages and the [`Publisher`], one cached producer per topic (per
//!   partition, routed as the crate routes, with an HTTP URL).
//! - [`subscribe`](mod@subscribe): a consumer with a unique name, Shared or on a non-durable
//!   subscription of its own (with an HTTP URL, one per partition read as one), and what is read
//!   off a received message.
//! - [`consume`]: the consume/settle loop every worker path runs on such a consumer.
//! - [`follow`]: following a topic from a tool (`ci-worker submit --wait`).
//! - [`props`]: the property names the worker writes.
//! - `raw` and `relay` (feature `bench`): the benchmark's own traffic and its raw relay, on the same
//!   crate and producer options as the worker.
//!
//! Children import each other by their own paths; the re-exports below are for the rest of the
//! crate.

pub mod client;
pub mod consume;
pub mod error;
pub mod follow;
pub mod lookup;
pub mod props;
pub mod publish;
#[cfg(feature = "bench")]
pub mod raw;
#[cfg(feature = "bench")]
pub mod relay;
pub mod subscribe;

pub use client::{broker_retry_delay, connect, connect_with, Client};
pub use error::PulsarIoError;
pub use follow::Follower;
pub use lookup::LookupError;
pub use publish::{producer_options, Batching, Outgoing, Publisher};
pub use subscribe::{
    message_id_string, properties_of, subscribe, SubscribeOptions, SubscriptionKind,
};
