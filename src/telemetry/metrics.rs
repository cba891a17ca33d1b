//! The worker's Prometheus metrics (served on `http.listen` at `/metrics`, text format).
//! Names follow Prometheus conventions: `ci_worker_` prefix, `_total` counters, `_seconds` histograms.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `request` or `callback`.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CiCallLabels {
    /// `submit`, `describe`, `list`, `cancel`.
    pub op: String,
    /// `ok`, `transient`, `permanent`.
    pub outcome: String,
    /// HTTP status, or `none` when no answer came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabel {
    /// `xml` or `json`.
    pub format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngressLabels {
    /// `cmq` or `http`.
    pub source: String,
    /// `stored` (in the callback topic), `failed` (not stored; the sender keeps it), `refused`
    /// (not an event the worker takes: too large, wrong token).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CmqCallLabels {
    /// `BatchReceiveMessage`, `BatchDeleteMessage`.
    pub action: String,
    /// `ok`, `empty` (no message), or the error: `network`, `http_<status>`, `code_<code>`.
    pub outcome: String,
}

/// Every metric the worker exports. Cheap to share (`Arc`); updates are lock-free atomics.
pub struct Metrics {
    registry: Registry,
    pub requests_consumed: Counter,
    pub jobs_submitted: Counter,
    pub requests_rejected: Counter,
    pub dead_letters: Family<SourceLabel, Counter>,
    pub ci_calls: Family<CiCallLabels, Counter>,
    pub ci_retries: Counter,
    pub ci_call_duration: Family<OpLabel, Histogram>,
    pub results: Family<StateLabel, Counter>,
    pub events_consumed: Family<FormatLabel, Counter>,
    pub in_flight: Gauge,
    /// `POST /jobs` allowed in flight now (the adaptive limit, at most `worker.max_in_flight`).
    pub ci_concurrency_limit: Gauge,
    /// The pace of CI calls now, calls/s; 0 = none.
    pub ci_rate_limit: Gauge<f64, AtomicU64>,
    pub job_duration: Histogram,
    pub pulsar_reconnects: Counter,
    pub redeliveries_requested: Counter,
    pub submissions_recovered: Counter,
    pub deadline_checks: Counter,
    pub callbacks_lost: Counter,
    pub duplicates_suppressed: Counter,
    pub ingress_events: Family<IngressLabels, Counter>,
    pub cmq_calls: Family<CmqCallLabels, Counter>,
    pub ingress_store_duration: Family<SourceLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ci_worker");
        let m = Metrics {
            requests_consumed: Counter::default(),
            jobs_submitted: Counter::default(),
            requests_rejected: Counter::default(),
            dead_letters: Family::default(),
            ci_calls: Family::default(),
            ci_retries: Counter::default(),
            ci_call_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            results: Family::default(),
            events_consumed: Family::default(),
            in_flight: Gauge::default(),
            ci_concurrency_limit: Gauge::default(),
            ci_rate_limit: Gauge::default(),
            job_duration: Histogram::new(exponential_buckets(0.25, 2.0, 16)),
            pulsar_reconnects: Counter::default(),
            redeliveries_requested: Counter::default(),
            submissions_recovered: Counter::default(),
            deadline_checks: Counter::default(),
            callbacks_lost: Counter::default(),
            duplicates_suppressed: Counter::default(),
            ingress_events: Family::default(),
            cmq_calls: Family::default(),
            ingress_store_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            registry: Registry::default(),
        };
        registry.register(
            "requests_consumed",
            "Requests taken from the request topic",
            m.requests_consumed.clone(),
        );
        registry.register(
            "jobs_submitted",
            "Jobs CI accepted",
            m.jobs_submitted.clone(),
        );
        registry.register(
            "requests_rejected",
            "Requests refused by the worker or by CI",
            m.requests_rejected.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages moved to the dead-letter topic",
            m.dead_letters.clone(),
        );
        registry.register(
            "ci_calls",
            "CI API calls by operation, outcome and HTTP status",
            m.ci_calls.clone(),
        );
        registry.register(
            "ci_retries",
            "CI calls retried after a transient failure",
            m.ci_retries.clone(),
        );
        registry.register(
            "ci_call_duration_seconds",
            "CI API call latency",
            m.ci_call_duration.clone(),
        );
        registry.register("results", "Results published, by state", m.results.clone());
        registry.register(
            "ingress_events",
            "Completion events taken in by the cmq and http ingress, by outcome",
            m.ingress_events.clone(),
        );
        registry.register(
            "cmq_calls",
            "CMQ API calls of the cmq ingress, by action and outcome",
            m.cmq_calls.clone(),
        );
        registry.register(
            "ingress_store_duration_seconds",
            "From an event's arrival at an ingress to the broker's receipt for it in the callback topic",
            m.ingress_store_duration.clone(),
        );
        registry.register(
            "completion_events",
            "Completion events consumed, by format",
            m.events_consumed.clone(),
        );
        registry.register(
            "in_flight",
            "Requests and events being processed",
            m.in_flight.clone(),
        );
        registry.register(
            "ci_concurrency_limit",
            "POST /jobs allowed in flight now: worker.max_in_flight, lowered while CI throttles",
            m.ci_concurrency_limit.clone(),
        );
        registry.register(
            "ci_rate_limit",
            "Pace of CI calls now, calls per second (ci.max_requests_per_second, or learnt from CI's 429s); 0 = none",
            m.ci_rate_limit.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "End-to-end job latency: CI creation time to the final result",
            m.job_duration.clone(),
        );
        registry.register(
            "pulsar_reconnects",
            "Producers or consumers rebuilt after a failure",
            m.pulsar_reconnects.clone(),
        );
        registry.register(
            "redeliveries_requested",
            "Messages released (nacked) for redelivery",
            m.redeliveries_requested.clone(),
        );
        registry.register(
            "submissions_recovered",
            "Jobs found already created by a lost answer or an earlier process, instead of submitted again",
            m.submissions_recovered.clone(),
        );
        registry.register(
            "deadline_checks",
            "Jobs described because no completion event came within worker.job_timeout",
            m.deadline_checks.clone(),
        );
        registry.register(
            "callbacks_lost",
            "Jobs CI finished whose completion event never arrived (found by a deadline check)",
            m.callbacks_lost.clone(),
        );
        registry.register(
            "duplicates_suppressed",
            "Final results not published again for a job already finished (duplicate events)",
            m.duplicates_suppressed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn ci_call(&self, op: &str, outcome: &str, status: Option<u16>, took: Duration) {
        self.ci_calls
            .get_or_create(&CiCallLabels {
                op: op.into(),
                outcome: outcome.into(),
                status: status.map_or_else(|| "none".into(), |s| s.to_string()),
            })
            .inc();
        self.ci_call_duration
            .get_or_create(&OpLabel { op: op.into() })
            .observe(took.as_secs_f64());
    }

    pub fn result(&self, state: &str) {
        self.results
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .inc();
    }

    pub fn dead_letter(&self, source: &str) {
        self.dead_letters
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_prefix() {
        let m = Metrics::new();
        m.requests_consumed.inc();
        m.ci_call("submit", "transient", Some(429), Duration::from_millis(12));
        m.result("succeeded");
        let text = m.render();
        assert!(
            text.contains("ci_worker_requests_consumed_total 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "ci_worker_ci_calls_total{op=\"submit\",outcome=\"transient\",status=\"429\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("ci_worker_results_total{state=\"succeeded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ci_worker_ci_call_duration_seconds_bucket"),
            "{text}"
        );
        m.ci_concurrency_limit.set(44);
        m.ci_rate_limit.set(45.5);
        let text = m.render();
        assert!(text.contains("ci_worker_ci_concurrency_limit 44"), "{text}");
        assert!(text.contains("ci_worker_ci_rate_limit 45.5"), "{text}");
    }
}
