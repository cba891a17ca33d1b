//! `ci-worker run`: three consume loops over one Pulsar client (requests, completion events, due
//! deadlines), the ingress sources, and the HTTP probes. This file only wires them; each path's
//! decisions are in its room. How replicas share the work without telling each other anything is
//! `docs/design/replicas.md`: each request partition has one owner (Failover), copies of a job's
//! events reach one replica (Key_Shared by job id), and a job's deadline is cancelled by whoever
//! finishes it.
//!
//! The flows (each a consume loop and its handler; they never import each other):
//! - [`submit`]: requests → validate → the request's deadline → CI `POST /jobs` → `submitted` event
//!   (or a `rejected` result, or a dead letter).
//! - [`complete`]: CI's completion events, from each source of `worker.callback_ingress` (the
//!   callback topic, a CMQ queue, HTTP POSTs) → normalized results; finals once per job; the job's
//!   deadline cancelled.
//! - [`deadline`]: deadline records come due → describe the jobs at CI whose final result did not
//!   come → their finals, new deadlines, or `timed_out`.
//!
//! What the flows share (none of it imports a flow, except through [`context`]):
//! - [`context`]: [`Context`] (settings, I/O, metrics, in-process state) and [`WorkerError`].
//! - [`io`]: the [`io::Broker`] and [`io::CiApi`] traits the context's I/O goes through.
//! - [`settle`]: a consume loop running a handler, and what becomes of its verdict (ack, retry,
//!   poison, dead letter).
//! - [`results`]: publishing a result, a final result once per job, and the verdict of a publish.
//! - [`record`]: the one format of everything written on the internal topics.
//! - [`pace`]: the pace and concurrency of CI calls, their metrics, and the retry delays.
//! - [`bounded`]: the one kind of bounded memory every in-process memory is.
//! - [`finished`]: the jobs whose final this replica published.
//! - [`probes`]: `/healthz`, `/readyz`, `/metrics`.
//! - `test_doubles`, `test_context` (unit tests only): an in-memory broker and a scripted CI, and a
//!   context over them.
//!
//! Every loop acknowledges a message only after its outcome is stored on the broker, and on shutdown
//! nacks whatever did not finish within `worker.shutdown_timeout` (so it is redelivered, never lost).

pub mod bounded;
pub mod complete;
pub mod context;
pub mod deadline;
pub mod finished;
pub mod io;
pub mod pace;
pub mod probes;
pub mod record;
pub mod results;
pub mod settle;
pub mod submit;
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
use complete::ingress::{cmq, http, kafka};
use std::future::Future;
use std::sync::Arc;

/// After the loops have drained: how long closing the producers may take. With the consume loop's release and close ([`crate::pulsar::consume::RELEASE_TIMEOUT`],
/// [`crate::pulsar::consume::CLOSE_TIMEOUT`]) it makes the bound README Guarantees states: a
/// shutdown ends within `worker.shutdown_timeout` + 5 s.
const EXIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Says at start-up when CI is told to send events where no configured ingress reads them.
fn warn_on_mismatched_callbacks(settings: &Settings) {
    if let Some(mismatch) = settings.callback_mismatch() {
        tracing::warn!(
            callback_url = settings.ci.callback_url.as_ref().map_or("", |u| u.as_str()),
            ingress = ?settings.worker.callback_ingress,
            "{}",
            mismatch.consequence()
        );
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

/// Runs the loops until `shutdown` is triggered, then drains within `worker.shutdown_timeout`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Result<(), WorkerError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    // Not ready until every loop has subscribed.
    for name in ["submit", "deadline"] {
        health.set(name, false);
    }
    if settings.has_ingress(CallbackIngress::Pulsar) {
        health.set(complete::ingress::pulsar::HEALTH_NAME, false);
    }
    if settings.has_ingress(CallbackIngress::Cmq) {
        health.set(cmq::HEALTH_NAME, false);
    }
    if settings.has_ingress(CallbackIngress::Kafka) {
        health.set(kafka::HEALTH_NAME, false);
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
    let worker_slot = Arc::new(tokio::sync::OnceCell::new());
    let ingress_routes = settings.has_ingress(CallbackIngress::Http).then(|| {
        http::HttpIngress::new(
            worker_slot.clone(),
            &settings.http.callback_token,
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
                max_delay: settings.pulsar.result_batch_delay,
            },
        );
    }
    // The probe pings over the same connection but with a producer of its own: a ping holds its
    // producer for up to the probe's timeout, and the results must not wait behind it.
    let probe = Publisher::new(client.clone(), "ci-worker-probe")
        .count_rebuilds(metrics.pulsar_reconnects.clone());
    let _ = publisher_slot.set(probe);
    // One key set for CI and CMQ, kept current when it is temporary (file, CVM role).
    let credentials = crate::credentials::start(&settings, &stop)
        .await
        .map_err(|e| WorkerError::Task(e.to_string()))?;
    let cmq_client = if settings.has_ingress(CallbackIngress::Cmq) {
        Some(
            CmqClient::with_shared(
                &settings.cmq_endpoint(),
                credentials.clone().unwrap_or_else(|| {
                    // Unsigned: CMQ refuses each call; said once here.
                    tracing::error!(
                        "cmq ingress: no credentials from any source (keys, profile file, TKE OIDC, CVM role, ci.credentials_file): CMQ refuses unsigned requests"
                    );
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
        settings.ci.endpoint.as_ref().map(|u| u.as_str()),
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
    // A deadline's position names its partition only on a topic that is not partitioned (the
    // crate's partitioned producer does not say where a message went).
    let deadline_partitions = client
        .partitions(&settings.pulsar.deadline_topic)
        .await
        .map_err(|e| WorkerError::Task(format!("pulsar.deadline_topic: {e}")))?;
    if deadline_partitions > 0 {
        http.abort();
        return Err(WorkerError::Task(format!(
            "pulsar.deadline_topic {} has {deadline_partitions} partitions; it must not be partitioned (a job's marker names its deadline record by ledger and entry)",
            settings.pulsar.deadline_topic
        )));
    }
    let ctx = Arc::new(Context::new(settings, publisher, ci, metrics, health));
    let _ = worker_slot.set(ctx.clone());

    tracing::info!(
        request_topic = %ctx.settings.pulsar.request_topic,
        callback_ingress = ?ctx.settings.worker.callback_ingress,
        result_topic = %ctx.settings.pulsar.result_topic,
        max_in_flight = ctx.settings.worker.max_in_flight,
        "worker started"
    );
    let submit = tokio::spawn(stop_all_on_error(
        submit::run(ctx.clone(), client.clone(), stop.clone()),
        stop.clone(),
    ));
    let callback_topic = ctx.settings.has_ingress(CallbackIngress::Pulsar).then(|| {
        tokio::spawn(stop_all_on_error(
            complete::ingress::pulsar::run(ctx.clone(), client.clone(), stop.clone()),
            stop.clone(),
        ))
    });
    let deadlines = tokio::spawn(stop_all_on_error(
        deadline::run(ctx.clone(), client.clone(), stop.clone()),
        stop.clone(),
    ));
    let kafka_reader = ctx.settings.has_ingress(CallbackIngress::Kafka).then(|| {
        let (ctx, reader_stop) = (ctx.clone(), stop.clone());
        tokio::spawn(stop_all_on_error(
            async move {
                kafka::run(ctx, reader_stop)
                    .await
                    .map_err(|e| WorkerError::Task(format!("kafka ingress: {e}")))
            },
            stop.clone(),
        ))
    });
    let cmq_reader = cmq_client.map(|client| tokio::spawn(cmq::run(ctx.clone(), client, stop)));
    let (a, c) = tokio::join!(submit, deadlines);
    let b = match callback_topic {
        Some(task) => task.await,
        None => Ok(Ok(())),
    };
    if let Some(task) = cmq_reader {
        // Its loops watch the same stop; a batch in hand is bounded by the drain.
        let _ = task.await;
    }
    let d = match kafka_reader {
        Some(task) => task.await,
        None => Ok(Ok(())),
    };
    // Bounded: a broker that went away must not hold up the exit; a producer not closed ends with
    // the connection.
    let _ = tokio::time::timeout(EXIT_TIMEOUT, ctx.broker.close()).await;
    http.abort();
    for outcome in [a, b, c, d] {
        outcome.map_err(|e| WorkerError::Task(e.to_string()))??;
    }
    tracing::info!("worker stopped");
    Ok(())
}
