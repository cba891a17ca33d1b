//! Where the CI (and CMQ) keys come from, and keeping temporary ones current while the worker runs.
//!
//! One source at a time ([`crate::config`] refuses two), in the order of Tencent's SDK chains:
//! 1. `ci.secret_id` / `ci.secret_key` (+ `ci.session_token`), or `TENCENTCLOUD_SECRET_ID` /
//!    `_KEY` / `_SESSION_TOKEN`: read once, fixed for the life of the process;
//! 2. `ci.credentials_file`: a JSON object in the CVM metadata answer's field names
//!    (`TmpSecretId`, `TmpSecretKey`, optional `Token`, optional `ExpiredTime` in Unix seconds;
//!    other fields such as `Expiration` and `Code` are accepted, a `Code` other than `Success` is
//!    refused). Read at start (it must be usable then) and every [`FILE_POLL`] after: when its
//!    content differs from the last read, the new keys replace the old from the next request on.
//!    Content, not mtime: a Kubernetes Secret volume updates by swapping a `..data` symlink (the
//!    mtime seen through it may not move the way a poll expects, and a same-second rewrite may not
//!    move it at all), and a file of a few hundred bytes costs nothing to read every few seconds —
//!    far less than a `stat` on every signing would on the hot path. An unreadable or invalid new
//!    content is reported once and the old keys kept.
//! 3. `ci.cvm_role`: `GET <ci.metadata_endpoint>/latest/meta-data/cam/security-credentials/<role>`
//!    (`TmpSecretId`, `TmpSecretKey`, `Token`, `ExpiredTime`, `Expiration`, `Code`) at start (it must
//!    answer then), and again before the keys expire: when less than [`refresh_margin`] of their
//!    lifetime remains (300 s, as the SDKs do, or a third of the lifetime when that is shorter). A
//!    failed refresh is retried with a doubling pause (1 s up to 60 s, never past the expiry) and
//!    the old keys are kept meanwhile; an answer that has not rotated yet is asked again shortly.
//!
//! The keys go into a [`SharedCredentials`] that the CI and CMQ clients ask once per request. No key,
//! token or metadata answer body is ever logged or put in an error: logs say where keys came from
//! and when they expire.

use crate::ci::sign::{Credentials, SharedCredentials};
use crate::config::Settings;
use crate::secret::Secret;
use crate::shutdown::Shutdown;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often `ci.credentials_file` is read for a change.
pub const FILE_POLL: Duration = Duration::from_secs(2);
/// Refresh role credentials when this much of their lifetime remains at most (the SDKs' 300 s).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Pauses between failed refreshes double from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Attempts of the first fetch from the metadata service before the worker gives up starting.
const START_ATTEMPTS: u32 = 3;
/// Largest metadata answer or credentials file read.
const MAX_ANSWER: usize = 64 * 1024;

/// Why no usable keys could be had. Names the configuration key, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("ci.credentials_file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("ci.cvm_role {role}: {reason}")]
    Role { role: String, reason: String },
    #[error("credentials: {0}")]
    Invalid(String),
}

/// One key set with its expiry (Unix seconds), when the source says it.
#[derive(Debug, Clone)]
pub struct TemporaryKeys {
    pub credentials: Credentials,
    pub expired_time: Option<i64>,
}

/// The CVM metadata answer, and the file format. Unknown fields are accepted (the answer has more).
#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "TmpSecretId")]
    secret_id: String,
    #[serde(rename = "TmpSecretKey")]
    secret_key: Secret,
    #[serde(rename = "Token", default)]
    token: Option<Secret>,
    #[serde(rename = "ExpiredTime", default)]
    expired_time: Option<i64>,
    #[serde(rename = "Code", default)]
    code: Option<String>,
}

/// Reads a metadata answer / credentials file. The error never quotes the text: serde's own
/// messages may (an `invalid type` error shows the value), so only their kind and place are kept.
pub fn parse_answer(text: &[u8]) -> Result<TemporaryKeys, String> {
    let answer: Answer = serde_json::from_slice(text).map_err(|e| {
        let place = format!("line {} column {}", e.line(), e.column());
        match e.classify() {
            serde_json::error::Category::Data => {
                let m = e.to_string();
                match m.find("missing field `") {
                    Some(i) => m[i..].split(" at line").next().unwrap_or("").to_string(),
                    None => format!("a field has the wrong type ({place})"),
                }
            }
            _ => format!("not a JSON object ({place})"),
        }
    })?;
    if let Some(code) = answer.code.as_deref().filter(|c| *c != "Success") {
        // CI's codes are words, not secrets; keep it short anyway.
        let code: String = code.chars().take(64).collect();
        return Err(format!("Code is {code:?}, not \"Success\""));
    }
    let credentials = Credentials {
        secret_id: answer.secret_id,
        secret_key: answer.secret_key,
        session_token: answer.token.filter(|t| !t.is_empty()),
    };
    credentials.check()?;
    Ok(TemporaryKeys {
        credentials,
        expired_time: answer.expired_time,
    })
}

/// How long before `expired_time` role credentials are refreshed, for keys that had `lifetime`
/// left when fetched: [`REFRESH_BEFORE`], or a third of the lifetime when that is less (so short
/// lifetimes, as in tests, still leave the keys in use for two thirds of their life).
pub fn refresh_margin(lifetime: Duration) -> Duration {
    REFRESH_BEFORE.min(lifetime / 3)
}

/// The source configured in `settings`, started: `None` without any (requests go unsigned).
/// Temporary sources are kept current by a task that ends with `stop`.
pub async fn start(
    settings: &Settings,
    stop: &Shutdown,
) -> Result<Option<SharedCredentials>, CredentialError> {
    let c = &settings.ci;
    if !c.secret_id.is_empty() {
        let fixed = settings
            .credentials()
            .ok_or_else(|| CredentialError::Invalid("ci.secret_id without ci.secret_key".into()))?;
        fixed.check().map_err(CredentialError::Invalid)?;
        tracing::info!("credentials: ci.secret_id/ci.secret_key (or TENCENTCLOUD_SECRET_*), fixed");
        return Ok(Some(SharedCredentials::new(fixed)));
    }
    if !c.credentials_file.trim().is_empty() {
        let path = PathBuf::from(c.credentials_file.trim());
        let (keys, content) = read_file(&path)?;
        tracing::info!(
            file = %path.display(),
            expired_time = keys.expired_time,
            poll_every = ?FILE_POLL,
            "credentials: from ci.credentials_file, re-read when it changes"
        );
        let shared = SharedCredentials::new(keys.credentials);
        tokio::spawn(watch_file(
            path,
            content,
            keys.expired_time,
            shared.clone(),
            stop.clone(),
        ));
        return Ok(Some(shared));
    }
    if !c.cvm_role.trim().is_empty() {
        let role = RoleSource::new(
            c.metadata_endpoint.as_str(),
            c.cvm_role.trim(),
            c.request_timeout,
        )?;
        let mut attempt = 0;
        let keys = loop {
            attempt += 1;
            match role.fetch().await {
                Ok(keys) => break keys,
                Err(reason) if attempt >= START_ATTEMPTS => {
                    return Err(CredentialError::Role {
                        role: role.role.clone(),
                        reason,
                    })
                }
                Err(reason) => {
                    tracing::warn!(role = %role.role, %reason, attempt, "credentials: the metadata service did not answer usable credentials; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_FIRST * attempt) => {}
                        _ = stop.triggered() => return Ok(None),
                    }
                }
            }
        };
        tracing::info!(
            role = %role.role,
            endpoint = %c.metadata_endpoint,
            expired_time = keys.expired_time,
            "credentials: from the CVM role, refreshed before they expire"
        );
        let shared = SharedCredentials::new(keys.credentials.clone());
        tokio::spawn(refresh_role(role, keys, shared.clone(), stop.clone()));
        return Ok(Some(shared));
    }
    Ok(None)
}

fn read_file(path: &Path) -> Result<(TemporaryKeys, Vec<u8>), CredentialError> {
    let fail = |reason: String| CredentialError::File {
        path: path.display().to_string(),
        reason,
    };
    let content = read_limited(path).map_err(fail)?;
    let keys = parse_answer(&content).map_err(fail)?;
    Ok((keys, content))
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let content = std::fs::read(path).map_err(|e| format!("cannot read: {}", e.kind()))?;
    if content.len() > MAX_ANSWER {
        return Err(format!("larger than {MAX_ANSWER} bytes"));
    }
    Ok(content)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Reads `path` every [`FILE_POLL`]; a changed, valid content replaces the keys.
async fn watch_file(
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

/// The metadata service's answer for one role.
struct RoleSource {
    http: reqwest::Client,
    url: String,
    role: String,
}

impl RoleSource {
    fn new(endpoint: &str, role: &str, timeout: Duration) -> Result<RoleSource, CredentialError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CredentialError::Role {
                role: role.to_string(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(RoleSource {
            http,
            url: format!(
                "{}/latest/meta-data/cam/security-credentials/{role}",
                endpoint.trim_end_matches('/')
            ),
            role: role.to_string(),
        })
    }

    /// One fetch. The error says what went wrong (status, transport, which field), never the body.
    async fn fetch(&self) -> Result<TemporaryKeys, String> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("metadata service unreachable: {}", e.without_url()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(
                "HTTP 404 from the metadata service: no such role bound to this instance".into(),
            );
        }
        if !status.is_success() {
            return Err(format!(
                "HTTP {} from the metadata service",
                status.as_u16()
            ));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("metadata answer cut short: {}", e.without_url()))?;
        if body.len() > MAX_ANSWER {
            return Err(format!("metadata answer larger than {MAX_ANSWER} bytes"));
        }
        let keys = parse_answer(&body).map_err(|r| format!("metadata answer: {r}"))?;
        if keys.expired_time.is_none() {
            return Err("metadata answer: missing field `ExpiredTime`".into());
        }
        if keys.credentials.session_token.is_none() {
            return Err("metadata answer: missing field `Token`".into());
        }
        Ok(keys)
    }
}

/// When to ask the metadata service next, for keys expiring at `expired_time` (Unix seconds) that
/// had `lifetime` left when fetched, the time being `now_ms` (Unix milliseconds: with lifetimes of
/// seconds, as in tests, whole seconds would eat the margin).
fn next_refresh(expired_time: i64, lifetime: Duration, now_ms: i64) -> Duration {
    let margin = refresh_margin(lifetime).as_millis() as i64;
    let at = expired_time * 1000 - margin;
    Duration::from_millis((at - now_ms).max(0) as u64)
}

fn lifetime_from(expired_time: i64, now_ms: i64) -> Duration {
    Duration::from_millis((expired_time * 1000 - now_ms).max(0) as u64)
}

fn unix_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn refresh_role(
    role: RoleSource,
    first: TemporaryKeys,
    shared: SharedCredentials,
    stop: Shutdown,
) {
    let mut expired_time = first.expired_time.unwrap_or(0);
    let now_ms = unix_now_ms();
    let mut wait = next_refresh(expired_time, lifetime_from(expired_time, now_ms), now_ms);
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.triggered() => return,
        }
        let now = unix_now();
        match role.fetch().await {
            Ok(keys) => {
                failures = 0;
                let new_expiry = keys.expired_time.unwrap_or(0);
                if new_expiry > expired_time {
                    shared.replace(keys.credentials);
                    expired_time = new_expiry;
                    let now_ms = unix_now_ms();
                    wait = next_refresh(expired_time, lifetime_from(expired_time, now_ms), now_ms);
                    tracing::info!(role = %role.role, expired_time, refresh_in = ?wait, "credentials: CVM role credentials refreshed");
                } else {
                    // The service has not rotated them yet: ask again soon, well before expiry.
                    let left = (expired_time - now).max(0) as u64;
                    wait =
                        Duration::from_secs(left / 4).clamp(RETRY_FIRST, Duration::from_secs(30));
                    tracing::debug!(role = %role.role, expired_time, retry_in = ?wait, "credentials: the metadata service answered the same credentials");
                }
            }
            Err(reason) => {
                failures += 1;
                let backoff = RETRY_FIRST
                    .saturating_mul(1 << (failures - 1).min(6))
                    .min(RETRY_MAX);
                let left = expired_time - now;
                wait = if left > 1 {
                    // Keep trying before the keys in use expire.
                    backoff.min(Duration::from_secs(left as u64 / 2).max(RETRY_FIRST))
                } else {
                    backoff
                };
                if left > 0 {
                    tracing::warn!(role = %role.role, %reason, expired_time, retry_in = ?wait, "credentials: refresh failed; the current credentials stay in use until they expire");
                } else {
                    tracing::error!(role = %role.role, %reason, expired_time, retry_in = ?wait, "credentials: refresh failed and the credentials in use have expired: CI and CMQ will refuse requests");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_answer_and_the_file_share_one_format() {
        let keys = parse_answer(
            br#"{"TmpSecretId":"AKIDtmp","TmpSecretKey":"tmp-key-NeverShown","ExpiredTime":1615590047,
                "Expiration":"2021-03-12T23:00:47Z","Token":"tok-NeverShown","Code":"Success"}"#,
        )
        .unwrap();
        assert_eq!(keys.credentials.secret_id, "AKIDtmp");
        assert_eq!(keys.credentials.secret_key.expose(), "tmp-key-NeverShown");
        assert_eq!(
            keys.credentials.session_token.as_ref().map(|t| t.expose()),
            Some("tok-NeverShown")
        );
        assert_eq!(keys.expired_time, Some(1_615_590_047));
        assert!(!format!("{keys:?}").contains("NeverShown"));
        // The file may hold just the pair (long-lived keys rotated by replacing the Secret).
        let bare = parse_answer(br#"{"TmpSecretId":"AKIDx","TmpSecretKey":"k"}"#).unwrap();
        assert!(bare.credentials.session_token.is_none() && bare.expired_time.is_none());
    }

    #[test]
    fn refusals_name_the_problem_never_the_value() {
        for (text, says) in [
            (
                &br#"{"TmpSecretKey":"k-NeverShown"}"#[..],
                "missing field `TmpSecretId`",
            ),
            (
                br#"{"TmpSecretId":"AKID","TmpSecretKey":12345678}"#,
                "wrong type",
            ),
            (
                br#"{"TmpSecretId":"AKID","TmpSecretKey":"k-NeverShown""#,
                "not a JSON object",
            ),
            (
                br#"{"TmpSecretId":"","TmpSecretKey":"k-NeverShown"}"#,
                "both a SecretId",
            ),
            (
                br#"{"TmpSecretId":"AKID","TmpSecretKey":"k-NeverShown","Code":"Failure"}"#,
                "Code is \"Failure\"",
            ),
            (
                b"{\"TmpSecretId\":\"AKID\",\"TmpSecretKey\":\"k\",\"Token\":\"a\\nNeverShown\"}",
                "not a valid HTTP header value",
            ),
        ] {
            let e = parse_answer(text).unwrap_err();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("NeverShown") && !e.contains("12345678"), "{e}");
        }
    }

    #[test]
    fn refresh_comes_five_minutes_or_a_third_of_the_lifetime_before_expiry() {
        assert_eq!(refresh_margin(Duration::from_secs(7200)), REFRESH_BEFORE);
        assert_eq!(
            refresh_margin(Duration::from_secs(9)),
            Duration::from_secs(3)
        );
        let s = Duration::from_secs;
        assert_eq!(next_refresh(10_000, s(7200), 2_800_000), s(6900));
        assert_eq!(next_refresh(109, s(9), 100_000), s(6));
        assert_eq!(
            next_refresh(109, s(9), 100_500),
            Duration::from_millis(5500)
        );
        assert_eq!(next_refresh(100, s(9), 200_000), Duration::ZERO);
        assert_eq!(lifetime_from(109, 100_250), Duration::from_millis(8750));
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let vars = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, &vars).unwrap()
    }

    #[tokio::test]
    async fn a_rewritten_file_replaces_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        std::fs::write(
            &path,
            br#"{"TmpSecretId":"AKIDone","TmpSecretKey":"k1","Token":"t1"}"#,
        )
        .unwrap();
        let s = settings(&[("CI_WORKER__CI__CREDENTIALS_FILE", path.to_str().unwrap())]);
        let stop = Shutdown::new();
        let shared = start(&s, &stop).await.unwrap().unwrap();
        assert_eq!(shared.current().secret_id, "AKIDone");
        // A Secret volume's update: the new file is written aside and swapped in by rename.
        let next = dir.path().join("next.json");
        std::fs::write(
            &next,
            br#"{"TmpSecretId":"AKIDtwo","TmpSecretKey":"k2","Token":"t2"}"#,
        )
        .unwrap();
        std::fs::rename(&next, &path).unwrap();
        let deadline = std::time::Instant::now() + FILE_POLL * 3;
        while shared.current().secret_id != "AKIDtwo" {
            assert!(std::time::Instant::now() < deadline, "not re-read");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            shared.current().session_token.as_ref().unwrap().expose(),
            "t2"
        );
        // A broken rewrite keeps the keys in use.
        std::fs::write(&path, b"{not json").unwrap();
        tokio::time::sleep(FILE_POLL + Duration::from_millis(500)).await;
        assert_eq!(shared.current().secret_id, "AKIDtwo");
        stop.trigger();
    }

    #[tokio::test]
    async fn a_missing_file_or_role_stops_the_start_naming_the_key() {
        let stop = Shutdown::new();
        let s = settings(&[("CI_WORKER__CI__CREDENTIALS_FILE", "/nonexistent/creds.json")]);
        let e = start(&s, &stop).await.unwrap_err().to_string();
        assert!(
            e.starts_with("ci.credentials_file /nonexistent/creds.json: cannot read"),
            "{e}"
        );
        // A metadata service that answers 404 for the role (nothing listens at port 9: refused).
        let s = settings(&[
            ("CI_WORKER__CI__CVM_ROLE", "NoSuchRole"),
            ("CI_WORKER__CI__METADATA_ENDPOINT", "http://127.0.0.1:9"),
            ("CI_WORKER__CI__REQUEST_TIMEOUT", "1s"),
        ]);
        let e = start(&s, &stop).await.unwrap_err().to_string();
        assert!(
            e.starts_with("ci.cvm_role NoSuchRole: metadata service unreachable"),
            "{e}"
        );
    }
}
