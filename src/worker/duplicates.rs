//! Jobs whose final result this process has published: duplicate completion events (CI, like any
//! at-least-once producer, may deliver one twice) and deadline checks of jobs that already finished
//! are recognized here and produce no second final result.
//!
//! Bounded: the oldest entries are forgotten first. Duplicates arrive close together, so a window of
//! the last [`CAPACITY`] jobs covers them; a duplicate older than that, or one delivered to another
//! replica, yields a repeated result with the same final state (results are at-least-once).
//!
//! Jobs are remembered by a 64-bit keyed hash of their id, not the id itself: two allocations fewer
//! per event on the completion path and a window of ~5 MB instead of ~30 MB. Two ids of the window
//! would have to collide for a result to be wrongly taken as a duplicate: with 200,000 ids that is
//! about 1 in 10^14 per event, and the key is random per process, so ids cannot be chosen to collide.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// Jobs remembered.
pub const CAPACITY: usize = 200_000;

#[derive(Default)]
pub struct FinishedJobs {
    key: RandomState,
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl FinishedJobs {
    fn id(&self, job_id: &str) -> u64 {
        self.key.hash_one(job_id)
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `job_id`; false when it was already there (its final result is out).
    pub fn insert(&self, job_id: &str) -> bool {
        let id = self.id(job_id);
        let mut w = self.window();
        if !w.set.insert(id) {
            return false;
        }
        w.order.push_back(id);
        if w.order.len() > CAPACITY {
            if let Some(old) = w.order.pop_front() {
                w.set.remove(&old);
            }
        }
        true
    }

    pub fn contains(&self, job_id: &str) -> bool {
        let id = self.id(job_id);
        self.window().set.contains(&id)
    }

    /// Forgets `job_id` (its result could not be stored after all).
    pub fn remove(&self, job_id: &str) {
        let id = self.id(job_id);
        let mut w = self.window();
        if w.set.remove(&id) {
            w.order.retain(|j| *j != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_insert_is_a_duplicate() {
        let f = FinishedJobs::default();
        assert!(f.insert("j1"));
        assert!(!f.insert("j1"));
        assert!(f.contains("j1"));
        f.remove("j1");
        assert!(f.insert("j1"));
    }

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let f = FinishedJobs::default();
        for i in 0..=CAPACITY {
            f.insert(&i.to_string());
        }
        assert!(!f.contains("0"));
        assert!(f.contains("1"));
        assert!(f.contains(&CAPACITY.to_string()));
    }
}
