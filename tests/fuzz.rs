//! Property tests ("fuzzing" with proptest) of everything that reads untrusted bytes: the request
//! parser and validator, the XML and JSON event parsers, and the normalizer. Each starts from the
//! seed corpus in `tests/fuzz-corpus/` (documented examples and known attacks) and also mutates it;
//! proptest keeps any failing case in `tests/fuzz.proptest-regressions` so it is replayed forever.
//!
//! Properties: nothing panics; what the parser refuses it refuses with an error; a readable request
//! validates into XML that CI's parser reads back, or is refused naming the field at fault; text
//! written into CI's XML comes back from CI's XML exactly as it went in (no injection survives
//! escaping).

mod common;

use ci_worker::callback::event::parse_event;
use ci_worker::ci::lists::is_list;
use ci_worker::ci::tree::Node;
use ci_worker::ci::xml;
use ci_worker::config::CiSettings;
use ci_worker::request::{marker, SubmitRequest};
use ci_worker::result::normalize::{normalize_event, normalize_job};
use ci_worker::result::RESULT_VERSION;
use common::{is_rfc3339_utc, JobRequest, BUCKET, REGION};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::Path;

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(kind);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 4, "corpus {kind} is missing");
    seeds
}

/// A seed, then byte-level damage: truncation, a flipped byte, an inserted run.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        0..seeds.len(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0u8..4,
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(i, at, byte, how, insert)| {
            let mut s = seeds[i].clone();
            if s.is_empty() {
                return insert;
            }
            let pos = at.index(s.len());
            match how {
                0 => s.truncate(pos),
                1 => s[pos] ^= byte | 1,
                2 => {
                    s.splice(pos..pos, insert);
                }
                _ => {}
            }
            s
        })
}

/// Arbitrary JSON trees a few levels deep (object-or-array, strings, numbers, nulls).
fn json_tree() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("JobsDetail".to_string()),
                    Just("Operation".to_string()),
                    Just("UserData".to_string()),
                    Just("State".to_string()),
                    Just("MediaInfo".to_string()),
                    Just("Input".to_string()),
                    Just("MediaResult".to_string()),
                    Just("OutputFile".to_string()),
                    Just("ObjectName".to_string()),
                    Just("Stream".to_string()),
                    Just("Video".to_string()),
                    "[A-Z][a-z]{0,6}".prop_map(String::from),
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Jobs for the validator: arbitrary trees (nearly all refused), and the documented watermark job
/// with one element replaced by an arbitrary tree or added (often valid, often refused by one rule).
fn any_job() -> impl Strategy<Value = Value> {
    const PATHS: &[&[&str]] = &[
        &["Tag"],
        &["Input"],
        &["Input", "Object"],
        &["Operation"],
        &["Operation", "UserData"],
        &["Operation", "JobLevel"],
        &["Operation", "DigitalWatermark"],
        &["Operation", "DigitalWatermark", "Message"],
        &["Operation", "Output", "Object"],
        &["CallBackFormat"],
        &["CallBackType"],
        &["QueueId"],
        &["Extra"],
    ];
    let documented = JobRequest::watermark("r", "m").json()["job"].clone();
    prop_oneof![
        json_tree(),
        (0..PATHS.len(), json_tree()).prop_map(move |(i, tree)| {
            let mut job = documented.clone();
            let (last, parents) = PATHS[i].split_last().unwrap();
            let parent = parents.iter().fold(&mut job, |at, key| &mut at[*key]);
            parent[*last] = tree;
            job
        }),
    ]
}

/// Printable ASCII with every XML metacharacter over-represented.
fn hostile_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("<".to_string()),
            Just(">".to_string()),
            Just("&".to_string()),
            Just("\"".to_string()),
            Just("'".to_string()),
            Just("]]>".to_string()),
            Just("<!ENTITY x SYSTEM \"file:///etc/passwd\">".to_string()),
            Just("&amp;".to_string()),
            "[ -~]{1,8}".prop_map(String::from),
        ],
        1..12,
    )
    .prop_map(|parts| parts.concat())
}

fn ci() -> CiSettings {
    CiSettings::default()
}

/// CI's JSON form of a tree (its JSON events are this of its XML ones), written apart from
/// `Node::canonicalize` and over serde_json's own tree: every scalar a string, empty strings, nulls
/// and what is left empty dropped, a one-element array its element. `None` when nothing is left.
fn ci_json_reference(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(Value::String(s.clone())),
        Value::Number(n) => Some(Value::String(n.to_string())),
        Value::Bool(b) => Some(Value::String(b.to_string())),
        Value::Object(map) => {
            let kept: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), ci_json_reference(v)?)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => {
            let mut kept: Vec<Value> = items.iter().filter_map(ci_json_reference).collect();
            match kept.len() {
                0 => None,
                1 => kept.pop(),
                _ => Some(Value::Array(kept)),
            }
        }
    }
}

/// The result's form of CI's element `name` (`Node::canonicalize_in`), written apart from it over
/// serde_json's tree: [`ci_json_reference`], except that a child the SDK types as a list
/// (`is_list(parent, child)`) is an array of its kept elements, nested arrays flattened, even of one.
fn result_tree_reference(v: &Value, name: &str) -> Option<Value> {
    match v {
        Value::Object(map) => {
            let kept: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| {
                    let tree = if is_list(name, k) {
                        list_reference(v, k)
                    } else {
                        result_tree_reference(v, k)
                    };
                    Some((k.clone(), tree?))
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => {
            let mut kept: Vec<Value> = items
                .iter()
                .filter_map(|item| result_tree_reference(item, name))
                .collect();
            match kept.len() {
                0 => None,
                1 => kept.pop(),
                _ => Some(Value::Array(kept)),
            }
        }
        scalar => ci_json_reference(scalar),
    }
}

fn list_reference(v: &Value, name: &str) -> Option<Value> {
    fn flatten(v: Value, out: &mut Vec<Value>) {
        match v {
            Value::Array(items) => items.into_iter().for_each(|i| flatten(i, out)),
            other => out.push(other),
        }
    }
    let items: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut kept = Vec::new();
    for item in items {
        if let Some(tree) = result_tree_reference(item, name) {
            flatten(tree, &mut kept);
        }
    }
    (!kept.is_empty()).then_some(Value::Array(kept))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn request_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(req) = SubmitRequest::parse(&bytes) {
            let _ = req.validate(&ci());
        }
    }

    #[test]
    fn mutated_requests_never_panic(bytes in mutated(corpus("requests"))) {
        if let Ok(req) = SubmitRequest::parse(&bytes) {
            prop_assert!(!req.request_id.trim().is_empty());
            if let Ok(valid) = req.validate(&ci()) {
                // Whatever validates must also be writable as CI's XML.
                prop_assert!(xml::to_xml("Request", &valid.ci_job).is_ok());
            }
        }
    }

    /// A readable request either validates into a `<Request>` that CI's XML parser reads back with
    /// the marker naming the request and the caller's `UserData` after it, or is refused as
    /// `InvalidRequest` with a message that names the field at fault.
    #[test]
    fn any_json_request_validates_or_refuses(job in any_job(), id in ".{1,20}") {
        prop_assume!(!id.trim().is_empty());
        let payload = json!({"request_id": id, "bucket": BUCKET, "region": REGION, "job": job}).to_string();
        let req = SubmitRequest::parse(payload.as_bytes()).unwrap();
        prop_assert_eq!(&req.request_id, &id);
        match req.validate(&ci()) {
            Ok(valid) => {
                prop_assert_eq!(&valid.request_id, &id);
                let caller = job["Operation"]["UserData"].as_str();
                prop_assert_eq!(valid.user_data.as_deref(), caller);
                let body = xml::to_xml("Request", &valid.ci_job).unwrap();
                let doc = xml::parse(&body).unwrap();
                prop_assert_eq!(&doc.root, "Request");
                prop_assert_eq!(doc.node.text_at(&["Tag"]), valid.ci_job.text_at(&["Tag"]));
                let sent = doc.node.text_at(&["Operation", "UserData"]);
                let caller = caller.filter(|u| !u.is_empty()).map(String::from);
                let decoded = marker::decode(sent);
                prop_assert_eq!(decoded.request_id, Some(id.clone()));
                prop_assert_eq!(decoded.caller, caller);
                prop_assert!(doc.node.text_at(&["CallBackType"]).is_some(), "{}", body);
            }
            Err(refused) => {
                prop_assert_eq!(&refused.code, "InvalidRequest");
                if !job.is_object() {
                    prop_assert!(refused.message.starts_with("job must be an object"), "{}", refused.message);
                }
                // `job.<path>: rule`, `job.<key> is reserved`, `job cannot be written as CI's XML`,
                // or the marker's `UserData …` (the caller's job.Operation.UserData).
                prop_assert!(
                    ["job.", "job ", "UserData "].iter().any(|p| refused.message.starts_with(p)),
                    "no field named: {}", refused.message
                );
            }
        }
    }

    /// Text fields survive the trip into CI's XML and back exactly: no metacharacter escapes.
    #[test]
    fn text_round_trips_through_ci_xml(object in hostile_text(), user_data in hostile_text()) {
        let mut payload = JobRequest::watermark("r", "m").input(&object).output("o").json();
        payload["job"]["Operation"]["Output"]["Bucket"] = json!("b-1");
        payload["job"]["Operation"]["UserData"] = json!(user_data);
        let payload = payload.to_string();
        let valid = SubmitRequest::parse(payload.as_bytes()).unwrap().validate(&ci());
        let Ok(valid) = valid else { return Ok(()); };
        let body = xml::to_xml("Request", &valid.ci_job).unwrap();
        let doc = xml::parse(&body).unwrap();
        prop_assert_eq!(&doc.root, "Request");
        let (read, sent) = (doc.node.into_value(), valid.ci_job.clone().into_value());
        prop_assert_eq!(&read["Input"]["Object"], &json!(object));
        prop_assert_eq!(&read["Operation"]["UserData"], &sent["Operation"]["UserData"]);
        prop_assert_eq!(read.as_object().unwrap().len(), sent.as_object().unwrap().len());
    }

    #[test]
    fn event_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(event) = parse_event(&bytes) {
            let _ = normalize_event(&event);
        }
    }

    #[test]
    fn mutated_events_parse_or_refuse(bytes in mutated(corpus("events"))) {
        if let Ok(event) = parse_event(&bytes) {
            for result in normalize_event(&event) {
                // Times are RFC 3339 UTC or absent, whatever CI wrote.
                for t in [&result.created_at, &result.started_at, &result.finished_at].into_iter().flatten() {
                    prop_assert!(is_rfc3339_utc(t), "{}", t);
                }
            }
        }
    }

    #[test]
    fn normalizer_takes_any_tree(detail in json_tree()) {
        let result = normalize_job(&Node::from_value(&detail));
        prop_assert_eq!(result.version, RESULT_VERSION);
        // The media trees are CI's JSON conversion of what came with the SDK's list fields always
        // arrays (the reference above), byte for byte, or null when that is not a non-empty object.
        // A `JobsDetail` or an `Operation` written as `[{…}]` counts by its first element, as CI's
        // JSON may write it.
        let job = match &detail {
            Value::Array(items) => items.first(),
            other => Some(other),
        };
        let operation = job
            .and_then(|j| j.get("Operation"))
            .and_then(|o| match o {
                Value::Array(items) => items.first(),
                other => Some(other),
            })
            .filter(|o| o.is_object());
        for (key, got) in [("MediaInfo", &result.media_info), ("MediaResult", &result.media_result)] {
            let expected = operation
                .and_then(|o| o.get(key))
                .and_then(|tree| result_tree_reference(tree, key))
                .filter(Value::is_object)
                .map(|tree| tree.to_string());
            prop_assert_eq!(got.as_ref().map(|t| t.json().to_string()), expected);
        }
        // `operation` is the rest of it but for UserData, in the same form.
        let expected = operation
            .map(|o| {
                let mut rest = o.clone();
                for key in ["MediaInfo", "MediaResult", "UserData"] {
                    // `shift_remove`: the others keep their order (`remove` swaps the last in).
                    rest.as_object_mut().unwrap().shift_remove(key);
                }
                rest
            })
            .and_then(|rest| result_tree_reference(&rest, "Operation"))
            .filter(Value::is_object)
            .map(|tree| tree.to_string());
        prop_assert_eq!(result.operation.as_ref().map(|t| t.json().to_string()), expected);
        // Read from an event's bytes or from a `Value`, a job gives the same result.
        let wrapped = json!({"EventName": "TaskFinish", "JobsDetail": detail});
        if let Ok(event) = parse_event(wrapped.to_string().as_bytes()) {
            let results = normalize_event(&event);
            if detail.is_object() {
                prop_assert_eq!(results.len(), 1);
                prop_assert_eq!(results[0].to_json(), result.to_json());
            }
        }
    }

    /// `Node::canonicalize` is CI's JSON conversion as the reference writes it, key order included.
    #[test]
    fn canonical_form_is_the_reference(tree in json_tree()) {
        let mut node = Node::from_value(&tree);
        let kept = node.canonicalize();
        let expected = ci_json_reference(&tree);
        prop_assert_eq!(kept, expected.is_some());
        prop_assert_eq!(
            serde_json::to_string(&node).unwrap(),
            expected.unwrap_or(Value::Null).to_string()
        );
    }

    /// The same of trees read from CI's XML (repeated elements, mixed content, empty leaves).
    #[test]
    fn canonical_form_of_xml_events_is_the_reference(bytes in mutated(corpus("events"))) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(doc) = xml::parse(&text) {
            let expected = ci_json_reference(&doc.node.clone().into_value());
            let mut node = doc.node;
            prop_assert_eq!(node.canonicalize(), expected.is_some());
            prop_assert_eq!(
                serde_json::to_string(&node).unwrap(),
                expected.unwrap_or(Value::Null).to_string()
            );
        }
    }

    #[test]
    fn json_events_read_as_values_do(bytes in mutated(corpus("events"))) {
        // The borrowed tree and serde_json's own `Value` accept the same texts and read them alike.
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let node = serde_json::from_str::<Node>(text);
            let value = serde_json::from_str::<Value>(text);
            prop_assert_eq!(node.is_ok(), value.is_ok());
            if let (Ok(node), Ok(value)) = (node, value) {
                prop_assert_eq!(node, Node::from_value(&value));
            }
        }
    }
}

#[test]
fn every_seed_is_handled() {
    let mut writable = 0;
    for seed in corpus("requests") {
        if let Ok(req) = SubmitRequest::parse(&seed) {
            if let Ok(valid) = req.validate(&ci()) {
                assert!(xml::to_xml("Request", &valid.ci_job).is_ok());
                writable += 1;
            }
        }
    }
    // The documented request and the injection (escaped, not refused) validate; the wrong types and
    // the names and characters XML cannot carry are refused.
    assert_eq!(
        writable, 2,
        "documented and injection seeds validate, the rest are refused"
    );
    let mut refused = 0;
    for seed in corpus("events") {
        match parse_event(&seed) {
            Ok(event) => assert!(!normalize_event(&event).is_empty()),
            Err(_) => refused += 1,
        }
    }
    // The attacks (entities, nesting) are refused; the documented events are read.
    assert!(refused >= 2, "attacks must be refused");
}

#[test]
fn oversized_messages_are_refused_not_parsed() {
    let big = vec![b' '; 5 * 1024 * 1024 + 1];
    assert!(SubmitRequest::parse(&big).is_err());
    assert!(parse_event(&big).is_err());
}
