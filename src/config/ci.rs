//! `[ci]`: the Cloud Infinite API, the credentials that sign its calls, the callback every job
//! carries, and the pace of the calls.

use super::error::ConfigError;
use super::value::{self, duration, HttpUrl};
use crate::ci::rules::{is_kafka_topic, is_region, CallbackFormat, CallbackType, MqMode, MqRegion};
use crate::secret::Secret;
use serde::{Deserializer, Serialize};
use std::time::Duration;

/// The CVM instance metadata service (`ci.metadata_endpoint`'s default).
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://metadata.tencentyun.com";
/// STS, where a TKE pod's OIDC token is exchanged for keys (`ci.sts_endpoint`'s default, the SDKs'
/// endpoint; `https://sts.internal.tencentcloudapi.com` is the one inside Tencent Cloud's network).
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.tencentcloudapi.com";

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CiSettings {
    /// Address override (e.g. the emulator at `http://127.0.0.1:9000`). Requests still carry and sign
    /// the real `Host: <bucket>.ci.<region>.myqcloud.com`. Empty (`None`) = the real CI over HTTPS.
    #[serde(
        deserialize_with = "endpoint",
        serialize_with = "value::serialize_optional_url"
    )]
    pub endpoint: Option<HttpUrl>,
    pub secret_id: String,
    pub secret_key: Secret,
    /// Temporary credentials' token, sent as the signed `x-ci-security-token` header.
    pub session_token: Secret,
    /// Temporary credentials in a JSON file, in the CVM metadata answer's field names
    /// (`TmpSecretId`, `TmpSecretKey`, optional `Token`, `ExpiredTime`), re-read when it changes
    /// (e.g. a Kubernetes Secret volume). Empty = not used. One of these keys at a time:
    /// `secret_id`/`secret_key` (or `TENCENTCLOUD_SECRET_*`), this file, or `cvm_role`; the rest
    /// of the chain (profile file, TKE OIDC, a discovered role) is in [`crate::credentials`].
    pub credentials_file: String,
    /// The CVM / TKE node's CAM role: its temporary credentials are fetched from
    /// `<metadata_endpoint>/latest/meta-data/cam/security-credentials/<cvm_role>` and refreshed
    /// before they expire. Empty = the role bound to the instance, if the metadata service names
    /// one (and neither an earlier source nor `credentials_file` is there).
    pub cvm_role: String,
    /// The instance metadata service `cvm_role` is read from.
    #[serde(deserialize_with = "metadata_endpoint")]
    pub metadata_endpoint: HttpUrl,
    /// STS, where TKE OIDC (the `TKE_*` variables) exchanges the pod's token for temporary keys
    /// with `AssumeRoleWithWebIdentity`.
    #[serde(deserialize_with = "sts_endpoint")]
    pub sts_endpoint: HttpUrl,
    /// CI queue for submitted jobs; empty = CI's default queue (learnt from `GET /queue` when the
    /// worker must list a bucket's jobs). A `QueueId` in the job wins.
    pub queue_id: String,
    /// `JSON` or `XML`: the format CI writes completion events in. A `CallBackFormat` in the job wins.
    pub callback_format: CallbackFormat,
    /// `TDMQ` (CI writes the event into the TDMQ for CMQ queue `mq_*` name), `Url` (CI POSTs it to
    /// `callback_url`, e.g. this worker's HTTP ingress) or `Kafka` (CI writes it into the CKafka
    /// topic `kafka_*` name, which the `kafka` ingress reads).
    pub callback_type: CallbackType,
    /// `CallBack` when `callback_type = "Url"`: the address CI POSTs completion events to.
    #[serde(
        deserialize_with = "callback_url",
        serialize_with = "value::serialize_optional_url"
    )]
    pub callback_url: Option<HttpUrl>,
    /// `CallBackMqConfig.MqRegion`: one of sh, bj, gz, cd, hk.
    pub mq_region: MqRegion,
    /// `CallBackMqConfig.MqMode`: Queue or Topic.
    pub mq_mode: MqMode,
    /// `CallBackMqConfig.MqName`: the TDMQ queue/topic name CI publishes to. Kept apart from
    /// `pulsar.callback_topic` (the full Pulsar name the worker reads) because CI names it differently.
    pub mq_name: String,
    /// `CallBackKafkaConfig.Region` when `callback_type = "Kafka"`: the CKafka instance's region,
    /// such as `ap-guangzhou`.
    pub kafka_region: String,
    /// `CallBackKafkaConfig.InstanceId`: the CKafka instance, `ckafka-…`.
    pub kafka_instance_id: String,
    /// `CallBackKafkaConfig.Topic`: the topic of that instance CI writes events into (the `kafka`
    /// ingress reads it unless `kafka.topic` names another).
    pub kafka_topic: String,
    /// Timeout of one CI HTTP call.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// At most this many CI calls per second from this process (every call: submit, describe, list,
    /// cancel, queue), spaced evenly; a fraction is allowed. 0 = no limit of its own. With
    /// `adaptive_rate` it is also the ceiling of the pace learnt from CI's 429s.
    pub max_requests_per_second: f64,
    /// On CI's 429 `SlowDown`, pace every CI call of the process at a rate learnt from the calls CI
    /// accepted (cut by 10 % per 429, at most once a second; raised again while it holds calls back).
    /// `false` = only `max_requests_per_second`, fixed.
    pub adaptive_rate: bool,
}

const CALLBACK_URL_RULE: &str =
    "must be the http(s):// address CI POSTs completion events to when ci.callback_type = \"Url\"";

fn endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HttpUrl>, D::Error> {
    value::optional_http_url(
        d,
        "must be empty or an http(s):// address such as http://127.0.0.1:9000",
    )
}

fn callback_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HttpUrl>, D::Error> {
    value::optional_http_url(d, CALLBACK_URL_RULE)
}

/// The metadata service's root: the worker appends the credentials path to it.
fn metadata_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<HttpUrl, D::Error> {
    let rule = format!(
        "must be an http(s)://host[:port] address without a path, such as {DEFAULT_METADATA_ENDPOINT}"
    );
    let url = value::http_url(d, &rule)?;
    if url.url().path() != "/" || url.url().query().is_some() {
        return Err(value::refuse(url.as_str(), &rule));
    }
    Ok(url)
}

fn sts_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<HttpUrl, D::Error> {
    value::http_url(
        d,
        &format!("must be an http(s):// address such as {DEFAULT_STS_ENDPOINT}"),
    )
}

impl Default for CiSettings {
    fn default() -> Self {
        CiSettings {
            endpoint: None,
            secret_id: String::new(),
            secret_key: Secret::default(),
            session_token: Secret::default(),
            credentials_file: String::new(),
            cvm_role: String::new(),
            metadata_endpoint: HttpUrl::parse(DEFAULT_METADATA_ENDPOINT)
                .expect("the default metadata endpoint is an http address"),
            sts_endpoint: HttpUrl::parse(DEFAULT_STS_ENDPOINT)
                .expect("the default STS endpoint is an https address"),
            queue_id: String::new(),
            callback_format: CallbackFormat::Json,
            callback_type: CallbackType::Tdmq,
            callback_url: None,
            mq_region: MqRegion::Gz,
            mq_mode: MqMode::Queue,
            mq_name: "ci-callbacks".into(),
            kafka_region: String::new(),
            kafka_instance_id: String::new(),
            kafka_topic: String::new(),
            request_timeout: Duration::from_secs(10),
            max_requests_per_second: 0.0,
            adaptive_rate: true,
        }
    }
}

impl CiSettings {
    /// Checks what the types do not: the credential source, the callback's address, the pace.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = ConfigError::invalid;
        if self.mq_name.trim().is_empty() {
            return Err(invalid("ci.mq_name", &self.mq_name, "must not be empty"));
        }
        if self.secret_key.is_empty() != self.secret_id.is_empty() {
            return Err(invalid(
                "ci.secret_id",
                if self.secret_id.is_empty() {
                    ""
                } else {
                    "(set)"
                },
                "ci.secret_id and ci.secret_key (or TENCENTCLOUD_SECRET_ID/_KEY) go together",
            ));
        }
        self.validate_credential_source()?;
        if self.request_timeout.is_zero() {
            return Err(invalid("ci.request_timeout", "0s", "must be above zero"));
        }
        if self.callback_type == CallbackType::Url && self.callback_url.is_none() {
            return Err(invalid("ci.callback_url", "", CALLBACK_URL_RULE));
        }
        if self.callback_type == CallbackType::Kafka {
            self.validate_kafka_callback()?;
        }
        let rps = self.max_requests_per_second;
        if !rps.is_finite() || rps < 0.0 {
            return Err(invalid(
                "ci.max_requests_per_second",
                &rps.to_string(),
                "must be a number of calls per second, 0 or more (0 = no limit)",
            ));
        }
        Ok(())
    }

    /// `CallBackKafkaConfig`'s three values, each required with `callback_type = "Kafka"` (CI
    /// would take the job and lose its event otherwise).
    fn validate_kafka_callback(&self) -> Result<(), ConfigError> {
        let invalid = ConfigError::invalid;
        const WHEN: &str = "with ci.callback_type = \"Kafka\"";
        if !is_region(&self.kafka_region) {
            return Err(invalid(
                "ci.kafka_region",
                &self.kafka_region,
                &format!("must be the CKafka instance's region, such as ap-guangzhou, {WHEN}"),
            ));
        }
        if !is_kafka_instance_id(&self.kafka_instance_id) {
            return Err(invalid(
                "ci.kafka_instance_id",
                &self.kafka_instance_id,
                &format!("must be a CKafka instance ID such as ckafka-abcd1234 {WHEN}"),
            ));
        }
        if !is_kafka_topic(&self.kafka_topic) {
            return Err(invalid(
                "ci.kafka_topic",
                &self.kafka_topic,
                &format!(
                    "must be the topic CI writes events into (1-249 characters of A-Z a-z 0-9 . _ -) {WHEN}"
                ),
            ));
        }
        Ok(())
    }

    /// One of the sources named by these keys at most, each well-formed. The chain
    /// ([`crate::credentials`]) takes the first source that yields keys, as Tencent's SDKs do, but
    /// two of these keys set are refused here: both name a source on purpose, and a worker
    /// signing with other keys than the operator meant is worse than one that does not start.
    fn validate_credential_source(&self) -> Result<(), ConfigError> {
        let keys = !self.secret_id.is_empty();
        let file = !self.credentials_file.trim().is_empty();
        let role = !self.cvm_role.trim().is_empty();
        let both = |key: &'static str, value: &str, other: &str| {
            ConfigError::invalid(
                key,
                value,
                &format!(
                    "must not be set together with {other}: one credential source at a time \
                     (ci.secret_id/ci.secret_key or TENCENTCLOUD_SECRET_ID/_KEY, ci.credentials_file, \
                     or ci.cvm_role)"
                ),
            )
        };
        if file && keys {
            return Err(both(
                "ci.credentials_file",
                &self.credentials_file,
                "ci.secret_id/ci.secret_key (or TENCENTCLOUD_SECRET_ID/_KEY)",
            ));
        }
        if role && keys {
            return Err(both(
                "ci.cvm_role",
                &self.cvm_role,
                "ci.secret_id/ci.secret_key (or TENCENTCLOUD_SECRET_ID/_KEY)",
            ));
        }
        if role && file {
            return Err(both("ci.cvm_role", &self.cvm_role, "ci.credentials_file"));
        }
        if !self.session_token.is_empty() && !keys {
            return Err(ConfigError::invalid(
                "ci.session_token",
                "(set)",
                if file || role {
                    "must not be set with ci.credentials_file or ci.cvm_role: those bring their own Token"
                } else {
                    "needs ci.secret_id/ci.secret_key (or TENCENTCLOUD_SECRET_ID/_KEY): a token belongs to a temporary key pair"
                },
            ));
        }
        if role && !is_role_name(&self.cvm_role) {
            return Err(ConfigError::invalid(
                "ci.cvm_role",
                &self.cvm_role,
                "must be a CAM role name: at most 128 characters of A-Z a-z 0-9 + = , . @ _ -",
            ));
        }
        Ok(())
    }

    /// Whether any credential source is configured (keys, `credentials_file` or `cvm_role`).
    pub fn has_credential_source(&self) -> bool {
        !self.secret_id.is_empty()
            || !self.credentials_file.trim().is_empty()
            || !self.cvm_role.trim().is_empty()
    }

    /// The CI credentials, if both halves are configured.
    pub fn credentials(&self) -> Option<crate::ci::sign::Credentials> {
        if self.secret_id.is_empty() {
            return None;
        }
        Some(crate::ci::sign::Credentials {
            secret_id: self.secret_id.clone(),
            secret_key: self.secret_key.clone(),
            session_token: (!self.session_token.is_empty()).then(|| self.session_token.clone()),
        })
    }
}

/// A CKafka instance ID: `ckafka-` and lower-case letters and digits (the console's and the API's
/// `InstanceId`, e.g. `ckafka-abcd1234`).
pub fn is_kafka_instance_id(id: &str) -> bool {
    id.strip_prefix("ckafka-").is_some_and(|rest| {
        (1..=32).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// A CAM role name: 1–128 characters of `A-Z a-z 0-9 + = , . @ _ -` (it goes into a URL path).
pub fn is_role_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b',' | b'.' | b'@' | b'_' | b'-')
        })
}
