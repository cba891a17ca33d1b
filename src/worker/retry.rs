//! Exponential backoff with full jitter: spreads retries of many workers hitting the same throttled
//! CI queue instead of synchronizing them.

use rand::Rng;
use std::time::Duration;

/// Delay before retry number `attempt` (0-based): uniform in `[0, min(max, base·2^attempt)]`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base
        .checked_mul(1u32 << attempt.min(20))
        .unwrap_or(max)
        .min(max);
    let millis = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for attempt in 0..30 {
            let ceiling = (100u64 << attempt.min(20)).min(2000);
            for _ in 0..50 {
                let d = backoff(attempt, base, max);
                assert!(d.as_millis() as u64 <= ceiling, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn is_jittered() {
        let base = Duration::from_millis(100);
        let samples: std::collections::HashSet<Duration> = (0..50)
            .map(|_| backoff(4, base, Duration::from_secs(60)))
            .collect();
        assert!(samples.len() > 5);
    }
}
