//! The one stable result schema ([`JobResult`], `schemas/result.schema.json`) and the mapping of a CI
//! job onto it ([`normalize`]), used by every path that publishes a result: submission (`submitted`,
//! `rejected`), completion events and the deadline's own describe call.

pub mod normalize;
mod schema;

pub use schema::*;
