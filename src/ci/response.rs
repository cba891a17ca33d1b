//! Typed views of CI's responses over the generic tree of [`super::xml`]: `JobsDetail` (submit, describe,
//! list and completion events share it) and the `<Error>` body.
//!
//! CI's JSON is a mechanical conversion of its XML, so one child may arrive as an object and several as an
//! array; [`one`] and [`many`] read either.

use super::xml::{self, XmlError};
use serde_json::{Map, Value};

/// The first element of an object-or-array value.
pub fn one(v: &Value) -> Option<&Value> {
    match v {
        Value::Array(items) => items.first(),
        Value::Null => None,
        other => Some(other),
    }
}

/// Every element of an object-or-array value.
pub fn many(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// A scalar at `path` (object-or-array tolerant at each step) as text: CI writes numbers as strings
/// but not always (`"JobLevel": 0`). Empty strings count as absent.
pub fn text_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = one(cur)?.get(*key)?;
    }
    match one(cur)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `Input` of a `JobsDetail`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobInput {
    pub bucket_id: Option<String>,
    pub object: Option<String>,
    pub region: Option<String>,
}

/// One `JobsDetail`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDetail {
    pub code: Option<String>,
    pub message: Option<String>,
    pub job_id: Option<String>,
    pub state: Option<String>,
    pub creation_time: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub queue_id: Option<String>,
    pub tag: Option<String>,
    pub sub_tag: Option<String>,
    pub input: JobInput,
    /// `Operation` as CI wrote it.
    pub operation: Value,
    /// The whole `JobsDetail` tree.
    pub raw: Value,
}

impl JobDetail {
    pub fn from_value(v: &Value) -> JobDetail {
        JobDetail::from_owned(v.clone())
    }

    /// [`JobDetail::from_value`] of a tree the caller gives up: kept as `raw` without a copy.
    pub fn from_owned(v: Value) -> JobDetail {
        let t = |p: &[&str]| text_at(&v, p);
        JobDetail {
            code: t(&["Code"]),
            message: t(&["Message"]),
            job_id: t(&["JobId"]),
            state: t(&["State"]),
            creation_time: t(&["CreationTime"]),
            start_time: t(&["StartTime"]),
            end_time: t(&["EndTime"]),
            queue_id: t(&["QueueId"]),
            tag: t(&["Tag"]),
            sub_tag: t(&["SubTag"]),
            input: JobInput {
                bucket_id: t(&["Input", "BucketId"]),
                object: t(&["Input", "Object"]),
                region: t(&["Input", "Region"]),
            },
            operation: one(&v)
                .and_then(|o| o.get("Operation"))
                .and_then(one)
                .cloned()
                .unwrap_or(Value::Null),
            raw: v,
        }
    }

    /// This detail without `Operation.MediaInfo` / `MediaResult`, the bulk of a finished job's tree
    /// (kilobytes each): what a cache of many jobs keeps (the restart scan lists thousands).
    pub fn without_media(mut self) -> JobDetail {
        fn strip(operation: Option<&mut Value>) {
            let operation = match operation {
                Some(Value::Array(items)) => items.first_mut(),
                other => other,
            };
            if let Some(Value::Object(op)) = operation {
                op.shift_remove("MediaInfo");
                op.shift_remove("MediaResult");
            }
        }
        strip(Some(&mut self.operation));
        let raw = match &mut self.raw {
            Value::Array(items) => items.first_mut(),
            other => Some(other),
        };
        strip(raw.and_then(|r| r.get_mut("Operation")));
        self
    }

    /// `Operation.UserData`, where CI echoes it.
    pub fn user_data(&self) -> Option<String> {
        text_at(&self.operation, &["UserData"])
    }
}

/// `<Response>` of submit, describe and list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobsResponse {
    pub jobs: Vec<JobDetail>,
    pub non_exist_job_ids: Vec<String>,
    pub next_token: Option<String>,
}

/// Parses a submit/describe/list `<Response>` body: every `JobsDetail` element (zero, one or many; one
/// that is not a container is skipped), `NonExistJobIds` (repeated elements and/or comma-joined text)
/// and `NextToken` (`None` when absent or empty). A root other than `<Response>` is an error.
pub fn parse_jobs_response(body: &str) -> Result<JobsResponse, XmlError> {
    let doc = xml::parse(body)?;
    if doc.root != "Response" {
        return Err(XmlError::Malformed(format!(
            "expected <Response>, got <{}>",
            doc.root
        )));
    }
    let mut value = doc.value;
    // The details are moved out of the document, not copied (a submit answer echoes the whole job).
    let jobs = match value.get_mut("JobsDetail").map(Value::take) {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter(Value::is_object)
            .map(JobDetail::from_owned)
            .collect(),
        Some(detail @ Value::Object(_)) => vec![JobDetail::from_owned(detail)],
        _ => Vec::new(),
    };
    let v = &value;
    let field = |name: &str| v.get(name).unwrap_or(&Value::Null);
    let non_exist_job_ids = many(field("NonExistJobIds"))
        .into_iter()
        .filter_map(|id| match id {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
        .collect();
    Ok(JobsResponse {
        jobs,
        non_exist_job_ids,
        next_token: text_at(v, &["NextToken"]),
    })
}

/// CI's `<Error>` body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CiErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: String,
    pub trace_id: String,
}

/// Parses an `<Error>` body; `None` when the body is not one (not XML, or another root). Missing
/// children are empty strings.
pub fn parse_error(body: &str) -> Option<CiErrorBody> {
    let doc = xml::parse(body).ok()?;
    if doc.root != "Error" {
        return None;
    }
    let t = |name: &str| text_at(&doc.value, &[name]).unwrap_or_default();
    Some(CiErrorBody {
        code: t("Code"),
        message: t("Message"),
        request_id: t("RequestId"),
        trace_id: t("TraceId"),
    })
}

/// The declaration CI's error example (error-codes.md) starts with.
const ERROR_DECLARATION: &str = "<?xml version='1.0' encoding='utf-8' ?>\n";

/// Writes an `<Error>` body as error-codes.md shows it: the XML declaration, then
/// `<Error><Code/><Message/><RequestId/><TraceId/></Error>` — all four children always, in that order,
/// empty ones as `<Name/>`. Characters XML cannot carry are replaced by U+FFFD, so this never fails.
pub fn error_xml(err: &CiErrorBody) -> String {
    let clean = |s: &str| -> Value {
        Value::String(
            s.chars()
                .map(|c| match c {
                    '\t' | '\n' | '\r' => c,
                    '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
                    c => c,
                })
                .collect(),
        )
    };
    let mut body = Map::new();
    body.insert("Code".into(), clean(&err.code));
    body.insert("Message".into(), clean(&err.message));
    body.insert("RequestId".into(), clean(&err.request_id));
    body.insert("TraceId".into(), clean(&err.trace_id));
    match xml::to_xml("Error", &Value::Object(body)) {
        Ok(x) => format!("{ERROR_DECLARATION}{x}"),
        // Unreachable with the cleaning above; still an `<Error>` rather than a panic.
        Err(_) => format!("{ERROR_DECLARATION}<Error><Code>InternalError</Code></Error>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUBMIT_RESP: &str =
        include_str!("../../tests/fixtures/ci-docs/submit-digital-watermark-response.xml");
    const DESCRIBE_RESP: &str =
        include_str!("../../tests/fixtures/ci-docs/describe-job-response.xml");
    const LIST_RESP: &str = include_str!("../../tests/fixtures/ci-docs/list-jobs-response.xml");
    const LIST_NODES: &str =
        include_str!("../../tests/fixtures/ci-docs/list-jobs-response-nodes.xml");
    const ERROR_XML: &str = include_str!("../../tests/fixtures/ci-docs/error.xml");

    #[test]
    fn submit_response() {
        let r = parse_jobs_response(SUBMIT_RESP).unwrap();
        assert_eq!(r.jobs.len(), 1);
        assert!(r.non_exist_job_ids.is_empty());
        assert_eq!(r.next_token, None);
        let j = &r.jobs[0];
        assert_eq!(j.code.as_deref(), Some("Success"));
        assert_eq!(j.message, None, "<Message/> is absent");
        assert_eq!(
            j.job_id.as_deref(),
            Some("j8d121820f5e411ec926ef19d53ba9c6f")
        );
        assert_eq!(j.state.as_deref(), Some("Submitted"));
        assert_eq!(j.creation_time.as_deref(), Some("2022-06-27T15:23:10+0800"));
        assert_eq!(j.start_time.as_deref(), Some("-"));
        assert_eq!(
            j.queue_id.as_deref(),
            Some("p2242ab62c7c94486915508540933a2c6")
        );
        assert_eq!(j.tag.as_deref(), Some("DigitalWatermark"));
        assert_eq!(j.sub_tag, None);
        assert_eq!(
            j.input,
            JobInput {
                bucket_id: Some("test-123456789".into()),
                object: Some("input/demo.mp4".into()),
                region: Some("ap-chongqing".into()),
            }
        );
        assert_eq!(j.user_data().as_deref(), Some("This is my data."));
        assert_eq!(
            text_at(&j.operation, &["Output", "Object"]).as_deref(),
            Some("output/out.mp4")
        );
        assert_eq!(text_at(&j.operation, &["JobLevel"]).as_deref(), Some("0"));
    }

    #[test]
    fn without_media_keeps_everything_else() {
        let tree = json!({"JobId": "j1", "State": "Success", "Operation": {
            "UserData": "u", "Output": {"Object": "o.mp4"},
            "MediaInfo": {"Format": {"Duration": "1"}}, "MediaResult": {"OutputFile": {}}}});
        let slim = JobDetail::from_value(&tree).without_media();
        assert_eq!(slim.job_id.as_deref(), Some("j1"));
        assert_eq!(slim.user_data().as_deref(), Some("u"));
        let expected_op = json!({"UserData": "u", "Output": {"Object": "o.mp4"}});
        assert_eq!(slim.operation, expected_op);
        assert_eq!(slim.raw["Operation"], expected_op);
        assert_eq!(slim.raw["State"], "Success");
        // The same through an array-wrapped Operation, as JSON may write it.
        let wrapped =
            json!({"JobId": "j2", "Operation": [{"UserData": "u", "MediaInfo": {"A": "1"}}]});
        let slim = JobDetail::from_value(&wrapped).without_media();
        assert_eq!(slim.raw["Operation"], json!([{"UserData": "u"}]));
    }

    #[test]
    fn describe_and_list_responses() {
        let r = parse_jobs_response(DESCRIBE_RESP).unwrap();
        assert_eq!(r.jobs.len(), 1);
        assert_eq!(
            r.jobs[0].job_id.as_deref(),
            Some("b3deffea2f84911ec9cb15254008618d9")
        );
        assert_eq!(r.jobs[0].state.as_deref(), Some("Running"));

        let r = parse_jobs_response(LIST_RESP).unwrap();
        let ids: Vec<_> = r.jobs.iter().map(|j| j.job_id.clone().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "b3deffea2f84911ec9cb15254008618d9",
                "be8f65004eb8511eaaed4f377124a303c"
            ]
        );
        assert_eq!(r.next_token.as_deref(), Some("25"));
        assert_eq!(
            r.jobs[1].user_data().as_deref(),
            Some("this is my inventorytriggerjob")
        );
        assert_eq!(
            r.jobs[1].start_time.as_deref(),
            Some("2022-06-27T15:23:11+0800")
        );

        // The page's skeleton: `...` instead of a JobsDetail container, an empty NextToken.
        let r = parse_jobs_response(LIST_NODES).unwrap();
        assert!(r.jobs.is_empty());
        assert_eq!(r.next_token, None);
    }

    #[test]
    fn non_exist_job_ids_in_every_shape() {
        let body = "<Response><JobsDetail><JobId>j1</JobId></JobsDetail>\
                    <NonExistJobIds>j2</NonExistJobIds><NonExistJobIds>j3, j4</NonExistJobIds>\
                    <NextToken/></Response>";
        let r = parse_jobs_response(body).unwrap();
        assert_eq!(r.jobs.len(), 1);
        assert_eq!(r.non_exist_job_ids, ["j2", "j3", "j4"]);
        assert_eq!(r.next_token, None);
        let r = parse_jobs_response("<Response><NonExistJobIds>a,b,</NonExistJobIds></Response>")
            .unwrap();
        assert_eq!(r.non_exist_job_ids, ["a", "b"]);
        assert_eq!(
            parse_jobs_response("<Response/>").unwrap(),
            JobsResponse::default()
        );
    }

    #[test]
    fn jobs_response_refuses_other_bodies() {
        assert!(parse_jobs_response(ERROR_XML).is_err());
        assert!(parse_jobs_response("").is_err());
        assert!(parse_jobs_response("<Response>").is_err());
    }

    #[test]
    fn error_body_of_the_docs() {
        let e = parse_error(ERROR_XML).unwrap();
        assert_eq!(
            e,
            CiErrorBody {
                code: "string".into(),
                message: "string".into(),
                request_id: "string".into(),
                trace_id: "string".into(),
            }
        );
        let e = parse_error("<Error><Code>QueueSaturated</Code><Message>full</Message></Error>")
            .unwrap();
        assert_eq!(e.code, "QueueSaturated");
        assert_eq!(e.request_id, "");
        assert_eq!(parse_error(SUBMIT_RESP), None);
        assert_eq!(parse_error("<html>502 Bad Gateway"), None);
        assert_eq!(parse_error(""), None);
    }

    #[test]
    fn error_xml_as_ci_writes_it() {
        let err = CiErrorBody {
            code: "InvalidArgument".into(),
            message: "bad <Tag> & \"more\"".into(),
            request_id: "NjJi".into(),
            trace_id: String::new(),
        };
        let body = error_xml(&err);
        assert_eq!(
            body,
            "<?xml version='1.0' encoding='utf-8' ?>\n<Error><Code>InvalidArgument</Code>\
             <Message>bad &lt;Tag&gt; &amp; &quot;more&quot;</Message><RequestId>NjJi</RequestId>\
             <TraceId/></Error>"
        );
        assert_eq!(parse_error(&body), Some(err));
        // Characters XML cannot carry are replaced, not a failure.
        let odd = CiErrorBody {
            code: "X\u{1}".into(),
            ..CiErrorBody::default()
        };
        assert_eq!(parse_error(&error_xml(&odd)).unwrap().code, "X\u{fffd}");
    }

    #[test]
    fn object_or_array_helpers() {
        let v = json!({"A": [{"B": "1"}, {"B": "2"}], "N": 0, "E": ""});
        assert_eq!(text_at(&v, &["A", "B"]).as_deref(), Some("1"));
        assert_eq!(many(&v["A"]).len(), 2);
        assert_eq!(text_at(&v, &["N"]).as_deref(), Some("0"));
        assert_eq!(text_at(&v, &["E"]), None);
        assert_eq!(text_at(&v, &["Missing", "X"]), None);
    }
}
