//! What a CMQ message's body holds: the event as CI wrote it, or Base64 of it. Pure. An ingress never
//! refuses a body it cannot read: the completion handler dead-letters it with the reason.

use base64::Engine;
use std::borrow::Cow;

/// The event in a CMQ message body. CI's TDMQ message body is not documented; the plausible reading
/// is the callback body itself (XML or JSON). A body that is neither but decodes from Base64 (what
/// the CMQ SDKs' `encoding` option sends) into XML or JSON is handled decoded.
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

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>j1</JobId>\
                       <State>Success</State></JobsDetail></Response>";

    #[test]
    fn bodies_are_read_as_they_came_or_base64_decoded() {
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
}
