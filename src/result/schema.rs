//! The normalized job result: one stable JSON schema on `pulsar.result_topic`, whatever format CI
//! wrote its completion event in (`schemas/result.schema.json` is the contract; keep them in step).

use crate::ci::tree::Node;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Version of the result schema; bumped only on incompatible changes. 2: CI's whole `Operation`
/// (`operation`), `Input` (`input_detail`) and workflow task (`task`) kept, `progress` and
/// `template_id`, the SDK's list fields always arrays, `workflow` an array (docs/results.md,
/// "Upgrading from version 1").
pub const RESULT_VERSION: u32 = 2;

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

/// One of CI's trees (`MediaInfo`, `MediaResult`, `Operation`, `Input`, a workflow's `Tasks` element)
/// in the canonical form the result carries (see [`crate::result::normalize`]): a non-empty JSON
/// object, kept as its JSON text.
///
/// Why text: the tree is written once, straight from the event it was read from, and republished as
/// it is; building it as a `Value` first allocated every name and text again (docs/performance.md,
/// finding 14). Equality compares the JSON values (key order aside), as `Value`'s does.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CiTree(Box<RawValue>);

impl CiTree {
    /// The canonical form of `tree`, CI's element `name`, converted in place (the SDK's list fields
    /// always arrays: [`Node::canonicalize_in`]); `None` when that is not a non-empty object
    /// (absent, all empty, bare text or a list: the schema wants an object or null).
    pub fn canonical(mut tree: Node<'_>, name: &str) -> Option<CiTree> {
        tree.canonicalize_in(name, crate::ci::lists::list_children);
        if !tree.is_map() {
            return None;
        }
        let json = serde_json::value::to_raw_value(&tree).expect("a tree of texts serializes");
        Some(CiTree(json))
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).expect("a CiTree holds valid JSON")
    }
}

impl PartialEq for CiTree {
    fn eq(&self, other: &CiTree) -> bool {
        self.json() == other.json() || self.to_value() == other.to_value()
    }
}

impl std::fmt::Debug for CiTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.json())
    }
}

/// One `Workflow` element of a job (CI's `JobsDetail.Workflow`, a list in the SDK), or the run a
/// workflow event's task belongs to; absent values null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkflowRef {
    pub run_id: Option<String>,
    pub workflow_id: Option<String>,
    pub workflow_name: Option<String>,
    /// The workflow node that ran the job (`Workflow.Name`, a task's `Name`).
    #[serde(default)]
    pub name: Option<String>,
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
    /// CI's `Progress` (0–100, as CI writes it), null when CI gave none.
    #[serde(default)]
    pub progress: Option<String>,
    /// `Operation.TemplateId` (a task's `TemplateId`), null without a template.
    #[serde(default)]
    pub template_id: Option<String>,
    pub input: Option<ObjectRef>,
    pub output: Option<ObjectRef>,
    /// The caller's own `UserData`, unchanged (the correlation marker removed).
    pub user_data: Option<String>,
    /// RFC 3339 UTC (`2022-06-30T10:37:37Z`), or null when CI said `-` or nothing.
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub media_info: Option<CiTree>,
    pub media_result: Option<CiTree>,
    /// CI's whole `Operation` (every Tag's own result: `VideoTagResult`, `SpeechRecognitionResult`,
    /// `SnapshotPrefix`, …, the request's parameters as CI echoes them, `TemplateId`, `JobLevel`,
    /// `Output`), but for `MediaInfo`, `MediaResult` (the fields above) and `UserData` (`user_data`).
    #[serde(default)]
    pub operation: Option<CiTree>,
    /// CI's whole `Input` (`Object`, `BucketId`, `Region`, `Url`, `Vod`, `CosHeaders`, …); for a
    /// workflow task the run's `BucketId`, `Object` and `CosHeaders`.
    #[serde(default)]
    pub input_detail: Option<CiTree>,
    /// A workflow event's task, whole (`Name`, `TemplateId`, `ResultInfo{ObjectCount, ObjectInfo[]}`,
    /// …); null for job results.
    #[serde(default)]
    pub task: Option<CiTree>,
    /// The workflow runs this job belongs to (CI's `Workflow` elements), empty when none. A v1 result
    /// (one object or null, kept in an older worker's deadline record) reads as its array.
    #[serde(default, deserialize_with = "workflow_list")]
    pub workflow: Vec<WorkflowRef>,
    /// The job's deadline record, as its marker names it: not part of the published schema (the
    /// worker cancels that record once the job's final result is out).
    #[serde(skip)]
    pub deadline: Option<crate::request::marker::DeadlineRef>,
}

/// `workflow` as v2 writes it (an array), or as v1 did (an object or null).
fn workflow_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<WorkflowRef>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<WorkflowRef>),
        One(WorkflowRef),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::Many(list)) => list,
        Some(OneOrMany::One(one)) => vec![one],
    })
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
            progress: None,
            template_id: None,
            input: None,
            output: None,
            user_data: None,
            created_at: None,
            started_at: None,
            finished_at: None,
            media_info: None,
            media_result: None,
            operation: None,
            input_detail: None,
            task: None,
            workflow: Vec::new(),
            deadline: None,
        }
    }

    /// A result read back from an older worker's record (a deadline's `submitted` event), made
    /// this version's: fields v1 lacked are already their defaults (null, `[]`) and `workflow` an
    /// array; its media trees get v2's list fields. What v1 dropped (the `Operation`, …) stays null.
    pub fn upgrade(&mut self) {
        if self.version == RESULT_VERSION {
            return;
        }
        self.version = RESULT_VERSION;
        for (tree, name) in [
            (&mut self.media_info, "MediaInfo"),
            (&mut self.media_result, "MediaResult"),
        ] {
            if let Some(old) = tree.take() {
                *tree = serde_json::from_str::<Node>(old.json())
                    .ok()
                    .and_then(|node| CiTree::canonical(node, name));
            }
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("JobResult always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped examples are what this type reads and writes (the Python test holds them to the
    /// JSON Schema), so type and schema cannot drift apart unnoticed.
    #[test]
    fn schema_examples_round_trip() {
        for example in [
            include_str!("../../schemas/examples/result-succeeded.json"),
            include_str!("../../schemas/examples/result-rejected.json"),
            include_str!("../../schemas/examples/result-workflow-task.json"),
        ] {
            let parsed: JobResult = serde_json::from_str(example).unwrap();
            let written: Value = serde_json::from_slice(&parsed.to_json()).unwrap();
            let original: Value = serde_json::from_str(example).unwrap();
            assert_eq!(written, original);
        }
    }

    #[test]
    fn every_state_is_named_as_the_schema_says() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/result.schema.json")).unwrap();
        let names: Vec<&str> = schema["properties"]["state"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for state in [
            ResultState::Submitted,
            ResultState::Succeeded,
            ResultState::Failed,
            ResultState::Cancelled,
            ResultState::Rejected,
            ResultState::TimedOut,
        ] {
            assert!(names.contains(&state.as_str()));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(names.len(), 6);
    }
}
