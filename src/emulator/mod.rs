//! `ci-worker emulator`: a local Cloud Infinite media-job API (see `docs/emulator.md`, merged into the
//! README's "Emulator" section).
//!
//! It serves `POST /jobs`, `GET /jobs/<id>[,<id>…]`, `GET /jobs?…` and `PUT /jobs/<id>?cancel` with
//! CI's response shapes, headers and error codes, verifies the COS request signature the official SDKs
//! send, runs each job through `Submitted → Running → Success/Failed` on tokio timers, and publishes
//! CI's `TaskFinish` completion event to Pulsar (`CallBackType=TDMQ`) or POSTs it to the job's
//! `CallBack` URL. State lives in memory only.
//!
//! # Layout
//! - [`api`]: the HTTP surface (routing, Host and body checks, response shapes and headers).
//! - [`auth`]: signature verification against the configured key pairs.
//! - [`submit`]: the `<Request>` of `POST /jobs`, validated as CI validates it.
//! - [`store`]: jobs, their lifecycle, describe/list/cancel and the `JobsDetail` CI shows for them.
//! - [`events`]: the completion event body (XML/JSON) and its delivery (Pulsar or URL), with retries.
//! - [`faults`]: fault injection (rates from the configuration, markers in object keys).

mod api;
mod auth;
mod events;
mod faults;
mod store;
mod submit;

/// CI's key order for event trees, shared with the benchmark's synthetic events.
pub(crate) use store::sorted_keys;

pub use store::JobState;

use crate::config::Settings;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Why the emulator could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("emulator: invalid listen address {0:?} (expected e.g. 127.0.0.1:9000)")]
    InvalidListen(String),
    #[error("emulator: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "emulator: no credentials configured: set TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY \
         (or ci.secret_id/ci.secret_key, or [[emulator.credentials]]), or set \
         emulator.allow_anonymous = true to accept unsigned requests"
    )]
    NoCredentials,
    #[error("emulator: invalid setting {key}: {reason}")]
    InvalidSetting { key: &'static str, reason: String },
    #[error("emulator: HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("emulator: server task panicked or was cancelled")]
    Join,
}

/// Something observable that happened inside the emulator, for tests and tooling
/// ([`EmulatorHandle::subscribe`]): every state change of every job and the fate of every callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmulatorEvent {
    /// A job entered `state` (`Submitted` on creation, then `Running`, `Success`/`Failed` or `Cancel`).
    StateChanged { job_id: String, state: JobState },
    /// A completion event was stored by the broker (`target` is the Pulsar topic) or accepted by the
    /// callback URL (`target` is the URL); `copy` is 1, or 2 for an injected duplicate.
    CallbackDelivered {
        job_id: String,
        target: String,
        copy: u32,
    },
    /// The job's completion event was deliberately not sent (`__lost__` in the input object key).
    CallbackSuppressed { job_id: String },
    /// Delivery was abandoned after retrying (logged as an error too).
    CallbackFailed { job_id: String, error: String },
}

/// State shared by the HTTP handlers, the job timers and the deliveries.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) store: store::Store,
    pub(crate) verifier: auth::Verifier,
    pub(crate) faults: faults::Faults,
    pub(crate) deliverer: events::Deliverer,
    pub(crate) notices: broadcast::Sender<EmulatorEvent>,
    /// Flips to `true` once on shutdown; every background task watches it.
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn notify(&self, event: EmulatorEvent) {
        // No subscriber is the normal case outside tests.
        let _ = self.notices.send(event);
    }
}

/// A running emulator: its address, an event feed and its shutdown. Dropping it shuts the emulator
/// down too (without waiting).
pub struct EmulatorHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<std::io::Result<()>>>,
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

    /// A feed of job state changes and callback outcomes, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EmulatorEvent> {
        self.shared.notices.subscribe()
    }

    /// Stops accepting requests, lets in-flight requests finish, stops job timers and pending
    /// deliveries, closes the Pulsar producers and waits for all of it.
    pub async fn shutdown(mut self) -> Result<(), EmulatorError> {
        let _ = self.stop.send(true);
        let result = match self.server.take() {
            Some(task) => match task.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(EmulatorError::Serve(e)),
                Err(_) => Err(EmulatorError::Join),
            },
            None => Ok(()),
        };
        self.shared.deliverer.close().await;
        result
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds `settings.emulator.listen` (port 0 picks a free port) and serves in the background.
pub async fn start(settings: Settings) -> Result<EmulatorHandle, EmulatorError> {
    let listen = settings.emulator.listen.clone();
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| EmulatorError::InvalidListen(listen.clone()))?;
    let verifier = auth::Verifier::from_settings(&settings)?;
    let faults = faults::Faults::from_settings(&settings.emulator)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| EmulatorError::Bind {
            addr: listen.clone(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind {
            addr: listen.clone(),
            source,
        })?;
    let (stop, stop_rx) = watch::channel(false);
    let (notices, _) = broadcast::channel(1024);
    let deliverer = events::Deliverer::new(&settings, stop_rx.clone());
    let shared = Arc::new(Shared {
        store: store::Store::new(),
        verifier,
        faults,
        deliverer,
        notices,
        shutdown: stop_rx.clone(),
        settings,
    });
    if shared.verifier.is_anonymous() {
        tracing::warn!(
            "emulator: emulator.allow_anonymous = true: request signatures are NOT checked"
        );
    }
    let router = api::router(shared.clone());
    let mut stop_signal = stop_rx;
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_signal.wait_for(|stopped| *stopped).await;
            })
            .await
    });
    tracing::info!(
        addr = %local,
        job_duration_ms = shared.settings.emulator.job_duration_ms,
        callback_topic_template = %shared.settings.emulator.callback_topic_template,
        "emulator: Cloud Infinite job API listening"
    );
    Ok(EmulatorHandle {
        addr: local,
        shared,
        stop,
        server: Some(server),
    })
}

/// Runs the emulator until `shutdown` completes (the binary passes SIGINT/SIGTERM), then stops
/// gracefully.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), EmulatorError> {
    let mut handle = start(settings).await?;
    let Some(mut server) = handle.server.take() else {
        return Err(EmulatorError::Join);
    };
    let outcome = tokio::select! {
        _ = shutdown => {
            tracing::info!("emulator: shutting down");
            let _ = handle.stop.send(true);
            server.await
        }
        outcome = &mut server => outcome,
    };
    let _ = handle.stop.send(true);
    handle.shared.deliverer.close().await;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(EmulatorError::Serve(e)),
        Err(_) => Err(EmulatorError::Join),
    }
}
