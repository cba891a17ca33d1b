//! STS `AssumeRoleWithWebIdentity` (API 3.0, version 2018-08-13), the exchange a TKE pod's OIDC
//! identity makes for temporary keys, on the job API's listener as `POST /` (so one address serves
//! `ci.endpoint`, `ci.metadata_endpoint` and `ci.sts_endpoint`).
//!
//! The request is what the SDKs send: a JSON body `{"ProviderId", "WebIdentityToken", "RoleArn",
//! "RoleSessionName", "DurationSeconds"}` with the `X-TC-Action`, `X-TC-Version` and `X-TC-Region`
//! headers and no signature (`Authorization: SKIP`: the token is the credential). The token must
//! equal the content of `emulator.web_identity_token_file`, read at every call (whitespace around
//! either is ignored), so a test rotates it by rewriting the file. The answer is API 3.0's, HTTP 200
//! either way: `{"Response": {"Credentials": {"Token", "TmpSecretId", "TmpSecretKey"},
//! "ExpiredTime", "Expiration", "RequestId"}}`, or `{"Response": {"Error": {"Code", "Message"},
//! "RequestId"}}`. The keys come from [`super::metadata::TemporaryKeys`], so the CI and CMQ APIs
//! accept them until their `ExpiredTime` and refuse them after, as they do the CVM role's.

use super::metadata::TemporaryKeys;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};

/// The only action and version served.
const ACTION: &str = "AssumeRoleWithWebIdentity";
const VERSION: &str = "2018-08-13";
/// `DurationSeconds`' range (STS: 7200 when absent, at most 43200).
const MAX_DURATION_S: i64 = 43_200;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Request {
    #[serde(default)]
    provider_id: String,
    #[serde(default)]
    web_identity_token: String,
    #[serde(default)]
    role_arn: String,
    #[serde(default)]
    role_session_name: String,
    #[serde(default)]
    duration_seconds: Option<i64>,
}

/// A refusal: API 3.0's error code and message (never the token).
struct Refusal(&'static str, String);

/// The answer to one call at `now` (Unix seconds): the `{"Response": …}` body.
pub(crate) fn answer(
    headers: &HeaderMap,
    body: &[u8],
    token_file: &str,
    keys: &TemporaryKeys,
    now: i64,
) -> Value {
    let request_id = request_id();
    match exchange(headers, body, token_file, keys, now) {
        Ok(mut response) => {
            response["RequestId"] = json!(request_id);
            json!({ "Response": response })
        }
        Err(Refusal(code, message)) => {
            tracing::info!(code, %message, "emulator: STS AssumeRoleWithWebIdentity refused");
            json!({ "Response": {
                "Error": { "Code": code, "Message": message },
                "RequestId": request_id,
            }})
        }
    }
}

fn exchange(
    headers: &HeaderMap,
    body: &[u8],
    token_file: &str,
    keys: &TemporaryKeys,
    now: i64,
) -> Result<Value, Refusal> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let action = header("x-tc-action");
    if action != ACTION {
        return Err(Refusal(
            "InvalidAction",
            format!("The action {action:?} does not exist (this STS serves {ACTION} only)."),
        ));
    }
    let version = header("x-tc-version");
    if version != VERSION {
        return Err(Refusal(
            "NoSuchVersion",
            format!("The version {version:?} of {ACTION} does not exist (use {VERSION})."),
        ));
    }
    if header("x-tc-region").is_empty() {
        return Err(missing("Region (the X-TC-Region header)"));
    }
    let request: Request = serde_json::from_slice(body).map_err(|_| {
        Refusal(
            "InvalidParameter",
            "The request body is not a JSON object of the action's parameters.".into(),
        )
    })?;
    for (name, value) in [
        ("ProviderId", &request.provider_id),
        ("WebIdentityToken", &request.web_identity_token),
        ("RoleArn", &request.role_arn),
        ("RoleSessionName", &request.role_session_name),
    ] {
        if value.trim().is_empty() {
            return Err(missing(name));
        }
    }
    if let Some(d) = request.duration_seconds {
        if !(1..=MAX_DURATION_S).contains(&d) {
            return Err(Refusal(
                "InvalidParameterValue",
                format!("DurationSeconds {d} is not within 1–{MAX_DURATION_S}."),
            ));
        }
    }
    if !token_matches(token_file, &request.web_identity_token) {
        return Err(Refusal(
            "InvalidParameter.WebIdentityTokenError",
            "The WebIdentityToken is invalid or expired.".into(),
        ));
    }
    let issued = keys.issue(request.duration_seconds, now);
    tracing::info!(
        provider_id = %request.provider_id,
        role_arn = %request.role_arn,
        secret_id = %issued.secret_id,
        expired_time = issued.expired_time,
        "emulator: STS AssumeRoleWithWebIdentity issued temporary keys"
    );
    Ok(json!({
        "Credentials": {
            "Token": issued.token.expose(),
            "TmpSecretId": issued.secret_id,
            "TmpSecretKey": issued.secret_key.expose(),
        },
        "ExpiredTime": issued.expired_time,
        "Expiration": TemporaryKeys::expiration(issued.expired_time),
    }))
}

fn missing(name: &str) -> Refusal {
    Refusal(
        "MissingParameter",
        format!("The request is missing a required parameter {name}."),
    )
}

/// Whether `sent` is the token `emulator.web_identity_token_file` holds now; no file configured,
/// or one that cannot be read, accepts none.
fn token_matches(token_file: &str, sent: &str) -> bool {
    if token_file.trim().is_empty() {
        return false;
    }
    match std::fs::read_to_string(token_file.trim()) {
        Ok(expected) => {
            let (a, b) = (expected.trim().as_bytes(), sent.trim().as_bytes());
            !a.is_empty()
                && a.len() == b.len()
                && a.iter().zip(b).fold(0u8, |x, (p, q)| x | (p ^ q)) == 0
        }
        Err(e) => {
            tracing::warn!(file = token_file, error = %e.kind(), "emulator: emulator.web_identity_token_file unreadable: refusing the exchange");
            false
        }
    }
}

fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(action: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-tc-action", action),
            ("x-tc-version", VERSION),
            ("x-tc-region", "ap-guangzhou"),
            ("authorization", "SKIP"),
        ] {
            h.insert(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn body(token: &str) -> Vec<u8> {
        json!({"ProviderId": "cls-x", "WebIdentityToken": token,
               "RoleArn": "qcs::cam::uin/1:roleName/r", "RoleSessionName": "s",
               "DurationSeconds": 7200})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_token_in_the_file_gets_keys_that_the_apis_then_know() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "jwt-one\n").unwrap();
        let file = file.to_str().unwrap();
        let keys = TemporaryKeys::new(&[], 600);
        let v = answer(&headers(ACTION), &body("jwt-one"), file, &keys, 1000);
        let r = &v["Response"];
        assert_eq!(r["ExpiredTime"], 1600, "{v}");
        assert_eq!(r["Expiration"], "1970-01-01T00:26:40Z");
        assert!(!r["RequestId"].as_str().unwrap().is_empty());
        let id = r["Credentials"]["TmpSecretId"].as_str().unwrap();
        let issued = keys.lookup(id).unwrap();
        assert_eq!(r["Credentials"]["Token"], issued.token.expose());
        assert_eq!(r["Credentials"]["TmpSecretKey"], issued.secret_key.expose());
        // Rotated: the old token is refused, the new one accepted.
        std::fs::write(dir.path().join("token"), "jwt-two").unwrap();
        let v = answer(&headers(ACTION), &body("jwt-one"), file, &keys, 1000);
        assert_eq!(
            v["Response"]["Error"]["Code"],
            "InvalidParameter.WebIdentityTokenError"
        );
        assert!(!v.to_string().contains("jwt-"), "{v}");
        let v = answer(&headers(ACTION), &body("jwt-two"), file, &keys, 1000);
        assert!(v["Response"]["Credentials"].is_object(), "{v}");
    }

    #[test]
    fn refusals_carry_api_3_codes() {
        let keys = TemporaryKeys::new(&[], 600);
        let code = |h: &HeaderMap, b: &[u8], file: &str| {
            answer(h, b, file, &keys, 0)["Response"]["Error"]["Code"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(
            code(&headers("AssumeRole"), &body("t"), ""),
            "InvalidAction"
        );
        let mut no_region = headers(ACTION);
        no_region.remove("x-tc-region");
        assert_eq!(code(&no_region, &body("t"), ""), "MissingParameter");
        assert_eq!(code(&headers(ACTION), b"{", ""), "InvalidParameter");
        assert_eq!(
            code(&headers(ACTION), br#"{"ProviderId":"p"}"#, ""),
            "MissingParameter"
        );
        // No token configured: nothing is accepted.
        assert_eq!(
            code(&headers(ACTION), &body("t"), ""),
            "InvalidParameter.WebIdentityTokenError"
        );
    }
}
