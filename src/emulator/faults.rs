//! Fault injection: the failures a client of CI must survive, on demand.
//!
//! By rate (`[emulator]` settings, fractions 0–1): `throttle_rate` answers `POST /jobs` with
//! 429 `SlowDown`, `error_rate` with 503 `ServiceUnavailable` (no job is created either way);
//! `duplicate_rate` delivers a completion event twice. `latency` delays every API request before it is
//! handled, `answer_delay` every answer after it (the job already exists while its answer is held).
//!
//! By rate limit: `qps_limit` answers every job API call beyond that many in any one second with
//! 429 `SlowDown`, deterministically (see [`QpsLimit`]): a client that keeps under it is never refused.
//!
//! By marker in the input object key (`Input/Object`): `__fail__` ends the job `Failed`, `__lost__`
//! ends it `Success` but never sends its completion event, `__slow__` makes it take ten times
//! `job_duration_ms`, `__hangup__` creates the job but holds the answer for [`HANGUP_DELAY`] (longer
//! than any sane client timeout), so the client cannot know the job exists: the ambiguous submit a
//! client must not turn into a second job. Markers combine (`a__slow____fail__.mp4`).
//!
//! By setting, a deployment gone wrong (what `ci-worker doctor` must name): `denied_actions` refuses
//! the calls needing those CAM actions (403 `AccessDenied`), `ci_buckets` lists the only buckets
//! with CI bound (others: 404 `NoSuchBucket`), `media_queue_paused` reports the media queue
//! `Paused` and refuses jobs with 403 `QueuePaused`.

use super::error::EmulatorError;
use crate::config::EmulatorSettings;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Marker: the job fails.
pub(crate) const FAIL_MARKER: &str = "__fail__";
/// Marker: the job succeeds but its callback is never sent.
pub(crate) const LOST_MARKER: &str = "__lost__";
/// Marker: the job takes ten times longer.
pub(crate) const SLOW_MARKER: &str = "__slow__";
/// Marker: the job is created but the answer comes too late for the client.
pub(crate) const HANGUP_MARKER: &str = "__hangup__";
/// How long a `__hangup__` answer is held.
pub(crate) const HANGUP_DELAY: Duration = Duration::from_secs(15);
/// How much longer a `__slow__` job takes.
pub(crate) const SLOW_FACTOR: u32 = 10;

/// What the markers of one input object key ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ObjectFaults {
    pub fail: bool,
    pub lost: bool,
    pub slow: bool,
    pub hangup: bool,
}

impl ObjectFaults {
    pub(crate) fn of(object: &str) -> ObjectFaults {
        ObjectFaults {
            fail: object.contains(FAIL_MARKER),
            lost: object.contains(LOST_MARKER),
            slow: object.contains(SLOW_MARKER),
            hangup: object.contains(HANGUP_MARKER),
        }
    }
}

/// A refusal injected into `POST /jobs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Throttle,
    Unavailable,
}

/// At most `limit` calls let through in any one second: a sliding window over the instants of the
/// calls it let through (refused calls do not count, as with a gateway's limit: a client over it is
/// refused only for its excess). Pure: the caller passes the instant.
#[derive(Debug)]
pub(crate) struct QpsLimit {
    limit: usize,
    admitted: VecDeque<Instant>,
}

impl QpsLimit {
    pub(crate) fn new(limit: u32) -> QpsLimit {
        QpsLimit {
            limit: limit as usize,
            admitted: VecDeque::with_capacity(limit.min(100_000) as usize),
        }
    }

    /// Whether a call arriving at `now` is let through (and counted).
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        while self
            .admitted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1))
        {
            self.admitted.pop_front();
        }
        if self.admitted.len() >= self.limit {
            return false;
        }
        self.admitted.push_back(now);
        true
    }
}

/// The configured rates.
pub(crate) struct Faults {
    /// `emulator.qps_limit`; `None` = no limit.
    qps: Option<Mutex<QpsLimit>>,
    throttle_rate: f64,
    error_rate: f64,
    duplicate_rate: f64,
    latency: Duration,
    answer_delay: Duration,
    /// `emulator.denied_actions`, as [`crate::ci::cam`] spells them.
    denied: Vec<&'static str>,
    /// `emulator.ci_buckets` as (bucket, region); empty = every bucket.
    bound: Vec<(String, String)>,
    media_queue_paused: bool,
}

impl Faults {
    pub(crate) fn from_settings(e: &EmulatorSettings) -> Result<Faults, EmulatorError> {
        for (key, rate) in [
            ("emulator.throttle_rate", e.throttle_rate),
            ("emulator.error_rate", e.error_rate),
            ("emulator.duplicate_rate", e.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(EmulatorError::InvalidSetting {
                    key,
                    reason: format!("{rate} is not a fraction from 0 to 1"),
                });
            }
        }
        Ok(Faults {
            qps: (e.qps_limit > 0).then(|| Mutex::new(QpsLimit::new(e.qps_limit))),
            throttle_rate: e.throttle_rate,
            error_rate: e.error_rate,
            duplicate_rate: e.duplicate_rate,
            latency: e.latency,
            answer_delay: e.answer_delay,
            denied: e
                .denied_actions
                .iter()
                .map(|a| {
                    crate::ci::cam::known(a).ok_or_else(|| EmulatorError::InvalidSetting {
                        key: "emulator.denied_actions",
                        reason: format!("{a:?} is not a CAM action a CI call needs"),
                    })
                })
                .collect::<Result<_, _>>()?,
            bound: e
                .ci_buckets
                .iter()
                .filter_map(|b| b.split_once('@'))
                .map(|(b, r)| (b.to_ascii_lowercase(), r.to_ascii_lowercase()))
                .collect(),
            media_queue_paused: e.media_queue_paused,
        })
    }

    /// Whether the rate limit lets a job API call arriving now through.
    pub(crate) fn within_qps_limit(&self) -> bool {
        match &self.qps {
            None => true,
            Some(limit) => limit.lock().admit(Instant::now()),
        }
    }

    /// Rolls the dice for one `POST /jobs`: throttling first, then the 503.
    pub(crate) fn submit_refusal(&self) -> Option<Refusal> {
        let mut rng = rand::rng();
        if chance(&mut rng, self.throttle_rate) {
            Some(Refusal::Throttle)
        } else if chance(&mut rng, self.error_rate) {
            Some(Refusal::Unavailable)
        } else {
            None
        }
    }

    /// How many copies of one completion event to deliver (1, or 2 for a duplicate).
    pub(crate) fn copies(&self) -> u32 {
        if chance(&mut rand::rng(), self.duplicate_rate) {
            2
        } else {
            1
        }
    }

    pub(crate) fn latency(&self) -> Duration {
        self.latency
    }

    /// The first of `actions` refused to every caller (`emulator.denied_actions`).
    pub(crate) fn denied(&self, actions: &[&'static str]) -> Option<&'static str> {
        actions.iter().copied().find(|a| self.denied.contains(a))
    }

    /// Whether `bucket` in `region` has CI bound (`emulator.ci_buckets`).
    pub(crate) fn ci_bound(&self, bucket: &str, region: &str) -> bool {
        self.bound.is_empty() || self.bound.iter().any(|(b, r)| b == bucket && r == region)
    }

    /// Whether the media processing queue is `Paused` (`emulator.media_queue_paused`).
    pub(crate) fn media_queue_paused(&self) -> bool {
        self.media_queue_paused
    }

    /// How long an answer is held after its request was handled (`emulator.answer_delay_ms`).
    pub(crate) fn answer_delay(&self) -> Duration {
        self.answer_delay
    }
}

/// `true` with probability `rate`; exact at 0 and 1.
fn chance(rng: &mut impl Rng, rate: f64) -> bool {
    if rate <= 0.0 {
        false
    } else if rate >= 1.0 {
        true
    } else {
        rng.random_bool(rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_combine() {
        assert_eq!(ObjectFaults::of("in/a.mp4"), ObjectFaults::default());
        let f = ObjectFaults::of("in/a__slow____fail__.mp4");
        assert!(f.fail && f.slow && !f.lost);
        assert!(ObjectFaults::of("x/__lost__/y").lost);
    }

    #[test]
    fn the_qps_limit_refuses_exactly_the_calls_beyond_it_in_any_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = QpsLimit::new(50);
        // 50 + 7 calls in the same instant: exactly 7 refused.
        let let_through = (0..57).filter(|_| q.admit(t0)).count();
        assert_eq!(let_through, 50);
        // Refused calls do not count; nothing more in that second.
        assert!(!q.admit(t0 + ms(999)));
        // A second after the first ones, all of them have left the window.
        assert_eq!((0..60).filter(|_| q.admit(t0 + ms(1000))).count(), 50);
        // Spread: one call every 20 ms (50/s) is never refused, and a 51st within the second is.
        let mut q = QpsLimit::new(50);
        let start = t0 + Duration::from_secs(10);
        assert!((0..500).all(|i| q.admit(start + ms(20 * i))));
        let last = start + ms(20 * 499);
        assert!(!q.admit(last + ms(5)), "51 within one second");
        assert!(q.admit(last + ms(20)));
    }

    #[test]
    fn no_qps_limit_by_default() {
        let f = Faults::from_settings(&EmulatorSettings::default()).unwrap();
        assert!((0..10_000).all(|_| f.within_qps_limit()));
        let one = Faults::from_settings(&EmulatorSettings {
            qps_limit: 1,
            ..EmulatorSettings::default()
        })
        .unwrap();
        assert!(one.within_qps_limit());
        assert!(!one.within_qps_limit());
    }

    #[test]
    fn a_deployment_gone_wrong_by_setting() {
        let f = Faults::from_settings(&EmulatorSettings {
            denied_actions: vec!["cam:passrole".into()],
            ci_buckets: vec!["b-1250000000@ap-guangzhou".into()],
            ..EmulatorSettings::default()
        })
        .unwrap();
        use crate::ci::cam::Call;
        assert_eq!(f.denied(Call::Submit.actions()), Some("cam:PassRole"));
        assert_eq!(f.denied(Call::Queues.actions()), None);
        assert!(f.ci_bound("b-1250000000", "ap-guangzhou"));
        assert!(!f.ci_bound("b-1250000000", "ap-beijing"));
        assert!(!f.ci_bound("other-1250000000", "ap-guangzhou"));
        let open = Faults::from_settings(&EmulatorSettings::default()).unwrap();
        assert!(open.ci_bound("any-1", "any") && !open.media_queue_paused());
        assert!(Faults::from_settings(&EmulatorSettings {
            denied_actions: vec!["ci:Nope".into()],
            ..EmulatorSettings::default()
        })
        .is_err());
    }

    #[test]
    fn rates_at_the_bounds_are_exact() {
        let mut s = EmulatorSettings {
            throttle_rate: 1.0,
            ..EmulatorSettings::default()
        };
        let f = Faults::from_settings(&s).unwrap();
        assert!((0..100).all(|_| f.submit_refusal() == Some(Refusal::Throttle)));
        s.throttle_rate = 0.0;
        s.error_rate = 1.0;
        s.duplicate_rate = 1.0;
        let f = Faults::from_settings(&s).unwrap();
        assert!((0..100).all(|_| f.submit_refusal() == Some(Refusal::Unavailable)));
        assert!((0..100).all(|_| f.copies() == 2));
        s.error_rate = 0.0;
        s.duplicate_rate = 0.0;
        let f = Faults::from_settings(&s).unwrap();
        assert!((0..100).all(|_| f.submit_refusal().is_none() && f.copies() == 1));
        s.error_rate = 1.5;
        assert!(Faults::from_settings(&s).is_err());
    }
}
