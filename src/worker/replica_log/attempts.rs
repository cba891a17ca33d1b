//! Attempt records: every replica announces the requests it is about to submit, so that whichever
//! replica gets one of them again knows that a job may already exist for it.
//!
//! `POST /jobs` is not idempotent, and the broker redelivers a request whose acknowledgement it did
//! not get: after a replica is killed mid-submission (its job created, its answer or its ack lost),
//! after a `Retry`, after a shutdown that released it. The broker does not say a delivery is a
//! repeat (Pulsar counts redeliveries only for nacks, and the crate does not expose the count), so
//! the replicas say it themselves:
//!
//! 1. Before submitting, a replica stores an *attempt record* naming the request on
//!    `pulsar.done_topic` (group-committed: one record per broker round trip, whatever the load).
//! 2. Every replica reads every record of that topic on a subscription of its own
//!    ([`super::reader`]), in the topic's order, and remembers who attempted what.
//! 3. The submitting replica waits until it has read *its own* record back. The topic is one
//!    ordered log, so by then it has read every record stored before its own, including that of any
//!    earlier attempt at the same request (an attempt is recorded before its `POST /jobs`, and a
//!    request is redelivered only after that attempt's holder died or let it go).
//! 4. An earlier attempt, from any process, makes the request *possibly repeated*: the caller checks
//!    CI for the marker before submitting ([`crate::worker::submit::recovery`]).
//!
//! What a replica cannot know this way — attempts before its own first record was read, and
//! attempts it forgot (it remembers the newest [`CAPACITY`] requests) — the [`Claim`] says too, so
//! that requests published before then are checked against CI ([`crate::worker::submit::check`]).

use super::group_commit::{CommitError, GroupCommit};
use crate::worker::bounded::Bounded;
use crate::worker::io::Broker;
use crate::worker::record::{self, from_unix_ms, unix_ms, Attempt, Record};
use parking_lot::{Mutex, MutexGuard};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Requests remembered per process, each with at most [`MAX_SIGHTINGS`] sightings (about 75 bytes
/// with one, so at most about 15 MB for the usual single attempt).
pub const CAPACITY: usize = 200_000;
/// Sightings kept per request: the first (the earliest attempt, what a claim needs) and the newest.
/// More means a request redelivered over and over; what is dropped is a middle one, which a claim's
/// answer (the earliest attempt before its own) does not need.
pub const MAX_SIGHTINGS: usize = 8;
/// Most requests in one record.
pub const MAX_PER_RECORD: usize = 1000;
/// How long a submission waits to read its own record back before it checks CI instead.
pub const READ_BACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a replica learnt about a request it is about to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// When the earliest earlier attempt at this request was recorded, by any process.
    pub earlier_attempt: Option<SystemTime>,
    /// Since when every attempt is known here: when this process wrote its first record read back.
    /// `None` when this submission's own record was not read back in time (nothing is sure then).
    pub known_since: Option<SystemTime>,
    /// Attempts recorded up to this time may have been forgotten (`UNIX_EPOCH`: none were).
    pub forgotten_until: SystemTime,
}

/// The attempts this process has read, and its own record writer.
pub struct Attempts {
    inner: Arc<Inner>,
    commit: GroupCommit<String, Stored>,
    read_back_timeout: Duration,
}

/// An own record as stored: its number and, when the broker's receipt said, its place in the topic.
type Stored = (u64, Option<Position>);

/// A message's place in the topic: (ledger, entry). Entries of a ledger are numbered from 0 without
/// gaps, and the reader reads them in order.
pub type Position = (u64, u64);

/// How far the reader has read.
#[derive(Debug, Clone, Copy, Default)]
struct ReadState {
    /// The highest own record number read.
    own_seq: u64,
    /// The last message read.
    at: Option<Position>,
}

impl ReadState {
    /// Whether every record stored before the own record `seq` (stored at `stored_at`) was read.
    fn has_read_up_to(&self, seq: u64, stored_at: Option<Position>) -> bool {
        if self.own_seq >= seq {
            return true;
        }
        // The message just before it was read, hence all before it (the reader reads in order).
        matches!((stored_at, self.at), (Some((ledger, entry)), Some(at)) if entry > 0 && at >= (ledger, entry - 1))
    }
}

struct Inner {
    writer: String,
    next_seq: AtomicU64,
    seen: Mutex<Seen>,
    read: watch::Sender<ReadState>,
}

impl Inner {
    fn new() -> Inner {
        Inner {
            writer: uuid::Uuid::new_v4().simple().to_string(),
            next_seq: AtomicU64::new(1),
            seen: Mutex::new(Seen::default()),
            read: watch::channel(ReadState::default()).0,
        }
    }
}

/// Requests are known by a 64-bit hash of their id, keyed at random per process, not by the id: a
/// request id is often a UUID, and two copies of it (map key, forgetting order) plus a vector per
/// request were about 250 bytes per attempt, 50 MB for a full window (docs/performance.md,
/// Memory). A collision can only make a request look attempted before, which costs it one marker
/// check at CI (a list call), never a second job; with 200,000 requests remembered the chance is
/// about 1 in 10^14 per claim, and the random key keeps ids from being chosen to collide.
struct Seen {
    key: RandomState,
    /// Oldest first: a request seen again is renewed.
    by_request: Bounded<u64, Sightings>,
    /// Since when every record stored is read here: the reader's subscription (or this process's
    /// first own record read).
    known_since_ms: Option<u64>,
    /// Records up to this time may be unknown here: forgotten ones, or missed while the reader
    /// reconnected.
    forgotten_ms: u64,
}

impl Default for Seen {
    fn default() -> Seen {
        Seen {
            key: RandomState::new(),
            by_request: Bounded::new(CAPACITY, None),
            known_since_ms: None,
            forgotten_ms: 0,
        }
    }
}

/// A request's sightings, in the topic's order: nearly always one, kept without an allocation.
#[derive(Debug, Clone)]
enum Sightings {
    One(Sighting),
    Many(Vec<Sighting>),
}

impl Sightings {
    fn as_slice(&self) -> &[Sighting] {
        match self {
            Sightings::One(s) => std::slice::from_ref(s),
            Sightings::Many(v) => v,
        }
    }

    fn push(&mut self, sighting: Sighting) {
        match self {
            Sightings::One(first) => *self = Sightings::Many(vec![*first, sighting]),
            Sightings::Many(v) => {
                if v.len() >= MAX_SIGHTINGS {
                    v.remove(1);
                }
                v.push(sighting)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sighting {
    /// Set when this process wrote it.
    own_seq: Option<u64>,
    at_ms: u64,
}

impl Attempts {
    /// Starts the record writer on `topic`; the reader hands this process the records it reads
    /// ([`Self::observe`], [`Self::read_at`]).
    pub fn spawn(broker: impl Broker + Clone, topic: String) -> Attempts {
        Attempts::spawn_with(broker, topic, false)
    }

    /// A writer that reads its own records back itself as soon as they are stored, for tests
    /// without a reader.
    #[cfg(test)]
    pub fn spawn_reading_own(broker: impl Broker + Clone, topic: String) -> Attempts {
        Attempts::spawn_with(broker, topic, true)
    }

    fn spawn_with(broker: impl Broker + Clone, topic: String, loop_back: bool) -> Attempts {
        let inner = Arc::new(Inner::new());
        let writer = inner.clone();
        let commit = GroupCommit::spawn(MAX_PER_RECORD, Duration::ZERO, move |requests| {
            let (broker, topic, inner) = (broker.clone(), topic.clone(), writer.clone());
            async move {
                let attempt = Attempt {
                    writer: inner.writer.clone(),
                    seq: inner.next_seq.fetch_add(1, Ordering::Relaxed),
                    at_ms: unix_ms(SystemTime::now()),
                    requests,
                };
                let seq = attempt.seq;
                let record = Record::Attempts(attempt);
                let at = broker.publish_at(&topic, record::message(&record)).await?;
                if loop_back {
                    if let Record::Attempts(attempt) = &record {
                        inner.observe(attempt);
                    }
                }
                Ok((seq, at))
            }
        });
        Attempts {
            inner,
            commit,
            read_back_timeout: READ_BACK_TIMEOUT,
        }
    }

    /// Takes every attempt since `t` as known (for tests without a reader).
    #[cfg(test)]
    pub fn knowing_since(self, t: SystemTime) -> Attempts {
        self.reading_since(t);
        self
    }

    /// The reader is subscribed: every record stored from `t` on will be read.
    pub fn reading_since(&self, t: SystemTime) {
        let mut seen = self.inner.seen();
        seen.known_since_ms.get_or_insert(unix_ms(t));
    }

    /// Waits at most `timeout` for a record to be read back (instead of [`READ_BACK_TIMEOUT`]).
    #[cfg(test)]
    pub fn with_read_back_timeout(mut self, timeout: Duration) -> Attempts {
        self.read_back_timeout = timeout;
        self
    }

    /// Records that this process is about to submit `request_id`, and says what it learnt: returns
    /// once the record is stored and every record before it was read (or [`READ_BACK_TIMEOUT`]
    /// passed). `Err` when the record could not be stored: the request must not be submitted then.
    pub async fn claim(&self, request_id: &str) -> Result<Claim, CommitError> {
        let (seq, stored_at) = self.commit.commit(request_id.to_string()).await?;
        let mut read = self.inner.read.subscribe();
        let read_back = tokio::time::timeout(
            self.read_back_timeout,
            read.wait_for(|r| r.has_read_up_to(seq, stored_at)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !read_back {
            tracing::warn!(
                request_id,
                "own attempt record not read back in time; checking CI before submitting"
            );
        }
        Ok(self.inner.claim(request_id, seq, read_back))
    }

    /// Takes in a record read from the topic (any writer's, in the topic's order).
    pub fn observe(&self, record: &Attempt) {
        self.inner.observe(record);
    }

    /// The reader has read the message at `at` (any message of the topic, after [`Self::observe`]
    /// for an attempt record), published at `published`. A message that does not follow the one
    /// before it in the same ledger may mean the reader missed some (its subscription was rebuilt,
    /// non-durable, from the newest message): what was published before it counts as unknown.
    pub fn read_at(&self, at: Option<Position>, published: SystemTime) {
        let Some(at) = at else { return };
        let previous = self.inner.read.borrow().at;
        let follows = matches!(previous, Some((ledger, entry)) if at == (ledger, entry + 1));
        if previous.is_some() && !follows {
            let mut seen = self.inner.seen();
            seen.forgotten_ms = seen.forgotten_ms.max(unix_ms(published));
        }
        self.inner.read.send_modify(|r| r.at = Some(at));
    }
}

impl Inner {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock()
    }

    fn observe(&self, record: &Attempt) {
        let own = record.writer == self.writer;
        {
            let mut seen = self.seen();
            if own {
                seen.known_since_ms.get_or_insert(record.at_ms);
            }
            for request in &record.requests {
                let key = seen.key.hash_one(request);
                let sighting = Sighting {
                    own_seq: own.then_some(record.seq),
                    at_ms: record.at_ms,
                };
                let sightings = match seen.by_request.remove(&key) {
                    Some(mut known) => {
                        known.push(sighting);
                        known
                    }
                    None => Sightings::One(sighting),
                };
                if let Some((_, forgotten)) = seen.by_request.insert(key, sightings) {
                    seen.forget(&forgotten);
                }
            }
        }
        if own {
            self.read.send_if_modified(|read| {
                let newer = record.seq > read.own_seq;
                if newer {
                    read.own_seq = record.seq;
                }
                newer
            });
        }
    }

    fn claim(&self, request_id: &str, seq: u64, read_back: bool) -> Claim {
        let mut seen = self.seen();
        let key = seen.key.hash_one(request_id);
        let earlier = seen.by_request.get(&key).and_then(|sightings| {
            sightings
                .as_slice()
                .iter()
                .take_while(|s| s.own_seq != Some(seq))
                .map(|s| s.at_ms)
                .min()
        });
        Claim {
            earlier_attempt: earlier.map(from_unix_ms),
            known_since: seen.known_since_ms.filter(|_| read_back).map(from_unix_ms),
            forgotten_until: from_unix_ms(seen.forgotten_ms),
        }
    }
}

impl Seen {
    /// A request's sightings left the memory: attempts up to its newest may be unknown here now.
    fn forget(&mut self, sightings: &Sightings) {
        if let Some(newest) = sightings.as_slice().iter().map(|s| s.at_ms).max() {
            self.forgotten_ms = self.forgotten_ms.max(newest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::test_doubles::MemoryBroker;
    use std::time::UNIX_EPOCH;

    const TOPIC: &str = "persistent://public/default/done";

    fn other(seq: u64, at_ms: u64, requests: &[&str]) -> Attempt {
        Attempt {
            writer: "another-process".into(),
            seq,
            at_ms,
            requests: requests.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_first_attempt_is_not_a_repeat_and_is_stored_before_it_is_claimed() {
        let broker = MemoryBroker::default();
        let attempts = Attempts::spawn_reading_own(broker.clone(), TOPIC.into());
        let claim = attempts.claim("r1").await.unwrap();
        assert_eq!(claim.earlier_attempt, None);
        assert!(claim.known_since.is_some());
        assert_eq!(claim.forgotten_until, UNIX_EPOCH);
        let stored = broker.on(TOPIC);
        assert_eq!(stored.len(), 1);
        let Ok(Record::Attempts(record)) = record::read(&stored[0].payload) else {
            panic!("an attempt record")
        };
        assert_eq!(record.requests, ["r1"]);
        assert_eq!(record.seq, 1);
    }

    #[tokio::test]
    async fn another_process_attempt_read_before_ours_makes_it_a_repeat() {
        let attempts = Attempts::spawn_reading_own(MemoryBroker::default(), TOPIC.into());
        attempts.claim("warm-up").await.unwrap();
        attempts.observe(&other(7, 1_700_000_000_000, &["r1", "r2"]));
        let claim = attempts.claim("r1").await.unwrap();
        assert_eq!(claim.earlier_attempt, Some(from_unix_ms(1_700_000_000_000)));
        assert_eq!(attempts.claim("r3").await.unwrap().earlier_attempt, None);
    }

    #[tokio::test]
    async fn our_own_earlier_attempt_counts_too() {
        let attempts = Attempts::spawn_reading_own(MemoryBroker::default(), TOPIC.into());
        assert_eq!(attempts.claim("r1").await.unwrap().earlier_attempt, None);
        assert!(attempts
            .claim("r1")
            .await
            .unwrap()
            .earlier_attempt
            .is_some());
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_stored_forbids_the_submission() {
        let broker = MemoryBroker::default();
        broker.refuse(TOPIC);
        let attempts = Attempts::spawn_reading_own(broker, TOPIC.into());
        assert!(attempts.claim("r1").await.is_err());
    }

    #[tokio::test]
    async fn a_record_not_read_back_leaves_nothing_known() {
        // No loop back and no reader: the record is stored but never read.
        let attempts = Attempts::spawn(MemoryBroker::default(), TOPIC.into())
            .with_read_back_timeout(Duration::from_millis(50));
        let claim = attempts.claim("r1").await.unwrap();
        assert_eq!(claim.known_since, None);
    }

    #[test]
    fn forgetting_moves_the_horizon() {
        let inner = inner();
        let mut mine = other(1, 1_000, &["first"]);
        mine.writer = "me".into();
        inner.observe(&mine);
        let many: Vec<String> = (0..CAPACITY).map(|i| format!("r{i}")).collect();
        inner.observe(&Attempt {
            requests: many,
            ..other(1, 2_000, &[])
        });
        let claim = inner.claim("r5", 99, true);
        assert_eq!(claim.known_since, Some(from_unix_ms(1_000)));
        assert_eq!(
            claim.forgotten_until,
            from_unix_ms(1_000),
            "the oldest went"
        );
        assert!(claim.earlier_attempt.is_some());
        assert_eq!(
            inner.claim("first", 99, true).earlier_attempt,
            None,
            "forgotten"
        );
    }

    fn inner() -> Inner {
        Inner {
            writer: "me".into(),
            next_seq: AtomicU64::new(1),
            seen: Mutex::new(Seen::default()),
            read: watch::channel(ReadState::default()).0,
        }
    }

    #[test]
    fn a_request_is_forgotten_with_its_sightings_and_a_repeat_renews_it() {
        let inner = Inner {
            seen: Mutex::new(Seen {
                by_request: Bounded::new(2, None),
                ..Seen::default()
            }),
            ..inner()
        };
        inner.observe(&other(1, 1_000, &["r", "s"]));
        inner.observe(&other(2, 2_000, &["r"]));
        let earlier = |id| inner.claim(id, 99, true).earlier_attempt;
        assert_eq!(earlier("r"), Some(from_unix_ms(1_000)), "its first attempt");
        // r, seen again, is newer than s: s goes first.
        inner.observe(&other(3, 3_000, &["t"]));
        assert_eq!(earlier("s"), None);
        assert_eq!(inner.seen().forgotten_ms, 1_000);
        inner.observe(&other(4, 4_000, &["u"]));
        assert_eq!(earlier("r"), None);
        assert_eq!(inner.seen().forgotten_ms, 2_000, "up to r's newest attempt");
    }

    #[test]
    fn a_request_keeps_its_first_and_newest_sightings_within_the_bound() {
        let inner = inner();
        for seq in 1..=20 {
            inner.observe(&other(seq, 1_000 * seq, &["r"]));
        }
        let mut seen = inner.seen();
        let key = seen.key.hash_one("r");
        let kept = seen.by_request.get(&key).unwrap().as_slice().to_vec();
        assert_eq!(kept.len(), MAX_SIGHTINGS);
        assert_eq!(kept[0].at_ms, 1_000, "the first");
        assert_eq!(kept[MAX_SIGHTINGS - 1].at_ms, 20_000, "the newest");
    }

    #[test]
    fn the_message_before_a_record_read_means_every_earlier_record_was() {
        let read = |own_seq, at| ReadState { own_seq, at };
        assert!(read(3, None).has_read_up_to(3, None), "the record itself");
        assert!(!read(2, None).has_read_up_to(3, Some((7, 10))));
        assert!(read(2, Some((7, 9))).has_read_up_to(3, Some((7, 10))));
        assert!(
            read(2, Some((8, 0))).has_read_up_to(3, Some((7, 10))),
            "a later ledger"
        );
        assert!(!read(2, Some((7, 8))).has_read_up_to(3, Some((7, 10))));
        assert!(
            !read(2, Some((6, 99))).has_read_up_to(3, Some((7, 0))),
            "a ledger's first entry: only the record itself tells"
        );
    }

    #[tokio::test]
    async fn a_message_that_does_not_follow_the_last_one_makes_the_past_unknown() {
        let attempts = Attempts::spawn_reading_own(MemoryBroker::default(), TOPIC.into())
            .knowing_since(UNIX_EPOCH);
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        attempts.read_at(Some((5, 0)), t(10));
        attempts.read_at(Some((5, 1)), t(11));
        let claim = attempts.claim("r1").await.unwrap();
        assert_eq!(claim.forgotten_until, UNIX_EPOCH, "contiguous so far");
        attempts.read_at(Some((5, 4)), t(12));
        assert_eq!(
            attempts.claim("r2").await.unwrap().forgotten_until,
            t(12),
            "a gap"
        );
        attempts.read_at(Some((6, 0)), t(13));
        assert_eq!(
            attempts.claim("r3").await.unwrap().forgotten_until,
            t(13),
            "a new ledger may hide a gap too"
        );
    }
}
