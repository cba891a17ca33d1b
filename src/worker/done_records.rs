//! `done` records, batched: how every replica learns that a job's final result is out, so that a
//! deadline of a finished job costs no `GET /jobs` (and yields no second result) on whichever replica
//! it reaches, and a duplicate completion event on another replica is recognized too.
//!
//! Deadlines are read on a Shared subscription (TDMQ delays messages on no other kind), so any
//! replica may get any job's deadline: the records go to `pulsar.done_topic`, which every replica
//! reads on a non-durable subscription of its own ([`super::done_reader`]). One record carries the
//! ids of every job that finished within [`FLUSH_INTERVAL`], so a burst of a thousand jobs costs a
//! handful of messages. Records are best effort: a lost one (or one published while a replica was
//! restarting) only means the deadline checks CI and finds the job finished.

use super::io::Broker;
use crate::pulsar::{props, Outgoing};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a finished job id may wait for others. Deadlines are minutes away.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Most ids in one record (about 165 KB with CI's 32-character job ids).
pub const MAX_IDS_PER_RECORD: usize = 5000;
/// `ci-worker-record` of a done record.
pub const RECORD_DONE: &str = "done";

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
    let mut ids: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Done(job_id)) => {
                    ids.push(job_id);
                    if ids.len() >= MAX_IDS_PER_RECORD {
                        publish(&broker, &topic, std::mem::take(&mut ids)).await;
                    }
                }
                Some(Command::Flush(ack)) => {
                    publish(&broker, &topic, std::mem::take(&mut ids)).await;
                    let _ = ack.send(());
                }
                None => {
                    publish(&broker, &topic, std::mem::take(&mut ids)).await;
                    return;
                }
            },
            _ = tick.tick(), if !ids.is_empty() => {
                publish(&broker, &topic, std::mem::take(&mut ids)).await;
            }
        }
    }
}

async fn publish(broker: &impl Broker, topic: &str, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let msg = Outgoing::new(ids.join("\n")).with_property(props::RECORD, RECORD_DONE);
    if let Err(e) = broker.publish(topic, msg).await {
        tracing::warn!(jobs = ids.len(), error = %e, "could not record jobs as done; their deadlines will check CI");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_one_id_per_line() {
        let ids: Vec<&str> = ids_of(b"j1\nj2\r\n\n j3 ").collect();
        assert_eq!(ids, ["j1", "j2", "j3"]);
        assert_eq!(ids_of(b"\xff\xfe").count(), 0);
    }
}
