//! CMQ API 2.0's answers (`cmq-receive-message.md`, `cmq-batch-receive-message.md`,
//! `cmq-delete-message.md`, `cmq-error-codes.md`): the JSON every action returns, the message a
//! receive hands out, and the result codes that matter to a reader.
//!
//! Every answer is HTTP 200 with `{"code": …, "message": …, "requestId": …, …}`; `code` 0 is success.
//! The TDMQ pages give `code` as a number, the 2017 pages show it as a string (`"0"`): both are read.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Result codes (`code`) a reader meets; the module codes (`10200`…) travel in `message`.
pub mod code {
    pub const SUCCESS: i64 = 0;
    /// Invalid or missing parameters (module codes 10000–10470), also "queue is not existed" on some
    /// pages (module code 10100, listed with 4440).
    pub const INVALID_PARAMETER: i64 = 4000;
    /// Authentication failed, or the SecretId does not exist.
    pub const AUTH_FAILED: i64 = 4100;
    pub const ACCOUNT_OVERDUE: i64 = 4300;
    pub const MESSAGE_TOO_LARGE: i64 = 4400;
    /// QPS throttling.
    pub const QPS_THROTTLED: i64 = 4420;
    pub const RECEIPT_HANDLE_INVALID: i64 = 4430;
    pub const QUEUE_NOT_EXIST: i64 = 4440;
    pub const QUEUE_EXISTS: i64 = 4460;
    /// "exceed interface frequency limit, please slow down".
    pub const FREQUENCY_LIMITED: i64 = 4480;
    pub const INTERNAL_ERROR: i64 = 6000;
    pub const DELETE_PARTIALLY_FAILED: i64 = 6010;
    pub const DELETE_ALL_FAILED: i64 = 6020;
    /// Too many inactive (received, not deleted) or delayed messages.
    pub const TOO_MANY_UNACKED: i64 = 6070;
    /// The queue is empty: "strictly speaking, this is not considered an error".
    pub const NO_MESSAGE: i64 = 7000;

    /// Codes worth the same request again after a pause: throttling and CMQ's own failures.
    pub fn is_transient(code: i64) -> bool {
        matches!(
            code,
            QPS_THROTTLED
                | FREQUENCY_LIMITED
                | INTERNAL_ERROR
                | DELETE_ALL_FAILED
                | TOO_MANY_UNACKED
        )
    }
}

/// The most messages one `BatchReceiveMessage` or `BatchDeleteMessage` may name.
pub const MAX_BATCH: usize = 16;
/// The longest long poll CMQ accepts, in seconds.
pub const MAX_POLLING_WAIT_SECONDS: u64 = 30;

/// One message as `ReceiveMessage` returns it (and each element of `BatchReceiveMessage`'s
/// `msgInfoList`). The fields the TDMQ page calls reserved may be missing (read as 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedMessage {
    pub msg_body: String,
    pub msg_id: String,
    /// Deletes the message; valid only until `next_visible_time`, and only the newest one.
    pub receipt_handle: String,
    #[serde(default)]
    pub enqueue_time: i64,
    #[serde(default)]
    pub first_dequeue_time: i64,
    #[serde(default)]
    pub next_visible_time: i64,
    /// How many times the message has been received, this time included (0: not given).
    #[serde(default)]
    pub dequeue_count: i64,
    /// Why the element could not be read as a message (then `msg_body` is the element as it came,
    /// and the ids are whatever could be found): the reader dead-letters it and deletes it, so that
    /// one odd element never holds up the others.
    #[serde(skip)]
    pub unreadable: Option<String>,
}

impl ReceivedMessage {
    /// Reads one element; never fails (see [`ReceivedMessage::unreadable`]).
    fn read(element: &Value) -> ReceivedMessage {
        match serde_json::from_value::<ReceivedMessage>(element.clone()) {
            Ok(message) => message,
            Err(e) => {
                let text = |name: &str| {
                    element
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let body = element.get("msgBody").and_then(Value::as_str);
                ReceivedMessage {
                    msg_body: body.map_or_else(|| element.to_string(), str::to_string),
                    msg_id: text("msgId"),
                    receipt_handle: text("receiptHandle"),
                    enqueue_time: 0,
                    first_dequeue_time: 0,
                    next_visible_time: 0,
                    dequeue_count: element
                        .get("dequeueCount")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                    unreadable: Some(format!("unreadable CMQ message: {e}")),
                }
            }
        }
    }
}

/// One element of `BatchDeleteMessage`'s `errorList`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteFailure {
    pub code: i64,
    pub message: String,
    pub receipt_handle: String,
}

/// An answer's common part and the rest of its fields.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: i64,
    pub message: String,
    pub request_id: String,
    pub fields: serde_json::Map<String, Value>,
}

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedAnswer(pub String);

impl Answer {
    /// Reads an answer body; `code` as a number or a numeric string.
    pub fn parse(body: &[u8]) -> Result<Answer, MalformedAnswer> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| MalformedAnswer(format!("not JSON: {e}")))?;
        let Value::Object(mut fields) = value else {
            return Err(MalformedAnswer("not a JSON object".into()));
        };
        let code = match fields.remove("code") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| MalformedAnswer("no numeric \"code\"".into()))?;
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let message = text(fields.remove("message"));
        let request_id = text(fields.remove("requestId"));
        Ok(Answer {
            code,
            message,
            request_id,
            fields,
        })
    }

    /// `msgInfoList` (BatchReceiveMessage) or the answer itself (ReceiveMessage) as messages; an
    /// element that is not a readable message is one with [`ReceivedMessage::unreadable`] set.
    pub fn messages(&self) -> Result<Vec<ReceivedMessage>, MalformedAnswer> {
        match self.fields.get("msgInfoList") {
            Some(Value::Array(list)) => Ok(list.iter().map(ReceivedMessage::read).collect()),
            Some(other) => Err(MalformedAnswer(format!("msgInfoList: not a list: {other}"))),
            None => Ok(vec![ReceivedMessage::read(&Value::Object(
                self.fields.clone(),
            ))]),
        }
    }

    /// `errorList` of a BatchDeleteMessage answer (empty when absent).
    pub fn delete_failures(&self) -> Result<Vec<DeleteFailure>, MalformedAnswer> {
        match self.fields.get("errorList") {
            Some(list) => serde_json::from_value(list.clone())
                .map_err(|e| MalformedAnswer(format!("errorList: {e}"))),
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_batch_receive_answer() {
        let body = br#"{
            "code": 0, "message": "", "requestId": "14534664555",
            "msgInfoList": [
                {"msgBody": "helloworld1", "msgId": "123345346", "receiptHandle": "283748239349283",
                 "enqueueTime": 1462351990, "firstDequeueTime": 1462352990,
                 "nextVisibleTime": 1462352999, "dequeueCount": 2},
                {"msgBody": "helloworld2", "msgId": "1233453456", "receiptHandle": "28374345763283",
                 "enqueueTime": 1462351990, "firstDequeueTime": 1462352990,
                 "nextVisibleTime": 1462352999, "dequeueCount": 2}
            ]}"#;
        let answer = Answer::parse(body).unwrap();
        assert_eq!(answer.code, code::SUCCESS);
        assert_eq!(answer.request_id, "14534664555");
        let messages = answer.messages().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].msg_body, "helloworld2");
        assert_eq!(messages[0].receipt_handle, "283748239349283");
        assert_eq!(messages[0].dequeue_count, 2);
    }

    #[test]
    fn reads_the_single_receive_and_the_partial_delete() {
        let one = Answer::parse(
            br#"{"code" : 0, "message" : "", "requestId":"14534664555", "msgBody":"helloworld1",
                 "msgId":"123345346", "receiptHandle": "283748239349283", "enqueueTime": 1462351990,
                 "firstDequeueTime": 1462352990, "nextVisibleTime": 1462352999, "dequeueCount": 2}"#,
        )
        .unwrap();
        assert_eq!(one.messages().unwrap()[0].msg_id, "123345346");
        let partial = Answer::parse(
            br#"{"code" : 6010, "message" : "delete message partially failed",
                 "requestId":"14534664555", "errorList": [{"code" : 4430,
                 "message" : "invalid receiptHandle", "receiptHandle":"4364564575"}]}"#,
        )
        .unwrap();
        assert_eq!(partial.code, code::DELETE_PARTIALLY_FAILED);
        let failures = partial.delete_failures().unwrap();
        assert_eq!(failures[0].receipt_handle, "4364564575");
        assert_eq!(failures[0].code, code::RECEIPT_HANDLE_INVALID);
    }

    #[test]
    fn reserved_fields_may_be_missing_and_an_odd_element_does_not_spoil_the_batch() {
        let answer = Answer::parse(
            br#"{"code": 0, "message": "", "requestId": "r",
                 "msgInfoList": [
                    {"msgBody": "<Response/>", "msgId": "m1", "receiptHandle": "h1"},
                    {"msgBody": 42, "msgId": "m2", "receiptHandle": "h2", "dequeueCount": 3},
                    {"msgId": "m3"}
                 ]}"#,
        )
        .unwrap();
        let messages = answer.messages().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].unreadable, None);
        assert_eq!(messages[0].dequeue_count, 0);
        assert_eq!(messages[0].first_dequeue_time, 0);
        let odd = &messages[1];
        assert!(
            odd.unreadable
                .as_deref()
                .unwrap()
                .contains("expected a string"),
            "{odd:?}"
        );
        assert_eq!(
            (odd.msg_id.as_str(), odd.receipt_handle.as_str()),
            ("m2", "h2")
        );
        assert_eq!(odd.dequeue_count, 3);
        assert!(
            odd.msg_body.contains("42"),
            "kept as it came: {}",
            odd.msg_body
        );
        assert!(messages[2].unreadable.is_some());
        assert_eq!(messages[2].receipt_handle, "");
        assert!(Answer::parse(br#"{"code": 0, "msgInfoList": 7}"#)
            .unwrap()
            .messages()
            .is_err());
    }

    #[test]
    fn code_may_be_a_string_and_must_be_there() {
        let legacy =
            Answer::parse(br#"{"code": "5100", "message": "(100004) incorrect projectId"}"#)
                .unwrap();
        assert_eq!(legacy.code, 5100);
        assert_eq!(legacy.request_id, "");
        assert!(Answer::parse(br#"{"message": "x"}"#).is_err());
        assert!(Answer::parse(b"<html>").is_err());
        assert!(Answer::parse(b"[]").is_err());
    }

    #[test]
    fn transient_codes() {
        for c in [4420, 4480, 6000, 6070] {
            assert!(code::is_transient(c), "{c}");
        }
        for c in [0, 4000, 4100, 4430, 4440, 7000] {
            assert!(!code::is_transient(c), "{c}");
        }
    }
}
