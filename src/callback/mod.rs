//! Completion events coming in: CI's TaskFinish / WorkflowFinish bodies (XML or JSON, with all
//! their quirks) read into [`event::CompletionEvent`]s. [`crate::result::normalize`] turns them into
//! results. [`ingress`] holds what the `cmq` and `http` ingress decide before storing an event.

pub mod event;
pub mod ingress;
