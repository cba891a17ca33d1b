//! The state every part of a running emulator reaches: the HTTP handlers (CI's API and CMQ's), the
//! job timers and the deliveries each hold an `Arc` of it.

use super::auth::Verifier;
use super::cmq_queues::Queues;
use super::events::Deliverer;
use super::faults::Faults;
use super::notices::{EmulatorEvent, Notices};
use super::store::Store;
use crate::config::Settings;
use crate::shutdown::Shutdown;
use std::sync::Arc;

/// State shared by the HTTP handlers, the job timers and the deliveries.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) store: Store,
    pub(crate) verifier: Verifier,
    pub(crate) faults: Faults,
    pub(crate) deliverer: Deliverer,
    pub(crate) notices: Notices,
    /// The CMQ queues (`tdmq_delivery = "cmq"`); the deliverer holds them too.
    pub(crate) cmq_queues: Arc<Queues>,
    /// Triggered once on shutdown; every background task watches it.
    pub(crate) shutdown: Shutdown,
}

impl Shared {
    pub(crate) fn notify(&self, event: EmulatorEvent) {
        self.notices.notify(event);
    }
}
