//! Tools around the worker, apart from the product: `ci-worker submit` ([`submit`]) and, with the
//! `bench` feature, `ci-worker bench` ([`bench`]).

#[cfg(feature = "bench")]
pub mod bench;
pub mod submit;
