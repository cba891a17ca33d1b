//! Property names the worker writes on dead letters (documented in the README). Its internal records
//! carry no properties: their payload says what they are (`crate::worker::record`).

/// Why the message was dead-lettered.
pub const DLQ_REASON: &str = "ci-worker-dlq-reason";
/// The topic the message was consumed from.
pub const SOURCE_TOPIC: &str = "ci-worker-source-topic";
/// The message id it had there (`ledger:entry:partition[:batch]`).
pub const SOURCE_MESSAGE_ID: &str = "ci-worker-source-message-id";
/// RFC 3339 time of dead-lettering.
pub const DLQ_AT: &str = "ci-worker-dlq-at";
/// Poison messages: how many deliveries failed, and when the first did.
pub const ATTEMPTS: &str = "ci-worker-attempts";
pub const FIRST_FAILURE_AT: &str = "ci-worker-first-failure-at";
