//! `ci-worker bench`: throughput, latency and cost of the worker on the local stack (the Apache
//! Pulsar broker of `pulsar.url`, `ci-worker emulator` with `job_duration_ms = 0`, and `ci-worker run`
//! as processes of this same binary, on topics of their own). `scripts/bench.sh` is the documented
//! way to run it (release build, criterion benches of the pure parts, then this); the figures and
//! what they mean are in `docs/performance.md`.
//!
//! Sections (`--only`):
//! - `completion`: N completion events (half XML, half JSON, the emulator's shape with `MediaInfo`)
//!   pre-published to a fresh callback topic; `ci-worker run` is started and timed until N results are
//!   on its result topic. Beside it, in the same run, the raw relay limit: a minimal
//!   consumer→producer on the same `pulsar` crate and settings ([`io::relay`]), forwarding the same
//!   messages (through a subscription of its own) unparsed. `--repeat` pairs of runs, the order
//!   alternating (worker first, then relay first, …) so that neither side always goes second.
//! - `submission`: requests → `POST /jobs` → `submitted` event, for every `worker.max_in_flight` in
//!   `--in-flight` and emulator `latency_ms` in `--latency-ms`. The input objects carry the emulator's
//!   `__lost__` marker, so no completion event competes for the CPU.
//! - `latency`: a paced publisher at `--rate` requests/s for `--duration-secs`; per request the time
//!   from its publication to its final result, and the worker's own share of it.
//! - `scaling`: two `ci-worker run` processes on the same subscriptions against one.
//! - `ingress`: completion events through each source of `worker.callback_ingress` into results
//!   ([`ingress`]; `--ingress pulsar,cmq,http,kafka`): events published on the callback topic, sent
//!   into the emulator's CMQ queue, POSTed to the worker's `/ci/callback/<token>`, produced to a
//!   Kafka topic of `--kafka-brokers` ([`kafka`]). Per source, a burst of
//!   `--ingress-events` (events/s into results, first to last at a consumer of the result topic),
//!   steady runs at each of `--ingress-rates` events/s for `--ingress-duration-secs` (events/s, and
//!   the latency from the hand-over to the result's `publish_time`, p50/p99/max), the sources
//!   alternating over `--ingress-repeat` passes after a warm-up.
//! - `cmq`: the `ingress` section's cmq row alone (one runner per `--cmq-concurrency`).
//! - `throttle`: the submission path against the emulator's `qps_limit` ([`throttle`]).
//! - `messages`: broker messages per job ([`messages`]): a burst of `--message-jobs` jobs, every
//!   deadline come due and settled, counted from the broker's topic stats (published by the worker +
//!   delivered to its subscriptions, per job), with the completion events on the Pulsar callback
//!   topic, through the CMQ ingress, POSTed to the HTTP ingress or through a Kafka topic
//!   (`--message-ingress`).
//! - `memory`: peak and current RSS of `ci-worker run` ([`memory`]) with `--memory-jobs` jobs
//!   waiting for callbacks that never come, and working through a backlog of `--memory-backlog`
//!   completion events, each at several sizes to show whether it grows with them.
//! - `cost` (not in the default run): broker messages per job by topic, CI list calls and final
//!   results at steady request rates (`--cost-rates`) × replica counts (`--cost-replicas`)
//!   ([`cost`]).
//! - `soak` (not in the default run): a steady rate with replicas SIGKILLed now and then
//!   (`--soak-…`): extra CI jobs, second final results, requests without one ([`cost`]).
//!
//! Throughput is counted between the first and the last output as the benchmark's own consumer
//! receives them (what a client counting results sees), so process start-up does not count. CPU seconds and
//! peak RSS come from `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/status` (VmHWM).

mod cmq;
mod cost;
pub mod events;
mod ingress;
mod io;
mod kafka;
mod memory;
mod messages;
mod procs;
mod scaleout;
mod source;
mod throttle;

use crate::callback::event::parse_event;
use crate::config::Settings;
use crate::pulsar::Client;
use crate::result::normalize::normalize_event;
use anyhow::{bail, Context as _, Result};
use events::{format_of, EventFormat};
use io::Seen;
use procs::{Proc, Usage};
pub use source::Ingress;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// The benchmark's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Completion,
    Submission,
    Latency,
    Scaling,
    /// Events through each callback ingress into results.
    Ingress,
    /// The `ingress` section's cmq row alone.
    Cmq,
    Messages,
    Scaleout,
    Memory,
    Throttle,
    /// Not in the default run (about 10 minutes).
    Cost,
    /// Not in the default run.
    Soak,
}

/// The completion events of the completion section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventMix {
    /// CI's JSON `TaskFinish` events only.
    Json,
    /// Half XML, half JSON, alternating.
    Mixed,
}

impl EventMix {
    fn format_of(self, i: u64) -> EventFormat {
        match self {
            EventMix::Json => EventFormat::Json,
            EventMix::Mixed => format_of(i),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            EventMix::Json => "JSON TaskFinish events",
            EventMix::Mixed => "half XML, half JSON",
        }
    }
}

/// Options of the throttle section (flattened into `ci-worker bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct ThrottleOptions {
    /// The emulator's `qps_limit` in the throttle section.
    #[arg(long, default_value_t = 50)]
    pub throttle_qps: u32,
    /// Requests per throttle run.
    #[arg(long, default_value_t = 1000)]
    pub throttle_requests: u64,
    /// Emulator `latency_ms` values of the throttle section.
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    pub throttle_latency_ms: Vec<u64>,
    /// Worker settings of the throttle section, comma-separated: adaptive, fixed, paced, concurrency.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "adaptive,fixed,paced,concurrency"
    )]
    pub throttle_variants: Vec<Variant>,
    /// Runs of each combination.
    #[arg(long, default_value_t = 1)]
    pub throttle_repeat: u32,
}

/// Worker settings of a throttle run (`--throttle-variants`; see the `throttle` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    Adaptive,
    Fixed,
    Paced,
    Concurrency,
}

/// What happens to the replicas during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScaleoutMode {
    /// No disruption: the baseline.
    None,
    /// SIGKILL one replica and restart it at once, `--scaleout-kills` times.
    Kill,
    /// A rolling update: SIGTERM, start the replacement, wait for the old one to exit; every replica.
    Rolling,
}

/// Options of the cost and soak sections (flattened into `ci-worker bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct CostOptions {
    /// Steady request rates of the cost section, requests/s, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,500")]
    pub cost_rates: Vec<u64>,
    /// Replica counts of the cost section, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub cost_replicas: Vec<usize>,
    /// How long each cost cell publishes, seconds (rate × this many requests).
    #[arg(long, default_value_t = 30)]
    pub cost_duration_secs: u64,
    /// `worker.job_timeout` of the cost and soak sections, seconds: short, so that every deadline
    /// comes due in the run.
    #[arg(long, default_value_t = 4)]
    pub cost_job_timeout_secs: u64,
    /// The emulator's `latency_ms` in the cost and soak sections (every CI call answered after it).
    #[arg(long, default_value_t = 20)]
    pub cost_ci_latency_ms: u64,
    /// Partitions of the request, callback and result topics in the cost and soak sections (0: plain
    /// topics; the deadline topic is never partitioned). Requests are shared by partition (one
    /// replica reads each), so the default gives every replica count of the default matrix a share.
    #[arg(long, default_value_t = 8)]
    pub cost_partitions: u32,
    /// Requests per second of the soak section.
    #[arg(long, default_value_t = 50)]
    pub soak_rate: u64,
    /// Replicas of the soak section.
    #[arg(long, default_value_t = 2)]
    pub soak_replicas: usize,
    /// How long the soak section publishes, seconds.
    #[arg(long, default_value_t = 180)]
    pub soak_duration_secs: u64,
    /// One SIGKILL (and restart) of a replica this often during the soak, seconds; 0 = none.
    #[arg(long, default_value_t = 60)]
    pub soak_kill_every_secs: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Sections to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "completion,submission,latency,scaling,ingress,messages,scaleout,memory,throttle"
    )]
    pub only: Vec<Section>,
    /// Completion events for the completion-path and scaling figures.
    #[arg(long, default_value_t = 50_000)]
    pub events: u64,
    /// Worker/relay pairs of the completion-path measurement (even counts balance the order).
    #[arg(long, default_value_t = 2)]
    pub repeat: u32,
    /// Requests per submission-path combination (fewer where the ideal rate would take longer than
    /// --budget-secs).
    #[arg(long, default_value_t = 10_000)]
    pub requests: u64,
    /// `worker.max_in_flight` values of the submission path.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub in_flight: Vec<usize>,
    /// Emulator `latency_ms` values of the submission path.
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    pub latency_ms: Vec<u64>,
    /// Seconds a submission combination may take at its ideal rate (max_in_flight / latency).
    #[arg(long, default_value_t = 10.0)]
    pub budget_secs: f64,
    /// Requests per second of the paced end-to-end latency run.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Length of the paced run, seconds.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// Emulator `job_duration_ms` of the latency run (subtracted from the worker's share).
    #[arg(long, default_value_t = 0)]
    pub job_duration_ms: u64,
    /// Log filter (RUST_LOG) for the processes under test; default: their configuration (`log.level`).
    #[arg(long)]
    pub worker_log: Option<String>,
    /// Namespace of the benchmark's topics.
    #[arg(long, default_value = "public/default")]
    pub namespace: String,
    /// Pulsar admin REST API, to delete the benchmark's topics at the end.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub admin_url: String,
    /// Keep the topics instead of deleting them.
    #[arg(long)]
    pub keep_topics: bool,
    /// Logs of the processes under test.
    #[arg(long, default_value = ".cache/bench")]
    pub log_dir: PathBuf,
    /// Also write the figures here (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The broker's pid, to report its CPU share during each run.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Sources of the ingress section, comma-separated: `pulsar` (events published on the callback
    /// topic), `cmq` (sent into the emulator's CMQ queue), `http` (POSTed to the worker), `kafka`
    /// (produced to a topic of `--kafka-brokers`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pulsar,cmq,http,kafka"
    )]
    pub ingress: Vec<Ingress>,
    /// Events of each burst of the ingress (and cmq) section (`--cmq-events` is the same flag).
    #[arg(long, alias = "cmq-events", default_value_t = 20_000)]
    pub ingress_events: u64,
    /// Offered rates of the ingress section's steady runs, events/s, comma-separated; the latency is
    /// measured in each (`--cmq-rate` is the same flag).
    #[arg(
        long,
        alias = "cmq-rate",
        value_delimiter = ',',
        default_value = "200,1000"
    )]
    pub ingress_rates: Vec<u64>,
    /// Length of each steady run of the ingress section, seconds.
    #[arg(long, default_value_t = 10)]
    pub ingress_duration_secs: u64,
    /// Measured passes over the sources of the ingress section (the order reversed every other pass).
    #[arg(long, default_value_t = 2)]
    pub ingress_repeat: u32,
    /// POSTs in flight in the ingress section's http burst (CI's side; enough that the worker, not
    /// the sender, sets the pace).
    #[arg(long, default_value_t = 256)]
    pub ingress_http_concurrency: usize,
    /// The Kafka brokers standing for CI's CKafka instance, for the `kafka` source of the ingress
    /// and messages sections (scripts/kafka.sh's broker; `scripts/bench.sh` starts it when a
    /// section names kafka).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Partitions of each Kafka topic the benchmark makes for the `kafka` source.
    #[arg(long, default_value_t = 4)]
    pub kafka_partitions: i32,
    /// `cmq.concurrency` values (receive loops) of the cmq source, one runner each.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub cmq_concurrency: Vec<usize>,
    /// Jobs of the messages section's burst.
    #[arg(long, default_value_t = 1000)]
    pub message_jobs: u64,
    /// `worker.job_timeout` of the messages section, seconds (every deadline comes due in the run).
    #[arg(long, default_value_t = 3)]
    pub message_job_timeout_secs: u64,
    /// How completion events reach the worker in the messages section, comma-separated: `pulsar`
    /// (the emulator publishes them on the callback topic), `cmq` (into a CMQ queue the worker
    /// reads), `http` (jobs submitted with `CallBackType=Url`, POSTed to the worker) or `kafka`
    /// (jobs submitted with `CallBackType=Kafka`, into a topic of `--kafka-brokers`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pulsar,cmq,http,kafka"
    )]
    pub message_ingress: Vec<Ingress>,
    /// Jobs left waiting for their callbacks in the memory section, one worker per value.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub memory_jobs: Vec<u64>,
    /// Completion events pre-published as a backlog in the memory section, one worker per value.
    #[arg(long, value_delimiter = ',', default_value = "5000,50000")]
    pub memory_backlog: Vec<u64>,
    /// Replicas of `ci-worker run` on the same subscriptions in the scaleout section.
    #[arg(long, default_value_t = 3)]
    pub scaleout_replicas: usize,
    /// Requests of each scaleout run, published at once.
    #[arg(long, default_value_t = 600)]
    pub scaleout_requests: u64,
    /// SIGKILL + restart of one replica per `kill` run (kill i of K when i/(K+2) of the requests
    /// have an outcome).
    #[arg(long, default_value_t = 2)]
    pub scaleout_kills: usize,
    /// How long the emulator holds each CI answer after handling the request (`answer_delay_ms`).
    #[arg(long, default_value_t = 150)]
    pub scaleout_answer_delay_ms: u64,
    /// `worker.max_in_flight` of each scaleout replica.
    #[arg(long, default_value_t = 8)]
    pub scaleout_max_in_flight: usize,
    /// Partitions of the request, callback, result and deadline topics, one scaleout run set per
    /// value, comma-separated (0: plain topics; the done topic is never partitioned).
    #[arg(long, value_delimiter = ',', default_value = "4,0")]
    pub scaleout_partitions: Vec<u32>,
    /// What happens to the replicas in a scaleout run, comma-separated: `none` (baseline), `kill`
    /// (SIGKILL + immediate restart, --scaleout-kills times), `rolling` (SIGTERM, replacement started,
    /// old one waited for; every replica in turn).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,kill,rolling"
    )]
    pub scaleout_mode: Vec<ScaleoutMode>,
    /// The binary the `ci-worker run` processes are started from (default: this one), to measure an
    /// older worker with this benchmark and emulator.
    #[arg(long, env = "BENCH_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Completion events of the completion section: `json` (CI's JSON `TaskFinish`, as issue #17
    /// measures) or `mixed` (half XML, half JSON, alternating).
    #[arg(long, value_enum, default_value = "json")]
    pub event_format: EventMix,
    /// Leave the Python peer out of the completion section.
    #[arg(long)]
    pub no_python: bool,
    /// The Python interpreter of the Python peer (with `pulsar-client`; scripts/setup.sh makes it).
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// The Python peer of the completion section.
    #[arg(long, default_value = "scripts/bench-python-worker.py")]
    pub python_worker: PathBuf,
    #[command(flatten)]
    pub throttle: ThrottleOptions,
    #[command(flatten)]
    pub cost: CostOptions,
    /// Internal: be the raw relay (pulsar.callback_topic → pulsar.result_topic) until killed.
    #[arg(long, hide = true)]
    pub relay: bool,
}

/// Runs the benchmark (or, with `--relay`, the raw relay).
pub async fn run(settings: &Settings, opts: BenchOptions) -> Result<()> {
    if opts.relay {
        return io::relay(settings).await;
    }
    let client = crate::pulsar::connect_with(&settings.pulsar)
        .await
        .context("the benchmark needs the broker (scripts/pulsar.sh start)")?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let log_dir = opts.log_dir.join(&id);
    let mut bench = Bench {
        settings: settings.clone(),
        opts,
        client,
        id,
        log_dir,
        topics: Vec::new(),
        rows: Vec::new(),
        notes: Vec::new(),
        completion_topic: None,
        completion_single: Vec::new(),
        extra_worker_env: BTreeMap::new(),
        extra_json: serde_json::Map::new(),
        kafka: None,
    };
    eprintln!("bench {}: logs in {}", bench.id, bench.log_dir.display());
    let started = Instant::now();
    let outcome = bench.sections().await;
    if !bench.opts.keep_topics {
        let deleted = io::delete_topics(
            &bench.opts.admin_url,
            bench.settings.pulsar.token.expose(),
            &bench.topics,
        )
        .await;
        eprintln!("bench: deleted {deleted} of {} topics", bench.topics.len());
        if let Some(kafka) = bench.kafka.as_mut() {
            let deleted = kafka.delete_topics().await;
            eprintln!("bench: deleted {deleted} Kafka topics");
        }
    }
    bench.print(started.elapsed());
    if let Some(path) = &bench.opts.json {
        std::fs::write(path, bench.json(started.elapsed()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    outcome
}

/// One figure of the report.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    section: &'static str,
    figure: String,
    value: String,
    command: String,
}

/// A throughput run's outcome.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    n: usize,
    /// Messages per second between the first and the last output received.
    rate: f64,
    /// From the first process's start to the last output received.
    wall: Duration,
    /// Summed over the processes under test.
    usage: Usage,
    /// The broker's CPU seconds during the run, when its pid is known.
    broker_cpu: Option<f64>,
}

impl Throughput {
    fn of(seen: &[Seen], wall: Duration, usage: Usage, broker_cpu: Option<f64>) -> Throughput {
        Throughput {
            n: seen.len(),
            rate: rate_of(seen),
            wall,
            usage,
            broker_cpu,
        }
    }
}

struct Bench {
    settings: Settings,
    opts: BenchOptions,
    client: Client,
    id: String,
    log_dir: PathBuf,
    topics: Vec<String>,
    rows: Vec<Row>,
    notes: Vec<String>,
    /// The pre-published callback topic of the completion section (reused by scaling).
    completion_topic: Option<String>,
    /// Single-worker completion rates measured so far.
    completion_single: Vec<f64>,
    /// Environment added to the workers a section starts (its ingress settings, say).
    extra_worker_env: BTreeMap<String, String>,
    /// Structured figures of a section, under its name in the `--json` output's `sections`.
    extra_json: serde_json::Map<String, serde_json::Value>,
    /// The Kafka cluster of the `kafka` source, once a section has used it.
    kafka: Option<kafka::KafkaSide>,
}

/// What a process under test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Worker,
    /// The raw relay limit ([`io::relay`]).
    Relay,
    /// `scripts/bench-python-worker.py` on Apache's `pulsar-client`: what a user would write instead.
    Python,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Worker => "worker",
            Kind::Relay => "relay",
            Kind::Python => "python",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Worker => "ci-worker run",
            Kind::Relay => "raw relay limit (same crate, forwards unparsed, batching off, ack after the receipt)",
            Kind::Python => "Python worker on Apache's pulsar-client (scripts/bench-python-worker.py: parses, maps the main fields, producer batching, ack on the receipt)",
        }
    }

    /// What the worker should reach against this runner (issue #17).
    fn target(self) -> &'static str {
        match self {
            Kind::Worker => "1",
            Kind::Relay => "≥ 0.9",
            Kind::Python => "≥ 1.5",
        }
    }
}

impl Bench {
    async fn sections(&mut self) -> Result<()> {
        // A section that fails (a worker that stalls, say) is reported and the others still run.
        let only = self.opts.only.clone();
        let mut failed = Vec::new();
        for section in [
            Section::Completion,
            Section::Submission,
            Section::Latency,
            Section::Scaling,
            Section::Ingress,
            Section::Cmq,
            Section::Messages,
            Section::Scaleout,
            Section::Memory,
            Section::Throttle,
            Section::Cost,
            Section::Soak,
        ] {
            if !only.contains(&section) {
                continue;
            }
            if section == Section::Cmq && only.contains(&Section::Ingress) {
                // Its runs are the ingress section's cmq row.
                continue;
            }
            let outcome = match section {
                Section::Completion => self.completion().await,
                Section::Submission => self.submission().await,
                Section::Latency => self.latency().await,
                Section::Scaling => self.scaling().await,
                Section::Ingress => self.ingress().await,
                Section::Cmq => self.cmq().await,
                Section::Messages => self.messages().await,
                Section::Scaleout => self.scaleout().await,
                Section::Memory => self.memory().await,
                Section::Throttle => self.throttle().await,
                Section::Cost => self.cost().await,
                Section::Soak => self.soak().await,
            };
            if let Err(e) = outcome {
                let name = format!("{section:?}").to_lowercase();
                self.row(
                    "failure",
                    format!("{name} section"),
                    format!("FAILED: {e:#}"),
                    self.command(&format!("--only {name}")),
                );
                failed.push(name);
            }
        }
        if !failed.is_empty() {
            bail!("sections failed: {}", failed.join(", "));
        }
        Ok(())
    }

    /// A fresh topic name, remembered for deletion.
    fn topic(&mut self, role: &str) -> String {
        let name = format!(
            "persistent://{}/bench-{}-{role}-{}",
            self.opts.namespace,
            self.id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        self.topics.push(name.clone());
        name
    }

    fn command(&self, args: &str) -> String {
        format!("scripts/bench.sh {args}")
    }

    fn row(&mut self, section: &'static str, figure: String, value: String, command: String) {
        eprintln!("  {figure}: {value}");
        self.rows.push(Row {
            section,
            figure,
            value,
            command,
        });
    }

    fn note(&mut self, note: String) {
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    /// Notes the results of a submission-only run that are not `submitted` (none are expected).
    fn note_not_submitted(&mut self, label: &str, seen: &[io::Seen]) {
        let others = seen
            .iter()
            .filter(|s| s.state.as_deref() != Some("submitted"))
            .count();
        if others > 0 {
            self.note(format!(
                "{label}: {others} results other than `submitted` (see the logs)"
            ));
        }
    }

    /// Environment of every process under test: broker, credentials, log filter.
    fn base_env(&self) -> BTreeMap<String, String> {
        let p = &self.settings.pulsar;
        let mut env: BTreeMap<String, String> = [
            ("CI_WORKER__PULSAR__URL", p.url.clone()),
            ("CI_WORKER__PULSAR__TOKEN", p.token.expose().to_string()),
            ("CI_WORKER__CI__SECRET_ID", BENCH_SECRET_ID.to_string()),
            ("CI_WORKER__CI__SECRET_KEY", BENCH_SECRET_KEY.to_string()),
            ("CI_WORKER__CI__SESSION_TOKEN", String::new()),
            // The submission and completion scenarios measure the worker from the callback topic
            // on (the relay they are compared with reads it too); the cmq scenario sets its own.
            ("CI_WORKER__EMULATOR__TDMQ_DELIVERY", "pulsar".to_string()),
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "pulsar".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(filter) = &self.opts.worker_log {
            env.insert("RUST_LOG".into(), filter.clone());
        }
        env
    }

    /// Starts an emulator (job duration, API latency) and waits for its health check.
    async fn start_emulator(
        &mut self,
        latency_ms: u64,
        job_duration_ms: u64,
    ) -> Result<(Proc, u16)> {
        self.start_emulator_with(latency_ms, job_duration_ms, &[])
            .await
    }

    /// [`Bench::start_emulator`] with `extra` settings on top (the messages section's CMQ delivery).
    async fn start_emulator_with(
        &mut self,
        latency_ms: u64,
        job_duration_ms: u64,
        extra: &[(&str, String)],
    ) -> Result<(Proc, u16)> {
        let port = procs::free_port()?;
        let mut env = self.base_env();
        for (k, v) in [
            ("CI_WORKER__EMULATOR__LISTEN", format!("127.0.0.1:{port}")),
            (
                "CI_WORKER__EMULATOR__JOB_DURATION_MS",
                job_duration_ms.to_string(),
            ),
            ("CI_WORKER__EMULATOR__LATENCY_MS", latency_ms.to_string()),
            (
                "CI_WORKER__EMULATOR__CALLBACK_TOPIC_TEMPLATE",
                format!("persistent://{}/{{MqName}}", self.opts.namespace),
            ),
            ("CI_WORKER__EMULATOR__THROTTLE_RATE", "0".into()),
            ("CI_WORKER__EMULATOR__ERROR_RATE", "0".into()),
            ("CI_WORKER__EMULATOR__DUPLICATE_RATE", "0".into()),
        ] {
            env.insert(k.into(), v);
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.clone());
        }
        let name = format!("emulator-latency{latency_ms}-{}", short());
        let mut proc = Proc::spawn(&name, &["emulator"], &env, &self.log_dir)?;
        procs::wait_http_ok(
            &format!("http://127.0.0.1:{port}/healthz"),
            &mut proc,
            Duration::from_secs(30),
        )
        .await?;
        Ok((proc, port))
    }

    /// Starts `count` workers (or relays) on the same topics and subscriptions.
    #[allow(clippy::too_many_arguments)]
    fn start_workers(
        &mut self,
        kind: Kind,
        count: usize,
        label: &str,
        topics: &WorkerTopics,
        emulator_port: Option<u16>,
        max_in_flight: Option<usize>,
    ) -> Result<Vec<Proc>> {
        let mut out = Vec::new();
        for i in 0..count {
            let mut env = self.base_env();
            let http_port = procs::free_port()?;
            for (k, v) in [
                ("CI_WORKER__PULSAR__REQUEST_TOPIC", topics.request.clone()),
                (
                    "CI_WORKER__PULSAR__REQUEST_SUBSCRIPTION",
                    topics.subscription.clone(),
                ),
                ("CI_WORKER__PULSAR__CALLBACK_TOPIC", topics.callback.clone()),
                (
                    "CI_WORKER__PULSAR__CALLBACK_SUBSCRIPTION",
                    topics.subscription.clone(),
                ),
                ("CI_WORKER__PULSAR__RESULT_TOPIC", topics.result.clone()),
                (
                    "CI_WORKER__PULSAR__DEAD_LETTER_TOPIC",
                    topics.dead_letter.clone(),
                ),
                ("CI_WORKER__PULSAR__DEADLINE_TOPIC", topics.deadline.clone()),
                ("CI_WORKER__PULSAR__DONE_TOPIC", topics.done.clone()),
                ("CI_WORKER__CI__MQ_NAME", topics.mq_name.clone()),
                (
                    "CI_WORKER__CI__ENDPOINT",
                    // Nothing listens on the discard port: the completion path never calls CI.
                    format!("http://127.0.0.1:{}", emulator_port.unwrap_or(9)),
                ),
                ("CI_WORKER__HTTP__LISTEN", format!("127.0.0.1:{http_port}")),
            ] {
                env.insert(k.into(), v);
            }
            if let Some(m) = max_in_flight {
                env.insert("CI_WORKER__WORKER__MAX_IN_FLIGHT".into(), m.to_string());
            }
            env.extend(self.extra_worker_env.clone());
            // A section may give the worker a port of its own (the address CI is told to POST to).
            let http_port = env
                .get("CI_WORKER__HTTP__LISTEN")
                .and_then(|l| l.rsplit(':').next()?.parse().ok())
                .unwrap_or(http_port);
            let script = self.opts.python_worker.to_string_lossy().into_owned();
            let (name, args): (String, Vec<&str>) = match kind {
                Kind::Worker => (format!("worker-{label}-{i}"), vec!["run"]),
                Kind::Relay => (format!("relay-{label}-{i}"), vec!["bench", "--relay"]),
                Kind::Python => (format!("python-{label}-{i}"), vec![script.as_str()]),
            };
            let exe = match (kind, &self.opts.worker_bin) {
                (Kind::Worker, Some(bin)) => bin.clone(),
                (Kind::Python, _) => self.opts.python.clone(),
                _ => std::env::current_exe().context("locating the ci-worker binary")?,
            };
            let mut proc = Proc::spawn_exe(&exe, &name, &args, &env, &self.log_dir)?;
            proc.http_port = Some(http_port);
            out.push(proc);
        }
        Ok(out)
    }

    /// Fresh request/result/dead-letter topics; `callback` as given.
    fn worker_topics(&mut self, callback: Option<String>) -> WorkerTopics {
        let callback = callback.unwrap_or_else(|| self.topic("callbacks"));
        let mq_name = callback.rsplit('/').next().unwrap_or_default().to_string();
        WorkerTopics {
            request: self.topic("requests"),
            result: self.topic("results"),
            dead_letter: self.topic("dlq"),
            deadline: self.topic("deadlines"),
            done: self.topic("done"),
            subscription: format!("bench-{}", short()),
            callback,
            mq_name,
        }
    }

    /// Runs `procs` until `collector` has what it waits for, checking that they stay alive; returns
    /// what was collected, the wall time, and the processes' usage (then stops them).
    async fn supervise(
        &mut self,
        mut procs: Vec<Proc>,
        collector: tokio::task::JoinHandle<Result<Vec<Seen>>>,
        started: Instant,
        broker_before: Option<Usage>,
    ) -> Result<(Vec<Seen>, Duration, Usage, Option<f64>)> {
        tokio::pin!(collector);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let seen = loop {
            tokio::select! {
                joined = &mut collector => break joined.context("collector task")??,
                _ = tick.tick() => {
                    for p in procs.iter_mut() {
                        p.check_alive()?;
                    }
                }
            }
        };
        let wall = started.elapsed();
        let mut usage = Usage::default();
        for p in &procs {
            let u = p.usage().unwrap_or_default();
            usage.cpu_secs += u.cpu_secs;
            usage.peak_rss_kib = usage.peak_rss_kib.max(u.peak_rss_kib);
        }
        let broker = self
            .broker_usage()
            .zip(broker_before)
            .map(|(a, b)| a.cpu_secs - b.cpu_secs);
        for p in procs {
            let warnings = procs::count_lines(&p.log, "publish failed");
            if warnings > 0 {
                self.note(format!(
                    "{}: {warnings} \"publish failed\" warnings in {}",
                    p.name,
                    p.log.display()
                ));
            }
            p.stop().await;
        }
        Ok((seen, wall, usage, broker))
    }

    fn broker_usage(&self) -> Option<Usage> {
        self.opts.broker_pid.and_then(procs::usage_of)
    }

    /// One completion-path run: `count` workers or relays read `callback` (pre-published with
    /// `--events` events) through a fresh subscription into a fresh result topic.
    async fn completion_run(
        &mut self,
        kind: Kind,
        count: usize,
        callback: &str,
        label: &str,
    ) -> Result<Throughput> {
        let n = self.opts.events as usize;
        let topics = self.worker_topics(Some(callback.to_string()));
        let follower = io::follow(&self.client, &topics.result).await?;
        // A worker that stops making progress is a finding, not a reason to wait for ever.
        let limit = Duration::from_secs(40 + self.opts.events / 1000);
        let mut got = 0usize;
        let collector = tokio::spawn(io::collect(follower, limit, false, move |_| {
            got += 1;
            got >= n
        }));
        let broker_before = self.broker_usage();
        let started = Instant::now();
        let procs = self.start_workers(kind, count, label, &topics, None, None)?;
        let (seen, wall, usage, broker_cpu) = self
            .supervise(procs, collector, started, broker_before)
            .await?;
        Ok(Throughput::of(&seen, wall, usage, broker_cpu))
    }

    async fn completion(&mut self) -> Result<()> {
        let n = self.opts.events;
        let format = self.opts.event_format;
        eprintln!(
            "completion path: publishing {n} completion events ({})",
            format.describe()
        );
        let topic = self.callback_events_topic().await?;
        let cmd = self.command(&format!("--only completion --events {n}"));
        let kinds: Vec<Kind> = if self.opts.no_python {
            vec![Kind::Worker, Kind::Relay]
        } else {
            vec![Kind::Worker, Kind::Relay, Kind::Python]
        };
        // The broker is a JVM: the first passes over a code path run interpreted while the JIT
        // compiles it (measured: a third of the broker's CPU in the first run went to compiler
        // threads, and the run after one warm-up pair still gave a ratio of 0.56 against 0.72–0.81
        // for the next three). Unmeasured passes of each kind first, so that the runs compare the
        // runners rather than a cold broker and a warm one.
        eprintln!("completion path: warm-up (two unmeasured runs of each runner)");
        for _ in 0..2 {
            for &kind in &kinds {
                self.completion_run(kind, 1, &topic, "completion-warmup")
                    .await
                    .with_context(|| format!("completion path warm-up ({})", kind.name()))?;
            }
        }
        // Each runner's runs by repetition, so that a failed run does not shift the pairs below.
        let mut runs: BTreeMap<&'static str, BTreeMap<u32, Throughput>> = BTreeMap::new();
        for rep in 1..=self.opts.repeat.max(1) {
            // The order alternates (A B C, then C B A, …): whichever goes later reads entries the
            // others have just pulled through the broker, so a fixed order would favour one side.
            let mut order = kinds.clone();
            if rep % 2 == 0 {
                order.reverse();
            }
            for kind in order {
                let label = format!("completion{rep}");
                eprintln!("completion path, run {rep}: {}", kind.name());
                match self.completion_run(kind, 1, &topic, &label).await {
                    Ok(t) => {
                        eprintln!(
                            "  {}: {:.0} events/s ({} results, {:.1} s wall, {:.2} CPU s)",
                            kind.name(),
                            t.rate,
                            t.n,
                            t.wall.as_secs_f64(),
                            t.usage.cpu_secs
                        );
                        runs.entry(kind.name()).or_default().insert(rep, t);
                    }
                    Err(e) => {
                        let row = format!("completion path, {} run {rep} (N = {n})", kind.name());
                        self.row("failure", row, format!("FAILED: {e:#}"), cmd.clone());
                    }
                }
            }
        }
        let worker_runs = runs.remove(Kind::Worker.name()).unwrap_or_default();
        let workers: Vec<Throughput> = worker_runs.values().copied().collect();
        if workers.is_empty() {
            bail!("no completion-path run of the worker finished");
        }
        self.completion_single
            .extend(workers.iter().map(|w| w.rate));
        let list = |v: &[Throughput]| {
            v.iter()
                .map(|t| format!("{:.0}", t.rate))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let wmean = mean(workers.iter().map(|t| t.rate));
        let cpu_per_10k =
            |v: &[Throughput]| mean(v.iter().map(|t| t.usage.cpu_secs * 10_000.0 / t.n as f64));
        let peak = |v: &[Throughput]| v.iter().map(|t| t.usage.peak_rss_kib).max().unwrap_or(0);
        self.row(
            "completion",
            format!(
                "completion path, worker (N = {n}, {}; events/s as the results reach a consumer, first to last; runs: {})",
                format.describe(),
                list(&workers)
            ),
            format!(
                "{wmean:.0} events/s; {:.2} CPU s per 10,000; peak RSS {}",
                cpu_per_10k(&workers),
                mib(peak(&workers))
            ),
            cmd.clone(),
        );
        for kind in &kinds[1..] {
            let Some(other_runs) = runs.get(kind.name()) else {
                continue;
            };
            let others: Vec<Throughput> = other_runs.values().copied().collect();
            let omean = mean(others.iter().map(|t| t.rate));
            // Ratios pair each worker run with the other runner's run of the same repetition.
            let ratios: Vec<String> = worker_runs
                .iter()
                .filter_map(|(rep, w)| other_runs.get(rep).map(|o| w.rate / o.rate))
                .map(|r| format!("{r:.2}"))
                .collect();
            self.row(
                "completion",
                format!("{} (events/s; runs: {})", kind.describe(), list(&others)),
                format!(
                    "{omean:.0} events/s; {:.2} CPU s per 10,000; peak RSS {}",
                    cpu_per_10k(&others),
                    mib(peak(&others))
                ),
                cmd.clone(),
            );
            self.row(
                "completion",
                format!(
                    "**worker / {}** (per run: {}; target {})",
                    kind.name(),
                    ratios.join(", "),
                    kind.target()
                ),
                format!("{:.2}", wmean / omean),
                cmd.clone(),
            );
        }
        if let Some(b) = mean_opt(workers.iter().map(|t| t.broker_cpu)) {
            let wall = mean(workers.iter().map(|t| t.wall.as_secs_f64()));
            let mut value = format!("worker {:.0}%", 100.0 * b / wall);
            for kind in &kinds[1..] {
                let others = runs.get(kind.name()).into_iter().flat_map(|r| r.values());
                if let Some(ob) = mean_opt(others.clone().map(|t| t.broker_cpu)) {
                    let owall = mean(others.map(|t| t.wall.as_secs_f64()));
                    let _ = write!(value, ", {} {:.0}%", kind.name(), 100.0 * ob / owall);
                }
            }
            self.row(
                "completion",
                "broker CPU (share of a core) while each runner runs".into(),
                value,
                cmd,
            );
        }
        Ok(())
    }

    /// The completion section's pre-published topic, publishing it first if needed.
    async fn callback_events_topic(&mut self) -> Result<String> {
        if let Some(t) = &self.completion_topic {
            return Ok(t.clone());
        }
        let topic = self.topic("callbacks");
        let run = self.id.clone();
        let mix = self.opts.event_format;
        let mut sizes: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        let took = io::publish_all(&self.client, &topic, self.opts.events, |i| {
            let format = mix.format_of(i);
            let body = events::completion_event(&run, i, format);
            let name = match format {
                EventFormat::Xml => "XML",
                EventFormat::Json => "JSON",
            };
            let entry = sizes.entry(name).or_default();
            entry.0 += 1;
            entry.1 += body.len();
            (body, None)
        })
        .await?;
        let sizes = sizes
            .iter()
            .map(|(name, (count, bytes))| format!("{name} {} B", bytes / count.max(&1)))
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!(
            "  published in {:.1} s; average size {sizes}",
            took.as_secs_f64()
        );
        self.note(format!(
            "completion events: {}, {sizes} on average (TaskFinish, DigitalWatermark with MediaInfo and MediaResult)",
            mix.describe()
        ));
        self.completion_topic = Some(topic.clone());
        Ok(topic)
    }

    /// One submission-path run: `count` workers with `max_in_flight` running and warmed (one request
    /// through, and past the start's takeover: a worker checks at CI the requests published around
    /// the moment it took a partition), then `n` requests published at once; results counted by this
    /// benchmark's consumer, first to last. With several workers the request topic has a partition
    /// each (requests are shared by partition).
    async fn submission_run(
        &mut self,
        emulator_port: u16,
        n: u64,
        max_in_flight: usize,
        count: usize,
        label: &str,
    ) -> Result<Throughput> {
        let topics = self.worker_topics(None);
        if count > 1 {
            self.create_partitioned(&topics.request, count as u32)
                .await?;
        }
        // Request ids and bucket of this run alone: a worker's checks at CI list the bucket's jobs
        // and must find none of earlier runs.
        let run = format!("{}-{label}-{}", self.id, short());
        let bucket = events::bucket_for(&run);
        let procs = self.start_workers(
            Kind::Worker,
            count,
            label,
            &topics,
            Some(emulator_port),
            Some(max_in_flight),
        )?;
        self.warm_up(&topics, &bucket, &run, count).await?;
        let follower = io::follow(&self.client, &topics.result).await?;
        let collector = until_submitted(follower, Duration::from_secs(40 + n / 20), n as usize);
        let broker_before = self.broker_usage();
        let started = Instant::now();
        io::publish_all(&self.client, &topics.request, n, |i| {
            (
                events::request_in(&bucket, &run, i, format_of(i), true),
                Some(events::request_id(&run, i)),
            )
        })
        .await?;
        let (seen, wall, usage, broker_cpu) = self
            .supervise(procs, collector, started, broker_before)
            .await?;
        self.note_not_submitted(label, &seen);
        Ok(Throughput::of(&seen, wall, usage, broker_cpu))
    }

    /// Sends requests one at a time until each of `count` workers' partitions has had one through
    /// (a `submitted` result per request), then waits out the start's takeover window
    /// (`worker::submit::takeover::PUBLISH_SKEW`): what a running worker meets is measured, not its
    /// start.
    async fn warm_up(
        &mut self,
        topics: &WorkerTopics,
        bucket: &str,
        run: &str,
        count: usize,
    ) -> Result<()> {
        let warm = format!("{run}-warm");
        let requests = 16 * count as u64;
        let follower = io::follow(&self.client, &topics.result).await?;
        let target = requests as usize;
        let collector = until_submitted(follower, Duration::from_secs(120), target);
        io::publish_all(&self.client, &topics.request, requests, |i| {
            (
                events::request_in(bucket, &warm, i, format_of(i), true),
                Some(events::request_id(&warm, i)),
            )
        })
        .await?;
        let seen = collector.await.context("warm-up collector")??;
        if seen.len() < target {
            bail!("warm-up: {} of {target} requests submitted", seen.len());
        }
        tokio::time::sleep(crate::worker::submit::takeover::PUBLISH_SKEW + Duration::from_secs(1))
            .await;
        Ok(())
    }

    /// N for a submission combination: all of `--requests`, or what its ideal rate gets through in
    /// `--budget-secs`.
    fn submission_n(&self, max_in_flight: usize, latency_ms: u64) -> u64 {
        submission_n(
            self.opts.requests,
            self.opts.budget_secs,
            max_in_flight,
            latency_ms,
        )
    }

    async fn submission(&mut self) -> Result<()> {
        for latency in self.opts.latency_ms.clone() {
            let (emulator, port) = self.start_emulator(latency, 0).await?;
            let emulator_before = emulator.usage().unwrap_or_default();
            for mif in self.opts.in_flight.clone() {
                let n = self.submission_n(mif, latency);
                eprintln!("submission path: max_in_flight {mif}, emulator latency {latency} ms, {n} requests");
                let t = self
                    .submission_run(port, n, mif, 1, &format!("submit-mif{mif}-lat{latency}"))
                    .await?;
                let ideal = if latency == 0 {
                    "∞".to_string()
                } else {
                    format!("{:.0}/s", mif as f64 * 1000.0 / latency as f64)
                };
                let reduced = if n < self.opts.requests {
                    format!(
                        ", N = {n} (reduced: ideal rate × {} s)",
                        self.opts.budget_secs
                    )
                } else {
                    format!(", N = {n}")
                };
                let of_ideal = if latency == 0 {
                    String::new()
                } else {
                    format!(
                        ", {:.0}% of it",
                        100.0 * t.rate * latency as f64 / (mif as f64 * 1000.0)
                    )
                };
                self.row(
                    "submission",
                    format!("submission path, max_in_flight {mif}, CI latency {latency} ms{reduced}"),
                    format!(
                        "{:.0} requests/s (ideal {ideal}{of_ideal}; worker {:.2} CPU s per 10k, peak RSS {})",
                        t.rate,
                        t.usage.cpu_secs * 10_000.0 / t.n as f64,
                        mib(t.usage.peak_rss_kib)
                    ),
                    self.command(&format!(
                        "--only submission --in-flight {mif} --latency-ms {latency} --requests {}",
                        self.opts.requests
                    )),
                );
                if latency == 0 && mif == 64 {
                    self.row(
                        "cost",
                        "worker CPU per 10,000 submitted requests (max_in_flight 64, CI latency 0)"
                            .into(),
                        format!(
                            "{:.2} s; peak RSS {}",
                            t.usage.cpu_secs * 10_000.0 / t.n as f64,
                            mib(t.usage.peak_rss_kib)
                        ),
                        self.command("--only submission --in-flight 64 --latency-ms 0"),
                    );
                }
            }
            let used = emulator.usage().unwrap_or_default().cpu_secs - emulator_before.cpu_secs;
            self.note(format!(
                "emulator (latency {latency} ms) used {used:.1} CPU s over its submission runs"
            ));
            emulator.stop().await;
        }
        Ok(())
    }

    async fn latency(&mut self) -> Result<()> {
        let rate = self.opts.rate.max(1);
        let total = rate * self.opts.duration_secs.max(1);
        eprintln!(
            "end-to-end latency: {total} requests at {rate}/s, emulator job_duration_ms {}",
            self.opts.job_duration_ms
        );
        let (emulator, port) = self.start_emulator(0, self.opts.job_duration_ms).await?;
        let topics = self.worker_topics(None);
        let results = io::follow(&self.client, &topics.result).await?;
        let callbacks = io::follow(&self.client, &topics.callback).await?;
        let limit = Duration::from_secs(120 + self.opts.duration_secs * 2);
        let target = total as usize;
        let mut finals = 0usize;
        let result_collector = tokio::spawn(io::collect(results, limit, false, move |s| {
            if s.state.as_deref().is_some_and(|st| st != "submitted") {
                finals += 1;
            }
            finals >= target
        }));
        let mut events_seen = 0usize;
        let callback_collector = tokio::spawn(io::collect(callbacks, limit, true, move |_| {
            events_seen += 1;
            events_seen >= target
        }));
        let mut procs =
            self.start_workers(Kind::Worker, 1, "latency", &topics, Some(port), None)?;
        procs::wait_ready(&mut procs[0], Duration::from_secs(30)).await?;
        // Let the consumers settle on their subscriptions.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let worker_before = procs[0].usage().unwrap_or_default();
        let broker_before = self.broker_usage();

        // The paced publisher: request i at start + i/rate.
        let mut producer = io::producer(&self.client, &topics.request).await?;
        let run = format!("{}-lat-{}", self.id, short());
        let bucket = events::bucket_for(&run);
        let (receipt_tx, mut receipt_rx) =
            tokio::sync::mpsc::unbounded_channel::<crate::pulsar::raw::Receipt>();
        let receipts = tokio::spawn(async move {
            let mut failed = 0usize;
            while let Some(r) = receipt_rx.recv().await {
                if r.await.is_err() {
                    failed += 1;
                }
            }
            failed
        });
        let mut published: HashMap<String, (u64, Instant)> = HashMap::with_capacity(total as usize);
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut max_lag = Duration::ZERO;
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(at).await;
            max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(at));
            let id = events::request_id(&run, i);
            let payload = events::request_in(&bucket, &run, i, format_of(i), false);
            published.insert(id.clone(), (now_ms(), Instant::now()));
            let receipt = producer
                .send(payload, Some(id))
                .await
                .context("publishing a request")?;
            let _ = receipt_tx.send(receipt);
        }
        let publish_secs = start.elapsed().as_secs_f64();
        drop(receipt_tx);
        let failed = receipts.await.unwrap_or(0);
        if failed > 0 {
            bail!("{failed} requests were not stored by the broker");
        }
        let started = Instant::now();
        let (seen, _wall, usage, broker_cpu) = self
            .supervise(procs, result_collector, started, broker_before)
            .await?;
        let events = callback_collector.await.context("callback collector")??;
        emulator.stop().await;

        // Per request: publish → submitted → event → final.
        let mut submitted_ms: HashMap<&str, u64> = HashMap::new();
        let mut finals: HashMap<&str, &Seen> = HashMap::new();
        for s in &seen {
            let Some(key) = s.key.as_deref() else {
                continue;
            };
            if s.state.as_deref() == Some("submitted") {
                submitted_ms.insert(key, s.publish_ms);
            } else {
                finals.insert(key, s);
            }
        }
        let mut event_ms: HashMap<String, u64> = HashMap::new();
        for e in &events {
            let Some(payload) = &e.payload else { continue };
            if let Ok(event) = parse_event(payload) {
                for r in normalize_event(&event) {
                    if let Some(id) = r.request_id {
                        event_ms.insert(id, e.publish_ms);
                    }
                }
            }
        }
        // All stamps are this machine's wall clock in ms: the bench's own at publication, the
        // producing clients' `publish_time` on the `submitted` result, the CI event and the final result.
        let job_ms = self.opts.job_duration_ms as f64;
        let mut total_ms = Vec::new();
        let mut worker_ms = Vec::new();
        let mut to_event_ms = Vec::new();
        let mut complete_ms = Vec::new();
        let mut submitted_lat = Vec::new();
        for (id, (pub_ms, pub_at)) in &published {
            let Some(f) = finals.get(id.as_str()) else {
                continue;
            };
            let total = f.received.duration_since(*pub_at).as_secs_f64() * 1000.0;
            total_ms.push(total);
            worker_ms.push((total - job_ms).max(0.0));
            if let Some(sub) = submitted_ms.get(id.as_str()) {
                submitted_lat.push(sub.saturating_sub(*pub_ms) as f64);
            }
            if let Some(ev) = event_ms.get(id) {
                to_event_ms.push((ev.saturating_sub(*pub_ms) as f64 - job_ms).max(0.0));
                complete_ms.push(f.publish_ms.saturating_sub(*ev) as f64);
            }
        }
        let cmd = self.command(&format!(
            "--only latency --rate {rate} --duration-secs {}",
            self.opts.duration_secs
        ));
        self.row(
            "latency",
            format!(
                "end to end, request published → final result received ({} requests at {rate}/s, CI job duration {} ms)",
                total_ms.len(),
                self.opts.job_duration_ms
            ),
            pcts(&mut total_ms),
            cmd.clone(),
        );
        self.row(
            "latency",
            "worker's share: end to end minus the CI job duration (broker hops and the emulator's HTTP answer included)".into(),
            pcts(&mut worker_ms),
            cmd.clone(),
        );
        self.row(
            "latency",
            "  request published → CI's completion event sent, minus the job duration (consume, validate, sign, POST /jobs)".into(),
            pcts(&mut to_event_ms),
            cmd.clone(),
        );
        self.row(
            "latency",
            "  CI's completion event sent → final result sent (broker hop, parse, normalize, publish)".into(),
            pcts(&mut complete_ms),
            cmd.clone(),
        );
        self.row(
            "latency",
            "  request published → `submitted` event sent".into(),
            pcts(&mut submitted_lat),
            cmd.clone(),
        );
        let jobs = total_ms.len().max(1) as f64;
        let cpu = usage.cpu_secs - worker_before.cpu_secs;
        self.row(
            "cost",
            format!("worker CPU per 10,000 jobs, both paths, steady {rate}/s"),
            format!(
                "{:.2} s ({:.0}% of a core)",
                cpu * 10_000.0 / jobs,
                100.0 * cpu / publish_secs
            ),
            cmd.clone(),
        );
        self.row(
            "cost",
            format!("worker peak RSS, both paths, steady {rate}/s"),
            mib(usage.peak_rss_kib),
            cmd.clone(),
        );
        if let Some(b) = broker_cpu {
            self.note(format!(
                "latency run: the broker used {:.0}% of a core",
                100.0 * b / publish_secs
            ));
        }
        self.note(format!(
            "latency run: publisher achieved {:.0} requests/s (worst lag behind schedule {:.1} ms)",
            total as f64 / publish_secs,
            max_lag.as_secs_f64() * 1000.0
        ));
        Ok(())
    }

    async fn scaling(&mut self) -> Result<()> {
        // Completion path (CPU-bound): one worker vs two on the same subscription.
        let topic = self.callback_events_topic().await?;
        if self.completion_single.is_empty() {
            eprintln!("scaling: completion path, one worker");
            let w = self
                .completion_run(Kind::Worker, 1, &topic, "scale1")
                .await?;
            self.completion_single.push(w.rate);
        }
        eprintln!("scaling: completion path, two workers");
        let two = self
            .completion_run(Kind::Worker, 2, &topic, "scale2")
            .await?;
        let one = mean(self.completion_single.iter().copied());
        self.row(
            "scaling",
            format!("completion path, 2 workers vs 1 (N = {})", self.opts.events),
            format!(
                "{:.0} vs {one:.0} events/s (× {:.2})",
                two.rate,
                two.rate / one
            ),
            self.command(&format!(
                "--only completion,scaling --events {}",
                self.opts.events
            )),
        );

        // Submission path (latency-bound): max_in_flight 16 against 50 ms, one worker vs two.
        let (emulator, port) = self.start_emulator(50, 0).await?;
        let n = self
            .opts
            .requests
            .min((2.0 * 320.0 * self.opts.budget_secs) as u64);
        eprintln!("scaling: submission path (max_in_flight 16, CI latency 50 ms), {n} requests, one worker");
        let one = self.submission_run(port, n, 16, 1, "scale-submit1").await?;
        eprintln!("scaling: submission path, two workers");
        let two = self.submission_run(port, n, 16, 2, "scale-submit2").await?;
        emulator.stop().await;
        self.row(
            "scaling",
            format!("submission path, 2 workers vs 1 (max_in_flight 16 each, CI latency 50 ms, N = {n})"),
            format!("{:.0} vs {:.0} requests/s (× {:.2}; ideal 640 vs 320)", two.rate, one.rate, two.rate / one.rate),
            self.command("--only scaling"),
        );
        Ok(())
    }

    fn print(&self, took: Duration) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## ci-worker bench {} ({:.0} s)\n",
            self.id,
            took.as_secs_f64()
        );
        let _ = writeln!(out, "| figure | value | command |\n| --- | --- | --- |");
        for r in &self.rows {
            let _ = writeln!(out, "| {} | {} | `{}` |", r.figure, r.value, r.command);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nNotes:");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        print!("{out}");
    }

    fn json(&self, took: Duration) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "id": self.id,
            "seconds": took.as_secs_f64(),
            "rows": self.rows,
            "notes": self.notes,
            "sections": self.extra_json,
        }))
        .unwrap_or_default()
    }
}

/// Receives results (in a task) until `target` `submitted` events have come, or `limit` passes.
fn until_submitted(
    follower: crate::pulsar::raw::Tail,
    limit: Duration,
    target: usize,
) -> tokio::task::JoinHandle<Result<Vec<Seen>>> {
    let mut submitted = 0usize;
    tokio::spawn(io::collect(follower, limit, false, move |s| {
        if s.state.as_deref() == Some("submitted") {
            submitted += 1;
        }
        submitted >= target
    }))
}

/// Topics and subscription of the processes under test.
#[derive(Debug, Clone)]
struct WorkerTopics {
    request: String,
    callback: String,
    result: String,
    dead_letter: String,
    deadline: String,
    done: String,
    subscription: String,
    mq_name: String,
}

/// The key pair the benchmark's emulators accept and its workers sign with.
const BENCH_SECRET_ID: &str = "AKIDbench000000000000000000000000000";
const BENCH_SECRET_KEY: &str = "benchsecretkey0123456789abcdef00";

/// `requests`, or what the ideal rate (`max_in_flight / latency`) gets through in `budget_secs`
/// (at least 100).
fn submission_n(requests: u64, budget_secs: f64, max_in_flight: usize, latency_ms: u64) -> u64 {
    if latency_ms == 0 {
        return requests;
    }
    let ideal = max_in_flight as f64 * 1000.0 / latency_ms as f64;
    requests.min(((ideal * budget_secs).round() as u64).max(100))
}

fn short() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Messages per second between the first and the last publish time.
/// Messages per second as the benchmark's consumer received them, first to last: what a client
/// counting the outputs sees (the producers' `publish_time` would hide a consumer that falls behind,
/// and batches that arrive in bursts).
fn rate_of(seen: &[Seen]) -> f64 {
    let (Some(first), Some(last)) = (
        seen.iter().map(|s| s.received).min(),
        seen.iter().map(|s| s.received).max(),
    ) else {
        return 0.0;
    };
    let secs = last.duration_since(first).as_secs_f64();
    if seen.len() < 2 || secs <= 0.0 {
        return 0.0;
    }
    (seen.len() - 1) as f64 / secs
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn mean_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Option<Vec<f64>> = values.collect();
    v.filter(|v| !v.is_empty()).map(|v| mean(v.into_iter()))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `p50 … / p99 … / max …` in milliseconds.
fn pcts(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "no samples".into();
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[i]
    };
    format!(
        "p50 {:.1} ms / p99 {:.1} ms / max {:.1} ms",
        at(0.50),
        at(0.99),
        values[values.len() - 1]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pcts(&mut v), "p50 50.0 ms / p99 99.0 ms / max 100.0 ms");
        let now = Instant::now();
        let seen: Vec<Seen> = (0..11)
            .map(|i| Seen {
                publish_ms: 0,
                received: now + Duration::from_millis(i * 100),
                key: None,
                state: None,
                payload: None,
            })
            .collect();
        assert!((rate_of(&seen) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn slow_combinations_get_a_smaller_n() {
        assert_eq!(submission_n(10_000, 10.0, 1, 50), 200);
        assert_eq!(submission_n(10_000, 10.0, 16, 50), 3200);
        assert_eq!(submission_n(10_000, 10.0, 64, 50), 10_000);
        assert_eq!(submission_n(10_000, 10.0, 1, 0), 10_000);
        assert_eq!(submission_n(10_000, 1.0, 1, 50), 100);
    }
}
