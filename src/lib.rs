//! ci-worker: connects Apache Pulsar / TDMQ to Tencent Cloud Infinite (CI) media jobs.
//!
//! # Layout
//!
//! The top-level modules follow one request's way through the worker (request → CI → callback →
//! result), with the plumbing after them. Each imports only modules before it in this list; the one
//! exception is `fixtures` (last), which imports nothing and which the unit tests of `ci`,
//! `callback`, `result` and `worker` import.
//! `python3 scripts/module-graph.py` prints the import graph (`--files` file by file) and exits 1 on
//! any cycle; `scripts/test.sh` runs it.
//!
//! - [`secret`]: a string that never prints (secret key, session token, Pulsar JWT).
//! - [`ci`]: the CI protocol and nothing else: [`ci::sign`] (the COS request signature),
//!   [`ci::tree`] (the one tree type CI's documents are read into and a `<Request>` is built as),
//!   [`ci::lists`] (the elements Tencent's SDK types as lists: always arrays in results),
//!   [`ci::xml`] (CI's XML read and written), [`ci::response`] (job answers and error bodies),
//!   [`ci::rules`] (CI's job rules and its closed sets of values), [`ci::cam`] (the CAM actions
//!   each call needs), [`ci::client`] (the HTTP client: submit, describe, list, cancel, queues).
//! - [`cmq`]: TDMQ for CMQ, the queue CI's TDMQ callbacks go to, and nothing else: [`cmq::sign`]
//!   (the API 2.0 signature), [`cmq::api`] (answers and result codes), [`cmq::client`] (batch
//!   receive with long polling, batch delete, send, create queue).
//! - [`config`]: the configuration (TOML file + `CI_WORKER__*` environment + Tencent Cloud's
//!   credential variables), validated at start-up.
//! - [`request`]: the job-submission request (JSON) parsed, validated and turned into CI's
//!   `<Request>`; [`request::marker`] carries `request_id` through CI's `UserData`.
//! - [`callback`]: completion events coming in (XML or JSON) read into
//!   [`callback::event::CompletionEvent`]s.
//! - [`result`]: the one stable result schema ([`result::JobResult`]) and [`result::normalize`], CI's
//!   job → result, used by every path that publishes one.
//! - [`telemetry`]: Prometheus metrics and the consume loops' health (imports nothing of the crate).
//! - [`shutdown`]: the one stop signal every loop and server watches.
//! - [`credentials`]: where the CI/CMQ keys come from: the chain (keys, profile file, TKE OIDC, CVM role, `ci.credentials_file`)
//!   and the tasks keeping temporary ones current, into the [`ci::sign::SharedCredentials`] the
//!   clients sign with.
//! - [`pulsar`]: the only user of the `pulsar` crate: client, publisher, consumers, the consume loop.
//! - [`kafka`]: the librdkafka settings of the Kafka (CKafka) consumer and producer, built from the
//!   configuration (the worker's `kafka` ingress and the emulator create their clients from them).
//! - [`worker`]: `ci-worker run`: the wiring, one room per flow (submit, complete, deadline, the
//!   replica log, the `cmq`/`http` ingress) and what they share (settling a delivery, the pace of CI
//!   calls, the record format, bounded memories), and the HTTP probes.
//!
//! - [`doctor`]: `ci-worker doctor`: every external dependency the configuration names checked
//!   before a deployment runs (credentials, CI per bucket, the callback target, the Pulsar
//!   topics), read-only, one line per check.
//!
//! Apart from the product:
//! - `emulator` (cargo feature `emulator`, on by default): `ci-worker emulator`, a local CI that
//!   verifies signatures, runs jobs and delivers completion events as CI does.
//! - [`tools`]: `ci-worker submit`, `ci-worker health`, and `ci-worker bench` (`tools::bench`,
//!   cargo feature `bench`, on by default; it turns on `emulator`).
//! - `fixtures` (unit tests only): CI's documented examples from `tests/fixtures/ci-docs/`.
//!
//! `cargo build --no-default-features` builds the production binary (`run`, `config`, `submit`,
//! `health`), without the emulator and the bench.

pub mod callback;
pub mod ci;
pub mod cmq;
pub mod config;
pub mod credentials;
pub mod doctor;
#[cfg(feature = "emulator")]
pub mod emulator;
#[cfg(test)]
mod fixtures;
pub mod kafka;
pub mod pulsar;
pub mod request;
pub mod result;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod tools;
pub mod worker;
