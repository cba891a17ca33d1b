//! The `<Request>` of `POST /jobs`, validated as `submit-digital-watermark.md` and the
//! `CallBackMqConfig` structure describe (and `CallBackKafkaConfig` as Tencent's SDKs model it). Every refusal is 400 `InvalidArgument` naming the element,
//! except a body that is not XML at all (400 `InvalidContent`).

use super::error::ApiError;
use crate::ci::rules::{validate_job, CallbackFormat};
use crate::ci::tree::Node;
use crate::ci::xml;
use std::borrow::Cow;

/// The media Tags `POST /jobs` takes: every Tag cos-go-sdk-v5 (v0.7.70) submits there (its
/// `MediaProcessJobOperation` models them; its example jobs name them), alphabetically. Any other
/// Tag is 400 `InvalidArgument`, as CI answers. `DigitalWatermark` is validated in full; the others
/// with the common checks, their `Operation` echoed as given.
pub(crate) const MEDIA_TAGS: [&str; 36] = [
    "Animation",
    "Concat",
    "DNA",
    "DigitalWatermark",
    "ExtractDigitalWatermark",
    "FillConcat",
    "ImageInspect",
    "ImageOCR",
    "MediaInfo",
    "NoiseReduction",
    "PicProcess",
    "PosterProduction",
    "QualityEstimate",
    "SDRtoHDR",
    "Segment",
    "SegmentVideoBody",
    "SmartCover",
    "Snapshot",
    "SoundHound",
    "SpeechRecognition",
    "SplitVideoParts",
    "StreamExtract",
    "SuperResolution",
    "Transcode",
    "Translation",
    "Tts",
    "VideoEnhance",
    "VideoMontage",
    "VideoProcess",
    "VideoSynthesis",
    "VideoTag",
    "VideoTargetRec",
    "VocalScore",
    "VoiceSeparate",
    "Watermark",
    "WordsGeneralize",
];

/// The elements of `<Request>` that configure the callback, echoed in `JobsDetail` (not in a
/// completion event's).
pub(crate) const CALLBACK_ELEMENTS: [&str; 5] = [
    "CallBackFormat",
    "CallBackType",
    "CallBack",
    "CallBackMqConfig",
    "CallBackKafkaConfig",
];

/// `CallBackMqConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MqConfig {
    pub region: String,
    pub mode: String,
    pub name: String,
}

/// `CallBackKafkaConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KafkaConfig {
    pub region: String,
    pub instance_id: String,
    pub topic: String,
}

/// Where the completion event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallbackTarget {
    /// `CallBackType=Url` without a `CallBack` address (CI would use the queue's; the emulator has no
    /// queue configuration), or `CallBack=no`.
    None,
    Url(String),
    Tdmq(MqConfig),
    Kafka(KafkaConfig),
}

/// A validated job request.
#[derive(Debug, Clone)]
pub(crate) struct JobSpec {
    pub tag: String,
    /// `Input.Object`; `None` for an input by `Url` or `Vod`, or a Tag without `Input`.
    pub input_object: Option<String>,
    /// `Input`'s other children as given (`Url`, `Vod`, `Lang`, ...), echoed in `JobsDetail.Input`.
    pub input_extra: Vec<(Cow<'static, str>, Node<'static>)>,
    /// `Operation` as given (a map), for the echo.
    pub operation: Node<'static>,
    pub queue_id: Option<String>,
    pub format: CallbackFormat,
    pub target: CallbackTarget,
    /// The callback elements as given, in request order, for the echo.
    pub callback_echo: Vec<(Cow<'static, str>, Node<'static>)>,
}

impl JobSpec {
    /// Where the fault markers (`__fail__`, ...) are read: `Input.Object`, else `Input.Url`.
    pub(crate) fn fault_key(&self) -> &str {
        self.input_object
            .as_deref()
            .or_else(|| {
                self.input_extra
                    .iter()
                    .find(|(k, _)| k == "Url")
                    .and_then(|(_, v)| v.as_str())
            })
            .unwrap_or("")
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("InvalidArgument", message)
}

/// A leaf's text: `Ok(None)` when absent or empty, an error when it is a container or repeated.
fn leaf(map: &Node, name: &str, path: &str) -> Result<Option<String>, ApiError> {
    match map.get(name) {
        None | Some(Node::Null) => Ok(None),
        Some(Node::Text(s)) if s.trim().is_empty() => Ok(None),
        Some(Node::Text(s)) => Ok(Some(s.to_string())),
        Some(Node::List(_)) => Err(invalid(format!(
            "The element {path} appears more than once."
        ))),
        Some(Node::Map(_)) => Err(invalid(format!("The element {path} must be text."))),
    }
}

fn required_leaf(map: &Node, name: &str, path: &str) -> Result<String, ApiError> {
    leaf(map, name, path)?.ok_or_else(|| invalid(format!("The element {path} is required.")))
}

/// A container (a map): `Ok(None)` when absent, an error when it is text or repeated.
fn container<'n, 'a>(
    map: &'n Node<'a>,
    name: &str,
    path: &str,
) -> Result<Option<&'n Node<'a>>, ApiError> {
    match map.get(name) {
        None | Some(Node::Null) => Ok(None),
        Some(Node::Text(s)) if s.trim().is_empty() => Ok(None),
        Some(m @ Node::Map(_)) => Ok(Some(m)),
        Some(Node::List(_)) => Err(invalid(format!(
            "The element {path} appears more than once."
        ))),
        Some(_) => Err(invalid(format!(
            "The element {path} must contain elements."
        ))),
    }
}

fn required_container<'n, 'a>(
    map: &'n Node<'a>,
    name: &str,
    path: &str,
) -> Result<&'n Node<'a>, ApiError> {
    container(map, name, path)?.ok_or_else(|| invalid(format!("The element {path} is required.")))
}

/// Parses and validates a `POST /jobs` body.
pub(crate) fn parse_request(body: &str) -> Result<JobSpec, ApiError> {
    let doc = xml::parse(body).map_err(|e| {
        ApiError::bad_request(
            "InvalidContent",
            format!("The request body is not well-formed XML: {e}"),
        )
    })?;
    if doc.root != "Request" {
        return Err(invalid(format!(
            "The root element must be Request, not {}.",
            doc.root
        )));
    }
    let req = &doc.node;
    let Node::Map(entries) = req else {
        return Err(invalid("The element Request is empty."));
    };
    // CI's documented rules, shared with the worker; what follows is only what the emulator adds
    // (strict element shapes, known Tags, queue and URL forms) and the values it needs.
    validate_job(req).map_err(|v| invalid(format!("{}: {}.", v.element, v.rule)))?;

    let tag = required_leaf(req, "Tag", "Request.Tag")?;
    if !MEDIA_TAGS.contains(&tag.as_str()) {
        return Err(invalid(format!(
            "The value {tag:?} of Request.Tag is not a media job Tag of /jobs."
        )));
    }
    // Whether an Input is needed and what it holds were checked by `validate_job`.
    let input = container(req, "Input", "Request.Input")?;
    let input_object = match input {
        Some(input) => leaf(input, "Object", "Request.Input.Object")?,
        None => None,
    };
    if let Some(input) = input {
        leaf(input, "Url", "Request.Input.Url")?;
        container(input, "Vod", "Request.Input.Vod")?;
    }
    let input_extra = match input {
        Some(Node::Map(children)) => children
            .iter()
            .filter(|(k, _)| !matches!(k.as_ref(), "Object" | "BucketId" | "Region"))
            .map(|(k, v)| (Cow::Owned(k.to_string()), v.clone().into_owned()))
            .collect(),
        _ => Vec::new(),
    };
    let operation = required_container(req, "Operation", "Request.Operation")?;

    let queue_id = leaf(req, "QueueId", "Request.QueueId")?;
    if let Some(q) = &queue_id {
        if q.len() > 64 || !q.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(format!(
                "The value {q:?} of Request.QueueId is not a queue ID."
            )));
        }
    }

    // CI writes XML events unless told otherwise.
    let format = match leaf(req, "CallBackFormat", "Request.CallBackFormat")? {
        None => CallbackFormat::Xml,
        Some(text) => CallbackFormat::parse(&text).ok_or_else(|| {
            invalid(format!(
                "The value {text:?} of Request.CallBackFormat {}.",
                CallbackFormat::RULE
            ))
        })?,
    };
    let callback_type = leaf(req, "CallBackType", "Request.CallBackType")?;
    let mq = match container(req, "CallBackMqConfig", "Request.CallBackMqConfig")? {
        Some(m) => Some(mq_config(m)?),
        None => None,
    };
    let kafka = match container(req, "CallBackKafkaConfig", "Request.CallBackKafkaConfig")? {
        Some(k) => Some(kafka_config(k)?),
        None => None,
    };
    let callback = leaf(req, "CallBack", "Request.CallBack")?;
    if let Some(url) = callback.as_deref().filter(|u| *u != "no") {
        let ok = url::Url::parse(url)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .unwrap_or(false);
        if !ok {
            return Err(invalid(format!(
                "The value {url:?} of Request.CallBack is not an http(s) URL (or \"no\")."
            )));
        }
    }
    let target = match callback_type.as_deref() {
        None | Some("Url") => match callback {
            Some(url) if url != "no" => CallbackTarget::Url(url),
            _ => CallbackTarget::None,
        },
        Some("TDMQ") => CallbackTarget::Tdmq(mq.ok_or_else(|| {
            invalid("The element Request.CallBackMqConfig is required when CallBackType is TDMQ.")
        })?),
        Some("Kafka") => CallbackTarget::Kafka(kafka.ok_or_else(|| {
            invalid(
                "The element Request.CallBackKafkaConfig is required when CallBackType is Kafka.",
            )
        })?),
        Some(other) => {
            return Err(invalid(format!(
                "The value {other:?} of Request.CallBackType must be Url, TDMQ or Kafka."
            )))
        }
    };

    let callback_echo = entries
        .iter()
        .filter(|(k, _)| CALLBACK_ELEMENTS.contains(&k.as_ref()))
        .map(|(k, v)| (Cow::Owned(k.to_string()), v.clone().into_owned()))
        .collect();

    Ok(JobSpec {
        tag,
        input_object,
        input_extra,
        operation: operation.clone().into_owned(),
        queue_id,
        format,
        target,
        callback_echo,
    })
}

/// `CallBackMqConfig`'s values (their rules were checked by [`validate_job`]).
fn mq_config(m: &Node) -> Result<MqConfig, ApiError> {
    Ok(MqConfig {
        region: required_leaf(m, "MqRegion", "Request.CallBackMqConfig.MqRegion")?,
        mode: required_leaf(m, "MqMode", "Request.CallBackMqConfig.MqMode")?,
        name: required_leaf(m, "MqName", "Request.CallBackMqConfig.MqName")?,
    })
}

/// `CallBackKafkaConfig`'s values (their rules were checked by [`validate_job`]).
fn kafka_config(k: &Node) -> Result<KafkaConfig, ApiError> {
    const P: &str = "Request.CallBackKafkaConfig";
    Ok(KafkaConfig {
        region: required_leaf(k, "Region", &format!("{P}.Region"))?,
        instance_id: required_leaf(k, "InstanceId", &format!("{P}.InstanceId"))?,
        topic: required_leaf(k, "Topic", &format!("{P}.Topic"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(operation: &str, extra: &str) -> String {
        format!(
            "<Request><Tag>DigitalWatermark</Tag><Input><Object>in/a.mp4</Object></Input>\
             <Operation>{operation}</Operation>{extra}</Request>"
        )
    }

    const GOOD_OP: &str = "<DigitalWatermark><Type>Text</Type><Message>abc_-*数字</Message>\
        <Version>V1</Version></DigitalWatermark><Output><Region>ap-guangzhou</Region>\
        <Bucket>b-1</Bucket><Object>out/a.mp4</Object></Output><UserData>req-1</UserData>";

    fn refusal(body: &str) -> (u16, &'static str, String) {
        let e = parse_request(body).unwrap_err();
        (e.status.as_u16(), e.code, e.message)
    }

    #[test]
    fn accepts_the_documented_tdmq_job() {
        let spec = parse_request(&request(
            GOOD_OP,
            "<QueueId>p0123456789abcdef</QueueId><CallBackFormat>JSON</CallBackFormat>\
             <CallBackType>TDMQ</CallBackType><CallBackMqConfig><MqRegion>gz</MqRegion>\
             <MqMode>Queue</MqMode><MqName>ci-callbacks</MqName></CallBackMqConfig>",
        ))
        .unwrap();
        assert_eq!(spec.tag, "DigitalWatermark");
        assert_eq!(spec.input_object.as_deref(), Some("in/a.mp4"));
        assert_eq!(spec.format, CallbackFormat::Json);
        assert_eq!(
            spec.target,
            CallbackTarget::Tdmq(MqConfig {
                region: "gz".into(),
                mode: "Queue".into(),
                name: "ci-callbacks".into()
            })
        );
        let keys: Vec<&str> = spec.callback_echo.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["CallBackFormat", "CallBackType", "CallBackMqConfig"]);
    }

    #[test]
    fn accepts_a_kafka_job_as_the_sdks_write_it() {
        let spec = parse_request(&request(
            GOOD_OP,
            "<CallBackFormat>XML</CallBackFormat><CallBackType>Kafka</CallBackType>\
             <CallBackKafkaConfig><Region>ap-chongqing</Region><InstanceId>ckafka-abc</InstanceId>\
             <Topic>doc-test</Topic></CallBackKafkaConfig>",
        ))
        .unwrap();
        assert_eq!(
            spec.target,
            CallbackTarget::Kafka(KafkaConfig {
                region: "ap-chongqing".into(),
                instance_id: "ckafka-abc".into(),
                topic: "doc-test".into()
            })
        );
        let keys: Vec<&str> = spec.callback_echo.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            keys,
            ["CallBackFormat", "CallBackType", "CallBackKafkaConfig"]
        );
    }

    #[test]
    fn defaults_are_xml_and_url() {
        let spec = parse_request(&request(
            GOOD_OP,
            "<CallBack>http://127.0.0.1:1/cb</CallBack>",
        ))
        .unwrap();
        assert_eq!(spec.format, CallbackFormat::Xml);
        assert_eq!(
            spec.target,
            CallbackTarget::Url("http://127.0.0.1:1/cb".into())
        );
        let spec = parse_request(&request(GOOD_OP, "<CallBack>no</CallBack>")).unwrap();
        assert_eq!(spec.target, CallbackTarget::None);
    }

    #[test]
    fn refusals_name_the_element() {
        let cases: Vec<(String, &str, &str)> = vec![
            ("not xml".into(), "InvalidContent", "well-formed"),
            ("<Job/>".into(), "InvalidArgument", "root element"),
            (
                "<Request><Input><Object>a</Object></Input><Operation><X>1</X></Operation></Request>".into(),
                "InvalidArgument",
                "Request.Tag",
            ),
            (
                "<Request><Tag>DigitalWatermark</Tag><Input/><Operation><X>1</X></Operation></Request>".into(),
                "InvalidArgument",
                "Request.Input",
            ),
            (
                "<Request><Tag>DigitalWatermark</Tag><Input><Object>a</Object></Input></Request>".into(),
                "InvalidArgument",
                "Request.Operation",
            ),
            (request(GOOD_OP, "<CallBackType>Http</CallBackType>"), "InvalidArgument", "CallBackType"),
            (
                request(GOOD_OP, "<CallBackType>Kafka</CallBackType>"),
                "InvalidArgument",
                "Request.CallBackKafkaConfig: is required when CallBackType is Kafka",
            ),
            (
                request(GOOD_OP, "<CallBackType>Kafka</CallBackType><CallBackKafkaConfig><InstanceId>ckafka-1</InstanceId><Topic>t</Topic></CallBackKafkaConfig>"),
                "InvalidArgument",
                "Request.CallBackKafkaConfig.Region: is required",
            ),
            (
                request(GOOD_OP, "<CallBackType>Kafka</CallBackType><CallBackKafkaConfig><Region>ap-guangzhou</Region><InstanceId></InstanceId><Topic>t</Topic></CallBackKafkaConfig>"),
                "InvalidArgument",
                "Request.CallBackKafkaConfig.InstanceId: is required",
            ),
            (
                request(GOOD_OP, "<CallBackType>Kafka</CallBackType><CallBackKafkaConfig><Region>ap-guangzhou</Region><InstanceId>ckafka-1</InstanceId></CallBackKafkaConfig>"),
                "InvalidArgument",
                "Request.CallBackKafkaConfig.Topic: is required",
            ),
            (
                request(GOOD_OP, "<CallBackType>Kafka</CallBackType><CallBackKafkaConfig>x</CallBackKafkaConfig>"),
                "InvalidArgument",
                "Request.CallBackKafkaConfig",
            ),
            (request(GOOD_OP, "<CallBackType>TDMQ</CallBackType>"), "InvalidArgument", "CallBackMqConfig"),
            (
                request(GOOD_OP, "<CallBackType>TDMQ</CallBackType><CallBackMqConfig><MqRegion>ap-guangzhou</MqRegion><MqMode>Queue</MqMode><MqName>q</MqName></CallBackMqConfig>"),
                "InvalidArgument",
                "MqRegion",
            ),
            (
                request(GOOD_OP, "<CallBackType>TDMQ</CallBackType><CallBackMqConfig><MqRegion>gz</MqRegion><MqMode>Fanout</MqMode><MqName>q</MqName></CallBackMqConfig>"),
                "InvalidArgument",
                "MqMode",
            ),
            (
                request(GOOD_OP, "<CallBackType>TDMQ</CallBackType><CallBackMqConfig><MqRegion>gz</MqRegion><MqMode>Queue</MqMode></CallBackMqConfig>"),
                "InvalidArgument",
                "MqName",
            ),
            (request(GOOD_OP, "<CallBackFormat>YAML</CallBackFormat>"), "InvalidArgument", "CallBackFormat"),
            (request(GOOD_OP, "<CallBack>ftp://x</CallBack>"), "InvalidArgument", "CallBack"),
            (
                request(&GOOD_OP.replace("<Type>Text</Type>", "<Type>Image</Type>"), ""),
                "InvalidArgument",
                "DigitalWatermark.Type",
            ),
            (
                request(&GOOD_OP.replace("<Version>V1</Version>", "<Version>V2</Version>"), ""),
                "InvalidArgument",
                "DigitalWatermark.Version",
            ),
            (
                request(&GOOD_OP.replace("abc_-*数字", "has space"), ""),
                "InvalidArgument",
                "DigitalWatermark.Message",
            ),
            (
                request(&GOOD_OP.replace("abc_-*数字", &"a".repeat(65)), ""),
                "InvalidArgument",
                "DigitalWatermark.Message",
            ),
            (
                request(&GOOD_OP.replace("<Bucket>b-1</Bucket>", ""), ""),
                "InvalidArgument",
                "Request.Operation.Output.Bucket",
            ),
            (
                request(&GOOD_OP.replace("req-1", &"u".repeat(1025)), ""),
                "InvalidArgument",
                "UserData",
            ),
            (
                request(&GOOD_OP.replace("req-1", "caf\u{e9}"), ""),
                "InvalidArgument",
                "UserData",
            ),
            (
                request(&format!("{GOOD_OP}<JobLevel>3</JobLevel>"), ""),
                "InvalidArgument",
                "JobLevel",
            ),
            (
                request(GOOD_OP, "").replace("DigitalWatermark</Tag>", "Unknown</Tag>"),
                "InvalidArgument",
                "Request.Tag",
            ),
        ];
        for (body, code, needle) in cases {
            let (status, got, message) = refusal(&body);
            assert_eq!((status, got), (400, code), "{body}: {message}");
            assert!(
                message.contains(needle),
                "{body}: {message:?} lacks {needle}"
            );
        }
    }

    #[test]
    fn other_media_tags_need_only_the_common_elements() {
        let body = "<Request><Tag>Transcode</Tag><Input><Object>a.mp4</Object></Input>\
                    <Operation><TemplateId>t1</TemplateId></Operation></Request>";
        assert_eq!(parse_request(body).unwrap().tag, "Transcode");
        for tag in MEDIA_TAGS.iter().filter(|t| **t != "DigitalWatermark") {
            let body = format!(
                "<Request><Tag>{tag}</Tag><Input><Object>a.mp4</Object></Input>\
                 <Operation><UserData>u</UserData></Operation></Request>"
            );
            assert_eq!(&parse_request(&body).unwrap().tag, tag);
        }
        for tag in [
            "SubmitTranscode",
            "transcode",
            "GeneratePlayList",
            "DocProcess",
        ] {
            let body = format!(
                "<Request><Tag>{tag}</Tag><Input><Object>a.mp4</Object></Input>\
                 <Operation><UserData>u</UserData></Operation></Request>"
            );
            let (status, code, message) = refusal(&body);
            assert_eq!((status, code), (400, "InvalidArgument"), "{tag}");
            assert!(message.contains("Request.Tag"), "{message}");
        }
    }

    #[test]
    fn inputs_by_url_or_vod_and_tags_without_input() {
        let spec = parse_request(
            "<Request><Tag>Transcode</Tag><Input><Url>https://example.com/a.mp4</Url>\
             <Lang>en</Lang></Input><Operation><TemplateId>t1</TemplateId></Operation></Request>",
        )
        .unwrap();
        assert_eq!(spec.input_object, None);
        let extra: Vec<&str> = spec.input_extra.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(extra, ["Url", "Lang"]);
        let spec = parse_request(
            "<Request><Tag>Transcode</Tag><Input><Vod><FileId>528589</FileId>\
             <SubAppId>15</SubAppId></Vod></Input><Operation><TemplateId>t1</TemplateId>\
             </Operation></Request>",
        )
        .unwrap();
        assert_eq!(spec.input_object, None);
        assert_eq!(spec.input_extra[0].1.text_at(&["FileId"]), Some("528589"));
        let spec = parse_request(
            "<Request><Tag>Tts</Tag><Operation><TtsConfig><Input>hi</Input>\
             <InputType>Text</InputType></TtsConfig></Operation></Request>",
        )
        .unwrap();
        assert_eq!((spec.input_object, spec.input_extra.len()), (None, 0));
        for (body, needle) in [
            (
                "<Request><Tag>Transcode</Tag><Operation><TemplateId>t1</TemplateId></Operation></Request>",
                "Request.Input",
            ),
            (
                "<Request><Tag>Transcode</Tag><Input><Url>ftp://x/a.mp4</Url></Input><Operation><TemplateId>t1</TemplateId></Operation></Request>",
                "Request.Input.Url",
            ),
            (
                "<Request><Tag>Transcode</Tag><Input><Vod><SubAppId>1</SubAppId></Vod></Input><Operation><TemplateId>t1</TemplateId></Operation></Request>",
                "Request.Input.Vod.FileId",
            ),
        ] {
            let (status, code, message) = refusal(body);
            assert_eq!((status, code), (400, "InvalidArgument"), "{body}");
            assert!(message.contains(needle), "{message}");
        }
    }
}
