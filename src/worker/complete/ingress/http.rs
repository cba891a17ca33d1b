//! The `http` ingress: `POST /ci/callback/<http.callback_token>` on `http.listen`, where CI sends
//! completion events when jobs are submitted with `CallBackType=Url` (`ci.callback_type = "Url"`).
//!
//! The body (XML or JSON, at most [`MAX_EVENT_BYTES`]) goes through the completion handler, and is
//! answered 200 only once its outcome (its results, or its dead letter) is stored; otherwise, or
//! when that takes longer than [`STORE_WAIT`], 503, so that CI sends it again. A wrong token, or
//! any other path, is 404; the token is compared in constant time. A repeat of a body already
//! handled (CI retrying after an answer it did not see) is answered 200 without handling it again,
//! and a repeat that arrives while the first is still being handled waits for that one. A body
//! that keeps failing is dead-lettered after `worker.max_redeliveries` attempts (CI's retries
//! count) and then answered 200.

use crate::callback::event::MAX_EVENT_BYTES;
use crate::pulsar::consume::Disposition;
use crate::secret::Secret;
use crate::telemetry::{IngressLabels, Metrics, SourceLabel};
use crate::worker::bounded::Bounded;
use crate::worker::complete::handle::{handle, SOURCE};
use crate::worker::context::Context;
use crate::worker::settle::inbound::Inbound;
use crate::worker::settle::poison;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::{watch, OnceCell};

/// How long one request waits for the event's outcome to be stored before it is answered 503. The
/// handling goes on; a retry of the same body joins it.
const STORE_WAIT: Duration = Duration::from_secs(5);
/// How long a stored body is remembered, to answer CI's retries of it without a second copy.
const REMEMBER: Duration = Duration::from_secs(3600);
/// Bodies remembered at most (32-byte digests; the oldest are forgotten first).
const REMEMBER_MAX: usize = 100_000;

/// The state of the route.
#[derive(Clone)]
pub struct HttpIngress {
    /// Set once the worker has connected to the broker; until then every event is answered 503.
    worker: Arc<OnceCell<Arc<Context>>>,
    token_digest: [u8; 32],
    metrics: Arc<Metrics>,
    recent: Arc<RecentBodies>,
}

impl HttpIngress {
    pub fn new(
        worker: Arc<OnceCell<Arc<Context>>>,
        token: &Secret,
        metrics: Arc<Metrics>,
    ) -> HttpIngress {
        HttpIngress {
            worker,
            token_digest: Sha256::digest(token.expose().as_bytes()).into(),
            metrics,
            recent: Arc::new(RecentBodies::default()),
        }
    }

    /// The route, to merge into the probes' router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/ci/callback/{token}", post(receive))
            .layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
            .with_state(self)
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .ingress_events
            .get_or_create(&IngressLabels {
                source: "http".into(),
                outcome: outcome.into(),
            })
            .inc();
    }
}

async fn receive(
    State(ingress): State<HttpIngress>,
    Path(token): Path<String>,
    body: Bytes,
) -> (StatusCode, &'static str) {
    // Digests first, so that the comparison takes the same time whatever the length.
    let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if !bool::from(given.ct_eq(&ingress.token_digest)) {
        ingress.count("refused");
        return (StatusCode::NOT_FOUND, "not found");
    }
    let Some(ctx) = ingress.worker.get().cloned() else {
        ingress.count("failed");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker yet; send it again",
        );
    };
    let arrived = Instant::now();
    let digest: [u8; 32] = Sha256::digest(&body).into();
    let mut outcome = match ingress.recent.begin(digest) {
        Begin::Stored => {
            ingress.count("repeated");
            return (StatusCode::OK, "stored");
        }
        Begin::Pending(outcome) => outcome,
        Begin::New(outcome) => {
            let recent = ingress.recent.clone();
            // Spawned: the handling finishes even if CI hangs up, and a retry can join it.
            tokio::spawn(async move {
                let stored = settle(&ctx, &body, &digest).await;
                recent.finish(digest, stored);
            });
            outcome
        }
    };
    let stored = tokio::time::timeout(STORE_WAIT, async {
        loop {
            if let Some(stored) = *outcome.borrow_and_update() {
                return stored;
            }
            if outcome.changed().await.is_err() {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false);
    if stored {
        ingress.count("stored");
        ingress
            .metrics
            .ingress_store_duration
            .get_or_create(&SourceLabel {
                source: "http".into(),
            })
            .observe(arrived.elapsed().as_secs_f64());
        (StatusCode::OK, "stored")
    } else {
        ingress.count("failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the event's outcome was not stored; send it again",
        )
    }
}

/// The body through the completion handler and the poison guard (keyed by the body's digest, so
/// that CI's retries of it count); true once its outcome is stored.
async fn settle(ctx: &Context, body: &[u8], digest: &[u8; 32]) -> bool {
    let properties = HashMap::from([("ci-worker-ingress".to_string(), "http".to_string())]);
    let id = hex::encode(digest);
    let inbound = Inbound {
        payload: body,
        properties: &properties,
        key: None,
        origin: "http",
        id: &id,
        deliveries: 1,
    };
    let verdict = handle(ctx, inbound).await;
    match poison::settle(ctx, inbound, SOURCE, verdict).await {
        Disposition::Ack => true,
        Disposition::Retry(reason) => {
            tracing::warn!(
                reason,
                "http ingress: event outcome not stored; CI is answered 503"
            );
            false
        }
    }
}

/// What [`RecentBodies::begin`] found for a body.
enum Begin {
    /// Stored before: answer 200 again.
    Stored,
    /// Being stored by an earlier request: wait for its outcome (`Some(stored)`).
    Pending(watch::Receiver<Option<bool>>),
    /// Not seen: the caller stores it and reports with [`RecentBodies::finish`].
    New(watch::Receiver<Option<bool>>),
}

enum Entry {
    Pending(watch::Sender<Option<bool>>),
    Stored,
}

/// Bodies being stored or stored lately, by digest: at most [`REMEMBER_MAX`], each for
/// [`REMEMBER`] (the oldest first; a store still pending that is forgotten answers its waiters 503,
/// and CI sends the event again).
struct RecentBodies {
    entries: Mutex<Bounded<[u8; 32], Entry>>,
}

impl Default for RecentBodies {
    fn default() -> Self {
        RecentBodies::with_capacity(REMEMBER_MAX)
    }
}

impl RecentBodies {
    fn with_capacity(capacity: usize) -> RecentBodies {
        RecentBodies {
            entries: Mutex::new(Bounded::new(capacity, Some(REMEMBER))),
        }
    }

    fn begin(&self, digest: [u8; 32]) -> Begin {
        let mut entries = self.entries.lock();
        match entries.get(&digest) {
            Some(Entry::Stored) => return Begin::Stored,
            Some(Entry::Pending(sender)) => return Begin::Pending(sender.subscribe()),
            None => {}
        }
        let (sender, receiver) = watch::channel(None);
        entries.insert(digest, Entry::Pending(sender));
        Begin::New(receiver)
    }

    /// Records the outcome of a store: a stored body is remembered, a failed one forgotten (so that
    /// the next attempt stores it anew).
    fn finish(&self, digest: [u8; 32], stored: bool) {
        let mut entries = self.entries.lock();
        let previous = entries.remove(&digest);
        if stored {
            entries.insert(digest, Entry::Stored);
        }
        if let Some(Entry::Pending(sender)) = previous {
            let _ = sender.send(Some(stored));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retry_joins_the_pending_store_and_a_stored_body_is_not_stored_again() {
        let recent = RecentBodies::default();
        let Begin::New(mut first) = recent.begin([1; 32]) else {
            panic!("a new body is new")
        };
        let Begin::Pending(mut retry) = recent.begin([1; 32]) else {
            panic!("a retry while pending joins it")
        };
        recent.finish([1; 32], true);
        first.changed().await.unwrap();
        retry.changed().await.unwrap();
        assert_eq!(*first.borrow(), Some(true));
        assert_eq!(*retry.borrow(), Some(true));
        assert!(matches!(recent.begin([1; 32]), Begin::Stored));
        assert!(matches!(recent.begin([2; 32]), Begin::New(_)));
    }

    #[tokio::test]
    async fn a_failed_store_is_forgotten_so_the_next_attempt_stores_anew() {
        let recent = RecentBodies::default();
        let Begin::New(_) = recent.begin([3; 32]) else {
            panic!()
        };
        let Begin::Pending(mut retry) = recent.begin([3; 32]) else {
            panic!()
        };
        recent.finish([3; 32], false);
        retry.changed().await.unwrap();
        assert_eq!(*retry.borrow(), Some(false));
        assert!(matches!(recent.begin([3; 32]), Begin::New(_)));
    }

    #[test]
    fn the_memory_is_bounded_and_forgets_the_oldest_first() {
        let recent = RecentBodies::with_capacity(2);
        for body in 1..=3u8 {
            let Begin::New(_) = recent.begin([body; 32]) else {
                panic!()
            };
            recent.finish([body; 32], true);
        }
        assert_eq!(recent.entries.lock().len(), 2);
        assert!(matches!(recent.begin([3; 32]), Begin::Stored));
        assert!(matches!(recent.begin([1; 32]), Begin::New(_)), "forgotten");
    }
}
