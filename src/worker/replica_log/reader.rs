//! The reader of `pulsar.done_topic`: the `done` records of every replica ([`super::done`]), read on
//! a non-durable subscription of this process's own: each job id goes into
//! [`super::finished::FinishedJobs`], so that a deadline of a job another replica finished costs no
//! CI call here, and a completion event that reaches this replica late is a recognized duplicate.
//! The attempt records on the same topic go to [`super::attempts::Attempts`] (in the topic's order:
//! that order is what they rely on).
//!
//! Non-durable, starting at the newest record: the broker keeps nothing for a replica that is gone,
//! so killed replicas leave no backlog behind, and a restarted one learns only what finishes from
//! then on (an older job whose deadline reaches it is described once, as README Limits says).

use crate::pulsar::consume::{Delivery, Disposition};
use crate::pulsar::{Client, SubscribeOptions, SubscriptionKind};
use crate::shutdown::Shutdown;
use crate::worker::context::{Context, WorkerError};
use crate::worker::io::{Broker, CiApi};
use crate::worker::record::{self, Record};
use crate::worker::settle::serve::serve;
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
        // One at a time: attempt records must be taken in the topic's order.
        1,
        |ctx, d| async move { handle(&ctx, &d) },
    )
    .await
}

/// Remembers a done record's jobs as finished, and an attempt record's requests as attempted.
/// Anything else on the topic is not ours: skipped.
pub fn handle<B: Broker, C: CiApi>(ctx: &Context<B, C>, delivery: &Delivery) -> Disposition {
    match record::read(&delivery.payload) {
        Ok(Record::Done(jobs)) => {
            for job_id in &jobs {
                ctx.finished_jobs.insert(job_id);
            }
        }
        Ok(Record::Attempts(attempt)) => ctx.attempts.observe(&attempt),
        Ok(Record::Deadlines(_)) => {
            tracing::warn!(topic = %delivery.topic, message_id = %delivery.message_id, "a deadline record on the done topic; skipped");
        }
        Err(error) => {
            tracing::warn!(topic = %delivery.topic, message_id = %delivery.message_id, %error, "not a done or attempt record; skipped");
        }
    }
    ctx.attempts
        .read_at(position(&delivery.message_id), delivery.publish_time);
    Disposition::Ack
}

/// (ledger, entry) of a message id `ledger:entry:partition[:batch]`.
fn position(message_id: &str) -> Option<(u64, u64)> {
    let mut parts = message_id.split(':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::record::Attempt;
    use crate::worker::test_context::*;
    use crate::worker::test_doubles::*;

    fn stored(ctx: &TestContext, record: &Record) -> Delivery {
        delivery(
            &ctx.settings.pulsar.done_topic,
            record::message(record).payload,
        )
    }

    #[tokio::test]
    async fn every_job_of_a_done_record_is_known_finished() {
        let ctx = context(ScriptedCi::default());
        let done = stored(&ctx, &Record::Done(vec!["j1".into(), "j2".into()]));
        assert_eq!(handle(&ctx, &done), Disposition::Ack);
        assert!(ctx.finished_jobs.contains("j1"));
        assert!(ctx.finished_jobs.contains("j2"));
        assert!(!ctx.finished_jobs.contains("j3"));
    }

    #[tokio::test]
    async fn an_attempt_record_makes_its_requests_possible_repeats() {
        let ctx = context(ScriptedCi::default());
        let attempt = Record::Attempts(Attempt {
            writer: "another-replica".into(),
            seq: 3,
            at_ms: 1_700_000_000_000,
            requests: vec!["r1".into()],
        });
        assert_eq!(handle(&ctx, &stored(&ctx, &attempt)), Disposition::Ack);
        let claim = ctx.attempts.claim("r1").await.unwrap();
        assert!(claim.earlier_attempt.is_some());
        assert_eq!(
            ctx.attempts.claim("r2").await.unwrap().earlier_attempt,
            None
        );
    }

    #[tokio::test]
    async fn anything_else_teaches_nothing() {
        let ctx = context(ScriptedCi::default());
        // A done record of 0.4: ids one per line.
        let stranger = delivery(&ctx.settings.pulsar.done_topic, "j1");
        assert_eq!(handle(&ctx, &stranger), Disposition::Ack);
        assert!(!ctx.finished_jobs.contains("j1"));
        assert!(ctx.broker.count() == 0);
    }
}
