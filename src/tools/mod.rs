//! Tools around the worker, apart from the product: `ci-worker submit` ([`submit`]), `ci-worker
//! health` ([`health`], the probe container healthchecks run) and, with the `bench` feature,
//! `ci-worker bench` ([`bench`]).

#[cfg(feature = "bench")]
pub mod bench;
pub mod health;
pub mod submit;
