//! Poison messages: a message whose handling keeps failing is moved to the dead-letter topic after
//! `worker.max_redeliveries` deliveries, with its history in properties, instead of cycling forever.
//!
//! The history (attempts, first and last failure, last reason) is kept per message id in this process.
//! The consumer's own dead-letter policy (the broker's redelivery count) stays as a backstop for
//! messages that fail across restarts; those arrive without the history properties.

use crate::pulsar::consume::{Delivery, Disposition};
use super::{dead_letter, Context};
use crate::pulsar::props;
use std::collections::HashMap;
use std::sync::Mutex;

/// Histories kept at most; past it the oldest knowledge is dropped (only the count restarts).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone)]
struct History {
    attempts: u32,
    first_failure: String,
    last_reason: String,
}

#[derive(Default)]
pub struct Failures {
    map: Mutex<HashMap<String, History>>,
}

impl Failures {
    fn record(&self, message_id: &str, reason: &str) -> History {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(message_id) {
            map.clear();
        }
        let now = chrono::Utc::now().to_rfc3339();
        let h = map.entry(message_id.to_string()).or_insert(History {
            attempts: 0,
            first_failure: now,
            last_reason: String::new(),
        });
        h.attempts += 1;
        h.last_reason = reason.to_string();
        h.clone()
    }

    fn forget(&self, message_id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(message_id);
    }
}

/// Turns a handler's verdict into the loop's: a retry past the limit becomes a dead letter.
pub async fn settle(
    ctx: &Context,
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
