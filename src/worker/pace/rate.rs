//! [`Pace`]: the one pace every CI call of the process waits for, a [`RateAimd`] steering a token
//! bucket ([`super::token_bucket`]); see [`super::aimd`] for why a pace besides the concurrency.

use super::aimd::RateAimd;
use super::token_bucket::RateLimiter;
use crate::telemetry::Metrics;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Instant;

/// The pace every CI call of the process takes a token from ([`RateAimd`] over a [`RateLimiter`]);
/// its current value is the gauge `ci_worker_ci_rate_limit` (0 = unlimited).
pub struct Pace {
    bucket: RateLimiter,
    aimd: Mutex<RateAimd>,
    metrics: Arc<Metrics>,
}

/// A token taken: when the call may go, and whether it waited for it.
#[derive(Debug, Clone, Copy)]
pub struct Token {
    pub sent_at: Instant,
    pub waited: bool,
}

impl Pace {
    pub fn new(ceiling: Option<f64>, adaptive: bool, metrics: Arc<Metrics>) -> Pace {
        let aimd = RateAimd::new(ceiling, adaptive);
        metrics.ci_rate_limit.set(aimd.rate().unwrap_or(0.0));
        Pace {
            bucket: RateLimiter::new(aimd.rate()),
            aimd: Mutex::new(aimd),
            metrics,
        }
    }

    pub async fn acquire(&self) -> Token {
        let waited = !self.bucket.acquire().await.is_zero();
        Token {
            sent_at: Instant::now(),
            waited,
        }
    }

    /// Feeds the answer of the call `token` let through.
    pub fn observe(&self, token: Token, ok: bool, rate_limited: bool) {
        let now = Instant::now();
        if ok {
            if let Some(rate) = self
                .aimd
                .lock()
                .on_success(token.sent_at, token.waited, now)
            {
                self.bucket.set_rate(Some(rate));
                self.metrics.ci_rate_limit.set(rate);
            }
        } else if rate_limited {
            let cut = self.aimd.lock().on_throttle(token.sent_at, now);
            if let Some(new) = cut {
                tracing::info!(
                    calls_per_second = format!("{:.1}", new.rate),
                    "CI throttles: pacing CI calls"
                );
                self.bucket.set_rate(Some(new.rate));
                if let Some(until) = new.hold_until {
                    self.bucket.hold_until(until);
                }
                self.metrics.ci_rate_limit.set(new.rate);
            }
        }
    }
}
