//! The `messages` section: broker messages per job, read from the broker's own topic stats.
//!
//! A burst of `--message-jobs` requests through one `ci-worker run` (short `worker.job_timeout`,
//! `--message-job-timeout-secs`) against an emulator whose jobs take [`JOB_DURATION_MS`], per
//! `--message-ingress` with the completion events delivered as CI (or a bridge) would for that
//! source ([`Ingress`]): on the Pulsar callback topic (`tdmq_delivery = "pulsar"`, ingress `pulsar`),
//! into a CMQ queue (`tdmq_delivery = "cmq"`, ingress `cmq`), or POSTed to the worker (jobs
//! submitted with `CallBackType=Url` and the worker's `/ci/callback/<token>` as `CallBack`, ingress
//! `http`), or into a Kafka topic of `--kafka-brokers` (jobs submitted with `CallBackType=Kafka`,
//! ingress `kafka`; the Kafka records are not counted: they are not Pulsar messages). The benchmark counts final results on the result topic until every job has one, then
//! waits, polling the stats, until every deadline has come due and been settled: at least the job
//! timeout since the last `submitted` result, and every subscription of the worker with no backlog,
//! no unacknowledged and no delayed messages, the counters unchanged between two polls.
//!
//! Counted (`GET /admin/v2/persistent/{tenant}/{ns}/{topic}/stats` of every topic of the namespace
//! that is one of the run's or one of their partitions, partitions summed, before the burst and after
//! it settled, the difference, so the worker's start-up does not count): published = `msgInCounter` of
//! the topics the worker writes (result, deadline, done, dead-letter; never the callback topic, which
//! only the `pulsar` source's writer fills and the `cmq` and `http` sources leave unused); delivered
//! = `msgOutCounter` of every subscription on the run's topics except the benchmark's own
//! (`ci-worker-bench-…`), whatever their name or kind, so a non-durable subscription counts too
//! (read while the worker is connected: the broker forgets it with its consumer). The figure is
//! (published + delivered) / jobs; the floor ([`Ingress::floor`]) is 3 with the `cmq`, `http` and
//! `kafka` sources (the request delivered, `submitted` and the final result published) and 4 with
//! the `pulsar` source (the event delivered too). Each job's deadline record adds its publish on
//! top (cancelled before it is due, it is never delivered), and one that comes due its delivery.

use super::io::{self, Seen};
use super::procs::{self, Proc};
use super::source::CALLBACK_TOKEN;
use super::{events, format_of, short, Bench, Ingress, Kind, WorkerTopics};
use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The emulator's job duration in this section: short, but the `submitted` result still comes first.
pub(super) const JOB_DURATION_MS: u64 = 200;
/// Subscription names of the benchmark's own consumers ([`crate::pulsar::raw::Tail`]).
const BENCH_SUBSCRIPTION_PREFIX: &str = "ci-worker-bench-";
/// Between two reads of the stats while waiting for the deadlines to settle.
const POLL: Duration = Duration::from_millis(1000);

/// One subscription's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SubStats {
    delivered: u64,
    backlog: u64,
    unacked: u64,
    delayed: u64,
}

/// One topic's counters (all zero for a topic the broker does not know).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct TopicStats {
    published: u64,
    subscriptions: BTreeMap<String, SubStats>,
}

impl TopicStats {
    fn parse(v: &Value) -> TopicStats {
        let n = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
        let subscriptions = v
            .get("subscriptions")
            .and_then(Value::as_object)
            .map(|subs| {
                subs.iter()
                    .map(|(name, s)| {
                        let stats = SubStats {
                            delivered: n(s, "msgOutCounter"),
                            backlog: n(s, "msgBacklog"),
                            unacked: n(s, "unackedMessages"),
                            delayed: n(s, "msgDelayed"),
                        };
                        (name.clone(), stats)
                    })
                    .collect()
            })
            .unwrap_or_default();
        TopicStats {
            published: n(v, "msgInCounter"),
            subscriptions,
        }
    }

    /// Adds `other`'s counters (another partition of the same topic), subscription by subscription.
    fn absorb(&mut self, other: TopicStats) {
        self.published += other.published;
        for (name, s) in other.subscriptions {
            let sum = self.subscriptions.entry(name).or_default();
            sum.delivered += s.delivered;
            sum.backlog += s.backlog;
            sum.unacked += s.unacked;
            sum.delayed += s.delayed;
        }
    }

    /// The subscriptions that are not the benchmark's own.
    fn worker_subscriptions(&self) -> impl Iterator<Item = (&String, &SubStats)> {
        self.subscriptions
            .iter()
            .filter(|(name, _)| !name.starts_with(BENCH_SUBSCRIPTION_PREFIX))
    }

    /// Messages delivered to the worker's subscriptions since `before`.
    fn delivered_since(&self, before: &TopicStats) -> u64 {
        self.worker_subscriptions()
            .map(|(name, s)| {
                let was = before.subscriptions.get(name).map_or(0, |b| b.delivered);
                s.delivered.saturating_sub(was)
            })
            .sum()
    }

    /// Nothing left for the worker: no backlog, nothing unacknowledged, nothing delayed.
    fn settled(&self) -> bool {
        self.worker_subscriptions()
            .all(|(_, s)| s.backlog == 0 && s.unacked == 0 && s.delayed == 0)
    }
}

/// One topic of a run: its role, its name, and whether the worker publishes to it.
pub(super) struct RunTopic {
    role: &'static str,
    name: String,
    worker_writes: bool,
}

/// The topics a worker reads and writes, in the order of the breakdown.
pub(super) fn run_topics(topics: &WorkerTopics) -> Vec<RunTopic> {
    let topic = |role, name: &String, worker_writes| RunTopic {
        role,
        name: name.clone(),
        worker_writes,
    };
    vec![
        topic("requests", &topics.request, false),
        topic("callbacks", &topics.callback, false),
        topic("results", &topics.result, true),
        topic("deadlines", &topics.deadline, true),
        topic("done", &topics.done, true),
        topic("dead letters", &topics.dead_letter, true),
    ]
}

/// Whether `listed` (a topic of the namespace's list) is `topic` or one of its partitions.
fn is_topic_or_partition(listed: &str, topic: &str) -> bool {
    listed == topic
        || listed
            .strip_prefix(topic)
            .and_then(|rest| rest.strip_prefix("-partition-"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A run's per-topic counts: (role, published by the worker, delivered to its subscriptions).
pub(super) struct Breakdown {
    pub(super) rows: Vec<(&'static str, u64, u64)>,
    pub(super) published: u64,
    pub(super) delivered: u64,
}

pub(super) fn breakdown(
    topics: &[RunTopic],
    before: &[TopicStats],
    after: &[TopicStats],
) -> Breakdown {
    let mut rows = Vec::new();
    let (mut published, mut delivered) = (0, 0);
    for ((t, b), a) in topics.iter().zip(before).zip(after) {
        let p = if t.worker_writes {
            a.published.saturating_sub(b.published)
        } else {
            0
        };
        let d = a.delivered_since(b);
        published += p;
        delivered += d;
        rows.push((t.role, p, d));
    }
    Breakdown {
        rows,
        published,
        delivered,
    }
}

impl Bench {
    pub(super) async fn messages(&mut self) -> Result<()> {
        let mut failed = Vec::new();
        for mode in self.opts.message_ingress.clone() {
            if let Err(e) = self.messages_run(mode).await {
                let row = format!("broker messages per job, ingress {}", mode.name());
                self.row(
                    "failure",
                    row,
                    format!("FAILED: {e:#}"),
                    self.messages_command(mode),
                );
                failed.push(mode.name());
            }
            self.extra_worker_env.clear();
        }
        if !failed.is_empty() {
            bail!("messages runs failed: {}", failed.join(", "));
        }
        Ok(())
    }

    fn messages_command(&self, mode: Ingress) -> String {
        self.command(&format!(
            "--only messages --message-ingress {} --message-jobs {}",
            mode.name(),
            self.opts.message_jobs
        ))
    }

    async fn messages_run(&mut self, mode: Ingress) -> Result<()> {
        let n = self.opts.message_jobs.max(1);
        let job_timeout = Duration::from_secs(self.opts.message_job_timeout_secs.max(1));
        let topics = self.worker_topics(None);
        eprintln!(
            "broker messages per job, ingress {}: {n} jobs, worker.job_timeout {}s, CI job duration {JOB_DURATION_MS} ms",
            mode.name(),
            job_timeout.as_secs()
        );
        let (mut emulator, port) = self.messages_emulator(mode, &topics).await?;
        self.extra_worker_env.insert(
            "CI_WORKER__WORKER__JOB_TIMEOUT".into(),
            format!("{}s", job_timeout.as_secs()),
        );
        let run_topics = run_topics(&topics);
        let follower = io::follow(&self.client, &topics.result).await?;
        let mut procs = self.start_workers(
            Kind::Worker,
            1,
            &format!("messages-{}", mode.name()),
            &topics,
            Some(port),
            None,
        )?;
        let mut worker = procs.remove(0);
        procs::wait_ready(&mut worker, Duration::from_secs(60)).await?;
        // Let the consumers settle on their subscriptions before the counters are read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = self.all_stats(&run_topics).await?;

        let target = n as usize;
        let mut finals = HashSet::new();
        let collector = tokio::spawn(io::collect(
            follower,
            Duration::from_secs(120 + n / 10),
            false,
            move |s: &Seen| {
                if s.state.as_deref().is_some_and(|st| st != "submitted") {
                    finals.insert(s.key.clone().unwrap_or_default());
                }
                finals.len() >= target
            },
        ));
        let run = format!("{}-msg-{}", self.id, short());
        let bucket = events::bucket_for(&run);
        let burst = io::publish_all(&self.client, &topics.request, n, |i| {
            (
                events::request_in(&bucket, &run, i, format_of(i), false),
                Some(events::request_id(&run, i)),
            )
        })
        .await?;
        let seen = watch(collector, &mut [&mut worker, &mut emulator]).await?;
        let finals_at = Instant::now();
        let last_submitted = seen
            .iter()
            .filter(|s| s.state.as_deref() == Some("submitted"))
            .map(|s| s.received)
            .max()
            .unwrap_or(finals_at);
        let not_succeeded = seen
            .iter()
            .filter(|s| {
                s.state
                    .as_deref()
                    .is_some_and(|st| st != "submitted" && st != "succeeded")
            })
            .count();
        eprintln!(
            "  burst published in {:.1} s; {n} final results after {:.1} s more; waiting for the deadlines",
            burst.as_secs_f64(),
            finals_at.duration_since(last_submitted).as_secs_f64().max(0.0)
        );

        // Every deadline due (job_timeout after the last submission, a second's margin for the broker's
        // delayed-delivery tick), then nothing left on any of the worker's subscriptions, twice in a row.
        let due = last_submitted + job_timeout + Duration::from_secs(1);
        let after = self
            .settled_stats(&run_topics, due, &mut [&mut worker, &mut emulator])
            .await?;
        let settled_secs = finals_at.elapsed().as_secs_f64();
        worker.stop().await;
        emulator.stop().await;

        let b = breakdown(&run_topics, &before, &after);
        let per_job = (b.published + b.delivered) as f64 / n as f64;
        let cmd = self.messages_command(mode);
        let label = mode.describe();
        let mut table = format!(
            "\n  broker messages, ingress {} ({n} jobs):\n  | topic | published by the worker | delivered to the worker |\n  | --- | --- | --- |\n",
            mode.name()
        );
        for (role, p, d) in &b.rows {
            let _ = writeln!(table, "  | {role} | {p} | {d} |");
        }
        let _ = writeln!(
            table,
            "  | total | {} | {} |\n  per job: {per_job:.2} (floor {})",
            b.published,
            b.delivered,
            mode.floor()
        );
        eprint!("{table}");
        self.row(
            "messages",
            format!(
                "broker messages per job, {label} ({n} jobs, every deadline due and settled; floor {})",
                mode.floor()
            ),
            format!(
                "{per_job:.2} ({} published + {} delivered)",
                b.published, b.delivered
            ),
            cmd.clone(),
        );
        for (role, p, d) in &b.rows {
            self.row(
                "messages",
                format!("  {role} topic ({label}): published by / delivered to the worker"),
                format!("{p} / {d}"),
                cmd.clone(),
            );
        }
        self.note(format!(
            "messages, ingress {}: settled {settled_secs:.1} s after the last final result (worker.job_timeout {} s)",
            mode.name(),
            job_timeout.as_secs()
        ));
        if not_succeeded > 0 {
            self.note(format!(
                "messages, ingress {}: {not_succeeded} final results other than `succeeded` (see the logs)",
                mode.name()
            ));
        }
        Ok(())
    }

    /// An emulator for this section: jobs of [`JOB_DURATION_MS`], events on the callback topic, into
    /// the CMQ queue the worker's `ci.mq_name` names, POSTed to the worker's `http` ingress, or into
    /// a fresh Kafka topic the worker's `ci.kafka_topic` names (and the worker's settings to match).
    async fn messages_emulator(
        &mut self,
        mode: Ingress,
        topics: &WorkerTopics,
    ) -> Result<(Proc, u16)> {
        match mode {
            Ingress::Pulsar => self.start_emulator(0, JOB_DURATION_MS).await,
            Ingress::Cmq => {
                let cmq_port = procs::free_port()?;
                let extra = [
                    ("CI_WORKER__EMULATOR__TDMQ_DELIVERY", "cmq".to_string()),
                    (
                        "CI_WORKER__EMULATOR__CMQ_LISTEN",
                        format!("127.0.0.1:{cmq_port}"),
                    ),
                    ("CI_WORKER__EMULATOR__CMQ_QUEUES", topics.mq_name.clone()),
                ];
                let started = self.start_emulator_with(0, JOB_DURATION_MS, &extra).await?;
                self.cmq_worker_env(&format!("http://127.0.0.1:{cmq_port}"), &topics.mq_name, 2);
                Ok(started)
            }
            Ingress::Http => {
                // The worker's port is chosen here: the jobs carry its address for CI's POSTs.
                let port = procs::free_port()?;
                self.use_ingress(Ingress::Http, None, None);
                for (k, v) in [
                    ("CI_WORKER__HTTP__LISTEN", format!("127.0.0.1:{port}")),
                    ("CI_WORKER__CI__CALLBACK_TYPE", "Url".to_string()),
                    (
                        "CI_WORKER__CI__CALLBACK_URL",
                        format!("http://127.0.0.1:{port}/ci/callback/{CALLBACK_TOKEN}"),
                    ),
                ] {
                    self.extra_worker_env.insert(k.into(), v);
                }
                self.start_emulator(0, JOB_DURATION_MS).await
            }
            Ingress::Kafka => {
                let topic = self.new_kafka_topic("messages").await?;
                self.use_ingress(Ingress::Kafka, Some(&topic), None);
                let extra = [(
                    "CI_WORKER__EMULATOR__KAFKA_BROKERS",
                    self.opts.kafka_brokers.clone(),
                )];
                self.start_emulator_with(0, JOB_DURATION_MS, &extra).await
            }
        }
    }

    /// The stats of every topic of a run, in order, read namespace-wide: every topic of
    /// `--namespace` the broker lists that is one of them or one of their partitions, partitions
    /// summed.
    pub(super) async fn all_stats(&self, topics: &[RunTopic]) -> Result<Vec<TopicStats>> {
        let http = reqwest::Client::new();
        let token = self.settings.pulsar.token.expose();
        let listed =
            io::namespace_topics(&http, &self.opts.admin_url, token, &self.opts.namespace).await?;
        let mut out = Vec::with_capacity(topics.len());
        for t in topics {
            let mut sum = TopicStats::default();
            for name in listed.iter().filter(|l| is_topic_or_partition(l, &t.name)) {
                sum.absorb(topic_stats(&http, &self.opts.admin_url, token, name).await?);
            }
            out.push(sum);
        }
        Ok(out)
    }

    /// Waits until `due` has passed (every deadline come due) and then until nothing is left on any
    /// of the worker's subscriptions on `topics` (no backlog, nothing unacknowledged or delayed),
    /// the counters unchanged between two polls; fails if one of `procs` exits or 60 s after `due`.
    /// Returns the stats then.
    pub(super) async fn settled_stats(
        &self,
        topics: &[RunTopic],
        due: Instant,
        procs: &mut [&mut Proc],
    ) -> Result<Vec<TopicStats>> {
        let limit = due + Duration::from_secs(60);
        let mut previous: Option<Vec<TopicStats>> = None;
        loop {
            tokio::time::sleep(POLL).await;
            for p in procs.iter_mut() {
                p.check_alive()?;
            }
            let now = self.all_stats(topics).await?;
            let stable = previous.as_ref() == Some(&now);
            if Instant::now() >= due && stable && now.iter().all(TopicStats::settled) {
                return Ok(now);
            }
            if Instant::now() > limit {
                let open: Vec<String> = topics
                    .iter()
                    .zip(&now)
                    .filter(|(_, s)| !s.settled())
                    .map(|(t, s)| format!("{}: {:?}", t.role, s.subscriptions))
                    .collect();
                bail!(
                    "the worker's subscriptions did not settle within 60 s of the last deadline ({})",
                    open.join("; ")
                );
            }
            previous = Some(now);
        }
    }
}

/// `GET /admin/v2/persistent/{tenant}/{ns}/{topic}/stats`; zeros for a topic the broker does not know.
async fn topic_stats(
    http: &reqwest::Client,
    admin_url: &str,
    token: &str,
    topic: &str,
) -> Result<TopicStats> {
    let req = io::admin_topic_request(
        http,
        reqwest::Method::GET,
        admin_url,
        token,
        topic,
        "/stats",
    )
    .with_context(|| format!("{topic} is not a persistent topic"))?;
    let resp = req
        .send()
        .await
        .with_context(|| format!("reading the stats of {topic}"))?;
    if resp.status().as_u16() == 404 {
        return Ok(TopicStats::default());
    }
    if !resp.status().is_success() {
        bail!("the stats of {topic}: HTTP {}", resp.status());
    }
    let text = resp
        .text()
        .await
        .with_context(|| format!("the stats of {topic}"))?;
    let body: Value =
        serde_json::from_str(&text).with_context(|| format!("the stats of {topic}: {text}"))?;
    Ok(TopicStats::parse(&body))
}

/// Waits for `collector`, failing if one of `procs` exits first.
pub(super) async fn watch(
    collector: tokio::task::JoinHandle<Result<Vec<Seen>>>,
    procs: &mut [&mut Proc],
) -> Result<Vec<Seen>> {
    tokio::pin!(collector);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = &mut collector => return joined.context("collector task")?,
            _ = tick.tick() => {
                for p in procs.iter_mut() {
                    p.check_alive()?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stats(published: u64, subs: &[(&str, u64, u64)]) -> TopicStats {
        TopicStats::parse(&json!({
            "msgInCounter": published,
            "subscriptions": subs.iter().map(|(name, out, backlog)| {
                (name.to_string(), json!({
                    "msgOutCounter": out, "msgBacklog": backlog, "unackedMessages": 0, "msgDelayed": 0
                }))
            }).collect::<serde_json::Map<_, _>>()
        }))
    }

    #[test]
    fn counts_the_workers_subscriptions_and_writes_only() {
        let topics = [
            RunTopic {
                role: "requests",
                name: "r".into(),
                worker_writes: false,
            },
            RunTopic {
                role: "results",
                name: "x".into(),
                worker_writes: true,
            },
            RunTopic {
                role: "done",
                name: "d".into(),
                worker_writes: true,
            },
        ];
        let before = [
            stats(0, &[("w", 0, 0)]),
            stats(3, &[]),
            TopicStats::default(),
        ];
        let after = [
            stats(1000, &[("w", 1000, 0)]),
            stats(2003, &[("ci-worker-bench-1234", 2003, 0)]),
            // A non-durable subscription that appeared during the run.
            stats(40, &[("reader-abc", 40, 0)]),
        ];
        let b = breakdown(&topics, &before, &after);
        assert_eq!(
            b.rows,
            [
                ("requests", 0, 1000),
                ("results", 2000, 0),
                ("done", 40, 40)
            ]
        );
        assert_eq!((b.published, b.delivered), (2040, 1040));
        assert!(after.iter().all(TopicStats::settled));
        assert!(!stats(0, &[("w", 1, 1)]).settled());
        assert!(stats(0, &[("ci-worker-bench-x", 1, 1)]).settled());
        assert_eq!(TopicStats::parse(&Value::Null), TopicStats::default());
    }

    #[test]
    fn partitions_are_summed_subscription_by_subscription() {
        let t = "persistent://public/default/bench-x-requests-1";
        assert!(is_topic_or_partition(t, t));
        assert!(is_topic_or_partition(&format!("{t}-partition-3"), t));
        assert!(!is_topic_or_partition(&format!("{t}-partition-"), t));
        assert!(!is_topic_or_partition(&format!("{t}-sub-DLQ"), t));
        assert!(!is_topic_or_partition(&format!("{t}0"), t));
        let mut sum = stats(10, &[("w", 10, 1)]);
        sum.absorb(stats(5, &[("w", 4, 0), ("reader", 3, 0)]));
        assert_eq!(sum, stats(15, &[("w", 14, 1), ("reader", 3, 0)]));
    }
}
