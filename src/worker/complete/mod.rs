//! The completion flow: CI's completion events, from wherever CI delivers them, → normalized
//! results; a job's final result once, and its deadline cancelled.
//!
//! - [`handle`]: the one handler every source feeds (parse → normalize → duplicate check → results
//!   → verdict), pure of any source;
//! - [`ingress`]: the sources (`worker.callback_ingress`), each reading events its own way and
//!   acknowledging them its own way once the handler's outcome is stored: the Pulsar callback
//!   topic (ack / nack), a TDMQ for CMQ queue (delete by receipt handle), an HTTP POST (200 / 503).
//!
//! Every source settles through the same poison guard and dead letters
//! ([`crate::worker::settle`]), so the guarantees (no event lost, no second final from one
//! replica, unreadable events dead-lettered with the reason, a bounded shutdown) hold for each by
//! construction.

pub mod handle;
pub mod ingress;
