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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which operation of the job API a request asked for, as its method and path say (whatever
/// became of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    Submit,
    Describe,
    List,
    Cancel,
    /// `GET /queue` (DescribeMediaProcessQueues).
    Queue,
    /// Any other method or path of the job API listener (404, 501).
    Other,
}

/// Requests of the job API received since start, by operation (`GET /_emulator/calls`).
#[derive(Debug, Default)]
pub(crate) struct Calls {
    submit: AtomicU64,
    describe: AtomicU64,
    list: AtomicU64,
    cancel: AtomicU64,
    queue: AtomicU64,
    other: AtomicU64,
    /// Of those, answered 429 `SlowDown` (`qps_limit`, `throttle_rate`), by operation.
    throttled: [AtomicU64; 6],
}

impl Calls {
    pub(crate) fn count_throttled(&self, kind: CallKind) {
        self.throttled[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self, kind: CallKind) {
        let counter = match kind {
            CallKind::Submit => &self.submit,
            CallKind::Describe => &self.describe,
            CallKind::List => &self.list,
            CallKind::Cancel => &self.cancel,
            CallKind::Queue => &self.queue,
            CallKind::Other => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `{"submit":N,"describe":N,"list":N,"cancel":N,"queue":N,"other":N,"throttled":{…}}`, the
    /// throttled ones by the same keys.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let t = |k: CallKind| self.throttled[k as usize].load(Ordering::Relaxed);
        serde_json::json!({
            "throttled": {
                "submit": t(CallKind::Submit),
                "describe": t(CallKind::Describe),
                "list": t(CallKind::List),
                "cancel": t(CallKind::Cancel),
                "queue": t(CallKind::Queue),
                "other": t(CallKind::Other),
            },
            "submit": n(&self.submit),
            "describe": n(&self.describe),
            "list": n(&self.list),
            "cancel": n(&self.cancel),
            "queue": n(&self.queue),
            "other": n(&self.other),
        })
    }
}

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
    /// Job API requests received, by operation.
    pub(crate) calls: Calls,
    /// Triggered once on shutdown; every background task watches it.
    pub(crate) shutdown: Shutdown,
}

impl Shared {
    pub(crate) fn notify(&self, event: EmulatorEvent) {
        self.notices.notify(event);
    }
}
