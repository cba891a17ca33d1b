//! What every handler of the worker shares: the [`Context`] (settings, I/O, metrics and the in-process
//! state of the paths) and the [`WorkerError`] a loop ends with.

use super::deadline::schedule::DeadlineBatcher;
use super::io::{Broker, CiApi};
use super::pace::ci_calls::CiCalls;
use super::pace::concurrency::ConcurrencyLimiter;
use super::replica_log::attempts::Attempts;
use super::replica_log::done::DoneRecorder;
use super::replica_log::finished::FinishedJobs;
use super::settle::failures::Failures;
use super::submit::recovery::Recovery;
use crate::ci::client::{CiClient, CiError};
use crate::config::Settings;
use crate::pulsar::{Publisher, PulsarIoError};
use crate::telemetry::{Health, Metrics};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Pulsar(#[from] PulsarIoError),
    #[error(transparent)]
    Ci(#[from] CiError),
    #[error("worker task failed: {0}")]
    Task(String),
    #[error("http: {0}")]
    Http(String),
}

/// What every handler needs; shared read-only between tasks. `B` and `C` are the broker and CI
/// (see [`super::io`]): the real ones by default, in-memory doubles in the handlers' unit tests.
pub struct Context<B = Publisher, C = CiClient> {
    pub settings: Settings,
    pub broker: B,
    pub ci: C,
    pub metrics: Arc<Metrics>,
    /// The pace every CI call waits for, with the metrics of CI calls.
    pub ci_calls: CiCalls,
    /// The `POST /jobs` in flight (adaptive, at most `worker.max_in_flight`).
    pub submissions: ConcurrencyLimiter,
    pub recovery: Recovery,
    pub attempts: Attempts,
    pub finished_jobs: FinishedJobs,
    pub done_records: DoneRecorder,
    pub deadlines: DeadlineBatcher,
    pub failures: Failures,
    pub health: Arc<Health>,
}

impl<B: Broker + Clone, C: CiApi> Context<B, C> {
    /// A context with fresh in-process state; starts the batching tasks of done records and
    /// deadlines (so it needs a Tokio runtime).
    pub fn new(
        settings: Settings,
        broker: B,
        ci: C,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Context<B, C> {
        Context {
            recovery: Recovery::new(settings.worker.recovery_lookback),
            attempts: Attempts::spawn(broker.clone(), settings.pulsar.done_topic.clone()),
            finished_jobs: FinishedJobs::default(),
            done_records: DoneRecorder::spawn(broker.clone(), settings.pulsar.done_topic.clone()),
            deadlines: DeadlineBatcher::spawn(
                broker.clone(),
                settings.pulsar.deadline_topic.clone(),
            ),
            failures: Failures::default(),
            ci_calls: CiCalls::new(&settings, metrics.clone()),
            submissions: ConcurrencyLimiter::new(
                settings.worker.max_in_flight,
                settings.worker.adaptive_concurrency,
                metrics.clone(),
            ),
            health,
            settings,
            broker,
            ci,
            metrics,
        }
    }
}
