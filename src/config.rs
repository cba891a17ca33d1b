//! Configuration: a TOML file (`--config FILE` or `CI_WORKER_CONFIG`) overlaid by environment variables
//! `CI_WORKER__<SECTION>__<KEY>`, plus Tencent Cloud's usual credential variables.
//!
//! Precedence, lowest first: built-in defaults, the file, `TENCENTCLOUD_SECRET_ID` /
//! `TENCENTCLOUD_SECRET_KEY` / `TENCENTCLOUD_SESSION_TOKEN`, then `CI_WORKER__*` (the most specific wins).
//! Every key is validated at start-up so that a bad value stops the program with one line naming the key.

use crate::ci::rules::{closed_set, CallbackFormat, CallbackType, MqMode, MqRegion};
use crate::cmq::sign::SignatureMethod;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "CI_WORKER_CONFIG";
const ENV_PREFIX: &str = "CI_WORKER";
const ENV_SEPARATOR: &str = "__";
/// The CVM instance metadata service (`ci.metadata_endpoint`'s default).
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://metadata.tencentyun.com";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: invalid {key} = {value:?}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub pulsar: PulsarSettings,
    pub ci: CiSettings,
    pub worker: WorkerSettings,
    pub http: HttpSettings,
    pub cmq: CmqSettings,
    pub emulator: EmulatorSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PulsarSettings {
    /// `pulsar://host:port` or `pulsar+ssl://host:port` (binary protocol, lookups on the
    /// connection), or `http://host:port` / `https://host:port` (HTTP lookup, the service URL TDMQ
    /// for Pulsar 2.7.1+ gives: each topic's broker is looked up over HTTP, then reached over the
    /// binary protocol at the `brokerUrl` it answered, `brokerUrlTls` for https).
    pub url: String,
    /// JWT for token authentication (TDMQ role token); empty = no authentication.
    pub token: Secret,
    pub request_topic: String,
    pub request_subscription: String,
    pub callback_topic: String,
    pub callback_subscription: String,
    pub result_topic: String,
    pub dead_letter_topic: String,
    /// Internal: delayed deadline records (each for a batch of jobs submitted together), due when the
    /// worker should ask CI about a job whose completion event has not come; read on a Shared
    /// subscription (`request_subscription`), the only kind TDMQ delays messages on.
    pub deadline_topic: String,
    /// Internal: `done` records (ids of jobs whose final result is out, batched), which every replica
    /// reads on a subscription of its own, so whichever replica a deadline reaches knows the job finished.
    pub done_topic: String,
    /// Producer batching on `result_topic`: results stored together, one broker entry per batch
    /// (up to `result_batch_max_messages` or 1 MiB, sent `result_batch_delay_ms` after its first
    /// result at the latest). Each result is still acknowledged to the worker on its own, and its
    /// input acknowledged only after that. Safe for consumers on Apache's Java, C++, Python and Go
    /// clients (they acknowledge an entry once all its messages are acknowledged; a batch redelivered
    /// after a consumer crash comes again whole, as duplicates). Turn it off for consumers on the
    /// Rust `pulsar` crate (it acknowledges the whole entry with its first message) and for
    /// Key_Shared consumers that need each request's results in order on one consumer (the broker
    /// routes a batch by its first key). See README "Results".
    pub result_batching: bool,
    /// Most results in one batch (`result_batching`).
    pub result_batch_max_messages: u32,
    /// How long a batch waits for more results after its first, milliseconds (`result_batching`).
    pub result_batch_delay_ms: u64,
}

impl PulsarSettings {
    /// How `url` is used, for `ci-worker config` (a password in the URL is left out).
    pub fn url_usage(&self) -> String {
        let shown = match url::Url::parse(&self.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => self.url.clone(),
        };
        if self.url.starts_with("http://") || self.url.starts_with("https://") {
            let field = if self.url.starts_with("https://") {
                "brokerUrlTls"
            } else {
                "brokerUrl"
            };
            format!(
                "pulsar.url {shown}: HTTP lookup (GET /lookup/v2/topic/<domain>/<tenant>/<namespace>/<topic> \
                 per producer or consumer, then the binary protocol to each topic's {field})"
            )
        } else {
            format!("pulsar.url {shown}: binary protocol, lookups on the connection")
        }
    }
}

impl Default for PulsarSettings {
    fn default() -> Self {
        PulsarSettings {
            url: "pulsar://127.0.0.1:6650".into(),
            token: Secret::default(),
            request_topic: "persistent://public/default/ci-requests".into(),
            request_subscription: "ci-worker".into(),
            callback_topic: "persistent://public/default/ci-callbacks".into(),
            callback_subscription: "ci-worker".into(),
            result_topic: "persistent://public/default/ci-results".into(),
            dead_letter_topic: "persistent://public/default/ci-dead-letter".into(),
            deadline_topic: "persistent://public/default/ci-worker-deadlines".into(),
            done_topic: "persistent://public/default/ci-worker-done".into(),
            result_batching: true,
            result_batch_max_messages: 1000,
            result_batch_delay_ms: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CiSettings {
    /// Address override (e.g. the emulator at `http://127.0.0.1:9000`). Requests still carry and sign
    /// the real `Host: <bucket>.ci.<region>.myqcloud.com`. Empty = the real CI over HTTPS.
    pub endpoint: String,
    pub secret_id: String,
    pub secret_key: Secret,
    /// Temporary credentials' token, sent as the signed `x-ci-security-token` header.
    pub session_token: Secret,
    /// Temporary credentials in a JSON file, in the CVM metadata answer's field names
    /// (`TmpSecretId`, `TmpSecretKey`, optional `Token`, `ExpiredTime`), re-read when it changes
    /// (e.g. a Kubernetes Secret volume). Empty = not used. One credential source at a time:
    /// `secret_id`/`secret_key` (or `TENCENTCLOUD_SECRET_*`), this file, or `cvm_role`.
    pub credentials_file: String,
    /// The CVM / TKE node's CAM role: its temporary credentials are fetched from
    /// `<metadata_endpoint>/latest/meta-data/cam/security-credentials/<cvm_role>` and refreshed
    /// before they expire. Empty = not used.
    pub cvm_role: String,
    /// The instance metadata service `cvm_role` is read from.
    pub metadata_endpoint: String,
    /// CI queue for submitted jobs; empty = CI's default queue (learnt from `GET /queue` when the
    /// worker must list a bucket's jobs). A `QueueId` in the job wins.
    pub queue_id: String,
    /// `JSON` or `XML`: the format CI writes completion events in. A `CallBackFormat` in the job wins.
    pub callback_format: CallbackFormat,
    /// `TDMQ` (CI writes the event into the TDMQ for CMQ queue `mq_*` name) or `Url` (CI POSTs it to
    /// `callback_url`, e.g. this worker's HTTP ingress).
    pub callback_type: CallbackType,
    /// `CallBack` when `callback_type = "Url"`: the address CI POSTs completion events to.
    pub callback_url: String,
    /// `CallBackMqConfig.MqRegion`: one of sh, bj, gz, cd, hk.
    pub mq_region: MqRegion,
    /// `CallBackMqConfig.MqMode`: Queue or Topic.
    pub mq_mode: MqMode,
    /// `CallBackMqConfig.MqName`: the TDMQ queue/topic name CI publishes to. Kept apart from
    /// `pulsar.callback_topic` (the full Pulsar name the worker reads) because CI names it differently.
    pub mq_name: String,
    /// Timeout of one CI HTTP call.
    #[serde(with = "duration_str")]
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

impl Default for CiSettings {
    fn default() -> Self {
        CiSettings {
            endpoint: String::new(),
            secret_id: String::new(),
            secret_key: Secret::default(),
            session_token: Secret::default(),
            credentials_file: String::new(),
            cvm_role: String::new(),
            metadata_endpoint: DEFAULT_METADATA_ENDPOINT.into(),
            queue_id: String::new(),
            callback_format: CallbackFormat::Json,
            callback_type: CallbackType::Tdmq,
            callback_url: String::new(),
            mq_region: MqRegion::Gz,
            mq_mode: MqMode::Queue,
            mq_name: "ci-callbacks".into(),
            request_timeout: Duration::from_secs(10),
            max_requests_per_second: 0.0,
            adaptive_rate: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// At most this many requests held unacknowledged, and `POST /jobs` in flight.
    pub max_in_flight: usize,
    /// On CI's 429 `SlowDown` or 403 `QueueSaturated`, fewer `POST /jobs` in flight (× 0.7, once per
    /// round of calls), one more again per round of successes, up to `max_in_flight`.
    /// `false` = always `max_in_flight`.
    pub adaptive_concurrency: bool,
    /// Drain bound on SIGTERM/SIGINT: in-flight work past it is released (nacked) for redelivery.
    #[serde(with = "duration_str")]
    pub shutdown_timeout: Duration,
    /// Attempts of one CI call on transient failures (429, 5xx, connection errors, QueueSaturated)
    /// before the request is released for redelivery.
    pub retry_max_attempts: u32,
    /// First backoff; doubled each attempt, with full jitter, up to `retry_max_delay`.
    #[serde(with = "duration_str")]
    pub retry_base_delay: Duration,
    #[serde(with = "duration_str")]
    pub retry_max_delay: Duration,
    /// Deliveries of one message before it is moved to the dead-letter topic.
    pub max_redeliveries: u32,
    /// After this long without a completion event the worker describes the job itself.
    #[serde(with = "duration_str")]
    pub job_timeout: Duration,
    /// After this long a job still not finished gets a `timed_out` result.
    #[serde(with = "duration_str")]
    pub job_timeout_max: Duration,
    /// After a restart, how far back the worker looks for jobs an earlier process may have created
    /// for requests it had not acknowledged (so they are not submitted twice).
    #[serde(with = "duration_str")]
    pub recovery_lookback: Duration,
    /// Where completion events come in from; each source stores them in `pulsar.callback_topic`:
    /// `cmq` (read the TDMQ for CMQ queue CI writes to), `http` (CI POSTs them to this worker),
    /// `pulsar` (something else writes the callback topic). From the environment: comma-separated.
    pub callback_ingress: Vec<CallbackIngress>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            max_in_flight: 64,
            adaptive_concurrency: true,
            shutdown_timeout: Duration::from_secs(20),
            retry_max_attempts: 6,
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(10),
            max_redeliveries: 16,
            job_timeout: Duration::from_secs(600),
            job_timeout_max: Duration::from_secs(86_400),
            recovery_lookback: Duration::from_secs(3600),
            callback_ingress: vec![CallbackIngress::Cmq],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Health and metrics endpoint of `ci-worker run`, and the HTTP ingress
    /// (`POST /ci/callback/<callback_token>`).
    pub listen: String,
    /// The secret path segment CI's callbacks must carry (ingress `http`); at least 16 characters of
    /// `A-Z a-z 0-9 - _ .`.
    pub callback_token: Secret,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "0.0.0.0:9464".into(),
            callback_token: Secret::default(),
        }
    }
}

/// The TDMQ for CMQ queue the `cmq` ingress reads (signed with the CI credentials).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CmqSettings {
    /// CMQ API address: empty = the public one of `ci.mq_region`,
    /// `https://cmq-<region>.public.tencenttdmq.com`; in a VPC `http://<region>.mqadapter.cmq.tencentyun.com`.
    pub endpoint: String,
    /// The queue; empty = `ci.mq_name` (the queue CI writes to).
    pub queue: String,
    /// Long poll of one receive (CMQ's maximum: 30 s).
    #[serde(with = "duration_str")]
    pub polling_wait: Duration,
    /// Messages per receive and delete (1–16).
    pub batch_size: usize,
    /// `HmacSHA256` or `HmacSHA1`.
    pub signature_method: SignatureMethod,
    /// Receives in flight at once (each long-polls on its own connection).
    pub concurrency: usize,
}

impl Default for CmqSettings {
    fn default() -> Self {
        CmqSettings {
            endpoint: String::new(),
            queue: String::new(),
            polling_wait: Duration::from_secs(30),
            batch_size: 16,
            signature_method: SignatureMethod::HmacSha256,
            concurrency: 2,
        }
    }
}

impl Settings {
    /// The CMQ endpoint the `cmq` ingress uses (`cmq.endpoint`, or `ci.mq_region`'s public one).
    pub fn cmq_endpoint(&self) -> String {
        if self.cmq.endpoint.is_empty() {
            format!(
                "https://cmq-{}.public.tencenttdmq.com",
                self.ci.mq_region.as_str()
            )
        } else {
            self.cmq.endpoint.clone()
        }
    }

    /// The queue the `cmq` ingress reads (`cmq.queue`, or `ci.mq_name`).
    pub fn cmq_queue(&self) -> &str {
        if self.cmq.queue.is_empty() {
            &self.ci.mq_name
        } else {
            &self.cmq.queue
        }
    }

    /// Whether `worker.callback_ingress` names `source`.
    pub fn has_ingress(&self, source: CallbackIngress) -> bool {
        self.worker.callback_ingress.contains(&source)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatorSettings {
    pub listen: String,
    /// How long an emulated job runs (Submitted → Running → Success/Failed).
    pub job_duration_ms: u64,
    /// Added to every API response, to emulate CI's network latency.
    pub latency_ms: u64,
    /// Added after every CI job API request was handled, before its answer is sent (a slow way
    /// back: the job exists before the client hears of it); `latency_ms` comes before handling.
    pub answer_delay_ms: u64,
    /// Where `CallBackType=TDMQ` events go: `cmq` (into the emulator's CMQ queue `MqName`, served on
    /// `cmq_listen`, as CI does) or `pulsar` (into `callback_topic_template`, for a bridge setup).
    pub tdmq_delivery: TdmqDelivery,
    /// The emulator's CMQ API 2.0 (`POST /v2/index.php`).
    pub cmq_listen: String,
    /// CMQ queues that exist from the start (others can be made with `CreateQueue`).
    pub cmq_queues: Vec<String>,
    /// `visibilityTimeout` of the queues in `cmq_queues` (CMQ's default: 30 s).
    pub cmq_visibility_timeout_s: u64,
    /// Pulsar topic for TDMQ callbacks when `tdmq_delivery = "pulsar"`; `{MqName}`, `{MqRegion}`,
    /// `{MqMode}` are substituted.
    pub callback_topic_template: String,
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
    /// How long the temporary credentials it issues are valid (`ExpiredTime` − issue time). A key
    /// set is handed out until half of this is gone, then a new one; requests signed with one past
    /// its `ExpiredTime` are refused (CI: 401 `SignatureExpired`, CMQ: 4100).
    pub temporary_credentials_lifetime_secs: u64,
    /// Accept every request without checking its signature. Without it the emulator refuses to start
    /// when no key pair is configured, so that a misconfigured setup fails loudly instead of silently
    /// letting unsigned requests through.
    pub allow_anonymous: bool,
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        EmulatorSettings {
            listen: "127.0.0.1:9000".into(),
            job_duration_ms: 2000,
            latency_ms: 0,
            answer_delay_ms: 0,
            tdmq_delivery: TdmqDelivery::Cmq,
            cmq_listen: "127.0.0.1:9100".into(),
            cmq_queues: vec!["ci-callbacks".into()],
            cmq_visibility_timeout_s: 30,
            callback_topic_template: "persistent://public/default/{MqName}".into(),
            throttle_rate: 0.0,
            qps_limit: 0,
            error_rate: 0.0,
            duplicate_rate: 0.0,
            credentials: Vec::new(),
            cvm_roles: Vec::new(),
            temporary_credentials_lifetime_secs: 7200,
            allow_anonymous: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    pub secret_id: String,
    pub secret_key: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (human, for terminals) or `json` (one object per line, for collectors).
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

closed_set! {
    /// One of `worker.callback_ingress`.
    pub enum CallbackIngress: "must be a list of pulsar, cmq, http" {
        Pulsar = "pulsar",
        Cmq = "cmq",
        Http = "http",
    }
}

closed_set! {
    /// `emulator.tdmq_delivery`.
    pub enum TdmqDelivery: "must be cmq or pulsar" {
        Cmq = "cmq",
        Pulsar = "pulsar",
    }
}

closed_set! {
    /// `log.format`.
    pub enum LogFormat: "must be text or json" {
        Text = "text",
        Json = "json",
    }
}

/// A closed-set key: its name, whether a spelling is one of its values, and its rule.
type ClosedSetKey = (&'static str, fn(&str) -> bool, &'static str);

/// The keys whose values form a closed set.
const CLOSED_SETS: [ClosedSetKey; 7] = [
    (
        "ci.callback_format",
        |v| CallbackFormat::parse(v).is_some(),
        CallbackFormat::RULE,
    ),
    (
        "ci.callback_type",
        |v| CallbackType::parse(v).is_some(),
        CallbackType::RULE,
    ),
    (
        "cmq.signature_method",
        |v| SignatureMethod::parse(v).is_some(),
        SignatureMethod::RULE,
    ),
    (
        "emulator.tdmq_delivery",
        |v| TdmqDelivery::parse(v).is_some(),
        TdmqDelivery::RULE,
    ),
    (
        "ci.mq_region",
        |v| MqRegion::parse(v).is_some(),
        MqRegion::RULE,
    ),
    ("ci.mq_mode", |v| MqMode::parse(v).is_some(), MqMode::RULE),
    (
        "log.format",
        |v| LogFormat::parse(v).is_some(),
        LogFormat::RULE,
    ),
];

/// Keys holding a list; from the environment their value is split at commas.
const LIST_KEYS: [(&str, &str); 3] = [
    (
        "worker.callback_ingress",
        "CI_WORKER__WORKER__CALLBACK_INGRESS",
    ),
    ("emulator.cmq_queues", "CI_WORKER__EMULATOR__CMQ_QUEUES"),
    ("emulator.cvm_roles", "CI_WORKER__EMULATOR__CVM_ROLES"),
];

/// Checks the closed-set keys on the merged raw values, before they are typed: serde's own refusal
/// would arrive as a load error worded by serde, and these keys are reported like every other key,
/// as `invalid <key> = "<value>": <rule>`.
fn check_closed_sets(raw: &config::Config) -> Result<(), ConfigError> {
    for (key, accepts, rule) in CLOSED_SETS {
        // Absent keys take their defaults; a value that is not a string at all (a table) is left
        // to deserialization, which names it.
        let Ok(value) = raw.get_string(key) else {
            continue;
        };
        if !accepts(&value) {
            return Err(ConfigError::Invalid {
                key,
                value,
                allowed: rule.to_string(),
            });
        }
    }
    if let Ok(sources) = raw.get_array("worker.callback_ingress") {
        let names: Vec<String> = sources
            .into_iter()
            .map(|v| v.into_string().unwrap_or_default())
            .collect();
        let mut seen = Vec::new();
        for name in &names {
            let known = CallbackIngress::parse(name.trim());
            if known.is_none() || seen.contains(&known) {
                return Err(ConfigError::Invalid {
                    key: "worker.callback_ingress",
                    value: names.join(","),
                    allowed: format!(
                        "{} (each once; {name:?} is {})",
                        CallbackIngress::RULE,
                        if known.is_none() {
                            "unknown"
                        } else {
                            "repeated"
                        }
                    ),
                });
            }
            seen.push(known);
        }
    }
    Ok(())
}

impl Settings {
    /// Loads defaults ← file ← TENCENTCLOUD_* ← CI_WORKER__*, then validates.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &vars)
    }

    /// [`Settings::load`] with an explicit environment, so tests need not mutate the process's.
    pub fn load_from(
        file: Option<&Path>,
        vars: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let tencent: config::Map<String, String> = [
            ("TENCENTCLOUD_SECRET_ID", "SECRET_ID"),
            ("TENCENTCLOUD_SECRET_KEY", "SECRET_KEY"),
            ("TENCENTCLOUD_SESSION_TOKEN", "SESSION_TOKEN"),
        ]
        .into_iter()
        .filter_map(|(var, key)| {
            vars.get(var).map(|v| {
                (
                    format!("{ENV_PREFIX}{ENV_SEPARATOR}CI{ENV_SEPARATOR}{key}"),
                    v.clone(),
                )
            })
        })
        .collect();
        let ours: config::Map<String, String> = vars
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .filter(|(k, _)| !LIST_KEYS.iter().any(|(_, var)| var == k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Lists from the environment, split here: the crate's own list parsing would also turn
        // numeric-looking strings (a secret key) into numbers. The environment wins, like an override.
        for (key, var) in LIST_KEYS {
            if let Some(value) = vars.get(var) {
                let items: Vec<String> = value
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                builder = builder
                    .set_override(key, items)
                    .map_err(|e| ConfigError::Load(e.to_string()))?;
            }
        }
        for source in [tencent, ours] {
            builder = builder.add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .source(Some(source)),
            );
        }
        let raw = builder
            .build()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        check_closed_sets(&raw)?;
        let settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every key whose value has a fixed form; the first bad one is reported. (The closed
    /// sets are typed: their spelling was checked on loading.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, value: &str, allowed: &str) -> ConfigError {
            ConfigError::Invalid {
                key,
                value: value.to_string(),
                allowed: allowed.to_string(),
            }
        }
        let p = &self.pulsar;
        if !["pulsar://", "pulsar+ssl://", "http://", "https://"]
            .iter()
            .any(|scheme| p.url.starts_with(scheme))
            || url::Url::parse(&p.url)
                .map(|u| u.host().is_none())
                .unwrap_or(true)
        {
            return Err(invalid(
                "pulsar.url",
                &p.url,
                "must be pulsar://host:port or pulsar+ssl://host:port (binary protocol), or \
                 http://host:port or https://host:port (HTTP lookup, TDMQ's service URL)",
            ));
        }
        if p.result_batching && p.result_batch_max_messages < 2 {
            return Err(invalid(
                "pulsar.result_batch_max_messages",
                &p.result_batch_max_messages.to_string(),
                "must be at least 2 while pulsar.result_batching is on (set result_batching = false \
                 for one message per entry)",
            ));
        }
        if p.result_batch_delay_ms > 1000 {
            return Err(invalid(
                "pulsar.result_batch_delay_ms",
                &p.result_batch_delay_ms.to_string(),
                "must be at most 1000 (each result waits up to this long before it is sent)",
            ));
        }
        let topics = [
            ("pulsar.request_topic", &p.request_topic),
            ("pulsar.callback_topic", &p.callback_topic),
            ("pulsar.result_topic", &p.result_topic),
            ("pulsar.dead_letter_topic", &p.dead_letter_topic),
            ("pulsar.deadline_topic", &p.deadline_topic),
            ("pulsar.done_topic", &p.done_topic),
        ];
        let subscriptions = [
            ("pulsar.request_subscription", &p.request_subscription),
            ("pulsar.callback_subscription", &p.callback_subscription),
        ];
        for (key, value) in topics.iter().chain(&subscriptions) {
            if value.trim().is_empty() || value.chars().any(char::is_whitespace) {
                return Err(invalid(
                    key,
                    value,
                    "must be a non-empty name without spaces",
                ));
            }
        }
        // Delayed delivery needs a persistent topic; a topic of two roles would mix their records.
        if !p.deadline_topic.starts_with("persistent://") {
            return Err(invalid(
                "pulsar.deadline_topic",
                &p.deadline_topic,
                "must be a persistent://tenant/namespace/topic name (delayed delivery needs a persistent topic)",
            ));
        }
        for (i, (key, value)) in topics.iter().enumerate() {
            if let Some((other, _)) = topics[..i]
                .iter()
                .find(|(_, v)| topic_name(v) == topic_name(value))
            {
                return Err(invalid(
                    key,
                    value,
                    &format!("must differ from {other}: each topic has one role"),
                ));
            }
        }
        let c = &self.ci;
        if !c.endpoint.is_empty() {
            let ok = url::Url::parse(&c.endpoint)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(invalid(
                    "ci.endpoint",
                    &c.endpoint,
                    "must be empty or an http(s):// address such as http://127.0.0.1:9000",
                ));
            }
        }
        if c.mq_name.trim().is_empty() {
            return Err(invalid("ci.mq_name", &c.mq_name, "must not be empty"));
        }
        if c.secret_key.is_empty() != c.secret_id.is_empty() {
            return Err(invalid(
                "ci.secret_id",
                if c.secret_id.is_empty() { "" } else { "(set)" },
                "ci.secret_id and ci.secret_key (or TENCENTCLOUD_SECRET_ID/_KEY) go together",
            ));
        }
        self.validate_credential_source()?;
        if c.request_timeout.is_zero() {
            return Err(invalid("ci.request_timeout", "0s", "must be above zero"));
        }
        if c.callback_type == CallbackType::Url {
            let ok = url::Url::parse(&c.callback_url)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(invalid(
                    "ci.callback_url",
                    &c.callback_url,
                    "must be the http(s):// address CI POSTs completion events to when ci.callback_type = \"Url\"",
                ));
            }
        }
        if self.worker.callback_ingress.is_empty() {
            return Err(invalid(
                "worker.callback_ingress",
                "",
                "must name at least one of pulsar, cmq, http",
            ));
        }
        if self.has_ingress(CallbackIngress::Http) {
            let token = self.http.callback_token.expose();
            let ok = token.len() >= 16
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(invalid(
                    "http.callback_token",
                    if token.is_empty() { "" } else { "(set)" },
                    "must be at least 16 characters of A-Z a-z 0-9 - _ . when worker.callback_ingress has http",
                ));
            }
        }
        if self.has_ingress(CallbackIngress::Cmq) {
            let endpoint = self.cmq_endpoint();
            let ok = url::Url::parse(&endpoint)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .unwrap_or(false);
            if !ok {
                return Err(invalid(
                    "cmq.endpoint",
                    &endpoint,
                    "must be empty or an http(s):// address such as https://cmq-gz.public.tencenttdmq.com",
                ));
            }
        }
        let q = &self.cmq;
        if !(1..=crate::cmq::api::MAX_BATCH).contains(&q.batch_size) {
            return Err(invalid(
                "cmq.batch_size",
                &q.batch_size.to_string(),
                "must be between 1 and 16",
            ));
        }
        if q.polling_wait > Duration::from_secs(crate::cmq::api::MAX_POLLING_WAIT_SECONDS) {
            return Err(invalid(
                "cmq.polling_wait",
                &format!("{:?}", q.polling_wait),
                "must be at most 30s (CMQ's longest poll)",
            ));
        }
        if !(1..=64).contains(&q.concurrency) {
            return Err(invalid(
                "cmq.concurrency",
                &q.concurrency.to_string(),
                "must be between 1 and 64",
            ));
        }
        let w = &self.worker;
        let rps = self.ci.max_requests_per_second;
        if !rps.is_finite() || rps < 0.0 {
            return Err(invalid(
                "ci.max_requests_per_second",
                &rps.to_string(),
                "must be a number of calls per second, 0 or more (0 = no limit)",
            ));
        }
        if w.max_in_flight == 0 || w.max_in_flight > 10_000 {
            return Err(invalid(
                "worker.max_in_flight",
                &w.max_in_flight.to_string(),
                "must be between 1 and 10000",
            ));
        }
        if w.retry_max_attempts == 0 {
            return Err(invalid(
                "worker.retry_max_attempts",
                "0",
                "must be at least 1",
            ));
        }
        if w.retry_base_delay > w.retry_max_delay {
            return Err(invalid(
                "worker.retry_base_delay",
                &format!("{:?}", w.retry_base_delay),
                "must not exceed worker.retry_max_delay",
            ));
        }
        if w.max_redeliveries == 0 {
            return Err(invalid(
                "worker.max_redeliveries",
                "0",
                "must be at least 1",
            ));
        }
        if w.job_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "worker.job_timeout",
                &format!("{:?}", w.job_timeout),
                "must be at least 1s (TDMQ delivers delayed messages to about a second)",
            ));
        }
        if w.job_timeout > w.job_timeout_max {
            return Err(invalid(
                "worker.job_timeout",
                &format!("{:?}", w.job_timeout),
                "must not exceed worker.job_timeout_max",
            ));
        }
        for (key, value) in [
            ("http.listen", &self.http.listen),
            ("emulator.listen", &self.emulator.listen),
            ("emulator.cmq_listen", &self.emulator.cmq_listen),
        ] {
            if value.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    key,
                    value,
                    "must be an address such as 127.0.0.1:9000",
                ));
            }
        }
        let e = &self.emulator;
        for (key, rate) in [
            ("emulator.throttle_rate", e.throttle_rate),
            ("emulator.error_rate", e.error_rate),
            ("emulator.duplicate_rate", e.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid(
                    key,
                    &rate.to_string(),
                    "must be a fraction from 0 to 1",
                ));
            }
        }
        if !(1..=43_200).contains(&e.cmq_visibility_timeout_s) {
            return Err(invalid(
                "emulator.cmq_visibility_timeout_s",
                &e.cmq_visibility_timeout_s.to_string(),
                "must be between 1 and 43200 (CMQ's visibilityTimeout range)",
            ));
        }
        if !(1..=43_200).contains(&e.temporary_credentials_lifetime_secs) {
            return Err(invalid(
                "emulator.temporary_credentials_lifetime_secs",
                &e.temporary_credentials_lifetime_secs.to_string(),
                "must be between 1 and 43200",
            ));
        }
        if let Some(bad) = e.cvm_roles.iter().find(|r| !is_role_name(r)) {
            return Err(invalid(
                "emulator.cvm_roles",
                bad,
                "must be CAM role names: at most 128 characters of A-Z a-z 0-9 + = , . @ _ -",
            ));
        }
        if !e.callback_topic_template.contains("{MqName}") {
            return Err(invalid(
                "emulator.callback_topic_template",
                &e.callback_topic_template,
                "must contain {MqName}",
            ));
        }
        Ok(())
    }

    /// One credential source at most, each well-formed. The order is that of Tencent's SDK chains
    /// (environment, profile file, CVM role), but where they take the first source that yields
    /// keys, two configured sources are refused here: a worker signing with other keys than the
    /// operator meant is worse than one that does not start.
    fn validate_credential_source(&self) -> Result<(), ConfigError> {
        let c = &self.ci;
        let keys = !c.secret_id.is_empty();
        let file = !c.credentials_file.trim().is_empty();
        let role = !c.cvm_role.trim().is_empty();
        let both = |key: &'static str, value: &str, other: &str| ConfigError::Invalid {
            key,
            value: value.to_string(),
            allowed: format!(
                "must not be set together with {other}: one credential source at a time \
                 (ci.secret_id/ci.secret_key or TENCENTCLOUD_SECRET_ID/_KEY, ci.credentials_file, \
                 or ci.cvm_role)"
            ),
        };
        if file && keys {
            return Err(both(
                "ci.credentials_file",
                &c.credentials_file,
                "ci.secret_id/ci.secret_key (or TENCENTCLOUD_SECRET_ID/_KEY)",
            ));
        }
        if role && keys {
            return Err(both(
                "ci.cvm_role",
                &c.cvm_role,
                "ci.secret_id/ci.secret_key (or TENCENTCLOUD_SECRET_ID/_KEY)",
            ));
        }
        if role && file {
            return Err(both("ci.cvm_role", &c.cvm_role, "ci.credentials_file"));
        }
        if !c.session_token.is_empty() && !keys {
            return Err(ConfigError::Invalid {
                key: "ci.session_token",
                value: "(set)".into(),
                allowed: if file || role {
                    "must not be set with ci.credentials_file or ci.cvm_role: those bring their own Token".into()
                } else {
                    "needs ci.secret_id/ci.secret_key (or TENCENTCLOUD_SECRET_ID/_KEY): a token belongs to a temporary key pair".into()
                },
            });
        }
        if role && !is_role_name(&c.cvm_role) {
            return Err(ConfigError::Invalid {
                key: "ci.cvm_role",
                value: c.cvm_role.clone(),
                allowed:
                    "must be a CAM role name: at most 128 characters of A-Z a-z 0-9 + = , . @ _ -"
                        .into(),
            });
        }
        let ok = url::Url::parse(&c.metadata_endpoint)
            .map(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
            })
            .unwrap_or(false);
        if !ok {
            return Err(ConfigError::Invalid {
                key: "ci.metadata_endpoint",
                value: c.metadata_endpoint.clone(),
                allowed: format!(
                    "must be an http(s)://host[:port] address without a path, such as {DEFAULT_METADATA_ENDPOINT}"
                ),
            });
        }
        Ok(())
    }

    /// Whether any credential source is configured (keys, `ci.credentials_file` or `ci.cvm_role`).
    pub fn has_credential_source(&self) -> bool {
        !self.ci.secret_id.is_empty()
            || !self.ci.credentials_file.trim().is_empty()
            || !self.ci.cvm_role.trim().is_empty()
    }

    /// The effective configuration as TOML, secrets redacted (for `ci-worker config`), after a
    /// comment saying how `pulsar.url` is used.
    pub fn to_redacted_toml(&self) -> String {
        let body =
            toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        format!("# {}\n{body}", self.pulsar.url_usage())
    }

    /// The CI credentials, if both halves are configured.
    pub fn credentials(&self) -> Option<crate::ci::sign::Credentials> {
        if self.ci.secret_id.is_empty() {
            return None;
        }
        Some(crate::ci::sign::Credentials {
            secret_id: self.ci.secret_id.clone(),
            secret_key: self.ci.secret_key.clone(),
            session_token: (!self.ci.session_token.is_empty())
                .then(|| self.ci.session_token.clone()),
        })
    }
}

/// Durations as humane strings (`"20s"`, `"500ms"`, `"10m"`); a bare number means seconds.
mod duration_str {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => match t.trim().parse::<u64>() {
                Ok(n) => Ok(Duration::from_secs(n)),
                Err(_) => humantime::parse_duration(t.trim()).map_err(|e| {
                    de::Error::custom(format!("{t:?} is not a duration like 20s or 500ms ({e})"))
                }),
            },
        }
    }
}

/// A CAM role name: 1–128 characters of `A-Z a-z 0-9 + = , . @ _ -` (it goes into a URL path).
pub fn is_role_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b',' | b'.' | b'@' | b'_' | b'-')
        })
}

/// A topic's full name: Pulsar reads `name` alone as `persistent://public/default/name`.
fn topic_name(topic: &str) -> String {
    if topic.contains("://") {
        topic.to_string()
    } else {
        format!("persistent://public/default/{topic}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        assert_eq!(s.http.listen, "0.0.0.0:9464");
        assert_eq!(s.emulator.listen, "127.0.0.1:9000");
        assert_eq!(s.emulator.answer_delay_ms, 0);
    }

    #[test]
    fn emulator_answer_delay_comes_from_the_environment() {
        let s = Settings::load_from(
            None,
            &env(&[("CI_WORKER__EMULATOR__ANSWER_DELAY_MS", "250")]),
        )
        .unwrap();
        assert_eq!(s.emulator.answer_delay_ms, 250);
        assert_eq!(s.emulator.latency_ms, 0);
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
        let err = Settings::load_from(None, &env(&[("CI_WORKER__WORKER__JOB_TIMEOUT", "soon")]))
            .unwrap_err();
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
        assert_eq!(s.ci.metadata_endpoint, DEFAULT_METADATA_ENDPOINT);
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
            ("cmq,kafka", "\"kafka\" is unknown"),
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
}

#[cfg(test)]
mod example_file {
    use super::*;

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
}
