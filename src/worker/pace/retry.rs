//! The worker's retries: `backon` runs every retry loop (CI calls of a submission, CMQ calls of the
//! ingress); this file gives them their delays: exponential (`worker.retry_base_delay`, doubled up
//! to `worker.retry_max_delay`) with *full* jitter, uniform in `[0, ceiling]`. Full jitter spreads
//! the retries of many workers hitting the same throttled CI queue instead of synchronizing them;
//! backon's own jitter adds up to one more delay on top of the ceiling (`[d, 2d)`), which keeps
//! retries bunched and breaks the `retry_max_delay` bound, so its exponential schedule is taken
//! without jitter and the jitter put here.

use crate::config::WorkerSettings;
use backon::{Backoff, BackoffBuilder, ExponentialBuilder};
use rand::Rng;
use std::time::Duration;

/// Delays of up to `retries` retries: before retry `n` (from 0), uniform in
/// `[0, min(max, base·2^n)]`.
pub fn backoff(base: Duration, max: Duration, retries: usize) -> impl Backoff {
    ExponentialBuilder::new()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_max_times(retries)
        .build()
        .map(move |ceiling| full_jitter(ceiling.min(max)))
}

/// The delays of a call tried up to `worker.retry_max_attempts` times.
pub fn policy(w: &WorkerSettings) -> impl Backoff {
    backoff(
        w.retry_base_delay,
        w.retry_max_delay,
        (w.retry_max_attempts as usize).saturating_sub(1),
    )
}

/// The delay before retry `attempt` (from 0) of `worker.retry_*`'s schedule, for a retry that is not
/// a loop here (a deadline checked again later, a pause of the CMQ ingress).
pub fn delay(w: &WorkerSettings, attempt: u32) -> Duration {
    // Past 2^32 · base every ceiling is `retry_max_delay`.
    backoff(w.retry_base_delay, w.retry_max_delay, usize::MAX)
        .nth(attempt.min(32) as usize)
        .unwrap_or(w.retry_max_delay)
}

fn full_jitter(ceiling: Duration) -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_stops_after_the_retries() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for _ in 0..50 {
            let delays: Vec<Duration> = backoff(base, max, 30).collect();
            assert_eq!(delays.len(), 30);
            for (attempt, d) in delays.iter().enumerate() {
                let ceiling = (100u64 << attempt.min(20)).min(2000);
                assert!(d.as_millis() as u64 <= ceiling, "attempt {attempt}: {d:?}");
            }
        }
        assert_eq!(backoff(base, max, 0).count(), 0);
    }

    #[test]
    fn is_jittered_down_to_zero() {
        let base = Duration::from_millis(100);
        let samples: Vec<Duration> = (0..200)
            .map(|_| backoff(base, Duration::from_secs(60), 5).nth(4).unwrap())
            .collect();
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 5);
        assert!(
            samples.iter().any(|d| *d < Duration::from_millis(800)),
            "full jitter: below half the ceiling of 1.6 s too"
        );
    }

    #[test]
    fn the_policy_retries_one_less_than_the_attempts() {
        let mut w = WorkerSettings {
            retry_max_attempts: 3,
            ..WorkerSettings::default()
        };
        assert_eq!(policy(&w).count(), 2);
        w.retry_max_attempts = 1;
        assert_eq!(policy(&w).count(), 0);
        assert!(delay(&w, 1000) <= w.retry_max_delay);
    }
}
