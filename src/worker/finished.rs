//! Jobs whose final result this replica published: duplicate completion events (CI, like any
//! at-least-once producer, may deliver one twice) and deadline checks of jobs that already finished
//! are recognized here and produce no second final result. Copies of a job's event all reach the
//! same replica (the callback subscription is Key_Shared by job id), so a memory of its own is
//! enough: no replica needs to hear of another's finals.
//!
//! Bounded: the oldest entries are forgotten first. Duplicates arrive close together, so a window of
//! the last [`CAPACITY`] jobs covers them; a duplicate older than that, or one reaching another
//! replica after the job id's hash range moved (a replica joined or left in between), yields a
//! repeated result with the same final state (results are at-least-once).
//!
//! Jobs are remembered by a 64-bit keyed hash of their id, not the id itself: no allocation per
//! event on the completion path once the window is full, and ~8 MB instead of ~30 MB. Two ids of the window
//! would have to collide for a result to be wrongly taken as a duplicate: with 200,000 ids that is
//! about 1 in 10^14 per event, and the key is random per process, so ids cannot be chosen to collide.

use crate::worker::bounded::Bounded;
use parking_lot::Mutex;
use std::hash::{BuildHasher, RandomState};

/// Jobs remembered.
pub const CAPACITY: usize = 200_000;

pub struct FinishedJobs {
    key: RandomState,
    window: Mutex<Bounded<u64, ()>>,
}

impl Default for FinishedJobs {
    fn default() -> Self {
        FinishedJobs {
            key: RandomState::new(),
            window: Mutex::new(Bounded::new(CAPACITY, None)),
        }
    }
}

impl FinishedJobs {
    fn id(&self, job_id: &str) -> u64 {
        self.key.hash_one(job_id)
    }

    /// Records `job_id`; false when it was already there (its final result is out).
    pub fn insert(&self, job_id: &str) -> bool {
        let id = self.id(job_id);
        let mut window = self.window.lock();
        if window.contains(&id) {
            return false;
        }
        window.insert(id, ());
        true
    }

    pub fn contains(&self, job_id: &str) -> bool {
        let id = self.id(job_id);
        self.window.lock().contains(&id)
    }

    /// Forgets `job_id` (its result could not be stored after all).
    pub fn remove(&self, job_id: &str) {
        let id = self.id(job_id);
        self.window.lock().remove(&id);
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
        assert_eq!(f.window.lock().len(), CAPACITY);
    }
}
