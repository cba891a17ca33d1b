//! The `done` records of every replica ([`super::done_records`]), read on a non-durable subscription
//! of this process's own: each job id goes into [`super::duplicates::FinishedJobs`], so that a
//! deadline of a job another replica finished costs no CI call here, and a completion event that
//! reaches this replica late is a recognized duplicate.
//!
//! Non-durable, starting at the newest record: the broker keeps nothing for a replica that is gone,
//! so killed replicas leave no backlog behind, and a restarted one learns only what finishes from
//! then on (an older job whose deadline reaches it is described once, as README Limits says).

use super::context::{Context, WorkerError};
use super::done_records::{ids_of, RECORD_DONE};
use super::io::{Broker, CiApi};
use super::serve::serve;
use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{props, Client, SubscribeOptions, SubscriptionKind};
use crate::shutdown::Shutdown;
use std::sync::Arc;

/// The readiness name of this loop.
pub const HEALTH_NAME: &str = "done";

pub async fn run(ctx: Arc<Context>, client: Client, stop: Shutdown) -> Result<(), WorkerError> {
    let p = &ctx.settings.pulsar;
    let subscribe = SubscribeOptions {
        topic: p.done_topic.clone(),
        subscription: format!("{}-done", p.request_subscription),
        name_prefix: "ci-worker-done".into(),
        receiver_queue_size: 100,
        dead_letter: None,
        from_earliest: false,
        kind: SubscriptionKind::OwnNonDurable,
    };
    serve(
        &ctx,
        client,
        stop,
        HEALTH_NAME,
        "done",
        subscribe,
        16,
        |ctx, d| async move { handle(&ctx, &d) },
    )
    .await
}

/// Remembers the record's jobs as finished. Anything else on the topic is not ours: skipped.
pub fn handle<B: Broker, C: CiApi>(ctx: &Context<B, C>, delivery: &Delivery) -> Disposition {
    if delivery.properties.get(props::RECORD).map(String::as_str) == Some(RECORD_DONE) {
        for job_id in ids_of(&delivery.payload) {
            ctx.finished_jobs.insert(job_id);
        }
    } else {
        tracing::warn!(topic = %delivery.topic, message_id = %delivery.message_id, "not a done record; skipped");
    }
    Disposition::Ack
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::test_context::*;
    use crate::worker::test_doubles::*;

    #[tokio::test]
    async fn every_job_of_a_done_record_is_known_finished() {
        let ctx = context(ScriptedCi::default());
        let mut record = delivery(&ctx.settings.pulsar.done_topic, "j1\nj2");
        record
            .properties
            .insert(props::RECORD.into(), RECORD_DONE.into());
        assert_eq!(handle(&ctx, &record), Disposition::Ack);
        assert!(ctx.finished_jobs.contains("j1"));
        assert!(ctx.finished_jobs.contains("j2"));
        assert!(!ctx.finished_jobs.contains("j3"));
    }

    #[tokio::test]
    async fn anything_else_teaches_nothing() {
        let ctx = context(ScriptedCi::default());
        let stranger = delivery(&ctx.settings.pulsar.done_topic, "j1");
        assert_eq!(handle(&ctx, &stranger), Disposition::Ack);
        assert!(!ctx.finished_jobs.contains("j1"));
        assert!(ctx.broker.count() == 0);
    }
}
