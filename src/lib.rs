//! ci-worker: connects Apache Pulsar / TDMQ to Tencent Cloud Infinite (CI) media jobs.
//!
//! # Layout (the data path, in order)
//!
//! - [`request`]: the job-submission request a pipeline publishes (JSON), parsed and validated.
//! - [`correlation`]: the marker carrying `request_id` through CI's `UserData`, so no shared state is needed.
//! - [`ci`]: the CI protocol, pure parts apart from I/O: [`ci::sign`] (COS request signature),
//!   [`ci::xml`] (JSON ↔ CI's XML), [`ci::model`] (responses and error bodies) and [`ci::client`] (HTTP).
//! - [`completion`]: CI's completion events (XML or JSON, with all their quirks) parsed and
//!   normalized into a [`result::JobResult`].
//! - [`result`]: the one stable result schema republished to the results topic.
//! - [`pulsar_io`]: Pulsar client, producers and consumers (the only module that touches the broker API).
//! - [`worker`]: the two loops of `ci-worker run`: submission ([`worker::submit`]) and completion
//!   ([`worker::complete`]).
//! - [`emulator`]: `ci-worker emulator`, a local CI that verifies signatures, runs jobs and publishes
//!   completion events to Pulsar exactly as CI does.
//! - [`tools`]: `ci-worker submit`, a client that publishes a request and follows its results.
//! - [`metrics`], [`http`]: Prometheus metrics, `/healthz` and `/readyz` on `http.listen`.
//! - [`config`]: configuration (TOML file + `CI_WORKER__*` environment), validated at start-up.

pub mod bench;
pub mod ci;
pub mod completion;
pub mod config;
pub mod correlation;
pub mod emulator;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod metrics;
pub mod pulsar_io;
pub mod request;
pub mod result;
pub mod secret;
pub mod tools;
pub mod worker;
