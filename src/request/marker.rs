//! The correlation marker: how a completion event finds its way back to the request that caused it,
//! and to the request's deadline record, without any shared state between worker replicas.
//!
//! The worker prepends `ciw2:<request_id, percent-encoded>;<deadline>;` to the `UserData` it sends to
//! CI; CI echoes `UserData` in every response and completion event. `<deadline>` is the position of
//! the request's deadline record on `pulsar.deadline_topic` (`<partition>.<ledger>.<entry>`, partition
//! `-1` on a topic that is not partitioned), so that whichever replica finishes the job can cancel the
//! record by acknowledging it (see `docs/design/replicas.md`); it is empty when there is none.
//! Decoding strips the marker, so the caller's own `UserData` comes back unchanged. The encoding keeps
//! the whole value printable ASCII (CI's rule for `UserData`) and unambiguous: `;` and `%` inside the
//! request id are encoded. `ciw1:<request_id>;` (0.4 and earlier: no deadline field) is still read.
//!
//! Example: request `order-42`, deadline at ledger 7 entry 12, caller data `caller data` →
//! `UserData` = `ciw2:order-42;-1.7.12;caller data`.

use crate::ci::rules::{is_printable_ascii, USER_DATA_MAX};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use std::fmt;
use std::str::FromStr;

/// Marker prefix; the digit versions the format.
pub const MARKER_PREFIX: &str = "ciw2:";
/// The format before deadline references; read, never written.
const MARKER_PREFIX_V1: &str = "ciw1:";

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

/// Where a request's deadline record is: enough to acknowledge it by id from any consumer of the
/// deadline subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeadlineRef {
    /// The partition of the deadline topic, `-1` when it is not partitioned.
    pub partition: i32,
    pub ledger: u64,
    pub entry: u64,
}

impl DeadlineRef {
    /// The longest a reference can be written (`-2147483648.` + two 20-digit numbers and a dot).
    pub const MAX_LEN: usize = 11 + 1 + 20 + 1 + 20;
}

impl fmt::Display for DeadlineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.partition, self.ledger, self.entry)
    }
}

impl FromStr for DeadlineRef {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.splitn(3, '.');
        let mut next = || parts.next().ok_or(());
        let partition = next()?.parse().map_err(|_| ())?;
        let ledger = next()?.parse().map_err(|_| ())?;
        let entry = next()?.parse().map_err(|_| ())?;
        Ok(DeadlineRef {
            partition,
            ledger,
            entry,
        })
    }
}

/// What a marker carries, read back from CI's `UserData`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decoded {
    /// The request the job was submitted for; `None` for a job this worker did not submit.
    pub request_id: Option<String>,
    /// The request's deadline record, when the job was submitted with one.
    pub deadline: Option<DeadlineRef>,
    /// The caller's own `UserData`.
    pub caller: Option<String>,
}

/// `UserData` to send to CI for `request_id`, carrying its deadline record's position and the
/// caller's own `user_data`.
pub fn encode(
    request_id: &str,
    deadline: Option<DeadlineRef>,
    user_data: Option<&str>,
) -> Result<String, MarkerError> {
    let caller = user_data.unwrap_or("");
    if !is_printable_ascii(caller) {
        return Err(MarkerError::NotPrintableAscii);
    }
    let deadline = deadline.map(|d| d.to_string()).unwrap_or_default();
    let value = format!(
        "{MARKER_PREFIX}{};{deadline};{caller}",
        utf8_percent_encode(request_id, MARKER_ESCAPE)
    );
    if value.len() > USER_DATA_MAX {
        return Err(MarkerError::TooLong(value.len()));
    }
    Ok(value)
}

/// Checks that `request_id` and `user_data` fit CI's `UserData` whatever deadline position the
/// request gets later (the marker is written once that record is stored).
pub fn check_fits(request_id: &str, user_data: Option<&str>) -> Result<(), MarkerError> {
    let widest = DeadlineRef {
        partition: i32::MIN,
        ledger: u64::MAX,
        entry: u64::MAX,
    };
    encode(request_id, Some(widest), user_data).map(drop)
}

/// Splits CI's `UserData` into what the marker carries and the caller's own `UserData`. Without a
/// marker the whole value is the caller's and there is no request id (a job this worker did not
/// submit).
pub fn decode(user_data: Option<&str>) -> Decoded {
    let Some(raw) = user_data else {
        return Decoded::default();
    };
    let request_id = |id: &str| {
        let id = percent_decode_str(id).decode_utf8().ok()?.into_owned();
        (!id.is_empty()).then_some(id)
    };
    let parsed = if let Some(rest) = raw.strip_prefix(MARKER_PREFIX) {
        rest.split_once(';').and_then(|(id, rest)| {
            let (deadline, caller) = rest.split_once(';')?;
            let deadline = match deadline {
                "" => None,
                d => Some(d.parse().ok()?),
            };
            Some((request_id(id)?, deadline, caller))
        })
    } else if let Some(rest) = raw.strip_prefix(MARKER_PREFIX_V1) {
        rest.split_once(';')
            .and_then(|(id, caller)| Some((request_id(id)?, None, caller)))
    } else {
        None
    };
    match parsed {
        Some((id, deadline, caller)) => Decoded {
            request_id: Some(id),
            deadline,
            caller: (!caller.is_empty()).then(|| caller.to_string()),
        },
        None => Decoded {
            caller: Some(raw.to_string()),
            ..Decoded::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: DeadlineRef = DeadlineRef {
        partition: -1,
        ledger: 7,
        entry: 12,
    };

    fn decoded(id: &str, deadline: Option<DeadlineRef>, caller: Option<&str>) -> Decoded {
        Decoded {
            request_id: Some(id.to_string()),
            deadline,
            caller: caller.map(String::from),
        }
    }

    #[test]
    fn round_trips_ids_deadlines_and_caller_data() {
        let partitioned = DeadlineRef {
            partition: 3,
            ledger: u64::MAX,
            entry: 0,
        };
        for (id, deadline, data) in [
            ("order-42", Some(AT), Some("caller data")),
            ("a;b%c/ d", Some(partitioned), Some("x;y")),
            ("订单-7", None, None),
            ("ciw2:nested;1.2.3;", Some(AT), Some("ciw2:fake;1.1.1;tail")),
        ] {
            let ud = encode(id, deadline, data).unwrap();
            assert!(is_printable_ascii(&ud), "{ud}");
            assert_eq!(decode(Some(&ud)), decoded(id, deadline, data));
        }
    }

    #[test]
    fn documented_example() {
        assert_eq!(
            encode("order-42", Some(AT), Some("caller data")).unwrap(),
            "ciw2:order-42;-1.7.12;caller data"
        );
    }

    #[test]
    fn reads_the_format_without_deadlines() {
        assert_eq!(
            decode(Some("ciw1:order-42;caller data")),
            decoded("order-42", None, Some("caller data"))
        );
        assert_eq!(decode(Some("ciw1:a%3Bb;")), decoded("a;b", None, None));
    }

    #[test]
    fn foreign_user_data_has_no_request() {
        let foreign = |raw: &str| Decoded {
            caller: Some(raw.into()),
            ..Decoded::default()
        };
        assert_eq!(decode(Some("This is my job")), foreign("This is my job"));
        assert_eq!(decode(None), Decoded::default());
        for raw in [
            "ciw1:no-separator",
            "ciw2:no-deadline-field",
            "ciw2:id;not-a-position;data",
            "ciw2:id;1.2;data",
            "ciw2:;1.2.3;data",
        ] {
            assert_eq!(decode(Some(raw)), foreign(raw), "{raw}");
        }
    }

    #[test]
    fn refuses_what_ci_would() {
        assert_eq!(
            encode("r", None, Some("tab\there")),
            Err(MarkerError::NotPrintableAscii)
        );
        assert!(matches!(
            encode("r", None, Some(&"x".repeat(1020))),
            Err(MarkerError::TooLong(_))
        ));
    }

    #[test]
    fn what_fits_fits_with_the_widest_deadline() {
        let room = USER_DATA_MAX - "ciw2:r;;".len() - DeadlineRef::MAX_LEN;
        assert!(check_fits("r", Some(&"x".repeat(room))).is_ok());
        assert!(check_fits("r", Some(&"x".repeat(room + 1))).is_err());
        let widest = DeadlineRef {
            partition: i32::MIN,
            ledger: u64::MAX,
            entry: u64::MAX,
        };
        assert_eq!(widest.to_string().len(), DeadlineRef::MAX_LEN);
    }
}
