//! The consume/settle loop every path shares.
//!
//! One task owns the consumer (the crate's ack/nack need `&mut`), takes a message only while fewer
//! than `max_in_flight` handlers are running, runs the handlers concurrently inside the same task,
//! and settles (acks or nacks) each handler's verdict when it arrives. On shutdown it stops taking
//! messages, waits for handlers up to the drain timeout and nacks the rest, so that every message
//! taken is either done or redelivered. While the loop rebuilds its consumer (below), its handlers
//! wait with it: they need the same broker to store their outcome.
//!
//! It also guards the consumer: the `pulsar` crate has had consumers that stay silent forever after a
//! broker restart while their connection looks fine. When a consumer the loop is reading from has
//! delivered nothing for [`HEALTH_INTERVAL`], the loop asks the broker for its stats (which fails when
//! the broker no longer knows the consumer) and rebuilds the consumer when that fails or hangs. Unacknowledged messages of the old one are redelivered by the
//! broker; verdicts still pending are settled through the new one (acks apply to the subscription).
//!
//! A message delivered again while this loop still holds it (the broker redelivers what a rebuilt or
//! rewound consumer had not acknowledged) is not handled twice: the copy is dropped, and the copy
//! being handled settles it. On a Failover subscription a nack would rewind the whole partition, so a
//! message to try again is handed to the handler again after `LoopOptions::retry_after`, by this
//! loop, and at shutdown what did not finish is simply not acknowledged (the broker gives it to the
//! partition's next owner).
//!
//! Messages of the subscription can also be acknowledged by id from outside the loop ([`AckById`]):
//! the completion path cancels the deadline record of a job it finished that way, before the record
//! is due (`docs/design/replicas.md`).

use super::client::{broker_retry_delay, Client};
use super::error::PulsarIoError;
use super::subscribe::{
    message_id_string, properties_of, subscribe, PulsarConsumer, SubscribeOptions, SubscriptionKind,
};
use crate::shutdown::Shutdown;
use crate::telemetry::{Health, Metrics};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pulsar::proto::MessageIdData;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often the consumer's registration at the broker is checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(15);
/// At shutdown: how long releasing what did not finish may take, and how long the consumer may take
/// to close, past `drain_timeout` (README, Guarantees: the shutdown bound).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// At shutdown, a receiver channel empty for this long means the engine has sent what was queued.
const RELEASE_IDLE: Duration = Duration::from_millis(100);
/// How long a health check may take before the consumer is considered stuck.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// A handler's verdict on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done: its outcome is safely on the broker.
    Ack,
    /// Not done, for this reason: redeliver it (to this or another replica).
    Retry(String),
}

/// Where a message is within its topic (or partition), as the broker delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub ledger: u64,
    pub entry: u64,
    /// The message's index within a producer batch; `-1` for a message sent alone.
    pub batch_index: i32,
}

impl Position {
    fn of(id: &MessageIdData) -> Position {
        Position {
            ledger: id.ledger_id,
            entry: id.entry_id,
            batch_index: id.batch_index.unwrap_or(-1),
        }
    }
}

/// One received message, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub payload: Vec<u8>,
    pub properties: HashMap<String, String>,
    pub key: Option<String>,
    /// The partition's topic on a partitioned topic.
    pub topic: String,
    pub position: Position,
    /// `ledger:entry:partition[:batch]`, for logs and dead-letter properties.
    pub message_id: String,
    /// When the producer published it (the broker's clock).
    pub publish_time: std::time::SystemTime,
    /// The earliest this process can have received it: the latest of when the loop last found the
    /// crate's queue empty (what was received before then was taken before then), when the loop
    /// took the message [`prefetched_at_most`] before it (the crate holds no more ahead of the
    /// loop), and when it subscribed. How long it may have been held here, which on a Failover
    /// subscription bounds how long ago its partition can have moved to another consumer without
    /// this one being told (the crate ignores the broker's notice).
    pub held_since: tokio::time::Instant,
    /// How many times this loop has handed it to a handler (from 1; more after local retries on a
    /// Failover subscription).
    pub attempt: u32,
}

/// How many messages the crate may hold received ahead of the loop with a receiver queue of
/// `receiver_queue` (the queue itself, and as many again of flow permits the broker may still fill).
pub fn prefetched_at_most(receiver_queue: u32) -> usize {
    2 * receiver_queue.max(1) as usize
}

/// What the loop needs besides the handler.
pub struct LoopOptions {
    pub name: &'static str,
    pub subscribe: SubscribeOptions,
    pub max_in_flight: usize,
    pub drain_timeout: Duration,
    /// On a Failover subscription: how long a message to try again waits before this loop hands it
    /// to the handler again.
    pub retry_after: Duration,
    /// Acknowledgements asked for by id from outside the loop ([`ack_by_id`]).
    pub acks: Option<AckRequests>,
}

/// Asks a consume loop to acknowledge messages of its subscription by id, including messages not
/// delivered yet (a delayed message acknowledged before it is due is never delivered:
/// `docs/design/pulsar-facts.md`, fact 1). Cheap to clone, never waits: a request that finds the
/// queue full, or the loop gone, is dropped, and that message is then delivered and handled as usual.
#[derive(Clone, Debug)]
pub struct AckById {
    requests: tokio::sync::mpsc::Sender<(String, MessageIdData)>,
}

/// The loop's side of [`AckById`].
pub struct AckRequests(tokio::sync::mpsc::Receiver<(String, MessageIdData)>);

/// A channel of at most `capacity` acknowledgements waiting for the loop.
pub fn ack_by_id(capacity: usize) -> (AckById, AckRequests) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (AckById { requests: tx }, AckRequests(rx))
}

impl AckById {
    /// Asks for the message at `position` of `topic` (the partition's topic name on a partitioned
    /// topic, `partition` its index, `-1` otherwise) to be acknowledged; false when it was dropped.
    pub fn ack(&self, topic: &str, partition: i32, position: Position) -> bool {
        let id = MessageIdData {
            ledger_id: position.ledger,
            entry_id: position.entry,
            partition: Some(partition),
            batch_index: (position.batch_index >= 0).then_some(position.batch_index),
            ..Default::default()
        };
        self.requests.try_send((topic.to_string(), id)).is_ok()
    }
}

impl AckRequests {
    /// The next acknowledgement asked for, if one is waiting (for tests of who asks).
    pub fn try_next(&mut self) -> Option<(String, MessageIdData)> {
        self.0.try_recv().ok()
    }
}

/// The next acknowledgement asked for; never resolves when there is no channel or it is closed.
async fn next_ack(acks: &mut Option<AckRequests>) -> (String, MessageIdData) {
    if let Some(AckRequests(rx)) = acks {
        if let Some(request) = rx.recv().await {
            return request;
        }
        *acks = None;
    }
    std::future::pending().await
}

/// A message taken and not yet settled.
struct Taken {
    topic: String,
    id: MessageIdData,
    /// Kept on a Failover subscription only, to hand the message to the handler again.
    again: Option<Delivery>,
}

type Handling = BoxFuture<'static, (u64, Disposition)>;

/// Subscribes, then runs until `stop` is triggered (or the consumer ends), then drains.
pub async fn run<H, F>(
    client: Client,
    mut opts: LoopOptions,
    stop: Shutdown,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    handler: H,
) -> Result<(), PulsarIoError>
where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Disposition> + Send + 'static,
{
    let name = opts.name;
    health.set(name, false);
    let Some(mut consumer) = subscribe_until_ok(&client, &opts, &stop, true).await? else {
        return Ok(());
    };
    health.set(name, true);
    // Handlers run inside this task, polled together (as the pulsar-rs examples do), not spawned:
    // a spawned task per message cost the completion path 10–20 % of its CPU in cross-thread
    // wake-ups. A panicking handler is caught and its message redelivered.
    let mut in_flight: FuturesUnordered<Handling> = FuturesUnordered::new();
    let mut pending: HashMap<u64, Taken> = HashMap::new();
    // The positions of `pending`, to recognise a message delivered again while still held.
    let mut held: HashSet<(String, Position)> = HashSet::new();
    let failover = opts.subscribe.kind == SubscriptionKind::Failover;
    let dispatch = |id: u64, delivery: Delivery| -> Handling {
        let handling = std::panic::AssertUnwindSafe(handler(delivery)).catch_unwind();
        Box::pin(async move {
            let verdict = handling.await.unwrap_or_else(|_| {
                tracing::error!("a message handler panicked; the message will be redelivered");
                Disposition::Retry("the handler panicked".into())
            });
            (id, verdict)
        })
    };
    let mut seq: u64 = 0;
    let mut check = tokio::time::interval(HEALTH_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    let mut last_message = tokio::time::Instant::now();
    let mut acks = opts.acks.take();
    // When the loop took the last messages (oldest first), for `Delivery::held_since`.
    let prefetch = prefetched_at_most(opts.subscribe.receiver_queue_size);
    let mut taken_at: std::collections::VecDeque<tokio::time::Instant> =
        std::collections::VecDeque::with_capacity(prefetch);
    let mut subscribed_at = tokio::time::Instant::now();
    // When the loop last asked the crate for a message and it had none.
    let mut found_empty_at = subscribed_at;

    loop {
        let next = tokio::select! {
            biased;
            _ = stop.triggered() => break,
            Some((id, verdict)) = in_flight.next(), if !in_flight.is_empty() => {
                if failover {
                    if let Disposition::Retry(reason) = &verdict {
                        // Handed to the handler again here: a nack would rewind the partition.
                        if let Some(again) = pending.get_mut(&id).and_then(|t| t.again.as_mut()).map(|d| {
                            d.attempt += 1;
                            d.clone()
                        }) {
                            tracing::debug!(loop_name = name, message_id = %again.message_id, %reason, "trying again after {:?}", opts.retry_after);
                            metrics.redeliveries_requested.inc();
                            let handling = dispatch(id, again);
                            let wait = opts.retry_after;
                            in_flight.push(Box::pin(async move {
                                tokio::time::sleep(wait).await;
                                handling.await
                            }));
                            continue;
                        }
                    }
                }
                metrics.in_flight.dec();
                if let Some(taken) = pending.remove(&id) {
                    held.remove(&(taken.topic.clone(), Position::of(&taken.id)));
                    settle(&mut consumer, taken, &metrics, verdict).await;
                }
                continue;
            }
            (topic, id) = next_ack(&mut acks) => {
                if let Err(e) = consumer.ack_with_id(&topic, id).await {
                    // Not acknowledged: the message is delivered when due and handled as usual.
                    tracing::debug!(loop_name = name, error = %e, "acknowledging by id failed");
                }
                continue;
            }
            // Only a consumer we are reading from and that stayed silent a whole interval is
            // checked: the crate answers the check from the same task that fills the receiver
            // queue, so checking a busy consumer would time out and rebuild a healthy one.
            _ = check.tick(), if last_message.elapsed() >= HEALTH_INTERVAL => {
                guard(&client, &opts, &mut consumer, &metrics, &health, &stop).await;
                continue;
            }
            // Only with room, so the broker keeps the messages we cannot start yet (other
            // replicas may take them).
            next = futures::future::poll_fn(|cx| {
                let polled = consumer.poll_next_unpin(cx);
                if polled.is_pending() {
                    found_empty_at = tokio::time::Instant::now();
                }
                polled
            }), if in_flight.len() < opts.max_in_flight => next,
        };
        last_message = tokio::time::Instant::now();
        let mut msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                tracing::warn!(loop_name = name, error = %e, "consumer error");
                continue;
            }
            None => {
                // The crate gave up on this consumer: build another rather than stop serving.
                tracing::warn!(loop_name = name, "consumer stream ended; rebuilding");
                health.set(name, false);
                metrics.pulsar_reconnects.inc();
                match subscribe_until_ok(&client, &opts, &stop, false).await {
                    Ok(Some(fresh)) => {
                        consumer = fresh;
                        subscribed_at = tokio::time::Instant::now();
                        found_empty_at = subscribed_at;
                        taken_at.clear();
                        health.set(name, true);
                        continue;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        };
        let position = Position::of(msg.message_id());
        if !held.insert((msg.topic.clone(), position)) {
            tracing::debug!(loop_name = name, message_id = %message_id_string(msg.message_id()), "delivered again while still held; the copy held settles it");
            continue;
        }
        seq += 1;
        let now = tokio::time::Instant::now();
        let taken_before = if taken_at.len() < prefetch {
            subscribed_at
        } else {
            taken_at.pop_front().unwrap_or(subscribed_at)
        };
        let held_since = taken_before.max(found_empty_at);
        taken_at.push_back(now);
        let delivery = Delivery {
            payload: std::mem::take(&mut msg.payload.data),
            properties: properties_of(&msg),
            key: msg.key(),
            topic: msg.topic.clone(),
            position,
            message_id: message_id_string(msg.message_id()),
            publish_time: std::time::UNIX_EPOCH
                + Duration::from_millis(msg.metadata().publish_time),
            held_since,
            attempt: 1,
        };
        pending.insert(
            seq,
            Taken {
                topic: msg.topic.clone(),
                id: msg.message_id().clone(),
                again: failover.then(|| delivery.clone()),
            },
        );
        metrics.in_flight.inc();
        in_flight.push(dispatch(seq, delivery));
    }

    drain(consumer, in_flight, pending, &opts, &metrics).await;
    Ok(())
}

/// The shutdown of one loop, bounded by `drain_timeout` plus [`RELEASE_TIMEOUT`] and
/// [`CLOSE_TIMEOUT`]: settles what finishes in time, nacks the rest, closes the consumer.
///
/// The crate's consumer engine handles acks, nacks and close in one queue with the messages it pushes
/// into the consumer's receiver channel, and waits while that channel is full. With a backlog behind
/// the work in flight, a settle queued now reaches the broker only once the messages queued ahead of
/// it are read, and a close waits forever. So the drain reads on and lets those messages go
/// unacknowledged (the broker redelivers them once the consumer is closed, or its connection ends):
/// at most twice the receiver queue after each settle, what can be ahead of it (the channel, and the
/// permits the broker may still fill). A consumer that does not close in time is dropped: the crate
/// then closes it from a task of its own, and the end of the connection does at the latest.
async fn drain(
    mut consumer: PulsarConsumer,
    mut in_flight: FuturesUnordered<Handling>,
    mut pending: HashMap<u64, Taken>,
    opts: &LoopOptions,
    metrics: &Metrics,
) {
    let name = opts.name;
    tracing::info!(loop_name = name, in_flight = pending.len(), "draining");
    let read_ahead = 2 * opts.subscribe.receiver_queue_size.max(1) as usize;
    let mut reader = LetGo::default();
    let deadline = tokio::time::Instant::now() + opts.drain_timeout;
    while !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some((id, verdict)) = in_flight.next() => {
                metrics.in_flight.dec();
                if let Some(taken) = pending.remove(&id) {
                    settle(&mut consumer, taken, metrics, verdict).await;
                }
                reader.budget = read_ahead;
            }
            next = consumer.next(), if reader.wanted() => reader.took(next.is_some()),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    metrics.in_flight.dec_by(in_flight.len() as i64);
    drop(in_flight);
    let released = pending.len();
    for (_, taken) in pending.drain() {
        metrics.redeliveries_requested.inc();
        // On Failover the close hands them to the partition's next owner; a nack would first
        // rewind the partition to this consumer.
        if taken.again.is_none() {
            let _ = consumer.nack_with_id(&taken.topic, taken.id).await;
        }
    }
    if released > 0 {
        tracing::warn!(
            loop_name = name,
            released,
            "released unfinished messages for redelivery"
        );
        reader.budget = read_ahead;
    }
    // Let the last settles through. A channel that stays empty for a moment means the engine is not
    // waiting on it: everything queued so far has gone out.
    let release_until = tokio::time::Instant::now() + RELEASE_TIMEOUT;
    while reader.wanted() {
        let idle = (tokio::time::Instant::now() + RELEASE_IDLE).min(release_until);
        match tokio::time::timeout_at(idle, consumer.next()).await {
            Ok(next) => reader.took(next.is_some()),
            Err(_) => break,
        }
    }
    if reader.let_go > 0 {
        tracing::info!(
            loop_name = name,
            messages = reader.let_go,
            "let go of messages pushed ahead of the shutdown; the broker redelivers them"
        );
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, consumer.close())
        .await
        .is_err()
    {
        tracing::warn!(
            loop_name = name,
            "the consumer did not close within {CLOSE_TIMEOUT:?}; dropped (the broker redelivers what it holds)"
        );
    }
}

/// Messages read at shutdown only to let the consumer engine reach the settles queued behind them.
#[derive(Default)]
struct LetGo {
    /// Reads still useful after the last settle.
    budget: usize,
    let_go: usize,
    ended: bool,
}

impl LetGo {
    fn wanted(&self) -> bool {
        self.budget > 0 && !self.ended
    }

    fn took(&mut self, message: bool) {
        self.budget = self.budget.saturating_sub(1);
        if message {
            self.let_go += 1;
        } else {
            self.ended = true;
        }
    }
}

/// Subscribes, retrying with backoff (the broker may be starting or restarting) until it works;
/// `Ok(None)` once `stop` is triggered. A refusal (e.g. a role without consume permission) ends the
/// first subscription with an error, so that a misconfigured worker exits saying why instead of
/// waiting unready forever; later rebuilds keep retrying, since in-flight work is still draining.
async fn subscribe_until_ok(
    client: &Client,
    opts: &LoopOptions,
    stop: &Shutdown,
    first: bool,
) -> Result<Option<PulsarConsumer>, PulsarIoError> {
    let mut attempt = 0u32;
    loop {
        match subscribe(client, &opts.subscribe).await {
            Ok(consumer) => return Ok(Some(consumer)),
            Err(e) if first && e.is_refusal() => return Err(e),
            Err(e) => {
                attempt += 1;
                tracing::warn!(loop_name = opts.name, attempt, error = %e, "cannot subscribe yet; retrying");
                tokio::select! {
                    _ = stop.triggered() => return Ok(None),
                    _ = tokio::time::sleep(broker_retry_delay(attempt)) => {}
                }
            }
        }
    }
}

/// Checks that the broker still knows `consumer`; rebuilds it (retrying until it works or `stop`)
/// when not.
async fn guard(
    client: &Client,
    opts: &LoopOptions,
    consumer: &mut PulsarConsumer,
    metrics: &Metrics,
    health: &Health,
    stop: &Shutdown,
) {
    // A shutdown must not wait for the check (the loop drains only once this returns).
    let healthy = tokio::select! {
        stats = tokio::time::timeout(HEALTH_TIMEOUT, consumer.get_stats()) => matches!(stats, Ok(Ok(_))),
        _ = stop.triggered() => return,
    };
    if healthy {
        health.set(opts.name, true);
        return;
    }
    health.set(opts.name, false);
    tracing::warn!(
        loop_name = opts.name,
        "consumer unhealthy (the broker does not answer for it); rebuilding"
    );
    if let Ok(Some(fresh)) = subscribe_until_ok(client, opts, stop, false).await {
        let mut old = std::mem::replace(consumer, fresh);
        // Best effort: the broker redelivers its unacknowledged messages either way.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, old.close()).await;
        metrics.pulsar_reconnects.inc();
        health.set(opts.name, true);
        tracing::info!(loop_name = opts.name, "consumer rebuilt");
    }
}

async fn settle(
    consumer: &mut PulsarConsumer,
    taken: Taken,
    metrics: &Metrics,
    verdict: Disposition,
) {
    let Taken { topic, id, .. } = taken;
    let outcome = match &verdict {
        Disposition::Ack => consumer.ack_with_id(&topic, id).await,
        Disposition::Retry(_) => {
            metrics.redeliveries_requested.inc();
            consumer.nack_with_id(&topic, id).await
        }
    };
    if let Err(e) = outcome {
        // The broker redelivers unacknowledged messages after a reconnect: at-least-once holds.
        tracing::warn!(?verdict, error = %e, "settling a message failed");
    }
}
