//! How fast the worker calls CI, and how it retries: everything that paces a call rather than
//! deciding what it is for. The handlers see [`ci_calls::timed`] (every CI call), the
//! [`concurrency::ConcurrencyLimiter`] (around `POST /jobs`) and [`retry`] (the retry delays).
//!
//! - [`aimd`]: the two AIMD controllers, pure: concurrency of submissions, rate of CI calls.
//! - [`concurrency`]: the submissions in flight, a semaphore sized by the concurrency AIMD.
//! - [`rate`]: the pace of every CI call, the rate AIMD steering the [`token_bucket`].
//! - [`token_bucket`]: the token bucket itself (pure arithmetic and its shared, sleeping form).
//! - [`ci_calls`]: one CI call: wait for the pace, call, record metrics, tell the pace.
//! - [`retry`]: exponential backoff with full jitter, for `backon`.

pub mod aimd;
pub mod ci_calls;
pub mod concurrency;
pub mod rate;
pub mod retry;
pub mod token_bucket;
