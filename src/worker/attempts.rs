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
//!    ([`super::done_reader`]), in the topic's order, and remembers who attempted what.
//! 3. The submitting replica waits until it has read *its own* record back. The topic is one
//!    ordered log, so by then it has read every record stored before its own, including that of any
//!    earlier attempt at the same request (an attempt is recorded before its `POST /jobs`, and a
//!    request is redelivered only after that attempt's holder died or let it go).
//! 4. An earlier attempt, from any process, makes the request *possibly repeated*: the caller checks
//!    CI for the marker before submitting ([`super::recover`]).
//!
//! What a replica cannot know this way — attempts before its own first record was read, and
//! attempts it forgot (it remembers the newest [`CAPACITY`]) — the [`Claim`] says too, so that
//! requests published before then are checked against CI ([`super::recover::check_for`]).

use super::group_commit::GroupCommit;
use super::io::Broker;
use crate::pulsar::{props, Outgoing};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// `ci-worker-record` of an attempt record.
pub const RECORD_ATTEMPTS: &str = "attempts";
/// The version of [`AttemptRecord`].
pub const RECORD_VERSION: u32 = 1;
/// Attempts remembered per process (60–110 bytes each, so at most about 20 MB).
pub const CAPACITY: usize = 200_000;
/// Most requests in one record.
pub const MAX_PER_RECORD: usize = 1000;
/// How long a submission waits to read its own record back before it checks CI instead.
pub const READ_BACK_TIMEOUT: Duration = Duration::from_secs(5);

/// One attempt record, as stored (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub version: u32,
    /// The process that wrote it (random per process).
    pub writer: String,
    /// The writer's record number, from 1.
    pub seq: u64,
    /// Unix milliseconds when it was written (the writer's clock).
    pub at_ms: u64,
    pub requests: Vec<String>,
}

impl AttemptRecord {
    pub fn parse(payload: &[u8]) -> Option<AttemptRecord> {
        serde_json::from_slice::<AttemptRecord>(payload)
            .ok()
            .filter(|r| r.version == RECORD_VERSION)
    }
}

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

/// Requests are known by a 64-bit hash of their id, keyed at random per process, not by the id: a
/// request id is often a UUID, and two copies of it (map key, forgetting order) plus a vector per
/// request were about 250 bytes per attempt, 50 MB for a full window (docs/performance.md,
/// Memory). A collision can only make a request look attempted before, which costs it one marker
/// check at CI (a list call), never a second job; with 200,000 requests remembered the chance is
/// about 1 in 10^14 per claim, and the random key keeps ids from being chosen to collide.
#[derive(Default)]
struct Seen {
    key: RandomState,
    by_request: HashMap<u64, Sightings>,
    /// Every sighting's request, oldest first (for forgetting).
    order: VecDeque<u64>,
    /// Since when every record stored is read here: the reader's subscription (or this process's
    /// first own record read).
    known_since_ms: Option<u64>,
    /// Records up to this time may be unknown here: forgotten ones, or missed while the reader
    /// reconnected.
    forgotten_ms: u64,
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
            Sightings::Many(v) => v.push(sighting),
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
    /// Starts the record writer on `topic`. With `loop_back`, the writer reads its own records back
    /// itself as soon as they are stored (for tests without a reader).
    pub fn spawn(broker: impl Broker + Clone, topic: String, loop_back: bool) -> Attempts {
        let inner = Arc::new(Inner {
            writer: uuid::Uuid::new_v4().simple().to_string(),
            next_seq: AtomicU64::new(1),
            seen: Mutex::new(Seen::default()),
            read: watch::channel(ReadState::default()).0,
        });
        let writer = inner.clone();
        let commit = GroupCommit::spawn(MAX_PER_RECORD, Duration::ZERO, move |requests| {
            let (broker, topic, inner) = (broker.clone(), topic.clone(), writer.clone());
            async move {
                let record = AttemptRecord {
                    version: RECORD_VERSION,
                    writer: inner.writer.clone(),
                    seq: inner.next_seq.fetch_add(1, Ordering::Relaxed),
                    at_ms: unix_ms(SystemTime::now()),
                    requests,
                };
                let payload = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
                let msg = Outgoing::new(payload).with_property(props::RECORD, RECORD_ATTEMPTS);
                let at = broker
                    .publish_at(&topic, msg)
                    .await
                    .map_err(|e| e.to_string())?;
                if loop_back {
                    inner.observe(&record);
                }
                Ok((record.seq, at))
            }
        });
        Attempts {
            inner,
            commit,
            read_back_timeout: READ_BACK_TIMEOUT,
        }
    }

    /// Takes every attempt since `t` as known (for tests without a reader).
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
    pub fn with_read_back_timeout(mut self, timeout: Duration) -> Attempts {
        self.read_back_timeout = timeout;
        self
    }

    /// Records that this process is about to submit `request_id`, and says what it learnt: returns
    /// once the record is stored and every record before it was read (or [`READ_BACK_TIMEOUT`]
    /// passed). `Err` when the record could not be stored: the request must not be submitted then.
    pub async fn claim(&self, request_id: &str) -> Result<Claim, String> {
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
    pub fn observe(&self, record: &AttemptRecord) {
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
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, record: &AttemptRecord) {
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
                match seen.by_request.entry(key) {
                    Entry::Occupied(mut known) => known.get_mut().push(sighting),
                    Entry::Vacant(new) => {
                        new.insert(Sightings::One(sighting));
                    }
                }
                seen.order.push_back(key);
            }
            while seen.order.len() > CAPACITY {
                seen.forget_oldest();
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
        let seen = self.seen();
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
    fn forget_oldest(&mut self) {
        let Some(key) = self.order.pop_front() else {
            return;
        };
        let Entry::Occupied(mut known) = self.by_request.entry(key) else {
            return;
        };
        let (oldest, none_left) = match known.get_mut() {
            Sightings::One(only) => (Some(*only), true),
            Sightings::Many(v) => {
                let oldest = (!v.is_empty()).then(|| v.remove(0));
                (oldest, v.is_empty())
            }
        };
        if none_left {
            known.remove();
        }
        if let Some(oldest) = oldest {
            self.forgotten_ms = self.forgotten_ms.max(oldest.at_ms);
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::test_doubles::MemoryBroker;

    const TOPIC: &str = "persistent://public/default/done";

    fn other(seq: u64, at_ms: u64, requests: &[&str]) -> AttemptRecord {
        AttemptRecord {
            version: RECORD_VERSION,
            writer: "another-process".into(),
            seq,
            at_ms,
            requests: requests.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_first_attempt_is_not_a_repeat_and_is_stored_before_it_is_claimed() {
        let broker = MemoryBroker::default();
        let attempts = Attempts::spawn(broker.clone(), TOPIC.into(), true);
        let claim = attempts.claim("r1").await.unwrap();
        assert_eq!(claim.earlier_attempt, None);
        assert!(claim.known_since.is_some());
        assert_eq!(claim.forgotten_until, UNIX_EPOCH);
        let stored = broker.on(TOPIC);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].properties[props::RECORD], RECORD_ATTEMPTS);
        let record = AttemptRecord::parse(&stored[0].payload).unwrap();
        assert_eq!(record.requests, ["r1"]);
        assert_eq!(record.seq, 1);
    }

    #[tokio::test]
    async fn another_process_attempt_read_before_ours_makes_it_a_repeat() {
        let attempts = Attempts::spawn(MemoryBroker::default(), TOPIC.into(), true);
        attempts.claim("warm-up").await.unwrap();
        attempts.observe(&other(7, 1_700_000_000_000, &["r1", "r2"]));
        let claim = attempts.claim("r1").await.unwrap();
        assert_eq!(claim.earlier_attempt, Some(from_unix_ms(1_700_000_000_000)));
        assert_eq!(attempts.claim("r3").await.unwrap().earlier_attempt, None);
    }

    #[tokio::test]
    async fn our_own_earlier_attempt_counts_too() {
        let attempts = Attempts::spawn(MemoryBroker::default(), TOPIC.into(), true);
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
        let attempts = Attempts::spawn(broker, TOPIC.into(), true);
        assert!(attempts.claim("r1").await.is_err());
    }

    #[tokio::test]
    async fn a_record_not_read_back_leaves_nothing_known() {
        // No loop back and no reader: the record is stored but never read.
        let attempts = Attempts::spawn(MemoryBroker::default(), TOPIC.into(), false)
            .with_read_back_timeout(Duration::from_millis(50));
        let claim = attempts.claim("r1").await.unwrap();
        assert_eq!(claim.known_since, None);
    }

    #[test]
    fn forgetting_moves_the_horizon() {
        let inner = Inner {
            writer: "me".into(),
            next_seq: AtomicU64::new(1),
            seen: Mutex::new(Seen::default()),
            read: watch::channel(ReadState::default()).0,
        };
        let mut mine = other(1, 1_000, &["first"]);
        mine.writer = "me".into();
        inner.observe(&mine);
        let many: Vec<String> = (0..CAPACITY).map(|i| format!("r{i}")).collect();
        inner.observe(&AttemptRecord {
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
    fn repeats_are_forgotten_one_sighting_at_a_time() {
        let inner = inner();
        inner.observe(&other(1, 1_000, &["r", "r"]));
        inner.observe(&other(2, 2_000, &["r", "s"]));
        let earlier = |inner: &Inner| inner.claim("r", 99, true).earlier_attempt;
        assert_eq!(earlier(&inner), Some(from_unix_ms(1_000)));
        let forget = |inner: &Inner| inner.seen().forget_oldest();
        forget(&inner);
        assert_eq!(
            earlier(&inner),
            Some(from_unix_ms(1_000)),
            "one of two left"
        );
        forget(&inner);
        assert_eq!(earlier(&inner), Some(from_unix_ms(2_000)));
        forget(&inner);
        assert_eq!(earlier(&inner), None);
        assert!(inner.claim("s", 99, true).earlier_attempt.is_some());
        let seen = inner.seen();
        assert_eq!((seen.by_request.len(), seen.order.len()), (1, 1));
        assert_eq!(seen.forgotten_ms, 2_000);
    }

    #[test]
    fn the_window_holds_at_most_capacity_sightings() {
        let inner = inner();
        inner.observe(&other(1, 1_000, &["old", "old"]));
        let many: Vec<String> = (0..CAPACITY + 10).map(|i| format!("r{i}")).collect();
        inner.observe(&AttemptRecord {
            requests: many,
            ..other(2, 2_000, &[])
        });
        let seen = inner.seen();
        assert_eq!(seen.order.len(), CAPACITY);
        assert_eq!(seen.by_request.len(), CAPACITY);
        assert!(!seen.by_request.contains_key(&seen.key.hash_one("old")));
        assert!(!seen.by_request.contains_key(&seen.key.hash_one("r9")));
        assert!(seen.by_request.contains_key(&seen.key.hash_one("r10")));
        assert_eq!(seen.forgotten_ms, 2_000);
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
        let attempts =
            Attempts::spawn(MemoryBroker::default(), TOPIC.into(), true).knowing_since(UNIX_EPOCH);
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

    #[test]
    fn records_of_another_version_are_not_read() {
        let mut r = other(1, 1, &["r1"]);
        assert!(AttemptRecord::parse(&serde_json::to_vec(&r).unwrap()).is_some());
        r.version = 2;
        assert!(AttemptRecord::parse(&serde_json::to_vec(&r).unwrap()).is_none());
        assert!(AttemptRecord::parse(b"r1\nr2").is_none());
    }
}
