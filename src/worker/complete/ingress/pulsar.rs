//! The `pulsar` ingress: completion events that something else (a bridge of the user's own, or the
//! emulator's) publishes to `pulsar.callback_topic`.
//!
//! Read on a Key_Shared subscription keyed by job id: every copy of a job's event reaches the same
//! replica, whose memory of finished jobs ([`crate::worker::finished`]) suppresses the copies.
//! Acknowledged once the handler's outcome is stored; a failure is redelivered (nack), and one
//! failing `worker.max_redeliveries` times is dead-lettered by the poison guard.

use crate::pulsar::{Client, SubscribeOptions, SubscriptionKind};
use crate::shutdown::Shutdown;
use crate::worker::complete::handle::{handle, SOURCE};
use crate::worker::context::{Context, WorkerError};
use crate::worker::settle::serve::serve;
use std::sync::Arc;

/// The readiness name of this source.
pub const HEALTH_NAME: &str = "complete";

/// Events handled at once, and the receiver queue. Normalizing is cheap; an event's time is spent
/// waiting for its result's receipt (batched), so the events in flight bound the rate at about this
/// many per broker round trip. 256 capped it near 13,000 events/s; the memory is the receiver
/// queue's (a few MiB of payloads).
const EVENTS_IN_FLIGHT: usize = 1000;

pub async fn run(ctx: Arc<Context>, client: Client, stop: Shutdown) -> Result<(), WorkerError> {
    let p = &ctx.settings.pulsar;
    let subscribe = SubscribeOptions {
        topic: p.callback_topic.clone(),
        subscription: p.callback_subscription.clone(),
        name_prefix: "ci-worker-complete".into(),
        receiver_queue_size: EVENTS_IN_FLIGHT as u32,
        dead_letter: Some((
            ctx.settings.worker.max_redeliveries,
            p.dead_letter_topic.clone(),
        )),
        from_earliest: true,
        kind: SubscriptionKind::KeyShared,
    };
    serve(
        &ctx,
        client,
        stop,
        HEALTH_NAME,
        SOURCE,
        subscribe,
        ctx.settings.worker.max_in_flight.max(EVENTS_IN_FLIGHT),
        None,
        |ctx, d| async move { handle(&ctx, &*d).await },
    )
    .await
}
