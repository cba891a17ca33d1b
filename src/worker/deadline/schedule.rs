//! Scheduling deadlines: delayed records on `pulsar.deadline_topic` ([`Record::Deadlines`]),
//! delivered when the worker should ask CI about a job itself ([`super`] handles them when they come
//! due).
//!
//! Each request gets a record of its own, published before its `POST /jobs` ([`publish_pending`]),
//! whose position goes into the job's correlation marker: whichever replica finishes the job
//! acknowledges that record by id, and an acknowledged delayed record is never delivered
//! (`docs/design/replicas.md`). So a job whose completion event comes costs its deadline one
//! message, its publish. A shared record could not be cancelled by any one of its jobs' finishers.
//! The deadline check writes what it re-arms as records of its own, batched ([`schedule_all`]):
//! those are not cancelled, they are checked when due.
//!
//! TDMQ for Pulsar's rules for delayed messages shape the rest: they must not be batched by the
//! producer (the worker's producers never batch them), they are honoured on Shared subscriptions
//! only, and no delay may exceed [`MAX_DELAY`] (10 days). So each deadline carries the time it is
//! due (`due_at_ms`); a record is delivered at the earliest of its deadlines, at most [`MAX_DELAY`]
//! from now, and a deadline delivered before it is due is simply re-armed for the rest of its wait.

use crate::pulsar::{Outgoing, PulsarIoError};
use crate::request::marker::DeadlineRef;
use crate::result::JobResult;
use crate::worker::io::Broker;
use crate::worker::record::{self, now_ms, Deadline, JobLookup, Record};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest delay TDMQ for Pulsar accepts on a message (864,000 s).
pub const MAX_DELAY: Duration = Duration::from_secs(864_000);
/// Most deadlines in one record, and most bytes (about 1 KB per deadline; TDMQ takes up to 5 MB).
pub const MAX_PER_RECORD: usize = 500;
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Deadlines due within this of each other share a re-armed record; also how early a delivery may
/// be and still count as due (TDMQ delivers delayed messages to about a second).
pub const DUE_TOLERANCE: Duration = Duration::from_secs(1);

/// A new deadline for a job just submitted (`submitted` is its `submitted` event), due `after` from now.
pub fn first(bucket: &str, region: &str, submitted: &JobResult, after: Duration) -> Deadline {
    let now = now_ms();
    Deadline {
        request_id: submitted.request_id.clone().unwrap_or_default(),
        job_id: submitted.job_id.clone().unwrap_or_default(),
        bucket: bucket.to_string(),
        region: region.to_string(),
        submitted: submitted.clone(),
        submitted_at_ms: now,
        checks: 0,
        due_at_ms: now.saturating_add(after.as_millis() as u64),
        lookup: None,
        first_record: None,
    }
}

/// The deadline of a request about to be submitted (`submitted` is what is known of it before CI
/// answers), due `after` from now; `lookup` finds its job when it comes due.
pub fn pending(
    bucket: &str,
    region: &str,
    submitted: &JobResult,
    lookup: JobLookup,
    after: Duration,
) -> Deadline {
    Deadline {
        lookup: Some(lookup),
        ..first(bucket, region, submitted, after)
    }
}

/// Publishes `deadline` as a record of its own; returns where the broker stored it, to be named in
/// the job's marker (`None` when the broker does not say: the job then gets no early cancel).
/// `topic` is not partitioned (the worker checks at start), so the partition is `-1`.
pub async fn publish_pending(
    broker: &impl Broker,
    topic: &str,
    deadline: Deadline,
) -> Result<Option<DeadlineRef>, PulsarIoError> {
    let at = broker.publish_at(topic, message(vec![deadline])).await?;
    Ok(at.map(|(ledger, entry)| DeadlineRef {
        partition: -1,
        ledger,
        entry,
    }))
}

/// When a record of `deadlines` is to be delivered: at the earliest, capped at [`MAX_DELAY`].
pub fn deliver_at(deadlines: &[Deadline], now: SystemTime) -> SystemTime {
    let earliest = deadlines.iter().map(|d| d.due_at_ms).min().unwrap_or(0);
    let due = UNIX_EPOCH + Duration::from_millis(earliest);
    due.clamp(now, now + MAX_DELAY)
}

/// Splits deadlines into records: at most [`MAX_PER_RECORD`] or [`MAX_RECORD_BYTES`] each, and
/// (sorted by due time) only deadlines due within [`DUE_TOLERANCE`] of the record's first, so that
/// none is delivered long before it is due.
pub fn records(mut deadlines: Vec<Deadline>) -> Vec<Vec<Deadline>> {
    deadlines.sort_by_key(|d| d.due_at_ms);
    let tolerance = DUE_TOLERANCE.as_millis() as u64;
    let mut out: Vec<Vec<Deadline>> = Vec::new();
    let mut bytes = 0usize;
    for d in deadlines {
        let size = serde_json::to_vec(&d).map(|v| v.len()).unwrap_or(0);
        let fits = out.last().is_some_and(|r| {
            r.len() < MAX_PER_RECORD
                && bytes + size <= MAX_RECORD_BYTES
                && d.due_at_ms <= r[0].due_at_ms.saturating_add(tolerance)
        });
        if fits {
            bytes += size;
            out.last_mut().expect("checked").push(d);
        } else {
            bytes = size;
            out.push(vec![d]);
        }
    }
    out
}

/// The message of one record, delivered when its first deadline is due.
fn message(deadlines: Vec<Deadline>) -> Outgoing {
    let at = deliver_at(&deadlines, SystemTime::now());
    let mut msg = record::message(&Record::Deadlines(deadlines));
    msg.deliver_at = Some(at);
    msg
}

/// Stores `deadlines` on `topic` (as few records as [`records`] allows), all together.
pub async fn schedule_all(
    broker: &impl Broker,
    topic: &str,
    deadlines: Vec<Deadline>,
) -> Result<(), crate::pulsar::PulsarIoError> {
    let sends = records(deadlines)
        .into_iter()
        .map(|r| broker.publish(topic, message(r)));
    futures::future::try_join_all(sends).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::ResultState;

    fn deadline(job_id: &str, due_at_ms: u64) -> Deadline {
        let mut submitted = JobResult::new(ResultState::Submitted);
        submitted.job_id = Some(job_id.into());
        let mut d = first("b-1250000000", "ap-guangzhou", &submitted, Duration::ZERO);
        d.due_at_ms = due_at_ms;
        d
    }

    #[test]
    fn records_group_deadlines_due_together() {
        let base = 1_700_000_000_000;
        let ds = vec![
            deadline("j3", base + 5_000),
            deadline("j1", base),
            deadline("j2", base + 900),
            deadline("j4", base + 5_500),
        ];
        let ids: Vec<Vec<String>> = records(ds)
            .iter()
            .map(|r| r.iter().map(|d| d.job_id.clone()).collect())
            .collect();
        assert_eq!(ids, [["j1", "j2"], ["j3", "j4"]]);
    }

    #[test]
    fn records_stay_within_their_bounds() {
        let many: Vec<Deadline> = (0..MAX_PER_RECORD + 1)
            .map(|i| deadline(&format!("j{i}"), 1))
            .collect();
        let split = records(many);
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_PER_RECORD, 1]
        );
        let mut big = deadline("big", 1);
        big.submitted.message = "x".repeat(MAX_RECORD_BYTES / 3);
        assert_eq!(records(vec![big.clone(), big.clone(), big]).len(), 2);
    }

    #[test]
    fn a_record_is_delivered_at_its_earliest_deadline_and_never_beyond_ten_days() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let soon = ms(now) + 3_000;
        let at = deliver_at(&[deadline("a", soon + 500), deadline("b", soon)], now);
        assert_eq!(ms(at), soon);
        let far = ms(now) + 30 * 86_400_000;
        assert_eq!(deliver_at(&[deadline("c", far)], now), now + MAX_DELAY);
        // A deadline already past is delivered now, not in the past.
        assert_eq!(deliver_at(&[deadline("d", 1)], now), now);
    }
}
