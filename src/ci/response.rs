//! Typed views of CI's responses over the generic tree of [`super::xml`]: `JobsDetail` (submit, describe,
//! list and completion events share it) and the `<Error>` body.
//!
//! CI's JSON is a mechanical conversion of its XML, so one child may arrive as an object and several as an
//! array; [`Node::one`] and [`Node::many`] read either.

use super::tree::Node;
use super::xml::{self, XmlError};

/// One `JobsDetail`: the tree as CI wrote it, owned (details outlive the answer, in the restart
/// scan's cache).
#[derive(Debug, Clone, PartialEq)]
pub struct JobDetail {
    tree: Node<'static>,
}

impl JobDetail {
    pub fn new(tree: Node<'_>) -> JobDetail {
        JobDetail {
            tree: tree.into_owned(),
        }
    }

    /// The whole `JobsDetail` tree.
    pub fn tree(&self) -> &Node<'static> {
        &self.tree
    }

    pub fn job_id(&self) -> Option<&str> {
        self.tree.text_at(&["JobId"])
    }

    /// `Operation` as CI wrote it (its first, should it be repeated); `Null` when absent.
    pub fn operation(&self) -> &Node<'static> {
        self.tree
            .one()
            .and_then(|d| d.get("Operation"))
            .and_then(Node::one)
            .unwrap_or(&Node::Null)
    }

    /// This detail without `Operation.MediaInfo` / `MediaResult`, the bulk of a finished job's tree
    /// (kilobytes each): what a cache of many jobs keeps (the restart scan lists thousands).
    pub fn without_media(mut self) -> JobDetail {
        let operation = self
            .tree
            .one_mut()
            .and_then(|d| d.get_mut("Operation"))
            .and_then(Node::one_mut);
        if let Some(operation) = operation {
            operation.remove("MediaInfo");
            operation.remove("MediaResult");
        }
        self
    }

    /// `Operation.UserData`, where CI echoes it.
    pub fn user_data(&self) -> Option<&str> {
        self.operation().text_at(&["UserData"])
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
    let mut response = doc.node;
    let jobs = match response.get_mut("JobsDetail").map(Node::take) {
        Some(Node::List(items)) => items
            .into_iter()
            .filter(Node::is_map)
            .map(JobDetail::new)
            .collect(),
        Some(detail @ Node::Map(_)) => vec![JobDetail::new(detail)],
        _ => Vec::new(),
    };
    let non_exist_job_ids = response
        .get("NonExistJobIds")
        .map(Node::many)
        .unwrap_or_default()
        .iter()
        .filter_map(Node::as_str)
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
        .collect();
    Ok(JobsResponse {
        jobs,
        non_exist_job_ids,
        next_token: response.text_at(&["NextToken"]).map(String::from),
    })
}

/// One media processing queue of a `GET /queue` answer (DescribeMediaProcessQueues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub queue_id: String,
    pub name: String,
    /// `Active` or `Paused`.
    pub state: String,
}

/// Reads a `GET /queue` answer: `<Response>…<QueueList>` (one or several) `…</Response>`.
pub fn parse_queues_response(body: &str) -> Result<Vec<QueueInfo>, XmlError> {
    let doc = xml::parse(body)?;
    if doc.root != "Response" {
        return Err(XmlError::Malformed(format!(
            "expected <Response>, got <{}>",
            doc.root
        )));
    }
    Ok(doc
        .node
        .get("QueueList")
        .map(Node::many)
        .unwrap_or_default()
        .iter()
        .filter_map(|q| {
            Some(QueueInfo {
                queue_id: q.text_at(&["QueueId"])?.to_string(),
                name: q.text_at(&["Name"]).unwrap_or_default().to_string(),
                state: q.text_at(&["State"]).unwrap_or_default().to_string(),
            })
        })
        .collect())
}

/// CI's error body, from XML (`<Error>`) or JSON. Empty strings for what the body lacks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CiErrorBody {
    pub code: String,
    pub message: String,
    /// COS's `Resource` (the SDKs' `ErrorResponse.Resource`): the host and path refused.
    pub resource: String,
    pub request_id: String,
    pub trace_id: String,
}

/// Parses an error body; `None` when it is not one (neither of the forms below, or one with neither a
/// code nor a message). Missing children are empty strings.
///
/// - XML: `<Error><Code/><Message/><Resource/><RequestId/><TraceId/></Error>` (error-codes.md; COS
///   adds `Resource`, which the SDKs' `ErrorResponse` reads).
/// - JSON: the SDKs' JSON error `{"code", "message", "request_id"}` (cos-go-sdk-v5 `jsonError`: `code`
///   a number or a string), the XML's conversion `{"Error": {"Code", ...}}` or `{"Code", ...}`, or
///   Tencent Cloud API 3.0's `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`. Names
///   are matched ignoring case and `_` (`request_id`, `RequestId`, `requestid`).
pub fn parse_error(body: &str) -> Option<CiErrorBody> {
    let trimmed = body.trim_start_matches('\u{feff}').trim_start();
    let parsed = if trimmed.starts_with('{') {
        parse_json_error(trimmed)
    } else {
        parse_xml_error(body)
    }?;
    (!parsed.code.is_empty() || !parsed.message.is_empty()).then_some(parsed)
}

fn parse_xml_error(body: &str) -> Option<CiErrorBody> {
    let doc = xml::parse(body).ok()?;
    if doc.root != "Error" {
        return None;
    }
    let t = |name: &str| doc.node.text_at(&[name]).unwrap_or_default().to_string();
    Some(CiErrorBody {
        code: t("Code"),
        message: t("Message"),
        resource: t("Resource"),
        request_id: t("RequestId"),
        trace_id: t("TraceId"),
    })
}

fn parse_json_error(body: &str) -> Option<CiErrorBody> {
    use serde_json::{Map, Value};
    let Value::Object(top) = serde_json::from_str::<Value>(body).ok()? else {
        return None;
    };
    fn field<'v>(map: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
        map.iter()
            .find(|(k, _)| k.replace('_', "").eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    fn text(map: &Map<String, Value>, name: &str) -> String {
        match field(map, name) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => String::new(),
        }
    }
    let object = |v: Option<&'_ Value>| match v {
        Some(Value::Object(m)) => Some(m.clone()),
        _ => None,
    };
    // The error object, and the map around it (API 3.0 puts `RequestId` beside `Error`).
    let (outer, error) = match object(field(&top, "Response")) {
        Some(response) => match object(field(&response, "Error")) {
            Some(error) => (response, error),
            None => return None,
        },
        None => match object(field(&top, "Error")) {
            Some(error) => (top, error),
            None => (Map::new(), top),
        },
    };
    let or_outer = |name: &str| {
        let inner = text(&error, name);
        if inner.is_empty() {
            text(&outer, name)
        } else {
            inner
        }
    };
    Some(CiErrorBody {
        code: text(&error, "code"),
        message: text(&error, "message"),
        resource: or_outer("resource"),
        request_id: or_outer("requestid"),
        trace_id: or_outer("traceid"),
    })
}

/// The declaration CI's error example (error-codes.md) starts with.
const ERROR_DECLARATION: &str = "<?xml version='1.0' encoding='utf-8' ?>\n";

/// Writes an `<Error>` body as error-codes.md shows it, with COS's `Resource` after `Message`: the
/// XML declaration, then `<Error><Code/><Message/><Resource/><RequestId/><TraceId/></Error>` — all
/// five children always, in that order, empty ones as `<Name/>`. Characters XML cannot carry are
/// replaced by U+FFFD, so this never fails.
pub fn error_xml(err: &CiErrorBody) -> String {
    let clean = |s: &str| -> Node {
        s.chars()
            .map(|c| match c {
                '\t' | '\n' | '\r' => c,
                '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
                c => c,
            })
            .collect::<String>()
            .into()
    };
    let body = Node::Map(vec![
        ("Code".into(), clean(&err.code)),
        ("Message".into(), clean(&err.message)),
        ("Resource".into(), clean(&err.resource)),
        ("RequestId".into(), clean(&err.request_id)),
        ("TraceId".into(), clean(&err.trace_id)),
    ]);
    match xml::to_xml("Error", &body) {
        Ok(x) => format!("{ERROR_DECLARATION}{x}"),
        // Unreachable with the cleaning above; still an `<Error>` rather than a panic.
        Err(_) => format!(
            "{ERROR_DECLARATION}<Error><Code>InternalError</Code>\
             <Message>The error could not be written.</Message></Error>"
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queue_list_one_or_several() {
        let one = "<Response><RequestId>r</RequestId><TotalCount>1</TotalCount><QueueList>\
                   <QueueId>p1</QueueId><Name>queue-default</Name><State>Active</State>\
                   </QueueList></Response>";
        assert_eq!(
            parse_queues_response(one).unwrap(),
            [QueueInfo {
                queue_id: "p1".into(),
                name: "queue-default".into(),
                state: "Active".into()
            }]
        );
        let two = "<Response><QueueList><QueueId>p1</QueueId></QueueList>\
                   <QueueList><QueueId>p2</QueueId><State>Paused</State></QueueList></Response>";
        let ids: Vec<String> = parse_queues_response(two)
            .unwrap()
            .into_iter()
            .map(|q| q.queue_id)
            .collect();
        assert_eq!(ids, ["p1", "p2"]);
        assert!(
            parse_queues_response("<Response><TotalCount>0</TotalCount></Response>")
                .unwrap()
                .is_empty()
        );
        assert!(parse_queues_response("<Error><Code>x</Code></Error>").is_err());
    }

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
        let t = |path: &[&str]| j.tree().text_at(path);
        assert_eq!(t(&["Code"]), Some("Success"));
        assert_eq!(t(&["Message"]), None, "<Message/> is absent");
        assert_eq!(j.job_id(), Some("j8d121820f5e411ec926ef19d53ba9c6f"));
        assert_eq!(t(&["State"]), Some("Submitted"));
        assert_eq!(t(&["CreationTime"]), Some("2022-06-27T15:23:10+0800"));
        assert_eq!(t(&["StartTime"]), Some("-"));
        assert_eq!(t(&["QueueId"]), Some("p2242ab62c7c94486915508540933a2c6"));
        assert_eq!(t(&["Tag"]), Some("DigitalWatermark"));
        assert_eq!(t(&["SubTag"]), None);
        assert_eq!(
            (
                t(&["Input", "BucketId"]),
                t(&["Input", "Object"]),
                t(&["Input", "Region"])
            ),
            (
                Some("test-123456789"),
                Some("input/demo.mp4"),
                Some("ap-chongqing")
            )
        );
        assert_eq!(j.user_data(), Some("This is my data."));
        assert_eq!(
            j.operation().text_at(&["Output", "Object"]),
            Some("output/out.mp4")
        );
        assert_eq!(j.operation().text_at(&["JobLevel"]), Some("0"));
    }

    #[test]
    fn without_media_keeps_everything_else() {
        let tree = json!({"JobId": "j1", "State": "Success", "Operation": {
            "UserData": "u", "Output": {"Object": "o.mp4"},
            "MediaInfo": {"Format": {"Duration": "1"}}, "MediaResult": {"OutputFile": {}}}});
        let slim = JobDetail::new(Node::from_value(&tree)).without_media();
        assert_eq!(slim.job_id(), Some("j1"));
        assert_eq!(slim.user_data(), Some("u"));
        let expected_op = json!({"UserData": "u", "Output": {"Object": "o.mp4"}});
        assert_eq!(slim.operation().clone().into_value(), expected_op);
        let raw = slim.tree().clone().into_value();
        assert_eq!(raw["Operation"], expected_op);
        assert_eq!(raw["State"], "Success");
        // The same through an array-wrapped Operation, as JSON may write it.
        let wrapped =
            json!({"JobId": "j2", "Operation": [{"UserData": "u", "MediaInfo": {"A": "1"}}]});
        let slim = JobDetail::new(Node::from_value(&wrapped)).without_media();
        assert_eq!(
            slim.tree().clone().into_value()["Operation"],
            json!([{"UserData": "u"}])
        );
    }

    #[test]
    fn describe_and_list_responses() {
        let r = parse_jobs_response(DESCRIBE_RESP).unwrap();
        assert_eq!(r.jobs.len(), 1);
        assert_eq!(
            r.jobs[0].job_id(),
            Some("b3deffea2f84911ec9cb15254008618d9")
        );
        assert_eq!(r.jobs[0].tree().text_at(&["State"]), Some("Running"));

        let r = parse_jobs_response(LIST_RESP).unwrap();
        let ids: Vec<_> = r.jobs.iter().map(|j| j.job_id().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "b3deffea2f84911ec9cb15254008618d9",
                "be8f65004eb8511eaaed4f377124a303c"
            ]
        );
        assert_eq!(r.next_token.as_deref(), Some("25"));
        assert_eq!(
            r.jobs[1].user_data(),
            Some("this is my inventorytriggerjob")
        );
        assert_eq!(
            r.jobs[1].tree().text_at(&["StartTime"]),
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
                resource: String::new(),
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
        assert_eq!(
            parse_error("<Error/>"),
            None,
            "neither a code nor a message"
        );
        let e = parse_error(
            "<Error><Code>InvalidArgument</Code><Message>m</Message>\
             <Resource>b-1.ci.ap-guangzhou.myqcloud.com/jobs</Resource>\
             <RequestId>rid</RequestId><TraceId>tid</TraceId></Error>",
        )
        .unwrap();
        assert_eq!(e.resource, "b-1.ci.ap-guangzhou.myqcloud.com/jobs");
        assert_eq!((e.request_id.as_str(), e.trace_id.as_str()), ("rid", "tid"));
    }

    #[test]
    fn json_error_bodies() {
        // cos-go-sdk-v5's jsonError: a numeric code, `request_id`.
        let e =
            parse_error(r#"{"code": 40001, "message": "bad sign", "request_id": "NjJi"}"#).unwrap();
        assert_eq!(
            e,
            CiErrorBody {
                code: "40001".into(),
                message: "bad sign".into(),
                request_id: "NjJi".into(),
                ..CiErrorBody::default()
            }
        );
        // The XML's conversion, wrapped or not; names in any case, with or without `_`.
        for body in [
            r#"{"Error": {"Code": "QueueSaturated", "Message": "full", "Resource": "r/jobs", "RequestId": "rid", "TraceId": "tid"}}"#,
            r#"{"Code": "QueueSaturated", "Message": "full", "Resource": "r/jobs", "RequestId": "rid", "TraceId": "tid"}"#,
            "\u{feff} {\"code\": \"QueueSaturated\", \"message\": \"full\", \"resource\": \"r/jobs\", \"requestid\": \"rid\", \"trace_id\": \"tid\"}",
        ] {
            let e = parse_error(body).unwrap();
            assert_eq!(
                (e.code.as_str(), e.message.as_str(), e.resource.as_str()),
                ("QueueSaturated", "full", "r/jobs"),
                "{body}"
            );
            assert_eq!((e.request_id.as_str(), e.trace_id.as_str()), ("rid", "tid"));
        }
        // Tencent Cloud API 3.0: RequestId beside Error.
        let e = parse_error(
            r#"{"Response": {"Error": {"Code": "AuthFailure", "Message": "m"}, "RequestId": "r3"}}"#,
        )
        .unwrap();
        assert_eq!(
            (e.code.as_str(), e.request_id.as_str()),
            ("AuthFailure", "r3")
        );
        // JSON that is not an error.
        for body in [
            "{}",
            r#"{"Response": {"JobsDetail": {}}}"#,
            r#"{"JobsDetail": {"Code": 0}}"#,
            "[1]",
            "{not json",
            r#"{"code": null, "message": ""}"#,
        ] {
            assert_eq!(parse_error(body), None, "{body}");
        }
    }

    #[test]
    fn error_xml_as_ci_writes_it() {
        let err = CiErrorBody {
            code: "InvalidArgument".into(),
            message: "bad <Tag> & \"more\"".into(),
            resource: "b-1.ci.ap-guangzhou.myqcloud.com/jobs".into(),
            request_id: "NjJi".into(),
            trace_id: String::new(),
        };
        let body = error_xml(&err);
        assert_eq!(
            body,
            "<?xml version='1.0' encoding='utf-8' ?>\n<Error><Code>InvalidArgument</Code>\
             <Message>bad &lt;Tag&gt; &amp; &quot;more&quot;</Message>\
             <Resource>b-1.ci.ap-guangzhou.myqcloud.com/jobs</Resource><RequestId>NjJi</RequestId>\
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
}
