//! Jobs whose final result this process has published: duplicate completion events (CI, like any
//! at-least-once producer, may deliver one twice) and deadline checks of jobs that already finished
//! are recognized here and produce no second final result.
//!
//! Bounded: the oldest entries are forgotten first. Duplicates arrive close together, so a window of
//! the last [`CAPACITY`] jobs covers them; a duplicate older than that, or one delivered to another
//! replica, yields a repeated result with the same final state (results are at-least-once).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Jobs remembered.
pub const CAPACITY: usize = 200_000;

#[derive(Default)]
pub struct Finished {
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Finished {
    /// Records `job_id`; false when it was already there (its final result is out).
    pub fn insert(&self, job_id: &str) -> bool {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !w.set.insert(job_id.to_string()) {
            return false;
        }
        w.order.push_back(job_id.to_string());
        if w.order.len() > CAPACITY {
            if let Some(old) = w.order.pop_front() {
                w.set.remove(&old);
            }
        }
        true
    }

    pub fn contains(&self, job_id: &str) -> bool {
        let w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.set.contains(job_id)
    }

    /// Forgets `job_id` (its result could not be stored after all).
    pub fn remove(&self, job_id: &str) {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if w.set.remove(job_id) {
            w.order.retain(|j| j != job_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_insert_is_a_duplicate() {
        let f = Finished::default();
        assert!(f.insert("j1"));
        assert!(!f.insert("j1"));
        assert!(f.contains("j1"));
        f.remove("j1");
        assert!(f.insert("j1"));
    }

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let f = Finished::default();
        for i in 0..=CAPACITY {
            f.insert(&i.to_string());
        }
        assert!(!f.contains("0"));
        assert!(f.contains("1"));
        assert!(f.contains(&CAPACITY.to_string()));
    }
}
