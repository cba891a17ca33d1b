//! Which Kafka offsets the `kafka` ingress may commit: per partition, only up to the contiguous prefix
//! of handled records. A record handled out of order (a later one finished first) is committed only
//! once every record before it is, so that a consumer taking the partition over (a rebalance, a
//! replica killed) starts at the first record whose outcome is not stored: nothing is skipped. Pure.

use std::collections::{BTreeSet, HashMap};

/// A partition of a topic.
pub type Partition = (String, i32);

/// The records in flight of each partition, and what is committable.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<Partition, Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    in_flight: BTreeSet<i64>,
    /// One past the highest offset taken.
    next: i64,
    /// The offset last committed (or handed out to commit), so that it is not committed again.
    committed: Option<i64>,
}

impl Progress {
    /// The offset to commit (Kafka's: the next record to read) once everything below it is handled.
    fn committable(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

impl Offsets {
    /// A record is taken for handling.
    pub fn taken(&mut self, partition: &Partition, offset: i64) {
        let p = self.partitions.entry(partition.clone()).or_default();
        p.in_flight.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// A record's outcome is stored.
    pub fn handled(&mut self, partition: &Partition, offset: i64) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.in_flight.remove(&offset);
        }
    }

    /// Records in flight, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Records in flight of these partitions.
    pub fn in_flight_of(&self, partitions: &[Partition]) -> usize {
        partitions
            .iter()
            .filter_map(|p| self.partitions.get(p))
            .map(|p| p.in_flight.len())
            .sum()
    }

    /// The offsets to commit now: each partition whose handled prefix moved since it was last
    /// returned, with Kafka's commit offset (the next record to read). Marks them as committed.
    pub fn to_commit(&mut self) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for (partition, p) in &mut self.partitions {
            let offset = p.committable();
            if p.next > 0 && p.committed.is_none_or(|c| c < offset) {
                p.committed = Some(offset);
                out.push((partition.clone(), offset));
            }
        }
        out.sort();
        out
    }

    /// Forgets partitions this consumer no longer owns (a rebalance took them): their records in
    /// flight will be read again by the new owner from the last commit.
    pub fn forget(&mut self, partitions: &[Partition]) {
        for p in partitions {
            self.partitions.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("events".to_string(), n)
    }

    #[test]
    fn commits_only_the_contiguous_handled_prefix() {
        let mut o = Offsets::default();
        for offset in 10..15 {
            o.taken(&p(0), offset);
        }
        assert_eq!(
            o.to_commit(),
            [(p(0), 10)],
            "nothing handled: the first record"
        );
        assert!(o.to_commit().is_empty(), "not again");
        o.handled(&p(0), 12);
        o.handled(&p(0), 13);
        assert!(o.to_commit().is_empty(), "10 and 11 are still in flight");
        o.handled(&p(0), 10);
        assert_eq!(o.to_commit(), [(p(0), 11)]);
        o.handled(&p(0), 11);
        assert_eq!(o.to_commit(), [(p(0), 14)], "12 and 13 were handled before");
        o.handled(&p(0), 14);
        assert_eq!(o.to_commit(), [(p(0), 15)]);
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn partitions_are_apart_and_a_forgotten_one_is_not_committed() {
        let mut o = Offsets::default();
        o.taken(&p(0), 0);
        o.taken(&p(1), 7);
        o.taken(&p(1), 8);
        o.handled(&p(1), 7);
        assert_eq!(o.in_flight_of(&[p(1)]), 1);
        assert_eq!(o.to_commit(), [(p(0), 0), (p(1), 8)]);
        o.forget(&[p(1)]);
        o.handled(&p(1), 8);
        o.handled(&p(0), 0);
        assert_eq!(o.to_commit(), [(p(0), 1)]);
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn a_record_handled_twice_or_unknown_changes_nothing() {
        let mut o = Offsets::default();
        o.handled(&p(3), 5);
        assert!(o.to_commit().is_empty());
        o.taken(&p(3), 5);
        o.handled(&p(3), 5);
        o.handled(&p(3), 5);
        assert_eq!(o.to_commit(), [(p(3), 6)]);
    }
}
