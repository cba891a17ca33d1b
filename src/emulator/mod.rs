//! `ci-worker emulator`: a local Cloud Infinite media-job API (see `docs/emulator.md` and the
//! README's "The CI emulator"), with the TDMQ for CMQ queues CI writes completion events into.
//!
//! It serves `POST /jobs`, `GET /jobs/<id>[,<id>…]`, `GET /jobs?…` and `PUT /jobs/<id>?cancel` with
//! CI's response shapes, headers and error codes, verifies the COS request signature the official SDKs
//! send, runs each job through `Submitted → Running → Success/Failed` on tokio timers, and delivers
//! CI's `TaskFinish` completion event: with `CallBackType=TDMQ` into its CMQ queue `MqName`, read
//! over CMQ API 2.0 on `emulator.cmq_listen` (`emulator.tdmq_delivery = "cmq"`, the default) or
//! published to Pulsar (`"pulsar"`); with `CallBackType=Kafka` produced to the Kafka brokers of
//! `emulator.kafka_brokers`, into `CallBackKafkaConfig.Topic`; with a `CallBack` URL POSTed there.
//! State lives in memory only.
//!
//! # Layout
//! Each file imports only the ones listed before it, so the emulator reads bottom-up from the HTTP
//! routes to the job data; this file starts and stops it and holds nothing the others import.
//! - [`error`]: `ApiError` (a refused request) and the `<Error>` body CI writes for it; `EmulatorError`.
//! - [`faults`]: fault injection (rates from the configuration, markers in object keys) and a
//!   deployment gone wrong (refused CAM actions, unbound buckets, a paused media queue).
//! - [`metadata`]: the CVM instance metadata path: CAM role key sets that expire, the role listing.
//! - [`sts`]: STS `AssumeRoleWithWebIdentity` (TKE OIDC): checks the web identity token, issues
//!   expiring key sets.
//! - [`auth`]: signature verification against the configured key pairs and the issued key sets.
//! - [`submit`]: the `<Request>` of `POST /jobs`, validated as CI validates it.
//! - [`media`]: the fake media processing: the `MediaInfo`/`MediaResult` a job reports, or its failure.
//! - [`job`]: one job: its state, IDs, CI's times and the `JobsDetail` CI shows for it.
//! - [`store`]: all jobs in memory: insert, the state changes, describe/list/cancel.
//! - [`notices`]: [`EmulatorEvent`]s for tests and tooling.
//! - [`cmq_queues`]: the CMQ queues in memory: attributes, send, long-polled receive with visibility
//!   timeouts and receipt handles, delete, retention, counts.
//! - [`events`]: the completion event body (XML/JSON) and its delivery (CMQ queue, Pulsar, Kafka
//!   or URL), with retries.
//! - [`shared`]: the state the handlers, timers and deliveries share, and the job API's call counts.
//! - [`lifecycle`]: the timers that move a job `Submitted → Running → Success/Failed` and deliver its
//!   event.
//! - [`cmq_api`]: CMQ API 2.0 (`/v2/index.php`: signature, actions, CMQ's codes) and the outage
//!   switch `POST /_emulator/cmq/outage` for tests.
//! - [`api`]: the HTTP surface of CI (routing, Host and body checks, response shapes and headers) and
//!   the call counts `GET /_emulator/calls` for benchmarks.

mod api;
mod auth;
mod cmq_api;
mod cmq_queues;
mod error;
mod events;
mod faults;
mod job;
mod lifecycle;
mod media;
mod metadata;
mod notices;
mod shared;
mod store;
mod sts;
mod submit;

pub use error::EmulatorError;
pub use job::JobState;
pub use notices::EmulatorEvent;

use crate::config::{Settings, TdmqDelivery};
use crate::shutdown::Shutdown;
use shared::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// A running emulator: its address, an event feed and its shutdown. Dropping it shuts the emulator
/// down too (without waiting).
pub struct EmulatorHandle {
    addr: SocketAddr,
    cmq_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: Shutdown,
    server: Option<JoinHandle<std::io::Result<()>>>,
    cmq_server: Option<JoinHandle<std::io::Result<()>>>,
}

impl EmulatorHandle {
    /// The address the HTTP API listens on (the real port when `emulator.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the value for the worker's `ci.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the CMQ API listens on (the real port when `emulator.cmq_listen` asked for port
    /// 0); `None` with `emulator.tdmq_delivery = "pulsar"`, which serves no CMQ API.
    pub fn cmq_addr(&self) -> Option<SocketAddr> {
        self.cmq_addr
    }

    /// `http://<cmq_addr>`, the value for the worker's `cmq.endpoint`.
    pub fn cmq_endpoint(&self) -> Option<String> {
        self.cmq_addr.map(|a| format!("http://{a}"))
    }

    /// A feed of job state changes and callback outcomes, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EmulatorEvent> {
        self.shared.notices.subscribe()
    }

    /// Stops accepting requests (CI's API and CMQ's), lets in-flight requests finish (a CMQ long poll
    /// ends at once), stops job timers and pending deliveries, closes the Pulsar producers and waits
    /// for all of it.
    pub async fn shutdown(mut self) -> Result<(), EmulatorError> {
        self.stop.trigger();
        let api = join(self.server.take()).await;
        let cmq = join(self.cmq_server.take()).await;
        self.shared.deliverer.close().await;
        api.and(cmq)
    }
}

/// Waits for a server task; its failure as an error.
async fn join(task: Option<JoinHandle<std::io::Result<()>>>) -> Result<(), EmulatorError> {
    match task {
        Some(task) => match task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EmulatorError::Serve(e)),
            Err(_) => Err(EmulatorError::Join),
        },
        None => Ok(()),
    }
}

/// Serves `router` on `listener` until `stop`; a server that ends on its own (it failed) stops the
/// whole emulator, so that `run` returns instead of serving half.
fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: Shutdown,
) -> JoinHandle<std::io::Result<()>> {
    let stopped = stop.clone().triggered_owned();
    tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await;
        stop.trigger();
        result
    })
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), EmulatorError> {
    let bind_error = |source| EmulatorError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// The CMQ queues that exist from the start (`emulator.cmq_queues`, with
/// `emulator.cmq_visibility_timeout` and `emulator.cmq_max_unack_time`).
fn initial_queues(settings: &Settings) -> Result<cmq_queues::Queues, EmulatorError> {
    let e = &settings.emulator;
    let queues = cmq_queues::Queues::new();
    let mut attributes = cmq_queues::QueueAttributes::default();
    attributes
        .set("visibilityTimeout", e.cmq_visibility_timeout.as_secs())
        .map_err(|_| EmulatorError::InvalidSetting {
            key: "emulator.cmq_visibility_timeout",
            reason: format!("{:?} is not within 1s–12h", e.cmq_visibility_timeout),
        })?;
    attributes
        .set("msgRetentionSeconds", e.cmq_max_unack_time.as_secs())
        .map_err(|_| EmulatorError::InvalidSetting {
            key: "emulator.cmq_max_unack_time",
            reason: format!("{:?} is not within 30s–12h", e.cmq_max_unack_time),
        })?;
    let clock = cmq_queues::Clock::now();
    for name in &e.cmq_queues {
        queues
            .create(name, attributes, clock)
            .map_err(|err| EmulatorError::InvalidSetting {
                key: "emulator.cmq_queues",
                reason: match err {
                    cmq_queues::QueueError::Exists => {
                        format!("{name:?} is listed twice (CMQ names are case-insensitive)")
                    }
                    _ => format!(
                        "{name:?} is not a CMQ queue name (up to 64 letters, digits and -, \
                         starting with a letter)"
                    ),
                },
            })?;
    }
    Ok(queues)
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// Binds `settings.emulator.listen` (port 0 picks a free port) and, with `tdmq_delivery = "cmq"`,
/// `settings.emulator.cmq_listen` (likewise), and serves in the background.
pub async fn start(settings: Settings) -> Result<EmulatorHandle, EmulatorError> {
    let verifier = auth::Verifier::from_settings(&settings)?;
    let faults = faults::Faults::from_settings(&settings.emulator)?;
    let cmq = settings.emulator.tdmq_delivery == TdmqDelivery::Cmq;
    let queues = Arc::new(if cmq {
        initial_queues(&settings)?
    } else {
        cmq_queues::Queues::new()
    });
    let (listener, local) = bind(settings.emulator.listen).await?;
    let cmq_listener = if cmq {
        Some(bind(settings.emulator.cmq_listen).await?)
    } else {
        None
    };
    let stop = Shutdown::new();
    let deliverer = events::Deliverer::new(&settings, stop.clone(), queues.clone());
    let shared = Arc::new(Shared {
        store: store::Store::new(),
        verifier,
        faults,
        deliverer,
        notices: notices::Notices::new(),
        calls: shared::Calls::default(),
        cmq_queues: queues,
        shutdown: stop.clone(),
        settings,
    });
    if shared.verifier.is_anonymous() {
        tracing::warn!(
            "emulator: emulator.allow_anonymous = true: request signatures are NOT checked"
        );
    }
    let server = serve(listener, api::router(shared.clone()), stop.clone());
    let e = &shared.settings.emulator;
    tracing::info!(
        addr = %local,
        job_duration = ?e.job_duration,
        tdmq_delivery = e.tdmq_delivery.as_str(),
        "emulator: Cloud Infinite job API listening"
    );
    let (cmq_addr, cmq_server) = match cmq_listener {
        Some((listener, cmq_local)) => {
            let server = serve(listener, cmq_api::router(shared.clone()), stop.clone());
            tracing::info!(
                addr = %cmq_local,
                endpoint = %format!("http://{cmq_local}"),
                queues = ?shared.cmq_queues.names(),
                visibility_timeout = ?e.cmq_visibility_timeout,
                "emulator: CMQ API 2.0 listening (CallBackType=TDMQ events go into the queue MqName)"
            );
            (Some(cmq_local), Some(server))
        }
        None => {
            tracing::info!(
                callback_topic_template = %e.callback_topic_template,
                "emulator: CallBackType=TDMQ events go to Pulsar"
            );
            (None, None)
        }
    };
    Ok(EmulatorHandle {
        addr: local,
        cmq_addr,
        shared,
        stop,
        server: Some(server),
        cmq_server,
    })
}

/// Runs the emulator until `shutdown` is triggered (the binary triggers it on SIGINT/SIGTERM) or a
/// server fails, then stops gracefully.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Result<(), EmulatorError> {
    let handle = start(settings).await?;
    tokio::select! {
        _ = shutdown.triggered() => tracing::info!("emulator: shutting down"),
        _ = handle.stop.triggered() => {}
    }
    handle.shutdown().await
}
