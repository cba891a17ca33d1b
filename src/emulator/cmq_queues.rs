//! The emulator's TDMQ for CMQ queues, in memory: what `CreateQueue`, `SendMessage`,
//! `(Batch)ReceiveMessage`, `(Batch)DeleteMessage` and `GetQueueAttributes` decide (the HTTP side is
//! [`super::cmq_api`]; CI's `CallBackType=TDMQ` delivery sends into them from [`super::events`]).
//!
//! The rules, from the reference pages (`cmq-*.md`):
//! - A queue name has at most 64 characters, starts with a letter and holds letters, digits and `-`
//!   (else `4000`, module code `10020`). Names collide case-insensitively ("queue is already
//!   existed, case insensitive"); looking a queue up is exact — the pages do not say whether
//!   `SendMessage` to `Abc` reaches `abc`.
//! - Attributes (`CreateQueue`): `pollingWaitSeconds` 0–30 (default 0), `visibilityTimeout`
//!   1–43200 (default 30), `maxMsgSize` 1024–1048576 (default 65536: the TDMQ SDK page's range; the
//!   legacy CreateQueue page caps it at 65536), `msgRetentionSeconds` 30–43200 (default 3600: what
//!   TDMQ's `CreateCmqQueue` calls the Max Message Unack Time; CMQ before TDMQ kept messages up to 15
//!   days), `rewindSeconds` 0–43200 (default 0; kept and reported, rewinding is not emulated).
//! - A body must not be empty (`4000`/`10120`) nor longer than `maxMsgSize` bytes (`4400`/`10230`).
//! - A receive hands out up to `n` visible messages, oldest first (CMQ promises no order; this one
//!   keeps the sending order), and makes each inactive until now + `visibilityTimeout`, with a fresh
//!   receipt handle and `dequeueCount` + 1 (`firstDequeueTime` set on the first receive). With none
//!   visible it waits (long polling) until one is — a send or an expiring visibility timeout wakes
//!   it — or the poll ends.
//! - A delete succeeds only with the message's newest handle and before its `nextVisibleTime`;
//!   anything else is `4430` "receipt handle is invalid" (module code `10260`).
//! - A message older than `msgRetentionSeconds` (counted from its sending) is gone, whatever its
//!   state: TDMQ for CMQ deletes a message not deleted within the Max Message Unack Time ("the
//!   server will automatically acknowledge the message"). Checked on every access: nothing needs to
//!   run in the background.
//!
//! Decisions take a [`Clock`] (a monotonic instant and the Unix time reported in answers), so that
//! the unit tests move time by hand instead of sleeping.

use crate::cmq::api::ReceivedMessage;
use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest queue name.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// A refusal of the queues, with CMQ's result code ([`QueueError::code`]); the text is CMQ's
/// `message`, module code first, as CMQ writes it (`(10200)no message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QueueError {
    #[error("(10020)queue name format error")]
    NameFormat,
    /// The TDMQ error table lists it as code 4000 with module code 4460; Tencent's Python SDK
    /// (`CMQServerException`'s docstring: "4460 队列已经存在") has code 4460, which is what this
    /// answers, with module code 10210. The worker's client accepts both.
    #[error("(10210)queue is already existed, case insensitive")]
    Exists,
    #[error("(10100)queue is not existed, or deleted")]
    NotExist,
    #[error("(10350)parameter {0} value or length is out of range")]
    OutOfRange(&'static str),
    #[error("(10120)message body can't be empty")]
    EmptyBody,
    #[error("(10230)exceed maximum message size")]
    TooLarge,
    #[error("(10692)delay seconds is out of range")]
    DelayOutOfRange,
    #[error("(10260)receipt handle is invalid")]
    InvalidHandle,
}

impl QueueError {
    /// CMQ's result code (`code`) for this refusal.
    pub(crate) fn code(&self) -> i64 {
        use crate::cmq::api::code;
        match self {
            QueueError::NameFormat
            | QueueError::OutOfRange(_)
            | QueueError::EmptyBody
            | QueueError::DelayOutOfRange => code::INVALID_PARAMETER,
            QueueError::Exists => code::QUEUE_EXISTS,
            QueueError::NotExist => code::QUEUE_NOT_EXIST,
            QueueError::TooLarge => code::MESSAGE_TOO_LARGE,
            QueueError::InvalidHandle => code::RECEIPT_HANDLE_INVALID,
        }
    }
}

/// Now, twice: the instant decisions are made with, and the Unix seconds answers report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub at: Instant,
    pub unix: i64,
}

impl Clock {
    pub(crate) fn now() -> Clock {
        Clock {
            at: Instant::now(),
            unix: chrono::Utc::now().timestamp(),
        }
    }

    /// The same clock `d` later (for tests).
    #[cfg(test)]
    pub(crate) fn after(self, d: Duration) -> Clock {
        Clock {
            at: self.at + d,
            unix: self.unix + d.as_secs() as i64,
        }
    }
}

/// Unique decimal IDs (message IDs, receipt handles, request IDs), shaped like the pages' samples
/// (`"283748239349283"`): a random 15-digit start, then counting up, so no two are ever equal.
pub(crate) struct Ids {
    next: AtomicU64,
}

impl Ids {
    pub(crate) fn new() -> Ids {
        use rand::Rng;
        Ids {
            // Room for 10^15 IDs before the 16th digit.
            next: AtomicU64::new(
                rand::rng().random_range(100_000_000_000_000..200_000_000_000_000),
            ),
        }
    }

    pub(crate) fn next(&self) -> String {
        self.next.fetch_add(1, Ordering::Relaxed).to_string()
    }
}

/// A queue's settable attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueAttributes {
    pub polling_wait_seconds: u64,
    pub visibility_timeout: u64,
    pub max_msg_size: u64,
    pub msg_retention_seconds: u64,
    pub rewind_seconds: u64,
}

impl Default for QueueAttributes {
    fn default() -> Self {
        QueueAttributes {
            polling_wait_seconds: 0,
            visibility_timeout: 30,
            max_msg_size: 65_536,
            msg_retention_seconds: 3_600,
            rewind_seconds: 0,
        }
    }
}

impl QueueAttributes {
    /// The `CreateQueue` parameter names, in the order [`QueueAttributes::set`] takes them.
    pub(crate) const NAMES: [&'static str; 5] = [
        "pollingWaitSeconds",
        "visibilityTimeout",
        "maxMsgSize",
        "msgRetentionSeconds",
        "rewindSeconds",
    ];

    /// Sets the attribute CMQ calls `name` (one of [`QueueAttributes::NAMES`]) after checking its
    /// range.
    pub(crate) fn set(&mut self, name: &str, value: u64) -> Result<(), QueueError> {
        let (slot, range, name) = match name {
            "pollingWaitSeconds" => (
                &mut self.polling_wait_seconds,
                0..=crate::cmq::api::MAX_POLLING_WAIT_SECONDS,
                "pollingWaitSeconds",
            ),
            "visibilityTimeout" => (
                &mut self.visibility_timeout,
                1..=43_200,
                "visibilityTimeout",
            ),
            "maxMsgSize" => (&mut self.max_msg_size, 1_024..=1_048_576, "maxMsgSize"),
            "msgRetentionSeconds" => (
                &mut self.msg_retention_seconds,
                30..=43_200,
                "msgRetentionSeconds",
            ),
            "rewindSeconds" => (&mut self.rewind_seconds, 0..=43_200, "rewindSeconds"),
            _ => return Err(QueueError::OutOfRange("attribute")),
        };
        if !range.contains(&value) {
            return Err(QueueError::OutOfRange(name));
        }
        *slot = value;
        Ok(())
    }
}

/// Whether `name` follows CMQ's queue name rule.
pub(crate) fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// One stored message.
#[derive(Debug)]
struct Stored {
    id: String,
    body: String,
    enqueue_time: i64,
    /// When retention drops it.
    expires_at: Instant,
    /// When it is visible (again); later than now while inactive or delayed.
    visible_at: Instant,
    next_visible_time: i64,
    dequeue_count: i64,
    /// 0 until the first receive.
    first_dequeue_time: i64,
    /// The newest receipt handle, the only one that deletes it.
    handle: Option<String>,
}

/// A queue's messages: by sending order, and the newest handle of each received one.
#[derive(Debug, Default)]
struct Messages {
    by_seq: BTreeMap<u64, Stored>,
    handles: HashMap<String, u64>,
    next_seq: u64,
}

impl Messages {
    /// Drops what retention has expired.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .by_seq
            .iter()
            .filter(|(_, m)| m.expires_at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(m) = self.by_seq.remove(&seq) {
                if let Some(h) = m.handle {
                    self.handles.remove(&h);
                }
            }
        }
    }
}

/// How many messages a queue holds in each state (`GetQueueAttributes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    /// Visible: a receive would get them.
    pub active: usize,
    /// Received and not deleted, within their visibility timeout.
    pub inactive: usize,
    /// Sent with `delaySeconds` and not visible yet.
    pub delayed: usize,
}

/// One queue.
pub(crate) struct Queue {
    pub name: String,
    pub id: String,
    pub attributes: QueueAttributes,
    pub create_time: i64,
    messages: Mutex<Messages>,
    /// Woken on every send, for the long polls.
    arrived: Notify,
    ids: Arc<Ids>,
}

impl Queue {
    fn messages(&self) -> MutexGuard<'_, Messages> {
        self.messages.lock()
    }

    fn check_body(&self, body: &str) -> Result<(), QueueError> {
        if body.is_empty() {
            Err(QueueError::EmptyBody)
        } else if body.len() as u64 > self.attributes.max_msg_size {
            Err(QueueError::TooLarge)
        } else {
            Ok(())
        }
    }

    /// Sends messages (all or none: every body is checked first); returns their IDs.
    /// `delay_seconds` keeps them invisible that long; the stored pages give no range for it, so
    /// anything up to `msgRetentionSeconds` is accepted (a longer delay would outlive the message).
    pub(crate) fn send_all(
        &self,
        bodies: &[&str],
        delay_seconds: u64,
        clock: Clock,
    ) -> Result<Vec<String>, QueueError> {
        for body in bodies {
            self.check_body(body)?;
        }
        if delay_seconds > self.attributes.msg_retention_seconds {
            return Err(QueueError::DelayOutOfRange);
        }
        let delay = Duration::from_secs(delay_seconds);
        let retention = Duration::from_secs(self.attributes.msg_retention_seconds);
        let mut ids = Vec::with_capacity(bodies.len());
        {
            let mut m = self.messages();
            m.expire(clock.at);
            for body in bodies {
                let id = self.ids.next();
                let seq = m.next_seq;
                m.next_seq += 1;
                m.by_seq.insert(
                    seq,
                    Stored {
                        id: id.clone(),
                        body: body.to_string(),
                        enqueue_time: clock.unix,
                        expires_at: clock.at + retention,
                        visible_at: clock.at + delay,
                        next_visible_time: clock.unix + delay_seconds as i64,
                        dequeue_count: 0,
                        first_dequeue_time: 0,
                        handle: None,
                    },
                );
                ids.push(id);
            }
        }
        self.arrived.notify_waiters();
        Ok(ids)
    }

    /// Sends one message; returns its ID.
    pub(crate) fn send(
        &self,
        body: &str,
        delay_seconds: u64,
        clock: Clock,
    ) -> Result<String, QueueError> {
        Ok(self
            .send_all(&[body], delay_seconds, clock)?
            .pop()
            .unwrap_or_default())
    }

    /// Receives up to `n` visible messages now, without waiting; also says when the next invisible
    /// one becomes visible (what a long poll waits for besides a send).
    pub(crate) fn try_receive(
        &self,
        n: usize,
        clock: Clock,
    ) -> (Vec<ReceivedMessage>, Option<Instant>) {
        let visibility = self.attributes.visibility_timeout;
        let mut m = self.messages();
        m.expire(clock.at);
        let Messages {
            by_seq, handles, ..
        } = &mut *m;
        let mut got = Vec::new();
        let mut next_visible: Option<Instant> = None;
        for (seq, msg) in by_seq.iter_mut() {
            if msg.visible_at > clock.at {
                next_visible = Some(next_visible.map_or(msg.visible_at, |t| t.min(msg.visible_at)));
                continue;
            }
            if got.len() == n {
                continue;
            }
            let handle = self.ids.next();
            if let Some(old) = msg.handle.replace(handle.clone()) {
                handles.remove(&old);
            }
            handles.insert(handle.clone(), *seq);
            msg.dequeue_count += 1;
            if msg.first_dequeue_time == 0 {
                msg.first_dequeue_time = clock.unix;
            }
            msg.visible_at = clock.at + Duration::from_secs(visibility);
            msg.next_visible_time = clock.unix + visibility as i64;
            next_visible = Some(next_visible.map_or(msg.visible_at, |t| t.min(msg.visible_at)));
            got.push(ReceivedMessage {
                msg_body: msg.body.clone(),
                msg_id: msg.id.clone(),
                receipt_handle: handle,
                enqueue_time: msg.enqueue_time,
                first_dequeue_time: msg.first_dequeue_time,
                next_visible_time: msg.next_visible_time,
                dequeue_count: msg.dequeue_count,
                unreadable: None,
            });
        }
        (got, next_visible)
    }

    /// Receives up to `n` messages, waiting up to `wait` for the first (long polling): returns as
    /// soon as any is visible, or empty when the poll ends. Wakes on sends and on the moment the
    /// next inactive message becomes visible again; never polls in a loop.
    pub(crate) async fn receive(&self, n: usize, wait: Duration) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so that a send between the look and the wait still wakes.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let clock = Clock::now();
            let (got, next_visible) = self.try_receive(n, clock);
            if !got.is_empty() || clock.at >= deadline {
                return got;
            }
            let wake = next_visible.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Deletes the message `handle` was handed out for, if it is its newest handle and the message
    /// is still inactive.
    pub(crate) fn delete(&self, handle: &str, clock: Clock) -> Result<(), QueueError> {
        let mut m = self.messages();
        m.expire(clock.at);
        let seq = *m.handles.get(handle).ok_or(QueueError::InvalidHandle)?;
        let live = m
            .by_seq
            .get(&seq)
            .is_some_and(|msg| msg.handle.as_deref() == Some(handle) && clock.at < msg.visible_at);
        if !live {
            // Past nextVisibleTime: the message is active again and the handle is dead for good.
            return Err(QueueError::InvalidHandle);
        }
        m.by_seq.remove(&seq);
        m.handles.remove(handle);
        Ok(())
    }

    /// How many messages are active, inactive and delayed now.
    pub(crate) fn counts(&self, clock: Clock) -> Counts {
        let mut m = self.messages();
        m.expire(clock.at);
        let mut counts = Counts::default();
        for msg in m.by_seq.values() {
            if msg.visible_at <= clock.at {
                counts.active += 1;
            } else if msg.dequeue_count > 0 {
                counts.inactive += 1;
            } else {
                counts.delayed += 1;
            }
        }
        counts
    }
}

/// All queues of the emulator (one region, one account).
pub(crate) struct Queues {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    ids: Arc<Ids>,
}

impl Queues {
    pub(crate) fn new() -> Queues {
        Queues {
            queues: Mutex::new(HashMap::new()),
            ids: Arc::new(Ids::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Queue>>> {
        self.queues.lock()
    }

    /// Creates a queue; its name must follow the rule and differ (case-insensitively) from every
    /// existing one.
    pub(crate) fn create(
        &self,
        name: &str,
        attributes: QueueAttributes,
        clock: Clock,
    ) -> Result<Arc<Queue>, QueueError> {
        if !valid_name(name) {
            return Err(QueueError::NameFormat);
        }
        let mut map = self.map();
        if map.keys().any(|k| k.eq_ignore_ascii_case(name)) {
            return Err(QueueError::Exists);
        }
        let queue = Arc::new(Queue {
            name: name.to_string(),
            id: format!("queue-{}", self.ids.next()),
            attributes,
            create_time: clock.unix,
            messages: Mutex::new(Messages::default()),
            arrived: Notify::new(),
            ids: self.ids.clone(),
        });
        map.insert(name.to_string(), queue.clone());
        Ok(queue)
    }

    /// The queue named exactly `name`.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Queue>, QueueError> {
        self.map().get(name).cloned().ok_or(QueueError::NotExist)
    }

    /// The names of all queues, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.map().keys().cloned().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_with(visibility: u64) -> (Queues, Arc<Queue>, Clock) {
        let queues = Queues::new();
        let clock = Clock::now();
        let mut attributes = QueueAttributes::default();
        attributes.set("visibilityTimeout", visibility).unwrap();
        let q = queues.create("q1", attributes, clock).unwrap();
        (queues, q, clock)
    }

    #[test]
    fn attribute_defaults_and_ranges() {
        let d = QueueAttributes::default();
        assert_eq!(
            (
                d.polling_wait_seconds,
                d.visibility_timeout,
                d.max_msg_size,
                d.msg_retention_seconds
            ),
            (0, 30, 65_536, 3_600)
        );
        for (name, low, high) in [
            ("pollingWaitSeconds", 0, 30),
            ("visibilityTimeout", 1, 43_200),
            ("maxMsgSize", 1_024, 1_048_576),
            ("msgRetentionSeconds", 30, 43_200),
            ("rewindSeconds", 0, 43_200),
        ] {
            let mut a = QueueAttributes::default();
            a.set(name, low).unwrap();
            a.set(name, high).unwrap();
            assert_eq!(a.set(name, high + 1), Err(QueueError::OutOfRange(name)));
            if low > 0 {
                assert_eq!(a.set(name, low - 1), Err(QueueError::OutOfRange(name)));
            }
        }
        let mut a = QueueAttributes::default();
        a.set("visibilityTimeout", 5).unwrap();
        assert_eq!(a.visibility_timeout, 5);
        assert_eq!(QueueError::OutOfRange("x").code(), 4000);
    }

    #[test]
    fn queue_names_follow_cmqs_rule_and_collide_case_insensitively() {
        for good in ["a", "ci-callbacks", "Q1-2-3", &"a".repeat(64)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "1abc", "-a", "a_b", "a.b", "a b", "é", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        let queues = Queues::new();
        let clock = Clock::now();
        let a = QueueAttributes::default();
        let e = queues.create("9lives", a, clock).err().unwrap();
        assert_eq!(
            (e.code(), e.to_string()),
            (4000, "(10020)queue name format error".into())
        );
        queues.create("Callbacks", a, clock).unwrap();
        let e = queues.create("callbacks", a, clock).err().unwrap();
        assert_eq!(e, QueueError::Exists);
        assert_eq!(e.code(), 4460);
        let e = queues.get("nope").err().unwrap();
        assert_eq!(
            (e.code(), e.to_string()),
            (4440, "(10100)queue is not existed, or deleted".into())
        );
        assert!(queues.get("callbacks").is_err(), "lookups are exact");
        assert_eq!(queues.get("Callbacks").unwrap().name, "Callbacks");
        assert_eq!(queues.names(), ["Callbacks"]);
    }

    #[test]
    fn bodies_must_be_non_empty_and_fit_max_msg_size() {
        let queues = Queues::new();
        let clock = Clock::now();
        let mut a = QueueAttributes::default();
        a.set("maxMsgSize", 1024).unwrap();
        let q = queues.create("small", a, clock).unwrap();
        assert_eq!(q.send("", 0, clock), Err(QueueError::EmptyBody));
        let e = q.send(&"x".repeat(1025), 0, clock).unwrap_err();
        assert_eq!((e.code(), e), (4400, QueueError::TooLarge));
        q.send(&"x".repeat(1024), 0, clock).unwrap();
        // A batch is all or nothing.
        assert_eq!(
            q.send_all(&["ok", ""], 0, clock),
            Err(QueueError::EmptyBody)
        );
        assert_eq!(q.counts(clock).active, 1);
    }

    #[test]
    fn receive_hides_until_the_visibility_timeout_then_hands_out_a_new_handle() {
        let (_queues, q, t0) = queue_with(10);
        let id = q.send("hello", 0, t0).unwrap();
        let (got, next) = q.try_receive(16, t0);
        assert_eq!(got.len(), 1);
        let first = &got[0];
        assert_eq!(
            (first.msg_id.as_str(), first.msg_body.as_str()),
            (id.as_str(), "hello")
        );
        assert_eq!(first.dequeue_count, 1);
        assert_eq!(first.enqueue_time, t0.unix);
        assert_eq!(first.first_dequeue_time, t0.unix);
        assert_eq!(first.next_visible_time, t0.unix + 10);
        assert_eq!(next, Some(t0.at + Duration::from_secs(10)));
        assert_eq!(
            q.counts(t0),
            Counts {
                active: 0,
                inactive: 1,
                delayed: 0
            }
        );

        // Inactive: nobody else gets it, and the next wake-up is its nextVisibleTime.
        let t1 = t0.after(Duration::from_secs(9));
        let (none, next) = q.try_receive(16, t1);
        assert!(none.is_empty());
        assert_eq!(next, Some(t0.at + Duration::from_secs(10)));

        // Visible again: the old handle cannot delete it any more, even before anyone receives it.
        let t2 = t0.after(Duration::from_secs(10));
        assert_eq!(q.counts(t2).active, 1);
        assert_eq!(
            q.delete(&first.receipt_handle, t2),
            Err(QueueError::InvalidHandle)
        );
        let (again, _) = q.try_receive(16, t2);
        let second = &again[0];
        assert_eq!(second.msg_id, id);
        assert_eq!(second.dequeue_count, 2);
        assert_eq!(second.first_dequeue_time, t0.unix, "set once");
        assert_eq!(second.next_visible_time, t2.unix + 10);
        assert_ne!(second.receipt_handle, first.receipt_handle);
        let e = q.delete(&first.receipt_handle, t2).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string()),
            (4430, "(10260)receipt handle is invalid".into())
        );
        q.delete(&second.receipt_handle, t2).unwrap();
        assert_eq!(q.counts(t2), Counts::default());
        assert_eq!(
            q.delete(&second.receipt_handle, t2),
            Err(QueueError::InvalidHandle),
            "deleted once"
        );
        assert_eq!(q.delete("123", t2), Err(QueueError::InvalidHandle));
    }

    #[test]
    fn a_handle_expires_at_next_visible_time() {
        let (_queues, q, t0) = queue_with(5);
        q.send("m", 0, t0).unwrap();
        let handle = q.try_receive(1, t0).0.remove(0).receipt_handle;
        assert_eq!(
            q.delete(&handle, t0.after(Duration::from_secs(5))),
            Err(QueueError::InvalidHandle)
        );
        q.delete(&handle, t0.after(Duration::from_millis(4_999)))
            .unwrap();
    }

    #[test]
    fn receives_up_to_n_in_sending_order() {
        let (_queues, q, t0) = queue_with(30);
        let ids = q.send_all(&["a", "b", "c"], 0, t0).unwrap();
        let (got, _) = q.try_receive(2, t0);
        let bodies: Vec<_> = got.iter().map(|m| m.msg_body.as_str()).collect();
        assert_eq!(bodies, ["a", "b"]);
        assert_eq!(got[0].msg_id, ids[0]);
        assert_ne!(got[0].receipt_handle, got[1].receipt_handle);
        let (rest, _) = q.try_receive(16, t0);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].msg_body, "c");
        assert_eq!(
            q.counts(t0),
            Counts {
                active: 0,
                inactive: 3,
                delayed: 0
            }
        );
    }

    #[test]
    fn retention_drops_messages_whatever_their_state() {
        let queues = Queues::new();
        let t0 = Clock::now();
        let mut a = QueueAttributes::default();
        a.set("msgRetentionSeconds", 60).unwrap();
        a.set("visibilityTimeout", 600).unwrap();
        let q = queues.create("short", a, t0).unwrap();
        q.send("received", 0, t0).unwrap();
        let handle = q.try_receive(1, t0).0.remove(0).receipt_handle;
        q.send("waiting", 0, t0.after(Duration::from_secs(30)))
            .unwrap();
        let t1 = t0.after(Duration::from_secs(60));
        assert_eq!(
            q.counts(t1),
            Counts {
                active: 1,
                inactive: 0,
                delayed: 0
            },
            "the first message expired while inactive"
        );
        assert_eq!(q.delete(&handle, t1), Err(QueueError::InvalidHandle));
        let t2 = t0.after(Duration::from_secs(90));
        assert!(q.try_receive(16, t2).0.is_empty());
        assert_eq!(q.counts(t2), Counts::default());
    }

    #[test]
    fn delayed_messages_are_counted_apart_and_show_later() {
        let (_queues, q, t0) = queue_with(30);
        q.send("later", 5, t0).unwrap();
        assert_eq!(
            q.counts(t0),
            Counts {
                active: 0,
                inactive: 0,
                delayed: 1
            }
        );
        let (none, next) = q.try_receive(1, t0);
        assert!(none.is_empty());
        assert_eq!(next, Some(t0.at + Duration::from_secs(5)));
        let (got, _) = q.try_receive(1, t0.after(Duration::from_secs(5)));
        assert_eq!(got[0].dequeue_count, 1);
        assert_eq!(q.send("x", 345_601, t0), Err(QueueError::DelayOutOfRange));
    }

    #[tokio::test]
    async fn a_long_poll_is_woken_by_a_send() {
        let (_queues, q, _) = queue_with(30);
        let started = Instant::now();
        let poll = q.receive(16, Duration::from_secs(20));
        tokio::pin!(poll);
        // Polled once: it looked, found nothing and now waits.
        assert!(futures::poll!(&mut poll).is_pending());
        q.send("wake up", 0, Clock::now()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .expect("the send ends the poll");
        assert_eq!(got[0].msg_body, "wake up");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_long_poll_is_woken_when_a_visibility_timeout_expires() {
        let (_queues, q, _) = queue_with(1);
        q.send("m", 0, Clock::now()).unwrap();
        let first = q.receive(1, Duration::ZERO).await.remove(0);
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            q.receive(1, Duration::from_secs(20)),
        )
        .await
        .expect("the message comes back after 1 s, long before the poll ends");
        assert_eq!(got[0].msg_id, first.msg_id);
        assert_eq!(got[0].dequeue_count, 2);
    }

    #[tokio::test]
    async fn an_empty_long_poll_ends_at_its_deadline() {
        let (_queues, q, _) = queue_with(30);
        let started = Instant::now();
        assert!(q.receive(16, Duration::from_millis(300)).await.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(q.receive(16, Duration::ZERO).await.is_empty());
    }
}
