//! A [`Context`] over the in-memory doubles of [`super::test_doubles`], and readers of what the
//! handlers under test stored, for the handlers' unit tests.

use super::context::Context;
use super::replica_log::attempts::Attempts;
use super::submit::check::PUBLISH_SKEW;
use super::test_doubles::{settings, MemoryBroker, ScriptedCi};
use crate::config::Settings;
use crate::result::JobResult;
use crate::telemetry::{Health, Metrics};
use std::sync::Arc;
use std::time::Duration;

pub type TestContext = Context<MemoryBroker, ScriptedCi>;

/// A context over a fresh [`MemoryBroker`] and `ci` (needs a Tokio runtime: it starts the done
/// records' task).
pub fn context(ci: ScriptedCi) -> TestContext {
    context_with(settings(), ci)
}

pub fn context_with(settings: Settings, ci: ScriptedCi) -> TestContext {
    let mut ctx = Context::new(
        settings,
        MemoryBroker::default(),
        ci,
        Arc::new(Metrics::new()),
        Arc::new(Health::default()),
    );
    // No reader runs here: the attempt records are read back as soon as they are stored, and the
    // attempts made since just before this "process" started are known (a request published now is
    // fresh, one published well before it started is not).
    ctx.attempts =
        Attempts::spawn_reading_own(ctx.broker.clone(), ctx.settings.pulsar.done_topic.clone())
            .knowing_since(ctx.recovery.started_at - PUBLISH_SKEW - Duration::from_secs(1));
    ctx
}

/// The results stored on the result topic.
pub fn results(ctx: &TestContext) -> Vec<JobResult> {
    ctx.broker
        .on(&ctx.settings.pulsar.result_topic)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

/// The `dead_letters` counter of `source`.
pub fn dead_letters(ctx: &TestContext, source: &str) -> u64 {
    ctx.metrics
        .dead_letters
        .get_or_create(&crate::telemetry::SourceLabel {
            source: source.into(),
        })
        .get()
}
