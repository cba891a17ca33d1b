//! The two AIMD controllers (additive increase, multiplicative decrease) through which the worker
//! finds CI's rate by itself: CI does not document its QPS limits, it answers 429 `SlowDown` (too
//! many calls per second) or 403 `QueueSaturated` (too many jobs queued). Pure decision cores fed
//! with instants; [`super::concurrency`] and [`super::rate`] wrap them for the tasks that share them.
//!
//! - [`ConcurrencyAimd`]: the `POST /jobs` in flight, between 1 and `worker.max_in_flight`. A
//!   throttled submission lowers it, successes raise it again.
//! - [`RateAimd`]: the calls per second of every CI call of the process. Unlimited until CI first
//!   says 429 (unless `ci.max_requests_per_second` sets a ceiling), then learnt from the calls CI
//!   accepted in the second before.
//!
//! Why both: a limit on calls in flight limits calls per second only through CI's latency. At a few
//! milliseconds per call a single call in flight is already hundreds per second, so against a rate
//! limit concurrency alone keeps being refused (docs/performance.md has the figures); a pace does
//! not depend on the latency. Concurrency still answers `QueueSaturated`, which is about jobs at
//! CI, not calls per second.
//!
//! Both lower at most once per round of calls: a throttle answers a call sent before the last cut
//! says nothing about the lowered setting (a burst of 429s from the calls already in flight would
//! otherwise take it down to the floor). The pace, whose signal is per second, lowers at most once
//! a second too.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a throttle does to the submissions in flight.
pub const CONCURRENCY_CUT: f64 = 0.7;
/// What a 429 does to the pace: a small cut, since the pace learnt is close to CI's limit and each
/// cut costs throughput until the additive increase has made it up.
pub const RATE_CUT: f64 = 0.9;
/// The pace's additive increase, per second of calls that had to wait for it: this fraction of the
/// pace, at least one call/s. About 5 s from a cut back to the limit; the cycle costs 1–2 refused
/// calls at the top.
pub const RATE_GROWTH: f64 = 0.02;
/// The slowest pace: a call a second.
pub const MIN_RATE: f64 = 1.0;
/// The pace lowers at most this often: CI's limits are per second, so the effect of a cut shows
/// only once the second before it has passed.
pub const RATE_CUT_INTERVAL: Duration = Duration::from_secs(1);
/// Accepted calls remembered while the pace is still unlimited (to learn it from at the first 429):
/// a second's worth, bounded.
const RECENT_MAX: usize = 100_000;

/// The limit on submissions in flight: cut by [`CONCURRENCY_CUT`] on a throttle, `+1/limit` per
/// success (about +1 per round of calls when all of them are used), within `[1, max]`.
#[derive(Debug, Clone)]
pub struct ConcurrencyAimd {
    limit: f64,
    max: f64,
    adaptive: bool,
    last_cut: Option<Instant>,
}

impl ConcurrencyAimd {
    /// Starts at `max`, the most the operator allows: a first burst is refused once, and the cut
    /// follows at once (starting low would cost every start-up the climb).
    pub fn new(max: usize, adaptive: bool) -> ConcurrencyAimd {
        let max = max.max(1) as f64;
        ConcurrencyAimd {
            limit: max,
            max,
            adaptive,
            last_cut: None,
        }
    }

    /// Calls allowed in flight now.
    pub fn permits(&self) -> usize {
        self.limit.floor().max(1.0) as usize
    }

    pub fn on_success(&mut self) {
        if self.adaptive {
            self.limit = (self.limit + 1.0 / self.limit).min(self.max);
        }
    }

    /// A call that went out at `sent_at` was throttled; `true` when the limit was cut.
    pub fn on_throttle(&mut self, sent_at: Instant, now: Instant) -> bool {
        if !self.adaptive || self.last_cut.is_some_and(|cut| sent_at < cut) {
            return false;
        }
        self.limit = (self.limit * CONCURRENCY_CUT).max(1.0);
        self.last_cut = Some(now);
        true
    }
}

/// The pace of CI calls: `None` = unlimited. See the module's comment.
#[derive(Debug, Clone)]
pub struct RateAimd {
    rate: Option<f64>,
    ceiling: Option<f64>,
    adaptive: bool,
    last_cut: Option<Instant>,
    /// When the calls CI accepted in the last second came back, while the pace is unlimited.
    recent: VecDeque<Instant>,
    /// When the pace was learnt (cut from unlimited): calls sent before then and accepted after it
    /// still count in what CI accepted (answers of one burst come back in any order, the first 429
    /// may come before most of the successes).
    learnt_at: Option<Instant>,
}

/// A new pace for the bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewRate {
    pub rate: f64,
    /// No call before this: the calls accepted in the last second already spent CI's budget until
    /// then (set when the pace is learnt, after a burst at an unlimited pace).
    pub hold_until: Option<Instant>,
}

impl RateAimd {
    /// `ceiling`: `ci.max_requests_per_second` (`None` = none); the pace starts there.
    pub fn new(ceiling: Option<f64>, adaptive: bool) -> RateAimd {
        let ceiling = ceiling.filter(|r| r.is_finite() && *r > 0.0);
        RateAimd {
            rate: ceiling,
            ceiling,
            adaptive,
            last_cut: None,
            recent: VecDeque::new(),
            learnt_at: None,
        }
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// A call sent at `sent_at` and accepted by CI came back at `now`; `waited`: it had waited for
    /// the pace (the pace was what held it back, so there is demand above it). Returns the new pace,
    /// if it changed.
    pub fn on_success(&mut self, sent_at: Instant, waited: bool, now: Instant) -> Option<f64> {
        if !self.adaptive {
            return None;
        }
        if let (Some(learnt), Some(rate)) = (self.learnt_at, self.rate) {
            if sent_at < learnt && now < learnt + RATE_CUT_INTERVAL {
                // One more accepted in the second the pace was learnt from.
                let rate = rate + RATE_CUT;
                let rate = self.ceiling.map_or(rate, |c| rate.min(c));
                self.rate = Some(rate);
                return Some(rate);
            }
        }
        match self.rate {
            None => {
                self.forget_before(now);
                if self.recent.len() < RECENT_MAX {
                    self.recent.push_back(now);
                }
                None
            }
            // Only while the pace holds calls back: at a lower load it would otherwise climb without
            // a bound and mean nothing when the load comes.
            Some(rate) if waited => {
                let grown = rate + (rate * RATE_GROWTH).max(1.0) / rate;
                let grown = self.ceiling.map_or(grown, |c| grown.min(c));
                (grown != rate).then(|| {
                    self.rate = Some(grown);
                    grown
                })
            }
            Some(_) => None,
        }
    }

    /// A call that went out at `sent_at` was answered 429 at `now`. Returns the new pace, if cut.
    pub fn on_throttle(&mut self, sent_at: Instant, now: Instant) -> Option<NewRate> {
        if !self.adaptive {
            return None;
        }
        if let Some(cut) = self.last_cut {
            if sent_at < cut || now < cut + RATE_CUT_INTERVAL {
                return None;
            }
        }
        let (from, hold_until) = match self.rate {
            Some(rate) => {
                self.learnt_at = None;
                (rate, None)
            }
            None => {
                self.learnt_at = Some(now);
                // CI's budget per second is about what it accepted in the last one.
                self.forget_before(now);
                let accepted = self.recent.len() as f64;
                let hold = self
                    .recent
                    .front()
                    .map(|first| *first + Duration::from_secs(1));
                (accepted, hold.filter(|h| *h > now))
            }
        };
        let rate = (from * RATE_CUT).max(MIN_RATE);
        self.rate = Some(rate);
        self.last_cut = Some(now);
        self.recent.clear();
        Some(NewRate { rate, hold_until })
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_of_throttles_from_calls_in_flight_cuts_once() {
        let t0 = Instant::now();
        let mut c = ConcurrencyAimd::new(64, true);
        assert_eq!(c.permits(), 64);
        // 20 calls sent at t0 all come back 429 between 5 and 25 ms.
        let cuts = (0..20)
            .filter(|i| c.on_throttle(t0, t0 + ms(5 + i)))
            .count();
        assert_eq!(cuts, 1);
        assert_eq!(c.permits(), 44);
        // A call sent after the cut and throttled cuts again.
        assert!(c.on_throttle(t0 + ms(30), t0 + ms(31)));
        assert_eq!(c.permits(), 31);
    }

    #[test]
    fn throttles_bottom_out_at_one_and_successes_grow_back_to_the_max() {
        let t0 = Instant::now();
        let mut c = ConcurrencyAimd::new(8, true);
        for i in 0..20 {
            c.on_throttle(t0 + ms(i), t0 + ms(i));
        }
        assert_eq!(c.permits(), 1);
        // +1/limit per success: about one more per round of calls.
        c.on_success();
        assert_eq!(c.permits(), 2);
        c.on_success();
        c.on_success();
        assert_eq!(c.permits(), 2);
        c.on_success();
        assert_eq!(c.permits(), 3, "1 → 2 → 2.5 → 2.9 → 3.2");
        for _ in 0..1000 {
            c.on_success();
        }
        assert_eq!(c.permits(), 8, "never above max_in_flight");
    }

    #[test]
    fn fixed_concurrency_ignores_throttles() {
        let t0 = Instant::now();
        let mut c = ConcurrencyAimd::new(16, false);
        assert!(!c.on_throttle(t0, t0));
        assert_eq!(c.permits(), 16);
        assert_eq!(ConcurrencyAimd::new(0, true).permits(), 1);
    }

    #[test]
    fn the_pace_is_learnt_from_the_calls_accepted_in_the_last_second() {
        let t0 = Instant::now();
        let mut r = RateAimd::new(None, true);
        // 60 accepted long ago, 50 within the last second (from 10 ms on), then a 429.
        for i in 0..60 {
            assert_eq!(r.on_success(t0 + ms(i), false, t0 + ms(i)), None);
        }
        let start = t0 + Duration::from_secs(5);
        for i in 0..50 {
            r.on_success(start + ms(i), false, start + ms(10 + i));
        }
        let cut = r.on_throttle(start + ms(55), start + ms(60)).unwrap();
        assert!((cut.rate - 45.0).abs() < 1e-9, "{cut:?}");
        assert_eq!(cut.hold_until, Some(start + ms(1010)), "CI's second ends");
        assert_eq!(r.rate(), Some(cut.rate));
        // Five more of the same burst come back after the 429: they count too (55 accepted).
        for i in 0..5 {
            r.on_success(start + ms(50), false, start + ms(70 + i));
        }
        assert!((r.rate().unwrap() - 49.5).abs() < 1e-9, "{:?}", r.rate());
        // Calls sent after the cut do not.
        assert_eq!(r.on_success(start + ms(80), false, start + ms(90)), None);
    }

    #[test]
    fn the_pace_is_cut_at_most_once_a_second_and_only_by_calls_sent_after_the_cut() {
        let t0 = Instant::now();
        let mut r = RateAimd::new(Some(100.0), true);
        let cut = r.on_throttle(t0, t0).unwrap();
        assert!((cut.rate - 90.0).abs() < 1e-9 && cut.hold_until.is_none());
        assert_eq!(
            r.on_throttle(t0 + ms(10), t0 + ms(500)),
            None,
            "same second"
        );
        assert_eq!(
            r.on_throttle(t0 - ms(1), t0 + ms(1500)),
            None,
            "sent before the cut"
        );
        let again = r.on_throttle(t0 + ms(10), t0 + ms(1500)).unwrap();
        assert!((again.rate - 81.0).abs() < 1e-9);
        for i in 0..100u64 {
            r.on_throttle(
                t0 + Duration::from_secs(2 + i),
                t0 + Duration::from_secs(2 + i),
            );
        }
        assert_eq!(r.rate(), Some(MIN_RATE));
    }

    #[test]
    fn the_pace_grows_only_while_it_holds_calls_back_and_never_above_the_ceiling() {
        let t0 = Instant::now();
        let mut r = RateAimd::new(Some(50.0), true);
        r.on_throttle(t0, t0);
        assert!((r.rate().unwrap() - 45.0).abs() < 1e-9);
        assert_eq!(
            r.on_success(t0, false, t0),
            None,
            "not held back: no growth"
        );
        // One second of calls at 45/s, each having waited: +1 call/s.
        for _ in 0..45 {
            r.on_success(t0, true, t0);
        }
        assert!((r.rate().unwrap() - 46.0).abs() < 0.05, "{:?}", r.rate());
        for _ in 0..10_000 {
            r.on_success(t0, true, t0);
        }
        assert_eq!(
            r.rate(),
            Some(50.0),
            "ci.max_requests_per_second is a ceiling"
        );
    }

    #[test]
    fn a_fixed_pace_stays_and_unlimited_stays_unlimited() {
        let t0 = Instant::now();
        let mut fixed = RateAimd::new(Some(50.0), false);
        assert_eq!(fixed.on_throttle(t0, t0), None);
        assert_eq!(fixed.on_success(t0, true, t0), None);
        assert_eq!(fixed.rate(), Some(50.0));
        let mut none = RateAimd::new(None, false);
        assert_eq!(none.on_throttle(t0, t0), None);
        assert_eq!(none.rate(), None);
        // Adaptive but never throttled: unlimited, however many calls.
        let mut free = RateAimd::new(Some(0.0), true);
        for i in 0..1000 {
            free.on_success(t0 + ms(i), true, t0 + ms(i));
        }
        assert_eq!(free.rate(), None);
    }
}
