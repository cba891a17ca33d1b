//! Settling a delivery: what becomes of a message once its handler has given its verdict, the same
//! for every consume loop. [`serve`] runs a loop with a handler; [`poison`] turns a verdict into an
//! ack, a redelivery or (after `worker.max_redeliveries` failures, counted in [`failures`]) a dead
//! letter; [`dead_letter`] stores one. Handlers dead-letter through it too (unreadable input).
//! [`inbound`] is the message as any source handed it over, what all of them take.

pub mod dead_letter;
pub mod failures;
pub mod inbound;
pub mod poison;
pub mod serve;
