//! [`ConcurrencyLimiter`]: the submissions in flight, a [`tokio::sync::Semaphore`] whose permits a
//! [`ConcurrencyAimd`] sets; the current limit is the gauge `ci_worker_ci_concurrency_limit`.
//!
//! A cut takes permits away: the free ones at once ([`Semaphore::forget_permits`]), the ones in use
//! when their submissions end (counted as `owed`, and forgotten instead of returned). Growth adds
//! permits, paying what is owed first.

use super::aimd::ConcurrencyAimd;
use crate::telemetry::Metrics;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct ConcurrencyLimiter {
    slots: Semaphore,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

struct State {
    aimd: ConcurrencyAimd,
    /// Permits in use that a cut took away: forgotten when they are released.
    owed: usize,
}

/// One submission in flight; frees its slot when dropped.
pub struct Permit<'a> {
    limiter: &'a ConcurrencyLimiter,
    slot: Option<SemaphorePermit<'a>>,
    taken_at: Instant,
}

impl ConcurrencyLimiter {
    pub fn new(max: usize, adaptive: bool, metrics: Arc<Metrics>) -> ConcurrencyLimiter {
        let aimd = ConcurrencyAimd::new(max, adaptive);
        metrics.ci_concurrency_limit.set(aimd.permits() as i64);
        ConcurrencyLimiter {
            slots: Semaphore::new(aimd.permits()),
            state: Mutex::new(State { aimd, owed: 0 }),
            metrics,
        }
    }

    /// Waits for a slot (callers are served in the order they asked).
    pub async fn acquire(&self) -> Permit<'_> {
        let slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        Permit {
            limiter: self,
            slot: Some(slot),
            taken_at: Instant::now(),
        }
    }

    /// Moves the semaphore from `before` permits to `after`.
    fn resize(&self, state: &mut State, before: usize, after: usize) {
        if after < before {
            let cut = before - after;
            let forgotten = self.slots.forget_permits(cut);
            state.owed += cut - forgotten;
        } else if after > before {
            let grown = after - before;
            let repaid = grown.min(state.owed);
            state.owed -= repaid;
            self.slots.add_permits(grown - repaid);
        }
        if after != before {
            self.metrics.ci_concurrency_limit.set(after as i64);
        }
    }
}

impl Permit<'_> {
    /// The call made under this permit succeeded (`Some(false)`), was throttled (`Some(true)`), or
    /// failed otherwise (`None`: says nothing about CI's capacity).
    pub fn finish(self, throttled: Option<bool>) {
        let now = Instant::now();
        let mut state = self.limiter.state.lock();
        let before = state.aimd.permits();
        match throttled {
            Some(false) => state.aimd.on_success(),
            Some(true) if state.aimd.on_throttle(self.taken_at, now) => {
                tracing::info!(
                    max_in_flight = state.aimd.permits(),
                    "CI throttles: fewer submissions in flight"
                );
            }
            Some(true) | None => {}
        }
        let after = state.aimd.permits();
        self.limiter.resize(&mut state, before, after);
        // The slot itself is freed on drop.
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let mut state = self.limiter.state.lock();
        if state.owed > 0 {
            state.owed -= 1;
            slot.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limiter_holds_calls_beyond_its_permits_until_one_is_freed() {
        let metrics = Arc::new(Metrics::new());
        let limiter = ConcurrencyLimiter::new(2, true, metrics.clone());
        let a = limiter.acquire().await;
        let b = limiter.acquire().await;
        let mut third = Box::pin(limiter.acquire());
        assert!(futures::poll!(third.as_mut()).is_pending(), "two in flight");
        a.finish(Some(true));
        assert_eq!(metrics.ci_concurrency_limit.get(), 1);
        assert!(
            futures::poll!(third.as_mut()).is_pending(),
            "one in flight is the cut limit"
        );
        // +1/limit: back to two, so the third goes while b is still in flight.
        b.finish(Some(false));
        assert_eq!(metrics.ci_concurrency_limit.get(), 2);
        let c = third.await;
        assert_eq!(limiter.slots.available_permits(), 1, "b's slot, back");
        drop(c);
        assert_eq!(limiter.slots.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_cut_below_the_slots_in_use_takes_them_back_as_they_are_freed() {
        let limiter = ConcurrencyLimiter::new(4, true, Arc::new(Metrics::new()));
        let held: Vec<_> = futures::future::join_all((0..4).map(|_| limiter.acquire())).await;
        let mut held = held.into_iter();
        // 4 × 0.7 = 2.8: two slots, all four in use.
        held.next().unwrap().finish(Some(true));
        assert_eq!(limiter.state.lock().owed, 1, "one of the three left in use");
        held.next().unwrap().finish(None);
        assert_eq!(limiter.state.lock().owed, 0);
        assert_eq!(
            limiter.slots.available_permits(),
            0,
            "two in use, two allowed"
        );
        drop(held);
        assert_eq!(limiter.slots.available_permits(), 2);
    }
}
