//! The `throttle` section (issue 17): the submission path against a CI that limits calls per second
//! and says so only by answering 429 `SlowDown` (the emulator's `qps_limit`, a sliding one-second
//! window).
//!
//! Per run: a fresh emulator with `qps_limit = --throttle-qps` and `latency_ms` from
//! `--throttle-latency-ms`; `--throttle-requests` requests pre-published (input objects with the
//! `__lost__` marker, so no completion event competes, as in the submission section); one worker with
//! `max_in_flight` 64. Figures: throughput between the first and the last `submitted` event
//! (`publish_time`, the worker's clock), and the fraction of `POST /jobs` the emulator answered 429
//! (its `GET /_emulator/calls`). Variants (`--throttle-variants`):
//!
//! - `adaptive`: the defaults; the worker is not told the rate.
//! - `fixed`: `worker.adaptive_concurrency = false`, `ci.adaptive_rate = false`: the worker before
//!   issue 17 (64 in flight whatever CI says; a 429 is only retried with backoff).
//! - `paced`: `ci.max_requests_per_second` = the emulator's limit (adaptive on).
//! - `concurrency`: `ci.adaptive_rate = false`: AIMD on the calls in flight alone.

use super::{Bench, Throughput, Variant};
use anyhow::{Context as _, Result};
use serde_json::Value;
use std::time::Duration;

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Adaptive => "adaptive",
            Variant::Fixed => "fixed",
            Variant::Paced => "paced",
            Variant::Concurrency => "concurrency",
        }
    }

    fn describe(self, qps: u32) -> String {
        match self {
            Variant::Adaptive => "adaptive (defaults; the worker is not told the rate)".into(),
            Variant::Fixed => {
                "fixed concurrency, no pace (adaptive_concurrency = adaptive_rate = false: before issue 17)"
                    .into()
            }
            Variant::Paced => format!("ci.max_requests_per_second = {qps}"),
            Variant::Concurrency => "AIMD on concurrency alone (ci.adaptive_rate = false)".into(),
        }
    }

    fn env(self, qps: u32) -> Vec<(&'static str, String)> {
        match self {
            Variant::Adaptive => vec![],
            Variant::Fixed => vec![
                ("CI_WORKER__WORKER__ADAPTIVE_CONCURRENCY", "false".into()),
                ("CI_WORKER__CI__ADAPTIVE_RATE", "false".into()),
            ],
            Variant::Paced => vec![("CI_WORKER__CI__MAX_REQUESTS_PER_SECOND", qps.to_string())],
            Variant::Concurrency => vec![("CI_WORKER__CI__ADAPTIVE_RATE", "false".into())],
        }
    }
}

/// `POST /jobs` received and answered 429, from `GET /_emulator/calls`.
#[derive(Debug, Clone, Copy, Default)]
struct SubmitCalls {
    submit: u64,
    throttled: u64,
    all: u64,
    all_throttled: u64,
}

/// The worker's `max_in_flight` in every run.
const MAX_IN_FLIGHT: usize = 64;

impl Bench {
    pub(super) async fn throttle(&mut self) -> Result<()> {
        let o = self.opts.throttle.clone();
        for latency in &o.throttle_latency_ms {
            for variant in &o.throttle_variants {
                let mut runs = Vec::new();
                for round in 0..o.throttle_repeat.max(1) {
                    eprintln!(
                        "throttle: qps_limit {}, latency {latency} ms, {} requests, {} (run {})",
                        o.throttle_qps,
                        o.throttle_requests,
                        variant.name(),
                        round + 1
                    );
                    runs.push(self.throttle_run(*variant, *latency).await?);
                }
                let goal = o.throttle_qps as f64;
                let each: Vec<String> = runs
                    .iter()
                    .map(|(t, c)| {
                        format!(
                            "{:.1}/s ({:.0}% of {goal}/s), {} of {} POST /jobs throttled ({:.1}%){}",
                            t.rate,
                            100.0 * t.rate / goal,
                            c.throttled,
                            c.submit,
                            100.0 * c.throttled as f64 / c.submit.max(1) as f64,
                            if c.all != c.submit {
                                format!("; all calls {} / throttled {}", c.all, c.all_throttled)
                            } else {
                                String::new()
                            }
                        )
                    })
                    .collect();
                self.row(
                    "throttle",
                    format!(
                        "CI limited to {} calls/s (emulator qps_limit), CI latency {latency} ms, {} requests, max_in_flight {MAX_IN_FLIGHT}: {}",
                        o.throttle_qps,
                        o.throttle_requests,
                        variant.describe(o.throttle_qps)
                    ),
                    each.join("; "),
                    self.command(&format!(
                        "--only throttle --throttle-qps {} --throttle-requests {} --throttle-latency-ms {latency} --throttle-variants {}",
                        o.throttle_qps,
                        o.throttle_requests,
                        variant.name()
                    )),
                );
            }
        }
        Ok(())
    }

    async fn throttle_run(
        &mut self,
        variant: Variant,
        latency: u64,
    ) -> Result<(Throughput, SubmitCalls)> {
        let qps = self.opts.throttle.throttle_qps;
        let n = self.opts.throttle.throttle_requests;
        let (emulator, port) = self
            .start_emulator_with(
                latency,
                0,
                &[("CI_WORKER__EMULATOR__QPS_LIMIT", qps.to_string())],
            )
            .await?;
        self.extra_worker_env = variant
            .env(qps)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let label = format!("throttle-{}-lat{latency}", variant.name());
        let outcome = self.submission_run(port, n, MAX_IN_FLIGHT, 1, &label).await;
        self.extra_worker_env.clear();
        let calls = submit_calls(port).await;
        emulator.stop().await;
        let t = outcome?;
        let c = calls.context("reading the emulator's /_emulator/calls")?;
        Ok((t, c))
    }
}

async fn submit_calls(port: u16) -> Result<SubmitCalls> {
    let text = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/_emulator/calls"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .text()
        .await?;
    let v: Value = serde_json::from_str(&text)?;
    let sum = |v: &Value| {
        v.as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    Ok(SubmitCalls {
        submit: v["submit"].as_u64().unwrap_or(0),
        throttled: v["throttled"]["submit"].as_u64().unwrap_or(0),
        all: sum(&v),
        all_throttled: sum(&v["throttled"]),
    })
}
