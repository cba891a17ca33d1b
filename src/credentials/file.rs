//! `ci.credentials_file`: keys in a JSON file another process keeps current (e.g. a Kubernetes
//! Secret volume), read at start and every [`FILE_POLL`] after.

use super::keys::{parse_answer, unix_now, CredentialError, TemporaryKeys, FILE_POLL, MAX_ANSWER};
use crate::ci::sign::SharedCredentials;
use crate::shutdown::Shutdown;
use std::path::{Path, PathBuf};

/// The file's keys and its content (to tell a change from the same content read again).
pub(super) fn read_file(path: &Path) -> Result<(TemporaryKeys, Vec<u8>), CredentialError> {
    let fail = |reason: String| CredentialError::File {
        path: path.display().to_string(),
        reason,
    };
    let content = read_limited(path).map_err(fail)?;
    let keys = parse_answer(&content).map_err(fail)?;
    Ok((keys, content))
}

/// A small file's bytes; the error says what went wrong, never what it holds.
pub(super) fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let content = std::fs::read(path).map_err(|e| format!("cannot read: {}", e.kind()))?;
    if content.len() > MAX_ANSWER {
        return Err(format!("larger than {MAX_ANSWER} bytes"));
    }
    Ok(content)
}

/// Reads `path` every [`FILE_POLL`]; a changed, valid content replaces the keys.
pub(super) async fn watch_file(
    path: PathBuf,
    mut last: Vec<u8>,
    mut expired_time: Option<i64>,
    shared: SharedCredentials,
    stop: Shutdown,
) {
    // Problems are reported once each, not every poll.
    let mut reported: Option<String> = None;
    let mut expiry_reported = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FILE_POLL) => {}
            _ = stop.triggered() => return,
        }
        let content = match read_limited(&path) {
            Ok(c) => c,
            Err(reason) => {
                if reported.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(file = %path.display(), %reason, "credentials: ci.credentials_file unreadable; keeping the keys read before");
                    reported = Some(reason);
                }
                continue;
            }
        };
        if content != last {
            last = content;
            match parse_answer(&last) {
                Ok(keys) => {
                    shared.replace(keys.credentials);
                    expired_time = keys.expired_time;
                    expiry_reported = false;
                    reported = None;
                    tracing::info!(file = %path.display(), expired_time, "credentials: ci.credentials_file changed; new keys in use");
                }
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "credentials: ci.credentials_file changed but is not usable; keeping the keys read before");
                    reported = Some(reason);
                }
            }
        }
        if let Some(t) = expired_time {
            if !expiry_reported && unix_now() >= t {
                tracing::error!(file = %path.display(), expired_time = t, "credentials: the keys in ci.credentials_file have expired and the file has not been replaced");
                expiry_reported = true;
            }
        }
    }
}
