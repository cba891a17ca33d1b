//! The job-submission request (JSON on `pulsar.request_topic`; `schemas/request.schema.json` is the
//! contract) and how it becomes CI's `<Request>`.
//!
//! Two kinds of bad input, handled differently on purpose:
//! - [`Unreadable`]: not JSON, not an object, no usable `request_id`. Nobody can be told about it through
//!   a result (results are keyed by `request_id`), so it goes to the dead-letter topic untouched.
//! - [`Rejection`]: a well-formed request that cannot be submitted (validation, CI's refusal). It has a
//!   `request_id`, so the caller gets a `rejected` result saying why.

pub mod marker;

use crate::ci::rules::{validate_job, CallbackType};
use crate::ci::tree::Node;
use crate::ci::xml;
use crate::config::CiSettings;
use serde_json::Value;

/// TDMQ's message size limit; a larger request cannot have come from a real producer.
pub const MAX_REQUEST_BYTES: usize = 5 * 1024 * 1024;
/// Longest accepted `request_id` (it travels in CI's 1024-character `UserData`).
pub const MAX_REQUEST_ID: usize = 256;

/// Elements of CI's `<Request>` the worker owns: where and how CI reports the job's completion
/// (`CallBackType`, `CallBackMqConfig`, `CallBack`, and `CallBackKafkaConfig`, the SDKs' Kafka
/// callback) and the kind of queue it runs on (`QueueType`, which the worker's queue-scoped marker
/// checks rely on). A request that sets one is rejected, naming it; the worker's value never
/// silently replaces the caller's.
pub const RESERVED_JOB_KEYS: [&str; 5] = [
    "CallBackType",
    "CallBackMqConfig",
    "CallBack",
    "CallBackKafkaConfig",
    "QueueType",
];

/// A request that cannot be answered with a result: dead-lettered with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// A request refused before or by CI: becomes a `rejected` result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// CI's error code, or `InvalidRequest` when the worker refused it.
    pub code: String,
    pub message: String,
}

impl Rejection {
    pub fn invalid(message: impl Into<String>) -> Rejection {
        Rejection {
            code: "InvalidRequest".into(),
            message: message.into(),
        }
    }
}

/// A request with a readable `request_id`; the rest is checked by [`SubmitRequest::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitRequest {
    pub request_id: String,
    pub bucket: Option<String>,
    pub region: Option<String>,
    /// CI's `<Request>` as the caller's JSON (the dict Tencent's Python SDK takes), as read.
    pub job: Value,
}

/// A request ready to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub request_id: String,
    pub bucket: String,
    pub region: String,
    /// The caller's `UserData` (to restore in results).
    pub user_data: Option<String>,
    /// The `<Request>` to send: the caller's job plus callback settings and the correlation marker.
    pub ci_job: Node<'static>,
}

impl ValidRequest {
    /// Writes the position of the request's deadline record into the correlation marker, so that
    /// whichever replica finishes the job can cancel the record (`validate` checked that it fits).
    pub fn set_deadline(&mut self, deadline: marker::DeadlineRef) {
        let user_data = marker::encode(&self.request_id, Some(deadline), self.user_data.as_deref())
            .expect("validate checked that the widest deadline fits");
        if let Some(op) = self.ci_job.get_mut("Operation") {
            op.insert("UserData", user_data.into());
        }
    }

    /// The deadline record the correlation marker names, if any.
    pub fn deadline(&self) -> Option<marker::DeadlineRef> {
        marker::decode(self.ci_job.text_at(&["Operation", "UserData"])).deadline
    }
}

impl SubmitRequest {
    /// Reads a request message. Only problems that leave no `request_id` are errors here.
    pub fn parse(payload: &[u8]) -> Result<SubmitRequest, Unreadable> {
        if payload.len() > MAX_REQUEST_BYTES {
            return Err(Unreadable(format!(
                "request is {} bytes, over the {MAX_REQUEST_BYTES}-byte limit",
                payload.len()
            )));
        }
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| Unreadable(format!("request is not valid JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(Unreadable("request is not a JSON object".into()));
        };
        let request_id = match map.remove("request_id") {
            Some(Value::String(id)) if !id.trim().is_empty() && id.len() <= MAX_REQUEST_ID => id,
            Some(Value::String(id)) if id.len() > MAX_REQUEST_ID => {
                return Err(Unreadable(format!(
                    "request_id is {} bytes, over {MAX_REQUEST_ID}",
                    id.len()
                )))
            }
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(Unreadable("request_id must be a non-empty string".into())),
            None => return Err(Unreadable("request has no request_id".into())),
        };
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Ok(SubmitRequest {
            request_id,
            bucket: text(map.remove("bucket")),
            region: text(map.remove("region")),
            job: map.remove("job").unwrap_or(Value::Null),
        })
    }

    /// Checks the request and builds CI's `<Request>`: the caller's job, then `QueueId`,
    /// `CallBackFormat`, `CallBackType` and `CallBackMqConfig` (TDMQ), `CallBackKafkaConfig` (Kafka) or `CallBack` (Url) from configuration (a value in the
    /// job wins for the format and the queue), with the correlation marker in `Operation.UserData`.
    pub fn validate(&self, ci: &CiSettings) -> Result<ValidRequest, Rejection> {
        let bucket = self
            .bucket
            .clone()
            .ok_or_else(|| Rejection::invalid("bucket is required"))?;
        if !is_bucket_name(&bucket) {
            return Err(Rejection::invalid(format!(
                "bucket {bucket:?} is not of the form <BucketName-APPID>"
            )));
        }
        let region = self
            .region
            .clone()
            .ok_or_else(|| Rejection::invalid("region is required"))?;
        if !is_region(&region) {
            return Err(Rejection::invalid(format!(
                "region {region:?} is not a COS region such as ap-guangzhou"
            )));
        }
        let Value::Object(job) = &self.job else {
            return Err(Rejection::invalid(
                "job must be an object (CI's <Request> as JSON)",
            ));
        };
        if let Some(reserved) = RESERVED_JOB_KEYS.iter().find(|k| job.contains_key(**k)) {
            return Err(Rejection::invalid(format!(
                "job.{reserved} is reserved: the worker sets the callback and queue settings \
                 from its configuration; remove it from the request"
            )));
        }
        let user_data = job
            .get("Operation")
            .and_then(|o| o.get("UserData"))
            .map(|u| match u {
                Value::String(s) => Ok(s.clone()),
                other => Err(Rejection::invalid(format!(
                    "job.Operation.UserData must be a string, not {other}"
                ))),
            })
            .transpose()?;
        marker::check_fits(&self.request_id, user_data.as_deref())
            .map_err(|e| Rejection::invalid(e.to_string()))?;
        let marker = marker::encode(&self.request_id, None, user_data.as_deref())
            .map_err(|e| Rejection::invalid(e.to_string()))?;

        // From here on the job is CI's tree: its rules and its XML writer read nothing else.
        let mut ci_job = Node::from_value(&self.job).into_owned();
        if let Some(op) = ci_job.get_mut("Operation") {
            op.insert("UserData", marker.into());
        }
        if !ci.queue_id.is_empty() && !job.contains_key("QueueId") {
            ci_job.insert("QueueId", ci.queue_id.clone().into());
        }
        if !job.contains_key("CallBackFormat") {
            ci_job.insert("CallBackFormat", ci.callback_format.as_str().into());
        }
        ci_job.insert("CallBackType", ci.callback_type.as_str().into());
        match ci.callback_type {
            CallbackType::Tdmq => {
                let mq = Node::Map(vec![
                    ("MqRegion".into(), ci.mq_region.as_str().into()),
                    ("MqMode".into(), ci.mq_mode.as_str().into()),
                    ("MqName".into(), ci.mq_name.clone().into()),
                ]);
                ci_job.insert("CallBackMqConfig", mq);
            }
            // Beside `CallBackType`, as cos-go-sdk-v5's `CreateMediaJobsOptions` places it
            // (`CallBackKafkaConfig *KafkaConfig`, `ci_media.go`).
            CallbackType::Kafka => {
                let kafka = Node::Map(vec![
                    ("Region".into(), ci.kafka_region.clone().into()),
                    ("InstanceId".into(), ci.kafka_instance_id.clone().into()),
                    ("Topic".into(), ci.kafka_topic.clone().into()),
                ]);
                ci_job.insert("CallBackKafkaConfig", kafka);
            }
            CallbackType::Url => ci_job.insert(
                "CallBack",
                ci.callback_url
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string)
                    .into(),
            ),
        }

        validate_job(&ci_job).map_err(|v| {
            // The marker is the worker's; report the caller's own limit instead of CI's raw one.
            Rejection::invalid(format!(
                "job.{}",
                v.to_string().trim_start_matches("Request.")
            ))
        })?;
        // Names and text XML cannot carry (a space in a key, a control character) would otherwise
        // pass here and fail only at submission time.
        xml::to_xml("Request", &ci_job)
            .map_err(|e| Rejection::invalid(format!("job cannot be written as CI's XML: {e}")))?;
        Ok(ValidRequest {
            request_id: self.request_id.clone(),
            bucket,
            region,
            user_data,
            ci_job,
        })
    }
}

/// `<BucketName-APPID>`: lower-case letters, digits and `-`, ending in `-<digits>`.
pub fn is_bucket_name(s: &str) -> bool {
    let Some((name, appid)) = s.rsplit_once('-') else {
        return false;
    };
    !name.is_empty()
        && s.len() <= 63
        && !appid.is_empty()
        && appid.bytes().all(|b| b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A COS region id such as `ap-guangzhou` (it becomes part of a host name).
pub use crate::ci::rules::is_region;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Mutation = Box<dyn Fn(&mut Value)>;

    const EXAMPLE: &str = r#"{"request_id": "order-42", "bucket": "examplebucket-1250000000", "region": "ap-guangzhou",
 "job": {"Tag": "DigitalWatermark", "Input": {"Object": "input/demo.mp4"},
         "Operation": {"DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
                       "Output": {"Region": "ap-guangzhou", "Bucket": "examplebucket-1250000000", "Object": "output/out.mp4"},
                       "UserData": "caller data", "JobLevel": "0"}}}"#;

    fn ci() -> CiSettings {
        CiSettings {
            queue_id: "p0123".into(),
            ..CiSettings::default()
        }
    }

    #[test]
    fn the_documented_request_becomes_ci_request() {
        let req = SubmitRequest::parse(EXAMPLE.as_bytes()).unwrap();
        let valid = req.validate(&ci()).unwrap();
        assert_eq!(valid.request_id, "order-42");
        assert_eq!(valid.user_data.as_deref(), Some("caller data"));
        let job = &valid.ci_job.clone().into_value();
        assert_eq!(job["Operation"]["UserData"], "ciw2:order-42;;caller data");
        assert_eq!(job["CallBackType"], "TDMQ");
        assert_eq!(job["CallBackFormat"], "JSON");
        assert_eq!(job["QueueId"], "p0123");
        assert_eq!(
            job["CallBackMqConfig"],
            json!({"MqRegion": "gz", "MqMode": "Queue", "MqName": "ci-callbacks"})
        );
        let keys: Vec<&str> = job
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "Tag",
                "Input",
                "Operation",
                "QueueId",
                "CallBackFormat",
                "CallBackType",
                "CallBackMqConfig"
            ]
        );
    }

    /// The element names and their order are cos-go-sdk-v5's (`KafkaConfig{Region, InstanceId,
    /// Topic}` as `CallBackKafkaConfig`, after `CallBackType`).
    #[test]
    fn a_kafka_callback_is_written_as_the_sdks_write_it() {
        let ci = CiSettings {
            callback_type: CallbackType::Kafka,
            kafka_region: "ap-chongqing".into(),
            kafka_instance_id: "ckafka-abc".into(),
            kafka_topic: "doc-test".into(),
            ..ci()
        };
        let valid = SubmitRequest::parse(EXAMPLE.as_bytes())
            .unwrap()
            .validate(&ci)
            .unwrap();
        let xml = xml::to_xml("Request", &valid.ci_job).unwrap();
        assert!(
            xml.ends_with(
                "<CallBackFormat>JSON</CallBackFormat><CallBackType>Kafka</CallBackType>\
                 <CallBackKafkaConfig><Region>ap-chongqing</Region><InstanceId>ckafka-abc</InstanceId>\
                 <Topic>doc-test</Topic></CallBackKafkaConfig></Request>"
            ),
            "{xml}"
        );
        assert!(!xml.contains("CallBackMqConfig"), "{xml}");
    }

    #[test]
    fn job_values_win_for_format_and_queue() {
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        v["job"]["CallBackFormat"] = json!("XML");
        v["job"]["QueueId"] = json!("pmine");
        let valid = SubmitRequest::parse(v.to_string().as_bytes())
            .unwrap()
            .validate(&ci())
            .unwrap();
        assert_eq!(valid.ci_job.text_at(&["CallBackFormat"]), Some("XML"));
        assert_eq!(valid.ci_job.text_at(&["QueueId"]), Some("pmine"));
    }

    #[test]
    fn inputs_without_object_are_accepted() {
        for input in [
            json!({"Url": "https://example.com/in/a.mp4"}),
            json!({"Vod": {"FileId": "5285890799710173650", "SubAppId": "1500000"}}),
        ] {
            let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
            v["job"]["Input"] = input.clone();
            let valid = SubmitRequest::parse(v.to_string().as_bytes())
                .unwrap()
                .validate(&ci())
                .unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(valid.ci_job.clone().into_value()["Input"], input);
            assert_eq!(valid.ci_job.text_at(&["Input", "Object"]), None);
        }
        // A Tag whose sources are in Operation needs no Input at all.
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        v["job"] = json!({"Tag": "Tts", "Operation": {"TtsConfig": {"Input": "hello", "InputType": "Text"},
                          "Output": {"Region": "ap-guangzhou", "Bucket": "examplebucket-1250000000", "Object": "out.mp3"}}});
        let valid = SubmitRequest::parse(v.to_string().as_bytes())
            .unwrap()
            .validate(&ci())
            .unwrap();
        assert!(valid.ci_job.get("Input").is_none());
    }

    #[test]
    fn unreadable_requests_are_for_the_dead_letter_topic() {
        for (payload, reason) in [
            (&b"not json"[..], "not valid JSON"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"job\": {}}", "no request_id"),
            (b"{\"request_id\": \"  \"}", "non-empty string"),
            (b"{\"request_id\": {}}", "non-empty string"),
            (b"\xff\xfe{}", "not valid JSON"),
        ] {
            let err = SubmitRequest::parse(payload).unwrap_err();
            assert!(err.0.contains(reason), "{err}");
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(SubmitRequest::parse(&big).unwrap_err().0.contains("limit"));
    }

    #[test]
    fn invalid_requests_are_rejected_with_a_reason() {
        let base: Value = serde_json::from_str(EXAMPLE).unwrap();
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "bucket is required",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("bucket");
                }),
            ),
            (
                "BucketName-APPID",
                Box::new(|v| v["bucket"] = json!("Bad_Bucket")),
            ),
            (
                "region",
                Box::new(|v| v["region"] = json!("guangzhou.evil.com/x")),
            ),
            ("job must be an object", Box::new(|v| v["job"] = json!("x"))),
            (
                "job.CallBackType is reserved",
                Box::new(|v| v["job"]["CallBackType"] = json!("Url")),
            ),
            (
                "job.CallBackMqConfig is reserved",
                Box::new(|v| v["job"]["CallBackMqConfig"] = json!({"MqName": "q"})),
            ),
            (
                "job.CallBack is reserved",
                Box::new(|v| v["job"]["CallBack"] = json!("no")),
            ),
            (
                "job.CallBackKafkaConfig is reserved",
                Box::new(|v| {
                    v["job"]["CallBackKafkaConfig"] =
                        json!({"Region": "ap-guangzhou", "InstanceId": "ckafka-1", "Topic": "t"})
                }),
            ),
            (
                "job.QueueType is reserved",
                Box::new(|v| v["job"]["QueueType"] = json!("SpeedTranscoding")),
            ),
            (
                "Message",
                Box::new(|v| {
                    v["job"]["Operation"]["DigitalWatermark"]["Message"] = json!("<script>")
                }),
            ),
            (
                "printable ASCII",
                Box::new(|v| v["job"]["Operation"]["UserData"] = json!("é")),
            ),
            (
                "1024",
                Box::new(|v| v["job"]["Operation"]["UserData"] = json!("x".repeat(1011))),
            ),
            (
                "job.Input.Object: is required unless Input has a Url or a Vod",
                Box::new(|v| v["job"]["Input"] = json!({})),
            ),
            (
                "job.Input.Url: must be an http(s) URL",
                Box::new(|v| v["job"]["Input"] = json!({"Url": "file:///etc/passwd"})),
            ),
            (
                "cannot be written as CI's XML",
                Box::new(|v| v["job"]["Operation"]["Job Level"] = json!("0")),
            ),
            (
                "cannot be written as CI's XML",
                Box::new(|v| v["job"]["Input"]["Object"] = json!("a\u{1}b")),
            ),
        ];
        for (expect, mutate) in cases {
            let mut v = base.clone();
            mutate(&mut v);
            let err = SubmitRequest::parse(v.to_string().as_bytes())
                .unwrap()
                .validate(&ci())
                .unwrap_err();
            assert_eq!(err.code, "InvalidRequest");
            assert!(
                err.message.contains(expect),
                "{expect}: got {}",
                err.message
            );
        }
    }

    #[test]
    fn bucket_and_region_forms() {
        assert!(is_bucket_name("examplebucket-1250000000"));
        assert!(is_bucket_name("my-bucket-2-1250000000"));
        assert!(!is_bucket_name("examplebucket"));
        assert!(!is_bucket_name("Example-125"));
        assert!(is_region("ap-guangzhou"));
        assert!(!is_region("ap-guangzhou.evil"));
    }
}
