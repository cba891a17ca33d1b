//! The `cost` and `soak` sections: what a job costs the broker at steady request rates with several
//! replicas, and what a long run with replicas killed now and then leaves behind.
//!
//! Both run the same stage: fresh topics (`--cost-partitions` N > 0, 8 by default, makes the
//! request, callback and result topics partitioned; the deadline topic never is), an emulator answering every CI
//! call after `--cost-ci-latency-ms` and finishing jobs after
//! [`JOB_DURATION_MS`](super::messages::JOB_DURATION_MS), events on the Pulsar callback topic,
//! R replicas of `ci-worker run` on the same subscriptions with `worker.job_timeout =
//! --cost-job-timeout-secs` (short, so every job's deadline comes due within the run), and the
//! benchmark's own consumer on the result topic, subscribed before anything is published there. The
//! first request goes out [`START_QUIET`] after every replica is on the request subscription, so that
//! the replicas' start-up list calls are not counted as the requests'.
//! Requests are published at a steady rate by the benchmark's client, one at a time on a timer
//! ([`io::publish_paced`]: nothing pre-published, no receipt waited for before the next send); the
//! rate it achieved is reported beside the one asked for.
//!
//! `cost`: one cell per `--cost-rates` × `--cost-replicas`, each publishing for
//! `--cost-duration-secs`. Once every request has a final result and every deadline has come due
//! and been settled (the messages section's wait), per cell:
//! - broker messages per job by topic (request, callback, result, deadline, done, dead-letter): what
//!   the workers published + what was delivered to their subscriptions, from the broker's topic stats
//!   read namespace-wide before the first request and after the settling, partitions summed (see
//!   [`super::messages`] for what is counted);
//! - CI calls per 1,000 requests by kind (the emulator's `GET /_emulator/calls`);
//! - whether every request ended with exactly one final result, from the benchmark's consumer:
//!   requests without one, requests with more than one.
//!
//! `soak`: `--soak-replicas` replicas, `--soak-rate` requests/s for `--soak-duration-secs`, one
//! replica (each in turn) SIGKILLed every `--soak-kill-every-secs` and restarted at once. Reported:
//! requests published, `POST /jobs` CI received, CI jobs per request (CI's list API by the marker
//! in `UserData`, read after the call counts), requests with a second final result (each extra final
//! attributed to the last kill before it was published), requests without a final, and at each kill
//! the killed replica's `ci_worker_in_flight` (requests and events it was processing) and the jobs
//! open fleet-wide (a first outcome, no final result yet).

use super::io;
use super::messages::{breakdown, run_topics, RunTopic, TopicStats, JOB_DURATION_MS};
use super::procs::Proc;
use super::scaleout::{emulator_calls, follow_results, wait_consumers, Calls, Outcome, Progress};
use super::{events, format_of, now_ms, short, Bench, CostOptions, Kind, WorkerTopics};
use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Between two looks at a run's progress.
const TICK: Duration = Duration::from_millis(100);
/// The publisher fell short of the rate asked for when it achieved less than this share of it.
const SUSTAINED: f64 = 0.95;
/// From every replica's consumer on the request subscription to the first request: the consumers
/// settle on their partitions (Failover moves a partition 1 s after a consumer joins) before anything
/// is counted.
const START_QUIET: Duration = Duration::from_secs(3);

/// One topic's share of a cell, per job.
#[derive(Debug, Clone, serde::Serialize)]
struct TopicCost {
    topic: &'static str,
    published: u64,
    delivered: u64,
    per_job: f64,
}

/// Final results of a run, as the benchmark's consumer saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
struct Finals {
    /// Requests with no final result.
    missing: usize,
    /// Requests with more than one final result.
    repeated: usize,
    /// Final results beyond one per request.
    extra: usize,
    /// Final results other than `succeeded`.
    not_succeeded: usize,
}

impl Finals {
    fn exactly_one(&self) -> bool {
        self.missing == 0 && self.extra == 0
    }

    fn describe(&self) -> String {
        let mut s = if self.exactly_one() {
            "exactly one final each".to_string()
        } else {
            format!(
                "{} without a final, {} with more than one ({} extra)",
                self.missing, self.repeated, self.extra
            )
        };
        if self.not_succeeded > 0 {
            let _ = write!(s, "; {} not `succeeded`", self.not_succeeded);
        }
        s
    }
}

/// The final results per request of run `run` (keys `bench-{run}-…`), in order of publication.
fn finals_by_request<'a>(outcomes: &'a [Outcome], run: &str) -> HashMap<&'a str, Vec<&'a Outcome>> {
    let prefix = format!("bench-{run}-");
    let mut by: HashMap<&str, Vec<&Outcome>> = HashMap::new();
    for o in outcomes {
        if o.state != "submitted" && o.key.starts_with(&prefix) {
            by.entry(o.key.as_str()).or_default().push(o);
        }
    }
    for v in by.values_mut() {
        v.sort_by_key(|o| o.publish_ms);
    }
    by
}

fn count_finals(by: &HashMap<&str, Vec<&Outcome>>, requests: u64) -> Finals {
    Finals {
        missing: (requests as usize).saturating_sub(by.len()),
        repeated: by.values().filter(|v| v.len() > 1).count(),
        extra: by.values().map(|v| v.len().saturating_sub(1)).sum(),
        not_succeeded: by
            .values()
            .flatten()
            .filter(|o| o.state != "succeeded")
            .count(),
    }
}

/// How many of `extra_ms` (when extra finals were published) came after each kill and before the
/// next (index k + 1 for kill k), or before the first kill (index 0).
fn attribute(extra_ms: &[u64], kill_ms: &[u64]) -> Vec<usize> {
    let mut out = vec![0; kill_ms.len() + 1];
    for &t in extra_ms {
        out[kill_ms.iter().filter(|&&k| k <= t).count()] += 1;
    }
    out
}

/// CI calls per 1,000 requests.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct CallsPer1000 {
    submit: f64,
    describe: f64,
    list: f64,
    cancel: f64,
}

impl CallsPer1000 {
    fn of(c: Calls, requests: u64) -> CallsPer1000 {
        let per = |v: u64| v as f64 * 1000.0 / requests.max(1) as f64;
        CallsPer1000 {
            submit: per(c.submit),
            describe: per(c.describe),
            list: per(c.list),
            cancel: per(c.cancel),
        }
    }
}

/// One cell of the cost matrix.
#[derive(Debug, Clone, serde::Serialize)]
struct Cell {
    rate: u64,
    replicas: usize,
    requests: u64,
    achieved_rate: f64,
    max_publish_lag_ms: f64,
    /// From the last request published to every request with a final result.
    drain_secs: f64,
    per_job: f64,
    topics: Vec<TopicCost>,
    calls_per_1000: Option<CallsPer1000>,
    finals: Finals,
}

/// One kill of the soak.
#[derive(Debug, Clone, serde::Serialize)]
struct Kill {
    at_secs: f64,
    #[serde(skip)]
    at_ms: u64,
    replica: String,
    published: u64,
    /// The killed replica's `ci_worker_in_flight` just before the kill.
    in_flight: Option<f64>,
    /// Requests with a first outcome and no final result yet, fleet-wide.
    open_jobs: usize,
    /// Requests whose first final result was published in the job timeout before the kill: their
    /// deadlines were still to come due.
    finished_before: usize,
    /// Extra final results published after this kill and before the next.
    extra_finals_after: usize,
}

/// The soak's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct Soak {
    rate: u64,
    replicas: usize,
    duration_secs: u64,
    kill_every_secs: u64,
    requests: u64,
    achieved_rate: f64,
    submit_calls: Option<u64>,
    calls_per_1000: Option<CallsPer1000>,
    ci_jobs: usize,
    requests_with_job: usize,
    requests_with_more_jobs: usize,
    extra_jobs: usize,
    finals: Finals,
    extra_finals_before_first_kill: usize,
    kills: Vec<Kill>,
}

/// The processes and consumers of one run.
struct Stage {
    topics: WorkerTopics,
    run_topics: Vec<RunTopic>,
    emulator: Proc,
    port: u16,
    replicas: Vec<Proc>,
    progress: Arc<Progress>,
    stop_results: tokio::sync::oneshot::Sender<()>,
    results: tokio::task::JoinHandle<Result<Vec<Outcome>>>,
    /// Request ids and bucket of this run alone.
    run: String,
    bucket: String,
    label: String,
    generation: usize,
}

impl Stage {
    fn check_alive(&mut self) -> Result<()> {
        self.emulator.check_alive()?;
        for p in &mut self.replicas {
            p.check_alive()?;
        }
        Ok(())
    }

    /// Stops every process and the result consumer; what the consumer saw.
    async fn finish(self) -> Result<Vec<Outcome>> {
        for p in self.replicas {
            p.stop().await;
        }
        self.emulator.stop().await;
        let _ = self.stop_results.send(());
        self.results.await.context("result consumer")?
    }
}

impl Bench {
    pub(super) async fn cost(&mut self) -> Result<()> {
        let o = self.opts.cost.clone();
        let mut cells = Vec::new();
        let mut failed = Vec::new();
        for &rate in &o.cost_rates {
            for &replicas in &o.cost_replicas {
                let outcome = self.cost_cell(rate.max(1), replicas.max(1)).await;
                match outcome {
                    Ok(cell) => {
                        self.cost_row(&cell);
                        cells.push(cell);
                    }
                    Err(e) => {
                        self.row(
                            "failure",
                            format!("cost, {rate} requests/s, {replicas} replicas"),
                            format!("FAILED: {e:#}"),
                            self.cost_command(rate, replicas),
                        );
                        failed.push(format!("{rate}/s×{replicas}"));
                    }
                }
            }
        }
        self.extra_worker_env.clear();
        if !cells.is_empty() {
            // On stdout, so that the matrix is in `last.md` beside the table of figures.
            print!("{}", cost_table(&cells, &o));
        }
        self.extra_json.insert(
            "cost".into(),
            serde_json::to_value(&cells).unwrap_or(Value::Null),
        );
        if !failed.is_empty() {
            bail!("cost cells failed: {}", failed.join(", "));
        }
        Ok(())
    }

    fn cost_command(&self, rate: u64, replicas: usize) -> String {
        let o = &self.opts.cost;
        let mut cmd = format!(
            "--only cost --cost-rates {rate} --cost-replicas {replicas} --cost-duration-secs {}",
            o.cost_duration_secs
        );
        if o.cost_partitions > 0 {
            let _ = write!(cmd, " --cost-partitions {}", o.cost_partitions);
        }
        self.command(&cmd)
    }

    /// Topics, emulator, result consumer and `replicas` workers, every replica's consumer on the
    /// request subscription.
    async fn stage(&mut self, label: &str, replicas: usize) -> Result<Stage> {
        let o = self.opts.cost.clone();
        let topics = self.worker_topics(None);
        if o.cost_partitions > 0 {
            for t in [&topics.request, &topics.callback, &topics.result] {
                self.create_partitioned(t, o.cost_partitions).await?;
            }
        }
        let (emulator, port) = self
            .start_emulator(o.cost_ci_latency_ms, JOB_DURATION_MS)
            .await?;
        self.extra_worker_env.insert(
            "CI_WORKER__WORKER__JOB_TIMEOUT".into(),
            format!("{}s", o.cost_job_timeout_secs.max(1)),
        );
        let follower = io::follow(&self.client, &topics.result).await?;
        let progress = Arc::new(Progress::default());
        let (stop_results, stop_rx) = tokio::sync::oneshot::channel();
        let results = tokio::spawn(follow_results(follower, progress.clone(), stop_rx));
        let mut live = self.start_workers(
            Kind::Worker,
            replicas,
            &format!("{label}-gen0"),
            &topics,
            Some(port),
            None,
        )?;
        wait_consumers(
            &self.opts.admin_url,
            self.settings.pulsar.token.expose(),
            &topics.request,
            o.cost_partitions > 0,
            &topics.subscription,
            replicas,
            &mut live,
        )
        .await?;
        // Past the replicas' start-up, and the consumers settled on their subscriptions before the
        // counters are read.
        tokio::time::sleep(START_QUIET).await;
        let run = format!("{}-{label}-{}", self.id, short());
        Ok(Stage {
            run_topics: run_topics(&topics),
            topics,
            emulator,
            port,
            replicas: live,
            progress,
            stop_results,
            results,
            bucket: events::bucket_for(&run),
            run,
            label: label.to_string(),
            generation: 0,
        })
    }

    /// The paced publisher of a stage's requests, in a task of its own.
    fn publisher(
        &self,
        stage: &Stage,
        rate: u64,
        n: u64,
        published: Arc<AtomicU64>,
    ) -> tokio::task::JoinHandle<Result<io::Paced>> {
        let client = self.client.clone();
        let topic = stage.topics.request.clone();
        let (bucket, run) = (stage.bucket.clone(), stage.run.clone());
        tokio::spawn(async move {
            io::publish_paced(&client, &topic, rate as f64, n, &published, |i| {
                (
                    events::request_in(&bucket, &run, i, format_of(i), false),
                    Some(events::request_id(&run, i)),
                )
            })
            .await
        })
    }

    /// Waits until `n` requests have a final result (or a bound passes: the requests without one
    /// are then what the run reports), then until every deadline has come due and been settled.
    /// Returns when the finals were in and the settled stats.
    async fn drain(&self, stage: &mut Stage, n: u64) -> Result<(Instant, Vec<TopicStats>)> {
        let limit = Instant::now() + Duration::from_secs(120 + n / 50);
        while (stage.progress.finals.load(Ordering::Relaxed) as u64) < n {
            if Instant::now() > limit {
                eprintln!(
                    "  {}: {} of {n} requests with a final result after waiting; going on",
                    stage.label,
                    stage.progress.finals.load(Ordering::Relaxed)
                );
                break;
            }
            stage.check_alive()?;
            tokio::time::sleep(TICK).await;
        }
        let finals_at = Instant::now();
        // Every deadline is due a job timeout after its submission, which came before the final.
        let due = finals_at
            + Duration::from_secs(self.opts.cost.cost_job_timeout_secs.max(1))
            + Duration::from_secs(1);
        let mut procs: Vec<&mut Proc> = stage.replicas.iter_mut().collect();
        procs.push(&mut stage.emulator);
        let after = self
            .settled_stats(&stage.run_topics, due, &mut procs)
            .await?;
        Ok((finals_at, after))
    }

    async fn cost_cell(&mut self, rate: u64, replicas: usize) -> Result<Cell> {
        let o = self.opts.cost.clone();
        let n = rate * o.cost_duration_secs.max(1);
        eprintln!(
            "cost: {rate} requests/s for {} s ({n} requests), {replicas} replicas, CI latency {} ms, job duration {JOB_DURATION_MS} ms, worker.job_timeout {} s",
            o.cost_duration_secs, o.cost_ci_latency_ms, o.cost_job_timeout_secs
        );
        let mut stage = self
            .stage(&format!("cost-{rate}x{replicas}"), replicas)
            .await?;
        let before = self.all_stats(&stage.run_topics).await?;
        let calls_before = emulator_calls(stage.port).await;

        let publisher = self.publisher(&stage, rate, n, Arc::new(AtomicU64::new(0)));
        tokio::pin!(publisher);
        let paced = loop {
            tokio::select! {
                done = &mut publisher => break done.context("publisher task")??,
                _ = tokio::time::sleep(TICK) => stage.check_alive()?,
            }
        };
        let published_at = Instant::now();
        let (finals_at, after) = self.drain(&mut stage, n).await?;
        let calls_after = emulator_calls(stage.port).await;
        let run = stage.run.clone();
        let run_topics = std::mem::take(&mut stage.run_topics);
        let outcomes = stage.finish().await?;

        let finals = count_finals(&finals_by_request(&outcomes, &run), n);
        let b = breakdown(&run_topics, &before, &after);
        let jobs = n.max(1) as f64;
        Ok(Cell {
            rate,
            replicas,
            requests: n,
            achieved_rate: paced.rate(),
            max_publish_lag_ms: paced.max_lag.as_secs_f64() * 1000.0,
            drain_secs: finals_at.duration_since(published_at).as_secs_f64(),
            per_job: (b.published + b.delivered) as f64 / jobs,
            topics: b
                .rows
                .iter()
                .map(|&(topic, published, delivered)| TopicCost {
                    topic,
                    published,
                    delivered,
                    per_job: (published + delivered) as f64 / jobs,
                })
                .collect(),
            calls_per_1000: calls_before
                .zip(calls_after)
                .map(|(b, a)| CallsPer1000::of(a.since(b), n)),
            finals,
        })
    }

    fn cost_row(&mut self, c: &Cell) {
        let split = c
            .topics
            .iter()
            .map(|t| format!("{} {:.2}", t.topic, t.per_job))
            .collect::<Vec<_>>()
            .join(", ");
        let calls = c
            .calls_per_1000
            .map(|k| {
                format!(
                    "list {:.1}, describe {:.0}, submit {:.0} per 1,000 requests",
                    k.list, k.describe, k.submit
                )
            })
            .unwrap_or_else(|| "CI calls n/a".into());
        let sustained = if c.achieved_rate < SUSTAINED * c.rate as f64 {
            " — NOT sustained"
        } else {
            ""
        };
        self.row(
            "broker cost",
            format!(
                "broker messages per job, steady {}/s, {} replicas ({} requests; publisher achieved {:.0}/s{sustained})",
                c.rate, c.replicas, c.requests, c.achieved_rate
            ),
            format!(
                "**{:.2}** ({split}); {calls}; {}",
                c.per_job,
                c.finals.describe()
            ),
            self.cost_command(c.rate, c.replicas),
        );
        if !sustained.is_empty() {
            self.note(format!(
                "cost {}/s × {}: the publisher achieved {:.0} requests/s (worst lag behind schedule {:.0} ms)",
                c.rate, c.replicas, c.achieved_rate, c.max_publish_lag_ms
            ));
        }
    }
}

impl Bench {
    pub(super) async fn soak(&mut self) -> Result<()> {
        let outcome = self.soak_run().await;
        self.extra_worker_env.clear();
        let soak = outcome?;
        self.soak_rows(&soak);
        self.extra_json.insert(
            "soak".into(),
            serde_json::to_value(&soak).unwrap_or(Value::Null),
        );
        Ok(())
    }

    fn soak_command(&self) -> String {
        let o = &self.opts.cost;
        self.command(&format!(
            "--only soak --soak-rate {} --soak-replicas {} --soak-duration-secs {} --soak-kill-every-secs {}",
            o.soak_rate, o.soak_replicas, o.soak_duration_secs, o.soak_kill_every_secs
        ))
    }

    async fn soak_run(&mut self) -> Result<Soak> {
        let o = self.opts.cost.clone();
        let rate = o.soak_rate.max(1);
        let replicas = o.soak_replicas.max(1);
        let n = rate * o.soak_duration_secs.max(1);
        eprintln!(
            "soak: {rate} requests/s for {} s ({n} requests), {replicas} replicas, a SIGKILL every {} s, CI latency {} ms, job duration {JOB_DURATION_MS} ms, worker.job_timeout {} s",
            o.soak_duration_secs, o.soak_kill_every_secs, o.cost_ci_latency_ms, o.cost_job_timeout_secs
        );
        let mut stage = self.stage("soak", replicas).await?;
        let calls_before = emulator_calls(stage.port).await;
        let published = Arc::new(AtomicU64::new(0));
        let publisher = self.publisher(&stage, rate, n, published.clone());
        tokio::pin!(publisher);
        let started = Instant::now();
        let every = Duration::from_secs(o.soak_kill_every_secs);
        let end = Duration::from_secs(o.soak_duration_secs.max(1));
        let mut next_kill = every;
        let mut kills: Vec<Kill> = Vec::new();
        let paced = loop {
            tokio::select! {
                done = &mut publisher => break done.context("publisher task")??,
                _ = tokio::time::sleep(TICK) => {}
            }
            stage.check_alive()?;
            if every.is_zero() || started.elapsed() < next_kill || next_kill >= end {
                continue;
            }
            next_kill += every;
            let kill = self
                .kill_one(&mut stage, kills.len(), &published, started)
                .await?;
            eprintln!(
                "  SIGKILL {} at {:.0} s ({} published; in flight in it: {}; jobs open: {})",
                kill.replica,
                kill.at_secs,
                kill.published,
                kill.in_flight
                    .map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}")),
                kill.open_jobs
            );
            kills.push(kill);
        };
        self.drain(&mut stage, n).await?;
        let calls_after = emulator_calls(stage.port).await;
        // Listed after the call counts were read: the list calls are the benchmark's own.
        let jobs = self.jobs_per_request(stage.port, &stage.bucket).await?;
        let run = stage.run.clone();
        let outcomes = stage.finish().await?;

        let by = finals_by_request(&outcomes, &run);
        let finals = count_finals(&by, n);
        let extra_ms: Vec<u64> = by
            .values()
            .flat_map(|v| v.iter().skip(1).map(|o| o.publish_ms))
            .collect();
        let kill_ms: Vec<u64> = kills.iter().map(|k| k.at_ms).collect();
        let per_kill = attribute(&extra_ms, &kill_ms);
        let first_ms: Vec<u64> = by.values().map(|v| v[0].publish_ms).collect();
        let timeout_ms = o.cost_job_timeout_secs.max(1) * 1000;
        for (k, count) in kills.iter_mut().zip(&per_kill[1..]) {
            k.extra_finals_after = *count;
            k.finished_before = first_ms
                .iter()
                .filter(|&&t| t <= k.at_ms && t + timeout_ms > k.at_ms)
                .count();
        }
        let calls = calls_before.zip(calls_after).map(|(b, a)| a.since(b));
        let ci_jobs: usize = jobs.values().sum();
        Ok(Soak {
            rate,
            replicas,
            duration_secs: o.soak_duration_secs,
            kill_every_secs: o.soak_kill_every_secs,
            requests: n,
            achieved_rate: paced.rate(),
            submit_calls: calls.map(|c| c.submit),
            calls_per_1000: calls.map(|c| CallsPer1000::of(c, n)),
            ci_jobs,
            requests_with_job: jobs.len(),
            requests_with_more_jobs: jobs.values().filter(|&&j| j > 1).count(),
            extra_jobs: ci_jobs - jobs.len(),
            finals,
            extra_finals_before_first_kill: per_kill[0],
            kills,
        })
    }

    /// SIGKILLs replica `k % replicas` and starts its replacement at once (as a Deployment would,
    /// less the pod's scheduling); what was in flight then.
    async fn kill_one(
        &mut self,
        stage: &mut Stage,
        k: usize,
        published: &AtomicU64,
        started: Instant,
    ) -> Result<Kill> {
        let i = k % stage.replicas.len();
        let in_flight = match stage.replicas[i].http_port {
            Some(port) => in_flight_of(port).await,
            None => None,
        };
        let progress = &stage.progress;
        let open_jobs = progress
            .outcomes
            .load(Ordering::Relaxed)
            .saturating_sub(progress.finals.load(Ordering::Relaxed));
        let at_ms = now_ms();
        let at_secs = started.elapsed().as_secs_f64();
        let published = published.load(Ordering::Relaxed);
        let mut old = stage.replicas.remove(i);
        let _ = old.child.start_kill();
        let _ = old.child.wait().await;
        stage.generation += 1;
        let new = self.start_workers(
            Kind::Worker,
            1,
            &format!("{}-gen{}", stage.label, stage.generation),
            &stage.topics,
            Some(stage.port),
            None,
        )?;
        stage
            .replicas
            .insert(i, new.into_iter().next().context("no replacement")?);
        Ok(Kill {
            at_secs,
            at_ms,
            replica: old.name,
            published,
            in_flight,
            open_jobs,
            finished_before: 0,
            extra_finals_after: 0,
        })
    }

    fn soak_rows(&mut self, s: &Soak) {
        let cmd = self.soak_command();
        let sustained = if s.achieved_rate < SUSTAINED * s.rate as f64 {
            " — NOT sustained"
        } else {
            ""
        };
        let head = format!(
            "soak, {} replicas, {}/s for {} s, SIGKILL + restart every {} s ({} kills)",
            s.replicas,
            s.rate,
            s.duration_secs,
            s.kill_every_secs,
            s.kills.len()
        );
        self.row(
            "soak",
            format!("{head}: requests published (publisher achieved {:.0}/s{sustained}) / `POST /jobs` CI received (a call a kill cut short before its job existed counts too)", s.achieved_rate),
            format!(
                "{} / {}",
                s.requests,
                s.submit_calls
                    .map_or_else(|| "n/a".to_string(), |c| c.to_string())
            ),
            cmd.clone(),
        );
        self.row(
            "soak",
            "  CI jobs (CI's list by marker): jobs / requests with a job / extra jobs (requests with more than one)".into(),
            format!(
                "{} / {} / **{}** ({})",
                s.ci_jobs, s.requests_with_job, s.extra_jobs, s.requests_with_more_jobs
            ),
            cmd.clone(),
        );
        self.row(
            "soak",
            "  final results: requests with a second final (extra finals) / requests without a final"
                .into(),
            format!(
                "**{}** ({}) / {}",
                s.finals.repeated, s.finals.extra, s.finals.missing
            ),
            cmd.clone(),
        );
        if let Some(c) = s.calls_per_1000 {
            self.row(
                "soak",
                "  CI calls per 1,000 requests (emulator's /_emulator/calls)".into(),
                format!(
                    "submit {:.1}, describe {:.0}, list {:.1}, cancel {:.1}",
                    c.submit, c.describe, c.list, c.cancel
                ),
                cmd.clone(),
            );
        }
        for (i, k) in s.kills.iter().enumerate() {
            self.row(
                "soak",
                format!(
                    "  kill {} at {:.0} s ({}): in flight in the killed replica (`ci_worker_in_flight`) / jobs open fleet-wide / jobs finished in the job timeout before it (deadlines still to come) / extra finals published after it (before the next kill)",
                    i + 1,
                    k.at_secs,
                    k.replica
                ),
                format!(
                    "{} / {} / {} / {}",
                    k.in_flight
                        .map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}")),
                    k.open_jobs,
                    k.finished_before,
                    k.extra_finals_after
                ),
                cmd.clone(),
            );
        }
        if s.extra_finals_before_first_kill > 0 {
            self.note(format!(
                "soak: {} extra finals before the first kill",
                s.extra_finals_before_first_kill
            ));
        }
        if s.finals.not_succeeded > 0 {
            self.note(format!(
                "soak: {} final results other than `succeeded` (see the logs)",
                s.finals.not_succeeded
            ));
        }
    }
}

/// `ci_worker_in_flight` from a worker's `/metrics`; `None` when it does not answer.
async fn in_flight_of(port: u16) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    gauge(&text, "ci_worker_in_flight")
}

/// The value of an unlabelled metric in Prometheus' text format.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.split_whitespace().next()?.parse().ok())
}

/// The cost matrix: one line per cell, messages per job by topic as published + delivered.
fn cost_table(cells: &[Cell], o: &CostOptions) -> String {
    let mut t = format!(
        "\n## broker cost per job ({} s per cell, CI latency {} ms, job duration {JOB_DURATION_MS} ms, worker.job_timeout {} s{})\n\n",
        o.cost_duration_secs,
        o.cost_ci_latency_ms,
        o.cost_job_timeout_secs,
        if o.cost_partitions > 0 {
            format!(", {} partitions", o.cost_partitions)
        } else {
            String::new()
        }
    );
    let roles: Vec<&str> = cells
        .first()
        .map(|c| c.topics.iter().map(|t| t.topic).collect())
        .unwrap_or_default();
    t.push_str("| rate /s (achieved) | replicas | requests | messages per job |");
    for r in &roles {
        let _ = write!(t, " {r} (pub + del) |");
    }
    t.push_str(" list calls /1,000 | describe /1,000 | finals | drain s |\n|");
    for _ in 0..(roles.len() + 8) {
        t.push_str(" --- |");
    }
    t.push('\n');
    for c in cells {
        let _ = write!(
            t,
            "| {} ({:.0}) | {} | {} | **{:.2}** |",
            c.rate, c.achieved_rate, c.replicas, c.requests, c.per_job
        );
        let jobs = c.requests.max(1) as f64;
        for tc in &c.topics {
            let _ = write!(
                t,
                " {:.2} ({:.2} + {:.2}) |",
                tc.per_job,
                tc.published as f64 / jobs,
                tc.delivered as f64 / jobs
            );
        }
        let (list, describe) = c
            .calls_per_1000
            .map(|k| (format!("{:.1}", k.list), format!("{:.0}", k.describe)))
            .unwrap_or_else(|| ("n/a".into(), "n/a".into()));
        let _ = writeln!(
            t,
            " {list} | {describe} | {} | {:.1} |",
            c.finals.describe(),
            c.drain_secs
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(key: &str, state: &str, publish_ms: u64) -> Outcome {
        Outcome {
            key: key.into(),
            state: state.into(),
            publish_ms,
        }
    }

    #[test]
    fn finals_count_missing_and_repeated_requests_of_the_run_only() {
        let seen = [
            outcome("bench-r-0", "submitted", 1),
            outcome("bench-r-0", "succeeded", 5),
            outcome("bench-r-1", "submitted", 2),
            outcome("bench-r-1", "succeeded", 9),
            outcome("bench-r-1", "succeeded", 7),
            outcome("bench-r-1", "failed", 12),
            outcome("bench-other-3", "succeeded", 3),
        ];
        let by = finals_by_request(&seen, "r");
        assert_eq!(
            by["bench-r-1"]
                .iter()
                .map(|o| o.publish_ms)
                .collect::<Vec<_>>(),
            [7, 9, 12]
        );
        let f = count_finals(&by, 3);
        assert_eq!(
            f,
            Finals {
                missing: 1,
                repeated: 1,
                extra: 2,
                not_succeeded: 1
            }
        );
        assert!(!f.exactly_one());
        assert!(count_finals(&finals_by_request(&seen[..2], "r"), 1).exactly_one());
    }

    #[test]
    fn extra_finals_go_to_the_last_kill_before_them() {
        assert_eq!(attribute(&[5, 10, 11, 30, 31], &[10, 20]), [1, 2, 2]);
        assert_eq!(attribute(&[5], &[]), [1]);
    }

    #[test]
    fn reads_an_unlabelled_gauge() {
        let text = "# TYPE ci_worker_in_flight gauge\nci_worker_in_flight_other 3\nci_worker_in_flight 17\n";
        assert_eq!(gauge(text, "ci_worker_in_flight"), Some(17.0));
        assert_eq!(gauge(text, "ci_worker_missing"), None);
    }
}
