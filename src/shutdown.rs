//! The one stop signal of a process: SIGTERM/SIGINT, a part that failed, or a test that is done
//! all ask everything watching to stop, and every task waits on it the same way.
//!
//! A [`Shutdown`] is a cancellation token: clones share it, and [`Shutdown::child`] makes one that
//! stops with its parent but can also be stopped on its own (the worker's loops share a child, so
//! that one loop failing stops its siblings without standing for a signal the process received).

use std::future::Future;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A stop signal; cheap to clone, every clone sees the same one.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks everything watching this signal (and its children) to stop. Idempotent.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Whether the stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the stop is asked for (at once if it already was). Cancel-safe, for `select!`.
    pub async fn triggered(&self) {
        self.0.cancelled().await
    }

    /// [`Shutdown::triggered`] as a `'static` future, for APIs that keep it (graceful HTTP shutdown).
    pub fn triggered_owned(self) -> WaitForCancellationFutureOwned {
        self.0.cancelled_owned()
    }

    /// A signal that stops with this one, and also when triggered itself (without stopping this one).
    pub fn child(&self) -> Shutdown {
        Shutdown(self.0.child_token())
    }

    /// Triggers this signal once `cause` resolves (e.g. on SIGTERM). Needs a Tokio runtime.
    pub fn trigger_on(&self, cause: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cause => shutdown.trigger(),
                // Nothing left to wait for once stopped another way.
                _ = shutdown.triggered() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_child_stops_with_its_parent_but_not_the_other_way() {
        let root = Shutdown::new();
        let child = root.child();
        child.trigger();
        child.triggered().await;
        assert!(!root.is_triggered());

        let other = root.child();
        let waiting = tokio::spawn({
            let other = other.clone();
            async move { other.triggered().await }
        });
        root.trigger();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(other.is_triggered());
    }

    #[tokio::test]
    async fn trigger_on_fires_when_its_cause_resolves() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::new();
        shutdown.trigger_on(async move {
            let _ = rx.await;
        });
        assert!(!shutdown.is_triggered());
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), shutdown.clone().triggered_owned())
            .await
            .unwrap();
    }
}
