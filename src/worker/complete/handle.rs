//! The one completion handler every ingress feeds: CI's completion event (XML or JSON, detected per
//! message) → normalized results on the results topic; a job's final result once
//! ([`crate::worker::finished`]), and its deadline record cancelled. An unparseable event is
//! dead-lettered with the reason, never dropped. Its verdict is the source's acknowledgement: `Ack`
//! only once the event's outcome (its results, or its dead letter) is stored.

use crate::callback::event::{parse_event, EventFormat};
use crate::pulsar::consume::Disposition;
use crate::result::normalize::normalize_owned;
use crate::telemetry::FormatLabel;
use crate::worker::context::Context;
use crate::worker::io::{Broker, CiApi};
use crate::worker::results::{self, publish_final};
use crate::worker::settle::dead_letter;
use crate::worker::settle::inbound::Inbound;

/// The metric label of the events' dead letters, whatever brought them.
pub const SOURCE: &str = "callback";

pub async fn handle<'a, B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    event: impl Into<Inbound<'a>>,
) -> Disposition {
    let inbound = event.into();
    let event = match parse_event(inbound.payload) {
        Ok(event) => event,
        Err(e) => {
            let reason = format!("unparseable completion event: {e}");
            return match dead_letter::publish(ctx, inbound, SOURCE, &reason).await {
                Ok(()) => Disposition::Ack,
                Err(e) => Disposition::Retry(format!("could not dead-letter: {e}")),
            };
        }
    };
    let format = match event.format {
        EventFormat::Xml => "xml",
        EventFormat::Json => "json",
    };
    ctx.metrics
        .events_consumed
        .get_or_create(&FormatLabel {
            format: format.into(),
        })
        .inc();
    for result in normalize_owned(event) {
        tracing::info!(
            request_id = result.request_id.as_deref().unwrap_or(""),
            job_id = result.job_id.as_deref().unwrap_or(""),
            state = result.state.as_str(),
            "job finished"
        );
        let verdict = if result.state.is_final() {
            let verdict = publish_final(ctx, &result).await;
            // The final is out (now or before): the job's deadline has nothing left to find.
            if let (Disposition::Ack, Some(deadline)) = (&verdict, result.deadline) {
                ctx.cancel_deadline(deadline);
            }
            verdict
        } else {
            match results::publish(ctx, &result).await {
                Ok(()) => Disposition::Ack,
                Err(e) => Disposition::Retry(format!("could not store a result: {e}")),
            }
        };
        if let Disposition::Retry(reason) = verdict {
            tracing::warn!(reason, "the event will be redelivered");
            return Disposition::Retry(reason);
        }
    }
    Disposition::Ack
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{DW_JSON, DW_XML};
    use crate::pulsar::consume::Delivery;
    use crate::pulsar::props;
    use crate::request::marker::DeadlineRef;
    use crate::result::ResultState;
    use crate::worker::test_context::*;
    use crate::worker::test_doubles::*;

    const JOB_ID: &str = "ja8de3b46f86011ec9452c1c27f56a659";

    /// Where the deadline record of every job of [`our_event`] is.
    const DEADLINE: DeadlineRef = DeadlineRef {
        partition: -1,
        ledger: 7,
        entry: 12,
    };

    /// CI's documented JSON event, for a job this worker submitted for `request_id`.
    fn our_event(request_id: &str) -> String {
        DW_JSON.replace(
            "This is my DigitalWatermark job.",
            &crate::request::marker::encode(request_id, Some(DEADLINE), Some("caller")).unwrap(),
        )
    }

    fn event_delivery(ctx: &TestContext, payload: impl Into<Vec<u8>>) -> Delivery {
        delivery(&ctx.settings.pulsar.callback_topic, payload)
    }

    fn json_events(ctx: &TestContext) -> u64 {
        ctx.metrics
            .events_consumed
            .get_or_create(&FormatLabel {
                format: "json".into(),
            })
            .get()
    }

    #[tokio::test]
    async fn completion_event_becomes_the_final_result_and_cancels_the_deadline() {
        let ctx = context(ScriptedCi::default());
        let verdict = handle(&ctx, &event_delivery(&ctx, our_event("r1"))).await;
        assert_eq!(verdict, Disposition::Ack);
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].state, ResultState::Succeeded);
        assert_eq!(results[0].request_id.as_deref(), Some("r1"));
        assert_eq!(results[0].job_id.as_deref(), Some(JOB_ID));
        assert_eq!(results[0].user_data.as_deref(), Some("caller"));
        let stored = ctx.broker.on(&ctx.settings.pulsar.result_topic);
        assert_eq!(stored[0].key.as_deref(), Some("r1"));
        assert_eq!(stored[0].properties["state"], "succeeded");
        assert_eq!(json_events(&ctx), 1);
        assert!(ctx.ci.calls().is_empty());

        assert_eq!(cancelled_deadlines(&ctx), [(7, 12)]);
        assert_eq!(ctx.broker.count(), 1, "nothing but the result");
    }

    #[tokio::test]
    async fn duplicate_final_is_suppressed() {
        let ctx = context(ScriptedCi::default());
        for _ in 0..2 {
            let verdict = handle(&ctx, &event_delivery(&ctx, our_event("r1"))).await;
            assert_eq!(verdict, Disposition::Ack);
        }
        assert_eq!(results(&ctx).len(), 1);
        assert_eq!(ctx.metrics.duplicates_suppressed.get(), 1);
        assert_eq!(json_events(&ctx), 2);
    }

    #[tokio::test]
    async fn job_this_worker_did_not_submit_is_published_under_its_job_id_and_cancels_nothing() {
        let ctx = context(ScriptedCi::default());
        let verdict = handle(&ctx, &event_delivery(&ctx, DW_XML)).await;
        assert_eq!(verdict, Disposition::Ack);
        let results = results(&ctx);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].request_id, None);
        assert_eq!(results[0].state, ResultState::Succeeded);
        let stored = ctx.broker.on(&ctx.settings.pulsar.result_topic);
        assert_eq!(stored[0].key.as_deref(), Some(JOB_ID));
        assert!(cancelled_deadlines(&ctx).is_empty(), "it has no deadline");
        assert_eq!(json_events(&ctx), 0, "counted as xml");
    }

    #[tokio::test]
    async fn progress_event_is_published_every_time() {
        let ctx = context(ScriptedCi::default());
        let running = our_event("r1").replace(r#""State": "Success""#, r#""State": "Running""#);
        for _ in 0..2 {
            let verdict = handle(&ctx, &event_delivery(&ctx, running.clone())).await;
            assert_eq!(verdict, Disposition::Ack);
        }
        let progress = results(&ctx);
        assert_eq!(progress.len(), 2);
        assert!(progress.iter().all(|r| r.state == ResultState::Submitted));
        // Its final result still goes out, and only that cancels the deadline.
        handle(&ctx, &event_delivery(&ctx, our_event("r1"))).await;
        assert_eq!(results(&ctx)[2].state, ResultState::Succeeded);
        assert_eq!(cancelled_deadlines(&ctx), [(7, 12)]);
    }

    #[tokio::test]
    async fn malformed_event_is_dead_lettered() {
        let ctx = context(ScriptedCi::default());
        let verdict = handle(&ctx, &event_delivery(&ctx, "<Response><JobsDetail>")).await;
        assert_eq!(verdict, Disposition::Ack);
        let dead = ctx.broker.on(&ctx.settings.pulsar.dead_letter_topic);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].payload, b"<Response><JobsDetail>");
        assert!(dead[0].properties[props::DLQ_REASON].starts_with("unparseable completion event"));
        assert!(results(&ctx).is_empty());
        assert_eq!(dead_letters(&ctx, "callback"), 1);
    }

    #[tokio::test]
    async fn unstored_final_is_redelivered_and_not_taken_for_a_duplicate() {
        let ctx = context(ScriptedCi::default());
        let result_topic = ctx.settings.pulsar.result_topic.clone();
        ctx.broker.refuse(&result_topic);
        let first = handle(&ctx, &event_delivery(&ctx, our_event("r1"))).await;
        assert!(matches!(first, Disposition::Retry(_)), "{first:?}");
        ctx.broker.accept(&result_topic);
        let again = handle(&ctx, &event_delivery(&ctx, our_event("r1"))).await;
        assert_eq!(again, Disposition::Ack);
        assert_eq!(results(&ctx).len(), 1);
        assert_eq!(ctx.metrics.duplicates_suppressed.get(), 0);
        assert_eq!(
            cancelled_deadlines(&ctx),
            [(7, 12)],
            "cancelled once its final is stored, not before"
        );
    }
}
