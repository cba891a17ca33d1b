//! A job's life on tokio timers: `Submitted → Running → Success/Failed`, then its completion event.
//!
//! The timers only ask the [`Store`](super::store::Store) for each change, so that a cancel in
//! between (which the store applies) stops the job; the emulator's shutdown stops every timer.

use super::events;
use super::faults::SLOW_FACTOR;
use super::job::{Job, JobState};
use super::notices::EmulatorEvent;
use super::shared::Shared;
use super::submit::CallbackTarget;
use std::sync::Arc;
use std::time::Duration;

/// Runs a new job's lifecycle on tokio timers: `Submitted` for a tenth of its duration, then
/// `Running`, then `Success`/`Failed` and its completion event. A cancel in between stops it; so does
/// the emulator's shutdown.
pub(crate) fn spawn_lifecycle(shared: Arc<Shared>, job: &Job) {
    let (queued, running) = timings(
        job,
        shared.settings.emulator.job_duration.as_millis() as u64,
    );
    let id = job.id.clone();
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let lifecycle = async {
            tokio::time::sleep(queued).await;
            let Some(_) = shared.store.start(&id, running) else {
                return;
            };
            shared.notify(EmulatorEvent::StateChanged {
                job_id: id.clone(),
                state: JobState::Running,
            });
            tokio::time::sleep(running).await;
            let Some(done) = shared.store.finish(&id) else {
                return;
            };
            tracing::info!(job_id = %id, state = %done.state, "emulator: job finished");
            shared.notify(EmulatorEvent::StateChanged {
                job_id: id.clone(),
                state: done.state,
            });
            if done.faults.lost {
                if done.spec.target != CallbackTarget::None {
                    tracing::info!(job_id = %id, "emulator: __lost__: completion event not sent");
                }
                shared.notify(EmulatorEvent::CallbackSuppressed { job_id: id.clone() });
                return;
            }
            events::deliver(&shared.deliverer, &shared.faults, &shared.notices, done).await;
        };
        tokio::select! {
            _ = lifecycle => {}
            _ = shutdown.triggered() => {}
        }
    });
}

/// How long a job stays `Submitted`, then `Running`.
fn timings(job: &Job, job_duration_ms: u64) -> (Duration, Duration) {
    let total = if job.faults.slow {
        job_duration_ms.saturating_mul(u64::from(SLOW_FACTOR))
    } else {
        job_duration_ms
    };
    let queued = total / 10;
    (
        Duration::from_millis(queued),
        Duration::from_millis(total - queued),
    )
}
