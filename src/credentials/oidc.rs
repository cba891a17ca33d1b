//! TKE OIDC (pod identity): the service account token kubelet projects into the pod, exchanged at
//! STS `AssumeRoleWithWebIdentity` for temporary keys, as the SDKs' `DefaultTkeOIDCRoleArnProvider`
//! does: the variables `TKE_REGION`, `TKE_PROVIDER_ID`, `TKE_WEB_IDENTITY_TOKEN_FILE` (older SDKs:
//! `TKE_IDENTITY_TOKEN_FILE`) and `TKE_ROLE_ARN`, set by TKE's pod identity webhook. The call is
//! API 3.0 without a signature (`Authorization: SKIP`: the token is the credential), as the SDKs
//! send it; the token file is read again at every exchange because kubelet rotates it.

use super::file::read_limited;
use super::keys::{CredentialError, TemporaryKeys, MAX_ANSWER};
use crate::ci::sign::Credentials;
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// The variables, the token file's in the SDKs' spelling first.
pub const REGION_VAR: &str = "TKE_REGION";
pub const PROVIDER_ID_VAR: &str = "TKE_PROVIDER_ID";
pub const TOKEN_FILE_VARS: [&str; 2] = ["TKE_WEB_IDENTITY_TOKEN_FILE", "TKE_IDENTITY_TOKEN_FILE"];
pub const ROLE_ARN_VAR: &str = "TKE_ROLE_ARN";
/// The keys' lifetime asked for (the SDKs' default; STS allows up to 12 h).
const DURATION_SECONDS: u64 = 7200;
const ACTION: &str = "AssumeRoleWithWebIdentity";
const VERSION: &str = "2018-08-13";

/// One pod identity's exchange.
pub(super) struct TkeOidc {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    provider_id: String,
    pub(super) role_arn: String,
    token_var: &'static str,
    token_file: PathBuf,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Response")]
    response: Response,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Response {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    credentials: Option<Keys>,
    #[serde(default)]
    expired_time: Option<i64>,
    #[serde(default)]
    request_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiError {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Keys {
    #[serde(rename = "TmpSecretId")]
    secret_id: String,
    #[serde(rename = "TmpSecretKey")]
    secret_key: Secret,
    #[serde(rename = "Token")]
    token: Secret,
}

impl TkeOidc {
    /// The exchange the variables in `vars` describe: `None` when none of them is set, an error
    /// naming the missing ones when only some are.
    pub(super) fn from_env(
        vars: &HashMap<String, String>,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Option<TkeOidc>, CredentialError> {
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let token = TOKEN_FILE_VARS
            .iter()
            .find_map(|name| get(name).map(|v| (*name, v)));
        let (region, provider_id, role_arn) =
            (get(REGION_VAR), get(PROVIDER_ID_VAR), get(ROLE_ARN_VAR));
        // TKE_REGION alone may be set for other reasons; the other three only for this.
        if token.is_none() && provider_id.is_none() && role_arn.is_none() {
            return Ok(None);
        }
        let missing: Vec<&str> = [
            (REGION_VAR, region.is_none()),
            (PROVIDER_ID_VAR, provider_id.is_none()),
            (TOKEN_FILE_VARS[0], token.is_none()),
            (ROLE_ARN_VAR, role_arn.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if !missing.is_empty() {
            return Err(CredentialError::Tke(format!(
                "{} not set: the exchange needs TKE_REGION, TKE_PROVIDER_ID, \
                 TKE_WEB_IDENTITY_TOKEN_FILE (or TKE_IDENTITY_TOKEN_FILE) and TKE_ROLE_ARN \
                 (TKE's pod identity webhook sets all four)",
                missing.join(", ")
            )));
        }
        let (token_var, token_file) = token.expect("checked above");
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CredentialError::Tke(format!("cannot build the HTTP client: {e}")))?;
        Ok(Some(TkeOidc {
            http,
            endpoint: endpoint.to_string(),
            region: region.expect("checked above"),
            provider_id: provider_id.expect("checked above"),
            role_arn: role_arn.expect("checked above"),
            token_var,
            token_file: PathBuf::from(token_file),
        }))
    }

    /// Where the token comes from, for messages: `TKE_WEB_IDENTITY_TOKEN_FILE /path`.
    pub(super) fn token_source(&self) -> String {
        format!("{} {}", self.token_var, self.token_file.display())
    }

    /// One exchange: the token file read now, sent to STS. The error names the variable, the
    /// file or STS's code, never the token or a key.
    pub(super) async fn fetch(&self) -> Result<TemporaryKeys, String> {
        let token =
            read_limited(&self.token_file).map_err(|r| format!("{}: {r}", self.token_source()))?;
        let token = String::from_utf8(token)
            .map_err(|_| format!("{}: not UTF-8 text", self.token_source()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("{}: empty", self.token_source()));
        }
        let session = format!("ci-worker-{}", chrono::Utc::now().timestamp_micros());
        let body = serde_json::json!({
            "ProviderId": self.provider_id,
            "WebIdentityToken": token,
            "RoleArn": self.role_arn,
            "RoleSessionName": session,
            "DurationSeconds": DURATION_SECONDS,
        });
        let resp = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::AUTHORIZATION, "SKIP")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-TC-Action", ACTION)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Region", &self.region)
            .header("X-TC-Timestamp", chrono::Utc::now().timestamp().to_string())
            .header(
                "X-TC-RequestClient",
                concat!("ci-worker/", env!("CARGO_PKG_VERSION")),
            )
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "STS at {} unreachable (ci.sts_endpoint): {}",
                    self.endpoint,
                    e.without_url()
                )
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("STS answer cut short: {}", e.without_url()))?;
        if bytes.len() > MAX_ANSWER {
            return Err(format!("STS answer larger than {MAX_ANSWER} bytes"));
        }
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|_| {
            format!(
                "HTTP {} from STS at {} without an API 3.0 answer (is ci.sts_endpoint STS?)",
                status.as_u16(),
                self.endpoint
            )
        })?;
        let r = answer.response;
        if let Some(e) = r.error {
            // STS's words, bounded, with anything that could be the token taken out.
            let message: String = e
                .message
                .replace(token, "<token>")
                .chars()
                .take(200)
                .collect();
            let hint = if e.code.contains("WebIdentityToken") {
                format!(
                    ": the token in {} is not accepted (is TKE_PROVIDER_ID the cluster's \
                     identity provider, and the service account allowed to assume TKE_ROLE_ARN?)",
                    self.token_source()
                )
            } else {
                String::new()
            };
            return Err(format!(
                "STS refused {ACTION} for {}: {} {message:?} (RequestId {}){hint}",
                self.role_arn, e.code, r.request_id
            ));
        }
        let (Some(keys), Some(expired_time)) = (r.credentials, r.expired_time) else {
            return Err("STS answer without Credentials or ExpiredTime".into());
        };
        let credentials = Credentials {
            secret_id: keys.secret_id,
            secret_key: keys.secret_key,
            session_token: Some(keys.token).filter(|t| !t.is_empty()),
        };
        credentials
            .check()
            .map_err(|r| format!("STS answer: {r}"))?;
        if credentials.session_token.is_none() {
            return Err("STS answer: missing field `Token`".into());
        }
        Ok(TemporaryKeys {
            credentials,
            expired_time: Some(expired_time),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::tests::vars;

    const EP: &str = "https://sts.tencentcloudapi.com/";

    #[test]
    fn none_set_is_no_source_some_set_names_the_missing() {
        let t = Duration::from_secs(1);
        assert!(
            TkeOidc::from_env(&vars(&[("TKE_REGION", "ap-guangzhou")]), EP, t)
                .unwrap()
                .is_none()
        );
        let e = TkeOidc::from_env(
            &vars(&[("TKE_ROLE_ARN", "qcs::cam::uin/1:roleName/r")]),
            EP,
            t,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.starts_with(
                "TKE OIDC: TKE_REGION, TKE_PROVIDER_ID, TKE_WEB_IDENTITY_TOKEN_FILE not set"
            ),
            "{e}"
        );
        // The older spelling of the token file's variable is read too.
        let all = [
            ("TKE_REGION", "ap-guangzhou"),
            ("TKE_PROVIDER_ID", "cls-x"),
            ("TKE_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("TKE_ROLE_ARN", "qcs::cam::uin/1:roleName/r"),
        ];
        let tke = TkeOidc::from_env(&vars(&all), EP, t).unwrap().unwrap();
        assert_eq!(tke.token_source(), "TKE_IDENTITY_TOKEN_FILE /var/run/token");
        let mut both = all.to_vec();
        both.push(("TKE_WEB_IDENTITY_TOKEN_FILE", "/new/token"));
        let tke = TkeOidc::from_env(&vars(&both), EP, t).unwrap().unwrap();
        assert_eq!(tke.token_source(), "TKE_WEB_IDENTITY_TOKEN_FILE /new/token");
    }
}
