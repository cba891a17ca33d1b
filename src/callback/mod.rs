//! Completion events coming in: CI's TaskFinish / WorkflowFinish bodies (XML or JSON, with all
//! their quirks) read into [`event::CompletionEvent`]s. [`crate::result::normalize`] turns them into
//! results.

pub mod event;
