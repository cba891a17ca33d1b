//! The failure history of messages whose handling failed, per message id, in this process: what the
//! poison guard ([`super::poison`]) counts redeliveries with and reports in a dead letter.

use std::collections::HashMap;
use std::sync::Mutex;

/// Histories kept at most; past it the oldest knowledge is dropped (only the count restarts).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone)]
pub struct History {
    /// Failed deliveries so far.
    pub attempts: u32,
    /// RFC 3339 time of the first failure.
    pub first_failure: String,
    pub last_reason: String,
}

#[derive(Default)]
pub struct Failures {
    map: Mutex<HashMap<String, History>>,
}

impl Failures {
    /// Counts one more failure of `message_id`, for `reason`; its history so far.
    pub fn record(&self, message_id: &str, reason: &str) -> History {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(message_id) {
            map.clear();
        }
        let now = chrono::Utc::now().to_rfc3339();
        let h = map.entry(message_id.to_string()).or_insert(History {
            attempts: 0,
            first_failure: now,
            last_reason: String::new(),
        });
        h.attempts += 1;
        h.last_reason = reason.to_string();
        h.clone()
    }

    /// Drops `message_id`'s history (it was handled, or dead-lettered).
    pub fn forget(&self, message_id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(message_id);
    }
}
