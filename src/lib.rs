//! ci-worker: connects Apache Pulsar / TDMQ to Tencent Cloud Infinite (CI) media jobs.

pub mod callback;
pub mod ci;
pub mod config;
#[cfg(feature = "emulator")]
pub mod emulator;
#[cfg(test)]
mod fixtures;
pub mod pulsar;
pub mod request;
pub mod result;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod tools;
pub mod worker;
