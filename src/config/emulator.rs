//! `[emulator]`: `ci-worker emulator`, the local Cloud Infinite (built with the `emulator` feature).
//!
//! The section lives here rather than in `src/emulator/`: [`Settings`](super::Settings) holds it
//! and the emulator reads `Settings`, so a section inside the emulator would make the two modules
//! import each other.

use super::error::ConfigError;
use super::value::{self, duration, listen, Renamed, Unit};
use crate::ci::rules::closed_set;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatorSettings {
    #[serde(with = "listen")]
    pub listen: SocketAddr,
    /// How long an emulated job runs (Submitted → Running → Success/Failed).
    #[serde(with = "duration")]
    pub job_duration: Duration,
    /// Added to every API response, to emulate CI's network latency.
    #[serde(with = "duration")]
    pub latency: Duration,
    /// Added after every CI job API request was handled, before its answer is sent (a slow way
    /// back: the job exists before the client hears of it); `latency` comes before handling.
    #[serde(with = "duration")]
    pub answer_delay: Duration,
    /// Where `CallBackType=TDMQ` events go: `cmq` (into the emulator's CMQ queue `MqName`, served on
    /// `cmq_listen`, as CI does) or `pulsar` (into `callback_topic_template`, for a bridge setup).
    pub tdmq_delivery: TdmqDelivery,
    /// The emulator's CMQ API 2.0 (`POST /v2/index.php`).
    #[serde(with = "listen")]
    pub cmq_listen: SocketAddr,
    /// CMQ queues that exist from the start (others can be made with `CreateQueue`).
    pub cmq_queues: Vec<String>,
    /// `visibilityTimeout` of the queues in `cmq_queues`, whole seconds from 1 s to 12 h (CMQ's
    /// default: 30 s).
    #[serde(with = "duration")]
    pub cmq_visibility_timeout: Duration,
    /// The queues' Max Message Unack Time (`msgRetentionSeconds` in TDMQ's `CreateCmqQueue`): a
    /// message not deleted this long after it was sent is deleted by the service, received or not.
    /// Whole seconds from 30 s to 12 h; TDMQ's default, 1 h.
    #[serde(with = "duration")]
    pub cmq_max_unack_time: Duration,
    /// Pulsar topic for TDMQ callbacks when `tdmq_delivery = "pulsar"`; `{MqName}`, `{MqRegion}`,
    /// `{MqMode}` are substituted.
    pub callback_topic_template: String,
    /// Kafka brokers (`host:port`, comma-separated) `CallBackType=Kafka` events are produced to,
    /// into the request's `CallBackKafkaConfig.Topic` (`Region` and `InstanceId` are checked, not
    /// used: one emulator stands for one CKafka instance). Empty = such events are given up (logged).
    pub kafka_brokers: String,
    /// Fraction of `POST /jobs` answered 429 SlowDown.
    pub throttle_rate: f64,
    /// A rate limit over every CI API call served: above this many calls in any one second (a
    /// sliding window of the calls let through), 429 `SlowDown`. 0 = none.
    pub qps_limit: u32,
    /// Fraction of `POST /jobs` answered 503 ServiceUnavailable.
    pub error_rate: f64,
    /// Fraction of completion events delivered twice.
    pub duplicate_rate: f64,
    /// Key pairs accepted besides `ci.secret_id` / `ci.secret_key` (TENCENTCLOUD_* variables).
    pub credentials: Vec<KeyPair>,
    /// CAM role names the emulator's instance metadata path
    /// (`GET /latest/meta-data/cam/security-credentials/<role>` on `listen`) issues temporary
    /// credentials for; empty = that path answers 404. From the environment: comma-separated.
    pub cvm_roles: Vec<String>,
    /// How long the temporary credentials it issues are valid (`ExpiredTime` − issue time), whole
    /// seconds from 1 s to 12 h. A key set is handed out until half of this is gone, then a new one;
    /// requests signed with one past its `ExpiredTime` are refused (CI: 401 `SignatureExpired`,
    /// CMQ: 4100).
    #[serde(with = "duration")]
    pub temporary_credentials_lifetime: Duration,
    /// The file holding the web identity token STS `AssumeRoleWithWebIdentity` (`POST /` on
    /// `listen`) accepts, read at every call (a test rewrites it as kubelet rotates a service
    /// account token); the answer's keys last `temporary_credentials_lifetime` (or the call's
    /// `DurationSeconds` when shorter). Empty = every such call is refused.
    pub web_identity_token_file: String,
    /// CAM actions refused to every key pair (names of [`crate::ci::cam::ALL`], e.g.
    /// `ci:CreateMediaJobs`, `cam:PassRole`): a call needing one is answered 403 `AccessDenied`
    /// after its signature is checked. From the environment: comma-separated.
    pub denied_actions: Vec<String>,
    /// The buckets with CI bound, as `<bucket>@<region>`; a call for any other bucket or region is
    /// answered 404 `NoSuchBucket`. Empty = every bucket. From the environment: comma-separated.
    pub ci_buckets: Vec<String>,
    /// The media processing queue `GET /queue` lists is `Paused` (a submitted job is then refused
    /// 403 `QueuePaused`, after its request was validated).
    pub media_queue_paused: bool,
    /// Accept every request without checking its signature. Without it the emulator refuses to start
    /// when no key pair is configured, so that a misconfigured setup fails loudly instead of silently
    /// letting unsigned requests through.
    pub allow_anonymous: bool,
}

/// Keys of this section spelled in a unit, still read.
pub(super) const RENAMED: &[Renamed] = &[
    Renamed {
        old: "emulator.job_duration_ms",
        new: "emulator.job_duration",
        unit: Unit::Millis,
        bounds: None,
    },
    Renamed {
        old: "emulator.latency_ms",
        new: "emulator.latency",
        unit: Unit::Millis,
        bounds: None,
    },
    Renamed {
        old: "emulator.answer_delay_ms",
        new: "emulator.answer_delay",
        unit: Unit::Millis,
        bounds: None,
    },
    Renamed {
        old: "emulator.cmq_visibility_timeout_s",
        new: "emulator.cmq_visibility_timeout",
        unit: Unit::Seconds,
        bounds: Some((
            1..=MAX_SECONDS,
            "must be between 1 and 43200 (CMQ's visibilityTimeout range)",
        )),
    },
    Renamed {
        old: "emulator.temporary_credentials_lifetime_secs",
        new: "emulator.temporary_credentials_lifetime",
        unit: Unit::Seconds,
        bounds: Some((1..=MAX_SECONDS, "must be between 1 and 43200")),
    },
];

/// CMQ's longest `visibilityTimeout`, and the longest lifetime of temporary credentials: 12 h.
const MAX_SECONDS: u64 = 43_200;
/// `emulator.cmq_max_unack_time`'s default: long enough for `worker.job_timeout`'s default (10 min).
const DEFAULT_UNACK_SECONDS: u64 = 3_600;
/// TDMQ for CMQ's shortest Max Message Unack Time.
const MIN_UNACK_SECONDS: u64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    pub secret_id: String,
    pub secret_key: Secret,
}

closed_set! {
    /// `emulator.tdmq_delivery`.
    pub enum TdmqDelivery: "must be cmq or pulsar" {
        Cmq = "cmq",
        Pulsar = "pulsar",
    }
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        EmulatorSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            job_duration: Duration::from_secs(2),
            latency: Duration::ZERO,
            answer_delay: Duration::ZERO,
            tdmq_delivery: TdmqDelivery::Cmq,
            cmq_listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            cmq_queues: vec!["ci-callbacks".into()],
            cmq_visibility_timeout: Duration::from_secs(30),
            cmq_max_unack_time: Duration::from_secs(DEFAULT_UNACK_SECONDS),
            callback_topic_template: "persistent://public/default/{MqName}".into(),
            kafka_brokers: String::new(),
            throttle_rate: 0.0,
            qps_limit: 0,
            error_rate: 0.0,
            duplicate_rate: 0.0,
            credentials: Vec::new(),
            cvm_roles: Vec::new(),
            temporary_credentials_lifetime: Duration::from_secs(7200),
            web_identity_token_file: String::new(),
            denied_actions: Vec::new(),
            ci_buckets: Vec::new(),
            media_queue_paused: false,
            allow_anonymous: false,
        }
    }
}

impl EmulatorSettings {
    /// Checks the fractions, the second-granular durations, the role names, the Kafka brokers and
    /// the topic template.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = ConfigError::invalid;
        for (key, rate) in [
            ("emulator.throttle_rate", self.throttle_rate),
            ("emulator.error_rate", self.error_rate),
            ("emulator.duplicate_rate", self.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid(
                    key,
                    &rate.to_string(),
                    "must be a fraction from 0 to 1",
                ));
            }
        }
        for (key, d, what) in [
            (
                "emulator.cmq_visibility_timeout",
                self.cmq_visibility_timeout,
                " (CMQ's visibilityTimeout range)",
            ),
            (
                "emulator.temporary_credentials_lifetime",
                self.temporary_credentials_lifetime,
                "",
            ),
        ] {
            if d.subsec_nanos() != 0 || !(1..=MAX_SECONDS).contains(&d.as_secs()) {
                return Err(invalid(
                    key,
                    &value::humane(d),
                    &format!("must be whole seconds from 1s to 12h{what}"),
                ));
            }
        }
        let unack = self.cmq_max_unack_time;
        if unack.subsec_nanos() != 0
            || !(MIN_UNACK_SECONDS..=MAX_SECONDS).contains(&unack.as_secs())
        {
            return Err(invalid(
                "emulator.cmq_max_unack_time",
                &value::humane(unack),
                "must be whole seconds from 30s to 12h (TDMQ for CMQ's Max Message Unack Time)",
            ));
        }
        if let Some(bad) = self
            .denied_actions
            .iter()
            .find(|a| crate::ci::cam::known(a).is_none())
        {
            return Err(invalid(
                "emulator.denied_actions",
                bad,
                &format!("must be CAM actions of {}", crate::ci::cam::ALL.join(", ")),
            ));
        }
        if let Some(bad) = self.ci_buckets.iter().find(|b| {
            b.split_once('@')
                .is_none_or(|(bucket, region)| bucket.is_empty() || region.is_empty())
        }) {
            return Err(invalid(
                "emulator.ci_buckets",
                bad,
                "must be <bucket>@<region> entries, e.g. examplebucket-1250000000@ap-guangzhou",
            ));
        }
        if let Some(bad) = self.cvm_roles.iter().find(|r| !super::ci::is_role_name(r)) {
            return Err(invalid(
                "emulator.cvm_roles",
                bad,
                "must be CAM role names: at most 128 characters of A-Z a-z 0-9 + = , . @ _ -",
            ));
        }
        if !self.kafka_brokers.trim().is_empty() {
            super::kafka::check_brokers("emulator.kafka_brokers", &self.kafka_brokers)?;
        }
        if !self.callback_topic_template.contains("{MqName}") {
            return Err(invalid(
                "emulator.callback_topic_template",
                &self.callback_topic_template,
                "must contain {MqName}",
            ));
        }
        Ok(())
    }
}
