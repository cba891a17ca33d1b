//! The CMQ API 2.0 request signature (`cmq-signature.md` in the reference): HmacSHA1 or HmacSHA256
//! over `<METHOD><host><path>?<sorted params>`, Base64. Pure: nonce and time are parameters, so the
//! documents' examples reproduce byte for byte.
//!
//! The string to sign:
//! 1. every request parameter except `Signature`, sorted by name (byte order, as Python's `sorted`
//!    and Java's `TreeMap` sort the official SDKs' parameters);
//! 2. each as `name=value` with the raw value (not URL-encoded) and `_` in the *name* written as `.`;
//! 3. joined with `&`, prefixed with the upper-case method, the host (with its port when the client
//!    connects to one), the path (`/v2/index.php`) and `?`.

use crate::secret::Secret;
use base64::Engine;
use hmac::{Hmac, Mac};

/// The one path of CMQ API 2.0.
pub const PATH: &str = "/v2/index.php";

crate::ci::rules::closed_set! {
    /// `SignatureMethod`: which HMAC signs the request. CMQ uses HmacSHA256 only when the parameter
    /// says so, HmacSHA1 otherwise (also when it is absent).
    #[derive(Default)]
    pub enum SignatureMethod: "must be HmacSHA256 or HmacSHA1" {
        #[default]
        HmacSha256 = "HmacSHA256",
        HmacSha1 = "HmacSHA1",
    }
}

impl SignatureMethod {
    /// How CMQ reads the parameter on a request: HmacSHA256 only when named exactly.
    pub fn of_request(parameter: Option<&str>) -> SignatureMethod {
        match parameter {
            Some("HmacSHA256") => SignatureMethod::HmacSha256,
            _ => SignatureMethod::HmacSha1,
        }
    }
}

/// The string the signature is computed over (see the module doc). `params` may hold `Signature`; it
/// is left out.
pub fn string_to_sign(method: &str, host: &str, path: &str, params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<(String, &str)> = params
        .iter()
        .filter(|(name, _)| *name != "Signature")
        .map(|(name, value)| (name.replace('_', "."), *value))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = format!("{}{host}{path}?", method.to_ascii_uppercase());
    for (i, (name, value)) in sorted.iter().enumerate() {
        if i > 0 {
            text.push('&');
        }
        text.push_str(name);
        text.push('=');
        text.push_str(value);
    }
    text
}

/// Base64 of the HMAC of `text` keyed by `secret_key`.
pub fn signature(method: SignatureMethod, secret_key: &str, text: &str) -> String {
    let digest = match method {
        SignatureMethod::HmacSha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret_key.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(text.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        SignatureMethod::HmacSha256 => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret_key.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(text.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Whether `claimed` (the request's `Signature`, URL-decoded) is the signature of `text`; compared in
/// constant time.
pub fn verify(method: SignatureMethod, secret_key: &str, text: &str, claimed: &str) -> bool {
    let Ok(claimed) = base64::engine::general_purpose::STANDARD.decode(claimed.trim()) else {
        return false;
    };
    match method {
        SignatureMethod::HmacSha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret_key.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(text.as_bytes());
            mac.verify_slice(&claimed).is_ok()
        }
        SignatureMethod::HmacSha256 => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret_key.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(text.as_bytes());
            mac.verify_slice(&claimed).is_ok()
        }
    }
}

/// A CMQ key pair (the CI credentials serve for CMQ too), with the token of temporary credentials.
#[derive(Debug, Clone)]
pub struct CmqCredentials {
    pub secret_id: String,
    pub secret_key: Secret,
    /// Sent as the `Token` common parameter (API 2.0's parameter for temporary credentials).
    pub token: Option<Secret>,
}

/// One request's common parameters, fixed by the caller so that signing stays pure.
#[derive(Debug, Clone, Copy)]
pub struct RequestStamp {
    pub nonce: u64,
    pub timestamp: i64,
}

/// `params` (the action's own) with the common parameters added and signed: `Action`, `Nonce`,
/// `RequestClient`, `SecretId`, `SignatureMethod`, `Timestamp`, `Token` (temporary credentials
/// only) and `Signature`. Returned in the order to send; the body is these, form-urlencoded.
pub fn signed_params(
    credentials: &CmqCredentials,
    method: SignatureMethod,
    host: &str,
    action: &str,
    params: &[(&str, String)],
    stamp: RequestStamp,
) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = vec![
        ("Action".into(), action.into()),
        ("Nonce".into(), stamp.nonce.to_string()),
        ("RequestClient".into(), REQUEST_CLIENT.into()),
        ("SecretId".into(), credentials.secret_id.clone()),
        ("SignatureMethod".into(), method.as_str().into()),
        ("Timestamp".into(), stamp.timestamp.to_string()),
    ];
    if let Some(token) = credentials.token.as_ref().filter(|t| !t.is_empty()) {
        all.push(("Token".into(), token.expose().to_string()));
    }
    all.extend(params.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let borrowed: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let text = string_to_sign("POST", host, PATH, &borrowed);
    let sig = signature(method, credentials.secret_key.expose(), &text);
    all.push(("Signature".into(), sig));
    all
}

/// What the worker sends as `RequestClient` (the SDKs send `SDK_Python_1.3`, `SDK_JAVA_1.3`).
pub const REQUEST_CLIENT: &str = concat!("ci-worker_", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(&str, &str)> {
        query
            .split('&')
            .map(|kv| kv.split_once('=').unwrap())
            .collect()
    }

    /// CMQ's own example (406/5906): a SendMessage over POST, HmacSHA1.
    #[test]
    fn cmq_signature_page_example() {
        let params = pairs(
            "clientRequestId=123***1231&Nonce=2889712707386595659&Timestamp=1534154812&msgBody=msg\
             &Action=SendMessage&SignatureMethod=HmacSHA1&RequestClient=SDK_Python_1.3\
             &delaySeconds=0&SecretId=AKIDPcY*****CVYLn3zT&queueName=test1",
        );
        let text = string_to_sign("POST", "cmq-queue-gz.api.tencentyun.com", PATH, &params);
        assert_eq!(
            text,
            "POSTcmq-queue-gz.api.tencentyun.com/v2/index.php?Action=SendMessage\
             &Nonce=2889712707386595659&RequestClient=SDK_Python_1.3&SecretId=AKIDPcY*****CVYLn3zT\
             &SignatureMethod=HmacSHA1&Timestamp=1534154812&clientRequestId=123***1231\
             &delaySeconds=0&msgBody=msg&queueName=test1"
        );
        // The page's signature (C16WEtEXsD5v5tnaUMLAbZewXhI=) was computed before the SecretId and
        // clientRequestId were masked (`*****`), so it cannot be reproduced from the published text;
        // the unmasked API 2.0 examples below check the HMAC and Base64 steps.
        let key = "pPgfLipfEXZ7VcRzhAMIyPaU7UbQyFFx";
        let sig = signature(SignatureMethod::HmacSha1, key, &text);
        assert!(verify(SignatureMethod::HmacSha1, key, &text, &sig));
        assert!(!verify(
            SignatureMethod::HmacSha1,
            "pPgfLipfEXZ7VcRzhAMIyPaU7UbQyFFy",
            &text,
            &sig
        ));
    }

    /// The API 2.0 signature page's examples: the same string under both methods, and `_` in a name.
    #[test]
    fn api_2_signature_page_examples() {
        let key = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA";
        for (method, expected) in [
            (
                SignatureMethod::HmacSha256,
                "0EEm/HtGRr/VJXTAD9tYMth1Bzm3lLHz5RCDv1GdM8s=",
            ),
            (SignatureMethod::HmacSha1, "nPVnY6njQmwQ8ciqbPl5Qe+Oru4="),
        ] {
            let query = format!(
                "Action=DescribeInstances&InstanceIds_0=ins-09dx96dg&Nonce=11886\
                 &Region=ap-guangzhou&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA\
                 &SignatureMethod={}&Timestamp=1465185768",
                method.as_str()
            );
            let params = pairs(&query);
            let text = string_to_sign("get", "cvm.api.qcloud.com", PATH, &params);
            assert!(text.contains("&InstanceIds.0=ins-09dx96dg&"), "{text}");
            assert_eq!(signature(method, key, &text), expected);
        }
        // The 2019 page: lower-case names sort after upper-case ones.
        let params = pairs(
            "limit=20&offset=0&instanceIds.0=ins-09dx96dg&Action=DescribeInstances&Nonce=11886\
             &Region=gz&SecretId=AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA&Timestamp=1465185768",
        );
        let text = string_to_sign("GET", "cvm.api.qcloud.com", PATH, &params);
        assert_eq!(
            signature(SignatureMethod::HmacSha1, key, &text),
            "NSI3UqqD99b/UJb4tbG/xZpRW64="
        );
    }

    #[test]
    fn only_hmac_sha256_named_exactly_selects_sha256() {
        assert_eq!(
            SignatureMethod::of_request(Some("HmacSHA256")),
            SignatureMethod::HmacSha256
        );
        for other in [None, Some("HmacSHA1"), Some("hmacsha256"), Some("")] {
            assert_eq!(
                SignatureMethod::of_request(other),
                SignatureMethod::HmacSha1
            );
        }
    }

    #[test]
    fn signed_params_verify_and_carry_the_token() {
        let credentials = CmqCredentials {
            secret_id: "AKIDexample".into(),
            secret_key: Secret::new("key"),
            token: Some(Secret::new("tok")),
        };
        let stamp = RequestStamp {
            nonce: 42,
            timestamp: 1_700_000_000,
        };
        let params = signed_params(
            &credentials,
            SignatureMethod::HmacSha256,
            "127.0.0.1:9100",
            "BatchReceiveMessage",
            &[("queueName", "q".into()), ("numOfMsg", "16".into())],
            stamp,
        );
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("Token"), Some("tok"));
        assert_eq!(get("SignatureMethod"), Some("HmacSHA256"));
        let borrowed: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let text = string_to_sign("POST", "127.0.0.1:9100", PATH, &borrowed);
        assert!(verify(
            SignatureMethod::HmacSha256,
            "key",
            &text,
            get("Signature").unwrap()
        ));
        // Another host (or port) is another signature.
        let elsewhere = string_to_sign("POST", "127.0.0.1:9101", PATH, &borrowed);
        assert!(!verify(
            SignatureMethod::HmacSha256,
            "key",
            &elsewhere,
            get("Signature").unwrap()
        ));
    }
}
