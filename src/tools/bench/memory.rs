//! The `memory` section: how much memory `ci-worker run` holds, and whether it grows with the number
//! of jobs.
//!
//! Two scenarios, each at the sizes given, every size with a fresh worker process (VmHWM, the peak
//! resident set, is per process):
//! - **jobs waiting for their callbacks** (`--memory-jobs`): the worker is started and ready (its
//!   idle RSS is the baseline), then N requests are published at once. Their input objects carry the
//!   emulator's `__lost__` marker, so CI creates every job but no completion event ever comes, and
//!   `worker.job_timeout` is an hour, so no deadline comes due: once all N `submitted` events are on
//!   the result topic, N jobs are waiting. Read then: VmHWM (peak during the burst) and VmRSS, and
//!   VmRSS again [`SETTLE`] later (what the allocator gave back).
//! - **a backlog of completion events** (`--memory-backlog`): M events (the completion section's
//!   shape, half XML, half JSON, ~2.4 KB) pre-published on a fresh callback topic, then the worker
//!   started and left to work through them until M results are on its result topic. Read then:
//!   VmHWM, VmRSS, and VmRSS [`SETTLE`] later.
//!
//! Flat means the difference between two sizes is small against the baseline; each scenario's
//! growth per 1,000 jobs (events) between its smallest and largest size is reported too.

use super::io;
use super::messages::watch;
use super::procs::{self, Proc};
use super::{events, format_of, short, Bench, Kind};
use anyhow::{Context as _, Result};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long after the last output the RSS is read again.
const SETTLE: Duration = Duration::from_secs(3);
/// Long enough that no deadline of the waiting jobs comes due during a run.
const JOB_TIMEOUT: &str = "1h";

/// What `/proc/<pid>/status` says about a process's memory, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most ever resident.
    pub peak_kib: u64,
    /// RssAnon: resident and not file-backed (heap, stacks), the part the worker's state lives in.
    pub anon_kib: u64,
}

/// The worker's memory when its last output is out, and [`SETTLE`] later; then stops it.
async fn done_and_settled(mut worker: Proc) -> Result<(Memory, Memory)> {
    let done = Memory::of(&worker)?;
    tokio::time::sleep(SETTLE).await;
    worker.check_alive()?;
    let settled = Memory::of(&worker)?;
    worker.stop().await;
    Ok((done, settled))
}

impl Memory {
    /// Reads the fields of a `/proc/<pid>/status` text (0 for one that is missing).
    pub fn parse(status: &str) -> Memory {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("VmRSS"),
            peak_kib: field("VmHWM"),
            anon_kib: field("RssAnon"),
        }
    }

    /// The memory of a running process.
    pub fn of(proc: &Proc) -> Result<Memory> {
        let pid = proc
            .pid()
            .with_context(|| format!("{} has exited", proc.name))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status of {}", proc.name))?;
        Ok(Memory::parse(&status))
    }
}

/// One size of a scenario.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Sample {
    /// Jobs waiting, or events in the backlog.
    n: u64,
    /// Ready and idle, before anything was published (jobs waiting only).
    idle: Option<Memory>,
    /// At the last output (`submitted` event, or result).
    done: Memory,
    /// [`SETTLE`] later.
    settled: Memory,
    /// First message published (jobs) or worker started (backlog) → last output.
    secs: f64,
}

impl Bench {
    pub(super) async fn memory(&mut self) -> Result<()> {
        let mut jobs = self.opts.memory_jobs.clone();
        jobs.sort_unstable();
        jobs.dedup();
        let mut backlog = self.opts.memory_backlog.clone();
        backlog.sort_unstable();
        backlog.dedup();
        let cmd = self.command(&format!(
            "--only memory --memory-jobs {} --memory-backlog {}",
            list(&jobs),
            list(&backlog)
        ));

        let mut waiting = Vec::new();
        if !jobs.is_empty() {
            // One emulator for every size: each run has a bucket of its own.
            let (mut emulator, port) = self.start_emulator(0, 0).await?;
            self.extra_worker_env
                .insert("CI_WORKER__WORKER__JOB_TIMEOUT".into(), JOB_TIMEOUT.into());
            let outcome = async {
                for &n in &jobs {
                    waiting.push(self.memory_waiting(&mut emulator, port, n).await?);
                }
                anyhow::Ok(())
            }
            .await;
            self.extra_worker_env.clear();
            emulator.stop().await;
            outcome?;
        }
        let mut drained = Vec::new();
        for &m in &backlog {
            drained.push(self.memory_backlog(m).await?);
        }

        if let Some(idle) = waiting
            .iter()
            .filter_map(|s| s.idle)
            .min_by_key(|m| m.rss_kib)
        {
            self.row(
                "memory",
                "worker RSS, ready and idle after start (baseline; anonymous part; peak so far)"
                    .into(),
                format!(
                    "{} ({} anonymous; peak {})",
                    mib(idle.rss_kib),
                    mib(idle.anon_kib),
                    mib(idle.peak_kib)
                ),
                cmd.clone(),
            );
        }
        self.scenario_rows(
            &waiting,
            "jobs waiting for their callbacks",
            "once all `submitted` events are out",
            "jobs",
            &cmd,
        );
        self.scenario_rows(
            &drained,
            "completion events in a backlog, worked through",
            "once the last result is out",
            "events",
            &cmd,
        );
        self.extra_json.insert(
            "memory".into(),
            serde_json::json!({ "waiting": waiting, "backlog": drained }),
        );
        Ok(())
    }

    /// The rows of one scenario: the largest size's figures, the smaller ones in brackets.
    fn scenario_rows(&mut self, samples: &[Sample], what: &str, when: &str, unit: &str, cmd: &str) {
        let Some((largest, smaller)) = samples.split_last() else {
            return;
        };
        let others = |f: &dyn Fn(&Sample) -> String| {
            if smaller.is_empty() {
                String::new()
            } else {
                let each: Vec<String> = smaller
                    .iter()
                    .map(|s| format!("{}: {}", count(s.n), f(s)))
                    .collect();
                format!(" ({})", each.join("; "))
            }
        };
        self.row(
            "memory",
            format!("peak RSS, {} {what}", count(largest.n)),
            format!(
                "{}{}",
                mib(largest.done.peak_kib),
                others(&|s| mib(s.done.peak_kib))
            ),
            cmd.into(),
        );
        let now_and_later = |s: &Sample| {
            format!(
                "{}, {} s later {} ({} anonymous)",
                mib(s.done.rss_kib),
                SETTLE.as_secs(),
                mib(s.settled.rss_kib),
                mib(s.settled.anon_kib)
            )
        };
        self.row(
            "memory",
            format!("RSS {when}, {} {what}", count(largest.n)),
            format!("{}{}", now_and_later(largest), others(&now_and_later)),
            cmd.into(),
        );
        if let (Some(first), false) = (samples.first(), smaller.is_empty()) {
            let per_1000 = |a: u64, b: u64| {
                (b as f64 - a as f64) * 1000.0 / (largest.n - first.n).max(1) as f64
            };
            self.row(
                "memory",
                format!(
                    "growth per 1,000 {unit} ({what}, {} → {}): peak; RSS {} s after",
                    count(first.n),
                    count(largest.n),
                    SETTLE.as_secs()
                ),
                format!(
                    "{:.0} KiB; {:.0} KiB",
                    per_1000(first.done.peak_kib, largest.done.peak_kib),
                    per_1000(first.settled.rss_kib, largest.settled.rss_kib)
                ),
                cmd.into(),
            );
        }
    }

    /// N jobs submitted through one fresh worker and left waiting for callbacks that never come.
    async fn memory_waiting(&mut self, emulator: &mut Proc, port: u16, n: u64) -> Result<Sample> {
        eprintln!(
            "memory: {n} jobs waiting for their callbacks (worker.job_timeout {JOB_TIMEOUT})"
        );
        let topics = self.worker_topics(None);
        let follower = io::follow(&self.client, &topics.result).await?;
        let label = format!("memory-waiting{n}");
        let mut procs = self.start_workers(Kind::Worker, 1, &label, &topics, Some(port), None)?;
        let mut worker = procs.remove(0);
        procs::wait_ready(&mut worker, Duration::from_secs(60)).await?;
        // Let the consumers settle on their subscriptions (and start-up's allocations be freed).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = Memory::of(&worker)?;

        let target = n as usize;
        let mut submitted = HashSet::new();
        let collector = tokio::spawn(io::collect(
            follower,
            Duration::from_secs(120 + n / 20),
            false,
            move |s| {
                if s.state.as_deref() == Some("submitted") {
                    submitted.insert(s.key.clone().unwrap_or_default());
                }
                submitted.len() >= target
            },
        ));
        let run = format!("{}-mem-{}", self.id, short());
        let bucket = events::bucket_for(&run);
        let started = Instant::now();
        io::publish_all(&self.client, &topics.request, n, |i| {
            (
                events::request_in(&bucket, &run, i, format_of(i), true),
                Some(events::request_id(&run, i)),
            )
        })
        .await?;
        let seen = watch(collector, &mut [&mut worker, emulator]).await?;
        let secs = started.elapsed().as_secs_f64();
        let (done, settled) = done_and_settled(worker).await?;
        self.note_not_submitted(&format!("memory, {n} jobs waiting"), &seen);
        eprintln!(
            "  {n} submitted in {secs:.1} s; RSS idle {}, peak {}, after {}, {} s later {}",
            mib(idle.rss_kib),
            mib(done.peak_kib),
            mib(done.rss_kib),
            SETTLE.as_secs(),
            mib(settled.rss_kib)
        );
        Ok(Sample {
            n,
            idle: Some(idle),
            done,
            settled,
            secs,
        })
    }

    /// M completion events pre-published, then one fresh worker started to work through them.
    async fn memory_backlog(&mut self, m: u64) -> Result<Sample> {
        eprintln!("memory: a backlog of {m} completion events (half XML, half JSON)");
        let callback = self.topic("callbacks");
        let run = format!("{}-memb-{}", self.id, short());
        io::publish_all(&self.client, &callback, m, |i| {
            (events::completion_event(&run, i, format_of(i)), None)
        })
        .await?;
        let topics = self.worker_topics(Some(callback));
        let follower = io::follow(&self.client, &topics.result).await?;
        let target = m as usize;
        let mut got = 0usize;
        let collector = tokio::spawn(io::collect(
            follower,
            Duration::from_secs(60 + m / 1000),
            false,
            move |_| {
                got += 1;
                got >= target
            },
        ));
        let label = format!("memory-backlog{m}");
        let started = Instant::now();
        let mut procs = self.start_workers(Kind::Worker, 1, &label, &topics, None, None)?;
        let mut worker = procs.remove(0);
        watch(collector, &mut [&mut worker]).await?;
        let secs = started.elapsed().as_secs_f64();
        let (done, settled) = done_and_settled(worker).await?;
        eprintln!(
            "  {m} results in {secs:.1} s; RSS peak {}, after {}, {} s later {}",
            mib(done.peak_kib),
            mib(done.rss_kib),
            SETTLE.as_secs(),
            mib(settled.rss_kib)
        );
        Ok(Sample {
            n: m,
            idle: None,
            done,
            settled,
            secs,
        })
    }
}

fn mib(kib: u64) -> String {
    super::mib(kib)
}

/// `12,345`.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1000,10000`, as the option is written.
fn list(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_memory_fields_of_proc_status() {
        let status = "Name:\tci-worker\nVmPeak:\t  900000 kB\nVmHWM:\t   61234 kB\nVmRSS:\t   50000 kB\nRssAnon:\t   40000 kB\nRssFile:\t   10000 kB\n";
        assert_eq!(
            Memory::parse(status),
            Memory {
                rss_kib: 50_000,
                peak_kib: 61_234,
                anon_kib: 40_000
            }
        );
        assert_eq!(Memory::parse(""), Memory::default());
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(50_000), "50,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(list(&[1000, 10_000]), "1000,10000");
    }
}
