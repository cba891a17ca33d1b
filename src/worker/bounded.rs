//! [`Bounded`]: the one kind of memory the worker keeps about messages and jobs it has seen (jobs
//! whose final is out, attempts read from the replica log, failures of a message, bodies the http
//! ingress stored, requests in doubt). Each is a map with a most number of entries and, where an
//! entry stops being useful after a while, a most age: the oldest entries are forgotten first, so
//! no memory grows with the traffic.
//!
//! On [`hashlink::LinkedHashMap`] (insertion order, O(1) removal anywhere, nodes reused once the
//! map is full, so a full memory allocates nothing per insert); the bound and the age are the few
//! lines on top that no map crate offers in this form (`lru` counts use, not age, and allocates a
//! node per entry; caches such as `moka` evict in the background, which a test cannot pin down).

use hashlink::LinkedHashMap;
use std::borrow::Borrow;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A map of at most `capacity` entries, each forgotten `max_age` after it was inserted (when set).
/// Oldest first: inserting beyond the capacity forgets the entry inserted longest ago.
pub struct Bounded<K, V> {
    /// Each entry with when it was inserted, in whole seconds since `born` (4 bytes, not an
    /// `Instant`'s 16: the jobs' memory holds 200,000 entries, and ages are minutes or more).
    entries: LinkedHashMap<K, (u32, V)>,
    capacity: usize,
    max_age: Option<Duration>,
    born: Instant,
}

impl<K: Hash + Eq, V> Bounded<K, V> {
    /// At most `capacity` entries (at least one), none older than `max_age`.
    pub fn new(capacity: usize, max_age: Option<Duration>) -> Bounded<K, V> {
        Bounded {
            entries: LinkedHashMap::new(),
            capacity: capacity.max(1),
            max_age,
            born: Instant::now(),
        }
    }

    /// Puts `value` under `key` as the newest entry (replacing, and renewing, an entry already
    /// there); returns the entry forgotten to make room, if one was.
    pub fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        self.insert_at(key, value, Instant::now())
    }

    /// [`Self::insert`] at `now` (the clock passed in, for tests of the age).
    fn insert_at(&mut self, key: K, value: V, now: Instant) -> Option<(K, V)> {
        self.expire(now);
        let at = self.seconds(now);
        // At the back, also when the key was there (hashlink moves it).
        self.entries.insert(key, (at, value));
        if self.entries.len() > self.capacity {
            return self.entries.pop_front().map(|(k, (_, v))| (k, v));
        }
        None
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.get_mut(key).map(|v| &*v)
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.expire(Instant::now());
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    pub fn contains<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(key).is_some()
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.expire(Instant::now());
        self.entries.remove(key).map(|(_, v)| v)
    }

    /// Entries held (expired ones included until the next call that looks).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the entries older than `max_age` (all at the front: entries are in insertion order).
    fn expire(&mut self, now: Instant) {
        let Some(max_age) = self.max_age else { return };
        let now = self.seconds(now);
        let max_age = max_age.as_secs().min(u32::MAX as u64) as u32;
        while self
            .entries
            .front()
            .is_some_and(|(_, (at, _))| now.saturating_sub(*at) >= max_age)
        {
            self.entries.pop_front();
        }
    }

    fn seconds(&self, t: Instant) -> u32 {
        t.saturating_duration_since(self.born)
            .as_secs()
            .min(u32::MAX as u64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entry_makes_room_for_a_new_one() {
        let mut m = Bounded::new(3, None);
        for i in 0..3 {
            assert_eq!(m.insert(i, i * 10), None);
        }
        assert_eq!(m.insert(3, 30), Some((0, 0)));
        assert_eq!(m.len(), 3);
        assert!(!m.contains(&0));
        assert_eq!(m.get(&1), Some(&10));
    }

    #[test]
    fn inserting_again_renews_an_entry() {
        let mut m = Bounded::new(2, None);
        m.insert("a", 1);
        m.insert("b", 2);
        m.insert("a", 3);
        assert_eq!(m.insert("c", 4), Some(("b", 2)), "a was renewed");
        assert_eq!(m.remove(&"a"), Some(3));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn entries_older_than_the_age_are_forgotten() {
        let mut m = Bounded::new(10, Some(Duration::from_secs(60)));
        let t0 = m.born;
        m.insert_at(1, (), t0);
        m.insert_at(3, (), t0 + Duration::from_secs(30));
        m.insert_at(2, (), t0 + Duration::from_secs(60));
        assert_eq!(m.len(), 2, "the first is a minute old");
        assert!(m.entries.contains_key(&3));
        assert!(m.entries.contains_key(&2));
    }
}
