//! [`Record`]: what the worker writes on its internal topic, `pulsar.deadline_topic` (delayed until
//! due, [`super::deadline`]).
//!
//! One JSON object per message, `{"version": 4, "record": "<kind>", "body": …}`: the version is
//! checked first (a format change bumps it), and the `record` tag is the one thing a reader
//! dispatches on. The body follows the tag (serde's adjacent tagging), so it is read straight into
//! its type: the `submitted` result inside a deadline holds CI's trees as raw JSON, which serde
//! cannot read out of a buffered (internally tagged) body.
//!
//! Version 4 is a deadline per request, published before its job exists (`job_id` empty until the
//! record comes due; [`Deadline::lookup`] finds the job then). Versions 2 (0.3, 0.4) and 3 (0.5)
//! are deadlines of jobs already submitted, which may still be pending (delayed up to ten days)
//! after an upgrade, so they are still read. An older worker cannot read version 4 (it
//! dead-letters such a record): README, "Upgrading to 0.6".

use crate::pulsar::Outgoing;
use crate::result::JobResult;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The version of every [`Record`].
pub const RECORD_VERSION: u32 = 4;
/// The version of the deadline records of 0.5 (read as this version's: same fields, fewer).
const DEADLINES_OF_0_5: u32 = 3;
/// The version of the deadline records of 0.3 and 0.4 (`{"version":2,"deadlines":[…]}`).
const DEADLINES_OF_0_4: u32 = 2;

/// One record, as stored (see the module's doc for the JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", content = "body", rename_all = "snake_case")]
pub enum Record {
    /// Jobs to check at CI when they are due: one request's, or a batch re-armed together.
    Deadlines(Vec<Deadline>),
}

/// A pending job, as stored on the deadline topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deadline {
    pub request_id: String,
    /// CI's job id; empty in a deadline published before the job existed (found by `lookup`).
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
    /// Unix milliseconds when the job should be checked.
    pub due_at_ms: u64,
    /// What finds the job in CI's list when `job_id` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<JobLookup>,
    /// Where the record the job's marker names is (`<partition>.<ledger>.<entry>`), when this
    /// deadline was carried over into another record before its job was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_record: Option<String>,
}

/// What finds a request's job in CI's list (`GET /jobs?…`): its queue, tag and input object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLookup {
    pub queue_id: Option<String>,
    pub tag: String,
    pub input_object: Option<String>,
}

/// Why a message is not a record this worker reads.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Unreadable(#[from] serde_json::Error),
    #[error(
        "record version {0} (this worker reads {RECORD_VERSION}, and the deadline records of 0.3 to 0.5)"
    )]
    Version(u32),
}

/// The record as a message (no key, no properties: the payload says what it is).
pub fn message(record: &Record) -> Outgoing {
    #[derive(Serialize)]
    struct Stored<'a> {
        version: u32,
        #[serde(flatten)]
        record: &'a Record,
    }
    let stored = Stored {
        version: RECORD_VERSION,
        record,
    };
    Outgoing::new(serde_json::to_vec(&stored).expect("records serialize"))
}

/// Reads a record. The `submitted` results of deadlines are made this result version's
/// ([`JobResult::upgrade`]), so a `timed_out` of a job an older worker submitted is published as
/// the current schema says.
pub fn read(payload: &[u8]) -> Result<Record, RecordError> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    #[derive(Deserialize)]
    struct DeadlinesOf04 {
        deadlines: Vec<Deadline>,
    }
    let Version { version } = serde_json::from_slice(payload)?;
    let mut record = match version {
        RECORD_VERSION | DEADLINES_OF_0_5 => serde_json::from_slice::<Record>(payload)?,
        DEADLINES_OF_0_4 => {
            Record::Deadlines(serde_json::from_slice::<DeadlinesOf04>(payload)?.deadlines)
        }
        other => return Err(RecordError::Version(other)),
    };
    let Record::Deadlines(deadlines) = &mut record;
    deadlines.iter_mut().for_each(|d| d.submitted.upgrade());
    Ok(record)
}

/// Unix milliseconds of `t` (the unit of every time in a record).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::ResultState;

    fn deadline(job_id: &str) -> Deadline {
        let mut submitted = JobResult::new(ResultState::Submitted);
        submitted.job_id = Some(job_id.into());
        Deadline {
            request_id: "r1".into(),
            job_id: job_id.into(),
            bucket: "b-1250000000".into(),
            region: "ap-guangzhou".into(),
            submitted,
            submitted_at_ms: 1,
            checks: 0,
            due_at_ms: 42,
            lookup: None,
            first_record: None,
        }
    }

    fn round_trip(record: Record) -> Record {
        read(&message(&record).payload).unwrap()
    }

    #[test]
    fn deadlines_are_read_back_as_written() {
        let mut pending = deadline("");
        pending.lookup = Some(JobLookup {
            queue_id: None,
            tag: "Transcode".into(),
            input_object: Some("in/a.mp4".into()),
        });
        pending.first_record = Some("-1.7.12".into());
        let deadlines = Record::Deadlines(vec![deadline("j1"), pending]);
        assert_eq!(round_trip(deadlines.clone()), deadlines);
    }

    #[test]
    fn the_format_is_a_version_a_tag_and_a_body() {
        let msg = message(&Record::Deadlines(vec![]));
        assert_eq!(
            std::str::from_utf8(&msg.payload).unwrap(),
            r#"{"version":4,"record":"deadlines","body":[]}"#
        );
        assert!(msg.properties.is_empty() && msg.key.is_none());
    }

    #[test]
    fn deadline_records_of_0_5_are_read() {
        let d = deadline("j1");
        let v3 = serde_json::json!({"version": 3, "record": "deadlines", "body": [d]});
        let read = read(&serde_json::to_vec(&v3).unwrap()).unwrap();
        assert_eq!(read, Record::Deadlines(vec![d]));
    }

    #[test]
    fn a_deadline_holding_cis_trees_is_read_back() {
        let mut d = deadline("j1");
        let tree = r#"{"OutputFile":{"ObjectName":["a.mp4"]}}"#;
        d.submitted.media_result = serde_json::from_str(tree).unwrap();
        let Record::Deadlines(back) = round_trip(Record::Deadlines(vec![d]));
        assert_eq!(
            back[0].submitted.media_result.as_ref().unwrap().json(),
            tree
        );
    }

    #[test]
    fn other_versions_and_other_things_are_refused() {
        let future = br#"{"version":5,"record":"deadlines","body":[]}"#;
        assert!(matches!(read(future), Err(RecordError::Version(5))));
        let done_of_0_5 = br#"{"version":3,"record":"done","body":["j1"]}"#;
        assert!(read(done_of_0_5).is_err());
        let attempts_of_0_4 = br#"{"version":1,"writer":"w","seq":1,"at_ms":1,"requests":[]}"#;
        assert!(matches!(
            read(attempts_of_0_4),
            Err(RecordError::Version(1))
        ));
        assert!(read(b"j1\nj2").is_err(), "a done record of 0.4");
        assert!(read(br#"{"version":4,"record":"other","body":[]}"#).is_err());
        assert!(read(b"{}").is_err());
    }

    #[test]
    fn deadline_records_of_0_4_are_read() {
        let d = deadline("j1");
        let batch = serde_json::json!({"version": 2, "deadlines": [d]});
        let read = read(&serde_json::to_vec(&batch).unwrap()).unwrap();
        assert_eq!(read, Record::Deadlines(vec![d]));
    }

    #[test]
    fn a_v1_submitted_event_is_read_as_the_current_version() {
        // As a 0.3 worker stored it: result version 1, `workflow` an object or null, no v2 fields.
        let v1 = |workflow: &str| {
            format!(
                r#"{{"version":2,"deadlines":[{{"request_id":"r1","job_id":"j1","bucket":"b-1250000000",
                "region":"ap-guangzhou","submitted_at_ms":1,"checks":0,"due_at_ms":2,"submitted":{{
                "version":1,"request_id":"r1","job_id":"j1","tag":"Transcode","sub_tag":null,
                "state":"submitted","code":"","message":"","queue_id":"p1","input":null,"output":null,
                "user_data":null,"created_at":null,"started_at":null,"finished_at":null,
                "media_info":null,"media_result":{{"OutputFile":{{"ObjectName":"a.mp4"}}}},
                "workflow":{workflow}}}}}]}}"#
            )
        };
        let deadlines = |payload: String| {
            let Record::Deadlines(ds) = read(payload.as_bytes()).unwrap();
            ds
        };
        let d = &deadlines(v1(
            r#"{"run_id":"i1","workflow_id":"w1","workflow_name":"wf"}"#,
        ))[0];
        assert_eq!(d.submitted.version, crate::result::RESULT_VERSION);
        assert_eq!(d.submitted.workflow.len(), 1);
        assert_eq!(d.submitted.workflow[0].run_id.as_deref(), Some("i1"));
        assert_eq!(d.submitted.workflow[0].name, None);
        assert_eq!(
            (&d.submitted.operation, &d.submitted.progress),
            (&None, &None)
        );
        let d = &deadlines(v1("null"))[0];
        assert!(d.submitted.workflow.is_empty());
        // Its media trees get v2's list fields.
        assert_eq!(
            d.submitted.media_result.as_ref().unwrap().json(),
            r#"{"OutputFile":{"ObjectName":["a.mp4"]}}"#
        );
    }
}
