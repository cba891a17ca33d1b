//! TDMQ for CMQ, the queue CI's `CallBackType=TDMQ` writes completion events into, spoken over CMQ
//! API 2.0 (`POST /v2/index.php`; the pages are `cmq-*.md` in the reference). Like [`crate::ci`], the
//! protocol and nothing of the application: the worker's CMQ ingress and the emulator's CMQ API both
//! build on it.
//!
//! - [`sign`]: the request signature (HmacSHA1 / HmacSHA256), pure, with the documents' examples.
//! - [`api`]: the answers (`code`/`message`/`requestId`, messages, delete failures), the result codes.
//! - [`client`]: the HTTP client: batch receive (long polling), batch delete, send, create queue.

pub mod api;
pub mod client;
pub mod sign;
