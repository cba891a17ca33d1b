//! The emulator's two errors: [`ApiError`], a refused request, which [`error_body`] writes as CI's
//! `<Error>` document, and [`EmulatorError`], an emulator that cannot start or stops abnormally.

use crate::ci::response::{error_xml, CiErrorBody};
use crate::ci::tree::Node;
use crate::ci::xml;
use axum::http::StatusCode;

/// Why the emulator could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("emulator: invalid listen address {0:?} (expected e.g. 127.0.0.1:9000)")]
    InvalidListen(String),
    #[error("emulator: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "emulator: no credentials configured: set TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY \
         (or ci.secret_id/ci.secret_key, or [[emulator.credentials]]), or set \
         emulator.allow_anonymous = true to accept unsigned requests"
    )]
    NoCredentials,
    #[error("emulator: invalid setting {key}: {reason}")]
    InvalidSetting { key: &'static str, reason: String },
    #[error("emulator: HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("emulator: server task panicked or was cancelled")]
    Join,
}

/// A refusal with CI's code; the request id is added when the response is written.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub(crate) fn invalid_url(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "InvalidUrl", message)
    }
}

/// CI's `<Error>` (error-codes.md: `Code`, `Message`, `RequestId`, `TraceId`) with COS's `Resource`
/// (the host and path) after `Message`: the official Python SDK reads an error body only when it has a
/// `Resource` (otherwise every code reads "Unknown"), which says CI's gateway writes one as COS does.
pub(crate) fn error_body(err: &CiErrorBody, resource: &str) -> String {
    let body = Node::Map(vec![
        ("Code".into(), err.code.as_str().into()),
        ("Message".into(), err.message.as_str().into()),
        ("Resource".into(), resource.into()),
        ("RequestId".into(), err.request_id.as_str().into()),
        ("TraceId".into(), err.trace_id.as_str().into()),
    ]);
    match xml::to_xml("Error", &body) {
        Ok(x) => format!("<?xml version='1.0' encoding='utf-8' ?>\n{x}"),
        // A character XML cannot carry (from a client's input echoed in the message): the model's
        // writer replaces those.
        Err(_) => error_xml(err),
    }
}
