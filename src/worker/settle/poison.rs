//! Poison messages: a message whose handling keeps failing is moved to the dead-letter topic after
//! `worker.max_redeliveries` deliveries, with its history in properties, instead of cycling forever.
//!
//! The history (attempts, first and last failure, last reason) is kept per message id in this process
//! ([`super::failures`]); a source that counts deliveries itself (CMQ's `dequeueCount`, which other
//! replicas' receives raise too) sets the floor of the count.
//! The consumer's own dead-letter policy (the broker's redelivery count) stays as a backstop for
//! messages that fail across restarts; those arrive without the history properties.

use super::dead_letter;
use super::inbound::Inbound;
use crate::pulsar::consume::Disposition;
use crate::pulsar::props;
use crate::worker::context::Context;
use crate::worker::io::{Broker, CiApi};

/// Turns a handler's verdict into the loop's: a retry past the limit becomes a dead letter.
pub async fn settle<'a, B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    message: impl Into<Inbound<'a>>,
    source: &str,
    verdict: Disposition,
) -> Disposition {
    let message = message.into();
    let reason = match verdict {
        Disposition::Ack => {
            ctx.failures.forget(message.id);
            return Disposition::Ack;
        }
        Disposition::Retry(reason) => reason,
    };
    let history = ctx.failures.record(message.id, &reason);
    let attempts = history.attempts.max(message.deliveries);
    if attempts < ctx.settings.worker.max_redeliveries {
        return Disposition::Retry(reason);
    }
    let mut properties = message.properties.clone();
    for (k, v) in [
        (props::ATTEMPTS, attempts.to_string()),
        (props::FIRST_FAILURE_AT, history.first_failure.clone()),
    ] {
        properties.insert(k.to_string(), v);
    }
    let poisoned = Inbound {
        properties: &properties,
        ..message
    };
    let why = format!(
        "failed {attempts} times (worker.max_redeliveries); last error: {}",
        history.last_reason
    );
    match dead_letter::publish(ctx, poisoned, source, &why).await {
        Ok(()) => {
            ctx.failures.forget(message.id);
            Disposition::Ack
        }
        Err(e) => Disposition::Retry(format!("{reason}; dead-lettering failed too: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::test_context::*;
    use crate::worker::test_doubles::*;

    #[tokio::test]
    async fn message_that_keeps_failing_becomes_a_dead_letter_with_its_history() {
        let ctx = context(ScriptedCi::default());
        let d = delivery(&ctx.settings.pulsar.request_topic, "payload");
        let fail = || Disposition::Retry("CI unavailable".into());
        // worker.max_redeliveries = 3.
        for _ in 0..2 {
            let verdict = settle(&ctx, &d, "request", fail()).await;
            assert_eq!(verdict, fail());
        }
        assert_eq!(ctx.broker.count(), 0);
        assert_eq!(settle(&ctx, &d, "request", fail()).await, Disposition::Ack);
        let dead = ctx.broker.on(&ctx.settings.pulsar.dead_letter_topic);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].payload, b"payload");
        assert_eq!(dead[0].properties[props::ATTEMPTS], "3");
        assert!(dead[0].properties.contains_key(props::FIRST_FAILURE_AT));
        assert!(dead[0].properties[props::DLQ_REASON].ends_with("last error: CI unavailable"));
        assert_eq!(dead_letters(&ctx, "request"), 1);
    }

    #[tokio::test]
    async fn a_source_that_counts_deliveries_sets_the_floor_of_the_count() {
        let ctx = context(ScriptedCi::default());
        let properties = Default::default();
        // CMQ handed it out 3 times (other replicas' receives among them): the limit (3) is reached
        // at this process's first failure.
        let message = Inbound {
            payload: b"event",
            properties: &properties,
            key: None,
            origin: "cmq:ci-callbacks",
            id: "msg-1",
            deliveries: 3,
        };
        let verdict = settle(&ctx, message, "callback", Disposition::Retry("no".into())).await;
        assert_eq!(verdict, Disposition::Ack);
        let dead = ctx.broker.on(&ctx.settings.pulsar.dead_letter_topic);
        assert_eq!(dead[0].properties[props::ATTEMPTS], "3");
        assert_eq!(dead[0].properties[props::SOURCE_TOPIC], "cmq:ci-callbacks");
        assert_eq!(dead[0].properties[props::SOURCE_MESSAGE_ID], "msg-1");
        let fresh = Inbound {
            id: "msg-2",
            deliveries: 1,
            ..message
        };
        let verdict = settle(&ctx, fresh, "callback", Disposition::Retry("no".into())).await;
        assert!(matches!(verdict, Disposition::Retry(_)));
    }

    #[tokio::test]
    async fn success_forgets_the_failures() {
        let ctx = context(ScriptedCi::default());
        let d = delivery(&ctx.settings.pulsar.request_topic, "payload");
        let fail = || Disposition::Retry("CI unavailable".into());
        for _ in 0..2 {
            settle(&ctx, &d, "request", fail()).await;
        }
        assert_eq!(
            settle(&ctx, &d, "request", Disposition::Ack).await,
            Disposition::Ack
        );
        for _ in 0..2 {
            assert_eq!(settle(&ctx, &d, "request", fail()).await, fail());
        }
        assert_eq!(ctx.broker.count(), 0);
    }

    #[tokio::test]
    async fn dead_letter_that_cannot_be_stored_leaves_the_message_for_redelivery() {
        let mut settings = settings();
        settings.worker.max_redeliveries = 1;
        let ctx = context_with(settings, ScriptedCi::default());
        ctx.broker.refuse(&ctx.settings.pulsar.dead_letter_topic);
        let d = delivery(&ctx.settings.pulsar.request_topic, "payload");
        let verdict = settle(&ctx, &d, "request", Disposition::Retry("boom".into())).await;
        let Disposition::Retry(reason) = verdict else {
            panic!("{verdict:?}");
        };
        assert!(reason.contains("dead-lettering failed too"), "{reason}");
    }
}
