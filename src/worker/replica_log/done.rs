//! `done` records, batched: how every replica learns that a job's final result is out, so that a
//! deadline of a finished job costs no `GET /jobs` (and yields no second result) on whichever replica
//! it reaches, and a duplicate completion event on another replica is recognized too.
//!
//! Deadlines are read on a Shared subscription (TDMQ delays messages on no other kind), so any
//! replica may get any job's deadline: the records go to `pulsar.done_topic`, which every replica
//! reads on a non-durable subscription of its own ([`super::reader`]). One record carries the
//! ids of every job that finished while the previous record was being stored, and records are at
//! least [`MIN_INTERVAL`] apart ([`GroupCommit`]), so a burst of a thousand jobs costs a few dozen
//! messages. Records are best effort: a lost one (or one published while a replica was
//! restarting) only means the deadline checks CI and finds the job finished.

use super::group_commit::{CommitError, GroupCommit};
use crate::pulsar::PulsarIoError;
use crate::worker::io::Broker;
use crate::worker::record::{self, Record};
use std::time::Duration;

/// The least time between two records of one replica. A completion event is acknowledged once the
/// record with its job is stored (so that after a crash, another replica recognizes its redelivery
/// as a duplicate), so this is latency on the event's acknowledgement, not on its result; 10 ms keeps
/// a burst to about 100 records a second per replica.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Most ids in one record (about 175 KB with CI's 32-character job ids).
pub const MAX_IDS_PER_RECORD: usize = 5000;

/// Handle to the batching task; cheap to call from every handler.
#[derive(Clone)]
pub struct DoneRecorder {
    commit: GroupCommit<String>,
}

impl DoneRecorder {
    /// Starts the batching task, publishing to `topic` through `broker`.
    pub fn spawn(broker: impl Broker + Clone, topic: String) -> DoneRecorder {
        let commit = GroupCommit::spawn(MAX_IDS_PER_RECORD, MIN_INTERVAL, move |ids| {
            let (broker, topic) = (broker.clone(), topic.clone());
            async move { publish(&broker, &topic, ids).await }
        });
        DoneRecorder { commit }
    }

    /// Records that `job_id`'s final result is stored; returns once the record holding it is stored
    /// (or why it could not be: the record is best effort, the caller goes on either way).
    pub async fn record(&self, job_id: &str) -> Result<(), CommitError> {
        self.commit.commit(job_id.to_string()).await
    }

    /// Records `job_id` without waiting for its record.
    pub fn record_later(&self, job_id: &str) {
        self.commit.push(job_id.to_string());
    }

    /// Returns once everything recorded so far is stored or refused (at shutdown).
    pub async fn flush(&self) {
        self.commit.flush().await;
    }
}

async fn publish(broker: &impl Broker, topic: &str, ids: Vec<String>) -> Result<(), PulsarIoError> {
    let jobs = ids.len();
    let msg = record::message(&Record::Done(ids));
    broker.publish(topic, msg).await.inspect_err(|e| {
        tracing::warn!(jobs, error = %e, "could not record jobs as done; their deadlines will check CI");
    })
}
