//! `done` records, batched: how the replica holding a job's deadline learns that the job's final
//! result is out, so the deadline costs no `GET /jobs` (and yields no second result).
//!
//! One record per finished job doubled the broker's work on the completion path (a second publish,
//! a second dispatch and ack per event). So deadlines and done records are keyed by a *shard* of the
//! job id ([`shard_key`], [`SHARDS`] of them) instead of the job id itself: Key_Shared still brings a
//! job's done record and its deadline to the same consumer, and one record can carry the ids of every
//! job of its shard that finished within [`FLUSH_INTERVAL`]. Records are best effort: a lost one
//! only means the deadline checks CI and finds the job finished.

use super::io::Broker;
use crate::pulsar::{props, Outgoing};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Shards of the deadline topic's keys. Enough to spread deadlines over a handful of replicas
/// (Key_Shared splits the key hash range between consumers), few enough that batches stay full.
pub const SHARDS: u32 = 16;
/// How long a finished job id may wait for others of its shard. Deadlines are minutes away.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Most ids in one record (about 40 KB with CI's 32-character job ids).
pub const MAX_IDS_PER_RECORD: usize = 1000;

/// The key of a job's deadline and done records: FNV-1a of the job id, modulo [`SHARDS`]. Stable
/// across processes and versions, since replicas of different builds share the topic.
pub fn shard_key(job_id: &str) -> String {
    let hash = job_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("jobs-{:02}", hash % u64::from(SHARDS))
}

/// The job ids a done record carries: one per line.
pub fn ids_of(payload: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(payload)
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

enum Command {
    Done(String),
    Flush(oneshot::Sender<()>),
}

/// Handle to the batching task; cheap to call from every handler.
#[derive(Clone)]
pub struct DoneRecorder {
    tx: mpsc::UnboundedSender<Command>,
}

impl DoneRecorder {
    /// Starts the batching task, publishing to `topic` through `broker`.
    pub fn spawn(broker: impl Broker, topic: String) -> DoneRecorder {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch(rx, broker, topic));
        DoneRecorder { tx }
    }

    /// Records that `job_id`'s final result is stored.
    pub fn record(&self, job_id: &str) {
        let _ = self.tx.send(Command::Done(job_id.to_string()));
    }

    /// Publishes everything recorded so far (at shutdown).
    pub async fn flush(&self) {
        let (ack, flushed) = oneshot::channel();
        if self.tx.send(Command::Flush(ack)).is_ok() {
            let _ = flushed.await;
        }
    }
}

async fn batch(mut rx: mpsc::UnboundedReceiver<Command>, broker: impl Broker, topic: String) {
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Done(job_id)) => {
                    let key = shard_key(&job_id);
                    let ids = shards.entry(key.clone()).or_default();
                    ids.push(job_id);
                    if ids.len() >= MAX_IDS_PER_RECORD {
                        let full = shards.remove(&key).unwrap_or_default();
                        publish(&broker, &topic, BTreeMap::from([(key, full)])).await;
                    }
                }
                Some(Command::Flush(ack)) => {
                    publish(&broker, &topic, std::mem::take(&mut shards)).await;
                    let _ = ack.send(());
                }
                None => {
                    publish(&broker, &topic, std::mem::take(&mut shards)).await;
                    return;
                }
            },
            _ = tick.tick(), if !shards.is_empty() => {
                publish(&broker, &topic, std::mem::take(&mut shards)).await;
            }
        }
    }
}

async fn publish(broker: &impl Broker, topic: &str, shards: BTreeMap<String, Vec<String>>) {
    let sends = shards.into_iter().map(|(key, ids)| async move {
        let msg = Outgoing::new(ids.join("\n"))
            .with_key(key)
            .with_property(props::RECORD, "done");
        if let Err(e) = broker.publish(topic, msg).await {
            tracing::warn!(jobs = ids.len(), error = %e, "could not record jobs as done; their deadlines will check CI");
        }
    });
    futures::future::join_all(sends).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_are_stable_and_spread() {
        // Fixed values: replicas of different builds must agree on them.
        // FNV-1a("a") = 0xaf63dc4c8601ec8c, FNV-1a("") = 0xcbf29ce484222325.
        assert_eq!(shard_key("a"), "jobs-12");
        assert_eq!(shard_key(""), "jobs-05");
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            seen.insert(shard_key(&format!("jc{i:030}")));
        }
        assert_eq!(seen.len(), SHARDS as usize);
    }

    #[test]
    fn records_carry_one_id_per_line() {
        let ids: Vec<&str> = ids_of(b"j1\nj2\r\n\n j3 ").collect();
        assert_eq!(ids, ["j1", "j2", "j3"]);
        assert_eq!(ids_of(b"\xff\xfe").count(), 0);
    }
}
