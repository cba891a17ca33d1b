//! The COS/CI request signature, `q-sign-algorithm=sha1` (see `signature.md` in the reference).
//! Pure: the clock is a parameter, so the official SDK's vectors reproduce byte for byte.
//!
//! The steps, for one request signed over `start;end` (Unix seconds):
//! 1. `KeyTime` = `SignTime` = `"<start>;<end>"`;
//! 2. `SignKey` = hex(HMAC-SHA1(SecretKey, KeyTime));
//! 3. `HttpString` = lower(method) `\n` path `\n` params `\n` headers `\n`, where params and headers are
//!    `k=v` pairs joined with `&`, keys encoded then lower-cased, values encoded, sorted by key;
//! 4. `StringToSign` = `sha1\n<SignTime>\n<hex(SHA1(HttpString))>\n`;
//! 5. `Signature` = hex(HMAC-SHA1(SignKey as its hex text, StringToSign)).
//!
//! The server side (the emulator) reads an `Authorization` back with [`parse_authorization`] and
//! recomputes it from exactly the names in its `q-header-list` / `q-url-param-list` with
//! [`http_string`] and [`signature`].

use crate::secret::Secret;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha1::{Digest, Sha1};

/// The header that carries the session token of temporary credentials on CI requests (the Python
/// SDK's; the Go SDK sends `x-cos-security-token`). Signed like any `x-ci-*` header.
pub const SECURITY_TOKEN_HEADER: &str = "x-ci-security-token";

/// The only algorithm COS/CI signatures use.
pub const ALGORITHM: &str = "sha1";

/// A CI key pair, with the session token of temporary credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub secret_id: String,
    pub secret_key: Secret,
    pub session_token: Option<Secret>,
}

impl Credentials {
    /// The `(x-ci-security-token, token)` header to send (and sign) with every request, when these are
    /// temporary credentials. The value is the token itself: never log it.
    pub fn token_header(&self) -> Option<(&'static str, &str)> {
        self.session_token
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(|t| (SECURITY_TOKEN_HEADER, t.expose()))
    }

    /// The `Authorization` value for one request signed over `start..end`; `headers` must be the
    /// headers sent, [`Credentials::token_header`] included (only the [`should_sign_header`] ones are
    /// signed).
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        headers: &[(&str, &str)],
        start: i64,
        end: i64,
    ) -> String {
        sign(
            &self.secret_id,
            self.secret_key.expose(),
            method,
            path,
            params,
            headers,
            start,
            end,
        )
        .authorization
    }
}

impl Credentials {
    /// Why these cannot sign a request, if they cannot: an empty half, a SecretId that cannot go
    /// into an `Authorization` header, a token that is not a header value. Never names a value.
    pub fn check(&self) -> Result<(), String> {
        if self.secret_id.is_empty() || self.secret_key.is_empty() {
            return Err("credentials need both a SecretId and a SecretKey".into());
        }
        if self.secret_id.contains(['&', '=', ';'])
            || !self.secret_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(
                "SecretId has characters that cannot go into an Authorization header".into(),
            );
        }
        if let Some((_, token)) = self.token_header() {
            if !token
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                return Err("the session token is not a valid HTTP header value".into());
            }
        }
        Ok(())
    }
}

/// The key set every request is signed with, replaceable while clients use it: temporary
/// credentials (`ci.credentials_file`, `ci.cvm_role`) are swapped in by a refresher while the CI and
/// CMQ clients take [`SharedCredentials::current`] once per request, so a request's token and
/// signature always come from one key set. Cheap on the hot path: an uncontended read lock and an
/// `Arc` clone; the writer takes the lock only to swap the pointer.
#[derive(Clone)]
pub struct SharedCredentials(std::sync::Arc<parking_lot::RwLock<std::sync::Arc<Credentials>>>);

impl SharedCredentials {
    pub fn new(credentials: Credentials) -> SharedCredentials {
        SharedCredentials(std::sync::Arc::new(parking_lot::RwLock::new(
            std::sync::Arc::new(credentials),
        )))
    }

    /// The key set to sign the next request with.
    pub fn current(&self) -> std::sync::Arc<Credentials> {
        self.0.read().clone()
    }

    /// Makes `credentials` the key set of every request from now on.
    pub fn replace(&self, credentials: Credentials) {
        let next = std::sync::Arc::new(credentials);
        *self.0.write() = next;
    }
}

impl std::fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedCredentials")
            .field(&self.current())
            .finish()
    }
}

/// Every intermediate of one signature (tests compare each against the official vectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignParts {
    pub http_string: String,
    pub sign_key: String,
    pub string_to_sign: String,
    pub signature: String,
    pub authorization: String,
}

/// Signs one request. `params` and `headers` are the (name, value) pairs to sign, as sent (any case,
/// unencoded); `start..end` is the sign/key time in Unix seconds.
///
/// Every parameter is signed; of the headers only those [`should_sign_header`] accepts, as the
/// Python SDK does (so `User-Agent`, `Accept` and `Date` may be passed and are left out).
#[allow(clippy::too_many_arguments)] // the signature's inputs, one each; kept flat for the vectors
pub fn sign(
    secret_id: &str,
    secret_key: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
    start: i64,
    end: i64,
) -> SignParts {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .copied()
        .filter(|(name, _)| should_sign_header(name))
        .collect();
    let (param_list, param_string) = canonical(params);
    let (header_list, header_string) = canonical(&headers);
    let http_string = join_http_string(method, path, &param_string, &header_string);
    let time = format!("{start};{end}");
    let sign_key = sign_key(secret_key, &time);
    let string_to_sign = string_to_sign(&time, &http_string);
    let signature = hmac_sha1_hex(sign_key.as_bytes(), string_to_sign.as_bytes());
    let authorization = format!(
        "q-sign-algorithm={ALGORITHM}&q-ak={secret_id}&q-sign-time={time}&q-key-time={time}\
         &q-header-list={header_list}&q-url-param-list={param_list}&q-signature={signature}"
    );
    SignParts {
        http_string,
        sign_key,
        string_to_sign,
        signature,
        authorization,
    }
}

/// An `Authorization` header value, read back (for server-side verification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub secret_id: String,
    /// `q-sign-time`: the window in which the signature is valid, Unix seconds.
    pub sign_time: (i64, i64),
    /// `q-key-time`: the window the sign key was derived for (equal to `sign_time` in both SDKs).
    pub key_time: (i64, i64),
    /// `q-header-list`: the signed header names, encoded and lower-cased, in the order given.
    pub header_list: Vec<String>,
    /// `q-url-param-list`: the signed parameter names, encoded and lower-cased, in the order given.
    pub url_param_list: Vec<String>,
    /// `q-signature`: lower-case hex.
    pub signature: String,
}

impl Authorization {
    /// `q-sign-time` as it appears in the header, for [`signature`].
    pub fn sign_time_str(&self) -> String {
        format!("{};{}", self.sign_time.0, self.sign_time.1)
    }

    /// `q-key-time` as it appears in the header, for [`signature`].
    pub fn key_time_str(&self) -> String {
        format!("{};{}", self.key_time.0, self.key_time.1)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// The value is not a COS/CI authorization (missing or repeated field, bad time, bad hex).
    #[error("malformed Authorization: {0}")]
    Malformed(String),
    /// `q-sign-algorithm` is not `sha1`.
    #[error("unsupported q-sign-algorithm {0:?} (only sha1)")]
    UnsupportedAlgorithm(String),
}

/// Reads an `Authorization` value (`q-sign-algorithm=sha1&q-ak=…&…&q-signature=…`). Every field is
/// required (the two lists may be empty); unknown `q-*` fields are ignored.
pub fn parse_authorization(value: &str) -> Result<Authorization, SignError> {
    let malformed = |m: String| SignError::Malformed(m);
    let value = value.trim();
    if value.is_empty() {
        return Err(malformed("empty value".into()));
    }
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for part in value.split('&') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| malformed(format!("field {part:?} has no '='")))?;
        if fields.iter().any(|(seen, _)| *seen == k) {
            return Err(malformed(format!("{k} appears twice")));
        }
        fields.push((k, v));
    }
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| malformed(format!("missing {name}")))
    };
    let algorithm = field("q-sign-algorithm")?;
    if algorithm != ALGORITHM {
        return Err(SignError::UnsupportedAlgorithm(algorithm.to_string()));
    }
    let secret_id = field("q-ak")?;
    if secret_id.is_empty() {
        return Err(malformed("empty q-ak".into()));
    }
    let sign_time = parse_time("q-sign-time", field("q-sign-time")?)?;
    let key_time = parse_time("q-key-time", field("q-key-time")?)?;
    let list = |v: &str| -> Vec<String> {
        v.split(';')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let header_list = list(field("q-header-list")?);
    let url_param_list = list(field("q-url-param-list")?);
    let signature = field("q-signature")?;
    if signature.len() != 40 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(format!(
            "q-signature must be 40 hex digits, got {} characters",
            signature.len()
        )));
    }
    Ok(Authorization {
        secret_id: secret_id.to_string(),
        sign_time,
        key_time,
        header_list,
        url_param_list,
        signature: signature.to_ascii_lowercase(),
    })
}

fn parse_time(name: &str, v: &str) -> Result<(i64, i64), SignError> {
    let bad = || {
        SignError::Malformed(format!(
            "{name} must be <start>;<end> in Unix seconds, got {v:?}"
        ))
    };
    let (a, b) = v.split_once(';').ok_or_else(bad)?;
    let start: i64 = a.parse().map_err(|_| bad())?;
    let end: i64 = b.parse().map_err(|_| bad())?;
    if start < 0 || end < start {
        return Err(bad());
    }
    Ok((start, end))
}

/// HttpString from already-chosen (name, value) pairs (names any case, values unencoded).
pub fn http_string(
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> String {
    let (_, p) = canonical(params);
    let (_, h) = canonical(headers);
    join_http_string(method, path, &p, &h)
}

/// hex HMAC-SHA1 signature of an HttpString
pub fn signature(secret_key: &str, key_time: &str, sign_time: &str, http_string: &str) -> String {
    let key = sign_key(secret_key, key_time);
    hmac_sha1_hex(
        key.as_bytes(),
        string_to_sign(sign_time, http_string).as_bytes(),
    )
}

/// the header names the official Python SDK signs (host, content-type, content-md5, content-length, ... and every x-cos-*/x-ci-*)
pub fn should_sign_header(name: &str) -> bool {
    const SIGNED: [&str; 16] = [
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-type",
        "content-md5",
        "content-length",
        "expect",
        "expires",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "origin",
        "range",
        "transfer-encoding",
    ];
    let name = name.to_ascii_lowercase();
    SIGNED.contains(&name.as_str())
        || name == "pic-operations"
        || name.starts_with("x-cos-")
        || name.starts_with("x-ci-")
}

/// Everything but the RFC 3986 unreserved characters (letters, digits, `-_.~`).
const ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// RFC 3986 encoding with safe set -_.~, uppercase hex (UTF-8 bytes, space → `%20`).
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE_SET).to_string()
}

/// The `;`-joined key list and the `&`-joined `k=v` string: keys encoded then lower-cased, values
/// encoded, sorted by key (then value, so repeated keys are deterministic).
fn canonical(pairs: &[(&str, &str)]) -> (String, String) {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (encode(k).to_lowercase(), encode(v)))
        .collect();
    encoded.sort();
    let list = encoded
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let joined = encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    (list, joined)
}

fn join_http_string(method: &str, path: &str, params: &str, headers: &str) -> String {
    format!("{}\n{path}\n{params}\n{headers}\n", method.to_lowercase())
}

fn sign_key(secret_key: &str, key_time: &str) -> String {
    hmac_sha1_hex(secret_key.as_bytes(), key_time.as_bytes())
}

fn string_to_sign(sign_time: &str, http_string: &str) -> String {
    format!(
        "{ALGORITHM}\n{sign_time}\n{}\n",
        hex::encode(Sha1::digest(http_string.as_bytes()))
    )
}

fn hmac_sha1_hex(key: &[u8], msg: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg);
    hex::encode(mac.finalize().into_bytes())
}

/// Test support: the values a server would verify, looked up in `all` (case-insensitively) by the
/// names an Authorization lists; `Err(name)` for a listed name that was not sent.
#[cfg(test)]
pub(crate) fn signed_values<'a>(
    all: &'a [(String, String)],
    names: &[String],
) -> Result<Vec<(&'a str, &'a str)>, String> {
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .ok_or_else(|| n.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../../tests/fixtures/sign_vectors.json");

    fn pairs(v: &Value) -> Vec<(String, String)> {
        v.as_object()
            .expect("an object of name → value")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_string()))
            .collect()
    }

    fn borrowed(p: &[(String, String)]) -> Vec<(&str, &str)> {
        p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    struct Fixture {
        secret_id: String,
        secret_key: String,
        start: i64,
        end: i64,
        vectors: Vec<Value>,
    }

    fn fixture() -> Fixture {
        let doc: Value = serde_json::from_str(VECTORS).expect("fixture is JSON");
        let key_time = doc["key_time"].as_str().unwrap();
        let (start, end) = key_time.split_once(';').unwrap();
        let now = doc["patched_now"].as_i64().unwrap();
        let start: i64 = start.parse().unwrap();
        let end: i64 = end.parse().unwrap();
        // The Python SDK's window, which the vectors were computed with.
        assert_eq!(
            (start, end),
            (now - 60, now + doc["expire"].as_i64().unwrap())
        );
        let vectors = doc["vectors"].as_array().unwrap().clone();
        assert!(vectors.len() >= 4, "fixture lost vectors");
        Fixture {
            secret_id: doc["secret_id"].as_str().unwrap().to_string(),
            secret_key: doc["secret_key"].as_str().unwrap().to_string(),
            start,
            end,
            vectors,
        }
    }

    #[test]
    fn reproduces_every_official_vector() {
        let f = fixture();
        for v in &f.vectors {
            let name = v["name"].as_str().unwrap();
            let params = pairs(&v["query_params_signed"]);
            let headers = pairs(&v["headers"]);
            let parts = sign(
                &f.secret_id,
                &f.secret_key,
                v["method"].as_str().unwrap(),
                v["path"].as_str().unwrap(),
                &borrowed(&params),
                &borrowed(&headers),
                f.start,
                f.end,
            );
            for (field, got) in [
                ("http_string", &parts.http_string),
                ("sign_key", &parts.sign_key),
                ("string_to_sign", &parts.string_to_sign),
                ("signature", &parts.signature),
                ("authorization", &parts.authorization),
            ] {
                assert_eq!(got, v[field].as_str().unwrap(), "{name}: {field}");
            }
            // The pieces the emulator uses give the same answer from the signed names alone.
            let signed: Vec<(String, String)> = headers
                .iter()
                .filter(|(k, _)| should_sign_header(k))
                .cloned()
                .collect();
            let names: Vec<String> = signed.iter().map(|(k, _)| k.to_lowercase()).collect();
            let mut expected_names: Vec<String> = v["headers_signed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            expected_names.sort();
            let mut names_sorted = names.clone();
            names_sorted.sort();
            assert_eq!(names_sorted, expected_names, "{name}: signed headers");
            let hs = http_string(
                v["method"].as_str().unwrap(),
                v["path"].as_str().unwrap(),
                &borrowed(&params),
                &borrowed(&signed),
            );
            assert_eq!(hs, parts.http_string, "{name}: http_string()");
            let time = format!("{};{}", f.start, f.end);
            assert_eq!(
                signature(&f.secret_key, &time, &time, &hs),
                parts.signature,
                "{name}: signature()"
            );
        }
    }

    #[test]
    fn parse_authorization_round_trips_every_vector() {
        let f = fixture();
        for v in &f.vectors {
            let name = v["name"].as_str().unwrap();
            let auth = parse_authorization(v["authorization"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(auth.secret_id, f.secret_id, "{name}");
            assert_eq!(auth.sign_time, (f.start, f.end), "{name}");
            assert_eq!(auth.key_time, (f.start, f.end), "{name}");
            assert_eq!(auth.signature, v["signature"].as_str().unwrap(), "{name}");
            let mut expected_headers: Vec<String> = v["headers_signed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            expected_headers.sort();
            assert_eq!(auth.header_list, expected_headers, "{name}");
            let expected_params: Vec<String> = pairs(&v["query_params_signed"])
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(auth.url_param_list, expected_params, "{name}");

            // Verify as the emulator will: values looked up by the names in the lists.
            let headers = pairs(&v["headers"]);
            let params = pairs(&v["query_params_signed"]);
            let pick = |all, names| {
                signed_values(all, names).unwrap_or_else(|n| panic!("{name}: {n} not sent"))
            };
            let hs = http_string(
                v["method"].as_str().unwrap(),
                v["path"].as_str().unwrap(),
                &pick(&params, &auth.url_param_list),
                &pick(&headers, &auth.header_list),
            );
            assert_eq!(
                signature(
                    &f.secret_key,
                    &auth.key_time_str(),
                    &auth.sign_time_str(),
                    &hs
                ),
                auth.signature,
                "{name}: recomputed"
            );
            // A wrong key does not verify.
            assert_ne!(
                signature(
                    "not-the-key",
                    &auth.key_time_str(),
                    &auth.sign_time_str(),
                    &hs
                ),
                auth.signature,
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_authorizations_are_rejected_with_the_reason() {
        let good = "q-sign-algorithm=sha1&q-ak=AKID&q-sign-time=10;20&q-key-time=10;20\
                    &q-header-list=host&q-url-param-list=&q-signature=13b63082a25fbaa0a90450b6ebc2d31e3db4242e";
        assert!(parse_authorization(good).is_ok());
        let sig = "13b63082a25fbaa0a90450b6ebc2d31e3db4242e";
        let cases = [
            (good.replace("q-ak=AKID&", ""), "missing q-ak"),
            (
                good.replace("q-sign-time=10;20&", ""),
                "missing q-sign-time",
            ),
            (
                good.replace("q-sign-time=10;20", "q-sign-time=20;10"),
                "q-sign-time must be",
            ),
            (
                good.replace("q-key-time=10;20", "q-key-time=10"),
                "q-key-time must be",
            ),
            (
                good.replace("&q-header-list=host", ""),
                "missing q-header-list",
            ),
            (
                good.replace("&q-url-param-list=", ""),
                "missing q-url-param-list",
            ),
            (
                good.replace(&format!("&q-signature={sig}"), ""),
                "missing q-signature",
            ),
            (good.replace(sig, "xyz"), "40 hex digits"),
            (
                good.replace("q-sign-algorithm=sha1&", ""),
                "missing q-sign-algorithm",
            ),
            (format!("{good}&q-ak=AKID"), "q-ak appears twice"),
            (good.replace("q-ak=AKID", "q-ak"), "has no '='"),
            (String::new(), "empty value"),
        ];
        for (value, reason) in &cases {
            match parse_authorization(value) {
                Err(SignError::Malformed(m)) => assert!(m.contains(reason), "{value:?}: {m}"),
                other => panic!("{value:?}: expected Malformed({reason}), got {other:?}"),
            }
        }
        for bad_time in ["q-sign-time=a;20", "q-sign-time=10;", "q-sign-time=-5;20"] {
            let value = good.replace("q-sign-time=10;20", bad_time);
            assert!(
                matches!(parse_authorization(&value), Err(SignError::Malformed(_))),
                "{bad_time}"
            );
        }
        let md5 = good.replace("q-sign-algorithm=sha1", "q-sign-algorithm=md5");
        assert_eq!(
            parse_authorization(&md5),
            Err(SignError::UnsupportedAlgorithm("md5".into()))
        );
        assert!(parse_authorization("Bearer abc")
            .unwrap_err()
            .to_string()
            .contains("malformed Authorization"));
    }

    #[test]
    fn encodes_keys_then_lowercases_and_keeps_value_hex_uppercase() {
        assert_eq!(
            encode("a b/c:d+e=f&g,h;i-_.~Z"),
            "a%20b%2Fc%3Ad%2Be%3Df%26g%2Ch%3Bi-_.~Z"
        );
        assert_eq!(encode("é"), "%C3%A9");
        let hs = http_string(
            "GET",
            "/jobs",
            &[
                ("X-Custom Param", "A/B"),
                ("tag", "DigitalWatermark"),
                ("a/B", "c:D"),
            ],
            &[("Host", "h")],
        );
        // Encoded then lower-cased: the key's escape turns lower case too, the value's does not.
        assert_eq!(
            hs,
            "get\n/jobs\na%2fb=c%3AD&tag=DigitalWatermark&x-custom%20param=A%2FB\nhost=h\n"
        );
        // Sorted by the encoded, lower-cased key, whatever the order given.
        let parts = sign(
            "id",
            "key",
            "get",
            "/jobs",
            &[
                ("size", "10"),
                ("queueId", "q"),
                ("States", "Running,Success"),
            ],
            &[],
            1,
            2,
        );
        assert!(parts
            .http_string
            .contains("queueid=q&size=10&states=Running%2CSuccess"));
        assert!(parts
            .authorization
            .contains("&q-url-param-list=queueid;size;states&"));
    }

    #[test]
    fn signs_only_the_sdk_header_whitelist() {
        for yes in [
            "Host",
            "content-type",
            "Content-MD5",
            "x-cos-acl",
            "X-CI-Security-Token",
            "If-Match",
        ] {
            assert!(should_sign_header(yes), "{yes}");
        }
        for no in [
            "User-Agent",
            "Accept",
            "Date",
            "Authorization",
            "x-custom",
            "connection",
        ] {
            assert!(!should_sign_header(no), "{no}");
        }
    }

    #[test]
    fn session_token_is_sent_and_signed() {
        let creds = Credentials {
            secret_id: "AKIDtmp".into(),
            secret_key: Secret::new("tmpkey"),
            session_token: Some(Secret::new("tok/en+1")),
        };
        let token = creds
            .token_header()
            .expect("temporary credentials carry a token");
        assert_eq!(token, ("x-ci-security-token", "tok/en+1"));
        let headers = [("Host", "b.ci.r.myqcloud.com"), token];
        let auth =
            parse_authorization(&creds.authorization("GET", "/jobs/j1", &[], &headers, 100, 700))
                .unwrap();
        assert_eq!(auth.header_list, ["host", "x-ci-security-token"]);
        let hs = http_string("GET", "/jobs/j1", &[], &headers);
        assert!(hs.contains("&x-ci-security-token=tok%2Fen%2B1\n"), "{hs}");
        assert_eq!(
            signature("tmpkey", "100;700", "100;700", &hs),
            auth.signature
        );
        // Permanent credentials add no header; an empty token counts as none.
        let permanent = Credentials {
            session_token: Some(Secret::new("")),
            ..creds
        };
        assert!(permanent.token_header().is_none());
        // The credentials never print their secrets.
        let shown = format!("{permanent:?}");
        assert!(!shown.contains("tmpkey"), "{shown}");
    }
}
