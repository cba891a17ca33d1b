//! Parses one completion event as CI publishes it (`TaskFinish` job events and workflow
//! `WorkflowExecution` events), in XML or JSON, detected from the payload.
//!
//! Order of checks: size ([`MAX_EVENT_BYTES`]), UTF-8 (one leading BOM tolerated), format from the first
//! non-whitespace character (`<` XML, `{` or `[` JSON).
//!
//! - XML: root `<Response>` holding `JobsDetail` (one or many) and/or `WorkflowExecution`; `EventName`
//!   optional (`TaskFinish`, `WorkflowFinish`, or absent as in some official samples).
//! - JSON: the same tree, as CI's mechanical conversion writes it; accepted with or without a
//!   `{"Response": …}` wrapper (the official samples have none), `JobsDetail` / `WorkflowExecution` /
//!   `Response` as an object or an array of objects, and a single-element top-level array. Scalars may
//!   be strings or numbers. Nesting: serde_json's own limit (128), and no value may sit under more than
//!   [`MAX_DEPTH`] object levels (arrays are transparent, like repetition in XML).
//!
//! The trees are returned as they came, borrowed from the payload ([`Node`]: JSON numbers and booleans
//! as their text); the result normalizer reads them object-or-array tolerantly and canonicalizes
//! what it republishes.

use crate::ci::tree::Node;
use crate::ci::xml::{self, MAX_DEPTH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    Xml,
    Json,
}

/// One completion event, format-independent: job events carry `jobs` (`JobsDetail` trees), workflow
/// events `workflow` (the `WorkflowExecution` tree). The trees borrow from the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionEvent<'a> {
    pub format: EventFormat,
    pub event_name: Option<String>,
    pub jobs: Vec<Node<'a>>,
    pub workflow: Option<Node<'a>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event is neither XML nor JSON")]
    UnknownFormat,
    #[error("event is not valid UTF-8")]
    NotUtf8,
    #[error("event is {0} bytes, over the {MAX_EVENT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error("event has neither JobsDetail nor WorkflowExecution")]
    NoJobs,
}

/// TDMQ's message size limit; nothing larger is a real CI event.
pub const MAX_EVENT_BYTES: usize = 5 * 1024 * 1024;

/// Parses one event payload (see the module doc). Never panics.
pub fn parse_event(payload: &[u8]) -> Result<CompletionEvent<'_>, EventError> {
    if payload.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge(payload.len()));
    }
    let text = std::str::from_utf8(payload).map_err(|_| EventError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match text.trim_start().chars().next() {
        Some('<') => parse_xml(text),
        Some('{') | Some('[') => parse_json(text),
        _ => Err(EventError::UnknownFormat),
    }
}

fn parse_xml(text: &str) -> Result<CompletionEvent<'_>, EventError> {
    let doc = xml::parse(text).map_err(|e| EventError::Malformed(e.to_string()))?;
    if doc.root != "Response" {
        return Err(EventError::Malformed(format!(
            "root element is <{}>, not <Response>",
            doc.root
        )));
    }
    if !doc.node.is_map() {
        return Err(EventError::NoJobs);
    }
    event_from(EventFormat::Xml, doc.node)
}

fn parse_json(text: &str) -> Result<CompletionEvent<'_>, EventError> {
    let value: Node =
        serde_json::from_str(text).map_err(|e| EventError::Malformed(format!("JSON: {e}")))?;
    if nests_too_deep(&value) {
        return Err(EventError::Malformed(format!(
            "JSON nests deeper than {MAX_DEPTH} levels"
        )));
    }
    // A top-level array is accepted when it holds exactly one event.
    let mut top = match value {
        Node::List(mut items) if items.len() == 1 => items.pop().unwrap_or_default(),
        Node::List(items) => {
            return Err(EventError::Malformed(format!(
                "a JSON array of {} values",
                items.len()
            )))
        }
        other => other,
    };
    if !top.is_map() {
        return Err(EventError::Malformed("JSON event is not an object".into()));
    }
    // `{"Response": …}` wrapper, when the body has nothing else of the event at the top.
    let body = if top.get("Response").is_some()
        && top.get("JobsDetail").is_none()
        && top.get("WorkflowExecution").is_none()
    {
        match first_owned(top.get_mut("Response").map(Node::take).unwrap_or_default()) {
            Some(v @ Node::Map(_)) => v,
            _ => return Err(EventError::NoJobs),
        }
    } else {
        top
    };
    event_from(EventFormat::Json, body)
}

/// The value, or the first element of a list, moved out.
fn first_owned(v: Node<'_>) -> Option<Node<'_>> {
    match v {
        Node::List(items) => items.into_iter().next(),
        Node::Null => None,
        other => Some(other),
    }
}

/// The event fields from a `Response` tree (XML or JSON), moved out of it.
fn event_from(
    format: EventFormat,
    mut response: Node<'_>,
) -> Result<CompletionEvent<'_>, EventError> {
    let jobs: Vec<Node> = match response.get_mut("JobsDetail").map(Node::take) {
        Some(Node::List(items)) => items.into_iter().filter(Node::is_map).collect(),
        Some(job @ Node::Map(_)) => vec![job],
        _ => Vec::new(),
    };
    let workflow = response
        .get_mut("WorkflowExecution")
        .map(Node::take)
        .and_then(first_owned)
        .filter(Node::is_map);
    if jobs.is_empty() && workflow.is_none() {
        return Err(EventError::NoJobs);
    }
    Ok(CompletionEvent {
        format,
        event_name: response.text_at(&["EventName"]).map(str::to_string),
        jobs,
        workflow,
    })
}

/// True when some value sits under more than [`MAX_DEPTH`] object levels (arrays do not count: they
/// are CI's repetition of an element). Iterative, so it cannot overflow the stack.
fn nests_too_deep(value: &Node) -> bool {
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Node::Map(entries) => {
                if depth + 1 > MAX_DEPTH && !entries.is_empty() {
                    return true;
                }
                stack.extend(entries.iter().map(|(_, child)| (child, depth + 1)));
            }
            Node::List(items) => stack.extend(items.iter().map(|child| (child, depth))),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use serde_json::{json, Value};

    fn ok(payload: &str) -> CompletionEvent<'_> {
        parse_event(payload.as_bytes()).unwrap_or_else(|e| panic!("{e}: {payload}"))
    }

    /// A tree as a `Value`, for comparing with `json!` literals.
    fn v(n: &Node) -> Value {
        n.clone().into_value()
    }

    fn vs(nodes: &[Node]) -> Vec<Value> {
        nodes.iter().map(v).collect()
    }

    /// CI's JSON form of a tree read from XML, as a `Value`.
    fn ci_json(n: &Node) -> Value {
        let mut n = n.clone();
        n.canonicalize();
        n.into_value()
    }

    #[test]
    fn digital_watermark_callback_in_both_formats() {
        let xml = ok(DW_XML);
        assert_eq!(xml.format, EventFormat::Xml);
        assert_eq!(xml.event_name.as_deref(), Some("TaskFinish"));
        assert_eq!(xml.jobs.len(), 1);
        assert_eq!(xml.workflow, None);
        assert_eq!(
            v(&xml.jobs[0])["JobId"],
            "ja8de3b46f86011ec9452c1c27f56a659"
        );

        let json = ok(DW_JSON);
        assert_eq!(json.format, EventFormat::Json);
        assert_eq!(json.event_name.as_deref(), Some("TaskFinish"));
        assert_eq!(json.jobs.len(), 1);
        assert_eq!(
            v(&json.jobs[0])["JobId"],
            "ja8de3b46f86011ec9452c1c27f56a659"
        );
        // The JSON sample is exactly CI's conversion of the XML one.
        assert_eq!(ci_json(&xml.jobs[0]), v(&json.jobs[0]));
    }

    #[test]
    fn job_callback_without_event_name() {
        let e = ok(JOB_CB_XML);
        assert_eq!(e.event_name, None);
        assert_eq!(e.jobs.len(), 1);
        assert_eq!(v(&e.jobs[0])["Tag"], "Transcode");
        assert_eq!(
            v(&e.jobs[0])["Workflow"]["RunId"],
            "rccddc41c27e711ebbff5874bc5b36868"
        );
    }

    #[test]
    fn workflow_callbacks() {
        let e = ok(WF_CONTENT_XML);
        assert_eq!(e.event_name, None, "the official page has no EventName");
        assert!(e.jobs.is_empty());
        let w = v(e.workflow.as_ref().unwrap());
        assert_eq!(w["RunId"], "ie4d9187d35dc11eb9cec525400860000");
        assert_eq!(w["Tasks"].as_array().unwrap().len(), 2);

        let xml = ok(WF_XML);
        let json = ok(WF_JSON);
        assert_eq!(xml.event_name.as_deref(), Some("WorkflowFinish"));
        assert_eq!(json.event_name.as_deref(), Some("WorkflowFinish"));
        assert_eq!(json.format, EventFormat::Json);
        assert_eq!(
            ci_json(xml.workflow.as_ref().unwrap()),
            v(json.workflow.as_ref().unwrap())
        );
    }

    #[test]
    fn every_documented_json_shape() {
        let sample: Value = serde_json::from_str(DW_JSON).unwrap();
        let detail = sample["JobsDetail"].clone();
        let shapes = [
            json!({"Response": sample.clone()}),
            json!({"Response": [sample.clone()]}),
            json!({"EventName": "TaskFinish", "JobsDetail": [detail.clone()]}),
            json!({"Response": {"EventName": "TaskFinish", "JobsDetail": [detail.clone()]}}),
            json!([sample.clone()]),
        ];
        for shape in shapes {
            let text = shape.to_string();
            let e = ok(&text);
            assert_eq!(e.event_name.as_deref(), Some("TaskFinish"), "{shape}");
            assert_eq!(vs(&e.jobs), vec![detail.clone()], "{shape}");
        }
        // Several jobs, in order; pretty-printed with a BOM and leading whitespace.
        let two = json!({"JobsDetail": [{"JobId": "a"}, {"JobId": "b"}]});
        let payload = format!(
            "\u{feff}\n  {}",
            serde_json::to_string_pretty(&two).unwrap()
        );
        let e = ok(&payload);
        assert_eq!(e.event_name, None);
        assert_eq!(
            vs(&e.jobs),
            vec![json!({"JobId": "a"}), json!({"JobId": "b"})]
        );
        // Numbers read as their text, as CI writes them in XML.
        let e = ok(r#"{"JobsDetail": {"JobId": "a", "Operation": {"JobLevel": 0}}}"#);
        assert_eq!(v(&e.jobs[0])["Operation"]["JobLevel"], "0");
    }

    #[test]
    fn several_jobs_in_xml() {
        let e = ok(
            "<?xml version=\"1.0\"?>\n<Response><JobsDetail><JobId>a</JobId></JobsDetail>\
                    <JobsDetail><JobId>b</JobId></JobsDetail></Response>",
        );
        let ids: Vec<_> = e
            .jobs
            .iter()
            .map(|j| j.text_at(&["JobId"]).unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn clean_errors() {
        let err = |p: &[u8]| parse_event(p).unwrap_err();
        assert!(matches!(err(b""), EventError::UnknownFormat));
        assert!(matches!(err(b"  \n"), EventError::UnknownFormat));
        assert!(matches!(err(b"TaskFinish"), EventError::UnknownFormat));
        assert!(matches!(err(b"\xff\xfe<Response/>"), EventError::NotUtf8));
        assert!(matches!(
            err(b"<Response>\xc3\x28</Response>"),
            EventError::NotUtf8
        ));
        assert!(matches!(
            err(b"{\"JobsDetail\": "),
            EventError::Malformed(_)
        ));
        assert!(matches!(
            err(b"<Response><JobsDetail>"),
            EventError::Malformed(_)
        ));
        assert!(matches!(
            err(ERROR_XML.as_bytes()),
            EventError::Malformed(_)
        ));
        assert!(matches!(
            err(b"<Response><Foo>1</Foo></Response>"),
            EventError::NoJobs
        ));
        assert!(matches!(err(b"<Response/>"), EventError::NoJobs));
        assert!(matches!(
            err(b"<Response><JobsDetail/></Response>"),
            EventError::NoJobs
        ));
        assert!(matches!(err(b"{}"), EventError::NoJobs));
        assert!(matches!(err(b"{\"Response\": \"\"}"), EventError::NoJobs));
        assert!(matches!(
            err(b"{\"JobsDetail\": \"x\"}"),
            EventError::NoJobs
        ));
        assert!(matches!(err(b"[]"), EventError::Malformed(_)));
        assert!(matches!(err(b"[{}, {}]"), EventError::Malformed(_)));
        assert!(matches!(err(b"\"str\""), EventError::UnknownFormat));
        assert!(matches!(err(b"[1]"), EventError::Malformed(_)));
    }

    #[test]
    fn size_limit_comes_first() {
        let mut big = DW_XML.as_bytes().to_vec();
        big.resize(6 * 1024 * 1024, b' ');
        assert!(matches!(parse_event(&big), Err(EventError::TooLarge(n)) if n == 6 * 1024 * 1024));
        // Even when it is not UTF-8.
        let junk = vec![0xffu8; MAX_EVENT_BYTES + 1];
        assert!(matches!(parse_event(&junk), Err(EventError::TooLarge(_))));
        // At the limit it is parsed (trailing whitespace is allowed).
        big.truncate(MAX_EVENT_BYTES);
        assert_eq!(parse_event(&big).unwrap().jobs.len(), 1);
    }

    #[test]
    fn hostile_nesting_and_entities() {
        let deep_xml = "<Response>".repeat(100_000);
        assert!(matches!(
            parse_event(deep_xml.as_bytes()),
            Err(EventError::Malformed(_))
        ));
        let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse_event(deep_json.as_bytes()),
            Err(EventError::Malformed(_))
        ));
        let deep_objects = format!(
            "{}1{}",
            "{\"JobsDetail\":".repeat(100_000),
            "}".repeat(100_000)
        );
        assert!(matches!(
            parse_event(deep_objects.as_bytes()),
            Err(EventError::Malformed(_))
        ));
        // Within serde_json's limit but under more than MAX_DEPTH object keys (JobsDetail + n × A).
        let nested = |n: usize| {
            format!(
                "{{\"JobsDetail\":{}\"x\"{}}}",
                "{\"A\":".repeat(n),
                "}".repeat(n)
            )
        };
        let deep = nested(MAX_DEPTH);
        match parse_event(deep.as_bytes()) {
            Err(EventError::Malformed(m)) => assert!(m.contains("deeper"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(parse_event(nested(MAX_DEPTH - 1).as_bytes()).is_ok());
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><Response><JobsDetail><JobId>&b;</JobId></JobsDetail></Response>"#;
        match parse_event(laughs.as_bytes()) {
            Err(EventError::Malformed(m)) => assert!(m.contains("DOCTYPE"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
