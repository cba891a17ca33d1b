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
//! Each file imports only the ones listed before it, so the emulator reads bottom-up from the HTTP
//! routes to the job data; this file starts and stops it and holds nothing the others import.
//! - [`error`]: `ApiError` (a refused request) and the `<Error>` body CI writes for it; `EmulatorError`.
//! - [`faults`]: fault injection (rates from the configuration, markers in object keys).
//! - [`auth`]: signature verification against the configured key pairs.
//! - [`submit`]: the `<Request>` of `POST /jobs`, validated as CI validates it.
//! - [`media`]: the fake media processing: the `MediaInfo`/`MediaResult` a job reports, or its failure.
//! - [`job`]: one job: its state, IDs, CI's times and the `JobsDetail` CI shows for it.
//! - [`store`]: all jobs in memory: insert, the state changes, describe/list/cancel.
//! - [`notices`]: [`EmulatorEvent`]s for tests and tooling.
//! - [`events`]: the completion event body (XML/JSON) and its delivery (Pulsar or URL), with retries.
//! - [`shared`]: the state the handlers, timers and deliveries share.
//! - [`lifecycle`]: the timers that move a job `Submitted → Running → Success/Failed` and deliver its
//!   event.
//! - [`api`]: the HTTP surface (routing, Host and body checks, response shapes and headers).

mod api;
mod auth;
mod error;
mod events;
mod faults;
mod job;
mod lifecycle;
mod media;
mod notices;
mod shared;
mod store;
mod submit;

pub use error::EmulatorError;
pub use job::JobState;
pub use notices::EmulatorEvent;

use crate::config::Settings;
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
    shared: Arc<Shared>,
    stop: Shutdown,
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
        self.stop.trigger();
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
        self.stop.trigger();
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
    let stop = Shutdown::new();
    let deliverer = events::Deliverer::new(&settings, stop.clone());
    let shared = Arc::new(Shared {
        store: store::Store::new(),
        verifier,
        faults,
        deliverer,
        notices: notices::Notices::new(),
        shutdown: stop.clone(),
        settings,
    });
    if shared.verifier.is_anonymous() {
        tracing::warn!(
            "emulator: emulator.allow_anonymous = true: request signatures are NOT checked"
        );
    }
    let router = api::router(shared.clone());
    let stopped = stop.clone().triggered_owned();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
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

/// Runs the emulator until `shutdown` is triggered (the binary triggers it on SIGINT/SIGTERM), then
/// stops gracefully.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Result<(), EmulatorError> {
    let mut handle = start(settings).await?;
    let Some(mut server) = handle.server.take() else {
        return Err(EmulatorError::Join);
    };
    let outcome = tokio::select! {
        _ = shutdown.triggered() => {
            tracing::info!("emulator: shutting down");
            handle.stop.trigger();
            server.await
        }
        outcome = &mut server => outcome,
    };
    handle.stop.trigger();
    handle.shared.deliverer.close().await;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(EmulatorError::Serve(e)),
        Err(_) => Err(EmulatorError::Join),
    }
}
