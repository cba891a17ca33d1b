//! Poison messages: a message whose handling keeps failing is moved to the dead-letter topic after
//! `worker.max_redeliveries` deliveries, with its history in properties, instead of cycling forever.
//!
//! The history (attempts, first and last failure, last reason) is kept per message id in this process
//! ([`super::failure_history`]).
//! The consumer's own dead-letter policy (the broker's redelivery count) stays as a backstop for
//! messages that fail across restarts; those arrive without the history properties.

use super::context::Context;
use super::dead_letter;
use super::io::{Broker, CiApi};
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::props;

/// Turns a handler's verdict into the loop's: a retry past the limit becomes a dead letter.
pub async fn settle<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    delivery: &Delivery,
    source: &str,
    verdict: Disposition,
) -> Disposition {
    let reason = match verdict {
        Disposition::Ack => {
            ctx.failures.forget(&delivery.message_id);
            return Disposition::Ack;
        }
        Disposition::Retry(reason) => reason,
    };
    let history = ctx.failures.record(&delivery.message_id, &reason);
    if history.attempts < ctx.settings.worker.max_redeliveries {
        return Disposition::Retry(reason);
    }
    let mut poisoned = delivery.clone();
    for (k, v) in [
        (props::ATTEMPTS, history.attempts.to_string()),
        (props::FIRST_FAILURE_AT, history.first_failure.clone()),
    ] {
        poisoned.properties.insert(k.to_string(), v);
    }
    let why = format!(
        "failed {} times (worker.max_redeliveries); last error: {}",
        history.attempts, history.last_reason
    );
    match dead_letter::publish(ctx, &poisoned, source, &why).await {
        Ok(()) => {
            ctx.failures.forget(&delivery.message_id);
            Disposition::Ack
        }
        Err(e) => Disposition::Retry(format!("{reason}; dead-lettering failed too: {e}")),
    }
}
