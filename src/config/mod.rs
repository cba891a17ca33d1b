//! Configuration: a TOML file (`--config FILE` or `CI_WORKER_CONFIG`) overlaid by environment variables
//! `CI_WORKER__<SECTION>__<KEY>`, plus Tencent Cloud's usual credential variables.
//!
//! Precedence, lowest first: built-in defaults, the file, `TENCENTCLOUD_SECRET_ID` /
//! `TENCENTCLOUD_SECRET_KEY` / `TENCENTCLOUD_SESSION_TOKEN` (or `TENCENTCLOUD_TOKEN`,
//! `TENCENTCLOUD_SECURITY_TOKEN`), then `CI_WORKER__*` (the most specific wins).
//! Every key is checked at start-up so that a bad value stops the program with one line naming the
//! key: typed values (closed sets, durations, addresses) while they are read, the rest by each
//! section's `validate`.
//!
//! # Layout
//! - this file: [`Settings`], loading, the keys renamed to humane durations, `ci-worker config`'s output.
//! - `error`: [`ConfigError`], the line a bad value stops the program with.
//! - `value`: what the sections share: humane durations, [`HttpUrl`] (the one http(s) rule),
//!   listen addresses, the refusal a typed value gives.
//! - one file per section, its struct beside its checks: `pulsar`, `ci`, `worker`, `http`, `cmq`,
//!   `kafka`, `log`, and `emulator` (built with the `emulator` feature).
//! - `callbacks`: whether an ingress reads the completion events `ci.callback_type` sends (what
//!   `ci-worker run` warns about and `ci-worker doctor` fails on).

mod callbacks;
mod ci;
mod cmq;
#[cfg(feature = "emulator")]
mod emulator;
mod error;
mod http;
mod kafka;
mod log;
mod pulsar;
// The loading tests spell every section, the emulator's included.
#[cfg(all(test, feature = "emulator"))]
mod tests;
mod value;
mod worker;

pub use callbacks::CallbackMismatch;
pub use ci::{is_role_name, CiSettings, DEFAULT_METADATA_ENDPOINT, DEFAULT_STS_ENDPOINT};
pub use cmq::CmqSettings;
#[cfg(feature = "emulator")]
pub use emulator::{EmulatorSettings, KeyPair, TdmqDelivery};
pub use error::ConfigError;
pub use http::HttpSettings;
pub use kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
pub use log::{LogFormat, LogSettings};
pub use pulsar::PulsarSettings;
pub use value::HttpUrl;
pub use worker::{CallbackIngress, WorkerSettings};

use config::Source;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use value::Renamed;

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "CI_WORKER_CONFIG";
const ENV_PREFIX: &str = "CI_WORKER";
const ENV_SEPARATOR: &str = "__";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub pulsar: PulsarSettings,
    pub ci: CiSettings,
    pub worker: WorkerSettings,
    pub http: HttpSettings,
    pub cmq: CmqSettings,
    pub kafka: KafkaSettings,
    #[cfg(feature = "emulator")]
    pub emulator: EmulatorSettings,
    /// A build without the emulator reads past an `[emulator]` section (one file serves both
    /// builds, as `ci-worker.example.toml` does) and says so in [`Settings::notes`].
    #[cfg(not(feature = "emulator"))]
    #[serde(skip_serializing)]
    emulator: Option<serde::de::IgnoredAny>,
    pub log: LogSettings,
    /// What the operator should know about the configuration as written (deprecated keys, an
    /// ignored section): `ci-worker config` prints them, `ci-worker run` logs them.
    #[serde(skip)]
    notes: Vec<String>,
}

/// Keys holding a list; from the environment their value is split at commas.
const LIST_KEYS: [(&str, &str); 5] = [
    (
        "worker.callback_ingress",
        "CI_WORKER__WORKER__CALLBACK_INGRESS",
    ),
    ("emulator.cmq_queues", "CI_WORKER__EMULATOR__CMQ_QUEUES"),
    ("emulator.cvm_roles", "CI_WORKER__EMULATOR__CVM_ROLES"),
    (
        "emulator.denied_actions",
        "CI_WORKER__EMULATOR__DENIED_ACTIONS",
    ),
    ("emulator.ci_buckets", "CI_WORKER__EMULATOR__CI_BUCKETS"),
];

/// Every key renamed to a humane duration, by section.
fn renamed() -> impl Iterator<Item = &'static Renamed> {
    let all = pulsar::RENAMED.iter();
    #[cfg(feature = "emulator")]
    let all = all.chain(emulator::RENAMED);
    all
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
        // The session token under each name Tencent's tools use; when several are set the
        // last listed wins (the map keeps the last).
        let tencent: config::Map<String, String> = [
            ("TENCENTCLOUD_SECRET_ID", "SECRET_ID"),
            ("TENCENTCLOUD_SECRET_KEY", "SECRET_KEY"),
            ("TENCENTCLOUD_SECURITY_TOKEN", "SESSION_TOKEN"),
            ("TENCENTCLOUD_TOKEN", "SESSION_TOKEN"),
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
        let mut root = builder
            .build()
            .and_then(|raw| raw.collect())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut notes = Vec::new();
        for key in renamed() {
            if let Some(note) = respell(&mut root, key)? {
                notes.push(note);
            }
        }
        let mut settings: Settings = config::Value::new(None, config::ValueKind::Table(root))
            .try_deserialize()
            .map_err(ConfigError::from_loading)?;
        #[cfg(not(feature = "emulator"))]
        if settings.emulator.is_some() {
            notes.push(
                "[emulator] is ignored: this ci-worker is built without the emulator (cargo feature \
                 \"emulator\")"
                    .into(),
            );
        }
        settings.notes = notes;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every section's keys whose values have a fixed form the types do not carry; the
    /// first bad one is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.pulsar.validate()?;
        self.ci.validate()?;
        self.http
            .validate(self.has_ingress(CallbackIngress::Http))?;
        self.cmq.validate()?;
        self.kafka.validate(
            self.has_ingress(CallbackIngress::Kafka),
            &self.ci.kafka_topic,
        )?;
        self.worker.validate()?;
        #[cfg(feature = "emulator")]
        self.emulator.validate()?;
        Ok(())
    }

    /// What the operator should know about the configuration as written: deprecated keys, a
    /// section this build ignores.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The CMQ endpoint the `cmq` ingress uses (`cmq.endpoint`, or `ci.mq_region`'s public one).
    pub fn cmq_endpoint(&self) -> String {
        match &self.cmq.endpoint {
            Some(url) => url.to_string(),
            None => format!(
                "https://cmq-{}.public.tencenttdmq.com",
                self.ci.mq_region.as_str()
            ),
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

    /// The topic the `kafka` ingress reads (`kafka.topic`, or `ci.kafka_topic`).
    pub fn kafka_topic(&self) -> &str {
        self.kafka.topic_or(&self.ci.kafka_topic)
    }

    /// Whether `worker.callback_ingress` names `source`.
    pub fn has_ingress(&self, source: CallbackIngress) -> bool {
        self.worker.has_ingress(source)
    }

    /// Whether `worker.callback_ingress` reads what `ci.callback_type` sends (`None`: it does).
    pub fn callback_mismatch(&self) -> Option<CallbackMismatch> {
        callbacks::callback_mismatch(&self.ci, &self.worker)
    }

    /// Whether any credential source is configured (keys, `ci.credentials_file` or `ci.cvm_role`).
    pub fn has_credential_source(&self) -> bool {
        self.ci.has_credential_source()
    }

    /// The CI credentials, if both halves are configured.
    pub fn credentials(&self) -> Option<crate::ci::sign::Credentials> {
        self.ci.credentials()
    }

    /// The effective configuration as TOML, secrets redacted (for `ci-worker config`), after
    /// comments saying how `pulsar.url` is used and what [`Settings::notes`] says.
    pub fn to_redacted_toml(&self) -> String {
        let body =
            toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        let mut out = format!("# {}\n", self.pulsar.url_usage());
        for note in &self.notes {
            out.push_str(&format!("# {note}\n"));
        }
        out + &body
    }
}

/// Reads a key spelled in a unit (`renamed.old`) as its humane duration (`renamed.new`), in place
/// in the merged tree, and says so; both spelled is refused.
fn respell(
    root: &mut config::Map<String, config::Value>,
    renamed: &Renamed,
) -> Result<Option<String>, ConfigError> {
    let (section, old) = renamed.old.split_once('.').expect("section.key");
    let (_, new) = renamed.new.split_once('.').expect("section.key");
    let Some(config::ValueKind::Table(table)) = root.get_mut(section).map(|v| &mut v.kind) else {
        return Ok(None);
    };
    let Some(given) = table.remove(old) else {
        return Ok(None);
    };
    if table.contains_key(new) {
        return Err(ConfigError::BothSpellings {
            old: renamed.old,
            new: renamed.new,
        });
    }
    // Read as the old key always was, so a bad value is told what it always was.
    let nested = |v: config::Value| {
        let leaf = config::Map::from([(old.to_string(), v)]);
        let inner = config::Value::new(None, config::ValueKind::Table(leaf));
        let outer = config::Map::from([(section.to_string(), inner)]);
        config::Value::new(None, config::ValueKind::Table(outer))
    };
    let n = nested(given)
        .try_deserialize::<HashMap<String, HashMap<String, u64>>>()
        .map_err(ConfigError::from_loading)?[section][old];
    if let Some((range, rule)) = &renamed.bounds {
        if !range.contains(&n) {
            return Err(ConfigError::invalid(renamed.old, &n.to_string(), rule));
        }
    }
    let humane = value::humane(renamed.unit.duration(n));
    table.insert(
        new.to_string(),
        config::Value::new(None, config::ValueKind::String(humane.clone())),
    );
    Ok(Some(format!(
        "{} is deprecated: read as {} = \"{humane}\" (below); spell it so",
        renamed.old, renamed.new
    )))
}

#[cfg(all(test, not(feature = "emulator")))]
mod without_emulator {
    use crate::config::Settings;
    use std::collections::HashMap;
    use std::io::Write;
    use std::path::Path;

    /// One file serves builds with and without the emulator: its section is read past and said so.
    #[test]
    fn an_emulator_section_is_ignored_and_said_so() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[emulator]\nlisten = \"not checked\"\njob_duration_ms = 5"
        )
        .unwrap();
        let vars = HashMap::from([(
            "CI_WORKER__EMULATOR__CMQ_QUEUES".to_string(),
            "a,b".to_string(),
        )]);
        let s = Settings::load_from(Some(f.path()), &vars).unwrap();
        assert_eq!(s.notes().len(), 1, "{:?}", s.notes());
        let out = s.to_redacted_toml();
        assert!(out.contains("# [emulator] is ignored"), "{out}");
        assert!(!out.contains("[emulator]\n"), "{out}");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci-worker.example.toml");
        let s = Settings::load_from(Some(&example), &HashMap::new()).unwrap();
        assert!(s.notes()[0].contains("[emulator] is ignored"));
        let plain = Settings::load_from(None, &HashMap::new()).unwrap();
        assert!(plain.notes().is_empty());
    }
}
