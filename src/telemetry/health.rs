//! Which consume loops have a working consumer: what `/readyz` reports.

use std::collections::HashMap;

/// Which loops have a working consumer (for `/readyz`).
#[derive(Default)]
pub struct Health {
    loops: parking_lot::Mutex<HashMap<&'static str, bool>>,
    changed: tokio::sync::Notify,
}

impl Health {
    pub fn set(&self, name: &'static str, ok: bool) {
        self.loops.lock().insert(name, ok);
        self.changed.notify_waiters();
    }

    /// Returns once loop `name` has a working consumer.
    pub async fn ok(&self, name: &str) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_ok(name) {
                return;
            }
            changed.await;
        }
    }

    /// Whether loop `name` has a working consumer.
    pub fn is_ok(&self, name: &str) -> bool {
        let loops = self.loops.lock();
        loops.get(name).copied().unwrap_or(false)
    }

    /// The loops without a working consumer (empty = all subscribed).
    pub fn failing(&self) -> Vec<&'static str> {
        let loops = self.loops.lock();
        let mut failing: Vec<&'static str> = loops
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(n, _)| *n)
            .collect();
        failing.sort_unstable();
        failing
    }
}

#[cfg(test)]
mod tests {
    use super::Health;
    use std::sync::Arc;

    #[tokio::test]
    async fn ok_returns_once_the_loop_is_subscribed() {
        let health = Arc::new(Health::default());
        health.set("done", false);
        let waiter = tokio::spawn({
            let h = health.clone();
            async move { h.ok("done").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        health.set("other", true);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "another loop's news is not enough");
        health.set("done", true);
        waiter.await.unwrap();
        assert!(health.is_ok("done"));
        assert!(!health.is_ok("never-set"));
    }
}
