//! Which Kafka offsets the `kafka` ingress may commit, and what it commits with them. Per partition
//! the offset moves only up to the contiguous prefix of handled records: a record handled out of
//! order (a later one finished first) is committed only once every record before it is, so that a
//! consumer taking the partition over (a rebalance, a replica killed) starts at the first record
//! whose outcome is not stored: nothing is skipped.
//!
//! Kafka commits a position, not records, so the records handled *beyond* that position would be
//! handled again by the next owner, each a second final. The commit's metadata (a string the group
//! stores with the offset) therefore names which of the records past the offset are still in
//! flight: `ci-worker/1 <span> <d>,<d>,…`, the offsets `offset + d` not yet handled among the `span`
//! records from the offset on; every other record of the span is handled. The next owner reads it
//! ([`Offsets::inherit`]) and passes over those records. This is what Confluent's Parallel Consumer
//! does for the same reason. Pure.

use std::collections::{BTreeSet, HashMap};

/// A partition of a topic.
pub type Partition = (String, i32);

/// What the commit metadata starts with; a commit without it (another client's, or an older
/// worker's) tells nothing beyond its offset.
const METADATA_VERSION: &str = "ci-worker/1";
/// Longest metadata committed: brokers refuse a commit whose metadata exceeds
/// `offset.metadata.max.bytes` (4,096 by default), and a refused commit would not move the offset.
/// Past this the commit carries no metadata (the next owner then repeats the span).
const METADATA_MAX_BYTES: usize = 1024;

/// One commit: Kafka's offset (the next record to read) and the metadata stored with it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Commit {
    pub partition: Partition,
    pub offset: i64,
    pub metadata: String,
}

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
    /// What an earlier owner's commit says of the records from its offset on.
    inherited: Option<Inherited>,
    /// The last commit handed out, so that it is not sent again.
    committed: Option<(i64, String)>,
}

/// The records an earlier owner's commit names as not handled, up to `end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Inherited {
    /// One past the last record the commit speaks of.
    end: i64,
    unhandled: BTreeSet<i64>,
}

impl Inherited {
    fn handled(&self, offset: i64) -> bool {
        offset < self.end && !self.unhandled.contains(&offset)
    }
}

impl Progress {
    /// The offset to commit (Kafka's: the next record to read) once everything below it is handled:
    /// the first record in flight, or else the first not read yet that is not known handled.
    fn committable(&self) -> i64 {
        if let Some(first) = self.in_flight.first() {
            return *first;
        }
        let mut offset = self.next;
        if let Some(inherited) = &self.inherited {
            while inherited.handled(offset) {
                offset += 1;
            }
        }
        offset
    }

    /// The commit's metadata: which records from `offset` on are not handled yet, up to the last
    /// one known (read here, or named by the inherited commit).
    fn metadata(&self, offset: i64) -> String {
        let inherited_end = self.inherited.as_ref().map_or(0, |i| i.end);
        let end = self.next.max(inherited_end);
        let unread_unhandled = self
            .inherited
            .iter()
            .flat_map(|i| i.unhandled.range(self.next..));
        let mut unhandled: BTreeSet<i64> = self.in_flight.range(offset..).copied().collect();
        unhandled.extend(unread_unhandled.filter(|o| **o >= offset));
        encode(end - offset, unhandled.iter().map(|o| o - offset))
    }
}

fn encode(span: i64, deltas: impl Iterator<Item = i64>) -> String {
    let span = span.max(0);
    let list: Vec<String> = deltas.map(|d| d.to_string()).collect();
    let text = if list.is_empty() {
        format!("{METADATA_VERSION} {span}")
    } else {
        format!("{METADATA_VERSION} {span} {}", list.join(","))
    };
    if text.len() > METADATA_MAX_BYTES {
        String::new()
    } else {
        text
    }
}

/// What a commit of `offset` with `metadata` says; `None` when the metadata is not ours or not
/// readable.
fn decode(offset: i64, metadata: &str) -> Option<Inherited> {
    let mut words = metadata.split(' ');
    if words.next()? != METADATA_VERSION {
        return None;
    }
    let span: i64 = words.next()?.parse().ok().filter(|s| *s >= 0)?;
    let list = words.next().unwrap_or_default();
    let mut unhandled = BTreeSet::new();
    for delta in list.split(',').filter(|d| !d.is_empty()) {
        let delta: i64 = delta.parse().ok().filter(|d| (0..span).contains(d))?;
        unhandled.insert(offset + delta);
    }
    Some(Inherited {
        end: offset + span,
        unhandled,
    })
}

impl Offsets {
    /// Whether `partition` is known here (taken since it was assigned), or its commit still to be
    /// read ([`Offsets::inherit`]).
    pub fn knows(&self, partition: &Partition) -> bool {
        self.partitions.contains_key(partition)
    }

    /// The group's commit of `partition` when it was assigned here: its offset and metadata. How
    /// many records past the offset it names handled.
    pub fn inherit(&mut self, partition: &Partition, offset: Option<i64>, metadata: &str) -> i64 {
        let p = self.partitions.entry(partition.clone()).or_default();
        p.inherited = offset.and_then(|o| decode(o, metadata));
        match (&p.inherited, offset) {
            (Some(i), Some(o)) => i.end - o - i.unhandled.len() as i64,
            _ => 0,
        }
    }

    /// A record is taken for handling; false when an earlier owner handled it already (the
    /// inherited commit says so), in which case it counts as handled here at once.
    pub fn taken(&mut self, partition: &Partition, offset: i64) -> bool {
        let p = self.partitions.entry(partition.clone()).or_default();
        p.next = p.next.max(offset + 1);
        if p.inherited.as_ref().is_some_and(|i| i.handled(offset)) {
            return false;
        }
        p.in_flight.insert(offset);
        true
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

    /// The commits to send now: each partition whose offset or handled records moved since it was
    /// last returned. Marks them as committed.
    pub fn to_commit(&mut self) -> Vec<Commit> {
        let mut out = Vec::new();
        for (partition, p) in &mut self.partitions {
            if p.next == 0 {
                continue;
            }
            let offset = p.committable();
            let metadata = p.metadata(offset);
            let moved = match &p.committed {
                None => true,
                Some((o, m)) => *o < offset || (*o == offset && *m != metadata),
            };
            if moved {
                p.committed = Some((offset, metadata.clone()));
                out.push(Commit {
                    partition: partition.clone(),
                    offset,
                    metadata,
                });
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

    /// The commits' partitions and offsets, without the metadata.
    fn positions(commits: Vec<Commit>) -> Vec<(Partition, i64)> {
        commits
            .into_iter()
            .map(|c| (c.partition, c.offset))
            .collect()
    }

    #[test]
    fn commits_only_the_contiguous_handled_prefix() {
        let mut o = Offsets::default();
        for offset in 10..15 {
            o.taken(&p(0), offset);
        }
        assert_eq!(
            positions(o.to_commit()),
            [(p(0), 10)],
            "nothing handled: the first record"
        );
        assert!(o.to_commit().is_empty(), "not again");
        o.handled(&p(0), 12);
        o.handled(&p(0), 13);
        assert_eq!(
            positions(o.to_commit()),
            [(p(0), 10)],
            "10 and 11 are still in flight: the offset stays, the metadata moved"
        );
        o.handled(&p(0), 10);
        assert_eq!(positions(o.to_commit()), [(p(0), 11)]);
        o.handled(&p(0), 11);
        assert_eq!(
            positions(o.to_commit()),
            [(p(0), 14)],
            "12 and 13 were handled before"
        );
        o.handled(&p(0), 14);
        assert_eq!(positions(o.to_commit()), [(p(0), 15)]);
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
        assert_eq!(positions(o.to_commit()), [(p(0), 0), (p(1), 8)]);
        o.forget(&[p(1)]);
        o.handled(&p(1), 8);
        o.handled(&p(0), 0);
        assert_eq!(positions(o.to_commit()), [(p(0), 1)]);
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
        assert_eq!(positions(o.to_commit()), [(p(3), 6)]);
    }

    #[test]
    fn handled_records_past_the_offset_are_committed_as_metadata() {
        let mut o = Offsets::default();
        for offset in 10..15 {
            assert!(o.taken(&p(0), offset));
        }
        o.handled(&p(0), 12);
        o.handled(&p(0), 14);
        let commits = o.to_commit();
        assert_eq!(commits[0].offset, 10);
        // From 10 on, 5 records: 10, 11 and 13 (deltas 0, 1, 3) not handled.
        assert_eq!(commits[0].metadata, "ci-worker/1 5 0,1,3");
        o.handled(&p(0), 11);
        let commits = o.to_commit();
        assert_eq!(commits[0].offset, 10, "10 still holds the offset");
        assert_eq!(
            commits[0].metadata, "ci-worker/1 5 0,3",
            "the metadata moved"
        );
        assert!(o.to_commit().is_empty(), "nothing new");
        o.handled(&p(0), 10);
        o.handled(&p(0), 13);
        let commits = o.to_commit();
        assert_eq!(commits[0].offset, 15);
        assert_eq!(commits[0].metadata, "ci-worker/1 0");
    }

    #[test]
    fn the_next_owner_passes_over_what_the_commit_names_handled() {
        // The killed owner's last commit: offset 10, records 10..15, 10 and 13 not handled.
        let mut o = Offsets::default();
        assert_eq!(o.inherit(&p(0), Some(10), "ci-worker/1 5 0,3"), 3);
        assert!(o.knows(&p(0)));
        assert!(o.taken(&p(0), 10), "not handled: handled here");
        assert!(!o.taken(&p(0), 11), "handled before");
        assert!(!o.taken(&p(0), 12), "handled before");
        // Killed again now: what is known of 13 and 14 (unread here) is kept.
        let commits = o.to_commit();
        assert_eq!(commits[0].offset, 10);
        assert_eq!(commits[0].metadata, "ci-worker/1 5 0,3");
        o.handled(&p(0), 10);
        let commits = o.to_commit();
        assert_eq!(commits[0].offset, 13, "11 and 12 were handled before");
        assert_eq!(commits[0].metadata, "ci-worker/1 2 0");
        assert!(o.taken(&p(0), 13));
        assert!(!o.taken(&p(0), 14));
        assert!(o.taken(&p(0), 15), "past what the commit spoke of");
        o.handled(&p(0), 13);
        o.handled(&p(0), 15);
        assert_eq!(positions(o.to_commit()), [(p(0), 16)]);
    }

    #[test]
    fn metadata_that_is_not_ours_tells_nothing() {
        for metadata in [
            "",
            "something else",
            "ci-worker/1",
            "ci-worker/1 x 0",
            "ci-worker/1 3 0,7",
            "ci-worker/2 5 0",
        ] {
            let mut o = Offsets::default();
            assert_eq!(o.inherit(&p(0), Some(10), metadata), 0);
            for offset in 10..20 {
                assert!(o.taken(&p(0), offset), "{metadata:?}: {offset}");
            }
        }
        let mut o = Offsets::default();
        o.inherit(&p(0), None, "ci-worker/1 5 0");
        assert!(o.taken(&p(0), 11), "no committed offset: nothing known");
    }

    #[test]
    fn metadata_too_long_for_the_broker_is_left_out() {
        let mut o = Offsets::default();
        for offset in (0..2_000).step_by(2) {
            o.taken(&p(0), offset);
            o.taken(&p(0), offset + 1);
            o.handled(&p(0), offset + 1);
        }
        let commits = o.to_commit();
        assert_eq!(commits[0].offset, 0);
        assert_eq!(commits[0].metadata, "");
    }
}
