//! The `cmq` section: events through the `cmq` ingress, from the emulator's TDMQ for CMQ queue to the
//! worker's callback topic.
//!
//! Throughput: `--cmq-events` completion events (half XML, half JSON, the completion section's shape)
//! are sent into a fresh queue first; then one `ci-worker run` with ingress `cmq` (batch 16,
//! `cmq.concurrency` from `--cmq-concurrency`) is started, and a consumer of its callback topic counts
//! them first to last (`publish_time`, the worker's clock as it stored each one). The order of the
//! concurrency values alternates between two passes so that neither always runs on a warmer broker.
//! Latency: a sender paced at `--cmq-rate` events/s for 10 s against a running worker; per event, from
//! CMQ's answer to its `SendMessage` to the arrival of the event at the benchmark's consumer of the
//! callback topic. That includes one broker delivery to the consumer, which the worker's own
//! consumers pay too.

use super::io::{self, Seen};
use super::procs::{self, Proc};
use super::{events, format_of, mean, pcts, short, Bench, Kind, BENCH_SECRET_ID, BENCH_SECRET_KEY};
use crate::cmq::client::{CmqClient, QueueAttributes};
use crate::cmq::sign::{CmqCredentials, SignatureMethod};
use crate::secret::Secret;
use anyhow::{bail, Context as _, Result};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sends in flight while filling a queue.
const SEND_WINDOW: usize = 64;
/// The latency run's length.
const LATENCY_RUN: Duration = Duration::from_secs(10);

impl Bench {
    pub(super) async fn cmq(&mut self) -> Result<()> {
        let (emulator, cmq_port) = self.start_cmq_emulator().await?;
        let endpoint = format!("http://127.0.0.1:{cmq_port}");
        let client = CmqClient::new(
            &endpoint,
            CmqCredentials {
                secret_id: BENCH_SECRET_ID.into(),
                secret_key: Secret::new(BENCH_SECRET_KEY),
                token: None,
            },
            SignatureMethod::HmacSha256,
            Duration::from_secs(10),
        )?;
        let outcome = self.cmq_sections(&client, &endpoint).await;
        emulator.stop().await;
        self.extra_worker_env.clear();
        outcome
    }

    async fn cmq_sections(&mut self, client: &CmqClient, endpoint: &str) -> Result<()> {
        let n = self.opts.cmq_events;
        let mut values = self.opts.cmq_concurrency.clone();
        values.retain(|c| (1..=64).contains(c));
        if values.is_empty() {
            bail!("--cmq-concurrency needs values from 1 to 64");
        }
        let mut rates: HashMap<usize, Vec<f64>> = HashMap::new();
        let mut cpu: HashMap<usize, Vec<f64>> = HashMap::new();
        // Warm-up: one unmeasured run, so that the first measured one does not meet a cold broker.
        eprintln!("cmq ingress: warm-up run");
        self.cmq_run(client, endpoint, n.min(5000), values[0], "warmup")
            .await
            .context("cmq ingress warm-up")?;
        for pass in 0..2 {
            let order: Vec<usize> = if pass == 0 {
                values.clone()
            } else {
                values.iter().rev().copied().collect()
            };
            for c in order {
                eprintln!(
                    "cmq ingress: {n} events, cmq.concurrency = {c} (pass {})",
                    pass + 1
                );
                let (rate, cpu_secs) = self
                    .cmq_run(client, endpoint, n, c, &format!("c{c}p{pass}"))
                    .await?;
                eprintln!("  {rate:.0} events/s, worker CPU {cpu_secs:.2} s");
                rates.entry(c).or_default().push(rate);
                cpu.entry(c).or_default().push(cpu_secs);
            }
        }
        for c in &values {
            let runs = &rates[c];
            let list = runs
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ");
            self.row(
                "cmq",
                format!(
                    "cmq ingress into the callback topic, batch 16, cmq.concurrency {c} (N = {n}, events/s; runs: {list})"
                ),
                format!("{:.0} events/s", mean(runs.iter().copied())),
                self.command(&format!("--only cmq --cmq-events {n} --cmq-concurrency {c}")),
            );
            self.row(
                "cmq",
                format!(
                    "worker CPU per 10,000 events through the cmq ingress, cmq.concurrency {c}"
                ),
                format!(
                    "{:.2} s",
                    mean(cpu[c].iter().map(|s| s * 10_000.0 / n as f64))
                ),
                self.command(&format!(
                    "--only cmq --cmq-events {n} --cmq-concurrency {c}"
                )),
            );
        }
        self.cmq_latency(client, endpoint, values[values.len() / 2])
            .await
    }

    /// Starts an emulator whose CMQ API answers on a port of its own.
    async fn start_cmq_emulator(&mut self) -> Result<(Proc, u16)> {
        let port = procs::free_port()?;
        let cmq_port = procs::free_port()?;
        let mut env = self.base_env();
        for (k, v) in [
            ("CI_WORKER__EMULATOR__LISTEN", format!("127.0.0.1:{port}")),
            ("CI_WORKER__EMULATOR__TDMQ_DELIVERY", "cmq".into()),
            (
                "CI_WORKER__EMULATOR__CMQ_LISTEN",
                format!("127.0.0.1:{cmq_port}"),
            ),
            ("CI_WORKER__EMULATOR__CMQ_QUEUES", String::new()),
        ] {
            env.insert(k.into(), v);
        }
        let mut proc = Proc::spawn(
            &format!("emulator-cmq-{}", short()),
            &["emulator"],
            &env,
            &self.log_dir,
        )?;
        procs::wait_http_ok(
            &format!("http://127.0.0.1:{port}/healthz"),
            &mut proc,
            Duration::from_secs(30),
        )
        .await?;
        Ok((proc, cmq_port))
    }

    /// The ingress settings of the workers this section starts.
    pub(super) fn cmq_worker_env(&mut self, endpoint: &str, queue: &str, concurrency: usize) {
        self.extra_worker_env = [
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "cmq".to_string()),
            ("CI_WORKER__CMQ__ENDPOINT", endpoint.to_string()),
            ("CI_WORKER__CMQ__QUEUE", queue.to_string()),
            ("CI_WORKER__CMQ__BATCH_SIZE", "16".to_string()),
            ("CI_WORKER__CMQ__CONCURRENCY", concurrency.to_string()),
            ("CI_WORKER__CMQ__POLLING_WAIT", "1s".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    }

    fn cmq_queue_name(&self, label: &str) -> String {
        // CMQ's rule: a letter first, letters, digits and `-`, at most 64.
        format!("bench-{}-{label}-{}", self.id, short())
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect()
    }

    /// One throughput run: fills a fresh queue with `n` events, starts a worker reading it, counts the
    /// events in its callback topic. Returns events/s and the worker's CPU seconds.
    async fn cmq_run(
        &mut self,
        client: &CmqClient,
        endpoint: &str,
        n: u64,
        concurrency: usize,
        label: &str,
    ) -> Result<(f64, f64)> {
        let queue = self.cmq_queue_name(label);
        client
            .create_queue(
                &queue,
                &QueueAttributes {
                    visibility_timeout: Some(60),
                    max_msg_size: Some(1_048_576),
                    ..QueueAttributes::default()
                },
            )
            .await?;
        let run = format!("{}-{label}", self.id);
        fill(client, &queue, n, |i| {
            events::completion_event(&run, i, format_of(i))
        })
        .await?;
        let topics = self.worker_topics(None);
        let consumer = io::follow(&self.client, &topics.callback).await?;
        let collector = tokio::spawn(io::collect(consumer, Duration::from_secs(600), false, {
            let mut got = 0u64;
            move |_| {
                got += 1;
                got >= n
            }
        }));
        self.cmq_worker_env(endpoint, &queue, concurrency);
        let started = Instant::now();
        let procs = self.start_workers(
            Kind::Worker,
            1,
            &format!("cmq-{label}"),
            &topics,
            None,
            None,
        )?;
        let broker_before = self.broker_usage();
        let (seen, _wall, usage, _broker) = self
            .supervise(procs, collector, started, broker_before)
            .await?;
        Ok((super::rate_of(&seen), usage.cpu_secs))
    }

    /// The paced run: per event, CMQ's answer to its send → its arrival in the callback topic.
    async fn cmq_latency(
        &mut self,
        client: &CmqClient,
        endpoint: &str,
        concurrency: usize,
    ) -> Result<()> {
        let rate = self.opts.cmq_rate.max(1);
        let count = rate * LATENCY_RUN.as_secs();
        let queue = self.cmq_queue_name("latency");
        client
            .create_queue(&queue, &QueueAttributes::default())
            .await?;
        let topics = self.worker_topics(None);
        let consumer = io::follow(&self.client, &topics.callback).await?;
        let collector = tokio::spawn(io::collect(consumer, Duration::from_secs(120), false, {
            let mut got = 0u64;
            move |_: &Seen| {
                got += 1;
                got >= count
            }
        }));
        self.cmq_worker_env(endpoint, &queue, concurrency);
        let mut procs = self.start_workers(Kind::Worker, 1, "cmq-latency", &topics, None, None)?;
        procs::wait_ready(&mut procs[0], Duration::from_secs(60)).await?;
        eprintln!("cmq ingress latency: {count} events at {rate}/s");
        let run = format!("{}-latency", self.id);
        let mut sent: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        for i in 0..count {
            tick.tick().await;
            let body = events::completion_event(&run, i, format_of(i));
            let body = String::from_utf8(body).context("bench events are UTF-8")?;
            client.send_message(&queue, &body).await?;
            sent.insert(events::job_id(&run, i), Instant::now());
        }
        let seen = collector.await.context("collector task")??;
        for p in procs {
            p.stop().await;
        }
        let mut latencies: Vec<f64> = seen
            .iter()
            .filter_map(|s| {
                let key = s.key.as_ref()?;
                let at = sent.get(key)?;
                Some(s.received.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        if latencies.len() < seen.len() {
            self.note(format!(
                "cmq latency: {} of {} events had no matching send (key not a bench job id)",
                seen.len() - latencies.len(),
                seen.len()
            ));
        }
        let summary = pcts(&mut latencies);
        self.row(
            "cmq",
            format!(
                "latency added by the cmq ingress at {rate} events/s (CMQ send answered → event at a callback-topic consumer; long poll, batch 16, cmq.concurrency {concurrency})"
            ),
            summary,
            self.command(&format!("--only cmq --cmq-rate {rate}")),
        );
        Ok(())
    }
}

/// Sends `n` bodies into `queue`, [`SEND_WINDOW`] at a time.
async fn fill(
    client: &CmqClient,
    queue: &str,
    n: u64,
    body: impl Fn(u64) -> Vec<u8>,
) -> Result<()> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let text = String::from_utf8(body(i)).unwrap_or_default();
            async move { client.send_message(queue, &text).await.map(|_| ()) }
        })
        .buffer_unordered(SEND_WINDOW)
        .try_collect::<Vec<()>>()
        .await
        .with_context(|| format!("filling CMQ queue {queue}"))?;
    eprintln!(
        "  {n} events sent into CMQ queue {queue} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
