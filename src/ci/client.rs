//! CI's job API over HTTP (reqwest, rustls): submit, describe, list, cancel. Errors carry the retry
//! decision so callers never string-match messages.
//!
//! Every request carries `Host: <bucket>.ci.<region>.myqcloud.com` and signs it, whatever address it is
//! sent to (`endpoint`, e.g. the local emulator). The signature never appears in errors or logs, nor do
//! the secret key and the session token.

use super::response::{
    parse_error, parse_jobs_response, parse_queues_response, CiErrorBody, JobDetail, JobsResponse,
    QueueInfo,
};
use super::sign::{encode, Credentials, SharedCredentials};
use super::tree::Node;
use super::{ci_host, xml};
use base64::Engine as _;
use md5::{Digest, Md5};
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use reqwest::Method;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum CiError {
    /// CI answered with an error status. `body` is its error body (XML `<Error>` or JSON, see
    /// [`parse_error`]); for any other body, an empty `code` and a `message` naming the status and
    /// quoting the body's start. The status is kept either way.
    #[error("CI refused with HTTP {status}: {} {}", body.code, body.message)]
    Api { status: u16, body: CiErrorBody },
    /// No usable answer: connection refused, reset, timed out. `ambiguous` is true when the request may
    /// have reached CI (so a `POST /jobs` may have created a job).
    #[error("CI unreachable: {message}")]
    Transport { message: String, ambiguous: bool },
    /// CI answered 2xx with a body that is not what the API documents.
    #[error("unexpected CI response: {0}")]
    Protocol(String),
    #[error("CI client: {0}")]
    Config(String),
}

impl CiError {
    /// Whether a `POST /jobs` that ended so may still have created its job: the request may have
    /// reached CI (a lost or garbled answer), or a server error came back — a gateway's 502 or 504
    /// can follow a job CI accepted, and nothing tells a 5xx of CI's own from one in front of it.
    /// A 429 or a 4xx refusal was not taken.
    pub fn may_have_created(&self) -> bool {
        match self {
            CiError::Api { status, .. } => (500..600).contains(status),
            CiError::Transport { ambiguous, .. } => *ambiguous,
            CiError::Protocol(_) => true,
            CiError::Config(_) => false,
        }
    }

    /// CI refused for the rate of calls: 429 (`SlowDown`).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, CiError::Api { status: 429, .. })
    }

    /// CI asked for less: fewer calls per second (429 `SlowDown`) or fewer jobs queued at once
    /// (403 `QueueSaturated`).
    pub fn is_throttled(&self) -> bool {
        self.is_rate_limited()
            || matches!(self, CiError::Api { status: 403, body } if body.code == "QueueSaturated")
    }

    /// 429 SlowDown, 500, 503, connection errors and 403 QueueSaturated are worth retrying;
    /// other 4xx never are.
    pub fn is_transient(&self) -> bool {
        match self {
            CiError::Api { status, body } => {
                matches!(status, 429 | 500 | 502 | 503 | 504)
                    || (*status == 403 && body.code == "QueueSaturated")
            }
            CiError::Transport { .. } => true,
            CiError::Protocol(_) => true,
            CiError::Config(_) => false,
        }
    }
}

/// Parameters of `GET /jobs` (list). Empty fields are not sent.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub queue_id: Option<String>,
    pub tag: String,
    /// `inputObject`: only jobs whose `Input/Object` is exactly this key.
    pub input_object: Option<String>,
    pub states: Option<String>,
    pub order_by_time: Option<String>,
    pub size: Option<u32>,
    pub next_token: Option<String>,
    pub start_creation_time: Option<String>,
    pub end_creation_time: Option<String>,
}

impl ListQuery {
    /// The query parameters sent, in CI's documented order, empty ones left out.
    fn params(&self) -> Vec<(&'static str, String)> {
        let opt = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        [
            ("queueId", opt(&self.queue_id)),
            ("tag", Some(self.tag.clone()).filter(|s| !s.is_empty())),
            ("inputObject", opt(&self.input_object)),
            ("orderByTime", opt(&self.order_by_time)),
            ("nextToken", opt(&self.next_token)),
            ("size", self.size.map(|n| n.to_string())),
            ("states", opt(&self.states)),
            ("startCreationTime", opt(&self.start_creation_time)),
            ("endCreationTime", opt(&self.end_creation_time)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// How long a signature stays valid after it is made (the Python SDK's `expire`, shortened).
pub const SIGN_EXPIRE: Duration = Duration::from_secs(600);
/// How far back a signature's window starts, for clock skew (the Python SDK's `now - 60`).
pub const SIGN_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Idle connections kept per host: enough for 256 concurrent calls to reuse theirs.
pub const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// Most characters of a non-XML error body kept in [`CiErrorBody::message`].
const MAX_ERROR_TEXT: usize = 256;
/// The response header carrying CI's request id.
const REQUEST_ID_HEADER: &str = "x-ci-request-id";

#[derive(Debug, Clone)]
pub struct CiClient {
    /// One pool for every call (cheap to clone: an `Arc` inside).
    http: reqwest::Client,
    /// `scheme://host[:port]` requests go to; `None` = `https://<bucket>.ci.<region>.myqcloud.com`.
    endpoint: Option<String>,
    /// `None`: requests go unsigned (only useful against an emulator that does not verify). Asked
    /// once per request: temporary credentials are replaced under a running client.
    credentials: Option<SharedCredentials>,
}

/// One request, before signing.
struct Call {
    op: &'static str,
    method: Method,
    path: String,
    /// Sent in this order; a `None` value is a bare key (`?cancel`), sent but not signed, as the Python
    /// SDK does.
    query: Vec<(&'static str, Option<String>)>,
    /// An XML body (`POST /jobs`).
    body: Option<Vec<u8>>,
}

/// A 2xx answer.
struct Answer {
    request_id: Option<String>,
    text: String,
}

impl CiClient {
    /// `endpoint`: where requests go (`None` = `https://<bucket>.ci.<region>.myqcloud.com`).
    pub fn new(
        endpoint: Option<&str>,
        credentials: Option<Credentials>,
        timeout: Duration,
    ) -> Result<CiClient, CiError> {
        if let Some(c) = &credentials {
            c.check().map_err(CiError::Config)?;
        }
        Self::with_shared(endpoint, credentials.map(SharedCredentials::new), timeout)
    }

    /// [`CiClient::new`] with a key set that may be replaced while the client runs (temporary
    /// credentials kept current by [`crate::credentials`]); each request signs with the one current
    /// when it is sent.
    pub fn with_shared(
        endpoint: Option<&str>,
        credentials: Option<SharedCredentials>,
        timeout: Duration,
    ) -> Result<CiClient, CiError> {
        let endpoint = endpoint
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_endpoint)
            .transpose()?;
        if timeout.is_zero() {
            return Err(CiError::Config(
                "the request timeout must be above zero".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            // CI's 3xx (PermanentRedirect, TemporaryRedirect) are answers to report, not to follow with
            // a signature made for another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ci-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CiError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(CiClient {
            http,
            endpoint,
            credentials,
        })
    }

    /// `POST /jobs` with `job` (a `<Request>` tree) as the XML body.
    pub async fn submit(
        &self,
        bucket: &str,
        region: &str,
        job: &Node<'_>,
    ) -> Result<JobDetail, CiError> {
        self.submit_answer(bucket, region, job)
            .await
            .map(|(job, _)| job)
    }

    /// [`CiClient::submit`], with the `x-ci-request-id` CI gave its answer (what Tencent support
    /// asks for; the tests check it is read).
    async fn submit_answer(
        &self,
        bucket: &str,
        region: &str,
        job: &Node<'_>,
    ) -> Result<(JobDetail, Option<String>), CiError> {
        let body = xml::to_xml("Request", job).map_err(|e| {
            CiError::Config(format!("submit: the job cannot be written as XML: {e}"))
        })?;
        let call = Call {
            op: "submit",
            method: Method::POST,
            path: "/jobs".into(),
            query: Vec::new(),
            body: Some(body.into_bytes()),
        };
        let answer = self.call(bucket, region, call).await?;
        let jobs = parse_jobs(&answer, "submit")?;
        let job =
            jobs.jobs.into_iter().next().ok_or_else(|| {
                protocol("submit", &answer, "the answer has no JobsDetail".into())
            })?;
        if job.job_id().is_none() {
            return Err(protocol(
                "submit",
                &answer,
                "JobsDetail has no JobId".into(),
            ));
        }
        Ok((job, answer.request_id))
    }

    /// `GET /jobs/<id>[,<id>…]`.
    pub async fn describe(
        &self,
        bucket: &str,
        region: &str,
        job_ids: &[&str],
    ) -> Result<JobsResponse, CiError> {
        if job_ids.is_empty() {
            return Err(CiError::Config("describe: no job id given".into()));
        }
        for id in job_ids {
            check_name("job id", id, |c| {
                c.is_ascii_alphanumeric() || "-_.".contains(c)
            })?;
        }
        let call = Call {
            op: "describe",
            method: Method::GET,
            path: format!("/jobs/{}", job_ids.join(",")),
            query: Vec::new(),
            body: None,
        };
        let answer = self.call(bucket, region, call).await?;
        parse_jobs(&answer, "describe")
    }

    /// `GET /jobs?…`.
    pub async fn list(
        &self,
        bucket: &str,
        region: &str,
        query: &ListQuery,
    ) -> Result<JobsResponse, CiError> {
        let call = Call {
            op: "list",
            method: Method::GET,
            path: "/jobs".into(),
            query: query
                .params()
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect(),
            body: None,
        };
        let answer = self.call(bucket, region, call).await?;
        parse_jobs(&answer, "list")
    }

    /// `GET /queue` (DescribeMediaProcessQueues): the bucket's media processing queues, first page
    /// (up to 100).
    pub async fn queues(&self, bucket: &str, region: &str) -> Result<Vec<QueueInfo>, CiError> {
        let call = Call {
            op: "queues",
            method: Method::GET,
            path: "/queue".into(),
            query: vec![
                ("pageNumber", Some("1".to_string())),
                ("pageSize", Some("100".to_string())),
            ],
            body: None,
        };
        let answer = self.call(bucket, region, call).await?;
        parse_queues_response(&answer.text).map_err(|e| protocol("queues", &answer, e.to_string()))
    }

    /// `PUT /jobs/<id>?cancel`.
    pub async fn cancel(&self, bucket: &str, region: &str, job_id: &str) -> Result<(), CiError> {
        check_name("job id", job_id, |c| {
            c.is_ascii_alphanumeric() || "-_.".contains(c)
        })?;
        let call = Call {
            op: "cancel",
            method: Method::PUT,
            path: format!("/jobs/{job_id}"),
            query: vec![("cancel", None)],
            body: None,
        };
        self.call(bucket, region, call).await.map(|_| ())
    }

    /// Signs and sends one request; a 2xx answer's text, or the error.
    async fn call(&self, bucket: &str, region: &str, call: Call) -> Result<Answer, CiError> {
        let host_part = |c: char| c.is_ascii_alphanumeric() || c == '-';
        check_name("bucket", bucket, host_part)?;
        check_name("region", region, host_part)?;
        let host = ci_host(bucket, region);
        let base = match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://{host}"),
        };
        let query = call
            .query
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{}={}", encode(k), encode(v)),
                None => encode(k),
            })
            .collect::<Vec<_>>()
            .join("&");
        let url = if query.is_empty() {
            format!("{base}{}", call.path)
        } else {
            format!("{base}{}?{query}", call.path)
        };

        // The headers sent; all of them are signed (they are all on the SDK's list).
        let mut headers: Vec<(HeaderName, String)> = vec![(HOST, host)];
        match &call.body {
            Some(body) => {
                let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body));
                headers.push((CONTENT_TYPE, "application/xml".into()));
                headers.push((HeaderName::from_static("content-md5"), md5));
                headers.push((CONTENT_LENGTH, body.len().to_string()));
            }
            // CI answers 411 MissingContentLength to a PUT without one; hyper sends none for an empty body.
            None if call.method == Method::PUT => headers.push((CONTENT_LENGTH, "0".into())),
            None => {}
        }
        // One key set for the whole request: the token sent and the key signing must match.
        let credentials = self.credentials.as_ref().map(SharedCredentials::current);
        if let Some((name, token)) = credentials.as_ref().and_then(|c| c.token_header()) {
            headers.push((HeaderName::from_static(name), token.to_string()));
        }

        let mut req = self.http.request(call.method.clone(), &url);
        for (name, value) in &headers {
            let value = HeaderValue::from_str(value).map_err(|_| {
                CiError::Config(format!("{}: header {name} has an invalid value", call.op))
            })?;
            req = req.header(name.clone(), value);
        }
        if let Some(creds) = &credentials {
            let now = unix_now();
            let start = now - SIGN_CLOCK_SKEW.as_secs() as i64;
            let end = now + SIGN_EXPIRE.as_secs() as i64;
            let signed_headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let signed_params: Vec<(&str, &str)> = call
                .query
                .iter()
                .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
                .collect();
            let auth = creds.authorization(
                call.method.as_str(),
                &call.path,
                &signed_params,
                &signed_headers,
                start,
                end,
            );
            let mut auth = HeaderValue::from_str(&auth)
                .map_err(|_| CiError::Config(format!("{}: unusable Authorization", call.op)))?;
            auth.set_sensitive(true);
            req = req.header(AUTHORIZATION, auth);
        }
        if let Some(body) = call.body {
            req = req.body(body);
        }

        let started = Instant::now();
        let resp = req.send().await.map_err(|e| transport(call.op, &e))?;
        let status = resp.status();
        let request_id = resp
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .filter(|s| !s.is_empty());
        // The status arrived: CI has the request, whatever happens to the body.
        let bytes = resp.bytes().await.map_err(|e| transport(call.op, &e))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        tracing::debug!(
            op = call.op,
            status = status.as_u16(),
            request_id = request_id.as_deref().unwrap_or(""),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "CI answered"
        );
        if !status.is_success() {
            return Err(api_error(status, &text, request_id));
        }
        Ok(Answer { request_id, text })
    }
}

/// `http(s)://host[:port]` only: the path of every call is CI's.
fn parse_endpoint(endpoint: &str) -> Result<String, CiError> {
    let bad = |why: &str| CiError::Config(format!("endpoint {endpoint:?} {why}"));
    let url = url::Url::parse(endpoint).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be http:// or https://"));
    }
    if url.host().is_none() {
        return Err(bad("has no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must have no path, query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must carry no user info"));
    }
    Ok(url.origin().ascii_serialization())
}

/// Names that go into the host or the path are checked, so they can neither break the request nor
/// point it elsewhere (`../`).
fn check_name(what: &str, value: &str, allowed: impl Fn(char) -> bool) -> Result<(), CiError> {
    if value.is_empty() || !value.chars().all(allowed) {
        return Err(CiError::Config(format!("invalid {what} {value:?}")));
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn parse_jobs(answer: &Answer, op: &str) -> Result<JobsResponse, CiError> {
    parse_jobs_response(&answer.text).map_err(|e| protocol(op, answer, e.to_string()))
}

fn protocol(op: &str, answer: &Answer, why: String) -> CiError {
    match &answer.request_id {
        Some(id) => CiError::Protocol(format!("{op}: {why} (request id {id})")),
        None => CiError::Protocol(format!("{op}: {why}")),
    }
}

/// An error status: CI's error body when it is one (XML or JSON: Code, Message, Resource, RequestId,
/// TraceId), else an empty code and the status (and the start of the body) as the message. The
/// `x-ci-request-id` header fills a missing `RequestId`.
fn api_error(status: reqwest::StatusCode, text: &str, request_id: Option<String>) -> CiError {
    let mut body = parse_error(text).unwrap_or_else(|| {
        let reason = status.canonical_reason().unwrap_or("error status");
        let snippet: String = text.trim().chars().take(MAX_ERROR_TEXT).collect();
        CiErrorBody {
            message: if snippet.is_empty() {
                reason.to_string()
            } else {
                format!("{reason}: {snippet}")
            },
            ..CiErrorBody::default()
        }
    });
    if body.request_id.is_empty() {
        body.request_id = request_id.unwrap_or_default();
    }
    CiError::Api {
        status: status.as_u16(),
        body,
    }
}

/// A failed exchange. Only a failure to connect (refused, DNS, connect timeout) proves CI never saw
/// the request; anything later (timeout, reset) may have created a job.
fn transport(op: &str, err: &reqwest::Error) -> CiError {
    let mut message = format!("{op}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    CiError::Transport {
        message,
        ambiguous: !err.is_connect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::sign::{http_string, parse_authorization, signature};
    use crate::secret::Secret;
    use axum::body::{to_bytes, Body};
    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::Response;
    use serde_json::json;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const BUCKET: &str = "examplebucket-1250000000";
    const REGION: &str = "ap-guangzhou";
    const HOST: &str = "examplebucket-1250000000.ci.ap-guangzhou.myqcloud.com";
    const SECRET_ID: &str = "AKIDtestsecretid";
    const SECRET_KEY: &str = "testSecretKeyNeverPrinted";
    const TOKEN: &str = "session/token+NeverPrinted";

    const SUBMITTED: &str = "<Response><JobsDetail><Code>Success</Code><Message/>\
        <JobId>j8d6ae3a8ea1811ed9a4b5d1c0e2b3f4a</JobId><State>Submitted</State>\
        <CreationTime>2022-06-27T15:23:10+0800</CreationTime><StartTime>-</StartTime><EndTime>-</EndTime>\
        <QueueId>p2242ab62c7c94486915508540933a2c6</QueueId><Tag>DigitalWatermark</Tag>\
        <Input><BucketId>examplebucket-1250000000</BucketId><Object>input/demo.mp4</Object>\
        <Region>ap-guangzhou</Region></Input><Operation><DigitalWatermark><Type>Text</Type>\
        <Message>123456789ab</Message><Version>V1</Version></DigitalWatermark>\
        <Output><Bucket>examplebucket-1250000000</Bucket><Object>output/digital.mp4</Object>\
        <Region>ap-guangzhou</Region></Output><UserData>req-42</UserData></Operation>\
        </JobsDetail></Response>";

    const DESCRIBED: &str = "<Response><JobsDetail><Code>Success</Code><Message/>\
        <JobId>ja</JobId><State>Running</State><Tag>DigitalWatermark</Tag></JobsDetail>\
        <NonExistJobIds>jb</NonExistJobIds></Response>";

    const LISTED: &str = "<Response><JobsDetail><Code>Success</Code><JobId>j1</JobId>\
        <State>Success</State><Tag>DigitalWatermark</Tag></JobsDetail><JobsDetail><Code>Success</Code>\
        <JobId>j2</JobId><State>Running</State><Tag>DigitalWatermark</Tag></JobsDetail>\
        <NextToken>token-2</NextToken></Response>";

    fn error_body(code: &str, message: &str, request_id: &str) -> String {
        format!(
            "<?xml version='1.0' encoding='utf-8' ?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
             <RequestId>{request_id}</RequestId><TraceId>trace-1</TraceId></Error>"
        )
    }

    /// What the test server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        query: Option<String>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// The query as decoded pairs (a bare key has an empty value).
        fn params(&self) -> Vec<(String, String)> {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            };
            self.query
                .as_deref()
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect()
        }

        /// Verifies the Authorization as a server would (from its lists alone) and returns it.
        fn verify(&self, secret_key: &str) -> crate::ci::sign::Authorization {
            let auth = parse_authorization(self.header("authorization").expect("signed"))
                .expect("a well-formed Authorization");
            let pick = |all, names| {
                crate::ci::sign::signed_values(all, names)
                    .unwrap_or_else(|n| panic!("{n} is signed but not sent"))
            };
            let all_params = self.params();
            let hs = http_string(
                &self.method,
                &self.path,
                &pick(&all_params, &auth.url_param_list),
                &pick(&self.headers, &auth.header_list),
            );
            assert_eq!(
                signature(secret_key, &auth.key_time_str(), &auth.sign_time_str(), &hs),
                auth.signature,
                "signature does not verify over {hs:?}"
            );
            let now = unix_now();
            assert_eq!(auth.secret_id, SECRET_ID);
            assert!(
                auth.sign_time.0 <= now && now <= auth.sign_time.1,
                "{:?}",
                auth.sign_time
            );
            assert_eq!(
                auth.sign_time.1 - auth.sign_time.0,
                660,
                "now-60 .. now+600"
            );
            assert_eq!(auth.key_time, auth.sign_time);
            auth
        }
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// A local server answering every request with `status`, `body` and `x-ci-request-id: rid-test`,
    /// recording what it saw.
    async fn serve(status: u16, body: String) -> (String, Log) {
        let log: Log = Arc::default();
        let seen = log.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let seen = seen.clone();
            let body = body.clone();
            async move {
                let (parts, req_body) = req.into_parts();
                let bytes = to_bytes(req_body, 1 << 20).await.unwrap();
                seen.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().map(str::to_string),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                        .collect(),
                    body: bytes.to_vec(),
                });
                Response::builder()
                    .status(StatusCode::from_u16(status).unwrap())
                    .header("x-ci-request-id", "rid-test")
                    .header("content-type", "application/xml")
                    .body(Body::from(body))
                    .unwrap()
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), log)
    }

    fn credentials(token: bool) -> Credentials {
        Credentials {
            secret_id: SECRET_ID.into(),
            secret_key: Secret::new(SECRET_KEY),
            session_token: token.then(|| Secret::new(TOKEN)),
        }
    }

    fn client(endpoint: &str, token: bool) -> CiClient {
        CiClient::new(
            Some(endpoint),
            Some(credentials(token)),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn job() -> Node<'static> {
        let job = json!({
            "Tag": "DigitalWatermark",
            "Input": {"Object": "input/demo.mp4"},
            "Operation": {
                "DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
                "Output": {"Bucket": BUCKET, "Region": REGION, "Object": "output/digital.mp4"},
                "UserData": "req-42 & <more>"
            },
            "QueueId": "p2242ab62c7c94486915508540933a2c6",
            "CallBackType": "TDMQ",
            "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Queue", "MqName": "ci-callback"}
        });
        Node::from_value(&job).into_owned()
    }

    fn only(log: &Log) -> Seen {
        let seen = log.lock().unwrap();
        assert_eq!(seen.len(), 1, "exactly one request: {seen:?}");
        seen[0].clone()
    }

    #[tokio::test]
    async fn submit_posts_signed_xml_with_the_ci_host() {
        let (endpoint, log) = serve(200, SUBMITTED.into()).await;
        let (submitted, request_id) = client(&endpoint, false)
            .submit_answer(BUCKET, REGION, &job())
            .await
            .unwrap();
        assert_eq!(request_id.as_deref(), Some("rid-test"));
        assert_eq!(
            submitted.job_id(),
            Some("j8d6ae3a8ea1811ed9a4b5d1c0e2b3f4a")
        );
        assert_eq!(submitted.tree().text_at(&["State"]), Some("Submitted"));
        assert_eq!(submitted.user_data(), Some("req-42"));

        let seen = only(&log);
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/jobs")
        );
        assert_eq!(seen.query, None);
        assert_eq!(seen.header("host"), Some(HOST));
        assert_eq!(seen.header("content-type"), Some("application/xml"));
        let body = String::from_utf8(seen.body.clone()).unwrap();
        assert_eq!(body, xml::to_xml("Request", &job()).unwrap());
        assert!(
            body.starts_with("<Request><Tag>DigitalWatermark</Tag>"),
            "{body}"
        );
        assert!(body.contains("&lt;more&gt;"), "UserData escaped: {body}");
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&seen.body));
        assert_eq!(seen.header("content-md5"), Some(md5.as_str()));
        assert_eq!(
            seen.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(seen.header("x-ci-security-token"), None);
        let auth = seen.verify(SECRET_KEY);
        assert_eq!(
            auth.header_list,
            ["content-length", "content-md5", "content-type", "host"]
        );
        assert!(auth.url_param_list.is_empty());
    }

    #[tokio::test]
    async fn temporary_credentials_send_and_sign_the_token() {
        let (endpoint, log) = serve(200, DESCRIBED.into()).await;
        client(&endpoint, true)
            .describe(BUCKET, REGION, &["ja"])
            .await
            .unwrap();
        let seen = only(&log);
        assert_eq!(seen.header("x-ci-security-token"), Some(TOKEN));
        let auth = seen.verify(SECRET_KEY);
        assert_eq!(auth.header_list, ["host", "x-ci-security-token"]);
    }

    #[tokio::test]
    async fn each_request_signs_with_the_key_set_current_when_it_is_sent() {
        let (endpoint, log) = serve(200, DESCRIBED.into()).await;
        let shared = SharedCredentials::new(credentials(true));
        let c = CiClient::with_shared(
            Some(&endpoint),
            Some(shared.clone()),
            Duration::from_secs(5),
        )
        .unwrap();
        c.describe(BUCKET, REGION, &["ja"]).await.unwrap();
        shared.replace(Credentials {
            secret_id: "AKIDrotated".into(),
            secret_key: Secret::new("rotated-key"),
            session_token: Some(Secret::new("rotated-token")),
        });
        c.describe(BUCKET, REGION, &["ja"]).await.unwrap();
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].header("x-ci-security-token"), Some(TOKEN));
        seen[0].verify(SECRET_KEY);
        assert_eq!(seen[1].header("x-ci-security-token"), Some("rotated-token"));
        let auth = parse_authorization(seen[1].header("authorization").unwrap()).unwrap();
        assert_eq!(auth.secret_id, "AKIDrotated");
        let hs = http_string(
            "GET",
            "/jobs/ja",
            &[],
            &[("host", HOST), ("x-ci-security-token", "rotated-token")],
        );
        assert_eq!(
            signature(
                "rotated-key",
                &auth.key_time_str(),
                &auth.sign_time_str(),
                &hs
            ),
            auth.signature
        );
    }

    #[tokio::test]
    async fn describe_gets_comma_joined_ids() {
        let (endpoint, log) = serve(200, DESCRIBED.into()).await;
        let resp = client(&endpoint, false)
            .describe(BUCKET, REGION, &["ja", "jb"])
            .await
            .unwrap();
        assert_eq!(resp.jobs.len(), 1);
        assert_eq!(resp.jobs[0].tree().text_at(&["State"]), Some("Running"));
        assert_eq!(resp.non_exist_job_ids, ["jb"]);
        let seen = only(&log);
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("GET", "/jobs/ja,jb")
        );
        assert_eq!(seen.header("host"), Some(HOST));
        assert_eq!(seen.header("content-length"), None);
        assert_eq!(seen.verify(SECRET_KEY).header_list, ["host"]);
    }

    #[tokio::test]
    async fn list_sends_and_signs_its_non_empty_parameters() {
        let (endpoint, log) = serve(200, LISTED.into()).await;
        let query = ListQuery {
            queue_id: Some("p123".into()),
            tag: "DigitalWatermark".into(),
            input_object: None,
            states: Some("Running,Success".into()),
            order_by_time: Some("Desc".into()),
            size: Some(50),
            next_token: Some(String::new()),
            start_creation_time: Some("2022-06-27T00:00:00+0800".into()),
            end_creation_time: None,
        };
        let resp = client(&endpoint, false)
            .list(BUCKET, REGION, &query)
            .await
            .unwrap();
        let ids: Vec<_> = resp.jobs.iter().map(|j| j.job_id().unwrap()).collect();
        assert_eq!(ids, ["j1", "j2"]);
        assert_eq!(resp.next_token.as_deref(), Some("token-2"));
        let seen = only(&log);
        assert_eq!((seen.method.as_str(), seen.path.as_str()), ("GET", "/jobs"));
        assert_eq!(
            seen.query.as_deref(),
            Some(
                "queueId=p123&tag=DigitalWatermark&orderByTime=Desc&size=50\
                 &states=Running%2CSuccess&startCreationTime=2022-06-27T00%3A00%3A00%2B0800"
            )
        );
        let auth = seen.verify(SECRET_KEY);
        assert_eq!(
            auth.url_param_list,
            [
                "orderbytime",
                "queueid",
                "size",
                "startcreationtime",
                "states",
                "tag"
            ]
        );
    }

    #[tokio::test]
    async fn list_sends_and_signs_input_object_percent_encoded() {
        let (endpoint, log) = serve(200, LISTED.into()).await;
        let query = ListQuery {
            tag: "DigitalWatermark".into(),
            input_object: Some("in/a b.mp4".into()),
            states: Some("All".into()),
            ..ListQuery::default()
        };
        client(&endpoint, false)
            .list(BUCKET, REGION, &query)
            .await
            .unwrap();
        let seen = only(&log);
        assert_eq!(
            seen.query.as_deref(),
            Some("tag=DigitalWatermark&inputObject=in%2Fa%20b.mp4&states=All")
        );
        assert!(seen
            .params()
            .contains(&("inputObject".into(), "in/a b.mp4".into())));
        let auth = seen.verify(SECRET_KEY);
        assert_eq!(auth.url_param_list, ["inputobject", "states", "tag"]);
    }

    #[tokio::test]
    async fn cancel_puts_a_bare_cancel_left_unsigned() {
        let (endpoint, log) = serve(200, String::new()).await;
        client(&endpoint, false)
            .cancel(BUCKET, REGION, "jabc")
            .await
            .unwrap();
        let seen = only(&log);
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("PUT", "/jobs/jabc")
        );
        assert_eq!(seen.query.as_deref(), Some("cancel"));
        assert_eq!(seen.header("content-length"), Some("0"));
        assert!(seen.body.is_empty());
        let auth = seen.verify(SECRET_KEY);
        assert_eq!(auth.header_list, ["content-length", "host"]);
        assert!(auth.url_param_list.is_empty(), "{:?}", auth.url_param_list);
    }

    #[tokio::test]
    async fn error_statuses_map_to_api_errors_with_the_retry_decision() {
        let cases: [(u16, String, &str, bool); 7] = [
            (
                403,
                error_body("QueueSaturated", "queue is full", "rid-body"),
                "QueueSaturated",
                true,
            ),
            (
                403,
                error_body("AccessDenied", "denied", "rid-body"),
                "AccessDenied",
                false,
            ),
            (
                400,
                error_body("InvalidArgument", "bad Tag", "rid-body"),
                "InvalidArgument",
                false,
            ),
            (
                401,
                error_body("SignatureExpired", "expired", "rid-body"),
                "SignatureExpired",
                false,
            ),
            (
                429,
                error_body("SlowDown", "slow down", "rid-body"),
                "SlowDown",
                true,
            ),
            (
                500,
                error_body("InternalError", "oops", "rid-body"),
                "InternalError",
                true,
            ),
            (
                503,
                error_body("ServiceUnavailable", "busy", "rid-body"),
                "ServiceUnavailable",
                true,
            ),
        ];
        for (status, body, code, transient) in cases {
            let (endpoint, _log) = serve(status, body).await;
            let err = client(&endpoint, true)
                .submit(BUCKET, REGION, &job())
                .await
                .unwrap_err();
            match &err {
                CiError::Api { status: s, body } => {
                    assert_eq!(*s, status);
                    assert_eq!(body.code, code);
                    assert!(!body.message.is_empty());
                    assert_eq!(body.request_id, "rid-body", "the body's RequestId wins");
                    assert_eq!(body.trace_id, "trace-1");
                }
                other => panic!("{status}: expected Api, got {other:?}"),
            }
            assert_eq!(err.is_transient(), transient, "{status} {code}");
            assert_no_secret(&err);
        }
    }

    #[tokio::test]
    async fn json_error_bodies_and_resource_are_read() {
        let xml = "<Error><Code>QueueSaturated</Code><Message>full</Message>\
                   <Resource>b.ci.ap-guangzhou.myqcloud.com/jobs</Resource></Error>";
        let json = r#"{"code": 40301, "message": "denied", "request_id": "rid-json"}"#;
        for (status, body, code, message, resource, request_id) in [
            (
                403,
                xml,
                "QueueSaturated",
                "full",
                "b.ci.ap-guangzhou.myqcloud.com/jobs",
                "rid-test",
            ),
            (403, json, "40301", "denied", "", "rid-json"),
        ] {
            let (endpoint, _log) = serve(status, body.into()).await;
            let err = client(&endpoint, false)
                .submit(BUCKET, REGION, &job())
                .await
                .unwrap_err();
            let CiError::Api { status: s, body: b } = &err else {
                panic!("{body}: expected Api, got {err:?}");
            };
            assert_eq!(*s, status);
            assert_eq!(
                (
                    b.code.as_str(),
                    b.message.as_str(),
                    b.resource.as_str(),
                    b.request_id.as_str()
                ),
                (code, message, resource, request_id),
                "{body}"
            );
            assert_eq!(err.is_transient(), code == "QueueSaturated");
        }
    }

    #[tokio::test]
    async fn an_error_status_without_an_error_body_is_still_an_api_error() {
        for (status, body, transient) in [
            (503, "", true),
            (502, "<html>Bad Gateway</html>", true),
            (403, "", false),
            (404, "not here", false),
            (400, "{\"unrelated\": true}", false),
        ] {
            let (endpoint, _log) = serve(status, body.into()).await;
            let err = client(&endpoint, false)
                .describe(BUCKET, REGION, &["ja"])
                .await
                .unwrap_err();
            let CiError::Api { status: s, body: b } = &err else {
                panic!("{status}: expected Api, got {err:?}");
            };
            assert_eq!(*s, status);
            assert_eq!(b.code, "", "no code is invented");
            assert_eq!(b.request_id, "rid-test", "taken from x-ci-request-id");
            assert!(b.message.contains(body.trim()), "{}", b.message);
            assert!(!b.message.is_empty());
            assert_eq!(err.is_transient(), transient, "{status}");
        }
    }

    #[tokio::test]
    async fn a_2xx_that_is_not_a_documented_answer_is_a_protocol_error() {
        for body in [
            "<Response></Response>",
            "not xml <",
            "<Response><JobsDetail><State>Submitted</State></JobsDetail></Response>",
        ] {
            let (endpoint, _log) = serve(200, body.into()).await;
            let err = client(&endpoint, false)
                .submit(BUCKET, REGION, &job())
                .await
                .unwrap_err();
            assert!(matches!(err, CiError::Protocol(_)), "{body}: {err:?}");
            assert!(err.to_string().contains("rid-test"), "{err}");
        }
    }

    #[tokio::test]
    async fn connection_refused_is_transient_and_not_ambiguous() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = client(&format!("http://{addr}"), true)
            .submit(BUCKET, REGION, &job())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CiError::Transport {
                    ambiguous: false,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert_no_secret(&err);
    }

    #[tokio::test]
    async fn a_reset_after_sending_is_ambiguous() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            // Read the request, then hang up without answering.
            let _ = sock.read(&mut buf).await;
            let _ = sock.shutdown().await;
        });
        let err = client(&format!("http://{addr}"), true)
            .submit(BUCKET, REGION, &job())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CiError::Transport {
                    ambiguous: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert_no_secret(&err);
    }

    #[tokio::test]
    async fn a_timeout_after_connecting_is_ambiguous() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            // Accept and hold the connection open, never answering, until the test ends.
            let (_sock, _) = listener.accept().await.unwrap();
            let _ = hold_rx.await;
        });
        let client = CiClient::new(
            Some(&format!("http://{addr}")),
            Some(credentials(false)),
            Duration::from_millis(200),
        )
        .unwrap();
        let err = client.submit(BUCKET, REGION, &job()).await.unwrap_err();
        drop(hold_tx);
        match &err {
            CiError::Transport { message, ambiguous } => {
                assert!(*ambiguous, "{message}");
                assert!(message.contains("timed out"), "{message}");
            }
            other => panic!("expected Transport, got {other:?}"),
        }
    }

    #[test]
    fn bad_configuration_and_arguments_are_refused_before_sending() {
        let t = Duration::from_secs(1);
        for bad in [
            "ftp://x",
            "http://127.0.0.1:9000/prefix",
            "not a url",
            "http://u:p@h:1",
        ] {
            assert!(
                matches!(CiClient::new(Some(bad), None, t), Err(CiError::Config(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            CiClient::new(None, None, Duration::ZERO),
            Err(CiError::Config(_))
        ));
        let no_key = Credentials {
            secret_key: Secret::new(""),
            ..credentials(false)
        };
        assert!(matches!(
            CiClient::new(None, Some(no_key), t),
            Err(CiError::Config(_))
        ));
        let bad_token = Credentials {
            session_token: Some(Secret::new("line\nbreak-NeverPrinted")),
            ..credentials(false)
        };
        let err = CiClient::new(None, Some(bad_token), t).unwrap_err();
        assert!(!err.to_string().contains("NeverPrinted"), "{err}");
        let ok = CiClient::new(Some("http://127.0.0.1:9000/"), None, t).unwrap();
        assert_eq!(ok.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(!format!("{ok:?}").contains(SECRET_KEY));
        let signed = CiClient::new(None, Some(credentials(true)), t).unwrap();
        let shown = format!("{signed:?}");
        assert!(
            !shown.contains(SECRET_KEY) && !shown.contains(TOKEN),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn unsafe_names_never_reach_the_wire() {
        let (endpoint, log) = serve(200, DESCRIBED.into()).await;
        let c = client(&endpoint, false);
        for err in [
            c.describe(BUCKET, REGION, &["../x"]).await.unwrap_err(),
            c.describe(BUCKET, REGION, &[]).await.unwrap_err(),
            c.cancel(BUCKET, REGION, "a?b").await.unwrap_err(),
            c.describe("bucket.evil.com/", REGION, &["ja"])
                .await
                .unwrap_err(),
            c.list(BUCKET, "ap guangzhou", &ListQuery::default())
                .await
                .unwrap_err(),
        ] {
            assert!(matches!(err, CiError::Config(_)), "{err:?}");
            assert!(!err.is_transient());
        }
        assert!(log.lock().unwrap().is_empty());
    }

    fn assert_no_secret(err: &CiError) {
        let shown = format!("{err} {err:?}");
        for secret in [SECRET_KEY, TOKEN, "q-signature", "q-sign-algorithm"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }
}
