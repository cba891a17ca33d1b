//! `ci-worker run`: three independent consume loops over one Pulsar client, plus the HTTP probes.
//! This file only wires them; each path's decisions are in its handler.
//!
//! Handlers (one per consumed topic; they never import each other):
//! - [`submission`]: requests → validate → CI `POST /jobs` → `submitted` event and a deadline (or a
//!   `rejected` result, or a dead letter).
//! - [`completion`]: CI's completion events → normalized results; finals once per job.
//! - [`deadline_check`]: deadline records come due → describe the jobs at CI whose final result did
//!   not come → their finals, new deadlines, or `timed_out`.
//! - [`done_reader`]: every replica's `done` records → the jobs known finished here.
//!
//! Ingress sources (`worker.callback_ingress`), which store CI's completion events in the callback
//! topic the completion handler reads, so that every event takes the one completion path:
//! - [`cmq_ingress`]: reads the TDMQ for CMQ queue CI writes to (`cmq`).
//! - [`http_ingress`]: `POST /ci/callback/<token>`, for `CallBackType=Url` (`http`).
//! - `pulsar`: nothing to run; something else (CI through a bridge) writes the callback topic.
//!
//! Shared pieces the handlers import (none of them imports a handler):
//! - [`context`]: [`Context`] (settings, I/O, metrics, in-process state) and [`WorkerError`].
//! - [`io`]: the [`io::Broker`] and [`io::CiApi`] traits the context's I/O goes through.
//! - [`serve`]: one consume loop ([`crate::pulsar::consume`]) running a handler behind the poison guard.
//! - [`results`]: publishing a result, a final result once per job, and the verdict of a publish.
//! - [`deadline_record`]: deadline records (a batch of jobs each) and how they are scheduled.
//! - [`done_records`]: batched records telling every replica that a job's final is out.
//! - [`duplicates`]: the window of jobs whose final result is out ([`duplicates::FinishedJobs`]).
//! - [`recover`]: finding a job an earlier attempt or process created, by its correlation marker.
//! - [`ci_calls`]: the metrics of every CI call.
//! - [`dead_letter`]: moving a message to the dead-letter topic.
//! - [`poison`] and [`failure_history`]: a message that keeps failing becomes a dead letter.
//! - [`retry`]: backoff with jitter.
//! - [`probes`]: `/healthz`, `/readyz`, `/metrics`.
//! - `test_doubles`, `test_context` (unit tests only): an in-memory broker and a scripted CI, and a
//!   context over them.
//!
//! Every loop acknowledges a message only after its outcome is stored on the broker, and on shutdown
//! nacks whatever did not finish within `worker.shutdown_timeout` (so it is redelivered, never lost).

pub mod adaptive;
pub mod attempts;
pub mod ci_calls;
pub mod cmq_ingress;
pub mod completion;
pub mod context;
pub mod dead_letter;
pub mod deadline_check;
pub mod deadline_record;
pub mod done_reader;
pub mod done_records;
pub mod duplicates;
pub mod failure_history;
pub mod group_commit;
pub mod http_ingress;
pub mod io;
pub mod poison;
pub mod probes;
pub mod recover;
pub mod results;
pub mod retry;
pub mod serve;
pub mod submission;
pub mod takeover;
#[cfg(test)]
mod test_context;
#[cfg(test)]
mod test_doubles;

pub use context::{Context, WorkerError};

use crate::ci::client::CiClient;
use crate::ci::sign::{Credentials, SharedCredentials};
use crate::cmq::client::CmqClient;
use crate::config::{CallbackIngress, Settings};
use crate::pulsar::{Batching, Publisher};
use crate::shutdown::Shutdown;
use crate::telemetry::{Health, Metrics};
use std::future::Future;
use std::sync::Arc;

/// After the loops have drained: how long flushing the done records and closing the producers may
/// take. With the consume loop's release and close ([`crate::pulsar::consume::RELEASE_TIMEOUT`],
/// [`crate::pulsar::consume::CLOSE_TIMEOUT`]) it makes the bound README Guarantees states: a
/// shutdown ends within `worker.shutdown_timeout` + 5 s.
const EXIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Says at start-up when CI is told to send events where no configured ingress reads them.
fn warn_on_mismatched_callbacks(settings: &Settings) {
    use crate::ci::rules::CallbackType;
    let ingress = &settings.worker.callback_ingress;
    match settings.ci.callback_type {
        CallbackType::Url if !settings.has_ingress(CallbackIngress::Http) => tracing::warn!(
            callback_url = %settings.ci.callback_url,
            ?ingress,
            "ci.callback_type = Url but worker.callback_ingress has no http: events reach this worker only if something at ci.callback_url stores them in the callback topic"
        ),
        CallbackType::Tdmq
            if !settings.has_ingress(CallbackIngress::Cmq)
                && !settings.has_ingress(CallbackIngress::Pulsar) =>
        {
            tracing::warn!(
                ?ingress,
                "ci.callback_type = TDMQ but worker.callback_ingress has neither cmq nor pulsar: results will come only from the deadline's describe calls"
            )
        }
        _ => {}
    }
}

/// Runs one loop; when it fails, tells the others to stop (and drain) too, so the process exits
/// with that error instead of serving on with a part missing.
async fn stop_all_on_error(
    task: impl Future<Output = Result<(), WorkerError>>,
    stop: Shutdown,
) -> Result<(), WorkerError> {
    let outcome = task.await;
    if outcome.is_err() {
        stop.trigger();
    }
    outcome
}

/// Runs both loops until `shutdown` is triggered, then drains within `worker.shutdown_timeout`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Result<(), WorkerError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    // Not ready until every loop has subscribed.
    for name in ["submit", "complete", "deadline", done_reader::HEALTH_NAME] {
        health.set(name, false);
    }
    if settings.has_ingress(CallbackIngress::Cmq) {
        health.set(cmq_ingress::HEALTH_NAME, false);
    }
    warn_on_mismatched_callbacks(&settings);
    let listener = tokio::net::TcpListener::bind(&settings.http.listen)
        .await
        .map_err(|e| {
            WorkerError::Http(format!("cannot listen on {}: {e}", settings.http.listen))
        })?;
    // Shared: a loop that fails (e.g. its first subscription is refused) stops the others too.
    let stop = shutdown.child();
    // Probes answer from the start (alive, not ready) while the broker may still be out of reach.
    let publisher_slot = Arc::new(tokio::sync::OnceCell::new());
    let ingress_slot = Arc::new(tokio::sync::OnceCell::new());
    let ingress_routes = settings.has_ingress(CallbackIngress::Http).then(|| {
        http_ingress::HttpIngress::new(
            ingress_slot.clone(),
            &settings.http.callback_token,
            settings.pulsar.callback_topic.clone(),
            metrics.clone(),
        )
        .router()
    });
    let http = tokio::spawn(probes::serve(
        listener,
        metrics.clone(),
        health.clone(),
        publisher_slot.clone(),
        settings.pulsar.result_topic.clone(),
        ingress_routes,
        stop.clone(),
    ));
    let client = tokio::select! {
        client = crate::pulsar::connect_with(&settings.pulsar) => client?,
        _ = stop.triggered() => {
            http.abort();
            return Ok(());
        }
    };
    let mut publisher = Publisher::new(client.clone(), "ci-worker")
        .count_rebuilds(metrics.pulsar_reconnects.clone());
    if settings.pulsar.result_batching {
        publisher = publisher.batch(
            &settings.pulsar.result_topic,
            Batching {
                max_messages: settings.pulsar.result_batch_max_messages,
                max_delay: std::time::Duration::from_millis(settings.pulsar.result_batch_delay_ms),
            },
        );
    }
    // The probe pings over the same connection but with a producer of its own: a ping holds its
    // producer for up to the probe's timeout, and the results must not wait behind it.
    let probe = Publisher::new(client.clone(), "ci-worker-probe")
        .count_rebuilds(metrics.pulsar_reconnects.clone());
    let _ = publisher_slot.set(probe);
    let _ = ingress_slot.set(publisher.clone());
    // One key set for CI and CMQ, kept current when it is temporary (file, CVM role).
    let credentials = crate::credentials::start(&settings, &stop)
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))?;
    let cmq = if settings.has_ingress(CallbackIngress::Cmq) {
        Some(
            CmqClient::with_shared(
                &settings.cmq_endpoint(),
                credentials.clone().unwrap_or_else(|| {
                    // Unsigned: CMQ refuses, and the ingress says why at start.
                    SharedCredentials::new(Credentials {
                        secret_id: String::new(),
                        secret_key: Default::default(),
                        session_token: None,
                    })
                }),
                settings.cmq.signature_method,
                settings.ci.request_timeout,
            )
            .map_err(|e| WorkerError::Task(e.to_string()))?,
        )
    } else {
        None
    };
    let ci = CiClient::with_shared(
        (!settings.ci.endpoint.is_empty()).then_some(settings.ci.endpoint.as_str()),
        credentials,
        settings.ci.request_timeout,
    )?;
    // Fail fast on a broker that refuses us (bad token, bad topic) instead of at the first result;
    // wait out one that is still starting.
    if !publisher
        .wait_until_connected(&settings.pulsar.result_topic, &stop)
        .await?
    {
        http.abort();
        return Ok(());
    }
    // The attempt records rely on the done topic being one ordered log.
    let done_partitions = client
        .for_topic(&settings.pulsar.done_topic)
        .await?
        .lookup_partitioned_topic_number(&settings.pulsar.done_topic)
        .await
        .map_err(|e| {
            WorkerError::Task(format!("pulsar.done_topic: partition lookup failed: {e}"))
        })?;
    if done_partitions > 0 {
        http.abort();
        return Err(WorkerError::Task(format!(
            "pulsar.done_topic {} has {done_partitions} partitions; it must not be partitioned (the attempt records on it rely on one ordered log)",
            settings.pulsar.done_topic
        )));
    }
    let ctx = Arc::new(Context::new(settings, publisher, ci, metrics, health));

    tracing::info!(
        request_topic = %ctx.settings.pulsar.request_topic,
        callback_topic = %ctx.settings.pulsar.callback_topic,
        result_topic = %ctx.settings.pulsar.result_topic,
        max_in_flight = ctx.settings.worker.max_in_flight,
        "worker started"
    );
    // The done reader starts first and stops last: a submission reads its attempt record back
    // through it, so it must be subscribed before the first one and outlive the last.
    let reader_stop = Shutdown::new();
    let done = tokio::spawn(stop_all_on_error(
        done_reader::run(ctx.clone(), client.clone(), reader_stop.clone()),
        stop.clone(),
    ));
    tokio::select! {
        _ = ctx.health.ok(done_reader::HEALTH_NAME) => {
            ctx.attempts.reading_since(std::time::SystemTime::now());
        }
        // Stopping, or the reader failed (its error is reported below): the loops start and drain.
        _ = stop.triggered() => {}
    }
    let submit = tokio::spawn(stop_all_on_error(
        submission::run(ctx.clone(), client.clone(), stop.clone()),
        stop.clone(),
    ));
    let complete = tokio::spawn(stop_all_on_error(
        completion::run(ctx.clone(), client.clone(), stop.clone()),
        stop.clone(),
    ));
    let deadlines = tokio::spawn(stop_all_on_error(
        deadline_check::run(ctx.clone(), client.clone(), stop.clone()),
        stop.clone(),
    ));
    let cmq_reader = cmq.map(|cmq| tokio::spawn(cmq_ingress::run(ctx.clone(), cmq, stop)));
    let (a, b, c) = tokio::join!(submit, complete, deadlines);
    reader_stop.trigger();
    let d = done.await;
    if let Some(reader) = cmq_reader {
        // Its loops watch the same stop; a batch in hand is bounded by the drain.
        let _ = reader.await;
    }
    // Bounded: a broker that went away must not hold up the exit. A done record not stored costs
    // the job's deadline one describe call later; a producer not closed ends with the connection.
    let _ = tokio::time::timeout(EXIT_TIMEOUT, async {
        ctx.done_records.flush().await;
        ctx.broker.close().await;
    })
    .await;
    http.abort();
    for outcome in [a, b, c, d] {
        outcome.map_err(|e| WorkerError::Task(e.to_string()))??;
    }
    tracing::info!("worker stopped");
    Ok(())
}
