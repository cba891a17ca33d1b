//! The CVM instance role: its keys from the instance metadata service, the role's name from
//! `ci.cvm_role` or, as the SDKs do, from the service's listing of the role bound to the instance.

use super::keys::{parse_answer, TemporaryKeys, MAX_ANSWER};
use crate::config::is_role_name;
use std::time::Duration;

/// The metadata path of role credentials; alone it lists the role bound to the instance.
const PATH: &str = "/latest/meta-data/cam/security-credentials/";
/// The longest wait for the role listing: off a CVM nothing answers, and the worker should not
/// hang its start on that (on a CVM the service answers in milliseconds).
pub(super) const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The role the metadata service at `endpoint` names for this instance, or why there is none
/// (`Err`: not a CVM, no role bound, an answer that is not a role name). One try.
pub(super) async fn discover(endpoint: &str, timeout: Duration) -> Result<String, String> {
    let http = client(timeout)?;
    let url = format!("{}{PATH}", endpoint.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("metadata service unreachable: {}", e.without_url()))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!(
            "HTTP {} from the metadata service: no role bound to this instance",
            status.as_u16()
        ));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("metadata answer cut short: {}", e.without_url()))?;
    // The listing is the role's name (one line); a role name is no secret.
    let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
    let role = text.lines().next().unwrap_or("").trim().to_string();
    if !is_role_name(&role) {
        return Err("the metadata service's role listing is not a CAM role name".into());
    }
    Ok(role)
}

/// The metadata service's answer for one role.
pub(super) struct RoleSource {
    http: reqwest::Client,
    url: String,
    pub(super) role: String,
}

impl RoleSource {
    pub(super) fn new(endpoint: &str, role: &str, timeout: Duration) -> Result<RoleSource, String> {
        Ok(RoleSource {
            http: client(timeout)?,
            url: format!("{}{PATH}{role}", endpoint.trim_end_matches('/')),
            role: role.to_string(),
        })
    }

    /// One fetch. The error says what went wrong (status, transport, which field), never the body.
    pub(super) async fn fetch(&self) -> Result<TemporaryKeys, String> {
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
