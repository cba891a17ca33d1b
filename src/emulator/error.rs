//! The emulator's two errors: [`ApiError`], a refused request, which [`error_body`] writes as CI's
//! `<Error>` document, and [`EmulatorError`], an emulator that cannot start or stops abnormally.

use crate::ci::response::{error_xml, CiErrorBody};
use axum::http::StatusCode;

/// Why the emulator could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
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
/// non-empty `Code`, `Message`, `Resource` and `RequestId` (otherwise every one of them reads
/// "Unknown"), which says CI's gateway writes them all as COS does. So none is ever empty here: an
/// empty message becomes the code, an empty resource `/`, an empty code `InternalError`.
pub(crate) fn error_body(err: &CiErrorBody) -> String {
    let or = |s: &str, default: &str| {
        if s.trim().is_empty() {
            default.to_string()
        } else {
            s.to_string()
        }
    };
    let code = or(&err.code, "InternalError");
    error_xml(&CiErrorBody {
        message: or(&err.message, &code),
        resource: or(&err.resource, "/"),
        request_id: or(&err.request_id, "-"),
        trace_id: err.trace_id.clone(),
        code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::response::parse_error;

    #[test]
    fn every_field_the_sdks_read_is_present() {
        let full = CiErrorBody {
            code: "InvalidUrl".into(),
            message: "m".into(),
            resource: "b-1.ci.ap-guangzhou.myqcloud.com/nope".into(),
            request_id: "rid".into(),
            trace_id: "tid".into(),
        };
        assert_eq!(parse_error(&error_body(&full)), Some(full.clone()));
        let back = parse_error(&error_body(&CiErrorBody::default())).unwrap();
        assert_eq!(
            (
                back.code.as_str(),
                back.message.as_str(),
                back.resource.as_str(),
                back.request_id.as_str()
            ),
            ("InternalError", "InternalError", "/", "-")
        );
        // A character XML cannot carry (a client's input echoed in the message) is replaced.
        let odd = CiErrorBody {
            message: "bad \u{1}".into(),
            ..full
        };
        assert_eq!(
            parse_error(&error_body(&odd)).unwrap().message,
            "bad \u{fffd}"
        );
    }
}
