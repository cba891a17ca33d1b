//! The normalized job result: one stable JSON schema on `pulsar.result_topic`, whatever format CI
//! wrote its completion event in (`schemas/result.schema.json` is the contract; keep them in step).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the result schema; bumped only on incompatible changes.
pub const RESULT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultState {
    /// Progress event: CI accepted the job (job id known). Not final.
    Submitted,
    Succeeded,
    Failed,
    Cancelled,
    /// CI or the worker refused the submission; `code`/`message` say why, `job_id` is null.
    Rejected,
    /// No final state from CI within `worker.job_timeout_max`.
    TimedOut,
}

impl ResultState {
    pub fn is_final(self) -> bool {
        !matches!(self, ResultState::Submitted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResultState::Submitted => "submitted",
            ResultState::Succeeded => "succeeded",
            ResultState::Failed => "failed",
            ResultState::Cancelled => "cancelled",
            ResultState::Rejected => "rejected",
            ResultState::TimedOut => "timed_out",
        }
    }
}

/// A COS object as the result names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectRef {
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub object: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub version: u32,
    /// The submitting request's id, recovered from the correlation marker; null for jobs this worker
    /// did not submit.
    pub request_id: Option<String>,
    pub job_id: Option<String>,
    pub tag: Option<String>,
    /// Set when the job ran as a sub-operation (e.g. DigitalWatermark inside SuperResolution).
    pub sub_tag: Option<String>,
    pub state: ResultState,
    /// CI's code (`Success` on success), or the worker's own for refusals it made.
    pub code: String,
    pub message: String,
    pub queue_id: Option<String>,
    pub input: Option<ObjectRef>,
    pub output: Option<ObjectRef>,
    /// The caller's own `UserData`, unchanged (the correlation marker removed).
    pub user_data: Option<String>,
    /// RFC 3339 UTC (`2022-06-30T10:37:37Z`), or null when CI said `-` or nothing.
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub media_info: Option<Value>,
    pub media_result: Option<Value>,
    /// Workflow run this job belonged to (`{run_id, workflow_id, workflow_name}`), if any.
    pub workflow: Option<Value>,
}

impl JobResult {
    /// An empty result in `state`, filled in by the caller.
    pub fn new(state: ResultState) -> JobResult {
        JobResult {
            version: RESULT_VERSION,
            request_id: None,
            job_id: None,
            tag: None,
            sub_tag: None,
            state,
            code: String::new(),
            message: String::new(),
            queue_id: None,
            input: None,
            output: None,
            user_data: None,
            created_at: None,
            started_at: None,
            finished_at: None,
            media_info: None,
            media_result: None,
            workflow: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("JobResult always serializes")
    }
}
