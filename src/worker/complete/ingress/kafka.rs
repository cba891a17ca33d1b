//! The `kafka` ingress: reads the CKafka (Apache Kafka) topic CI writes completion events into for
//! `CallBackType=Kafka` (`kafka.topic`, or `ci.kafka_topic`) in the consumer group `kafka.group_id`,
//! and hands each record to the completion handler.
//!
//! Acknowledgement is the group's committed offset: it moves, per partition, only over the
//! contiguous prefix of records whose outcome (results or dead letter) is stored
//! ([`super::offsets`]), so a replica that takes a partition over — after a rebalance, or after the
//! owner was killed — starts at the first record not settled: nothing is skipped. The commit's
//! metadata names the records past that offset still in flight; the next owner reads it when it
//! takes the partition and passes over the others, which were handled: no second final for them. A record whose
//! outcome could not be stored is tried again here (Kafka has no per-record redelivery) after the
//! retry delay, and dead-lettered by the poison guard after `worker.max_redeliveries` attempts.
//! Replicas share the topic's partitions through the group (cooperative rebalancing: only the
//! partitions that move pause). Before giving a partition up, the reader waits (at most
//! [`REVOKE_WAIT`]) for its records in flight and commits what is settled, so a rebalance gives no
//! second final; a replica killed leaves what it handled since its last commit (at most
//! [`COMMIT_EVERY`] of records) to be read again (a repeated final with the same state, README
//! Guarantees).
//!
//! The client is `rdkafka` (librdkafka, built from the crate's bundled source): Kafka's consumer
//! group protocol, rebalancing and offset commits are what it does well.

use super::offsets::{Commit, Offsets, Partition};
use crate::pulsar::consume::Disposition;
use crate::shutdown::Shutdown;
use crate::telemetry::{IngressLabels, SourceLabel};
use crate::worker::complete::handle::{handle, SOURCE};
use crate::worker::context::Context;
use crate::worker::pace::retry;
use crate::worker::settle::inbound::Inbound;
use crate::worker::settle::poison;
use parking_lot::Mutex;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The readiness name of this source.
pub const HEALTH_NAME: &str = "kafka";
/// Records handled at once. Kafka commits a position, not records: one slow record holds the
/// commit of every later one handled meanwhile, and a replica killed leaves all of them to be read
/// again (each a repeated final). So this is also about the most a kill repeats; 64 records in
/// flight still carry thousands of events per second (each waits one batched result receipt).
const RECORDS_IN_FLIGHT: usize = 64;
/// How often settled offsets are committed (when they or the records handled past them moved): what
/// a replica killed leaves to be read again is what it settled since. Commits are asynchronous and
/// carry every changed partition at once: at most 20 requests a second to the group coordinator.
const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// How long reading a partition's last commit (when it is assigned here) may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a partition being given up waits for its records in flight.
const REVOKE_WAIT: Duration = Duration::from_secs(10);
/// How often the topic's metadata is read for readiness.
const HEALTH_EVERY: Duration = Duration::from_secs(15);
/// How long the last commit and leaving the group may take at shutdown. Both wait on the broker; a
/// broker that does not answer must not hold the exit past the bound README Guarantees gives
/// (`worker.shutdown_timeout` + 5 s, the producers' close included).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the consumer's rebalance callbacks share with the read loop.
struct Group {
    offsets: Arc<Mutex<Offsets>>,
}

impl ClientContext for Group {}

impl ConsumerContext for Group {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let revoked: Vec<Partition> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        // Runs on the reader's thread, inside its poll: the handlers run on the runtime's other
        // threads and finish meanwhile.
        let started = Instant::now();
        while self.offsets.lock().in_flight_of(&revoked) > 0 && started.elapsed() < REVOKE_WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Under the lock: an asynchronous commit of an older position must not be sent after this
        // one, or the group's offset would go back and the new owner repeat what was settled.
        let mut offsets = self.offsets.lock();
        let settled: Vec<_> = offsets
            .to_commit()
            .into_iter()
            .filter(|c| revoked.contains(&c.partition))
            .collect();
        if let Err(error) = commit(consumer, &settled, CommitMode::Sync) {
            tracing::warn!(%error, "kafka ingress: committing before a rebalance failed; the new owner reads the records since the last commit again");
        }
        offsets.forget(&revoked);
        drop(offsets);
        tracing::info!(partitions = ?revoked, "kafka ingress: partitions given up");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let taken: Vec<_> = list
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?taken, "kafka ingress: partitions taken");
            }
            Rebalance::Error(error) => {
                tracing::warn!(%error, "kafka ingress: rebalance failed")
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

fn commit<C: Consumer<G>, G: ConsumerContext>(
    consumer: &C,
    settled: &[Commit],
    mode: CommitMode,
) -> Result<(), KafkaError> {
    if settled.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    for c in settled {
        let (topic, partition) = &c.partition;
        list.add_partition_offset(topic, *partition, Offset::Offset(c.offset))?;
        if let Some(mut element) = list.find_partition(topic, *partition) {
            element.set_metadata(&c.metadata);
        }
    }
    consumer.commit(&list, mode)
}

/// The group's last commit of `partition` (offset and metadata), read when the partition is
/// assigned here, before its first record is handled. `None` offset: none committed yet.
async fn last_commit(
    consumer: &Arc<StreamConsumer<Group>>,
    partition: &Partition,
) -> Result<(Option<i64>, String), KafkaError> {
    let consumer = consumer.clone();
    let (topic, number) = partition.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut list = TopicPartitionList::new();
        list.add_partition(&topic, number);
        let committed = consumer.committed_offsets(list, COMMITTED_TIMEOUT)?;
        Ok(committed
            .find_partition(&topic, number)
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (offset, e.metadata().to_string())
            })
            .unwrap_or_default())
    });
    read.await.unwrap_or(Err(KafkaError::Canceled))
}

/// Reads until `stop` is triggered; records in flight then get `worker.shutdown_timeout`, what is
/// settled is committed, and the consumer leaves the group.
pub async fn run(ctx: Arc<Context>, stop: Shutdown) -> Result<(), KafkaError> {
    let settings = &ctx.settings;
    let topic = settings.kafka_topic().to_string();
    let offsets = Arc::new(Mutex::new(Offsets::default()));
    let config = crate::kafka::consumer_config(&settings.kafka);
    tracing::info!(
        topic,
        group = %settings.kafka.group_id,
        client = %crate::kafka::summary(&config),
        "kafka ingress: reading completion events"
    );
    let consumer: Arc<StreamConsumer<Group>> = Arc::new(config.create_with_context(Group {
        offsets: offsets.clone(),
    })?);
    consumer.subscribe(&[topic.as_str()])?;
    let health = tokio::spawn(watch_topic(ctx.clone(), consumer.clone(), topic.clone()));
    // Apart from the read loop, so that commits go on while every permit is taken.
    let committer = {
        let (consumer, offsets) = (consumer.clone(), offsets.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COMMIT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                commit_settled(&consumer, &offsets);
            }
        })
    };

    let permits = Arc::new(Semaphore::new(RECORDS_IN_FLIGHT));
    let mut handlers = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stop.triggered() => break,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let received = tokio::select! {
            _ = stop.triggered() => break,
            received = consumer.recv() => received,
        };
        // Settled handlers are reaped here so that the set stays as small as what is in flight.
        while handlers.try_join_next().is_some() {}
        let record = match received {
            Ok(message) => Record {
                partition: (message.topic().to_string(), message.partition()),
                offset: message.offset(),
                payload: message.payload().unwrap_or_default().to_vec(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
            },
            Err(error) => {
                ctx.health.set(HEALTH_NAME, false);
                tracing::warn!(%error, "kafka ingress: receive failed; retrying");
                tokio::select! {
                    _ = stop.triggered() => break,
                    _ = tokio::time::sleep(ctx.settings.worker.retry_base_delay) => {}
                }
                continue;
            }
        };
        ctx.health.set(HEALTH_NAME, true);
        if !offsets.lock().knows(&record.partition) {
            // Newly assigned: what its last owner committed says which records it handled.
            let (offset, metadata) = match last_commit(&consumer, &record.partition).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, partition = ?record.partition, "kafka ingress: cannot read the partition's last commit; records its last owner handled past the offset are handled again");
                    (None, String::new())
                }
            };
            let handled = offsets.lock().inherit(&record.partition, offset, &metadata);
            tracing::info!(partition = ?record.partition, offset, metadata, handled, "kafka ingress: the partition's last commit: records past its offset that are handled are passed over");
        }
        if !offsets.lock().taken(&record.partition, record.offset) {
            // Handled by the partition's last owner (its commit says so).
            count(&ctx, "skipped");
            drop(permit);
            continue;
        }
        let (ctx, offsets, stop) = (ctx.clone(), offsets.clone(), stop.clone());
        handlers.spawn(async move {
            let arrived = Instant::now();
            if settle(&ctx, &record, &stop).await {
                offsets.lock().handled(&record.partition, record.offset);
                count(&ctx, "stored");
                ctx.metrics
                    .ingress_store_duration
                    .get_or_create(&SourceLabel {
                        source: "kafka".into(),
                    })
                    .observe(arrived.elapsed().as_secs_f64());
            }
            drop(permit);
        });
    }
    // Draining: what is in flight gets the shutdown budget; what is not settled by then is read again
    // by whoever owns its partition next.
    let drained = tokio::time::timeout(ctx.settings.worker.shutdown_timeout, async {
        while handlers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = handlers.len(),
            "kafka ingress: shutdown: records not settled in time; read again by the partition's next owner"
        );
        handlers.abort_all();
    }
    committer.abort();
    health.abort();
    // Both hold the consumer: once they are gone, the closing thread below holds its last handle.
    let _ = committer.await;
    let _ = health.await;
    let settled = offsets.lock().to_commit();
    // On a thread of its own: the synchronous commit and librdkafka's close (leaving the group, in
    // the consumer's drop) block until the broker answers. Past CLOSE_TIMEOUT the process exits
    // without them; the group then counts this member gone after its session timeout.
    let closing = tokio::task::spawn_blocking(move || {
        let committed = commit(&*consumer, &settled, CommitMode::Sync);
        consumer.unsubscribe();
        drop(consumer);
        committed
    });
    match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
        Ok(Ok(Ok(()))) => tracing::info!("kafka ingress: stopped"),
        Ok(Ok(Err(error))) => tracing::warn!(%error, "kafka ingress: shutdown: the last commit failed; the records since the previous one are read again"),
        Ok(Err(error)) => tracing::warn!(%error, "kafka ingress: shutdown: closing the consumer failed"),
        Err(_) => tracing::warn!(
            timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
            "kafka ingress: shutdown: the broker did not answer the last commit in time; the records since the previous one are read again"
        ),
    }
    Ok(())
}

/// One record as the loop hands it to a handler.
struct Record {
    partition: Partition,
    offset: i64,
    payload: Vec<u8>,
    key: Option<String>,
}

/// Tries the record until its outcome is stored (or its dead letter is); false when the worker
/// stops first (the record stays uncommitted).
async fn settle(ctx: &Context, record: &Record, stop: &Shutdown) -> bool {
    let (topic, partition) = &record.partition;
    let origin = format!("kafka:{topic}/{partition}");
    let id = format!("{topic}/{partition}@{}", record.offset);
    let properties = HashMap::from([
        ("ci-worker-ingress".to_string(), "kafka".to_string()),
        ("kafka-offset".to_string(), record.offset.to_string()),
    ]);
    for attempt in 0.. {
        let inbound = Inbound {
            payload: &record.payload,
            properties: &properties,
            key: record.key.as_deref(),
            origin: &origin,
            id: &id,
            deliveries: 1,
        };
        let verdict = handle(ctx, inbound).await;
        match poison::settle(ctx, inbound, SOURCE, verdict).await {
            Disposition::Ack => return true,
            Disposition::Retry(reason) => {
                count(ctx, "failed");
                let pause = retry::delay(&ctx.settings.worker, attempt);
                tracing::warn!(id, reason, retry_in = ?pause, "kafka ingress: event outcome not stored; trying again");
                tokio::select! {
                    _ = stop.triggered() => return false,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    unreachable!("the attempts never run out")
}

fn commit_settled(consumer: &StreamConsumer<Group>, offsets: &Mutex<Offsets>) {
    // Asynchronous (only enqueued: quick), and under the lock so that commits are sent in the order
    // of their positions. A commit lost now is covered by the next one, which names a later offset.
    let mut offsets = offsets.lock();
    let settled = offsets.to_commit();
    tracing::trace!(?settled, "kafka ingress: commit");
    if let Err(error) = commit(consumer, &settled, CommitMode::Async) {
        tracing::debug!(%error, "kafka ingress: commit failed; the next one covers it");
    }
}

/// Readiness: the topic is known to the brokers (a missing topic or unreachable brokers say so).
async fn watch_topic(ctx: Arc<Context>, consumer: Arc<StreamConsumer<Group>>, topic: String) {
    loop {
        let probe = {
            let (consumer, topic) = (consumer.clone(), topic.clone());
            tokio::task::spawn_blocking(move || {
                let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
                Ok::<_, KafkaError>(metadata.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                }))
            })
            .await
        };
        match probe {
            Ok(Ok(true)) => ctx.health.set(HEALTH_NAME, true),
            Ok(Ok(false)) => {
                ctx.health.set(HEALTH_NAME, false);
                tracing::error!(topic, "kafka ingress: the topic does not exist; create it (CKafka console) or fix kafka.topic / ci.kafka_topic");
            }
            Ok(Err(error)) => {
                ctx.health.set(HEALTH_NAME, false);
                tracing::warn!(%error, "kafka ingress: brokers not reachable; check kafka.brokers and kafka.security_protocol");
            }
            Err(_) => {}
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

fn count(ctx: &Context, outcome: &str) {
    ctx.metrics
        .ingress_events
        .get_or_create(&IngressLabels {
            source: "kafka".into(),
            outcome: outcome.into(),
        })
        .inc();
}
