//! The rules CI applies to a submitted job, as its documents state them. Shared by the worker (which
//! refuses a bad request before spending a CI call on it) and the emulator (which refuses it like CI).
//! Input is the `<Request>` tree (the Python SDK's dict; a JSON number or bool reads as its text).

use super::tree::Node;

/// Why a job is refused: the element at fault and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{element}: {rule}")]
pub struct Violation {
    /// Path of the element, e.g. `Request.Operation.DigitalWatermark.Message`.
    pub element: String,
    pub rule: String,
}

fn violation(element: &str, rule: impl Into<String>) -> Violation {
    Violation {
        element: element.to_string(),
        rule: rule.into(),
    }
}

/// CI's limit on `UserData` (printable ASCII characters).
pub const USER_DATA_MAX: usize = 1024;

/// A closed set of values, each spelled one way (in CI's `<Request>`, in the configuration's TOML
/// and environment variables): the enum, its spelling both ways, serde through that spelling, and
/// the rule a value outside the set breaks, worded once for every place that reports it.
macro_rules! closed_set {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $rule:literal {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in the order the rule lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// What a value outside the set is told.
            pub const RULE: &'static str = $rule;

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value spelled `s` exactly (case matters, as it does to CI).
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    <D::Error as serde::de::Error>::custom(format!("invalid {s:?}: {}", $name::RULE))
                })
            }
        }
    };
}
pub(crate) use closed_set;

closed_set! {
    /// `CallBackFormat`: the format CI writes a job's completion event in.
    pub enum CallbackFormat: "must be JSON or XML" {
        Json = "JSON",
        Xml = "XML",
    }
}

closed_set! {
    /// `CallBackMqConfig.MqRegion`: the TDMQ regions CI delivers to.
    pub enum MqRegion: "must be one of sh, bj, gz, cd, hk" {
        Sh = "sh",
        Bj = "bj",
        Gz = "gz",
        Cd = "cd",
        Hk = "hk",
    }
}

closed_set! {
    /// `CallBackType`: where CI sends a job's completion event: a TDMQ queue or topic
    /// (`CallBackMqConfig`), an HTTP POST to the `CallBack` address, or a CKafka topic
    /// (`CallBackKafkaConfig`; Tencent's Java SDK `MediaJobsRequest.callBackType`: "Url 或 TDMQ 或
    /// Kafka").
    pub enum CallbackType: "must be TDMQ, Url or Kafka" {
        Tdmq = "TDMQ",
        Url = "Url",
        Kafka = "Kafka",
    }
}

closed_set! {
    /// `CallBackMqConfig.MqMode`: a TDMQ queue or topic.
    pub enum MqMode: "must be Queue or Topic" {
        Queue = "Queue",
        Topic = "Topic",
    }
}

/// A Tencent Cloud region id such as `ap-guangzhou` (lower-case letters, digits and `-`; it
/// becomes part of a host name): a COS bucket's region, a CKafka instance's.
pub fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.contains('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A Kafka topic name as Kafka accepts it: 1–249 characters of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
pub fn is_kafka_topic(s: &str) -> bool {
    (1..=249).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// CI's `UserData` charset: printable ASCII (space through `~`).
pub fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Longest DigitalWatermark `Message`.
pub const WATERMARK_MESSAGE_MAX: usize = 64;

/// Checks a `<Request>` tree against CI's documented rules.
pub fn validate_job(job: &Node) -> Result<(), Violation> {
    if !job.is_map() {
        return Err(violation("Request", "must be an object"));
    }
    let tag = job
        .text_at(&["Tag"])
        .ok_or_else(|| violation("Request.Tag", "is required"))?;
    validate_input(tag, job)?;
    let operation = job
        .get("Operation")
        .filter(|o| o.is_map())
        .ok_or_else(|| violation("Request.Operation", "is required"))?;

    if let Some(user_data) = operation.text_at(&["UserData"]) {
        if !is_printable_ascii(user_data) {
            return Err(violation(
                "Request.Operation.UserData",
                "must be printable ASCII",
            ));
        }
        if user_data.len() > USER_DATA_MAX {
            return Err(violation(
                "Request.Operation.UserData",
                format!("must be at most {USER_DATA_MAX} characters"),
            ));
        }
    }
    if let Some(level) = operation.text_at(&["JobLevel"]) {
        if !matches!(level, "0" | "1" | "2") {
            return Err(violation("Request.Operation.JobLevel", "must be 0, 1 or 2"));
        }
    }
    if tag == "DigitalWatermark" {
        validate_digital_watermark(operation)?;
    }

    if let Some(format) = job.text_at(&["CallBackFormat"]) {
        if CallbackFormat::parse(format).is_none() {
            return Err(violation("Request.CallBackFormat", CallbackFormat::RULE));
        }
    }
    match job.text_at(&["CallBackType"]).unwrap_or("Url") {
        "Url" => {}
        "TDMQ" => validate_mq_config(job)?,
        "Kafka" => validate_kafka_config(job)?,
        _ => {
            return Err(violation(
                "Request.CallBackType",
                "must be Url, TDMQ or Kafka",
            ))
        }
    }
    Ok(())
}

/// Tags whose jobs take no `Input`: their sources are inside `Operation` (Concat's `ConcatFragment`,
/// FillConcat's `FillInput`, VideoSynthesis's `SpliceInfo` URLs, Tts's text, PosterProduction's
/// template, SoundHound as cos-go-sdk-v5's example submits it). cos-go-sdk-v5 v0.7.70 example jobs.
pub const TAGS_WITHOUT_INPUT: [&str; 6] = [
    "Concat",
    "FillConcat",
    "PosterProduction",
    "SoundHound",
    "Tts",
    "VideoSynthesis",
];

/// `Input` (cos-go-sdk-v5 `JobInput`): a COS `Object` of the bucket, or a public http(s) `Url`, or a
/// VOD file (`Vod{FileId, SubAppId}`): at least one of them (CI reads `Object` first). Required but
/// for [`TAGS_WITHOUT_INPUT`], which may still give one.
fn validate_input(tag: &str, job: &Node) -> Result<(), Violation> {
    const P: &str = "Request.Input";
    let Some(input) = job.get("Input").and_then(Node::one).filter(|i| i.is_map()) else {
        let absent = match job.get("Input") {
            None | Some(Node::Null) => true,
            Some(Node::Text(t)) => t.trim().is_empty(),
            Some(_) => false,
        };
        if absent && TAGS_WITHOUT_INPUT.contains(&tag) {
            return Ok(());
        }
        return Err(violation(P, "is required (Object, Url or Vod)"));
    };
    let object = input.text_at(&["Object"]);
    let url = input.text_at(&["Url"]);
    let vod = input.get("Vod");
    if let Some(url) = url {
        let ok = url::Url::parse(url)
            .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .unwrap_or(false);
        if !ok {
            return Err(violation(&format!("{P}.Url"), "must be an http(s) URL"));
        }
    }
    if vod.is_some() && input.text_at(&["Vod", "FileId"]).is_none() {
        return Err(violation(&format!("{P}.Vod.FileId"), "is required"));
    }
    if object.is_none() && url.is_none() && vod.is_none() {
        return Err(violation(
            &format!("{P}.Object"),
            "is required unless Input has a Url or a Vod",
        ));
    }
    Ok(())
}

fn validate_digital_watermark(operation: &Node) -> Result<(), Violation> {
    const P: &str = "Request.Operation.DigitalWatermark";
    if operation.get("DigitalWatermark").is_none() {
        return Err(violation(P, "is required for Tag DigitalWatermark"));
    }
    let field = |name: &str| operation.text_at(&["DigitalWatermark", name]);
    match field("Type") {
        Some("Text") => {}
        Some(_) => return Err(violation(&format!("{P}.Type"), "must be Text")),
        None => return Err(violation(&format!("{P}.Type"), "is required")),
    }
    match field("Version") {
        Some("V1") => {}
        Some(_) => return Err(violation(&format!("{P}.Version"), "must be V1")),
        None => return Err(violation(&format!("{P}.Version"), "is required")),
    }
    let message =
        field("Message").ok_or_else(|| violation(&format!("{P}.Message"), "is required"))?;
    if message.chars().count() > WATERMARK_MESSAGE_MAX {
        return Err(violation(
            &format!("{P}.Message"),
            format!("must be at most {WATERMARK_MESSAGE_MAX} characters"),
        ));
    }
    if !message.chars().all(is_watermark_char) {
        return Err(violation(
            &format!("{P}.Message"),
            "may contain only Chinese characters, letters, digits, _, - and *",
        ));
    }
    if let Some(ignore) = field("IgnoreError") {
        if !matches!(ignore, "true" | "false") {
            return Err(violation(
                &format!("{P}.IgnoreError"),
                "must be true or false",
            ));
        }
    }
    for name in ["Region", "Bucket", "Object"] {
        if operation.text_at(&["Output", name]).is_none() {
            return Err(violation(
                &format!("Request.Operation.Output.{name}"),
                "is required",
            ));
        }
    }
    Ok(())
}

/// Letters, digits, `_ - *` and CJK ideographs (the "Chinese characters" of the document).
fn is_watermark_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '-' | '*')
        || ('\u{4e00}'..='\u{9fff}').contains(&c)
        || ('\u{3400}'..='\u{4dbf}').contains(&c)
}

fn validate_mq_config(job: &Node) -> Result<(), Violation> {
    const P: &str = "Request.CallBackMqConfig";
    if job.get("CallBackMqConfig").is_none() {
        return Err(violation(P, "is required when CallBackType is TDMQ"));
    }
    let field = |name: &str| job.text_at(&["CallBackMqConfig", name]);
    match field("MqRegion") {
        Some(r) if MqRegion::parse(r).is_some() => {}
        Some(_) => return Err(violation(&format!("{P}.MqRegion"), MqRegion::RULE)),
        None => return Err(violation(&format!("{P}.MqRegion"), "is required")),
    }
    match field("MqMode") {
        Some(m) if MqMode::parse(m).is_some() => {}
        Some(_) => return Err(violation(&format!("{P}.MqMode"), MqMode::RULE)),
        None => return Err(violation(&format!("{P}.MqMode"), "is required")),
    }
    if field("MqName").is_none() {
        return Err(violation(&format!("{P}.MqName"), "is required"));
    }
    Ok(())
}

/// `CallBackKafkaConfig{Region, InstanceId, Topic}`: the CKafka instance and topic CI writes the
/// event into. No CI page documents it; the elements are those of Tencent's SDKs (cos-go-sdk-v5
/// `ci_media.go` `KafkaConfig`, the Java SDK's `ciModel/job/CallBackKafkaConfig.java`), whose
/// comments say only that each is required and valid (the Java model lists `ap-*` regions). So the
/// rule checked here is the one they state: each present and not empty, the region an id.
fn validate_kafka_config(job: &Node) -> Result<(), Violation> {
    const P: &str = "Request.CallBackKafkaConfig";
    if job.get("CallBackKafkaConfig").is_none() {
        return Err(violation(P, "is required when CallBackType is Kafka"));
    }
    let field = |name: &str| job.text_at(&["CallBackKafkaConfig", name]);
    match field("Region") {
        Some(r) if is_region(r) => {}
        Some(_) => {
            return Err(violation(
                &format!("{P}.Region"),
                "must be a region such as ap-guangzhou",
            ))
        }
        None => return Err(violation(&format!("{P}.Region"), "is required")),
    }
    if field("InstanceId").is_none_or(|i| i.trim().is_empty()) {
        return Err(violation(&format!("{P}.InstanceId"), "is required"));
    }
    match field("Topic") {
        Some(t) if is_kafka_topic(t) => {}
        Some(_) => {
            return Err(violation(
                &format!("{P}.Topic"),
                "must be a Kafka topic name (1-249 characters of A-Z a-z 0-9 . _ -)",
            ))
        }
        None => return Err(violation(&format!("{P}.Topic"), "is required")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn validate(job: &Value) -> Result<(), Violation> {
        validate_job(&Node::from_value(job))
    }

    type Mutation = Box<dyn Fn(&mut Value)>;

    fn seed_job() -> Value {
        json!({"Tag": "DigitalWatermark", "Input": {"Object": "input/demo.mp4"},
               "Operation": {"DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
                             "Output": {"Region": "ap-guangzhou", "Bucket": "examplebucket-1250000000", "Object": "output/out.mp4"},
                             "UserData": "This is my data.", "JobLevel": "0"},
               "CallBackType": "TDMQ",
               "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Queue", "MqName": "ci-callbacks"}})
    }

    #[test]
    fn the_documented_example_passes() {
        validate(&seed_job()).unwrap();
        let mut numeric_level = seed_job();
        numeric_level["Operation"]["JobLevel"] = json!(2);
        validate(&numeric_level).unwrap();
        let mut chinese = seed_job();
        chinese["Operation"]["DigitalWatermark"]["Message"] = json!("水印_abc-*");
        validate(&chinese).unwrap();
    }

    #[test]
    fn each_rule_names_its_element() {
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "Request.Tag",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("Tag");
                }),
            ),
            ("Request.Input.Object", Box::new(|j| j["Input"] = json!({}))),
            (
                "Request.Input",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("Input");
                }),
            ),
            (
                "Request.Input.Url",
                Box::new(|j| j["Input"] = json!({"Url": "ftp://example.com/a.mp4"})),
            ),
            (
                "Request.Input.Vod.FileId",
                Box::new(|j| j["Input"] = json!({"Vod": {"SubAppId": "1"}})),
            ),
            (
                "Request.Operation",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("Operation");
                }),
            ),
            (
                "DigitalWatermark.Type",
                Box::new(|j| j["Operation"]["DigitalWatermark"]["Type"] = json!("Image")),
            ),
            (
                "DigitalWatermark.Version",
                Box::new(|j| j["Operation"]["DigitalWatermark"]["Version"] = json!("V2")),
            ),
            (
                "DigitalWatermark.Message",
                Box::new(|j| j["Operation"]["DigitalWatermark"]["Message"] = json!("a b")),
            ),
            (
                "DigitalWatermark.Message",
                Box::new(|j| j["Operation"]["DigitalWatermark"]["Message"] = json!("x".repeat(65))),
            ),
            (
                "Output.Bucket",
                Box::new(|j| {
                    j["Operation"]["Output"]
                        .as_object_mut()
                        .unwrap()
                        .remove("Bucket");
                }),
            ),
            (
                "UserData",
                Box::new(|j| j["Operation"]["UserData"] = json!("tab\t")),
            ),
            (
                "UserData",
                Box::new(|j| j["Operation"]["UserData"] = json!("u".repeat(1025))),
            ),
            (
                "JobLevel",
                Box::new(|j| j["Operation"]["JobLevel"] = json!("3")),
            ),
            (
                "CallBackType",
                Box::new(|j| j["CallBackType"] = json!("Http")),
            ),
            (
                "CallBackFormat",
                Box::new(|j| j["CallBackFormat"] = json!("YAML")),
            ),
            (
                "CallBackMqConfig",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("CallBackMqConfig");
                }),
            ),
            (
                "MqRegion",
                Box::new(|j| j["CallBackMqConfig"]["MqRegion"] = json!("ap-guangzhou")),
            ),
            (
                "MqMode",
                Box::new(|j| j["CallBackMqConfig"]["MqMode"] = json!("Fanout")),
            ),
            (
                "MqName",
                Box::new(|j| {
                    j["CallBackMqConfig"]
                        .as_object_mut()
                        .unwrap()
                        .remove("MqName");
                }),
            ),
        ];
        for (element, mutate) in cases {
            let mut job = seed_job();
            mutate(&mut job);
            let err = validate(&job).unwrap_err();
            assert!(err.element.ends_with(element), "{element}: got {err}");
        }
    }

    #[test]
    fn closed_sets_are_spelled_one_way() {
        for f in CallbackFormat::ALL {
            assert_eq!(CallbackFormat::parse(f.as_str()), Some(*f));
            assert_eq!(serde_json::to_value(f).unwrap(), json!(f.as_str()));
            let back: CallbackFormat = serde_json::from_value(json!(f.as_str())).unwrap();
            assert_eq!(back, *f);
        }
        let regions: Vec<&str> = MqRegion::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            MqRegion::RULE,
            format!("must be one of {}", regions.join(", "))
        );
        for m in MqMode::ALL {
            assert_eq!(MqMode::parse(m.as_str()), Some(*m));
        }
        assert_eq!(CallbackFormat::parse("json"), None, "case matters to CI");
        assert_eq!(CallbackType::parse("Kafka"), Some(CallbackType::Kafka));
        let err = serde_json::from_value::<MqMode>(json!("Fanout")).unwrap_err();
        assert!(err.to_string().contains("must be Queue or Topic"), "{err}");
    }

    #[test]
    fn input_by_object_url_or_vod() {
        for input in [
            json!({"Object": "in/a.mp4"}),
            json!({"Url": "https://example.com/a.mp4"}),
            json!({"Vod": {"FileId": "5285890799710173650", "SubAppId": "1500000"}}),
            json!({"Object": "in/a.mp4", "Url": "http://example.com/a.mp4", "Lang": "zh"}),
        ] {
            let mut job = seed_job();
            job["Input"] = input.clone();
            validate(&job).unwrap_or_else(|e| panic!("{input}: {e}"));
        }
        // Tags whose sources are in Operation take no Input; giving one is still checked.
        let tts = json!({"Tag": "Tts", "Operation": {"TtsConfig": {"Input": "text", "InputType": "Text"}}});
        validate(&tts).unwrap();
        let mut bad = tts.clone();
        bad["Input"] = json!({});
        assert_eq!(validate(&bad).unwrap_err().element, "Request.Input.Object");
        let transcode = json!({"Tag": "Transcode", "Operation": {"TemplateId": "t1"}});
        assert_eq!(validate(&transcode).unwrap_err().element, "Request.Input");
    }

    fn kafka_job() -> Value {
        let mut job = seed_job();
        let o = job.as_object_mut().unwrap();
        o.remove("CallBackMqConfig");
        o.insert("CallBackType".into(), json!("Kafka"));
        o.insert(
            "CallBackKafkaConfig".into(),
            json!({"Region": "ap-chongqing", "InstanceId": "ckafka-abc", "Topic": "doc-test"}),
        );
        job
    }

    #[test]
    fn kafka_callbacks_need_region_instance_and_topic() {
        validate(&kafka_job()).unwrap();
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "Request.CallBackKafkaConfig",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("CallBackKafkaConfig");
                }),
            ),
            (
                "Request.CallBackKafkaConfig.Region",
                Box::new(|j| j["CallBackKafkaConfig"]["Region"] = json!("")),
            ),
            (
                "Request.CallBackKafkaConfig.Region",
                Box::new(|j| j["CallBackKafkaConfig"]["Region"] = json!("Guangzhou")),
            ),
            (
                "Request.CallBackKafkaConfig.InstanceId",
                Box::new(|j| {
                    j["CallBackKafkaConfig"]
                        .as_object_mut()
                        .unwrap()
                        .remove("InstanceId");
                }),
            ),
            (
                "Request.CallBackKafkaConfig.Topic",
                Box::new(|j| j["CallBackKafkaConfig"]["Topic"] = json!("  ")),
            ),
            (
                "Request.CallBackKafkaConfig.Topic",
                Box::new(|j| j["CallBackKafkaConfig"]["Topic"] = json!("a/b")),
            ),
        ];
        for (element, mutate) in cases {
            let mut job = kafka_job();
            mutate(&mut job);
            let err = validate(&job).unwrap_err();
            assert_eq!(err.element, element, "got {err}");
        }
        // A TDMQ config beside it is not looked at, as the type says where the event goes.
        let mut both = kafka_job();
        both["CallBackMqConfig"] = json!({"MqRegion": "nowhere"});
        validate(&both).unwrap();
    }

    #[test]
    fn kafka_topic_names() {
        for ok in ["a", "ci.callbacks", "ci_callbacks-2", &"t".repeat(249)] {
            assert!(is_kafka_topic(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "主题", &"t".repeat(250)] {
            assert!(!is_kafka_topic(bad), "{bad}");
        }
    }

    #[test]
    fn other_tags_skip_watermark_rules() {
        let job = json!({"Tag": "Transcode", "Input": {"Object": "a.mp4"}, "Operation": {"TemplateId": "t1"}});
        validate(&job).unwrap();
    }
}
