//! CI's `JobsDetail` (from an event or from describe) → the stable [`JobResult`].
//!
//! # What a result keeps of CI's job
//! Every field of `JobsDetail` CI writes has a place: `JobId`, `Tag`, `SubTag`, `State`, `Code`,
//! `Message`, `QueueId`, `Progress`, the times (RFC 3339 UTC), `Workflow[]` (`workflow`, an array),
//! `Input` (`input`: bucket, region, object; whole as `input_detail`), and `Operation`:
//! `MediaInfo` → `media_info`, `MediaResult` → `media_result`, `UserData` → `user_data` (marker
//! removed), `Output` → `output` (bucket, region, object), `TemplateId` → `template_id`, and the whole
//! of it but for `MediaInfo`, `MediaResult` and `UserData` → `operation`: every Tag's own result
//! (`VideoTagResult`, `SpeechRecognitionResult`, `SnapshotPrefix`, `ImageInspectResult`, `DnaResult`,
//! `ExtractDigitalWatermark`, …), `JobLevel`, `Output` whole, the parameters CI echoes.
//!
//! # Canonical form of CI's trees (`media_info`, `media_result`, `operation`, `input_detail`, `task`)
//! They are republished in CI's own JSON form, made list-stable ([`Node::canonicalize_in`] with
//! [`crate::ci::lists::list_children`], computed in place on the moved tree and kept as JSON text,
//! [`CiTree`]): CI's element names kept, every scalar a string (`"JobLevel": 0` → `"0"`), empty
//! elements dropped; an element Tencent's Go SDK types as a list (`OutputFile.ObjectName`,
//! `Md5Info`, `Stream.Video`/`Audio`, `Input.CosHeaders`, `ResultInfo.ObjectInfo`, `Data.Tags`, …) is
//! **always an array**, of one element too; any other element is an object once and an array when
//! repeated, as CI writes it. Nothing else is collapsed or renamed. XML and JSON events for the same
//! job therefore give equal results. A tree that is not a non-empty object after that (absent, all
//! empty, bare text, repeated) is `null`, as the result schema wants an object or null.
//!
//! # Workflow events
//! A `WorkflowExecution` gives one result per `Tasks` element: `Type` → `tag`, `JobId`, `State`,
//! times, `TemplateId` → `template_id`, `workflow` = `[{run_id, workflow_id, workflow_name, name:
//! the task's Name}]`, `input`/`input_detail` from the run's `BucketId`, `Object`, `CosHeaders`, and
//! the task whole as `task` (`ResultInfo{ObjectCount, ObjectInfo[{ObjectName, ObjectUrl,
//! InputObjectName, Code, Message}], SpriteObjectInfo[]}`, `Name`, `TemplateName`, …). Tasks carry no
//! `Code`/`Message` of their own: a succeeded task has code `Success`; a task that did not succeed
//! takes the `Code` and `Message` of its first `ObjectInfo` whose `Code` is not `Success` (all of them
//! are in `task`), or an empty code when there is none.
//!
//! # States
//! `Success` → succeeded, `Failed` → failed, `Cancel` → cancelled, `Submitted` / `Running` / `Pause` →
//! submitted (not final). Matching ignores case (`Canceled`/`Cancelled` also mean cancelled). Any
//! other or missing state is reported as `submitted` — never guessed final — so an unknown state
//! cannot end a job early; the worker's timeout still bounds it.
//!
//! # A failed DigitalWatermark sub-operation
//! When `Operation.DigitalWatermark.State` is `Failed` (typically `SubTag` DigitalWatermark inside
//! another Tag) but the job itself succeeded:
//! - with `Operation.DigitalWatermark.IgnoreError` = `true` the caller asked the job to go on without
//!   the watermark: the result stays `succeeded` (code `Success`) and `message` says the watermark was
//!   not embedded;
//! - otherwise the result is `failed` with code `DigitalWatermarkFailed` (the output exists but lacks
//!   the watermark that was asked for).
//!
//! A job CI reports failed keeps CI's own code and message.

use super::schema::{CiTree, JobResult, ObjectRef, ResultState, WorkflowRef};
use crate::callback::event::CompletionEvent;
use crate::ci::tree::Node;
use crate::request::marker;
use chrono::{DateTime, SecondsFormat, Utc};

/// Code of a result whose DigitalWatermark sub-operation failed without `IgnoreError`.
pub const DIGITAL_WATERMARK_FAILED: &str = "DigitalWatermarkFailed";

/// [`normalize_event`] of an event the caller gives up: its trees are moved into the results and
/// canonicalized in place instead of copied first (the worker's completion path).
pub fn normalize_owned(event: CompletionEvent<'_>) -> Vec<JobResult> {
    let mut results: Vec<JobResult> = event.jobs.into_iter().map(normalize_detail).collect();
    if let Some(workflow) = event.workflow {
        results.extend(normalize_workflow(workflow));
    }
    results
}

/// Every result an event carries (one per job; a workflow event one per task).
pub fn normalize_event(event: &CompletionEvent<'_>) -> Vec<JobResult> {
    normalize_owned(event.clone())
}

/// One `JobsDetail` tree kept by the caller (from a submit, describe or list answer) → a result.
pub fn normalize_job(detail: &Node) -> JobResult {
    normalize_detail(detail.view())
}

/// One `JobsDetail` tree → a result. CI states map Success→succeeded, Failed→failed, Cancel→cancelled;
/// Submitted/Running/Pause → `submitted` (not final). The correlation marker is decoded from UserData.
pub fn normalize_detail(mut detail: Node<'_>) -> JobResult {
    // A JSON event may write `JobsDetail`, `Operation` or `Input` as `[{…}]`: the first counts.
    let mut none = Node::Null;
    let detail = detail.one_mut().unwrap_or(&mut none);
    let mut moved = |key: &str| {
        detail
            .get_mut(key)
            .and_then(Node::one_mut)
            .map(Node::take)
            .unwrap_or_default()
    };
    let (mut operation, input) = (moved("Operation"), moved("Input"));
    let t = |path: &[&str]| detail.text_at(path).map(str::to_string);
    let state = map_state(detail.text_at(&["State"]));
    let mut result = JobResult::new(state);
    let marker = marker::decode(operation.text_at(&["UserData"]));
    result.request_id = marker.request_id;
    result.user_data = marker.caller;
    result.deadline = marker.deadline;
    result.job_id = t(&["JobId"]);
    result.tag = t(&["Tag"]);
    result.sub_tag = t(&["SubTag"]);
    result.code = match (detail.text_at(&["Code"]), state) {
        (Some(code), _) => code.to_string(),
        (None, ResultState::Succeeded) => "Success".to_string(),
        (None, _) => String::new(),
    };
    result.message = t(&["Message"]).unwrap_or_default();
    result.queue_id = t(&["QueueId"]);
    result.progress = t(&["Progress"]);
    let input_text = |key: &str| input.text_at(&[key]).map(str::to_string);
    result.input = object_ref(
        input_text("BucketId"),
        input_text("Region"),
        input_text("Object"),
    );
    let out = |key: &str| operation.text_at(&["Output", key]).map(str::to_string);
    result.output = object_ref(out("Bucket"), out("Region"), out("Object"));
    result.template_id = operation.text_at(&["TemplateId"]).map(str::to_string);
    result.created_at = detail.text_at(&["CreationTime"]).and_then(normalize_time);
    result.started_at = detail.text_at(&["StartTime"]).and_then(normalize_time);
    result.finished_at = detail.text_at(&["EndTime"]).and_then(normalize_time);
    result.workflow = detail
        .get("Workflow")
        .map(Node::many)
        .unwrap_or_default()
        .iter()
        .filter_map(|w| workflow_ref(w, w.text_at(&["Name"])))
        .collect();
    apply_digital_watermark_state(&mut result, &operation);
    let mut part = |key: &str| operation.get_mut(key).map(Node::take);
    let (media_info, media_result) = (part("MediaInfo"), part("MediaResult"));
    // `user_data` has it, without the correlation marker.
    part("UserData");
    result.media_info = media_info.and_then(|tree| CiTree::canonical(tree, "MediaInfo"));
    result.media_result = media_result.and_then(|tree| CiTree::canonical(tree, "MediaResult"));
    result.operation = CiTree::canonical(operation, "Operation");
    result.input_detail = CiTree::canonical(input, "Input");
    result
}

/// See the module doc: a failed DigitalWatermark sub-operation on a successful job.
fn apply_digital_watermark_state(result: &mut JobResult, operation: &Node) {
    let dw_state = operation.text_at(&["DigitalWatermark", "State"]);
    if result.state != ResultState::Succeeded
        || !dw_state.is_some_and(|s| s.eq_ignore_ascii_case("Failed"))
    {
        return;
    }
    let ignore_error = operation
        .text_at(&["DigitalWatermark", "IgnoreError"])
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if ignore_error {
        result.message =
            "digital watermark not embedded (DigitalWatermark.State=Failed, IgnoreError=true)"
                .to_string();
    } else {
        result.state = ResultState::Failed;
        result.code = DIGITAL_WATERMARK_FAILED.to_string();
        result.message =
            "digital watermark not embedded (DigitalWatermark.State=Failed)".to_string();
    }
}

/// One result per `Tasks` entry of a `WorkflowExecution` (see the module doc).
fn normalize_workflow(mut execution: Node<'_>) -> Vec<JobResult> {
    let tasks = match execution.get_mut("Tasks").map(Node::take) {
        Some(Node::List(tasks)) => tasks,
        Some(task @ Node::Map(_)) => vec![task],
        _ => Vec::new(),
    };
    let t = |key: &str| execution.text_at(&[key]).map(str::to_string);
    let input = object_ref(t("BucketId"), None, t("Object"));
    // The run's input, once for all its tasks.
    let input_detail = {
        let mut tree = Node::Map(Vec::with_capacity(3));
        for key in ["BucketId", "Object", "CosHeaders"] {
            if let Some(value) = execution.get_mut(key) {
                tree.insert(key, value.take());
            }
        }
        CiTree::canonical(tree, "Input")
    };
    tasks
        .into_iter()
        .filter(Node::is_map)
        .map(|task| {
            let tt = |key: &str| task.text_at(&[key]);
            let state = map_state(tt("State"));
            let mut result = JobResult::new(state);
            result.job_id = tt("JobId").map(str::to_string);
            result.tag = tt("Type").map(str::to_string);
            result.template_id = tt("TemplateId").map(str::to_string);
            // Tasks carry no Code/Message of their own (the SDK has none); a failed one is told by
            // the objects it failed on.
            let failed_object = task
                .get("ResultInfo")
                .and_then(Node::one)
                .and_then(|info| info.get("ObjectInfo"))
                .map(Node::many)
                .unwrap_or_default()
                .iter()
                .find(|o| {
                    o.text_at(&["Code"])
                        .is_some_and(|c| !c.eq_ignore_ascii_case("Success"))
                });
            let (code, message) = match (tt("Code"), state, failed_object) {
                (Some(code), _, _) => (code, tt("Message")),
                (None, ResultState::Succeeded, _) => ("Success", tt("Message")),
                (None, _, Some(object)) => (
                    object.text_at(&["Code"]).unwrap_or_default(),
                    object.text_at(&["Message"]),
                ),
                (None, _, None) => ("", tt("Message")),
            };
            result.code = code.to_string();
            result.message = message.unwrap_or_default().to_string();
            result.input = input.clone();
            result.input_detail = input_detail.clone();
            // The field table spells it `Createtime`, the samples `CreateTime`.
            result.created_at = tt("CreateTime")
                .or_else(|| tt("Createtime"))
                .and_then(normalize_time);
            result.started_at = tt("StartTime").and_then(normalize_time);
            result.finished_at = tt("EndTime").and_then(normalize_time);
            result.workflow = workflow_ref(&execution, tt("Name")).into_iter().collect();
            result.task = CiTree::canonical(task, "Tasks");
            result
        })
        .collect()
}

/// A [`WorkflowRef`] from a `Workflow` / `WorkflowExecution` tree and the node's name; `None` when
/// nothing is known.
fn workflow_ref(tree: &Node, name: Option<&str>) -> Option<WorkflowRef> {
    let t = |key: &str| tree.text_at(&[key]).map(str::to_string);
    let workflow = WorkflowRef {
        run_id: t("RunId"),
        workflow_id: t("WorkflowId"),
        workflow_name: t("WorkflowName"),
        name: name.map(str::to_string),
    };
    (workflow != WorkflowRef::default()).then_some(workflow)
}

fn object_ref(
    bucket: Option<String>,
    region: Option<String>,
    object: Option<String>,
) -> Option<ObjectRef> {
    if bucket.is_none() && region.is_none() && object.is_none() {
        None
    } else {
        Some(ObjectRef {
            bucket,
            region,
            object,
        })
    }
}

fn map_state(ci_state: Option<&str>) -> ResultState {
    let Some(state) = ci_state else {
        return ResultState::Submitted;
    };
    match state.trim().to_ascii_lowercase().as_str() {
        "success" => ResultState::Succeeded,
        "failed" => ResultState::Failed,
        "cancel" | "canceled" | "cancelled" => ResultState::Cancelled,
        _ => ResultState::Submitted,
    }
}

/// CI time (`2022-06-30T18:37:37+0800`, `2020-12-01 11:00:41+0800`, RFC 3339, `-`) → RFC 3339 UTC
/// (`2022-06-30T10:37:37Z`); `None` for `-`, empty or unreadable.
///
/// Accepted: a `T` or a space between date and time; offsets `Z`, `+08:00`, `+0800`, `+08`; fractional
/// seconds (kept, as 3, 6 or 9 digits). A time without an offset is `None` (CI always writes one, and
/// guessing the zone would silently shift it).
pub fn normalize_time(ci_time: &str) -> Option<String> {
    let s = ci_time.trim();
    if s.is_empty() || s == "-" || !s.is_ascii() {
        return None;
    }
    let mut t = s.to_string();
    if t.len() > 10 && t.as_bytes()[10] == b' ' {
        t.replace_range(10..11, "T");
    }
    let b = t.as_bytes();
    let n = b.len();
    let is_sign = |c: u8| c == b'+' || c == b'-';
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if n > 19 && is_sign(b[n - 5]) && b[n - 6].is_ascii_digit() && digits(n - 4..n) {
        // ±HHMM → ±HH:MM
        t.insert(n - 2, ':');
    } else if n > 19 && is_sign(b[n - 3]) && b[n - 4].is_ascii_digit() && digits(n - 2..n) {
        // ±HH → ±HH:00
        t.push_str(":00");
    }
    let parsed = DateTime::parse_from_rfc3339(&t).ok()?;
    Some(
        parsed
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::event::{parse_event, EventFormat};
    use crate::ci::xml::parse;
    use crate::fixtures::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{json, Value};

    fn results(payload: &str) -> Vec<JobResult> {
        normalize_event(&parse_event(payload.as_bytes()).unwrap())
    }

    /// CI's JSON form of an XML event, made the way CI makes it.
    fn json_form(xml: &str) -> String {
        let mut tree = parse(xml).unwrap().node;
        tree.canonicalize();
        serde_json::to_string_pretty(&tree).unwrap()
    }

    /// The single JobsDetail of an XML event, after `edit` on the XML text.
    fn job_with(edit: impl Fn(String) -> String) -> JobResult {
        let r = results(&edit(DW_XML.to_string()));
        assert_eq!(r.len(), 1);
        r.into_iter().next().unwrap()
    }

    fn obj(bucket: &str, region: Option<&str>, object: &str) -> Option<ObjectRef> {
        Some(ObjectRef {
            bucket: Some(bucket.into()),
            region: region.map(String::from),
            object: Some(object.into()),
        })
    }

    #[test]
    fn digital_watermark_callback() {
        let r = results(DW_XML);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.version, 2);
        assert_eq!(r.request_id, None);
        assert_eq!(
            r.user_data.as_deref(),
            Some("This is my DigitalWatermark job.")
        );
        assert_eq!(
            r.job_id.as_deref(),
            Some("ja8de3b46f86011ec9452c1c27f56a659")
        );
        assert_eq!(r.tag.as_deref(), Some("DigitalWatermark"));
        assert_eq!(r.sub_tag.as_deref(), Some("DigitalWatermark"));
        assert_eq!(r.state, ResultState::Succeeded);
        assert_eq!(r.code, "Success");
        assert_eq!(r.message, "");
        assert_eq!(
            r.queue_id.as_deref(),
            Some("p2242ab62c7c94486915508540933a2c6")
        );
        assert_eq!(
            r.input,
            obj("test-123456789", Some("ap-chongqing"), "input/demo.mp4")
        );
        assert_eq!(
            r.output,
            obj("test-123456789", Some("ap-chongqing"), "output/digital.mp4")
        );
        assert_eq!(r.created_at.as_deref(), Some("2022-06-30T10:37:37Z"));
        assert_eq!(r.started_at.as_deref(), Some("2022-06-30T10:37:38Z"));
        assert_eq!(r.finished_at.as_deref(), Some("2022-06-30T10:39:08Z"));
        let mi = r.media_info.as_ref().unwrap().to_value();
        assert_eq!(mi["Format"]["Duration"], "215.638000");
        assert_eq!(mi["Format"]["Size"], "68290577");
        // One video and one audio stream: arrays of one (the SDK's `Stream.Video`/`Audio` lists).
        assert_eq!(mi["Stream"]["Video"][0]["Width"], "1920");
        assert_eq!(mi["Stream"]["Video"][0]["CodecName"], "h264");
        assert_eq!(mi["Stream"]["Audio"][0]["SampleRate"], "48000");
        assert_eq!(mi["Stream"]["Video"].as_array().unwrap().len(), 1);
        assert!(
            mi["Stream"].get("Subtitle").is_none(),
            "empty <Subtitle/> is dropped"
        );
        let mr = r.media_result.as_ref().unwrap().to_value();
        assert_eq!(
            mr["OutputFile"]["Md5Info"],
            json!([{"Md5": "043221daee3f4e15ff13f42329f15eb1", "ObjectName": "output/digital.mp4"}])
        );
        assert_eq!(
            mr["OutputFile"]["ObjectName"],
            json!(["output/digital.mp4"])
        );
        assert!(mr["OutputFile"].get("ObjectPrefix").is_none());
        assert_eq!(r.workflow, []);
        // The rest of `Operation`: the watermark's own element, the output whole; not UserData.
        let op = r.operation.as_ref().unwrap().to_value();
        assert_eq!(
            op["DigitalWatermark"],
            json!({"Message": "123456789ab", "Type": "Text", "Version": "V1"})
        );
        assert_eq!(op["Output"]["Object"], "output/digital.mp4");
        assert!(op.get("UserData").is_none() && op.get("MediaInfo").is_none());
        assert!(op.get("MediaResult").is_none());
        assert_eq!(
            r.input_detail.as_ref().unwrap().to_value(),
            json!({"BucketId": "test-123456789", "Object": "input/demo.mp4", "Region": "ap-chongqing"})
        );
        assert_eq!(
            (r.progress.as_deref(), r.template_id.as_deref()),
            (None, None)
        );
        assert_eq!(r.task, None);
    }

    #[test]
    fn xml_and_json_forms_give_equal_results() {
        // Pages that document both forms.
        for (xml, json) in [
            (DW_XML, DW_JSON),
            (WF_XML, WF_JSON),
            (TRANSCODE_XML, TRANSCODE_JSON),
            (SNAPSHOT_XML, SNAPSHOT_JSON),
            (VIDEO_TAG_XML, VIDEO_TAG_JSON),
            (ASR_XML, ASR_JSON),
        ] {
            let (x, j) = (results(xml), results(json));
            assert!(!x.is_empty());
            assert_eq!(x, j);
        }
        // Pages with the XML form only: the JSON form made mechanically.
        for xml in [
            DW_XML,
            JOB_CB_XML,
            WF_CONTENT_XML,
            WF_XML,
            TRANSCODE_XML,
            SNAPSHOT_XML,
            VIDEO_TAG_XML,
            ASR_XML,
        ] {
            let json = json_form(xml);
            assert_eq!(
                parse_event(json.as_bytes()).unwrap().format,
                EventFormat::Json
            );
            assert_eq!(results(xml), results(&json), "{json}");
        }
        // The quirks together: wrapped, [{…}] JobsDetail, `[{…}]` Md5Info, a numeric JobLevel.
        let mut sample: Value = serde_json::from_str(DW_JSON).unwrap();
        let md5 = sample["JobsDetail"]["Operation"]["MediaResult"]["OutputFile"]["Md5Info"].take();
        sample["JobsDetail"]["Operation"]["MediaResult"]["OutputFile"]["Md5Info"] = json!([md5]);
        sample["JobsDetail"]["Operation"]["JobLevel"] = json!(0);
        let detail = sample["JobsDetail"].take();
        sample["JobsDetail"] = json!([detail]);
        let quirky = json!({ "Response": sample }).to_string();
        let xml_with_level = DW_XML.replace("</UserData>", "</UserData><JobLevel>0</JobLevel>");
        assert_eq!(results(&quirky), results(&xml_with_level));
        // A numeric scalar inside MediaInfo is canonicalized to the XML's string.
        let numeric = DW_JSON.replace("\"Width\": \"1920\"", "\"Width\": 1920");
        assert_ne!(numeric, DW_JSON);
        assert_eq!(results(&numeric), results(DW_XML));
    }

    /// The one result of a documented callback, the same from its XML and its JSON sample.
    fn documented(xml: &str, json: &str) -> JobResult {
        let (x, j) = (results(xml), results(json));
        assert_eq!(x.len(), 1);
        assert_eq!(x, j);
        x.into_iter().next().unwrap()
    }

    fn tree(t: &Option<CiTree>) -> Value {
        t.as_ref().expect("a tree").to_value()
    }

    #[test]
    fn transcode_results_are_kept() {
        let r = documented(TRANSCODE_XML, TRANSCODE_JSON);
        assert_eq!(
            (r.tag.as_deref(), r.state),
            (Some("Transcode"), ResultState::Succeeded)
        );
        assert_eq!(r.progress.as_deref(), Some("100"));
        assert_eq!(
            r.template_id.as_deref(),
            Some("t1995d523e42df4c5e858f244b4174360c")
        );
        let file = &tree(&r.media_result)["OutputFile"];
        assert_eq!(file["ObjectName"], json!(["output/transcode.mp4"]));
        assert_eq!(
            file["Md5Info"],
            json!([{"Md5": "2db78d168edf2f883adce89a1b4ca033", "ObjectName": "output/transcode.mp4"}])
        );
        let streams = &tree(&r.media_info)["Stream"];
        assert_eq!(streams["Video"][0]["CodecName"], "hevc");
        assert_eq!(streams["Audio"][0]["CodecName"], "aac");
        assert_eq!(streams["Video"].as_array().unwrap().len(), 1);
        let op = tree(&r.operation);
        assert_eq!(op["TemplateName"], "trans_993874");
        assert_eq!(op["Output"]["Object"], "output/transcode.mp4");
        let headers = &tree(&r.input_detail)["CosHeaders"];
        assert_eq!(headers.as_array().unwrap().len(), 4);
        assert_eq!(headers[3], json!({"Key": "Size", "Value": "1424687"}));
        assert_eq!(r.workflow.len(), 1);
        assert_eq!(
            r.workflow[0].name.as_deref(),
            Some("Transcode_1581665960537")
        );
        assert_eq!(
            r.workflow[0].run_id.as_deref(),
            Some("ic90edd59f84f11ec9d4f525400a3c59f")
        );
    }

    #[test]
    fn snapshot_results_are_kept() {
        // The JSON sample writes the sprite's one ObjectName as a string, the six frames as an
        // array: the result has both as arrays.
        let r = documented(SNAPSHOT_XML, SNAPSHOT_JSON);
        let file = &tree(&r.media_result)["OutputFile"];
        let frames: Vec<String> = (0..6).map(|i| format!("{i}.jpg")).collect();
        assert_eq!(file["ObjectName"], json!(frames));
        assert_eq!(file["ObjectPrefix"], "output/snapshot-");
        assert_eq!(file["SpriteOutputFile"]["ObjectName"], json!(["0.jpg"]));
        assert_eq!(file["SpriteOutputFile"]["ObjectPrefix"], "output/sprite-");
        assert!(file.get("Md5Info").is_none(), "<Md5Info/> is empty");
        assert_eq!(r.media_info, None, "every MediaInfo element is empty");
        assert_eq!(
            tree(&r.operation)["Output"]["SpriteObject"],
            "output/sprite-${Number}.jpg"
        );
        assert_eq!(
            r.template_id.as_deref(),
            Some("t1f16e1dfbdc9ds4105b31632d45710642a")
        );
        assert_eq!(
            r.output,
            obj(
                "test-123456789",
                Some("ap-chongqing"),
                "output/snapshot-${Number}.jpg"
            )
        );
    }

    #[test]
    fn video_tag_results_are_kept() {
        let r = documented(VIDEO_TAG_XML, VIDEO_TAG_JSON);
        assert_eq!(r.tag.as_deref(), Some("VideoTag"));
        let op = tree(&r.operation);
        assert_eq!(op["VideoTag"], json!({"Scenario": "Stream"}));
        let stream = &op["VideoTagResult"]["StreamData"];
        assert_eq!(
            (&stream["SubErrCode"], &stream["SubErrMsg"]),
            (&json!("0"), &json!("ok"))
        );
        let data = &stream["Data"];
        assert_eq!(data["Tags"].as_array().unwrap().len(), 4);
        assert_eq!(
            data["Tags"][1],
            json!({"Confidence": "0.587103", "Tag": "Game"})
        );
        // Lists of one stay lists; an emptied one (`<Tags/>`) is absent.
        assert_eq!(
            data["ActionTags"][0]["Tags"],
            json!([{"Confidence": "0.421531", "Tag": "Speak", "TagCls": "Speak"}])
        );
        assert!(data["ActionTags"][1].get("Tags").is_none());
        assert_eq!(data["ObjectTags"].as_array().unwrap().len(), 1);
        assert_eq!(data["ObjectTags"][0]["Objects"][0]["Name"], "Keyboard");
        assert_eq!(
            data["ObjectTags"][0]["Objects"][0]["BBox"][0]["X1"],
            "0.10181817412376404"
        );
        assert_eq!(data["PlaceTags"].as_array().unwrap().len(), 2);
        assert_eq!(
            data["PlaceTags"][0]["ClipFrameResult"]
                .as_array()
                .unwrap()
                .len(),
            11
        );
        assert_eq!(data["PlaceTags"][1]["Tags"][1]["TagCls"], "Nature/Outdoor");
        assert!(data.get("PersonTags").is_none());
        assert_eq!((r.media_info, r.media_result), (None, None));
    }

    #[test]
    fn speech_recognition_results_are_kept() {
        let r = documented(ASR_XML, ASR_JSON);
        assert_eq!(r.tag.as_deref(), Some("SpeechRecognition"));
        let op = tree(&r.operation);
        assert_eq!(op["JobLevel"], "0");
        let asr = &op["SpeechRecognitionResult"];
        assert_eq!(asr["AudioTime"], "19.7124");
        assert_eq!(
            asr["ObjectName"], "/example.txt",
            "a single value here (not OutputFile's list)"
        );
        assert_eq!(asr["DetailObjectName"], "/example.txt.detail");
        // `Result` is a list in the SDK, `ResultDetail` one on CI's page: arrays of one.
        assert_eq!(asr["Result"].as_array().unwrap().len(), 1);
        assert!(asr["Result"][0].as_str().unwrap().contains("锄禾日当午"));
        let detail = &asr["ResultDetail"];
        assert_eq!(detail.as_array().unwrap().len(), 1);
        assert_eq!(detail[0]["WordsNum"], "22");
        assert_eq!(detail[0]["Words"].as_array().unwrap().len(), 22);
        assert_eq!(
            detail[0]["Words"][0],
            json!({"OffsetEndMs": "2190", "OffsetStartMs": "0", "VoiceType": "0", "Word": "悯"})
        );
        assert_eq!(
            r.template_id.as_deref(),
            Some("t14aea553bb55c468b963fafa472afc538")
        );
        assert_eq!(
            r.output,
            obj("test-1234567890", Some("ap-chongqing"), "/example.txt")
        );
    }

    #[test]
    fn repeated_elements_are_arrays_with_one_and_with_two() {
        let file = |r: &JobResult| tree(&r.media_result)["OutputFile"].clone();
        let second = |x: String| {
            x.replace(
                "</Md5Info>",
                "</Md5Info><Md5Info><Md5>0123</Md5><ObjectName>output/second.mp4</ObjectName></Md5Info>",
            )
            .replace(
                "<ObjectPrefix/>",
                "<ObjectName>output/second.mp4</ObjectName><ObjectPrefix/>",
            )
            .replace("</Video>", "</Video><Video><Index>2</Index></Video>")
        };
        let one = job_with(|x| x);
        let two = job_with(second);
        for (r, n) in [(&one, 1), (&two, 2)] {
            let f = file(r);
            assert_eq!(f["ObjectName"].as_array().unwrap().len(), n);
            assert_eq!(f["Md5Info"].as_array().unwrap().len(), n);
            let streams = &tree(&r.media_info)["Stream"];
            assert_eq!(streams["Video"].as_array().unwrap().len(), n);
            assert_eq!(streams["Audio"].as_array().unwrap().len(), 1);
        }
        assert_eq!(
            file(&two)["ObjectName"],
            json!(["output/digital.mp4", "output/second.mp4"])
        );
        // The JSON forms: CI's own conversion (one an object) and `[{…}]` read alike.
        let xml_two = second(DW_XML.to_string());
        assert_eq!(results(&json_form(&xml_two)), results(&xml_two));
        assert_eq!(results(&json_form(DW_XML)), vec![one]);
    }

    /// WF_XML with a `ResultInfo` in each task: one object in the first, two in the second, the
    /// second task failed on its second object.
    fn workflow_with_result_info() -> String {
        let info = |objects: &str, count: usize| {
            format!("<ResultInfo><ObjectCount>{count}</ObjectCount>{objects}</ResultInfo>")
        };
        let object = |name: &str, code: &str, message: &str| {
            format!(
                "<ObjectInfo><ObjectName>{name}</ObjectName><ObjectUrl>https://test-1234567890.cos.ap-chongqing.myqcloud.com/{name}</ObjectUrl>\
                 <InputObjectName>wk-test/game.mp4</InputObjectName><Code>{code}</Code><Message>{message}</Message></ObjectInfo>"
            )
        };
        let first = info(&object("snapshot/game-0.jpg", "Success", ""), 1);
        let second = info(
            &format!(
                "{}{}",
                object("transcode/game.mp4", "Success", ""),
                object("transcode/game-hd.mp4", "InternalError", "transcode failed")
            ),
            1,
        );
        WF_XML
            .replacen("</TemplateName>", &format!("</TemplateName>{first}"), 1)
            .replace(
                "<TemplateName>MP4-265-SD</TemplateName>",
                &format!("<TemplateName>MP4-265-SD</TemplateName>{second}"),
            )
            .replace(
                "<State>Success</State>\n            <JobId>j1686",
                "<State>Failed</State>\n            <JobId>j1686",
            )
    }

    #[test]
    fn workflow_task_result_info_is_kept() {
        let xml = workflow_with_result_info();
        assert!(xml.contains("<State>Failed</State>"), "{xml}");
        let r = results(&xml);
        assert_eq!(
            r,
            results(&json_form(&xml)),
            "XML and CI's JSON form (one ObjectInfo an object)"
        );
        assert_eq!(r.len(), 2);
        let info = |t: &JobResult| tree(&t.task)["ResultInfo"].clone();
        assert_eq!(info(&r[0])["ObjectCount"], "1");
        assert_eq!(info(&r[0])["ObjectInfo"].as_array().unwrap().len(), 1);
        assert_eq!(
            info(&r[0])["ObjectInfo"][0]["ObjectName"],
            "snapshot/game-0.jpg"
        );
        assert_eq!(
            (r[0].state, r[0].code.as_str()),
            (ResultState::Succeeded, "Success")
        );
        let objects = info(&r[1])["ObjectInfo"].clone();
        assert_eq!(objects.as_array().unwrap().len(), 2);
        assert_eq!(objects[1]["InputObjectName"], "wk-test/game.mp4");
        assert_eq!(
            objects[1]["ObjectUrl"],
            "https://test-1234567890.cos.ap-chongqing.myqcloud.com/transcode/game-hd.mp4"
        );
        // The failed task is told by the object it failed on.
        assert_eq!(r[1].state, ResultState::Failed);
        assert_eq!(
            (r[1].code.as_str(), r[1].message.as_str()),
            ("InternalError", "transcode failed")
        );
        // The task whole: its name, template, times as CI wrote them.
        let task = tree(&r[1].task);
        assert_eq!(task["Name"], "Transcode_1581665960537");
        assert_eq!(task["TemplateName"], "MP4-265-SD");
        assert_eq!(
            r[1].template_id.as_deref(),
            Some("t01e57db1c2d154d2fb57aa5de9313a897")
        );
        assert_eq!(
            r[1].workflow[0].name.as_deref(),
            Some("Transcode_1581665960537")
        );
        assert_eq!(
            (r[1].operation.as_ref(), r[1].media_result.as_ref()),
            (None, None)
        );
        // The run's two custom headers, on every task.
        for t in &r {
            assert_eq!(
                tree(&t.input_detail)["CosHeaders"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );
        }
        // Without ResultInfo a failed task has no code to tell (the pages' own samples).
        let failed = WF_XML.replacen(
            "<State>Success</State>\n            <JobId>j23c",
            "<State>Failed</State>\n            <JobId>j23c",
            1,
        );
        assert_eq!(results(&failed)[0].code, "");
    }

    #[test]
    fn json_scalars_escapes_and_repeated_keys() {
        let r = results(include_str!(
            "../../tests/fuzz-corpus/events/escapes-numbers-duplicate-keys.json"
        ));
        assert_eq!(r.len(), 1);
        // A repeated key: the last value, as serde_json's own reading has it.
        assert_eq!(r[0].job_id.as_deref(), Some("jlast"));
        assert_eq!(
            r[0].user_data.as_deref(),
            Some("line\nbreak \"quoted\" \u{e9}\u{1f600}")
        );
        // Scalars become their text, empties go, a one-element list becomes its element.
        assert_eq!(
            r[0].media_info.as_ref().unwrap().json(),
            r#"{"Format":{"Duration":"15.0","Size":"68290577","Bitrate":"-1","Live":"true"},"Stream":{"Video":[{"Index":"0"},{"Index":"1"}]}}"#
        );
    }

    #[test]
    fn workflow_triggered_job() {
        let r = results(JOB_CB_XML);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(
            r.job_id.as_deref(),
            Some("jccddc41c27e711ebbff5874bc5b36868")
        );
        assert_eq!(r.tag.as_deref(), Some("Transcode"));
        assert_eq!(r.sub_tag, None);
        assert_eq!(r.state, ResultState::Succeeded);
        assert_eq!(
            r.input,
            obj(
                "examplebucket-1250000000",
                Some("ap-beijing"),
                "1/2/3/4/5/xxx.mp4"
            )
        );
        assert_eq!(
            r.output,
            obj(
                "examplebucket-1250000000",
                Some("ap-chongqing"),
                "1/2/Conversion to mp4-xxx_iccba81fa27e711eb989d525400276c76.${ext}"
            )
        );
        assert_eq!(r.created_at.as_deref(), Some("2020-11-16T08:43:29Z"));
        assert_eq!(r.started_at, None, "no StartTime in this sample");
        assert_eq!(r.finished_at.as_deref(), Some("2020-11-16T08:43:33Z"));
        assert_eq!(r.media_info, None);
        assert_eq!(
            r.media_result.as_ref().unwrap().to_value()["OutputFile"]["ObjectName"],
            json!(["1/2/Conversion to mp4-xxx_iccba81fa27e711eb989d525400276c76.mp4"])
        );
        assert_eq!(
            r.workflow,
            [WorkflowRef {
                run_id: Some("rccddc41c27e711ebbff5874bc5b36868".into()),
                workflow_id: Some("wccddc41c27e711ebbff5874bc5b36868".into()),
                workflow_name: Some("workflow".into()),
                name: Some("Transcode_1600413767444".into()),
            }]
        );
        assert_eq!(
            r.template_id.as_deref(),
            Some("t182c0ca7d91ca40969a3fc97c5559091a")
        );
        assert_eq!(
            r.operation.as_ref().unwrap().to_value()["TemplateName"],
            "example"
        );
        // Three custom headers, in order.
        let input = r.input_detail.as_ref().unwrap().to_value();
        let headers = input["CosHeaders"].as_array().unwrap();
        assert_eq!(headers.len(), 3);
        assert_eq!(headers[2], json!({"Key": "x-cos-meta-age", "Value": "10"}));
        assert_eq!(
            (r.request_id.as_deref(), r.user_data.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn workflow_events_give_one_result_per_task() {
        let r = results(WF_CONTENT_XML);
        let ids: Vec<_> = r.iter().map(|t| t.job_id.as_deref().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "je5195f3e35dc11ebbe6fed17a7c10000",
                "je55e922035dc11ebbe6fed17a7c10000"
            ]
        );
        for t in &r {
            assert_eq!(t.tag.as_deref(), Some("Transcode"));
            assert_eq!(t.state, ResultState::Succeeded);
            assert_eq!(t.code, "Success");
            assert_eq!(t.request_id, None);
            assert_eq!(t.created_at.as_deref(), Some("2020-12-01T03:00:42Z"));
            assert_eq!(t.finished_at.as_deref(), Some("2020-12-01T03:00:45Z"));
            assert_eq!(t.input, obj("examplebucket-1250000000", None, "0000.mp4"));
            assert_eq!(t.workflow.len(), 1);
            let w = &t.workflow[0];
            assert_eq!(
                (
                    w.run_id.as_deref(),
                    w.workflow_id.as_deref(),
                    w.workflow_name.as_deref()
                ),
                (
                    Some("ie4d9187d35dc11eb9cec525400860000"),
                    Some("w2b22307fb0e44107bc8ffe71e1d20000"),
                    Some("example")
                )
            );
            assert_eq!(
                t.input_detail.as_ref().unwrap().to_value(),
                json!({"BucketId": "examplebucket-1250000000", "Object": "0000.mp4",
                       "CosHeaders": [{"Key": "x-cos-meta-id", "Value": "testid"}]})
            );
        }
        // Each task's node name, template and whole element.
        assert_eq!(
            r[0].workflow[0].name.as_deref(),
            Some("Transcode_1600413767353")
        );
        assert_eq!(
            r[1].workflow[0].name.as_deref(),
            Some("Transcode_1600413767444")
        );
        assert_eq!(
            r[1].template_id.as_deref(),
            Some("t182c0ca7d91ca40969a3fc97c5559091b")
        );
        assert_eq!(
            r[1].task.as_ref().unwrap().to_value()["TemplateName"],
            "example"
        );

        let r = results(WF_XML);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].tag.as_deref(), Some("Snapshot"));
        assert_eq!(
            r[0].job_id.as_deref(),
            Some("j23c11e1e17b011edaab4ab15ec33d076")
        );
        assert_eq!(r[0].created_at.as_deref(), Some("2022-08-09T06:54:40Z"));
        assert_eq!(r[1].tag.as_deref(), Some("Transcode"));
        assert_eq!(r[1].finished_at.as_deref(), Some("2022-08-09T06:54:39Z"));
        assert_eq!(r[1].input, obj("test-1234567890", None, "wk-test/game.mp4"));
        assert_eq!(
            r[1].workflow[0].workflow_name.as_deref(),
            Some("workflow-3")
        );

        // The page's all-empty skeleton: one task, nothing known, not final.
        let r = results(WF_CONTENT_NODES);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].job_id.as_deref(), r[0].state),
            (None, ResultState::Submitted)
        );
        assert_eq!(r[0].workflow, []);

        // A failed task; `Createtime` as the field table spells it.
        let failed = WF_XML
            .replacen(
                "<State>Success</State>\n            <JobId>j23c",
                "<State>Failed</State>\n            <JobId>j23c",
                1,
            )
            .replace(
                "<CreateTime>2022-08-09 14:54:40+0800</CreateTime>",
                "<Createtime>2022-08-09 14:54:40+0800</Createtime>",
            );
        let r = results(&failed);
        assert_eq!((r[0].state, r[0].code.as_str()), (ResultState::Failed, ""));
        assert_eq!(r[0].created_at.as_deref(), Some("2022-08-09T06:54:40Z"));
        assert_eq!(r[1].state, ResultState::Succeeded);
    }

    #[test]
    fn correlation_marker_is_decoded() {
        let r = job_with(|x| {
            x.replace(
                "This is my DigitalWatermark job.",
                "ciw1:order-42;caller data",
            )
        });
        assert_eq!(r.request_id.as_deref(), Some("order-42"));
        assert_eq!(r.user_data.as_deref(), Some("caller data"));
        let r = job_with(|x| x.replace("This is my DigitalWatermark job.", "ciw1:a%3Bb;"));
        assert_eq!((r.request_id.as_deref(), r.user_data), (Some("a;b"), None));
        let r =
            job_with(|x| x.replace("<UserData>This is my DigitalWatermark job.</UserData>", ""));
        assert_eq!((r.request_id, r.user_data), (None, None));
    }

    #[test]
    fn states_codes_and_messages() {
        let with_state = |state: &str| {
            job_with(|x| x.replace("<State>Success</State>", &format!("<State>{state}</State>")))
        };
        for (ci, expected) in [
            ("Success", ResultState::Succeeded),
            ("Failed", ResultState::Failed),
            ("Cancel", ResultState::Cancelled),
            ("Submitted", ResultState::Submitted),
            ("Running", ResultState::Submitted),
            ("Pause", ResultState::Submitted),
            ("success", ResultState::Succeeded),
            ("Finishing", ResultState::Submitted),
            ("", ResultState::Submitted),
        ] {
            assert_eq!(with_state(ci).state, expected, "{ci}");
        }
        let failed = job_with(|x| {
            x.replace("<State>Success</State>", "<State>Failed</State>")
                .replace("<Code>Success</Code>", "<Code>InternalError</Code>")
                .replace(
                    "<Message/>",
                    "<Message>decode &amp; encode failed</Message>",
                )
        });
        assert_eq!(failed.state, ResultState::Failed);
        assert_eq!(failed.code, "InternalError");
        assert_eq!(failed.message, "decode & encode failed");
        // Absent code: `Success` for success, empty otherwise.
        let no_code = job_with(|x| x.replace("<Code>Success</Code>", ""));
        assert_eq!(no_code.code, "Success");
        let cancelled = job_with(|x| {
            x.replace("<Code>Success</Code>", "")
                .replace("<State>Success</State>", "<State>Cancel</State>")
        });
        assert_eq!(
            (cancelled.state, cancelled.code.as_str()),
            (ResultState::Cancelled, "")
        );
    }

    #[test]
    fn failed_digital_watermark_sub_operation() {
        let sub = |dw_extra: &str, job_state: &str| {
            job_with(|x| {
                x.replace("<Tag>DigitalWatermark</Tag>", "<Tag>SuperResolution</Tag>")
                    .replace(
                        "<Version>V1</Version>",
                        &format!("<Version>V1</Version>{dw_extra}"),
                    )
                    .replace(
                        "<State>Success</State>",
                        &format!("<State>{job_state}</State>"),
                    )
            })
        };
        let r = sub("<State>Failed</State>", "Success");
        assert_eq!(
            (r.tag.as_deref(), r.sub_tag.as_deref()),
            (Some("SuperResolution"), Some("DigitalWatermark"))
        );
        assert_eq!(r.state, ResultState::Failed);
        assert_eq!(r.code, DIGITAL_WATERMARK_FAILED);
        assert!(r.message.contains("watermark"), "{}", r.message);

        let r = sub(
            "<IgnoreError>false</IgnoreError><State>Failed</State>",
            "Success",
        );
        assert_eq!(
            (r.state, r.code.as_str()),
            (ResultState::Failed, DIGITAL_WATERMARK_FAILED)
        );

        let r = sub(
            "<IgnoreError>true</IgnoreError><State>Failed</State>",
            "Success",
        );
        assert_eq!(
            (r.state, r.code.as_str()),
            (ResultState::Succeeded, "Success")
        );
        assert!(r.message.contains("not embedded"), "{}", r.message);

        let r = sub("<State>Success</State>", "Success");
        assert_eq!(
            (r.state, r.code.as_str(), r.message.as_str()),
            (ResultState::Succeeded, "Success", "")
        );

        // A job CI failed keeps CI's own code.
        let r = job_with(|x| {
            x.replace(
                "<Version>V1</Version>",
                "<Version>V1</Version><State>Failed</State>",
            )
            .replace("<State>Success</State>", "<State>Failed</State>")
            .replace("<Code>Success</Code>", "<Code>WatermarkError</Code>")
        });
        assert_eq!(
            (r.state, r.code.as_str()),
            (ResultState::Failed, "WatermarkError")
        );
    }

    #[test]
    fn submit_response_detail_is_not_final() {
        let resp = crate::ci::response::parse_jobs_response(SUBMIT_RESP).unwrap();
        let r = normalize_job(resp.jobs[0].tree());
        assert_eq!(r.state, ResultState::Submitted);
        assert_eq!(
            r.job_id.as_deref(),
            Some("j8d121820f5e411ec926ef19d53ba9c6f")
        );
        assert_eq!(r.created_at.as_deref(), Some("2022-06-27T07:23:10Z"));
        assert_eq!(
            (r.started_at.as_deref(), r.finished_at.as_deref()),
            (None, None)
        );
        assert_eq!(r.user_data.as_deref(), Some("This is my data."));
        assert_eq!(
            r.output,
            obj("test-123456789", Some("ap-chongqing"), "output/out.mp4")
        );
        assert_eq!(r.media_info, None);
    }

    /// Enough of JSON Schema for `schemas/result.schema.json`: required, additionalProperties, type,
    /// const, enum, $ref (with its siblings, as 2020-12 has it), items, and its one pattern (RFC 3339
    /// UTC) checked by hand.
    fn check_schema(value: &Value, schema: &Value, root: &Value, path: &str) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let target = &root["$defs"][r.trim_start_matches("#/$defs/")];
            assert!(target.is_object(), "{path}: no {r}");
            check_schema(value, target, root, path);
        }
        if let Some(c) = schema.get("const") {
            assert_eq!(value, c, "{path}");
        }
        if let Some(e) = schema.get("enum") {
            assert!(e.as_array().unwrap().contains(value), "{path}: {value}");
        }
        if let Some(types) = schema.get("type") {
            let name = match value {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            let ok = match types {
                Value::String(t) => t == name,
                Value::Array(ts) => ts.iter().any(|t| t == name),
                _ => false,
            };
            assert!(ok, "{path}: {value} is not {types}");
        }
        if let (Some(_), Value::String(t)) = (schema.get("pattern"), value) {
            assert!(
                t.ends_with('Z') && normalize_time(t).as_deref() == Some(t.as_str()),
                "{path}: {t}"
            );
        }
        if let (Some(items), Value::Array(values)) = (schema.get("items"), value) {
            for (i, v) in values.iter().enumerate() {
                check_schema(v, items, root, &format!("{path}[{i}]"));
            }
        }
        let Value::Object(map) = value else { return };
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert!(map.contains_key(key.as_str().unwrap()), "{path}: no {key}");
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, v) in map {
            match props.and_then(|p| p.get(key)) {
                Some(sub) => check_schema(v, sub, root, &format!("{path}.{key}")),
                None => assert_ne!(
                    schema.get("additionalProperties"),
                    Some(&Value::Bool(false)),
                    "{path}: unexpected {key}"
                ),
            }
        }
    }

    #[test]
    fn moving_the_event_gives_the_same_results_as_reading_it() {
        let mut compared = 0;
        for payload in [
            DW_XML,
            DW_JSON,
            JOB_CB_XML,
            WF_XML,
            WF_JSON,
            WF_CONTENT_XML,
            SNAPSHOT_XML,
            VIDEO_TAG_JSON,
            &workflow_with_result_info(),
        ] {
            let event = parse_event(payload.as_bytes()).unwrap();
            let by_ref = normalize_event(&event);
            assert_eq!(normalize_owned(event), by_ref, "{payload}");
            compared += by_ref.len();
        }
        assert!(compared >= 8);
        // Repeated (array) JobsDetail and Operation, as JSON events may write them.
        let event = parse_event(
            br#"{"JobsDetail": [{"JobId": "j1", "State": "Success",
                "Operation": [{"MediaInfo": {"Format": {"Duration": 1.5}}, "UserData": "u"}]}]}"#,
        )
        .unwrap();
        let owned = normalize_owned(event.clone());
        assert_eq!(owned, normalize_event(&event));
        assert_eq!(
            owned[0].media_info.as_ref().map(CiTree::to_value),
            Some(json!({"Format": {"Duration": "1.5"}}))
        );
    }

    #[test]
    fn results_conform_to_the_result_schema() {
        let schema: Value =
            serde_json::from_str(include_str!("../../schemas/result.schema.json")).unwrap();
        let mut checked = 0;
        for payload in [
            DW_XML,
            DW_JSON,
            JOB_CB_XML,
            WF_XML,
            WF_JSON,
            WF_CONTENT_XML,
            WF_CONTENT_NODES,
            TRANSCODE_XML,
            TRANSCODE_JSON,
            SNAPSHOT_XML,
            SNAPSHOT_JSON,
            VIDEO_TAG_XML,
            VIDEO_TAG_JSON,
            ASR_XML,
            ASR_JSON,
            &workflow_with_result_info(),
        ] {
            for r in results(payload) {
                let v: Value = serde_json::from_slice(&r.to_json()).unwrap();
                check_schema(&v, &schema, &schema, "result");
                checked += 1;
            }
        }
        assert_eq!(checked, 20);
        for example in [
            include_str!("../../schemas/examples/result-succeeded.json"),
            include_str!("../../schemas/examples/result-rejected.json"),
            include_str!("../../schemas/examples/result-workflow-task.json"),
        ] {
            let v: Value = serde_json::from_str(example).unwrap();
            check_schema(&v, &schema, &schema, "example");
        }
        // Shapes that are not an object become null, as the schema wants.
        let text = job_with(|x| {
            let start = x.find("<MediaInfo>").unwrap();
            let end = x.find("</MediaInfo>").unwrap();
            format!("{}<MediaInfo>n/a{}", &x[..start], &x[end..])
        });
        assert_eq!(text.media_info, None);
        let twice = job_with(|x| {
            x.replace(
                "</MediaResult>",
                "</MediaResult><MediaResult><A>1</A></MediaResult>",
            )
        });
        assert_eq!(twice.media_result, None);
        assert!(twice.media_info.is_some());
    }

    #[test]
    fn times() {
        for (ci, utc) in [
            ("2022-06-30T18:37:37+0800", Some("2022-06-30T10:37:37Z")),
            ("2020-12-01 11:00:41+0800", Some("2020-12-01T03:00:41Z")),
            ("2022-06-30T18:37:37+08:00", Some("2022-06-30T10:37:37Z")),
            ("2022-06-30T02:37:37-0800", Some("2022-06-30T10:37:37Z")),
            ("2022-06-30T18:37:37+08", Some("2022-06-30T10:37:37Z")),
            ("2022-06-30T10:37:37Z", Some("2022-06-30T10:37:37Z")),
            ("2022-06-30T10:37:37z", Some("2022-06-30T10:37:37Z")),
            (
                "2022-06-30T18:37:37.5+0800",
                Some("2022-06-30T10:37:37.500Z"),
            ),
            (
                "2022-06-30T18:37:37.123456+08:00",
                Some("2022-06-30T10:37:37.123456Z"),
            ),
            ("2022-01-01T01:00:00+0800", Some("2021-12-31T17:00:00Z")),
            (" 2022-06-30T18:37:37+0800 ", Some("2022-06-30T10:37:37Z")),
            ("-", None),
            ("", None),
            ("   ", None),
            ("2022-06-30T18:37:37", None),
            ("2022-06-30", None),
            ("2022-13-30T18:37:37+0800", None),
            ("yesterday", None),
            ("2022-06-30T18:37:37+0800x", None),
            ("２０２２-06-30T18:37:37+0800", None),
        ] {
            assert_eq!(normalize_time(ci).as_deref(), utc, "{ci:?}");
        }
    }

    #[test]
    fn random_event_payloads_never_panic() {
        let mut rng = StdRng::seed_from_u64(42);
        let seeds = [DW_XML, DW_JSON, JOB_CB_XML, WF_XML, WF_JSON, WF_CONTENT_XML];
        let alphabet = b"<>/{}[]\":,&;#!-\\ \n0aZ\xef\xbb\xbf\xff";
        for round in 0..4000 {
            let payload: Vec<u8> = if round % 4 == 0 {
                (0..rng.random_range(0..300))
                    .map(|_| rng.random())
                    .collect()
            } else {
                let mut b = seeds[round % seeds.len()].as_bytes().to_vec();
                if round % 4 == 1 {
                    b.truncate(rng.random_range(0..b.len()));
                }
                for _ in 0..rng.random_range(0..5) {
                    let i = rng.random_range(0..b.len().max(1));
                    if i < b.len() {
                        b[i] = alphabet[rng.random_range(0..alphabet.len())];
                    }
                }
                b
            };
            // Whatever the outcome, an accepted event has something to normalize, and normalizes.
            if let Ok(e) = parse_event(&payload) {
                assert!(!e.jobs.is_empty() || e.workflow.is_some());
                let _ = normalize_event(&e);
            }
        }
    }
}
