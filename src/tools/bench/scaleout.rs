//! The `scaleout` section: R replicas of `ci-worker run` on the same subscriptions (as a Kubernetes
//! Deployment runs them) while replicas die or are replaced, measured as a user sees it.
//!
//! Per run (one per `--scaleout-partitions` value × `--scaleout-mode`): fresh topics (request,
//! callback and result topics created partitioned through the admin API when the value is N > 0; the
//! deadline topic never), `--scaleout-replicas` workers with `worker.max_in_flight =
//! --scaleout-max-in-flight`, started and ready, then `--scaleout-requests` requests published at once
//! against an emulator whose answers are held `--scaleout-answer-delay-ms` after it created the job
//! (`emulator.answer_delay_ms`; an emulator without that setting gets `latency_ms`, applied before
//! the job exists, and the run says so). While requests are still being submitted:
//! - `none`: nothing (the baseline);
//! - `kill`: `--scaleout-kills` times, one replica (a different one each time) gets SIGKILL and is
//!   restarted at once; kill i of K comes when i/(K+2) of the requests have a stored outcome
//!   (1/4 and 1/2 for K = 2);
//! - `rolling`: a rolling update from 1/4 on: SIGTERM one replica, start its replacement at once,
//!   wait for the old one to exit, then the next, for every replica.
//!
//! Measured from outside, since a killed replica loses its counters:
//! - CI jobs: every job of the run's bucket listed through CI's list API, counted per request by the
//!   correlation marker in `UserData`; extra = jobs − requests with at least one job;
//! - from the benchmark's own consumer on the result topic (subscribed before the run): requests with
//!   no final result at the end (lost), final results beyond one per request, `submitted` beyond one;
//! - CI calls by kind, from the emulator's `GET /_emulator/calls` before and after;
//! - the submission path's ack lag as the broker sees it: the request subscription's `msgBacklog` is
//!   sampled every ~10 ms from the admin API (`stats`, or `partitioned-stats`), acked(t) = messages in
//!   − backlog(t); the k-th ack's lag is when acked(t) reached k minus when the k-th first outcome
//!   (`submitted` or `rejected`, its `publish_time`) was stored, both sorted. An external measure at
//!   the sampling resolution (~10 ms plus the admin call's own time), not the worker's;
//! - the wall time from the first request published to the last request's first final result.

use super::io;
use super::procs::Proc;
use super::{events, format_of, now_ms, short, Bench, Kind, ScaleoutMode, WorkerTopics};
use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

impl ScaleoutMode {
    fn name(self) -> &'static str {
        match self {
            ScaleoutMode::None => "none",
            ScaleoutMode::Kill => "kill",
            ScaleoutMode::Rolling => "rolling",
        }
    }
}

/// How long an emulated job runs: short, so that finals follow soon after the submission.
const JOB_DURATION_MS: u64 = 200;
/// Between two looks at the run's progress (and two backlog samples).
const TICK: Duration = Duration::from_millis(10);
/// No new result for this long after every request has a final one: the run is over.
const QUIET: Duration = Duration::from_secs(3);
/// A SIGTERMed replica still running after this long gets SIGKILL (`worker.shutdown_timeout` is 20 s).
const TERM_LIMIT: Duration = Duration::from_secs(40);

/// One message on the result topic.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub(super) key: String,
    pub(super) state: String,
    pub(super) publish_ms: u64,
}

/// What the result consumer has seen so far, shared with the run's driver.
#[derive(Default)]
pub(super) struct Progress {
    /// Requests with a first outcome (`submitted` or `rejected`).
    pub(super) outcomes: AtomicUsize,
    /// Requests with a final result.
    pub(super) finals: AtomicUsize,
    /// When the last result arrived (ms since epoch, this machine's clock).
    pub(super) last_ms: AtomicU64,
    seen: Mutex<Vec<Outcome>>,
}

/// The emulator's `GET /_emulator/calls`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Calls {
    pub(super) submit: u64,
    pub(super) describe: u64,
    pub(super) list: u64,
    pub(super) cancel: u64,
    pub(super) other: u64,
}

impl Calls {
    pub(super) fn since(self, b: Calls) -> Calls {
        Calls {
            submit: self.submit.saturating_sub(b.submit),
            describe: self.describe.saturating_sub(b.describe),
            list: self.list.saturating_sub(b.list),
            cancel: self.cancel.saturating_sub(b.cancel),
            other: self.other.saturating_sub(b.other),
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct RunFigures {
    partitions: u32,
    mode: &'static str,
    disruptions: usize,
    requests: u64,
    jobs: usize,
    requests_with_job: usize,
    extra_jobs: usize,
    extra_per_disruption: Option<f64>,
    lost: usize,
    duplicate_finals: usize,
    duplicate_submitted: usize,
    /// Per 1,000 requests; `None` when the emulator has no `/_emulator/calls`.
    calls_per_1000: Option<BTreeCalls>,
    ack_lag_ms: Option<Lag>,
    never_acked: usize,
    wall_secs: f64,
    answer_delay: &'static str,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct BTreeCalls {
    submit: f64,
    describe: f64,
    list: f64,
    cancel: f64,
    other: f64,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Lag {
    p50: f64,
    p99: f64,
    max: f64,
}

/// How the emulator holds CI's answers.
#[derive(Debug, Clone, Copy)]
enum Delay {
    /// `emulator.answer_delay_ms`: after the job exists.
    Answer,
    /// `emulator.latency_ms`: before the request is handled (an emulator without `answer_delay_ms`).
    Latency,
}

impl Bench {
    pub(super) async fn scaleout(&mut self) -> Result<()> {
        let delay_ms = self.opts.scaleout_answer_delay_ms;
        let (mut emulator, port, delay) = self.scaleout_emulator(delay_ms).await?;
        if matches!(delay, Delay::Latency) {
            self.note(format!(
                "scaleout: this emulator has no `answer_delay_ms`; CI answers were delayed by `latency_ms` {delay_ms} (before the job is created), so a kill leaves fewer jobs behind than with the answer held after it"
            ));
        }
        let mut failed = Vec::new();
        let mut figures = Vec::new();
        for partitions in self.opts.scaleout_partitions.clone() {
            for mode in self.opts.scaleout_mode.clone() {
                emulator.check_alive()?;
                match self
                    .scaleout_run(port, partitions, mode, delay)
                    .await
                    .with_context(|| format!("partitions {partitions}, mode {}", mode.name()))
                {
                    Ok(f) => figures.push(f),
                    Err(e) => {
                        self.row(
                            "failure",
                            format!("scaleout, partitions {partitions}, mode {}", mode.name()),
                            format!("FAILED: {e:#}"),
                            self.scaleout_command(partitions, mode),
                        );
                        failed.push(format!("{partitions}/{}", mode.name()));
                    }
                }
            }
        }
        emulator.stop().await;
        self.scaleout_table(&figures);
        self.extra_json.insert(
            "scaleout".into(),
            serde_json::to_value(&figures).unwrap_or(Value::Null),
        );
        if !failed.is_empty() {
            bail!("scaleout runs failed: {}", failed.join(", "));
        }
        Ok(())
    }

    fn scaleout_command(&self, partitions: u32, mode: ScaleoutMode) -> String {
        let o = &self.opts;
        self.command(&format!(
            "--only scaleout --scaleout-partitions {partitions} --scaleout-mode {} --scaleout-replicas {} --scaleout-requests {} --scaleout-kills {} --scaleout-answer-delay-ms {} --scaleout-max-in-flight {}",
            mode.name(),
            o.scaleout_replicas,
            o.scaleout_requests,
            o.scaleout_kills,
            o.scaleout_answer_delay_ms,
            o.scaleout_max_in_flight
        ))
    }

    /// An emulator holding every answer `delay_ms` after handling the request, or (an emulator
    /// without `answer_delay_ms` refuses the setting) delaying it before.
    async fn scaleout_emulator(&mut self, delay_ms: u64) -> Result<(Proc, u16, Delay)> {
        let extra = [("CI_WORKER__EMULATOR__ANSWER_DELAY_MS", delay_ms.to_string())];
        match self.start_emulator_with(0, JOB_DURATION_MS, &extra).await {
            Ok((p, port)) => Ok((p, port, Delay::Answer)),
            Err(e) => {
                eprintln!(
                    "scaleout: the emulator refused answer_delay_ms ({e:#}); using latency_ms"
                );
                let (p, port) = self.start_emulator(delay_ms, JOB_DURATION_MS).await?;
                Ok((p, port, Delay::Latency))
            }
        }
    }

    async fn scaleout_run(
        &mut self,
        port: u16,
        partitions: u32,
        mode: ScaleoutMode,
        delay: Delay,
    ) -> Result<RunFigures> {
        let n = self.opts.scaleout_requests.max(1);
        let replicas = self.opts.scaleout_replicas.max(1);
        let mif = self.opts.scaleout_max_in_flight.max(1);
        let label = format!("scaleout-p{partitions}-{}", mode.name());
        eprintln!(
            "scaleout: {replicas} replicas, {n} requests, max_in_flight {mif}, answer delay {} ms, partitions {partitions}, mode {}",
            self.opts.scaleout_answer_delay_ms,
            mode.name()
        );
        let topics = self.worker_topics(None);
        if partitions > 0 {
            for t in [&topics.request, &topics.callback, &topics.result] {
                self.create_partitioned(t, partitions).await?;
            }
        }
        let token = self.settings.pulsar.token.expose().to_string();
        let admin = self.opts.admin_url.clone();

        // The result consumer, before anything can be published there.
        let follower = io::follow(&self.client, &topics.result).await?;
        let progress = Arc::new(Progress::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let collector = tokio::spawn(follow_results(follower, progress.clone(), stop_rx));

        let mut live = self.start_workers(
            Kind::Worker,
            replicas,
            &format!("{label}-gen0"),
            &topics,
            Some(port),
            Some(mif),
        )?;
        // Ready = every replica's consumer on the request subscription, as the broker lists them
        // (partitioned-stats merges a consumer's partitions into one entry)
        // (not the workers' `/readyz`: with a partitioned result topic its producer check pings once
        // per partition on one connection, and has been seen never to answer 200).
        let wanted = replicas;
        wait_consumers(
            &admin,
            &token,
            &topics.request,
            partitions > 0,
            &topics.subscription,
            wanted,
            &mut live,
        )
        .await?;
        // Let the consumers settle on their subscriptions.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls_before = emulator_calls(port).await;

        // The backlog sampler.
        let (sampler_stop_tx, sampler_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sampler = tokio::spawn(sample_backlog(
            admin.clone(),
            token.clone(),
            topics.request.clone(),
            partitions > 0,
            topics.subscription.clone(),
            sampler_stop_rx,
        ));

        // Every request at once, in a task of its own so that the driver starts watching at once.
        let run = format!("{}-so-{}", self.id, short());
        let bucket = events::bucket_for(&run);
        let started = Instant::now();
        let publisher = {
            let client = self.client.clone();
            let topic = topics.request.clone();
            let (bucket, run) = (bucket.clone(), run.clone());
            tokio::spawn(async move {
                io::publish_all(&client, &topic, n, |i| {
                    (
                        events::request_in(&bucket, &run, i, format_of(i), false),
                        Some(events::request_id(&run, i)),
                    )
                })
                .await
            })
        };

        let driven = self
            .scaleout_drive(
                mode, n, &label, &topics, port, mif, &progress, &mut live, started,
            )
            .await;
        publisher
            .await
            .context("publisher task")?
            .context("publishing the requests")?;
        for p in live {
            p.stop().await;
        }
        let _ = stop_tx.send(());
        let _ = sampler_stop_tx.send(());
        let seen = collector.await.context("result consumer")??;
        let samples = sampler.await.context("backlog sampler")?;
        let (disruptions, wall) = driven?;
        let calls_after = emulator_calls(port).await;
        let jobs = self.jobs_per_request(port, &bucket).await?;

        // Figures.
        let mut finals: HashMap<&str, usize> = HashMap::new();
        let mut submitted: HashMap<&str, usize> = HashMap::new();
        let mut first_outcome: HashMap<&str, u64> = HashMap::new();
        for o in &seen {
            if !o.key.starts_with(&format!("bench-{run}-")) {
                continue;
            }
            if o.state == "submitted" {
                *submitted.entry(&o.key).or_default() += 1;
            } else {
                *finals.entry(&o.key).or_default() += 1;
            }
            if o.state == "submitted" || o.state == "rejected" {
                let e = first_outcome.entry(&o.key).or_insert(o.publish_ms);
                *e = (*e).min(o.publish_ms);
            }
        }
        let lost = (n as usize).saturating_sub(finals.len());
        let duplicate_finals: usize = finals.values().map(|c| c - 1).sum();
        let duplicate_submitted: usize = submitted.values().map(|c| c - 1).sum();
        let job_count: usize = jobs.values().sum();
        let with_job = jobs.len();
        let extra = job_count - with_job;
        let mut outcome_ms: Vec<u64> = first_outcome.values().copied().collect();
        outcome_ms.sort_unstable();
        let (lags, never_acked) = ack_lags(&outcome_ms, &samples);
        // The raw series beside the logs: acks sampled, outcomes stored (ms since epoch).
        let mut csv = String::from("kind,ms,count\n");
        for (t, a) in &samples {
            csv.push_str(&format!("acked,{t},{a}\n"));
        }
        for (k, o) in outcome_ms.iter().enumerate() {
            csv.push_str(&format!("outcome,{o},{}\n", k + 1));
        }
        let csv_path = self.log_dir.join(format!("{label}-acks.csv"));
        if let Err(e) = std::fs::write(&csv_path, csv) {
            eprintln!("  could not write {}: {e}", csv_path.display());
        }
        let lag = percentiles(&lags);
        let per_1000 = |v: u64| v as f64 * 1000.0 / n as f64;
        let calls = calls_before
            .zip(calls_after)
            .map(|(b, a)| a.since(b))
            .map(|c| BTreeCalls {
                submit: per_1000(c.submit),
                describe: per_1000(c.describe),
                list: per_1000(c.list),
                cancel: per_1000(c.cancel),
                other: per_1000(c.other),
            });
        let figures = RunFigures {
            partitions,
            mode: mode.name(),
            disruptions,
            requests: n,
            jobs: job_count,
            requests_with_job: with_job,
            extra_jobs: extra,
            extra_per_disruption: (disruptions > 0).then(|| extra as f64 / disruptions as f64),
            lost,
            duplicate_finals,
            duplicate_submitted,
            calls_per_1000: calls,
            ack_lag_ms: lag,
            never_acked,
            wall_secs: wall.as_secs_f64(),
            answer_delay: match delay {
                Delay::Answer => "answer_delay_ms",
                Delay::Latency => "latency_ms",
            },
        };
        self.scaleout_rows(&figures);
        if samples.is_empty() {
            self.note(format!(
                "scaleout {label}: no backlog sample of subscription {} (no ack lag)",
                topics.subscription
            ));
        }
        Ok(figures)
    }

    /// Disrupts the replicas as `mode` says while the requests are submitted, then waits until every
    /// request has a final result and the result topic has been quiet for [`QUIET`]. Returns the
    /// number of replicas killed or replaced and the wall time (first request published → every
    /// request with a final result).
    #[allow(clippy::too_many_arguments)]
    async fn scaleout_drive(
        &mut self,
        mode: ScaleoutMode,
        n: u64,
        label: &str,
        topics: &WorkerTopics,
        port: u16,
        mif: usize,
        progress: &Progress,
        live: &mut Vec<Proc>,
        started: Instant,
    ) -> Result<(usize, Duration)> {
        let replicas = live.len();
        let kills = self.opts.scaleout_kills;
        // Outcome counts at which the next disruption starts.
        let thresholds: Vec<u64> = match mode {
            ScaleoutMode::None => Vec::new(),
            ScaleoutMode::Kill => (1..=kills as u64)
                .map(|i| (n * i / (kills as u64 + 2)).max(1))
                .collect(),
            ScaleoutMode::Rolling => vec![(n / 4).max(1)],
        };
        let limit = Duration::from_secs(120 + n / 10);
        let mut disruptions = 0usize;
        let mut generation = 0usize;
        let mut next = 0usize;
        let mut all_final: Option<Duration> = None;
        loop {
            tokio::time::sleep(TICK).await;
            for p in live.iter_mut() {
                p.check_alive()?;
            }
            let outcomes = progress.outcomes.load(Ordering::Relaxed) as u64;
            if next < thresholds.len() && outcomes >= thresholds[next] {
                next += 1;
                generation += 1;
                match mode {
                    ScaleoutMode::None => {}
                    ScaleoutMode::Kill => {
                        let i = (disruptions) % replicas;
                        let mut old = live.remove(i);
                        eprintln!(
                            "  SIGKILL {} at {outcomes} outcomes ({:.1} s)",
                            old.name,
                            started.elapsed().as_secs_f64()
                        );
                        let _ = old.child.start_kill();
                        let _ = old.child.wait().await;
                        let new = self.start_workers(
                            Kind::Worker,
                            1,
                            &format!("{label}-gen{generation}"),
                            topics,
                            Some(port),
                            Some(mif),
                        )?;
                        live.insert(i, new.into_iter().next().context("no replacement")?);
                        disruptions += 1;
                    }
                    ScaleoutMode::Rolling => {
                        for (i, slot) in live.iter_mut().enumerate() {
                            let outcomes = progress.outcomes.load(Ordering::Relaxed);
                            let mut old = std::mem::replace(
                                slot,
                                self.start_workers(
                                    Kind::Worker,
                                    1,
                                    &format!("{label}-gen{generation}-{i}"),
                                    topics,
                                    Some(port),
                                    Some(mif),
                                )?
                                .into_iter()
                                .next()
                                .context("no replacement")?,
                            );
                            // The replacement is started first (a few ms), then the old one told to stop.
                            eprintln!(
                                "  SIGTERM {} at {outcomes} outcomes ({:.1} s), replacement {}",
                                old.name,
                                started.elapsed().as_secs_f64(),
                                slot.name
                            );
                            let took = terminate(&mut old).await;
                            eprintln!("    {} exited after {:.1} s", old.name, took.as_secs_f64());
                            disruptions += 1;
                        }
                    }
                }
            }
            let finals = progress.finals.load(Ordering::Relaxed) as u64;
            if all_final.is_none() && finals >= n {
                all_final = Some(started.elapsed());
            }
            if let Some(wall) = all_final {
                let last = progress.last_ms.load(Ordering::Relaxed);
                if next >= thresholds.len()
                    && now_ms().saturating_sub(last) >= QUIET.as_millis() as u64
                {
                    return Ok((disruptions, wall));
                }
            }
            if started.elapsed() > limit {
                // Requests without a final result are what the run reports as lost.
                eprintln!(
                    "  scaleout: {finals} of {n} requests with a final result after {limit:?}; giving up"
                );
                return Ok((disruptions, started.elapsed()));
            }
        }
    }

    /// `PUT /admin/v2/persistent/{tenant}/{ns}/{topic}/partitions` with `partitions`.
    pub(super) async fn create_partitioned(&self, topic: &str, partitions: u32) -> Result<()> {
        let http = reqwest::Client::new();
        let req = io::admin_topic_request(
            &http,
            reqwest::Method::PUT,
            &self.opts.admin_url,
            self.settings.pulsar.token.expose(),
            topic,
            "/partitions",
        )
        .with_context(|| format!("{topic} is not a persistent topic"))?;
        let resp = req
            .header("Content-Type", "application/json")
            .body(partitions.to_string())
            .send()
            .await
            .with_context(|| format!("creating {topic} with {partitions} partitions"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("creating {topic} with {partitions} partitions: HTTP {status} {body}");
        }
        Ok(())
    }

    /// Jobs of `bucket` per request id (from the correlation marker), through CI's list API.
    pub(super) async fn jobs_per_request(
        &self,
        port: u16,
        bucket: &str,
    ) -> Result<HashMap<String, usize>> {
        let ci = crate::ci::client::CiClient::new(
            Some(&format!("http://127.0.0.1:{port}")),
            Some(crate::ci::sign::Credentials {
                secret_id: super::BENCH_SECRET_ID.into(),
                secret_key: crate::secret::Secret::new(super::BENCH_SECRET_KEY),
                session_token: None,
            }),
            Duration::from_secs(30),
        )
        .context("a CI client for the emulator")?;
        let mut query = crate::ci::client::ListQuery {
            tag: "DigitalWatermark".into(),
            states: Some("All".into()),
            size: Some(100),
            ..Default::default()
        };
        let mut counts = HashMap::new();
        loop {
            let page = ci
                .list(bucket, events::REGION, &query)
                .await
                .context("listing the run's CI jobs")?;
            for job in &page.jobs {
                if let Some(id) = crate::request::marker::decode(job.user_data()).request_id {
                    *counts.entry(id).or_insert(0) += 1;
                }
            }
            match page.next_token {
                Some(t) if !page.jobs.is_empty() => query.next_token = Some(t),
                _ => return Ok(counts),
            }
        }
    }

    fn scaleout_rows(&mut self, f: &RunFigures) {
        let mode = ScaleoutMode::from_name(f.mode);
        let cmd = self.scaleout_command(f.partitions, mode);
        let topics = if f.partitions == 0 {
            "plain topics".to_string()
        } else {
            format!("{} partitions", f.partitions)
        };
        let what = match mode {
            ScaleoutMode::None => "no kill".to_string(),
            ScaleoutMode::Kill => format!("{} SIGKILL + restart", f.disruptions),
            ScaleoutMode::Rolling => format!("rolling update, {} replicas", f.disruptions),
        };
        let head = format!(
            "scaleout, {} replicas, {topics}, {what} ({} requests, max_in_flight {}, {} {} ms)",
            self.opts.scaleout_replicas,
            f.requests,
            self.opts.scaleout_max_in_flight,
            f.answer_delay,
            self.opts.scaleout_answer_delay_ms
        );
        let per = f
            .extra_per_disruption
            .map(|e| format!(", {e:.1} per kill"))
            .unwrap_or_default();
        self.row(
            "scaleout",
            format!("{head}: CI jobs (extra = jobs − requests with a job)"),
            format!(
                "{} jobs for {} requests with a job: {} extra{per}",
                f.jobs, f.requests_with_job, f.extra_jobs
            ),
            cmd.clone(),
        );
        self.row(
            "scaleout",
            "  results topic: lost (no final result) / duplicate finals / duplicate `submitted`"
                .into(),
            format!(
                "{} / {} / {}",
                f.lost, f.duplicate_finals, f.duplicate_submitted
            ),
            cmd.clone(),
        );
        self.row(
            "scaleout",
            "  CI calls per 1,000 requests (emulator's /_emulator/calls)".into(),
            match &f.calls_per_1000 {
                Some(c) => format!(
                    "submit {:.0}, describe {:.0}, list {:.0}, cancel {:.0}, other {:.0}",
                    c.submit, c.describe, c.list, c.cancel, c.other
                ),
                None => "n/a (the emulator has no /_emulator/calls)".into(),
            },
            cmd.clone(),
        );
        let never = if f.never_acked > 0 {
            format!(" ({} outcomes never matched by an ack)", f.never_acked)
        } else {
            String::new()
        };
        self.row(
            "scaleout",
            "  ack lag of the submission path: k-th ack − k-th outcome stored (broker's backlog, ~10 ms resolution)".into(),
            match &f.ack_lag_ms {
                Some(l) => format!(
                    "p50 {:.0} ms / p99 {:.0} ms / max {:.0} ms{never}",
                    l.p50, l.p99, l.max
                ),
                None => "no samples".into(),
            },
            cmd.clone(),
        );
        self.row(
            "scaleout",
            "  wall time, first request published → every request with a final result".into(),
            format!("{:.1} s", f.wall_secs),
            cmd,
        );
    }

    /// The section's runs side by side (stderr), as the messages section prints its breakdown.
    fn scaleout_table(&self, figures: &[RunFigures]) {
        if figures.is_empty() {
            return;
        }
        let mut t = String::from(
            "\n  scaleout:\n  | partitions | mode | kills | jobs | extra | extra/kill | lost | dup finals | dup submitted | submit calls /1000 | ack lag p50/p99/max ms | wall s |\n  | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for f in figures {
            t.push_str(&format!(
                "  | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
                f.partitions,
                f.mode,
                f.disruptions,
                f.jobs,
                f.extra_jobs,
                f.extra_per_disruption
                    .map(|e| format!("{e:.1}"))
                    .unwrap_or_else(|| "–".into()),
                f.lost,
                f.duplicate_finals,
                f.duplicate_submitted,
                f.calls_per_1000
                    .map(|c| format!("{:.0}", c.submit))
                    .unwrap_or_else(|| "n/a".into()),
                f.ack_lag_ms
                    .map(|l| format!("{:.0}/{:.0}/{:.0}", l.p50, l.p99, l.max))
                    .unwrap_or_else(|| "–".into()),
                f.wall_secs
            ));
        }
        eprint!("{t}");
    }
}

impl ScaleoutMode {
    fn from_name(name: &str) -> ScaleoutMode {
        match name {
            "kill" => ScaleoutMode::Kill,
            "rolling" => ScaleoutMode::Rolling,
            _ => ScaleoutMode::None,
        }
    }
}

/// Waits until `subscription` on `topic` has `wanted` consumers in the broker's stats (each
/// replica's; partitioned-stats lists a consumer of every partition once), checking that `procs` stay alive.
pub(super) async fn wait_consumers(
    admin_url: &str,
    token: &str,
    topic: &str,
    partitioned: bool,
    subscription: &str,
    wanted: usize,
    procs: &mut [Proc],
) -> Result<()> {
    let http = reqwest::Client::new();
    let suffix = if partitioned {
        "/partitioned-stats?perPartition=false"
    } else {
        "/stats"
    };
    let limit = Instant::now() + Duration::from_secs(60);
    let mut have = 0;
    while Instant::now() < limit {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if let Some(req) =
            io::admin_topic_request(&http, reqwest::Method::GET, admin_url, token, topic, suffix)
        {
            if let Ok(resp) = req.send().await {
                let text = resp.text().await.unwrap_or_default();
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    have = v
                        .pointer(&format!("/subscriptions/{subscription}/consumers"))
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    if have >= wanted {
                        return Ok(());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs: Vec<String> = procs.iter().map(|p| p.log.display().to_string()).collect();
    bail!(
        "{have} of {wanted} consumers on {subscription} of {topic} after 60 s (logs: {})",
        logs.join(", ")
    )
}

/// SIGTERM, then wait for the exit (SIGKILL after [`TERM_LIMIT`]); how long it took.
async fn terminate(p: &mut Proc) -> Duration {
    let t = Instant::now();
    if let Some(pid) = p.pid() {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(TERM_LIMIT, p.child.wait())
        .await
        .is_err()
    {
        eprintln!("    {} still running after {TERM_LIMIT:?}: SIGKILL", p.name);
        let _ = p.child.kill().await;
    }
    t.elapsed()
}

/// Reads the result topic until told to stop, keeping every message and the run's progress.
pub(super) async fn follow_results(
    mut consumer: crate::pulsar::raw::Tail,
    progress: Arc<Progress>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<Vec<Outcome>> {
    let mut outcome_keys = std::collections::HashSet::new();
    let mut final_keys = std::collections::HashSet::new();
    loop {
        let msg = tokio::select! {
            _ = &mut stop => break,
            m = consumer.next() => m,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => bail!("result consumer error: {e}"),
            None => bail!("the result consumer ended"),
        };
        let o = Outcome {
            key: msg.key().unwrap_or_default(),
            state: msg.property("state").unwrap_or_default(),
            publish_ms: msg.publish_ms(),
        };
        if (o.state == "submitted" || o.state == "rejected") && outcome_keys.insert(o.key.clone()) {
            progress.outcomes.fetch_add(1, Ordering::Relaxed);
        }
        if o.state != "submitted" && final_keys.insert(o.key.clone()) {
            progress.finals.fetch_add(1, Ordering::Relaxed);
        }
        progress.last_ms.store(now_ms(), Ordering::Relaxed);
        progress
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(o);
    }
    consumer.close().await;
    let seen = std::mem::take(&mut *progress.seen.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(seen)
}

/// Samples `subscription`'s acknowledged count on `topic` every [`TICK`] until told to stop:
/// (ms since epoch when the answer came, messages in − backlog). Failed reads are skipped.
async fn sample_backlog(
    admin_url: String,
    token: String,
    topic: String,
    partitioned: bool,
    subscription: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<(u64, u64)> {
    let http = reqwest::Client::new();
    // The precise backlog (counted from the cursor, not estimated from counters).
    let suffix = if partitioned {
        "/partitioned-stats?getPreciseBacklog=true"
    } else {
        "/stats?getPreciseBacklog=true"
    };
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return out,
            _ = tick.tick() => {}
        }
        let Some(req) = io::admin_topic_request(
            &http,
            reqwest::Method::GET,
            &admin_url,
            &token,
            &topic,
            suffix,
        ) else {
            return out;
        };
        let Ok(resp) = req.send().await else { continue };
        let Ok(text) = resp.text().await else {
            continue;
        };
        let Ok(body) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let Some(acked) = acked_of(&body, &subscription) {
            out.push((now_ms(), acked));
        }
    }
}

/// Messages in − `msgBacklog` of `subscription`, from a topic's (or partitioned topic's) stats.
fn acked_of(stats: &Value, subscription: &str) -> Option<u64> {
    let sub = stats.get("subscriptions")?.get(subscription)?;
    let backlog = sub.get("msgBacklog")?.as_u64()?;
    let msg_in = stats.get("msgInCounter")?.as_u64()?;
    Some(msg_in.saturating_sub(backlog))
}

/// The lag of the k-th ack behind the k-th outcome (ms), for every k the samples reach; and how many
/// outcomes no sample reached.
fn ack_lags(outcome_ms: &[u64], samples: &[(u64, u64)]) -> (Vec<f64>, usize) {
    let mut lags = Vec::with_capacity(outcome_ms.len());
    let mut s = 0usize;
    let mut acked_max = 0u64;
    let mut at = 0u64;
    for (k, o) in outcome_ms.iter().enumerate() {
        let k = k as u64 + 1;
        while acked_max < k && s < samples.len() {
            let (t, a) = samples[s];
            s += 1;
            if a > acked_max {
                acked_max = a;
                at = t;
            }
        }
        if acked_max < k {
            return (lags, outcome_ms.len() - (k as usize - 1));
        }
        lags.push(at as f64 - *o as f64);
    }
    (lags, 0)
}

fn percentiles(values: &[f64]) -> Option<Lag> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Lag {
        p50: at(0.5),
        p99: at(0.99),
        max: v[v.len() - 1],
    })
}

/// `GET /_emulator/calls` on the emulator's CI listener; `None` when it has none.
pub(super) async fn emulator_calls(port: u16) -> Option<Calls> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/_emulator/calls"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let v: Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Calls {
        submit: n("submit"),
        describe: n("describe"),
        list: n("list"),
        cancel: n("cancel"),
        other: n("other"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ack_lag_pairs_the_kth_ack_with_the_kth_outcome() {
        // Outcomes at 100, 110, 120; acks: 1 by 105, 3 by 150.
        let samples = [(95, 0), (105, 1), (140, 1), (150, 3)];
        let (lags, never) = ack_lags(&[100, 110, 120], &samples);
        assert_eq!(lags, vec![5.0, 40.0, 30.0]);
        assert_eq!(never, 0);
        let (lags, never) = ack_lags(&[100, 110, 120], &[(105, 1)]);
        assert_eq!(lags, vec![5.0]);
        assert_eq!(never, 2);
    }

    #[test]
    fn acked_counts_from_stats() {
        let stats = json!({"msgInCounter": 600, "subscriptions": {"s": {"msgBacklog": 24}}});
        assert_eq!(acked_of(&stats, "s"), Some(576));
        assert_eq!(acked_of(&stats, "t"), None);
        let p = percentiles(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (2.0, 3.0, 3.0));
    }
}
