//! Verification of the COS/CI request signature (`signature.md` in the reference), as tolerant as the
//! official SDKs require and strict about everything else.
//!
//! The signature is recomputed from exactly the names the request lists in `q-header-list` and
//! `q-url-param-list` (never "all headers"), with the values the request carries. Tolerated, because
//! the official SDKs do it:
//! - the host signed without the port while `Host` carries one (Python SDK), or with it (Go SDK);
//! - `PUT /jobs/<id>?cancel` signed with an empty parameter list (Python) or with `cancel=` (Go);
//! - parameter and header names lower-cased after encoding, values with upper-case hex;
//! - the path signed as sent or percent-decoded (`/jobs/a,b` vs `/jobs/a%2Cb`).
//!
//! Refused (CI's codes, `error-codes.md`, all HTTP 401): no `Authorization` → `MissingAuthorization`;
//! unparseable or non-sha1 → `InvalidAuthorization`; unknown `q-ak` → `SecretidNotExist`; now outside
//! `q-sign-time` → `SignatureExpired`; a signature that does not verify, a listed header or parameter
//! the request does not carry, or a missing/wrong session token → `AccessDenied`; a temporary key
//! set the emulator issued ([`super::metadata`]) used at or after its `ExpiredTime` →
//! `SignatureExpired` (CI documents no code of its own for an expired token: this is its 401 for
//! "expired", and what the worker must never see while it refreshes in time).

use super::error::{ApiError, EmulatorError};
use super::metadata::TemporaryKeys;
use crate::ci::sign::{self, Authorization};
use crate::config::Settings;
use crate::secret::Secret;
use axum::http::{HeaderMap, Method};
use std::collections::HashMap;
use std::sync::Arc;

/// One accepted key pair.
struct Key {
    secret_key: Secret,
    /// Temporary credentials: the token requests must carry (`x-ci-security-token` or
    /// `x-cos-security-token`).
    session_token: Option<Secret>,
}

/// Checks requests against the configured key pairs.
pub(crate) struct Verifier {
    keys: HashMap<String, Key>,
    /// The key sets issued on the metadata path (`emulator.cvm_roles`) and by STS
    /// (`emulator.web_identity_token_file`), valid until they expire.
    temporary: Arc<TemporaryKeys>,
    anonymous: bool,
}

/// The parts of a request the signature covers.
pub(crate) struct SignedRequest<'a> {
    pub method: &'a Method,
    /// The path as received (still percent-encoded).
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl Verifier {
    /// `ci.secret_id/secret_key` (with `ci.session_token`) plus every `emulator.credentials` pair.
    /// Without any pair the emulator refuses to start unless `emulator.allow_anonymous` is set.
    pub(crate) fn from_settings(settings: &Settings) -> Result<Verifier, EmulatorError> {
        let mut keys = HashMap::new();
        if !settings.ci.secret_id.is_empty() && !settings.ci.secret_key.is_empty() {
            keys.insert(
                settings.ci.secret_id.clone(),
                Key {
                    secret_key: settings.ci.secret_key.clone(),
                    session_token: (!settings.ci.session_token.is_empty())
                        .then(|| settings.ci.session_token.clone()),
                },
            );
        }
        for pair in &settings.emulator.credentials {
            if pair.secret_id.is_empty() || pair.secret_key.is_empty() {
                return Err(EmulatorError::InvalidSetting {
                    key: "emulator.credentials",
                    reason: "every pair needs a non-empty secret_id and secret_key".into(),
                });
            }
            keys.insert(
                pair.secret_id.clone(),
                Key {
                    secret_key: pair.secret_key.clone(),
                    session_token: None,
                },
            );
        }
        let anonymous = settings.emulator.allow_anonymous;
        let temporary = Arc::new(TemporaryKeys::new(
            &settings.emulator.cvm_roles,
            settings.emulator.temporary_credentials_lifetime.as_secs(),
        ));
        let sts = !settings.emulator.web_identity_token_file.trim().is_empty();
        if keys.is_empty() && !anonymous && !temporary.has_roles() && !sts {
            return Err(EmulatorError::NoCredentials);
        }
        Ok(Verifier {
            keys,
            temporary,
            anonymous,
        })
    }

    /// The temporary key sets (the metadata path issues them; the CMQ API accepts them too).
    pub(crate) fn temporary(&self) -> &Arc<TemporaryKeys> {
        &self.temporary
    }

    pub(crate) fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// Every key pair: `(secret_id, secret_key, session_token)`. The emulator's CMQ API accepts the
    /// same ones.
    pub(crate) fn key_pairs(&self) -> impl Iterator<Item = (&str, &Secret, Option<&Secret>)> {
        self.keys
            .iter()
            .map(|(id, k)| (id.as_str(), &k.secret_key, k.session_token.as_ref()))
    }

    /// Accepts the request or says why not, with CI's code; `now` is Unix seconds.
    pub(crate) fn verify(&self, req: &SignedRequest<'_>, now: i64) -> Result<(), ApiError> {
        if self.anonymous {
            return Ok(());
        }
        let value = match req.headers.get(axum::http::header::AUTHORIZATION) {
            None => {
                return Err(ApiError::unauthorized(
                    "MissingAuthorization",
                    "The request carries no Authorization header.",
                ))
            }
            Some(v) => v.to_str().map_err(|_| {
                ApiError::unauthorized(
                    "InvalidAuthorization",
                    "The Authorization header is not ASCII.",
                )
            })?,
        };
        if value.trim().is_empty() {
            return Err(ApiError::unauthorized(
                "MissingAuthorization",
                "The Authorization header is empty.",
            ));
        }
        let auth = sign::parse_authorization(value)
            .map_err(|e| ApiError::unauthorized("InvalidAuthorization", e.to_string()))?;
        let issued;
        let (secret_key, session_token) = match self.keys.get(&auth.secret_id) {
            Some(key) => (&key.secret_key, key.session_token.as_ref()),
            None => {
                issued = self.temporary.lookup(&auth.secret_id).ok_or_else(|| {
                    ApiError::unauthorized(
                        "SecretidNotExist",
                        format!("The SecretId {} does not exist.", auth.secret_id),
                    )
                })?;
                if issued.expired(now) {
                    return Err(ApiError::unauthorized(
                        "SignatureExpired",
                        format!(
                            "The temporary credentials {} expired at {} (ExpiredTime); the time is now {now}.",
                            auth.secret_id, issued.expired_time
                        ),
                    ));
                }
                (&issued.secret_key, Some(&issued.token))
            }
        };
        let (start, end) = auth.sign_time;
        if now < start || now > end {
            return Err(ApiError::unauthorized(
                "SignatureExpired",
                format!(
                    "The signature is valid from {start} to {end} (q-sign-time); the time is now {now}."
                ),
            ));
        }
        if let Some(token) = session_token {
            let sent = ["x-ci-security-token", "x-cos-security-token"]
                .iter()
                .find_map(|name| req.headers.get(*name))
                .and_then(|v| v.to_str().ok());
            if !sent.is_some_and(|s| constant_time_eq(s.as_bytes(), token.expose().as_bytes())) {
                return Err(ApiError::unauthorized(
                    "AccessDenied",
                    "These are temporary credentials: the request must carry their security token \
                     (x-ci-security-token).",
                ));
            }
        }
        if signature_matches(&auth, secret_key.expose(), req)? {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "AccessDenied",
                "The request signature we calculated does not match the signature you provided. \
                 Check your SecretKey and signing method.",
            ))
        }
    }
}

/// Recomputes the signature over every tolerated reading of the request and compares.
fn signature_matches(
    auth: &Authorization,
    secret_key: &str,
    req: &SignedRequest<'_>,
) -> Result<bool, ApiError> {
    let query = query_pairs(req.raw_query.unwrap_or(""));
    let mut params: Vec<(&str, &str)> = Vec::with_capacity(auth.url_param_list.len());
    for name in &auth.url_param_list {
        let found = query
            .iter()
            .find(|(k, _)| sign::encode(k).to_lowercase() == *name)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "AccessDenied",
                    format!("q-url-param-list names {name:?}, which the request does not carry."),
                )
            })?;
        params.push((found.0.as_str(), found.1.as_str()));
    }

    // Each signed header with the values it may have been signed with (only `host` has two).
    let mut headers: Vec<(String, Vec<String>)> = Vec::with_capacity(auth.header_list.len());
    for name in &auth.header_list {
        let value = req
            .headers
            .iter()
            .find(|(k, _)| sign::encode(k.as_str()).to_lowercase() == *name)
            .and_then(|(_, v)| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "AccessDenied",
                    format!("q-header-list names {name:?}, which the request does not carry."),
                )
            })?;
        let mut values = vec![value.to_string()];
        if name == "host" {
            let bare = strip_port(value);
            if bare != value {
                values.push(bare.to_string());
            }
        }
        headers.push((name.clone(), values));
    }

    let mut paths = vec![req.raw_path.to_string()];
    let decoded = percent_encoding::percent_decode_str(req.raw_path)
        .decode_utf8_lossy()
        .into_owned();
    if decoded != req.raw_path {
        paths.push(decoded);
    }

    let key_time = auth.key_time_str();
    let sign_time = auth.sign_time_str();
    let host_choices = headers
        .iter()
        .find(|(n, _)| n == "host")
        .map(|(_, v)| v.len())
        .unwrap_or(1);
    for path in &paths {
        for choice in 0..host_choices {
            let chosen: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, values)| {
                    let v = if n == "host" {
                        &values[choice]
                    } else {
                        &values[0]
                    };
                    (n.as_str(), v.as_str())
                })
                .collect();
            let http = sign::http_string(req.method.as_str(), path, &params, &chosen);
            let expected = sign::signature(secret_key, &key_time, &sign_time, &http);
            if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// `a=1&b&c=%20` → decoded pairs, in order (`b` has the value `""`). `+` stays `+`: COS signs with
/// RFC 3986 encoding, where a space is `%20`.
pub(crate) fn query_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// `host:port` → `host` (IPv6 literals in brackets keep their colons).
pub(crate) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyPair;
    use axum::http::HeaderValue;

    const ID: &str = "AKIDemulatortest";
    const KEY: &str = "emulator-secret-key";
    const NOW: i64 = 1_700_000_000;

    fn verifier() -> Verifier {
        let mut s = Settings::default();
        s.emulator.credentials.push(KeyPair {
            secret_id: ID.into(),
            secret_key: Secret::new(KEY),
        });
        Verifier::from_settings(&s).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn check(
        method: &Method,
        path: &str,
        query: Option<&str>,
        h: &HeaderMap,
    ) -> Result<(), ApiError> {
        verifier().verify(
            &SignedRequest {
                method,
                raw_path: path,
                raw_query: query,
                headers: h,
            },
            NOW,
        )
    }

    #[test]
    fn issued_temporary_credentials_work_until_their_expiry_then_get_signature_expired() {
        let mut s = Settings::default();
        s.emulator.cvm_roles = vec!["CVMas".into()];
        s.emulator.temporary_credentials_lifetime = std::time::Duration::from_secs(60);
        let v = Verifier::from_settings(&s).expect("roles alone are credentials enough");
        let issued = v.temporary().for_role("CVMas", NOW).unwrap();
        let at = |now: i64, token: &str| {
            let host = "b-1.ci.ap-guangzhou.myqcloud.com";
            let parts = sign::sign(
                &issued.secret_id,
                issued.secret_key.expose(),
                "GET",
                "/jobs/j1",
                &[],
                &[("Host", host), ("x-ci-security-token", token)],
                now - 60,
                now + 600,
            );
            let h = headers(&[
                ("host", host),
                ("x-ci-security-token", token),
                ("authorization", &parts.authorization),
            ]);
            v.verify(
                &SignedRequest {
                    method: &Method::GET,
                    raw_path: "/jobs/j1",
                    raw_query: None,
                    headers: &h,
                },
                now,
            )
            .map_err(|e| (e.status.as_u16(), e.code, e.message))
        };
        at(NOW + 59, issued.token.expose()).unwrap();
        assert_eq!(at(NOW + 30, "wrong-token").unwrap_err().1, "AccessDenied");
        let (status, code, message) = at(NOW + 60, issued.token.expose()).unwrap_err();
        assert_eq!((status, code), (401, "SignatureExpired"));
        assert!(message.contains("expired at"), "{message}");
        assert!(
            !message.contains(issued.token.expose())
                && !message.contains(issued.secret_key.expose())
        );
    }

    #[test]
    fn accepts_host_signed_without_port_and_with_it() {
        for signed_host in [
            "b-1.ci.ap-guangzhou.myqcloud.com",
            "b-1.ci.ap-guangzhou.myqcloud.com:9000",
        ] {
            let parts = sign::sign(
                ID,
                KEY,
                "GET",
                "/jobs/j1",
                &[],
                &[("Host", signed_host)],
                NOW - 60,
                NOW + 60,
            );
            let h = headers(&[
                ("host", "b-1.ci.ap-guangzhou.myqcloud.com:9000"),
                ("authorization", &parts.authorization),
            ]);
            check(&Method::GET, "/jobs/j1", None, &h).unwrap();
        }
    }

    #[test]
    fn cancel_signed_both_ways() {
        let host = "b-1.ci.ap-guangzhou.myqcloud.com";
        for params in [&[][..], &[("cancel", "")][..]] {
            let parts = sign::sign(
                ID,
                KEY,
                "PUT",
                "/jobs/j1",
                params,
                &[("host", host)],
                NOW,
                NOW + 5,
            );
            let h = headers(&[("host", host), ("authorization", &parts.authorization)]);
            check(&Method::PUT, "/jobs/j1", Some("cancel"), &h).unwrap();
        }
    }

    #[test]
    fn mixed_case_params_and_encoded_values() {
        let host = "b-1.ci.ap-guangzhou.myqcloud.com";
        let params = [
            ("orderByTime", "Desc"),
            ("startCreationTime", "2024-01-01T00:00:00+0800"),
        ];
        let parts = sign::sign(
            ID,
            KEY,
            "GET",
            "/jobs",
            &params,
            &[("host", host)],
            NOW,
            NOW + 5,
        );
        let h = headers(&[("host", host), ("authorization", &parts.authorization)]);
        let query = "orderByTime=Desc&startCreationTime=2024-01-01T00%3A00%3A00%2B0800";
        check(&Method::GET, "/jobs", Some(query), &h).unwrap();
        // A signed parameter whose value changed in transit does not verify.
        let tampered = "orderByTime=Asc&startCreationTime=2024-01-01T00%3A00%3A00%2B0800";
        let err = check(&Method::GET, "/jobs", Some(tampered), &h).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (401, "AccessDenied"));
    }

    #[test]
    fn refusals_carry_ci_codes() {
        let host = "b-1.ci.ap-guangzhou.myqcloud.com";
        let code = |auth: Option<&str>| {
            let mut h = headers(&[("host", host)]);
            if let Some(a) = auth {
                h.insert("authorization", HeaderValue::from_str(a).unwrap());
            }
            let e = check(&Method::GET, "/jobs/j1", None, &h).unwrap_err();
            (e.status.as_u16(), e.code)
        };
        assert_eq!(code(None), (401, "MissingAuthorization"));
        assert_eq!(code(Some("Bearer x")), (401, "InvalidAuthorization"));
        let unknown = sign::sign(
            "AKIDother",
            KEY,
            "GET",
            "/jobs/j1",
            &[],
            &[("host", host)],
            NOW,
            NOW + 5,
        );
        assert_eq!(
            code(Some(&unknown.authorization)),
            (401, "SecretidNotExist")
        );
        let expired = sign::sign(
            ID,
            KEY,
            "GET",
            "/jobs/j1",
            &[],
            &[("host", host)],
            NOW - 100,
            NOW - 1,
        );
        assert_eq!(
            code(Some(&expired.authorization)),
            (401, "SignatureExpired")
        );
        let wrong = sign::sign(
            ID,
            "wrong",
            "GET",
            "/jobs/j1",
            &[],
            &[("host", host)],
            NOW,
            NOW + 5,
        );
        assert_eq!(code(Some(&wrong.authorization)), (401, "AccessDenied"));
        let other_path = sign::sign(
            ID,
            KEY,
            "GET",
            "/jobs/j2",
            &[],
            &[("host", host)],
            NOW,
            NOW + 5,
        );
        assert_eq!(code(Some(&other_path.authorization)), (401, "AccessDenied"));
    }

    #[test]
    fn no_credentials_refuses_to_start_unless_anonymous() {
        let mut s = Settings::default();
        assert!(matches!(
            Verifier::from_settings(&s),
            Err(EmulatorError::NoCredentials)
        ));
        s.emulator.allow_anonymous = true;
        let v = Verifier::from_settings(&s).unwrap();
        let h = HeaderMap::new();
        v.verify(
            &SignedRequest {
                method: &Method::GET,
                raw_path: "/jobs",
                raw_query: None,
                headers: &h,
            },
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.b:9000"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
