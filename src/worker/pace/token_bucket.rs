//! A token bucket for CI calls: [`Bucket`] is the pure arithmetic (instants passed in, unit-tested
//! without a clock), [`RateLimiter`] shares one between tasks and sleeps until a caller's token is due.
//!
//! Hand-written because the pace ([`super::rate`]) changes the rate while callers wait (every cut
//! and every increase of the AIMD) and sometimes holds every token until an instant; `governor`, the
//! well-kept crate for this, fixes its quota when the limiter is built (a new limiter per change
//! would forget the tokens promised to the callers waiting) and has no hold.
//!
//! Reservations, not polling: a caller takes its token at once, possibly "on credit" (the count goes
//! negative), and sleeps until that token would have been there. Callers are served in the order they
//! asked, the rate holds however many wait, and no task spins.
//!
//! The burst is small on purpose (see [`burst_for`]): CI's limits are stated per second and a
//! gateway may count them over any one-second window; a bucket that lets `rate` calls go at once
//! after an idle spell and then `rate` more in the following second sends twice the limit within one
//! second.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// The burst of a bucket at `rate` calls/s: 10 ms worth of calls, at least one. One call keeps the
/// calls of any one second within `rate + 1`; a few more absorb the timer's millisecond granularity
/// at high rates.
pub fn burst_for(rate: f64) -> f64 {
    (rate / 100.0).max(1.0)
}

/// Tokens at `rate` per second, at most `burst` kept; `None` rate = unlimited.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Option<f64>,
    burst: f64,
    /// Tokens at `at`; negative = tokens already promised to callers still waiting.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket at `rate` calls/s (`None`, zero or a negative rate: unlimited).
    pub fn new(rate: Option<f64>, now: Instant) -> Bucket {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        let burst = rate.map_or(1.0, burst_for);
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token: how long the caller must wait for it (zero when one was there).
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        self.refill(now, rate);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// Changes the rate from `now` on; tokens already promised stay promised (their callers wait as
    /// long as they were told), the ones after them come at the new rate.
    pub fn set_rate(&mut self, rate: Option<f64>, now: Instant) {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        if let Some(old) = self.rate {
            self.refill(now, old);
            if let (Some(new), true) = (rate, self.tokens < 0.0) {
                // The debt is time (until the last promised token); the same time at the new rate.
                self.tokens = self.tokens / old * new;
            }
        }
        self.burst = rate.map_or(1.0, burst_for);
        if self.rate.is_none() {
            // Coming from unlimited: start with a full (small) burst, as a new bucket does.
            self.tokens = self.burst;
            self.at = now;
        }
        self.tokens = self.tokens.min(self.burst);
        self.rate = rate;
    }

    /// No token before `until` (what the bucket would hold then is what it holds now): the caller
    /// learnt that the calls already made spent the budget until then.
    pub fn hold_until(&mut self, until: Instant, now: Instant) {
        let Some(rate) = self.rate else { return };
        self.refill(now, rate);
        let ahead = until.saturating_duration_since(now).as_secs_f64() * rate;
        // The next token comes at `until` (unless tokens are promised beyond it already).
        self.tokens = self.tokens.min(1.0 - ahead);
    }

    fn refill(&mut self, now: Instant, rate: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(self.burst);
        self.at = self.at.max(now);
    }
}

/// One [`Bucket`] shared by every CI call of a process.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// `rate` calls per second; `None` = unlimited.
    pub fn new(rate: Option<f64>) -> RateLimiter {
        RateLimiter {
            bucket: Mutex::new(Bucket::new(rate, Instant::now())),
        }
    }

    /// Waits for a token; returns how long it waited (zero: the call could go at once).
    pub async fn acquire(&self) -> Duration {
        let wait = self.bucket.lock().reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    pub fn set_rate(&self, rate: Option<f64>) {
        self.bucket.lock().set_rate(rate, Instant::now());
    }

    /// See [`Bucket::hold_until`].
    pub fn hold_until(&self, until: Instant) {
        self.bucket.lock().hold_until(until, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The waits of `n` callers asking at `now`, each sleeping until its token.
    fn waits(b: &mut Bucket, now: Instant, n: usize) -> Vec<Duration> {
        (0..n).map(|_| b.reserve(now)).collect()
    }

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        for rate in [None, Some(0.0), Some(-3.0), Some(f64::NAN)] {
            let mut b = Bucket::new(rate, t0);
            assert!(waits(&mut b, t0, 10_000).iter().all(|w| w.is_zero()));
        }
    }

    #[test]
    fn callers_are_spaced_at_the_rate_in_order() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(50.0), t0);
        let w = waits(&mut b, t0, 5);
        // Burst 1 at 50/s: the first goes, then one every 20 ms.
        assert_eq!(w, [ms(0), ms(20), ms(40), ms(60), ms(80)]);
    }

    #[test]
    fn no_one_second_window_sees_more_than_rate_plus_burst() {
        let t0 = Instant::now();
        let rate = 50.0;
        let mut b = Bucket::new(Some(rate), t0);
        // 200 callers at once, then 100 more half a second later: when each call goes.
        let mut sent: Vec<Instant> = waits(&mut b, t0, 200).iter().map(|w| t0 + *w).collect();
        let later = t0 + ms(500);
        sent.extend(waits(&mut b, later, 100).iter().map(|w| later + *w));
        sent.sort();
        for (i, start) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
                .count();
            assert!(in_window as f64 <= rate + burst_for(rate), "{in_window}");
        }
        // And the rate holds: 300 calls at 50/s take 299 / 50 s.
        let last = sent.last().unwrap().duration_since(t0).as_secs_f64();
        assert!((last - 299.0 / rate).abs() < 1e-6, "{last}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(1000.0), t0);
        assert_eq!(burst_for(1000.0), 10.0);
        let _ = waits(&mut b, t0, 10);
        let later = t0 + Duration::from_secs(60);
        let w = waits(&mut b, later, 11);
        assert!(w[..10].iter().all(|w| w.is_zero()));
        assert_eq!(w[10], ms(1));
    }

    #[test]
    fn a_new_rate_applies_after_the_tokens_already_promised() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(10.0), t0);
        assert_eq!(waits(&mut b, t0, 3), [ms(0), ms(100), ms(200)]);
        b.set_rate(Some(100.0), t0);
        // Promised until 200 ms; the next ones 10 ms apart after that.
        assert_eq!(waits(&mut b, t0, 2), [ms(210), ms(220)]);
        b.set_rate(None, t0);
        assert_eq!(b.reserve(t0), ms(0));
        b.set_rate(Some(20.0), t0 + ms(5));
        assert_eq!(waits(&mut b, t0 + ms(5), 2), [ms(0), ms(50)]);
    }

    #[test]
    fn a_hold_defers_every_token_until_its_end() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(50.0), t0);
        b.hold_until(t0 + ms(700), t0);
        assert_eq!(waits(&mut b, t0, 2), [ms(700), ms(720)]);
        let mut free = Bucket::new(None, t0);
        free.hold_until(t0 + ms(700), t0);
        assert_eq!(free.reserve(t0), ms(0), "unlimited stays unlimited");
    }
}
