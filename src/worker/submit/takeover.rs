//! Telling, from the positions the broker delivers, which requests another replica may already have
//! submitted.
//!
//! Requests are read on a Failover subscription: each partition has one active consumer, and a request
//! comes to a second replica only when its partition changes owner, bringing along every message the
//! previous owner had not acknowledged — those it was still working on and those waiting in its local
//! queue. The crate does not say when this replica becomes a partition's owner, but the positions do
//! (`docs/design/pulsar-facts.md`, fact 7): within a partition an owner is given consecutive positions,
//! so a partition is new to this replica at its first delivery, after a position at or below one
//! already seen (the partition was rewound: it came back with its unacknowledged messages), and after a
//! gap or a new ledger (someone else consumed in between, or the ledger rolled over: a lookup more, never
//! one missed). From such a **takeover** the next `window` deliveries of the partition are
//! [`Delivery::Suspect`]: everything the previous owner can have been holding. The rest are fresh.
//! So is every delivery published more than [`PUBLISH_SKEW`] after the takeover was noticed, and
//! the window ends there: the partition was this replica's by then, so the broker never gave that
//! message (nor, in publish order, the ones after it) to anyone else. A partition that was idle when
//! it moved thus costs a check only for what was published in the first moments.
//!
//! Pure: the caller passes the clocks.

pub use crate::pulsar::consume::Position;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// Clock difference allowed between the pipeline's producers (a message's publish time is theirs)
/// and the worker's hosts.
pub const PUBLISH_SKEW: Duration = Duration::from_secs(2);

/// One takeover of one partition: the suspect deliveries that follow it share its lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Takeover {
    /// Unique within this process.
    pub id: u64,
    /// When it was noticed; the lookup waits `worker.takeover_grace` from here.
    pub at: Instant,
    /// The same, by the wall clock (to compare publish times with).
    pub noticed: SystemTime,
}

/// What a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nobody else can have been given it: submit without a check.
    Fresh,
    /// Another replica may have submitted it: check CI for its marker after the grace.
    Suspect(Takeover),
}

#[derive(Debug)]
struct Partition {
    last: Position,
    takeover: Takeover,
    /// Deliveries still suspect after `takeover`.
    suspect_left: usize,
}

/// Per partition: the last position delivered here and the takeover in force.
#[derive(Debug)]
pub struct Takeovers {
    partitions: HashMap<String, Partition>,
    /// Deliveries suspect after a takeover: what a previous owner can hold unacknowledged (its
    /// receiver queue and its handlers in flight).
    window: usize,
    next_id: u64,
}

impl Takeovers {
    pub fn new(window: usize) -> Takeovers {
        Takeovers {
            partitions: HashMap::new(),
            window: window.max(1),
            next_id: 0,
        }
    }

    /// Classifies a delivery of `topic` (a partition's topic name, or the topic when it is not
    /// partitioned) at `position`, published at `published` (the producer's clock); `now` and `wall`
    /// are this host's clocks.
    pub fn observe(
        &mut self,
        topic: &str,
        position: Position,
        published: SystemTime,
        now: Instant,
        wall: SystemTime,
    ) -> Delivery {
        let window = self.window;
        let mut new_takeover = || {
            self.next_id += 1;
            Takeover {
                id: self.next_id,
                at: now,
                noticed: wall,
            }
        };
        match self.partitions.get_mut(topic) {
            Some(p) if follows(p.last, position) => {
                p.last = position;
                if p.suspect_left > 0 && published > p.takeover.noticed + PUBLISH_SKEW {
                    p.suspect_left = 0;
                }
                if p.suspect_left == 0 {
                    return Delivery::Fresh;
                }
                p.suspect_left -= 1;
                Delivery::Suspect(p.takeover)
            }
            Some(p) => {
                p.last = position;
                p.takeover = new_takeover();
                p.suspect_left = window - 1;
                Delivery::Suspect(p.takeover)
            }
            None => {
                let takeover = new_takeover();
                self.partitions.insert(
                    topic.to_string(),
                    Partition {
                        last: position,
                        takeover,
                        suspect_left: window - 1,
                    },
                );
                Delivery::Suspect(takeover)
            }
        }
    }
}

impl Takeovers {
    /// Takes `topic` as this replica's since before `last`, with nothing suspect: for tests of what
    /// follows the classification.
    #[cfg(test)]
    pub fn adopt(&mut self, topic: &str, last: Position) {
        self.next_id += 1;
        self.partitions.insert(
            topic.to_string(),
            Partition {
                last,
                takeover: Takeover {
                    id: self.next_id,
                    at: Instant::now(),
                    noticed: SystemTime::now(),
                },
                suspect_left: 0,
            },
        );
    }
}

/// Whether `next` is the delivery right after `last` for one owner: the next message of the same
/// batch, or the first of the next entry in the same ledger.
fn follows(last: Position, next: Position) -> bool {
    if next.ledger != last.ledger {
        return false;
    }
    let same_batch =
        next.entry == last.entry && last.batch_index >= 0 && next.batch_index > last.batch_index;
    let next_entry = next.entry == last.entry + 1 && next.batch_index <= 0;
    same_batch || next_entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ledger: u64, entry: u64) -> Position {
        Position {
            ledger,
            entry,
            batch_index: -1,
        }
    }

    /// Classifies deliveries of messages published long ago.
    fn kinds(t: &mut Takeovers, topic: &str, positions: &[Position]) -> Vec<Option<u64>> {
        let now = Instant::now();
        let wall = SystemTime::now();
        positions
            .iter()
            .map(
                |p| match t.observe(topic, *p, SystemTime::UNIX_EPOCH, now, wall) {
                    Delivery::Fresh => None,
                    Delivery::Suspect(takeover) => Some(takeover.id),
                },
            )
            .collect()
    }

    #[test]
    fn the_first_deliveries_of_a_partition_are_suspect_then_fresh() {
        let mut t = Takeovers::new(3);
        let seen = kinds(
            &mut t,
            "p0",
            &[at(1, 0), at(1, 1), at(1, 2), at(1, 3), at(1, 4)],
        );
        assert_eq!(seen, [Some(1), Some(1), Some(1), None, None]);
    }

    #[test]
    fn partitions_are_taken_over_separately() {
        let mut t = Takeovers::new(2);
        assert_eq!(
            kinds(&mut t, "p0", &[at(1, 0), at(1, 1), at(1, 2)]),
            [Some(1), Some(1), None]
        );
        assert_eq!(
            kinds(&mut t, "p1", &[at(9, 5), at(9, 6), at(9, 7)]),
            [Some(2), Some(2), None]
        );
        assert_eq!(kinds(&mut t, "p0", &[at(1, 3)]), [None]);
    }

    #[test]
    fn a_rewind_a_gap_or_a_new_ledger_is_a_takeover() {
        let mut t = Takeovers::new(1);
        kinds(&mut t, "p", &[at(1, 10), at(1, 11)]);
        // The partition came back with its unacknowledged messages: positions at or below the last.
        assert_eq!(kinds(&mut t, "p", &[at(1, 11), at(1, 12)]), [Some(2), None]);
        assert_eq!(kinds(&mut t, "p", &[at(1, 5), at(1, 6)]), [Some(3), None]);
        // Someone else was given 7..=9.
        assert_eq!(kinds(&mut t, "p", &[at(1, 10), at(1, 11)]), [Some(4), None]);
        // A ledger roll-over cannot be told from another owner's messages in between.
        assert_eq!(kinds(&mut t, "p", &[at(2, 0), at(2, 1)]), [Some(5), None]);
    }

    #[test]
    fn batched_messages_follow_each_other() {
        let mut t = Takeovers::new(1);
        let b = |entry, batch_index| Position {
            ledger: 4,
            entry,
            batch_index,
        };
        let seen = kinds(&mut t, "p", &[b(0, 0), b(0, 1), b(0, 2), b(1, 0), b(1, 1)]);
        assert_eq!(seen, [Some(1), None, None, None, None]);
        // The same batch again from its start: redelivered.
        assert_eq!(kinds(&mut t, "p", &[b(1, 0)]), [Some(2)]);
    }

    #[test]
    fn a_takeover_restarts_the_window() {
        let mut t = Takeovers::new(3);
        kinds(&mut t, "p", &[at(1, 0)]);
        assert_eq!(
            kinds(&mut t, "p", &[at(1, 0), at(1, 1), at(1, 2), at(1, 3)]),
            [Some(2), Some(2), Some(2), None]
        );
    }

    #[test]
    fn what_was_published_after_the_takeover_is_fresh_and_ends_the_window() {
        let mut t = Takeovers::new(10);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut see = |entry, published| match t.observe("p", at(1, entry), published, now, wall) {
            Delivery::Fresh => None,
            Delivery::Suspect(takeover) => Some(takeover.id),
        };
        let before = wall - Duration::from_secs(60);
        let within_skew = wall + PUBLISH_SKEW;
        let after = wall + PUBLISH_SKEW + Duration::from_millis(1);
        assert_eq!(see(0, before), Some(1));
        assert_eq!(see(1, within_skew), Some(1), "may predate the takeover");
        assert_eq!(see(2, after), None);
        assert_eq!(see(3, before), None, "the window ended");
    }
}
