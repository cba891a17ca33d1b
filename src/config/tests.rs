//! Loading as a whole: precedence, the error line each bad value gets, the example file.

use super::*;
use crate::ci::rules::{CallbackFormat, CallbackType, MqMode, MqRegion};
use crate::cmq::sign::SignatureMethod;
use std::io::Write;
use std::time::Duration;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_valid() {
    let s = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(s.pulsar.url, "pulsar://127.0.0.1:6650");
    assert_eq!(s.worker.max_in_flight, 64);
    assert_eq!(s.http.listen.to_string(), "0.0.0.0:9464");
    assert_eq!(s.emulator.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(s.emulator.answer_delay, Duration::ZERO);
    assert!(s.notes().is_empty(), "{:?}", s.notes());
}

#[test]
fn emulator_answer_delay_comes_from_the_environment() {
    let s = Settings::load_from(
        None,
        &env(&[("CI_WORKER__EMULATOR__ANSWER_DELAY_MS", "250")]),
    )
    .unwrap();
    assert_eq!(s.emulator.answer_delay, Duration::from_millis(250));
    assert_eq!(s.emulator.latency, Duration::ZERO);
}

#[test]
fn file_then_tencent_vars_then_our_vars() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        f,
        "[pulsar]\nurl = \"pulsar://file:6650\"\nresult_topic = \"from-file\"\n[ci]\nsecret_id = \"file-id\"\nsecret_key = \"file-key\"\n[worker]\nshutdown_timeout = \"5s\""
    )
    .unwrap();
    let s = Settings::load_from(
        Some(f.path()),
        &env(&[
            ("CI_WORKER__PULSAR__URL", "pulsar://env:6650"),
            ("CI_WORKER__WORKER__MAX_IN_FLIGHT", "7"),
            ("TENCENTCLOUD_SECRET_ID", "tc-id"),
            ("TENCENTCLOUD_SECRET_KEY", "tc-key"),
            ("CI_WORKER__CI__SECRET_KEY", "ours-key"),
        ]),
    )
    .unwrap();
    assert_eq!(s.pulsar.url, "pulsar://env:6650");
    assert_eq!(s.pulsar.result_topic, "from-file");
    assert_eq!(s.worker.max_in_flight, 7);
    assert_eq!(s.worker.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(s.ci.secret_id, "tc-id");
    assert_eq!(s.ci.secret_key.expose(), "ours-key");
}

#[test]
fn the_pace_of_ci_calls_is_an_integer_or_a_fraction() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        f,
        "[ci]\nmax_requests_per_second = 50\n[emulator]\nqps_limit = 40"
    )
    .unwrap();
    let s = Settings::load_from(Some(f.path()), &env(&[])).unwrap();
    assert_eq!(s.ci.max_requests_per_second, 50.0);
    assert_eq!(s.emulator.qps_limit, 40);
    let s = Settings::load_from(
        None,
        &env(&[
            ("CI_WORKER__CI__MAX_REQUESTS_PER_SECOND", "2.5"),
            ("CI_WORKER__CI__ADAPTIVE_RATE", "false"),
            ("CI_WORKER__WORKER__ADAPTIVE_CONCURRENCY", "false"),
        ]),
    )
    .unwrap();
    assert_eq!(s.ci.max_requests_per_second, 2.5);
    assert!(!s.ci.adaptive_rate && !s.worker.adaptive_concurrency);
    let d = Settings::load_from(None, &env(&[])).unwrap();
    assert_eq!(d.ci.max_requests_per_second, 0.0);
    assert!(d.ci.adaptive_rate && d.worker.adaptive_concurrency);
    assert_eq!(d.emulator.qps_limit, 0);
}

#[test]
fn bad_values_name_the_key() {
    for (var, value, key) in [
        (
            "CI_WORKER__CI__CALLBACK_FORMAT",
            "YAML",
            "ci.callback_format",
        ),
        ("CI_WORKER__CI__MQ_REGION", "ap-guangzhou", "ci.mq_region"),
        ("CI_WORKER__CI__MQ_MODE", "Fanout", "ci.mq_mode"),
        ("CI_WORKER__PULSAR__URL", "ftp://x:8080", "pulsar.url"),
        ("CI_WORKER__PULSAR__URL", "http://", "pulsar.url"),
        ("CI_WORKER__HTTP__LISTEN", "nowhere", "http.listen"),
        (
            "CI_WORKER__WORKER__MAX_IN_FLIGHT",
            "0",
            "worker.max_in_flight",
        ),
        (
            "CI_WORKER__EMULATOR__ERROR_RATE",
            "1.5",
            "emulator.error_rate",
        ),
        (
            "CI_WORKER__CI__MAX_REQUESTS_PER_SECOND",
            "-1",
            "ci.max_requests_per_second",
        ),
        ("CI_WORKER__LOG__FORMAT", "xml", "log.format"),
        (
            "CI_WORKER__WORKER__JOB_TIMEOUT",
            "500ms",
            "worker.job_timeout",
        ),
        (
            "CI_WORKER__PULSAR__DEADLINE_TOPIC",
            "non-persistent://public/default/d",
            "pulsar.deadline_topic",
        ),
        (
            "CI_WORKER__PULSAR__DONE_TOPIC",
            "ci-worker-deadlines",
            "pulsar.done_topic",
        ),
    ] {
        let err = Settings::load_from(None, &env(&[(var, value)])).unwrap_err();
        assert!(err.to_string().contains(key), "{var}: {err}");
    }
}

#[test]
fn closed_sets_are_refused_in_the_configurations_words() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "[ci]\nmq_mode = \"Fanout\"").unwrap();
    for (file, vars, message) in [
        (
            None,
            env(&[("CI_WORKER__CI__CALLBACK_FORMAT", "yaml")]),
            r#"configuration: invalid ci.callback_format = "yaml": must be JSON or XML"#,
        ),
        (
            None,
            env(&[("CI_WORKER__CI__MQ_REGION", "ap-guangzhou")]),
            r#"configuration: invalid ci.mq_region = "ap-guangzhou": must be one of sh, bj, gz, cd, hk"#,
        ),
        (
            Some(f.path()),
            env(&[]),
            r#"configuration: invalid ci.mq_mode = "Fanout": must be Queue or Topic"#,
        ),
        (
            None,
            env(&[("CI_WORKER__LOG__FORMAT", "JSON")]),
            r#"configuration: invalid log.format = "JSON": must be text or json"#,
        ),
    ] {
        let err = Settings::load_from(file, &vars).unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    let s = Settings::load_from(
        None,
        &env(&[
            ("CI_WORKER__CI__CALLBACK_FORMAT", "XML"),
            ("CI_WORKER__CI__MQ_REGION", "hk"),
            ("CI_WORKER__CI__MQ_MODE", "Topic"),
            ("CI_WORKER__LOG__FORMAT", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (
            s.ci.callback_format,
            s.ci.mq_region,
            s.ci.mq_mode,
            s.log.format
        ),
        (
            CallbackFormat::Xml,
            MqRegion::Hk,
            MqMode::Topic,
            LogFormat::Json
        )
    );
    let out = s.to_redacted_toml();
    for line in [
        r#"callback_format = "XML""#,
        r#"mq_region = "hk""#,
        r#"mq_mode = "Topic""#,
        r#"format = "json""#,
    ] {
        assert!(out.contains(line), "{line} in {out}");
    }
}

#[test]
fn unknown_keys_and_bad_durations_are_refused() {
    let err = Settings::load_from(None, &env(&[("CI_WORKER__PULSAR__URLL", "x")])).unwrap_err();
    assert!(err.to_string().contains("urll"), "{err}");
    let err =
        Settings::load_from(None, &env(&[("CI_WORKER__WORKER__JOB_TIMEOUT", "soon")])).unwrap_err();
    assert!(err.to_string().contains("soon"), "{err}");
}

#[test]
fn one_credential_source_at_a_time_each_refusal_naming_its_key() {
    let refused = |pairs: &[(&str, &str)], key: &str, says: &str| {
        let e = Settings::load_from(None, &env(pairs))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(says), "{pairs:?}: {e}");
        assert!(
            !e.contains("tc-key") && !e.contains("tc-token"),
            "a secret in {e}"
        );
    };
    let keys = [
        ("TENCENTCLOUD_SECRET_ID", "tc-id"),
        ("TENCENTCLOUD_SECRET_KEY", "tc-key"),
    ];
    let file = (
        "CI_WORKER__CI__CREDENTIALS_FILE",
        "/var/run/ci/credentials.json",
    );
    let role = ("CI_WORKER__CI__CVM_ROLE", "CVMas");
    refused(
        &[keys[0], keys[1], file],
        "ci.credentials_file",
        "one credential source",
    );
    refused(
        &[keys[0], keys[1], role],
        "ci.cvm_role",
        "one credential source",
    );
    refused(&[file, role], "ci.cvm_role", "ci.credentials_file");
    refused(
        &[file, ("TENCENTCLOUD_SESSION_TOKEN", "tc-token")],
        "ci.session_token",
        "bring their own Token",
    );
    refused(
        &[("TENCENTCLOUD_SESSION_TOKEN", "tc-token")],
        "ci.session_token",
        "needs ci.secret_id",
    );
    refused(
        &[("CI_WORKER__CI__CVM_ROLE", "a/../b")],
        "ci.cvm_role",
        "CAM role name",
    );
    refused(
        &[
            role,
            (
                "CI_WORKER__CI__METADATA_ENDPOINT",
                "metadata.tencentyun.com",
            ),
        ],
        "ci.metadata_endpoint",
        "http(s)://",
    );
    refused(
        &[("CI_WORKER__EMULATOR__CVM_ROLES", "ok,bad role")],
        "emulator.cvm_roles",
        "CAM role names",
    );
    refused(
        &[(
            "CI_WORKER__EMULATOR__TEMPORARY_CREDENTIALS_LIFETIME_SECS",
            "0",
        )],
        "emulator.temporary_credentials_lifetime_secs",
        "between 1",
    );
    for alone in [&[file][..], &[role], &keys] {
        let s = Settings::load_from(None, &env(alone)).unwrap();
        assert!(s.has_credential_source());
    }
    assert!(!Settings::default().has_credential_source());
    let s = Settings::load_from(
        None,
        &env(&[role, ("CI_WORKER__EMULATOR__CVM_ROLES", "CVMas, Other")]),
    )
    .unwrap();
    assert_eq!(s.ci.metadata_endpoint.as_str(), DEFAULT_METADATA_ENDPOINT);
    assert_eq!(s.emulator.cvm_roles, ["CVMas", "Other"]);
    let out = s.to_redacted_toml();
    assert!(out.contains(r#"cvm_role = "CVMas""#), "{out}");
}

#[test]
fn redacted_output_hides_secrets() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("TENCENTCLOUD_SECRET_ID", "AKIDvisible"),
            ("TENCENTCLOUD_SECRET_KEY", "topsecretkey"),
            ("CI_WORKER__PULSAR__TOKEN", "eyJhbGciOi.secret.jwt"),
        ]),
    )
    .unwrap();
    let out = s.to_redacted_toml();
    assert!(out.starts_with("# pulsar.url pulsar://127.0.0.1:6650: binary protocol"));
    assert!(out.contains("AKIDvisible"));
    assert!(!out.contains("topsecretkey"));
    assert!(!out.contains("secret.jwt"));
}
#[test]
fn pulsar_urls_of_both_kinds_load_and_say_how_they_are_used() {
    for (url, usage) in [
        ("pulsar://10.0.0.12:6000", "binary protocol"),
        ("pulsar+ssl://b.example:6651", "binary protocol"),
        (
            "http://pulsar-xxxx.tdmq.ap-gz.public.tencenttdmq.com:8080",
            "HTTP lookup (GET /lookup/v2/topic/",
        ),
        ("https://c.example:8443", "to each topic's brokerUrlTls"),
    ] {
        let s = Settings::load_from(
            None,
            &env(&[
                ("CI_WORKER__PULSAR__URL", url),
                ("CI_WORKER__PULSAR__TOKEN", "eyJhbGciOi.secret.jwt"),
            ]),
        )
        .unwrap();
        let out = s.to_redacted_toml();
        let first = out.lines().next().unwrap();
        assert!(first.contains(url) && first.contains(usage), "{first}");
        assert!(!out.contains("secret.jwt"));
    }
    let err = Settings::load_from(None, &env(&[("CI_WORKER__PULSAR__URL", "x:6650")]))
        .unwrap_err()
        .to_string();
    for form in [
        "pulsar.url",
        "pulsar://",
        "pulsar+ssl://",
        "http://",
        "https://",
    ] {
        assert!(err.contains(form), "{err}");
    }
}

#[test]
fn ingress_sources_come_as_a_list_from_the_environment() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "cmq, http"),
            ("CI_WORKER__HTTP__CALLBACK_TOKEN", "0123456789abcdef"),
            ("CI_WORKER__EMULATOR__CMQ_QUEUES", "a,b"),
            // A numeric-looking secret stays a string (the crate's own list parsing would not).
            ("CI_WORKER__CI__SECRET_ID", "1e5"),
            ("CI_WORKER__CI__SECRET_KEY", "007"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.worker.callback_ingress,
        [CallbackIngress::Cmq, CallbackIngress::Http]
    );
    assert_eq!(s.emulator.cmq_queues, ["a", "b"]);
    assert_eq!(
        (s.ci.secret_id.as_str(), s.ci.secret_key.expose()),
        ("1e5", "007")
    );
    assert_eq!(s.cmq_endpoint(), "https://cmq-gz.public.tencenttdmq.com");
    assert_eq!(s.cmq_queue(), "ci-callbacks");
    for (value, says) in [
        ("cmq,ckafka", "\"ckafka\" is unknown"),
        ("cmq,cmq", "\"cmq\" is repeated"),
        ("", "at least one"),
    ] {
        let e = Settings::load_from(
            None,
            &env(&[("CI_WORKER__WORKER__CALLBACK_INGRESS", value)]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("worker.callback_ingress") && e.contains(says),
            "{value}: {e}"
        );
    }
}

#[test]
fn each_ingress_and_callback_type_checks_what_it_needs() {
    let fails = |pairs: &[(&str, &str)], key: &str| {
        let e = Settings::load_from(None, &env(pairs))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{pairs:?}: {e}");
        assert!(!e.contains("short-token"), "a token in an error: {e}");
    };
    fails(
        &[("CI_WORKER__WORKER__CALLBACK_INGRESS", "http")],
        "http.callback_token",
    );
    fails(
        &[
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "http"),
            ("CI_WORKER__HTTP__CALLBACK_TOKEN", "short-token"),
        ],
        "http.callback_token",
    );
    fails(
        &[("CI_WORKER__CI__CALLBACK_TYPE", "Url")],
        "ci.callback_url",
    );
    fails(
        &[("CI_WORKER__CI__CALLBACK_TYPE", "url")],
        "ci.callback_type",
    );
    fails(&[("CI_WORKER__CMQ__BATCH_SIZE", "17")], "cmq.batch_size");
    fails(
        &[("CI_WORKER__CMQ__POLLING_WAIT", "31s")],
        "cmq.polling_wait",
    );
    fails(
        &[("CI_WORKER__CMQ__SIGNATURE_METHOD", "sha256")],
        "cmq.signature_method",
    );
    fails(
        &[("CI_WORKER__CMQ__ENDPOINT", "cmq-gz.public.tencenttdmq.com")],
        "cmq.endpoint",
    );
    fails(
        &[("CI_WORKER__EMULATOR__TDMQ_DELIVERY", "kafka")],
        "emulator.tdmq_delivery",
    );
    let s = Settings::load_from(
        None,
        &env(&[
            ("CI_WORKER__CI__CALLBACK_TYPE", "Url"),
            (
                "CI_WORKER__CI__CALLBACK_URL",
                "https://worker.example.com/ci/callback/t",
            ),
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "pulsar"),
            ("CI_WORKER__CMQ__SIGNATURE_METHOD", "HmacSHA1"),
        ]),
    )
    .unwrap();
    assert_eq!(s.ci.callback_type, CallbackType::Url);
    assert_eq!(s.cmq.signature_method, SignatureMethod::HmacSha1);
}

/// The line `ci-worker config` prints (after `ci-worker: `) for each bad value, the same whether
/// the value is refused while typed or by a section's check.
/// What `ci.callback_type = "Kafka"` and the `kafka` ingress need, each refusal naming its key and
/// never printing the SASL password.
#[test]
fn kafka_callbacks_and_ingress_check_what_they_need() {
    const KAFKA_CI: [(&str, &str); 4] = [
        ("CI_WORKER__CI__CALLBACK_TYPE", "Kafka"),
        ("CI_WORKER__CI__KAFKA_REGION", "ap-guangzhou"),
        ("CI_WORKER__CI__KAFKA_INSTANCE_ID", "ckafka-abcd1234"),
        ("CI_WORKER__CI__KAFKA_TOPIC", "ci-callbacks"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = KAFKA_CI.to_vec();
        pairs.extend_from_slice(extra);
        pairs
    };
    let fails = |pairs: &[(&str, &str)], line: &str| {
        let e = Settings::load_from(None, &env(pairs))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(line), "{pairs:?}:\n{e}\nwanted\n{line}");
        assert!(!e.contains("hunter2"), "the password in an error: {e}");
    };
    let s = Settings::load_from(None, &env(&KAFKA_CI)).unwrap();
    assert_eq!(s.ci.callback_type, CallbackType::Kafka);
    assert_eq!(s.kafka_topic(), "ci-callbacks");
    assert_eq!(s.kafka.group_id, "ci-worker");
    assert_eq!(s.kafka.security_protocol, SecurityProtocol::Plaintext);

    for (i, (key, name)) in [
        ("ci.kafka_region", "CI_WORKER__CI__KAFKA_REGION"),
        ("ci.kafka_instance_id", "CI_WORKER__CI__KAFKA_INSTANCE_ID"),
        ("ci.kafka_topic", "CI_WORKER__CI__KAFKA_TOPIC"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut pairs = KAFKA_CI.to_vec();
        pairs.remove(i + 1);
        let _ = name;
        fails(
            &pairs,
            &format!("configuration: invalid {key} = \"\": must be"),
        );
    }
    fails(
        &with(&[("CI_WORKER__CI__KAFKA_INSTANCE_ID", "my-instance")]),
        "configuration: invalid ci.kafka_instance_id = \"my-instance\": must be a CKafka instance ID such as \
         ckafka-abcd1234 with ci.callback_type = \"Kafka\"",
    );
    fails(
        &with(&[("CI_WORKER__CI__KAFKA_REGION", "gz")]),
        "configuration: invalid ci.kafka_region = \"gz\": must be the CKafka instance's region, such as ap-guangzhou",
    );
    // Unused with another callback type: not required.
    Settings::load_from(None, &env(&[("CI_WORKER__CI__KAFKA_TOPIC", "")])).unwrap();

    // The ingress: brokers and a topic.
    fails(
        &with(&[("CI_WORKER__WORKER__CALLBACK_INGRESS", "kafka")]),
        "configuration: invalid kafka.brokers = \"\": is required when worker.callback_ingress has kafka: \
         must be host:port addresses separated by commas",
    );
    fails(
        &with(&[
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "kafka"),
            ("CI_WORKER__KAFKA__BROKERS", "10.0.0.5:9092,10.0.0.6"),
        ]),
        "configuration: invalid kafka.brokers = \"10.0.0.5:9092,10.0.0.6\": must be host:port addresses",
    );
    fails(
        &[
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "kafka"),
            ("CI_WORKER__KAFKA__BROKERS", "127.0.0.1:9092"),
        ],
        "configuration: invalid kafka.topic = \"\": names the topic the kafka ingress reads",
    );
    let s = Settings::load_from(
        None,
        &env(&[
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "kafka,pulsar"),
            ("CI_WORKER__KAFKA__BROKERS", "10.0.0.5:9092, 10.0.0.6:9092"),
            ("CI_WORKER__KAFKA__TOPIC", "events"),
            ("CI_WORKER__KAFKA__GROUP_ID", "workers"),
        ]),
    )
    .unwrap();
    assert!(s.has_ingress(CallbackIngress::Kafka));
    assert_eq!(s.kafka_topic(), "events");

    // SASL: CKafka's <instanceId>#<user> and a password; neither without SASL.
    let sasl = [
        ("CI_WORKER__KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
        (
            "CI_WORKER__KAFKA__SASL_USERNAME",
            "ckafka-abcd1234#ci-worker",
        ),
        ("CI_WORKER__KAFKA__SASL_PASSWORD", "hunter2"),
    ];
    let s = Settings::load_from(None, &env(&sasl)).unwrap();
    assert_eq!(s.kafka.security_protocol, SecurityProtocol::SaslSsl);
    assert_eq!(s.kafka.sasl_mechanism, SaslMechanism::Plain);
    let out = s.to_redacted_toml();
    assert!(out.contains("ckafka-abcd1234#ci-worker"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!format!("{:?}", s.kafka).contains("hunter2"));
    fails(
        &[sasl[0], ("CI_WORKER__KAFKA__SASL_USERNAME", "ci-worker"), sasl[2]],
        "configuration: invalid kafka.sasl_username = \"ci-worker\": must be CKafka's <instanceId>#<user>, \
         such as ckafka-abcd1234#ci-worker, with kafka.security_protocol = SASL_SSL",
    );
    fails(
        &[sasl[0], sasl[1]],
        "configuration: invalid kafka.sasl_password = \"\": is required with kafka.security_protocol = SASL_SSL",
    );
    fails(
        &[sasl[2]],
        "configuration: invalid kafka.sasl_password = \"(set)\": is used only with kafka.security_protocol = \
         SASL_PLAINTEXT or SASL_SSL",
    );
    fails(
        &[("CI_WORKER__KAFKA__SECURITY_PROTOCOL", "SSL")],
        "configuration: invalid kafka.security_protocol = \"SSL\": must be PLAINTEXT, SASL_PLAINTEXT or SASL_SSL",
    );
    fails(
        &[("CI_WORKER__KAFKA__SASL_MECHANISM", "GSSAPI")],
        "configuration: invalid kafka.sasl_mechanism = \"GSSAPI\": must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    );
    fails(
        &[("CI_WORKER__EMULATOR__KAFKA_BROKERS", "localhost")],
        "configuration: invalid emulator.kafka_brokers = \"localhost\": must be host:port addresses",
    );
}

#[test]
fn each_bad_value_gets_its_one_line() {
    for (var, value, line) in [
        (
            "WORKER__JOB_TIMEOUT",
            "soon",
            "configuration: \"soon\" is not a duration like 20s or 500ms (expected number at 0) for key `worker.job_timeout`",
        ),
        (
            "WORKER__MAX_IN_FLIGHT",
            "abc",
            "configuration: invalid type: string \"abc\", expected an integer for key `worker.max_in_flight` in the environment",
        ),
        (
            "CMQ__SIGNATURE_METHOD",
            "sha256",
            "configuration: invalid cmq.signature_method = \"sha256\": must be HmacSHA256 or HmacSHA1",
        ),
        (
            "HTTP__LISTEN",
            "nowhere",
            "configuration: invalid http.listen = \"nowhere\": must be an address such as 127.0.0.1:9000",
        ),
        (
            "EMULATOR__LISTEN",
            "x",
            "configuration: invalid emulator.listen = \"x\": must be an address such as 127.0.0.1:9000",
        ),
        (
            "PULSAR__URL",
            "x:6650",
            "configuration: invalid pulsar.url = \"x:6650\": must be pulsar://host:port or pulsar+ssl://host:port \
             (binary protocol), or http://host:port or https://host:port (HTTP lookup, TDMQ's service URL)",
        ),
        (
            "CI__ENDPOINT",
            "foo",
            "configuration: invalid ci.endpoint = \"foo\": must be empty or an http(s):// address such as http://127.0.0.1:9000",
        ),
        (
            "CMQ__ENDPOINT",
            "cmq-gz",
            "configuration: invalid cmq.endpoint = \"cmq-gz\": must be empty or an http(s):// address such as \
             https://cmq-gz.public.tencenttdmq.com",
        ),
        (
            "CI__METADATA_ENDPOINT",
            "http://a/b",
            "configuration: invalid ci.metadata_endpoint = \"http://a/b\": must be an http(s)://host[:port] address \
             without a path, such as http://metadata.tencentyun.com",
        ),
        (
            "WORKER__CALLBACK_INGRESS",
            "cmq,ckafka",
            "configuration: invalid worker.callback_ingress = \"cmq,ckafka\": must be a list of pulsar, cmq, http, \
             kafka (each once; \"ckafka\" is unknown)",
        ),
        (
            "WORKER__CALLBACK_INGRESS",
            "",
            "configuration: invalid worker.callback_ingress = \"\": must name at least one of pulsar, cmq, http, kafka",
        ),
        (
            "EMULATOR__TDMQ_DELIVERY",
            "kafka",
            "configuration: invalid emulator.tdmq_delivery = \"kafka\": must be cmq or pulsar",
        ),
        (
            "CMQ__POLLING_WAIT",
            "31s",
            "configuration: invalid cmq.polling_wait = \"31s\": must be at most 30s (CMQ's longest poll)",
        ),
        // The deprecated spellings are refused in their own words, naming themselves.
        (
            "PULSAR__RESULT_BATCH_DELAY_MS",
            "1500",
            "configuration: invalid pulsar.result_batch_delay_ms = \"1500\": must be at most 1000 (each result \
             waits up to this long before it is sent)",
        ),
        (
            "EMULATOR__CMQ_VISIBILITY_TIMEOUT_S",
            "0",
            "configuration: invalid emulator.cmq_visibility_timeout_s = \"0\": must be between 1 and 43200 \
             (CMQ's visibilityTimeout range)",
        ),
        (
            "EMULATOR__TEMPORARY_CREDENTIALS_LIFETIME_SECS",
            "0",
            "configuration: invalid emulator.temporary_credentials_lifetime_secs = \"0\": must be between 1 and 43200",
        ),
        (
            "EMULATOR__JOB_DURATION_MS",
            "x",
            "configuration: invalid type: string \"x\", expected an integer for key `emulator.job_duration_ms` \
             in the environment",
        ),
        // The humane spellings.
        (
            "PULSAR__RESULT_BATCH_DELAY",
            "2s",
            "configuration: invalid pulsar.result_batch_delay = \"2s\": must be at most 1s (each result waits up \
             to this long before it is sent)",
        ),
        (
            "EMULATOR__CMQ_VISIBILITY_TIMEOUT",
            "1500ms",
            "configuration: invalid emulator.cmq_visibility_timeout = \"1s 500ms\": must be whole seconds from 1s \
             to 12h (CMQ's visibilityTimeout range)",
        ),
        (
            "EMULATOR__TEMPORARY_CREDENTIALS_LIFETIME",
            "13h",
            "configuration: invalid emulator.temporary_credentials_lifetime = \"13h\": must be whole seconds from \
             1s to 12h",
        ),
    ] {
        let var = format!("CI_WORKER__{var}");
        let err = Settings::load_from(None, &env(&[(&var, value)])).unwrap_err();
        assert_eq!(err.to_string(), line, "{var}={value}");
    }
}

/// An http(s) key is one typed value wherever it is: refused as soon as it is spelled wrong, even
/// where it would not be used.
#[test]
fn http_addresses_are_typed_where_they_are_unused_too() {
    let e = Settings::load_from(None, &env(&[("CI_WORKER__CI__CALLBACK_URL", "worker/cb")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ci.callback_url = \"worker/cb\""), "{e}");
    let s = Settings::load_from(
        None,
        &env(&[
            ("CI_WORKER__CI__ENDPOINT", "http://127.0.0.1:9000"),
            ("CI_WORKER__CMQ__ENDPOINT", "http://127.0.0.1:9100"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.ci.endpoint.as_ref().map(HttpUrl::as_str),
        Some("http://127.0.0.1:9000"),
        "kept as written, no slash added"
    );
    assert_eq!(s.cmq_endpoint(), "http://127.0.0.1:9100");
    let out = s.to_redacted_toml();
    assert!(
        out.contains("endpoint = \"http://127.0.0.1:9000\""),
        "{out}"
    );
    assert!(
        out.contains("callback_url = \"\""),
        "empty keys still shown: {out}"
    );
}

/// Keys that carried their unit: read in that unit, shown under the humane name, said deprecated.
#[test]
fn deprecated_unit_keys_are_read_and_said_deprecated() {
    let renamed = [
        (
            "PULSAR__RESULT_BATCH_DELAY_MS",
            "5",
            "pulsar.result_batch_delay",
            "5ms",
        ),
        (
            "EMULATOR__JOB_DURATION_MS",
            "300",
            "emulator.job_duration",
            "300ms",
        ),
        ("EMULATOR__LATENCY_MS", "20", "emulator.latency", "20ms"),
        (
            "EMULATOR__ANSWER_DELAY_MS",
            "1500",
            "emulator.answer_delay",
            "1s 500ms",
        ),
        (
            "EMULATOR__CMQ_VISIBILITY_TIMEOUT_S",
            "60",
            "emulator.cmq_visibility_timeout",
            "1m",
        ),
        (
            "EMULATOR__TEMPORARY_CREDENTIALS_LIFETIME_SECS",
            "120",
            "emulator.temporary_credentials_lifetime",
            "2m",
        ),
    ];
    let vars: Vec<(String, &str)> = renamed
        .iter()
        .map(|(var, value, ..)| (format!("CI_WORKER__{var}"), *value))
        .collect();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let s = Settings::load_from(None, &env(&pairs)).unwrap();
    assert_eq!(s.pulsar.result_batch_delay, Duration::from_millis(5));
    assert_eq!(s.emulator.job_duration, Duration::from_millis(300));
    assert_eq!(s.emulator.latency, Duration::from_millis(20));
    assert_eq!(s.emulator.answer_delay, Duration::from_millis(1500));
    assert_eq!(s.emulator.cmq_visibility_timeout, Duration::from_secs(60));
    assert_eq!(
        s.emulator.temporary_credentials_lifetime,
        Duration::from_secs(120)
    );
    let out = s.to_redacted_toml();
    assert_eq!(s.notes().len(), renamed.len());
    for (var, _, new, humane) in renamed {
        let old = var.to_lowercase().replacen("__", ".", 1);
        let comment =
            format!("# {old} is deprecated: read as {new} = \"{humane}\" (below); spell it so");
        assert!(out.lines().any(|l| l == comment), "{comment} in {out}");
        let (_, leaf) = new.split_once('.').unwrap();
        assert!(
            out.contains(&format!("\n{leaf} = \"{humane}\"")),
            "{new} in {out}"
        );
        let (_, old_leaf) = old.split_once('.').unwrap();
        assert!(
            !out.contains(&format!("\n{old_leaf} =")),
            "{old} shown in {out}"
        );
    }
    // From a file, in the old unit too.
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        f,
        "[pulsar]\nresult_batch_delay_ms = 7\n[emulator]\ncmq_visibility_timeout_s = 45"
    )
    .unwrap();
    let s = Settings::load_from(Some(f.path()), &env(&[])).unwrap();
    assert_eq!(s.pulsar.result_batch_delay, Duration::from_millis(7));
    assert_eq!(s.emulator.cmq_visibility_timeout, Duration::from_secs(45));
    // The humane spellings say nothing.
    let s = Settings::load_from(
        None,
        &env(&[
            ("CI_WORKER__PULSAR__RESULT_BATCH_DELAY", "5ms"),
            ("CI_WORKER__EMULATOR__JOB_DURATION", "300ms"),
        ]),
    )
    .unwrap();
    assert_eq!(s.pulsar.result_batch_delay, Duration::from_millis(5));
    assert_eq!(s.emulator.job_duration, Duration::from_millis(300));
    assert!(s.notes().is_empty(), "{:?}", s.notes());
}

#[test]
fn both_spellings_at_once_are_refused_naming_both() {
    let both = "configuration: pulsar.result_batch_delay_ms and pulsar.result_batch_delay are both set: \
                pulsar.result_batch_delay_ms is the deprecated spelling of pulsar.result_batch_delay; keep \
                pulsar.result_batch_delay only";
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "[pulsar]\nresult_batch_delay_ms = 5").unwrap();
    for (file, vars) in [
        (
            None,
            env(&[
                ("CI_WORKER__PULSAR__RESULT_BATCH_DELAY_MS", "5"),
                ("CI_WORKER__PULSAR__RESULT_BATCH_DELAY", "5ms"),
            ]),
        ),
        (
            Some(f.path()),
            env(&[("CI_WORKER__PULSAR__RESULT_BATCH_DELAY", "5ms")]),
        ),
    ] {
        let err = Settings::load_from(file, &vars).unwrap_err();
        assert_eq!(err.to_string(), both);
    }
    let err = Settings::load_from(
        None,
        &env(&[
            (
                "CI_WORKER__EMULATOR__TEMPORARY_CREDENTIALS_LIFETIME_SECS",
                "60",
            ),
            ("CI_WORKER__EMULATOR__TEMPORARY_CREDENTIALS_LIFETIME", "1m"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("emulator.temporary_credentials_lifetime_secs and emulator.temporary_credentials_lifetime"),
        "{err}"
    );
}

/// The shipped example documents every key with its default: it must load, equal the built-in
/// defaults, and name every key the program knows (a new key without docs fails here).
#[test]
fn example_file_is_complete_and_matches_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci-worker.example.toml");
    let loaded = Settings::load_from(Some(&path), &HashMap::new()).unwrap();
    let as_value = |s: &Settings| toml::Value::try_from(s).unwrap();
    assert_eq!(as_value(&loaded), as_value(&Settings::default()));
    let text = std::fs::read_to_string(&path).unwrap();
    let toml::Value::Table(sections) = as_value(&Settings::default()) else {
        panic!("settings are a table")
    };
    for (section, keys) in sections {
        assert!(
            text.contains(&format!("[{section}]")),
            "[{section}] undocumented"
        );
        let toml::Value::Table(keys) = keys else {
            continue;
        };
        for key in keys.keys() {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{key} ="))
                        || l.trim_start().starts_with(&format!("# {key} ="))),
                "{section}.{key} undocumented in ci-worker.example.toml"
            );
        }
    }
}
