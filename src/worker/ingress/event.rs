//! What an ingress (the `cmq` reader, the `http` endpoint) decides about an incoming event before it
//! stores it in the callback topic: the bytes to store and the key to store them under. Pure.
//!
//! The event is stored as it came; parsing, dead letters and duplicate suppression stay with the
//! completion path, which reads the callback topic. An ingress only reads the job ID for the key (so
//! that a keyed subscription keeps one job's events together) and never refuses an event it cannot
//! read: the completion path dead-letters it with the reason.

use crate::callback::event::parse_event;
use base64::Engine;
use std::borrow::Cow;

/// The event in a CMQ message body. CI's TDMQ message body is not documented; the plausible reading
/// is the callback body itself (XML or JSON). A body that is neither but decodes from Base64 (what
/// the CMQ SDKs' `encoding` option sends) into XML or JSON is stored decoded.
pub fn event_bytes(msg_body: &str) -> Cow<'_, [u8]> {
    if looks_like_event(msg_body.as_bytes()) {
        return Cow::Borrowed(msg_body.as_bytes());
    }
    match base64::engine::general_purpose::STANDARD.decode(msg_body.trim()) {
        Ok(decoded) if looks_like_event(&decoded) => Cow::Owned(decoded),
        _ => Cow::Borrowed(msg_body.as_bytes()),
    }
}

fn looks_like_event(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'<' | b'{' | b'[')
    )
}

/// The key to store an event under: its first job's `JobId` (a workflow event's `RunId`), when the
/// event can be read.
pub fn event_key(payload: &[u8]) -> Option<String> {
    let event = parse_event(payload).ok()?;
    let id = match event.jobs.first() {
        Some(job) => job.text_at(&["JobId"]),
        None => event.workflow.as_ref().and_then(|w| w.text_at(&["RunId"])),
    }?;
    (!id.is_empty()).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>j1</JobId>\
                       <State>Success</State></JobsDetail></Response>";

    #[test]
    fn bodies_are_stored_as_they_came_or_base64_decoded() {
        assert_eq!(&*event_bytes(XML), XML.as_bytes());
        let json = r#" {"EventName":"TaskFinish","JobsDetail":{"JobId":"j2"}}"#;
        assert!(matches!(event_bytes(json), Cow::Borrowed(_)));
        let encoded = base64::engine::general_purpose::STANDARD.encode(XML);
        assert_eq!(&*event_bytes(&encoded), XML.as_bytes());
        // Not an event either way: kept as it is, for the completion path to dead-letter.
        assert_eq!(&*event_bytes("hello"), b"hello");
        let not_event = base64::engine::general_purpose::STANDARD.encode("hello");
        assert_eq!(&*event_bytes(&not_event), not_event.as_bytes());
    }

    #[test]
    fn the_key_is_the_first_job_id() {
        assert_eq!(event_key(XML.as_bytes()).as_deref(), Some("j1"));
        let json = br#"{"EventName":"TaskFinish","JobsDetail":[{"JobId":"a"},{"JobId":"b"}]}"#;
        assert_eq!(event_key(json).as_deref(), Some("a"));
        let workflow = br#"{"EventName":"WorkflowFinish","WorkflowExecution":{"RunId":"r1"}}"#;
        assert_eq!(event_key(workflow).as_deref(), Some("r1"));
        assert_eq!(
            event_key(b"<Response><JobsDetail><State>x</State></JobsDetail></Response>"),
            None
        );
        assert_eq!(event_key(b"garbage"), None);
    }
}
