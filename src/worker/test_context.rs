//! A [`Context`] over the in-memory doubles of [`super::test_doubles`], and readers of what the
//! handlers under test stored, for the handlers' unit tests.

use super::context::Context;
use super::test_doubles::{settings, MemoryBroker, ScriptedCi};
use crate::config::Settings;
use crate::result::JobResult;
use crate::telemetry::{Health, Metrics};
use std::sync::Arc;

pub type TestContext = Context<MemoryBroker, ScriptedCi>;

/// A context over a fresh [`MemoryBroker`] and `ci`.
pub fn context(ci: ScriptedCi) -> TestContext {
    context_with(settings(), ci)
}

pub fn context_with(settings: Settings, ci: ScriptedCi) -> TestContext {
    Context::new(
        settings,
        MemoryBroker::default(),
        ci,
        Arc::new(Metrics::new()),
        Arc::new(Health::default()),
    )
}

/// The deadline records cancelled so far (`(ledger, entry)`), in order.
pub fn cancelled_deadlines(ctx: &TestContext) -> Vec<(u64, u64)> {
    let mut requests = ctx
        .take_deadline_cancels()
        .expect("cancels are read once per context");
    std::iter::from_fn(|| requests.try_next())
        .map(|(_, id)| (id.ledger_id, id.entry_id))
        .collect()
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
