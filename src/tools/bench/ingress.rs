//! The `ingress` section (and `cmq`, its cmq row alone): completion events through each source of
//! `worker.callback_ingress` into results, as CI (or a bridge) hands them over.
//!
//! Sources (`--ingress`, default all; [`Ingress`]):
//! - `pulsar`: the benchmark publishes each event on the worker's callback topic (keyed by job id, as
//!   a bridge is asked to); hand-over = the broker's receipt of the publish;
//! - `cmq`: `SendMessage` into a fresh queue of the emulator's TDMQ for CMQ API, as CI does for
//!   `CallBackType=TDMQ`; the worker reads it with `cmq.batch_size = 16` and `cmq.concurrency` from
//!   `--cmq-concurrency` (one runner per value); hand-over = CMQ's answer to the send;
//! - `http`: `POST /ci/callback/<http.callback_token>` to the worker, as CI does for
//!   `CallBackType=Url`, `--ingress-http-concurrency` POSTs in flight. The worker answers 200 only
//!   once the event's result is stored, so the hand-over that compares with the others is the POST's
//!   start; the answer's round trip is reported beside it;
//! - `kafka`: produced (`acks=all`, keyed by job id) into a fresh topic of `--kafka-partitions`
//!   partitions on `--kafka-brokers`, as CI does for `CallBackType=Kafka`; the worker reads it in a
//!   consumer group of its own; hand-over = the broker's acknowledgement of the produce.
//!
//! The events are the completion section's (half XML, half JSON, `TaskFinish` with `MediaInfo`) for
//! jobs the worker did not submit: each carries a marker with a request id of its run, so its result
//! is keyed by that id and no deadline or CI call is involved. One worker per runner and pass, fresh
//! topics; a separate consumer of the result topic, subscribed before anything is handed over,
//! counts the run's results by key (no payload is parsed), first to last as it receives them.
//!
//! Per runner and pass:
//! 1. burst: `--ingress-events` events. `pulsar`, `cmq` and `kafka` hold them as a backlog before the worker
//!    starts (the ingress drains it; start-up does not count, the first result starts the clock);
//!    `http` cannot hold a backlog, so its worker is started and warmed first and the events are
//!    POSTed at once, `--ingress-http-concurrency` in flight. Events/s into results, the worker's CPU
//!    per 10,000 events, the benchmark process's own CPU share (it must not be the bottleneck);
//! 2. steady: with the same worker running, for each of `--ingress-rates`, one event every
//!    1/rate s for `--ingress-duration-secs` (no hand-over waits for an earlier one's answer).
//!    Events/s into results, and per event the latency the ingress adds: from its hand-over to its
//!    result's `publish_time` (stamped by the worker's producer when the result's batch is sent; one
//!    clock, this machine's, for both ends; millisecond resolution).
//!
//! One unmeasured warm-up pass (bursts of at most 2,000) first, so that no runner meets a cold broker;
//! then `--ingress-repeat` passes, the order of the runners reversed every other pass.

use super::cmq::CmqSide;
use super::events::{self, EventFormat};
use super::io::{self, Seen};
use super::kafka::KafkaSide;
use super::messages::watch;
use super::procs::{self, Proc};
use super::source::{Ingress, CALLBACK_TOKEN};
use super::{format_of, mean, pcts, rate_of, short, Bench, Kind, WorkerTopics};
use crate::pulsar::raw::RawProducer;
use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Events in flight while the benchmark fills a Pulsar or Kafka backlog.
const PULSAR_WINDOW: usize = 1000;
/// `SendMessage` calls in flight while the benchmark fills a CMQ backlog.
const CMQ_WINDOW: usize = 64;
/// Events of each runner's burst in the warm-up pass, at most.
const WARMUP_EVENTS: u64 = 2000;
/// Events POSTed (and answered) before an `http` burst, so that the worker's producers exist.
const HTTP_WARM_EVENTS: u64 = 200;

impl Ingress {
    /// The moment of `h` the latency is counted from (see [`Ingress::hand_over`]).
    fn handed_over_ms(self, h: &HandOver) -> f64 {
        match self {
            Ingress::Pulsar | Ingress::Cmq | Ingress::Kafka => h.answered_ms,
            Ingress::Http => h.sent_ms,
        }
    }
}

/// One source and its settings: the unit the section alternates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Runner {
    ingress: Ingress,
    /// `cmq.concurrency` (cmq only).
    cmq_concurrency: usize,
    /// Partitions of the topic (kafka only).
    kafka_partitions: i32,
}

impl Runner {
    fn label(self) -> String {
        match self.ingress {
            Ingress::Cmq => format!("cmq (cmq.concurrency {})", self.cmq_concurrency),
            Ingress::Kafka => format!("kafka ({} partitions)", self.kafka_partitions),
            other => other.name().to_string(),
        }
    }

    fn key(self) -> String {
        match self.ingress {
            Ingress::Cmq => format!("cmq-c{}", self.cmq_concurrency),
            other => other.name().to_string(),
        }
    }
}

/// One event's hand-over, in wall-clock milliseconds since the epoch (the clock of `publish_time`).
#[derive(Debug, Clone, Copy)]
struct HandOver {
    sent_ms: f64,
    answered_ms: f64,
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// One event to hand over.
struct Event {
    body: Vec<u8>,
    job_id: String,
    format: EventFormat,
}

fn event(run: &str, i: u64) -> Event {
    let format = format_of(i);
    Event {
        body: events::completion_event(run, i, format),
        job_id: events::job_id(run, i),
        format,
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<HandOver>> + Send>>;

/// Hands events to one source as CI (or a bridge) would.
enum Sender {
    // Boxed: the crate's producer is several times the size of the other senders.
    Pulsar(Box<RawProducer>),
    Cmq {
        client: crate::cmq::client::CmqClient,
        queue: String,
    },
    Http {
        client: reqwest::Client,
        url: String,
    },
    Kafka {
        producer: rdkafka::producer::FutureProducer,
        topic: String,
    },
}

impl Sender {
    /// A sender into the source a worker of `topics` reads with `ingress`: the callback topic, the
    /// CMQ queue or Kafka topic `place`, or the worker's HTTP port `http_port`.
    async fn open(
        bench: &Bench,
        ingress: Ingress,
        topics: &WorkerTopics,
        cmq: Option<&CmqSide>,
        place: Option<&str>,
        http_port: Option<u16>,
    ) -> Result<Sender> {
        Ok(match ingress {
            Ingress::Pulsar => Sender::Pulsar(Box::new(
                io::producer(&bench.client, &topics.callback).await?,
            )),
            Ingress::Cmq => {
                let side = cmq.context("the cmq runner needs the emulator's CMQ API")?;
                let queue = place.context("the cmq runner needs a queue")?;
                Sender::Cmq {
                    client: side.client.clone(),
                    queue: queue.to_string(),
                }
            }
            Ingress::Http => {
                let port = http_port.context("the http runner needs the worker's port")?;
                Sender::Http {
                    // HTTP/1.1, one connection per POST in flight: the pool keeps them all.
                    client: reqwest::Client::builder()
                        .pool_max_idle_per_host(usize::MAX)
                        .timeout(Duration::from_secs(30))
                        .build()
                        .context("the benchmark's HTTP client")?,
                    url: format!("http://127.0.0.1:{port}/ci/callback/{CALLBACK_TOKEN}"),
                }
            }
            Ingress::Kafka => {
                let side = bench
                    .kafka
                    .as_ref()
                    .context("the kafka runner needs the Kafka cluster")?;
                Sender::Kafka {
                    producer: side.producer()?,
                    topic: place.context("the kafka runner needs a topic")?.to_string(),
                }
            }
        })
    }

    /// Starts handing `e` over; the future ends with the source's answer. Only the Pulsar producer
    /// needs `&mut` (its sends are ordered): the answers are awaited concurrently.
    async fn send(&mut self, e: Event) -> Result<Answer> {
        match self {
            Sender::Pulsar(producer) => {
                let sent_ms = wall_ms();
                let receipt = producer
                    .send(e.body, Some(e.job_id))
                    .await
                    .context("publishing an event to the callback topic")?;
                Ok(Box::pin(async move {
                    receipt
                        .await
                        .map_err(|err| anyhow!("the broker did not store an event: {err}"))?;
                    Ok(HandOver {
                        sent_ms,
                        answered_ms: wall_ms(),
                    })
                }))
            }
            Sender::Cmq { client, queue } => {
                let (client, queue) = (client.clone(), queue.clone());
                let text = String::from_utf8(e.body).context("bench events are UTF-8")?;
                Ok(Box::pin(async move {
                    let sent_ms = wall_ms();
                    client
                        .send_message(&queue, &text)
                        .await
                        .with_context(|| format!("SendMessage into CMQ queue {queue}"))?;
                    Ok(HandOver {
                        sent_ms,
                        answered_ms: wall_ms(),
                    })
                }))
            }
            Sender::Http { client, url } => {
                let content_type = match e.format {
                    EventFormat::Xml => "application/xml",
                    EventFormat::Json => "application/json",
                };
                let request = client
                    .post(url.as_str())
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(e.body);
                Ok(Box::pin(async move {
                    let sent_ms = wall_ms();
                    let answer = request.send().await.context("POSTing an event")?;
                    let status = answer.status();
                    if !status.is_success() {
                        let text = answer.text().await.unwrap_or_default();
                        bail!("the worker answered an event's POST with {status}: {text}");
                    }
                    Ok(HandOver {
                        sent_ms,
                        answered_ms: wall_ms(),
                    })
                }))
            }
            Sender::Kafka { producer, topic } => {
                let sent_ms = wall_ms();
                let record = rdkafka::producer::FutureRecord::to(topic.as_str())
                    .key(e.job_id.as_str())
                    .payload(e.body.as_slice());
                // Queued in the producer at once (a full queue is an error, not a wait: the
                // hand-over window keeps it far from full); the future ends with the broker's answer.
                let delivery = producer.send_result(record).map_err(|(err, _)| {
                    anyhow!("queueing an event for Kafka topic {topic}: {err}")
                })?;
                Ok(Box::pin(async move {
                    match delivery.await {
                        Ok(Ok(_)) => Ok(HandOver {
                            sent_ms,
                            answered_ms: wall_ms(),
                        }),
                        Ok(Err((err, _))) => {
                            bail!("the Kafka broker did not store an event: {err}")
                        }
                        Err(_) => bail!("the Kafka producer was dropped before its answer"),
                    }
                }))
            }
        }
    }

    async fn close(self) {
        if let Sender::Pulsar(producer) = self {
            (*producer).close().await;
        }
    }
}

/// Hands events `0..count` of `run` over as fast as the source answers, `window` at a time; the
/// hand-overs by index.
async fn hand_over_all(
    sender: &mut Sender,
    run: &str,
    count: u64,
    window: usize,
) -> Result<Vec<(u64, HandOver)>> {
    let permits = Arc::new(Semaphore::new(window.max(1)));
    let mut tasks = JoinSet::new();
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let answer = sender.send(event(run, i)).await?;
        tasks.spawn(async move {
            let h = answer.await;
            drop(permit);
            h.map(|h| (i, h))
        });
        while let Some(done) = tasks.try_join_next() {
            out.push(done.context("hand-over task")??);
        }
    }
    while let Some(done) = tasks.join_next().await {
        out.push(done.context("hand-over task")??);
    }
    Ok(out)
}

/// What a paced hand-over achieved.
struct Paced {
    handed: Vec<(u64, HandOver)>,
    /// From the first event's scheduled time to the last one's hand-over start.
    secs: f64,
    /// The worst delay of an event behind its scheduled time.
    max_lag: Duration,
}

/// Event `i` of `run` handed over at start + i/rate, none waiting for an earlier one's answer.
async fn hand_over_paced(sender: &mut Sender, run: &str, rate: u64, count: u64) -> Result<Paced> {
    let mut tasks = JoinSet::new();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut max_lag = Duration::ZERO;
    let mut handed = Vec::with_capacity(count as usize);
    for i in 0..count {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at).await;
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(at));
        let answer = sender.send(event(run, i)).await?;
        tasks.spawn(async move { answer.await.map(|h| (i, h)) });
        while let Some(done) = tasks.try_join_next() {
            handed.push(done.context("hand-over task")??);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    while let Some(done) = tasks.join_next().await {
        handed.push(done.context("hand-over task")??);
    }
    Ok(Paced {
        handed,
        secs,
        max_lag,
    })
}

/// Collects the result topic (in a task) until `count` results of `run` have come; the results of
/// other runs on the topic (a warm-up's) are passed over by key.
fn results_of(
    follower: crate::pulsar::raw::Tail,
    run: &str,
    count: u64,
    limit: Duration,
) -> tokio::task::JoinHandle<Result<Vec<Seen>>> {
    let prefix = run_prefix(run);
    let mut got = 0u64;
    tokio::spawn(io::collect(follower, limit, false, move |s| {
        if s.key.as_deref().is_some_and(|k| k.starts_with(&prefix)) {
            got += 1;
        }
        got >= count
    }))
}

/// The start of the request ids (the results' keys) of run `run`.
fn run_prefix(run: &str) -> String {
    events::request_id(run, 0)
        .strip_suffix('0')
        .unwrap_or_default()
        .to_string()
}

fn only_run(seen: Vec<Seen>, run: &str) -> Vec<Seen> {
    let prefix = run_prefix(run);
    seen.into_iter()
        .filter(|s| s.key.as_deref().is_some_and(|k| k.starts_with(&prefix)))
        .collect()
}

/// A burst's figures.
#[derive(Debug, Clone, Copy)]
struct Burst {
    rate: f64,
    /// Worker CPU seconds per 10,000 events.
    worker_cpu: f64,
    /// The benchmark process's CPU during the burst, share of one core.
    bench_cpu: Option<f64>,
}

/// A steady run's figures.
#[derive(Debug, Clone, Default)]
struct Steady {
    achieved: f64,
    offered: f64,
    max_lag_ms: f64,
    added_ms: Vec<f64>,
    answer_ms: Vec<f64>,
}

#[derive(Debug, Clone, Default)]
struct Figures {
    bursts: Vec<Burst>,
    steady: BTreeMap<u64, Vec<Steady>>,
}

impl Bench {
    /// `--only ingress`: every source of `--ingress`.
    pub(super) async fn ingress(&mut self) -> Result<()> {
        let list = self.opts.ingress.clone();
        self.ingress_section("ingress", &list).await
    }

    /// `--only cmq`: the cmq row of the ingress section.
    pub(super) async fn cmq(&mut self) -> Result<()> {
        self.ingress_section("cmq", &[Ingress::Cmq]).await
    }

    fn ingress_command(&self, section: &str, list: &[Ingress]) -> String {
        let o = &self.opts;
        let join = |v: Vec<String>| v.join(",");
        let mut args = format!("--only {section}");
        if section != "cmq" {
            let names = join(list.iter().map(|i| i.name().to_string()).collect());
            args.push_str(&format!(" --ingress {names}"));
        }
        args.push_str(&format!(
            " --ingress-events {} --ingress-rates {} --ingress-duration-secs {} --ingress-repeat {}",
            o.ingress_events,
            join(o.ingress_rates.iter().map(u64::to_string).collect()),
            o.ingress_duration_secs,
            o.ingress_repeat
        ));
        if list.contains(&Ingress::Cmq) {
            let values = join(o.cmq_concurrency.iter().map(usize::to_string).collect());
            args.push_str(&format!(" --cmq-concurrency {values}"));
        }
        if list.contains(&Ingress::Http) {
            args.push_str(&format!(
                " --ingress-http-concurrency {}",
                o.ingress_http_concurrency
            ));
        }
        if list.contains(&Ingress::Kafka) {
            args.push_str(&format!(" --kafka-partitions {}", o.kafka_partitions));
        }
        self.command(&args)
    }

    async fn ingress_section(&mut self, section: &'static str, list: &[Ingress]) -> Result<()> {
        let mut runners = Vec::new();
        for &ingress in list {
            if ingress == Ingress::Cmq {
                for &c in &self.opts.cmq_concurrency {
                    if !(1..=64).contains(&c) {
                        bail!("--cmq-concurrency needs values from 1 to 64");
                    }
                    runners.push(Runner {
                        ingress,
                        cmq_concurrency: c,
                        kafka_partitions: 0,
                    });
                }
            } else {
                runners.push(Runner {
                    ingress,
                    cmq_concurrency: 0,
                    kafka_partitions: if ingress == Ingress::Kafka {
                        self.opts.kafka_partitions
                    } else {
                        0
                    },
                });
            }
        }
        runners.dedup();
        if runners.is_empty() {
            bail!("--ingress names no source");
        }
        if list.contains(&Ingress::Kafka) {
            // Before anything starts: a missing broker is named at once.
            self.kafka_side().await?;
        }
        let cmq = if list.contains(&Ingress::Cmq) {
            Some(self.start_cmq_emulator().await?)
        } else {
            None
        };
        let outcome = self
            .ingress_passes(section, list, &runners, cmq.as_ref())
            .await;
        if let Some(side) = cmq {
            side.emulator.stop().await;
        }
        self.extra_worker_env.clear();
        outcome
    }

    async fn ingress_passes(
        &mut self,
        section: &'static str,
        list: &[Ingress],
        runners: &[Runner],
        cmq: Option<&CmqSide>,
    ) -> Result<()> {
        let n = self.opts.ingress_events.max(2);
        let rates: Vec<u64> = self
            .opts
            .ingress_rates
            .iter()
            .copied()
            .filter(|r| *r > 0)
            .collect();
        eprintln!("{section}: warm-up (one unmeasured burst per runner)");
        for &r in runners {
            self.ingress_runner(r, cmq, n.min(WARMUP_EVENTS), &[], "warmup")
                .await
                .with_context(|| format!("{section} warm-up, {}", r.label()))?;
        }
        let mut figures: BTreeMap<String, (Runner, Figures)> = BTreeMap::new();
        for pass in 0..self.opts.ingress_repeat.max(1) {
            let mut order = runners.to_vec();
            if pass % 2 == 1 {
                order.reverse();
            }
            for r in order {
                eprintln!("{section}, pass {}: {}", pass + 1, r.label());
                let got = self
                    .ingress_runner(r, cmq, n, &rates, &format!("p{pass}"))
                    .await
                    .with_context(|| format!("{section}, pass {}, {}", pass + 1, r.label()))?;
                let entry = figures
                    .entry(r.key())
                    .or_insert_with(|| (r, Figures::default()));
                entry.1.bursts.push(got.bursts[0]);
                for (rate, s) in got.steady {
                    entry.1.steady.entry(rate).or_default().extend(s);
                }
            }
        }
        let cmd = self.ingress_command(section, list);
        self.ingress_rows(section, runners, &mut figures, n, &cmd);
        Ok(())
    }

    /// The rows (in the order of `runners`) and the section's JSON.
    fn ingress_rows(
        &mut self,
        section: &'static str,
        runners: &[Runner],
        figures: &mut BTreeMap<String, (Runner, Figures)>,
        n: u64,
        cmd: &str,
    ) {
        let secs = self.opts.ingress_duration_secs.max(1);
        let http_c = self.opts.ingress_http_concurrency;
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut json = serde_json::Map::new();
        for r in runners {
            let Some((_, f)) = figures.get_mut(&r.key()) else {
                continue;
            };
            let label = r.label();
            let rates: Vec<f64> = f.bursts.iter().map(|b| b.rate).collect();
            let how = if r.ingress.holds_backlog() {
                "a backlog drained by a worker started after it".to_string()
            } else {
                format!("POSTed at once, {http_c} in flight, worker warmed")
            };
            let bench_cpu = f
                .bursts
                .iter()
                .filter_map(|b| b.bench_cpu)
                .fold(0.0f64, f64::max);
            self.row(
                section,
                format!(
                    "{label}: burst of {n} events ({how}), events/s into results, first to last at a consumer of the result topic (runs: {})",
                    list(&rates)
                ),
                format!(
                    "{:.0} events/s; worker {:.2} CPU s per 10,000 (benchmark process ≤ {:.0}% of a core)",
                    mean(rates.iter().copied()),
                    mean(f.bursts.iter().map(|b| b.worker_cpu)),
                    bench_cpu * 100.0
                ),
                cmd.to_string(),
            );
            let mut steady_json = serde_json::Map::new();
            for (rate, runs) in f.steady.iter_mut() {
                let achieved: Vec<f64> = runs.iter().map(|s| s.achieved).collect();
                let offered: Vec<f64> = runs.iter().map(|s| s.offered).collect();
                let max_lag = runs.iter().map(|s| s.max_lag_ms).fold(0.0f64, f64::max);
                self.row(
                    section,
                    format!(
                        "{label}: steady {rate} events/s offered for {secs} s, events/s into results (runs: {}; offered as achieved by the sender: {}, worst lag behind schedule {max_lag:.1} ms)",
                        list(&achieved),
                        list(&offered)
                    ),
                    format!("{:.0} events/s", mean(achieved.iter().copied())),
                    cmd.to_string(),
                );
                let mut added: Vec<f64> = runs.iter().flat_map(|s| s.added_ms.clone()).collect();
                let per_run: Vec<String> = runs
                    .iter_mut()
                    .map(|s| {
                        let mut v = s.added_ms.clone();
                        p50_p99(&mut v)
                    })
                    .collect();
                self.row(
                    section,
                    format!(
                        "{label}: latency the ingress adds at {rate} events/s, {} → the result's publish_time ({} events; p50/p99 per run: {})",
                        r.ingress.hand_over(),
                        added.len(),
                        per_run.join(", ")
                    ),
                    pcts(&mut added),
                    cmd.to_string(),
                );
                let mut answer: Vec<f64> = runs.iter().flat_map(|s| s.answer_ms.clone()).collect();
                if r.ingress == Ingress::Http {
                    self.row(
                        section,
                        format!("{label}: POST answered (200: the result stored) at {rate} events/s, round trip"),
                        pcts(&mut answer.clone()),
                        cmd.to_string(),
                    );
                }
                steady_json.insert(
                    rate.to_string(),
                    serde_json::json!({
                        "achieved": achieved,
                        "offered": offered,
                        "added_ms": quantiles(&mut added),
                        "answer_ms": quantiles(&mut answer),
                    }),
                );
            }
            json.insert(
                r.key(),
                serde_json::json!({
                    "burst_events": n,
                    "burst_rates": rates,
                    "burst_worker_cpu_per_10k": f.bursts.iter().map(|b| b.worker_cpu).collect::<Vec<_>>(),
                    "steady": steady_json,
                }),
            );
        }
        self.extra_json
            .insert(section.to_string(), serde_json::Value::Object(json));
    }

    /// Sets the settings of the workers started next to read events from `ingress`: the CMQ queue
    /// or Kafka topic `place`, `cmq.concurrency` `cmq_concurrency`.
    pub(super) fn use_ingress(
        &mut self,
        ingress: Ingress,
        place: Option<&str>,
        cmq: Option<(&CmqSide, usize)>,
    ) {
        self.extra_worker_env.insert(
            "CI_WORKER__WORKER__CALLBACK_INGRESS".into(),
            ingress.name().into(),
        );
        match ingress {
            Ingress::Pulsar => {}
            Ingress::Cmq => {
                if let (Some((side, concurrency)), Some(queue)) = (cmq, place) {
                    self.cmq_worker_env(&side.endpoint, queue, concurrency);
                }
            }
            Ingress::Kafka => {
                if let Some(topic) = place {
                    self.kafka_worker_env(topic);
                }
            }
            Ingress::Http => {
                self.extra_worker_env.insert(
                    "CI_WORKER__HTTP__CALLBACK_TOKEN".into(),
                    CALLBACK_TOKEN.into(),
                );
            }
        }
    }

    /// One runner's pass: a burst of `n`, then a steady run per rate of `rates`, on one worker.
    async fn ingress_runner(
        &mut self,
        r: Runner,
        cmq: Option<&CmqSide>,
        n: u64,
        rates: &[u64],
        label: &str,
    ) -> Result<Figures> {
        let topics = self.worker_topics(None);
        // The runner's own CMQ queue or Kafka topic.
        let place = match r.ingress {
            Ingress::Cmq => Some(
                cmq.context("the cmq runner needs the emulator's CMQ API")?
                    .new_queue(self, label)
                    .await?,
            ),
            Ingress::Kafka => Some(self.new_kafka_topic(label).await?),
            Ingress::Pulsar | Ingress::Http => None,
        };
        self.extra_worker_env.clear();
        self.use_ingress(
            r.ingress,
            place.as_deref(),
            cmq.map(|side| (side, r.cmq_concurrency)),
        );
        let burst_run = format!("{}-{label}-{}", self.id, short());
        let proc_label = format!("ingress-{}-{label}", r.key());
        let limit = Duration::from_secs(60 + n / 200);
        let mut worker: Proc;
        let mut sender: Sender;
        let (seen, worker_cpu, bench_secs) = if r.ingress.holds_backlog() {
            sender = Sender::open(self, r.ingress, &topics, cmq, place.as_deref(), None).await?;
            let window = match r.ingress {
                Ingress::Pulsar | Ingress::Kafka => PULSAR_WINDOW,
                Ingress::Cmq | Ingress::Http => CMQ_WINDOW,
            };
            let filled = Instant::now();
            hand_over_all(&mut sender, &burst_run, n, window).await?;
            eprintln!(
                "  {n} events handed over in {:.1} s (backlog)",
                filled.elapsed().as_secs_f64()
            );
            let bench_before = procs::usage_of(std::process::id());
            let follower = io::follow(&self.client, &topics.result).await?;
            let collector = results_of(follower, &burst_run, n, limit);
            let started = Instant::now();
            worker = self
                .start_workers(Kind::Worker, 1, &proc_label, &topics, None, None)?
                .remove(0);
            let seen = watch(collector, &mut [&mut worker]).await?;
            let cpu = worker.usage().unwrap_or_default().cpu_secs;
            let bench = bench_share(bench_before, started);
            (seen, cpu, bench)
        } else {
            worker = self
                .start_workers(Kind::Worker, 1, &proc_label, &topics, None, None)?
                .remove(0);
            procs::wait_ready(&mut worker, Duration::from_secs(60)).await?;
            sender = Sender::open(
                self,
                r.ingress,
                &topics,
                cmq,
                place.as_deref(),
                worker.http_port,
            )
            .await?;
            let warm = format!("{burst_run}-warm");
            hand_over_all(
                &mut sender,
                &warm,
                HTTP_WARM_EVENTS,
                self.opts.ingress_http_concurrency,
            )
            .await
            .context("warming the worker")?;
            let follower = io::follow(&self.client, &topics.result).await?;
            let collector = results_of(follower, &burst_run, n, limit);
            let cpu_before = worker.usage().unwrap_or_default().cpu_secs;
            let bench_before = procs::usage_of(std::process::id());
            let started = Instant::now();
            hand_over_all(
                &mut sender,
                &burst_run,
                n,
                self.opts.ingress_http_concurrency,
            )
            .await?;
            let seen = watch(collector, &mut [&mut worker]).await?;
            let cpu = worker.usage().unwrap_or_default().cpu_secs - cpu_before;
            let bench = bench_share(bench_before, started);
            (seen, cpu, bench)
        };
        let seen = only_run(seen, &burst_run);
        let burst = Burst {
            rate: rate_of(&seen),
            worker_cpu: worker_cpu * 10_000.0 / seen.len().max(1) as f64,
            bench_cpu: bench_secs,
        };
        eprintln!(
            "  burst: {:.0} events/s into results ({} results; worker {:.2} CPU s per 10,000)",
            burst.rate,
            seen.len(),
            burst.worker_cpu
        );
        let mut figures = Figures {
            bursts: vec![burst],
            steady: BTreeMap::new(),
        };
        let outcome = async {
            for &rate in rates {
                let s = self
                    .ingress_steady(r.ingress, &mut sender, &topics, &mut worker, rate)
                    .await?;
                figures.steady.entry(rate).or_default().push(s);
            }
            anyhow::Ok(())
        }
        .await;
        sender.close().await;
        worker.stop().await;
        outcome?;
        Ok(figures)
    }

    /// One steady run against a running worker.
    async fn ingress_steady(
        &mut self,
        ingress: Ingress,
        sender: &mut Sender,
        topics: &WorkerTopics,
        worker: &mut Proc,
        rate: u64,
    ) -> Result<Steady> {
        let count = rate * self.opts.ingress_duration_secs.max(1);
        let run = format!("{}-r{rate}-{}", self.id, short());
        let follower = io::follow(&self.client, &topics.result).await?;
        let limit = Duration::from_secs(60 + 2 * self.opts.ingress_duration_secs);
        let collector = results_of(follower, &run, count, limit);
        let paced = hand_over_paced(sender, &run, rate, count).await?;
        let seen = only_run(watch(collector, &mut [worker]).await?, &run);
        let handed: HashMap<String, HandOver> = paced
            .handed
            .iter()
            .map(|(i, h)| (events::request_id(&run, *i), *h))
            .collect();
        let mut added_ms = Vec::with_capacity(seen.len());
        for s in &seen {
            if let Some(h) = s.key.as_deref().and_then(|k| handed.get(k)) {
                added_ms.push(s.publish_ms as f64 - ingress.handed_over_ms(h));
            }
        }
        let answer_ms = paced
            .handed
            .iter()
            .map(|(_, h)| h.answered_ms - h.sent_ms)
            .collect();
        let steady = Steady {
            achieved: rate_of(&seen),
            offered: count as f64 / paced.secs.max(1e-9),
            max_lag_ms: paced.max_lag.as_secs_f64() * 1000.0,
            added_ms,
            answer_ms,
        };
        let mut show = steady.added_ms.clone();
        eprintln!(
            "  steady {rate}/s: {:.0} events/s into results; added {}",
            steady.achieved,
            pcts(&mut show)
        );
        Ok(steady)
    }
}

/// `CallBackKafkaConfig.Region` and `InstanceId` of the benchmark's jobs: checked by the emulator,
/// not used (one emulator stands for one CKafka instance).
const KAFKA_REGION: &str = "ap-guangzhou";
const KAFKA_INSTANCE_ID: &str = "ckafka-bench";

impl Bench {
    /// The Kafka cluster of `--kafka-brokers`, connected on first use.
    pub(super) async fn kafka_side(&mut self) -> Result<&mut KafkaSide> {
        if self.kafka.is_none() {
            let side =
                KafkaSide::connect(&self.opts.kafka_brokers, self.opts.kafka_partitions).await?;
            self.kafka = Some(side);
        }
        Ok(self.kafka.as_mut().expect("connected above"))
    }

    /// A fresh Kafka topic named after the run and `label`.
    pub(super) async fn new_kafka_topic(&mut self, label: &str) -> Result<String> {
        let name = format!("bench-{}-{label}-{}", self.id, short());
        self.kafka_side().await?.new_topic(&name).await
    }

    /// The `kafka` ingress settings of the workers started next, and the callback CI is given
    /// (`CallBackType=Kafka`, `CallBackKafkaConfig.Topic = topic`): a consumer group of its own on
    /// `topic`.
    pub(super) fn kafka_worker_env(&mut self, topic: &str) {
        let brokers = self.opts.kafka_brokers.clone();
        for (k, v) in [
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "kafka".to_string()),
            ("CI_WORKER__CI__CALLBACK_TYPE", "Kafka".to_string()),
            ("CI_WORKER__CI__KAFKA_REGION", KAFKA_REGION.to_string()),
            (
                "CI_WORKER__CI__KAFKA_INSTANCE_ID",
                KAFKA_INSTANCE_ID.to_string(),
            ),
            ("CI_WORKER__CI__KAFKA_TOPIC", topic.to_string()),
            ("CI_WORKER__KAFKA__BROKERS", brokers),
            ("CI_WORKER__KAFKA__GROUP_ID", format!("{topic}-group")),
        ] {
            self.extra_worker_env.insert(k.to_string(), v);
        }
    }
}

/// The benchmark process's CPU since `before` (taken at `since`), as a share of one core.
fn bench_share(before: Option<procs::Usage>, since: Instant) -> Option<f64> {
    let (before, after) = (before?, procs::usage_of(std::process::id())?);
    let secs = since.elapsed().as_secs_f64();
    (secs > 0.0).then(|| (after.cpu_secs - before.cpu_secs) / secs)
}

/// `p50/p99` of `values` in ms, one decimal.
fn p50_p99(values: &mut [f64]) -> String {
    match quantiles(values) {
        serde_json::Value::Object(q) => format!(
            "{:.1}/{:.1}",
            q["p50"].as_f64().unwrap_or(0.0),
            q["p99"].as_f64().unwrap_or(0.0)
        ),
        _ => "–".into(),
    }
}

/// `{"p50", "p99", "max", "n"}` of `values` (the same ranks as [`pcts`]); null without samples.
fn quantiles(values: &mut [f64]) -> serde_json::Value {
    if values.is_empty() {
        return serde_json::Value::Null;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[i]
    };
    serde_json::json!({
        "p50": at(0.50),
        "p99": at(0.99),
        "max": values[values.len() - 1],
        "n": values.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_count_the_event_only_where_it_is_a_broker_message() {
        assert_eq!(Ingress::Pulsar.floor(), 4);
        assert_eq!(Ingress::Cmq.floor(), 3);
        assert_eq!(Ingress::Http.floor(), 3);
        assert_eq!(Ingress::Kafka.floor(), 3);
    }

    #[test]
    fn a_runs_prefix_matches_its_keys_only() {
        let prefix = run_prefix("abc-p0-1234");
        assert!(events::request_id("abc-p0-1234", 17).starts_with(&prefix));
        assert!(!events::request_id("abc-p0-12345", 1).starts_with(&prefix));
        assert!(!events::request_id("abc-p0", 1).starts_with(&prefix));
    }

    #[test]
    fn quantiles_rank_as_pcts_does() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let q = quantiles(&mut v);
        assert_eq!(q["p50"], 50.0);
        assert_eq!(q["p99"], 99.0);
        assert_eq!(q["max"], 100.0);
        assert_eq!(p50_p99(&mut v), "50.0/99.0");
        assert!(quantiles(&mut []).is_null());
    }
}
