//! Where the CI (and CMQ) keys come from, and keeping temporary ones current while the worker runs.
//!
//! A chain, as Tencent's SDKs have one: the first source that yields keys is used, and the log
//! names it (and any other source that is there but comes later), never a key. In order:
//! 1. **keys**: `ci.secret_id` / `ci.secret_key` (+ `ci.session_token`), or
//!    `TENCENTCLOUD_SECRET_ID` / `_KEY` (+ `TENCENTCLOUD_SESSION_TOKEN`, `TENCENTCLOUD_TOKEN` or
//!    `TENCENTCLOUD_SECURITY_TOKEN`): read once, fixed for the life of the process;
//! 2. **the profile file** ([`profile`]): `TENCENTCLOUD_CREDENTIALS_FILE`, else
//!    `~/.tencentcloud/credentials`, else `/etc/tencentcloud/credentials`; read once;
//! 3. **TKE OIDC** ([`oidc`]): the `TKE_*` variables; the token file exchanged at
//!    `ci.sts_endpoint` (STS `AssumeRoleWithWebIdentity`) at start and before the keys expire;
//! 4. **the CVM role** ([`role`]): `ci.cvm_role`, or when that is empty the role the metadata
//!    service at `ci.metadata_endpoint` names for the instance (looked for only when
//!    `ci.credentials_file` is empty too, see below); fetched at start and before expiry;
//! 5. **`ci.credentials_file`** ([`file`]): a JSON object in the CVM metadata answer's field names
//!    (`TmpSecretId`, `TmpSecretKey`, optional `Token`, optional `ExpiredTime` in Unix seconds;
//!    other fields such as `Expiration` and `Code` are accepted, a `Code` other than `Success` is
//!    refused). Read at start (it must be usable then) and every [`FILE_POLL`] after: when its
//!    content differs from the last read, the new keys replace the old from the next request on.
//!    Content, not mtime: a Kubernetes Secret volume updates by swapping a `..data` symlink (the
//!    mtime seen through it may not move the way a poll expects, and a same-second rewrite may not
//!    move it at all), and a file of a few hundred bytes costs nothing to read every few seconds —
//!    far less than a `stat` on every signing would on the hot path. An unreadable or invalid new
//!    content is reported once and the old keys kept.
//!
//! None of them: requests go unsigned (the emulator with `emulator.allow_anonymous`).
//!
//! Where this differs from the SDKs, and why:
//! - The Python and Java SDKs try the CVM role before TKE OIDC (the Go SDK's default chain has no
//!   OIDC). Here TKE OIDC comes first: on TKE the pod runs on a CVM node, and a role bound to the
//!   node would otherwise stand in for the identity the pod was given (the `TKE_*` variables are
//!   only there when the pod's service account asks for one).
//! - `ci.credentials_file` is not the SDKs'; it comes last, and a role the configuration does not
//!   name is not looked for when it is set: merely running on a CVM with a role must not take the
//!   place of a file the operator named. `ci.secret_id`, `ci.credentials_file` and `ci.cvm_role`
//!   exclude each other ([`crate::config`] refuses two).
//! - A source that is there but unusable (a profile file without `secret_id`, `TKE_*` variables
//!   without the token file's, a token STS refuses, a named role the metadata service does not
//!   know) stops the start with an error naming the variable, key or file when the chain reaches
//!   it, as the Go SDK's chain does, instead of falling through to a source the operator did not
//!   mean.
//!
//! Temporary keys (TKE OIDC, CVM role) are fetched again when less than [`refresh_margin`] of
//! their lifetime remains (300 s, as the SDKs do, or a third of the lifetime when that is
//! shorter). A failed refresh is retried with a doubling pause (1 s up to 60 s, never past the
//! expiry) and the old keys are kept meanwhile; an answer that has not rotated yet is asked again
//! shortly. The SDKs refresh when a request finds the keys near expiry; here a task does it ahead,
//! so no request waits on STS or the metadata service.
//!
//! The keys go into a [`SharedCredentials`] that the CI and CMQ clients ask once per request. No key,
//! token or answer body is ever logged or put in an error: logs say where keys came from and when
//! they expire.
//!
//! Not `reqsign-tencent-cos` (Apache OpenDAL), though it has an environment and a web identity
//! provider: it has no profile-file or CVM-role provider; its STS address is fixed to
//! `https://sts.tencentcloudapi.com` (neither the internal endpoint nor the emulator can be used);
//! it reads `TKE_IDENTITY_TOKEN_FILE` but not `TKE_WEB_IDENTITY_TOKEN_FILE`, which the SDKs and
//! TKE's webhook use; it puts STS's whole answer into its errors; and it would bring its own
//! signer, HTTP and file-reading layers beside the ones the CI client already has.
//!
//! # Layout
//! - this file: the chain ([`start`], [`resolve`]), the metadata answer format, the refresh task.
//! - [`profile`]: the profile file.
//! - [`oidc`]: the TKE OIDC exchange at STS.
//! - [`role`]: the CVM role: its discovery and its keys.
//! - [`file`]: `ci.credentials_file`, read and watched.

mod file;
pub mod keys;
pub mod oidc;
pub mod profile;
mod role;

use crate::ci::sign::{Credentials, SharedCredentials};
use crate::config::Settings;
use crate::shutdown::Shutdown;
use keys::unix_now;
pub use keys::{parse_answer, CredentialError, TemporaryKeys, FILE_POLL};
use oidc::TkeOidc;
use role::RoleSource;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Refresh role credentials when this much of their lifetime remains at most (the SDKs' 300 s).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Pauses between failed refreshes double from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Attempts of the first fetch from the metadata service before the worker gives up starting.
const START_ATTEMPTS: u32 = 3;

/// How long before `expired_time` role credentials are refreshed, for keys that had `lifetime`
/// left when fetched: [`REFRESH_BEFORE`], or a third of the lifetime when that is less (so short
/// lifetimes, as in tests, still leave the keys in use for two thirds of their life).
pub fn refresh_margin(lifetime: Duration) -> Duration {
    REFRESH_BEFORE.min(lifetime / 3)
}

/// Where the keys in use come from (what the log and `ci-worker doctor` say; never a key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `ci.secret_id` / `ci.secret_key`, or the `TENCENTCLOUD_SECRET_*` variables.
    Keys,
    /// The profile file at this path.
    Profile(PathBuf),
    /// TKE OIDC, for this role.
    TkeOidc { role_arn: String },
    /// The CVM role, named by `ci.cvm_role` or (`discovered`) by the metadata service.
    CvmRole { role: String, discovered: bool },
    /// `ci.credentials_file` at this path.
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Keys => f.write_str("keys (ci.secret_id / TENCENTCLOUD_SECRET_ID)"),
            Source::Profile(p) => write!(f, "profile file {}", p.display()),
            Source::TkeOidc { role_arn } => write!(f, "TKE OIDC (role {role_arn})"),
            Source::CvmRole {
                role,
                discovered: false,
            } => write!(f, "CVM role {role} (ci.cvm_role)"),
            Source::CvmRole {
                role,
                discovered: true,
            } => write!(f, "CVM role {role} (named by the metadata service)"),
            Source::File(p) => write!(f, "ci.credentials_file {}", p.display()),
        }
    }
}

/// The chain's outcome: the keys, kept current, and where they come from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub credentials: SharedCredentials,
    pub source: Source,
}

/// The chain run over `settings` and the process's environment, started: `None` without any
/// source (requests go unsigned). Temporary keys are kept current by a task that ends with `stop`.
pub async fn start(
    settings: &Settings,
    stop: &Shutdown,
) -> Result<Option<SharedCredentials>, CredentialError> {
    let vars: HashMap<String, String> = std::env::vars().collect();
    Ok(resolve(settings, &vars, stop).await?.map(|r| r.credentials))
}

/// [`start`] with an explicit environment (`TKE_*`, `TENCENTCLOUD_CREDENTIALS_FILE`, `HOME`), and
/// the source it took.
pub async fn resolve(
    settings: &Settings,
    vars: &HashMap<String, String>,
    stop: &Shutdown,
) -> Result<Option<Resolved>, CredentialError> {
    let c = &settings.ci;
    let named_role = c.cvm_role.trim();
    let file = c.credentials_file.trim();
    // Each source that is there, in the chain's order (the CVM role when named: a discovery is
    // only made when no earlier source answered). A source that is there but unusable is an
    // error only when the chain reaches it: an earlier source makes it irrelevant, as in the SDKs.
    let profile = profile::locate(vars);
    let tke = TkeOidc::from_env(vars, c.sts_endpoint.as_str(), c.request_timeout);
    let present: Vec<&str> = [
        (
            !c.secret_id.is_empty(),
            "keys (ci.secret_id / TENCENTCLOUD_SECRET_ID)",
        ),
        (!matches!(profile, Ok(None)), "the profile file"),
        (!matches!(tke, Ok(None)), "TKE OIDC (TKE_* variables)"),
        (!named_role.is_empty(), "ci.cvm_role"),
        (!file.is_empty(), "ci.credentials_file"),
    ]
    .into_iter()
    .filter_map(|(there, name)| there.then_some(name))
    .collect();
    let resolved = if !c.secret_id.is_empty() {
        let fixed = settings
            .credentials()
            .ok_or_else(|| CredentialError::Invalid("ci.secret_id without ci.secret_key".into()))?;
        fixed.check().map_err(CredentialError::Invalid)?;
        Some(fixed_keys(Source::Keys, fixed))
    } else if let Some(path) = profile? {
        let keys = profile::read(&path)?;
        Some(fixed_keys(Source::Profile(path), keys))
    } else if let Some(tke) = tke? {
        let keys = first_fetch(&Exchange::Tke(&tke), stop)
            .await
            .map_err(CredentialError::Tke)?;
        let Some(keys) = keys else { return Ok(None) };
        let source = Source::TkeOidc {
            role_arn: tke.role_arn.clone(),
        };
        Some(refreshed(source, Refresher::Tke(tke), keys, stop))
    } else if let Some((role, discovered)) = cvm_role(settings).await? {
        let keys = match first_fetch(&Exchange::Role(&role), stop).await {
            Ok(Some(keys)) => keys,
            Ok(None) => return Ok(None),
            Err(reason) if discovered => {
                return Err(CredentialError::DiscoveredRole {
                    role: role.role.clone(),
                    reason,
                })
            }
            Err(reason) => {
                return Err(CredentialError::Role {
                    role: role.role.clone(),
                    reason,
                })
            }
        };
        let source = Source::CvmRole {
            role: role.role.clone(),
            discovered,
        };
        Some(refreshed(source, Refresher::Role(role), keys, stop))
    } else if !file.is_empty() {
        let path = PathBuf::from(file);
        let (keys, content) = file::read_file(&path)?;
        let shared = SharedCredentials::new(keys.credentials);
        tokio::spawn(file::watch_file(
            path.clone(),
            content,
            keys.expired_time,
            shared.clone(),
            stop.clone(),
        ));
        tracing::info!(
            expired_time = keys.expired_time,
            poll_every = ?FILE_POLL,
            "credentials: ci.credentials_file, re-read when it changes"
        );
        Some(Resolved {
            credentials: shared,
            source: Source::File(path),
        })
    } else {
        None
    };
    match &resolved {
        Some(r) => {
            tracing::info!(source = %r.source, "credentials: from {}", r.source);
            for other in present.iter().skip(1) {
                tracing::warn!(
                    source = %r.source,
                    "credentials: {other} is there too but not used: {} comes first in the chain",
                    r.source
                );
            }
        }
        None => tracing::info!(
            "credentials: none (no keys, profile file, TKE OIDC, CVM role or ci.credentials_file): \
             requests go unsigned"
        ),
    }
    Ok(resolved)
}

fn fixed_keys(source: Source, keys: Credentials) -> Resolved {
    Resolved {
        credentials: SharedCredentials::new(keys),
        source,
    }
}

/// The CVM role to use: `ci.cvm_role`, or the one the metadata service names when neither it
/// nor `ci.credentials_file` is set (`true`: discovered). No role found is no source, not an error.
async fn cvm_role(settings: &Settings) -> Result<Option<(RoleSource, bool)>, CredentialError> {
    let c = &settings.ci;
    let endpoint = c.metadata_endpoint.as_str();
    let named = c.cvm_role.trim();
    let (name, discovered) = if !named.is_empty() {
        (named.to_string(), false)
    } else if c.credentials_file.trim().is_empty() {
        let timeout = c.request_timeout.min(role::DISCOVERY_TIMEOUT);
        match role::discover(endpoint, timeout).await {
            Ok(name) => (name, true),
            Err(reason) => {
                tracing::debug!(%endpoint, %reason, "credentials: no CVM role");
                return Ok(None);
            }
        }
    } else {
        return Ok(None);
    };
    let role = RoleSource::new(endpoint, &name, c.request_timeout).map_err(|reason| {
        CredentialError::Role {
            role: name.clone(),
            reason,
        }
    })?;
    Ok(Some((role, discovered)))
}

/// A source of temporary keys fetched again before they expire.
enum Refresher {
    Role(RoleSource),
    Tke(TkeOidc),
}

/// One fetch from a [`Refresher`] (borrowed, for the first fetch before it is moved).
enum Exchange<'a> {
    Role(&'a RoleSource),
    Tke(&'a TkeOidc),
}

impl Refresher {
    fn exchange(&self) -> Exchange<'_> {
        match self {
            Refresher::Role(r) => Exchange::Role(r),
            Refresher::Tke(t) => Exchange::Tke(t),
        }
    }
}

impl Exchange<'_> {
    async fn fetch(&self) -> Result<TemporaryKeys, String> {
        match self {
            Exchange::Role(r) => r.fetch().await,
            Exchange::Tke(t) => t.fetch().await,
        }
    }

    /// The source's name in the refresh task's log lines.
    fn label(&self) -> &'static str {
        match self {
            Exchange::Role(_) => "CVM role",
            Exchange::Tke(_) => "TKE OIDC",
        }
    }

    /// What the log lines say the source is (a role name or ARN; never a key).
    fn what(&self) -> String {
        match self {
            Exchange::Role(r) => r.role.clone(),
            Exchange::Tke(t) => t.role_arn.clone(),
        }
    }
}

/// The first keys, with [`START_ATTEMPTS`] tries; `Ok(None)` when `stop` came first.
async fn first_fetch(
    exchange: &Exchange<'_>,
    stop: &Shutdown,
) -> Result<Option<TemporaryKeys>, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match exchange.fetch().await {
            Ok(keys) => return Ok(Some(keys)),
            Err(reason) if attempt >= START_ATTEMPTS => return Err(reason),
            Err(reason) => {
                tracing::warn!(source = exchange.label(), of = %exchange.what(), %reason, attempt, "credentials: no usable keys yet; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_FIRST * attempt) => {}
                    _ = stop.triggered() => return Ok(None),
                }
            }
        }
    }
}

/// `first` in use from now on, refreshed by a task until `stop`.
fn refreshed(
    source: Source,
    refresher: Refresher,
    first: TemporaryKeys,
    stop: &Shutdown,
) -> Resolved {
    tracing::info!(
        expired_time = first.expired_time,
        "credentials: {}, refreshed before they expire",
        refresher.exchange().label()
    );
    let shared = SharedCredentials::new(first.credentials.clone());
    tokio::spawn(refresh(refresher, first, shared.clone(), stop.clone()));
    Resolved {
        credentials: shared,
        source,
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

async fn refresh(
    refresher: Refresher,
    first: TemporaryKeys,
    shared: SharedCredentials,
    stop: Shutdown,
) {
    let source = refresher.exchange();
    let (label, what) = (source.label(), source.what());
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
        match source.fetch().await {
            Ok(keys) => {
                failures = 0;
                let new_expiry = keys.expired_time.unwrap_or(0);
                if new_expiry > expired_time {
                    shared.replace(keys.credentials);
                    expired_time = new_expiry;
                    let now_ms = unix_now_ms();
                    wait = next_refresh(expired_time, lifetime_from(expired_time, now_ms), now_ms);
                    tracing::info!(of = %what, expired_time, refresh_in = ?wait, "credentials: {label} credentials refreshed");
                } else {
                    // The service has not rotated them yet: ask again soon, well before expiry.
                    let left = (expired_time - now).max(0) as u64;
                    wait =
                        Duration::from_secs(left / 4).clamp(RETRY_FIRST, Duration::from_secs(30));
                    tracing::debug!(of = %what, expired_time, retry_in = ?wait, "credentials: {label} answered the same credentials");
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
                    tracing::warn!(of = %what, %reason, expired_time, retry_in = ?wait, "credentials: {label} refresh failed; the current credentials stay in use until they expire");
                } else {
                    tracing::error!(of = %what, %reason, expired_time, retry_in = ?wait, "credentials: {label} refresh failed and the credentials in use have expired: CI and CMQ will refuse requests");
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
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

    /// An environment of these variables.
    pub(super) fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::load_from(None, &vars(pairs)).unwrap()
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
    async fn an_unusable_later_source_does_not_matter_when_an_earlier_one_is_there() {
        let stop = Shutdown::new();
        let env = vars(&[
            ("TENCENTCLOUD_SECRET_ID", "AKIDfirst"),
            ("TENCENTCLOUD_SECRET_KEY", "k"),
            ("TKE_ROLE_ARN", "qcs::cam::uin/1:roleName/r"),
            (profile::PATH_VAR, ""),
        ]);
        let s = Settings::load_from(None, &env).unwrap();
        let r = resolve(&s, &env, &stop).await.unwrap().unwrap();
        assert_eq!(r.source, Source::Keys);
        // Without the keys the chain reaches them, and stops at the first.
        let env = vars(&[
            ("TKE_ROLE_ARN", "qcs::cam::uin/1:roleName/r"),
            (profile::PATH_VAR, ""),
        ]);
        let e = resolve(&Settings::default(), &env, &stop)
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("TENCENTCLOUD_CREDENTIALS_FILE"),
            "{e}"
        );
        let env = vars(&[("TKE_ROLE_ARN", "qcs::cam::uin/1:roleName/r")]);
        let e = resolve(&Settings::default(), &env, &stop)
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("TKE OIDC: TKE_REGION"), "{e}");
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
