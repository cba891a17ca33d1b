//! Property names the worker writes on dead letters and deadline records (documented in the README).

/// Why the message was dead-lettered.
pub const DLQ_REASON: &str = "ci-worker-dlq-reason";
/// The topic the message was consumed from.
pub const SOURCE_TOPIC: &str = "ci-worker-source-topic";
/// The message id it had there (`ledger:entry:partition[:batch]`).
pub const SOURCE_MESSAGE_ID: &str = "ci-worker-source-message-id";
/// RFC 3339 time of dead-lettering.
pub const DLQ_AT: &str = "ci-worker-dlq-at";
/// Records on the deadline topic: `deadline` (due when the job should be checked) or `done`
/// (the job's final result is out; its deadline needs no check).
pub const RECORD: &str = "ci-worker-record";
/// Poison messages: how many deliveries failed, and when the first did.
pub const ATTEMPTS: &str = "ci-worker-attempts";
pub const FIRST_FAILURE_AT: &str = "ci-worker-first-failure-at";
