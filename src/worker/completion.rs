//! The completion path: CI's completion event (XML or JSON, detected per message) → normalized results
//! on the results topic. Unparseable events are dead-lettered, never dropped.

use super::context::{Context, WorkerError};
use super::dead_letter;
use super::io::{Broker, CiApi};
use super::results::{self, publish_final};
use super::serve::serve;
use crate::callback::event::{parse_event, EventFormat};
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{Client, SubscribeOptions};
use crate::result::normalize::normalize_owned;
use crate::telemetry::FormatLabel;
use std::sync::Arc;
use tokio::sync::watch;

pub async fn run(
    ctx: Arc<Context>,
    client: Client,
    stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let p = &ctx.settings.pulsar;
    let subscribe = SubscribeOptions {
        topic: p.callback_topic.clone(),
        subscription: p.callback_subscription.clone(),
        name_prefix: "ci-worker-complete".into(),
        receiver_queue_size: 1000,
        dead_letter: Some((
            ctx.settings.worker.max_redeliveries,
            p.dead_letter_topic.clone(),
        )),
        from_earliest: true,
        key_shared: false,
    };
    // Normalizing is cheap: the bound is on results awaiting the broker's receipt.
    serve(
        &ctx,
        client,
        stop,
        "complete",
        "callback",
        subscribe,
        ctx.settings.worker.max_in_flight.max(256),
        |ctx, d| async move { handle(&ctx, &d).await },
    )
    .await
}

pub async fn handle<B: Broker, C: CiApi>(ctx: &Context<B, C>, delivery: &Delivery) -> Disposition {
    let event = match parse_event(&delivery.payload) {
        Ok(event) => event,
        Err(e) => {
            let reason = format!("unparseable completion event: {e}");
            return match dead_letter::publish(ctx, delivery, "callback", &reason).await {
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
            // Only jobs this worker submitted have deadlines.
            if let (Disposition::Ack, Some(_), Some(job_id)) =
                (&verdict, &result.request_id, &result.job_id)
            {
                // Best effort, batched, off the event's critical path: the event is done once its
                // result is.
                ctx.done_records.record(job_id);
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
