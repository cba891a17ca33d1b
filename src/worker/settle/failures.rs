//! The failure history of messages whose handling failed, per message id, in this process: what the
//! poison guard ([`super::poison`]) counts redeliveries with and reports in a dead letter.

use crate::worker::bounded::Bounded;
use parking_lot::Mutex;

/// Histories kept at most; past it the oldest is forgotten (that message's count restarts).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone)]
pub struct History {
    /// Failed deliveries so far.
    pub attempts: u32,
    /// RFC 3339 time of the first failure.
    pub first_failure: String,
    pub last_reason: String,
}

pub struct Failures {
    map: Mutex<Bounded<String, History>>,
}

impl Default for Failures {
    fn default() -> Self {
        Failures::with_capacity(MAX_TRACKED)
    }
}

impl Failures {
    fn with_capacity(capacity: usize) -> Failures {
        Failures {
            map: Mutex::new(Bounded::new(capacity, None)),
        }
    }

    /// Counts one more failure of `message_id`, for `reason`; its history so far.
    pub fn record(&self, message_id: &str, reason: &str) -> History {
        let mut map = self.map.lock();
        let mut h = map.remove(message_id).unwrap_or_else(|| History {
            attempts: 0,
            first_failure: chrono::Utc::now().to_rfc3339(),
            last_reason: String::new(),
        });
        h.attempts += 1;
        h.last_reason = reason.to_string();
        map.insert(message_id.to_string(), h.clone());
        h
    }

    /// Drops `message_id`'s history (it was handled, or dead-lettered).
    pub fn forget(&self, message_id: &str) {
        self.map.lock().remove(message_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_message_and_the_oldest_history_goes_first() {
        let f = Failures::with_capacity(2);
        f.record("m1", "a");
        f.record("m2", "b");
        assert_eq!(f.record("m1", "c").attempts, 2);
        f.record("m3", "d");
        assert_eq!(f.record("m1", "e").attempts, 3, "m1 was renewed");
        assert_eq!(f.record("m2", "f").attempts, 1, "m2 was forgotten");
        assert_eq!(f.map.lock().len(), 2);
        f.forget("m2");
        assert_eq!(f.record("m2", "g").last_reason, "g");
    }
}
