//! What every credential source shares: the error, a key set with its expiry, and the one JSON
//! answer the CVM metadata service and `ci.credentials_file` both give. A leaf: the sources and the
//! chain ([`super`]) import it, never the other way round.

use crate::ci::sign::Credentials;
use crate::secret::Secret;
use serde::Deserialize;
use std::time::Duration;

/// How often `ci.credentials_file` is read for a change.
pub const FILE_POLL: Duration = Duration::from_secs(2);
/// Largest metadata answer or credentials file read.
pub const MAX_ANSWER: usize = 64 * 1024;

/// Why no usable keys could be had. Names the configuration key, variable or file, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("ci.credentials_file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("ci.cvm_role {role}: {reason}")]
    Role { role: String, reason: String },
    #[error("CVM role {role} (named by the metadata service; ci.cvm_role is empty): {reason}")]
    DiscoveredRole { role: String, reason: String },
    #[error("profile file {path}: {reason}")]
    Profile { path: String, reason: String },
    #[error("TKE OIDC: {0}")]
    Tke(String),
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

pub(crate) fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}
