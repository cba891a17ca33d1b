//! The deadline record: one delayed message per pending job on `pulsar.deadline_topic`, due when the
//! worker should ask CI about the job itself ([`super::deadline_check`] handles it when it comes due).
//! The submission path schedules a job's first deadline, the check its later ones.

use super::context::Context;
use super::done_records::shard_key;
use super::io::{Broker, CiApi};
use crate::pulsar::{props, Outgoing, PulsarIoError};
use crate::result::JobResult;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A pending job, as stored on the deadline topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deadline {
    pub request_id: String,
    pub job_id: String,
    /// Where the job lives (its CI host).
    pub bucket: String,
    pub region: String,
    /// The `submitted` event, the base of a `timed_out` result.
    pub submitted: JobResult,
    /// Unix milliseconds of the submission.
    pub submitted_at_ms: u64,
    /// Describes done so far.
    pub checks: u32,
}

/// Now, in Unix milliseconds (the unit of `submitted_at_ms`).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Schedules `deadline` for `after` from now.
pub async fn schedule<B: Broker, C: CiApi>(
    ctx: &Context<B, C>,
    deadline: &Deadline,
    after: Duration,
) -> Result<(), PulsarIoError> {
    let mut msg = Outgoing::new(serde_json::to_vec(deadline).expect("deadline serializes"))
        .with_key(shard_key(&deadline.job_id))
        .with_property(props::RECORD, "deadline");
    msg.deliver_at = Some(SystemTime::now() + after);
    ctx.broker
        .publish(&ctx.settings.pulsar.deadline_topic, msg)
        .await
}

/// A new deadline for a job just submitted (`submitted` is its `submitted` event).
pub fn first(bucket: &str, region: &str, submitted: &JobResult) -> Deadline {
    Deadline {
        request_id: submitted.request_id.clone().unwrap_or_default(),
        job_id: submitted.job_id.clone().unwrap_or_default(),
        bucket: bucket.to_string(),
        region: region.to_string(),
        submitted: submitted.clone(),
        submitted_at_ms: now_ms(),
        checks: 0,
    }
}
