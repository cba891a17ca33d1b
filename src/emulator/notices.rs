//! What the emulator reports about itself to tests and tooling: [`EmulatorEvent`]s on a broadcast
//! feed, which nobody needs to be listening to.

use super::job::JobState;
use tokio::sync::broadcast;

/// How far a subscriber may fall behind before it loses the oldest events.
const CAPACITY: usize = 1024;

/// Something observable that happened inside the emulator, for tests and tooling
/// ([`EmulatorHandle::subscribe`](super::EmulatorHandle::subscribe)): every state change of every
/// job and the fate of every callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmulatorEvent {
    /// A job entered `state` (`Submitted` on creation, then `Running`, `Success`/`Failed` or `Cancel`).
    StateChanged { job_id: String, state: JobState },
    /// A completion event was sent into the emulator's CMQ queue (`target` is `cmq:<queue>`), stored
    /// by the broker (`target` is the Pulsar topic) or accepted by the callback URL (`target` is the
    /// URL); `copy` is 1, or 2 for an injected duplicate.
    CallbackDelivered {
        job_id: String,
        target: String,
        copy: u32,
    },
    /// The job's completion event was deliberately not sent (`__lost__` in the input object key).
    CallbackSuppressed { job_id: String },
    /// Delivery was abandoned (logged as an error too): after retrying (Pulsar, URL), or at once when
    /// the CMQ queue does not exist or refuses the body.
    CallbackFailed { job_id: String, error: String },
}

/// The sending side of the feed.
pub(crate) struct Notices(broadcast::Sender<EmulatorEvent>);

impl Notices {
    pub(crate) fn new() -> Notices {
        Notices(broadcast::channel(CAPACITY).0)
    }

    pub(crate) fn notify(&self, event: EmulatorEvent) {
        // No subscriber is the normal case outside tests.
        let _ = self.0.send(event);
    }

    /// A feed of the events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<EmulatorEvent> {
        self.0.subscribe()
    }
}
