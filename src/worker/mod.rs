//! `ci-worker run`: two independent loops over one Pulsar client.
//!
//! - [`submit`]: requests → validate → CI `POST /jobs` → `submitted` event (or `rejected` result).
//! - [`complete`]: CI completion events → normalized results.
//!
//! Both share [`consume`], the consume/settle loop: bounded concurrency, acknowledgement only after the
//! outcome is confirmed by the broker, and a drain on shutdown that nacks whatever did not finish in
//! time (so it is redelivered, never lost).

pub mod completion;
pub mod dead_letter;
pub mod deadline;
pub mod done;
pub mod finished;
pub mod poison;
pub mod probes;
pub mod recover;
pub mod retry;
pub mod submission;

use crate::ci::client::{CiClient, CiError};
use crate::config::Settings;
use crate::telemetry::Metrics;
use crate::pulsar::{Outgoing, Publisher, PulsarIoError};
use crate::result::JobResult;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Pulsar(#[from] PulsarIoError),
    #[error(transparent)]
    Ci(#[from] CiError),
    #[error("worker task failed: {0}")]
    Task(String),
    #[error("http: {0}")]
    Http(String),
}

/// What every handler needs; shared read-only between tasks.
pub struct Context {
    pub settings: Settings,
    pub publisher: Publisher,
    pub ci: CiClient,
    pub metrics: Arc<Metrics>,
    pub recovery: recover::Recovery,
    pub finished: finished::Finished,
    pub done: done::DoneRecorder,
    pub failures: poison::Failures,
    pub health: Arc<crate::telemetry::Health>,
}

impl Context {
    /// Publishes a result keyed by `request_id` (or the job id for jobs this worker did not submit) and
    /// waits for the broker to store it.
    pub async fn publish_result(&self, result: &JobResult) -> Result<(), PulsarIoError> {
        let key = result
            .request_id
            .clone()
            .or_else(|| result.job_id.clone())
            .unwrap_or_default();
        let mut msg = Outgoing::new(result.to_json())
            .with_key(key)
            .with_property("state", result.state.as_str());
        if let Some(job_id) = &result.job_id {
            msg = msg.with_property("job_id", job_id.clone());
        }
        self.publisher
            .publish(&self.settings.pulsar.result_topic, msg)
            .await?;
        self.metrics.result(result.state.as_str());
        if result.state.is_final() {
            if let Some(took) = job_duration(result) {
                self.metrics.job_duration.observe(took);
            }
        }
        Ok(())
    }
}

/// Seconds from CI's creation time to the final state, when CI gave both.
fn job_duration(result: &JobResult) -> Option<f64> {
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    let (created, finished) = (parse(&result.created_at)?, parse(&result.finished_at)?);
    let ms = (finished - created).num_milliseconds();
    (ms >= 0).then(|| ms as f64 / 1000.0)
}

/// Runs one consume loop of the worker: `handle` decides what becomes of each message, and the poison
/// guard turns a message that keeps failing into a dead letter (`source` labels it).
#[allow(clippy::too_many_arguments)]
async fn serve<H, F>(
    ctx: &Arc<Context>,
    client: crate::pulsar::Client,
    stop: watch::Receiver<bool>,
    name: &'static str,
    source: &'static str,
    subscribe: crate::pulsar::SubscribeOptions,
    max_in_flight: usize,
    handle: H,
) -> Result<(), WorkerError>
where
    H: Fn(Arc<Context>, Arc<crate::pulsar::consume::Delivery>) -> F + Send + Sync + 'static,
    F: Future<Output = crate::pulsar::consume::Disposition> + Send + 'static,
{
    let handler_ctx = ctx.clone();
    crate::pulsar::consume::run(
        client,
        crate::pulsar::consume::LoopOptions {
            name,
            subscribe,
            max_in_flight,
            drain_timeout: ctx.settings.worker.shutdown_timeout,
        },
        stop,
        ctx.metrics.clone(),
        ctx.health.clone(),
        move |delivery| {
            let ctx = handler_ctx.clone();
            let delivery = Arc::new(delivery);
            let verdict = handle(ctx.clone(), delivery.clone());
            // Boxed: the handler's state machine is kilobytes, and the consume loop would otherwise
            // copy it several times per message on its way into the loop's set of handlers.
            Box::pin(async move { poison::settle(&ctx, &delivery, source, verdict.await).await })
        },
    )
    .await
    .map_err(WorkerError::from)
}

/// Runs one loop; when it fails, tells the others to stop (and drain) too, so the process exits
/// with that error instead of serving on with a part missing.
async fn stop_all_on_error(
    task: impl Future<Output = Result<(), WorkerError>>,
    stop: Arc<watch::Sender<bool>>,
) -> Result<(), WorkerError> {
    let outcome = task.await;
    if outcome.is_err() {
        let _ = stop.send(true);
    }
    outcome
}

/// Runs both loops until `shutdown` resolves, then drains within `worker.shutdown_timeout`.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(crate::telemetry::Health::default());
    // Not ready until every loop has subscribed.
    for name in ["submit", "complete", "deadline"] {
        health.set(name, false);
    }
    let listener = tokio::net::TcpListener::bind(&settings.http.listen)
        .await
        .map_err(|e| {
            WorkerError::Http(format!("cannot listen on {}: {e}", settings.http.listen))
        })?;
    // Shared: a loop that fails (e.g. its first subscription is refused) stops the others too.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal_stop = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = signal_stop.send(true);
    });
    // Probes answer from the start (alive, not ready) while the broker may still be out of reach.
    let publisher_slot = Arc::new(tokio::sync::OnceCell::new());
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(crate::worker::probes::serve(
        listener,
        metrics.clone(),
        health.clone(),
        publisher_slot.clone(),
        settings.pulsar.result_topic.clone(),
        async move {
            let _ = http_stop.wait_for(|s| *s).await.map(|_| ());
        },
    ));
    let mut connect_stop = stop_rx.clone();
    let client = tokio::select! {
        client = crate::pulsar::connect_with(&settings.pulsar) => client?,
        _ = connect_stop.wait_for(|s| *s) => {
            http.abort();
            return Ok(());
        }
    };
    let publisher = Publisher::new(client.clone(), "ci-worker")
        .count_rebuilds(metrics.pulsar_reconnects.clone());
    // The probe pings over the same connection but with a producer of its own: a ping holds its
    // producer for up to the probe's timeout, and the results must not wait behind it.
    let probe = Publisher::new(client.clone(), "ci-worker-probe")
        .count_rebuilds(metrics.pulsar_reconnects.clone());
    let _ = publisher_slot.set(probe);
    let ci = CiClient::new(
        (!settings.ci.endpoint.is_empty()).then_some(settings.ci.endpoint.as_str()),
        settings.credentials(),
        settings.ci.request_timeout,
    )?;
    // Fail fast on a broker that refuses us (bad token, bad topic) instead of at the first result;
    // wait out one that is still starting.
    let mut check_stop = stop_rx.clone();
    if !publisher
        .wait_until_connected(&settings.pulsar.result_topic, &mut check_stop)
        .await?
    {
        http.abort();
        return Ok(());
    }
    let ctx = Arc::new(Context {
        recovery: recover::Recovery::new(settings.worker.recovery_lookback),
        finished: finished::Finished::default(),
        done: done::DoneRecorder::spawn(publisher.clone(), settings.pulsar.deadline_topic.clone()),
        failures: poison::Failures::default(),
        health,
        settings,
        publisher,
        ci,
        metrics,
    });

    tracing::info!(
        request_topic = %ctx.settings.pulsar.request_topic,
        callback_topic = %ctx.settings.pulsar.callback_topic,
        result_topic = %ctx.settings.pulsar.result_topic,
        max_in_flight = ctx.settings.worker.max_in_flight,
        "worker started"
    );
    let submit = tokio::spawn(stop_all_on_error(
        submission::run(ctx.clone(), client.clone(), stop_rx.clone()),
        stop_tx.clone(),
    ));
    let complete = tokio::spawn(stop_all_on_error(
        completion::run(ctx.clone(), client.clone(), stop_rx.clone()),
        stop_tx.clone(),
    ));
    let deadlines = tokio::spawn(stop_all_on_error(
        deadline::run(ctx.clone(), client.clone(), stop_rx),
        stop_tx,
    ));
    let (a, b, c) = tokio::join!(submit, complete, deadlines);
    // Bounded: a broker that went away must not hold up the exit.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ctx.done.flush()).await;
    ctx.publisher.close().await;
    http.abort();
    for outcome in [a, b, c] {
        outcome.map_err(|e| WorkerError::Task(e.to_string()))??;
    }
    tracing::info!("worker stopped");
    Ok(())
}
