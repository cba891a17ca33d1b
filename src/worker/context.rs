//! What every handler of the worker shares: the [`Context`] (settings, I/O, metrics and the in-process
//! state of the paths) and the [`WorkerError`] a loop ends with.

use super::finished::FinishedJobs;
use super::io::{Broker, CiApi};
use super::pace::ci_calls::CiCalls;
use super::pace::concurrency::ConcurrencyLimiter;
use super::settle::failures::Failures;
use super::submit::recovery::Recovery;
use super::submit::takeover::Takeovers;
use crate::ci::client::{CiClient, CiError};
use crate::config::Settings;
use crate::pulsar::consume::{ack_by_id, AckById, AckRequests};
use crate::pulsar::{Publisher, PulsarIoError};
use crate::request::marker::DeadlineRef;
use crate::telemetry::{Health, Metrics};
use parking_lot::Mutex;
use std::sync::Arc;

/// Cancellations of deadline records waiting for the deadline loop at most (a burst of finished
/// jobs); one that finds the queue full is dropped and its record checked when due.
const DEADLINE_CANCELS_QUEUED: usize = 100_000;

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
    /// Which requests another replica may have been given first ([`Takeovers`]).
    pub takeovers: Mutex<Takeovers>,
    pub finished_jobs: FinishedJobs,
    /// Cancels deadline records by acknowledging them on the deadline subscription.
    deadline_cancels: AckById,
    /// The deadline loop's side of `deadline_cancels`, until it starts.
    deadline_cancel_requests: Mutex<Option<AckRequests>>,
    pub failures: Failures,
    pub health: Arc<Health>,
}

impl<B: Broker + Clone, C: CiApi> Context<B, C> {
    /// A context with fresh in-process state.
    pub fn new(
        settings: Settings,
        broker: B,
        ci: C,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Context<B, C> {
        let (deadline_cancels, requests) = ack_by_id(DEADLINE_CANCELS_QUEUED);
        Context {
            recovery: Recovery::new(settings.worker.recovery_lookback),
            takeovers: Mutex::new(Takeovers::new(takeover_window(&settings))),
            finished_jobs: FinishedJobs::default(),
            deadline_cancels,
            deadline_cancel_requests: Mutex::new(Some(requests)),
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

impl<B, C> Context<B, C> {
    /// Cancels the deadline record at `deadline` (a job finished, or a request that made no job):
    /// the deadline loop acknowledges it, so it is never delivered. Best effort: a cancel that does
    /// not get through costs that record its check when due.
    pub fn cancel_deadline(&self, deadline: DeadlineRef) {
        let topic = &self.settings.pulsar.deadline_topic;
        let position = crate::pulsar::consume::Position {
            ledger: deadline.ledger,
            entry: deadline.entry,
            batch_index: -1,
        };
        if !self
            .deadline_cancels
            .ack(topic, deadline.partition, position)
        {
            tracing::debug!(%deadline, "could not queue the deadline's cancel; it is checked when due");
        }
    }

    /// The cancels for the deadline loop to carry out (once: the loop takes them when it starts).
    pub fn take_deadline_cancels(&self) -> Option<AckRequests> {
        self.deadline_cancel_requests.lock().take()
    }
}

/// Deliveries of a partition suspect after a takeover: what the previous owner can have been holding
/// unacknowledged (what the crate prefetched, and its handlers in flight).
pub fn takeover_window(settings: &Settings) -> usize {
    crate::pulsar::consume::prefetched_at_most(request_receiver_queue(settings))
        + requests_in_flight(settings)
}

/// Requests handled at once: four times the `POST /jobs` in flight (`worker.max_in_flight`), so that
/// requests storing their deadline record or their `submitted` event (a broker round trip each, the
/// deadline's unbatched) keep no `POST /jobs` from going, however fast CI answers: at 0 ms twice as
/// many reached 60–85 % of the rates one broker round trip per request allowed, four times as many
/// reach them (docs/performance.md).
pub fn requests_in_flight(settings: &Settings) -> usize {
    REQUESTS_PER_POST * settings.worker.max_in_flight
}

/// See [`requests_in_flight`].
pub const REQUESTS_PER_POST: usize = 4;

/// The request consumer's receiver queue.
pub fn request_receiver_queue(settings: &Settings) -> u32 {
    settings.worker.max_in_flight.clamp(1, 1000) as u32
}
