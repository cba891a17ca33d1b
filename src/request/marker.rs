//! The correlation marker: how a completion event finds its way back to the request that caused it
//! without any shared state between worker replicas.
//!
//! The worker prepends `ciw1:<request_id, percent-encoded>;` to the `UserData` it sends to CI; CI echoes
//! `UserData` in every response and completion event. Decoding strips the marker, so the caller's own
//! `UserData` comes back unchanged. The encoding keeps the whole value printable ASCII (CI's rule for
//! `UserData`) and unambiguous: `;` and `%` inside the request id are encoded.
//!
//! Example: request `order-42` with caller data `caller data` → `UserData` = `ciw1:order-42;caller data`.

use crate::ci::rules::{is_printable_ascii, USER_DATA_MAX};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// Marker prefix; the digit versions the format.
pub const MARKER_PREFIX: &str = "ciw1:";

/// Everything but unreserved URL characters is encoded, so the marker is printable ASCII and has no `;`.
const MARKER_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'\'')
    .add(b';')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'/')
    .add(b'+')
    .add(b'=')
    .add(b',');

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MarkerError {
    #[error("UserData must be printable ASCII (CI's rule)")]
    NotPrintableAscii,
    #[error("UserData with the correlation marker is {0} characters; CI allows {USER_DATA_MAX}")]
    TooLong(usize),
}

/// `UserData` to send to CI for `request_id`, carrying the caller's own `user_data`.
pub fn encode(request_id: &str, user_data: Option<&str>) -> Result<String, MarkerError> {
    let caller = user_data.unwrap_or("");
    if !is_printable_ascii(caller) {
        return Err(MarkerError::NotPrintableAscii);
    }
    let value = format!(
        "{MARKER_PREFIX}{};{caller}",
        utf8_percent_encode(request_id, MARKER_ESCAPE)
    );
    if value.len() > USER_DATA_MAX {
        return Err(MarkerError::TooLong(value.len()));
    }
    Ok(value)
}

/// Splits CI's `UserData` into (request id, caller's own `UserData`). Without a marker the whole value is
/// the caller's and there is no request id (a job this worker did not submit).
pub fn decode(user_data: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(raw) = user_data else {
        return (None, None);
    };
    let parsed = raw
        .strip_prefix(MARKER_PREFIX)
        .and_then(|rest| rest.split_once(';'))
        .and_then(|(id, caller)| {
            let id = percent_decode_str(id).decode_utf8().ok()?.into_owned();
            (!id.is_empty()).then_some((id, caller))
        });
    match parsed {
        Some((id, caller)) => (Some(id), (!caller.is_empty()).then(|| caller.to_string())),
        None => (None, Some(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_ids_and_caller_data() {
        for (id, data) in [
            ("order-42", Some("caller data")),
            ("a;b%c/ d", Some("x;y")),
            ("订单-7", None),
            ("ciw1:nested;", Some("ciw1:fake;tail")),
        ] {
            let ud = encode(id, data).unwrap();
            assert!(is_printable_ascii(&ud), "{ud}");
            assert_eq!(
                decode(Some(&ud)),
                (Some(id.to_string()), data.map(String::from))
            );
        }
    }

    #[test]
    fn documented_example() {
        assert_eq!(
            encode("order-42", Some("caller data")).unwrap(),
            "ciw1:order-42;caller data"
        );
    }

    #[test]
    fn foreign_user_data_has_no_request() {
        assert_eq!(
            decode(Some("This is my job")),
            (None, Some("This is my job".into()))
        );
        assert_eq!(decode(None), (None, None));
        assert_eq!(
            decode(Some("ciw1:no-separator")),
            (None, Some("ciw1:no-separator".into()))
        );
    }

    #[test]
    fn refuses_what_ci_would() {
        assert_eq!(
            encode("r", Some("tab\there")),
            Err(MarkerError::NotPrintableAscii)
        );
        assert!(matches!(
            encode("r", Some(&"x".repeat(1020))),
            Err(MarkerError::TooLong(_))
        ));
    }
}
