//! The HTTP surface: CI's media job API on the paths, headers and error bodies CI uses.
//!
//! Every request is counted (by the operation its method and path name, whatever its answer; see
//! [`CALLS_PATH`]), then goes through, in order: `emulator.latency`; `emulator.qps_limit` (else
//! 429 `SlowDown`); the Host
//! (`<bucket>.ci.<region>.myqcloud.com[:port]`, else 400 `InvalidHost`); the route (else 404
//! `InvalidUrl`; CI's other job endpoints 501 `NotImplemented`); the signature ([`super::auth`]); then
//! the operation; then `emulator.answer_delay` holds the answer (the job already exists). Every
//! response carries a fresh `x-ci-request-id` and `Server: tencent-ci`; bodies are
//! `application/xml`; errors are `<Error><Code/><Message/><Resource/><RequestId/><TraceId/></Error>`
//! (see [`error_body`] for `Resource`) with the HTTP status error-codes.md gives the code.
//! `GET /healthz` answers `ok` without any of that, and so does `GET /_emulator/calls` (the counts as
//! JSON). So do the CVM metadata path ([`super::metadata`]) and STS `POST /` ([`super::sts`]), which
//! are other services' and are not counted.

use super::auth::{self, SignedRequest};
use super::error::{error_body, ApiError};
use super::faults::{self, Refusal};
use super::job::{default_queue_id, JobState, CI_TIME_FORMAT};
use super::lifecycle;
use super::notices::EmulatorEvent;
use super::shared::{CallKind, Shared};
use super::store::{CancelRefusal, ListFilter};
use super::submit;
use crate::ci::cam::Call;
use crate::ci::response::CiErrorBody;
use crate::ci::tree::Node;
use crate::ci::xml;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use chrono::{DateTime, FixedOffset};
use md5::{Digest, Md5};
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The call counts: `{"submit":N,"describe":N,"list":N,"cancel":N,"queue":N,"other":N,
/// "throttled":{"submit":N,…}}`, every request of the job API received since start (refused ones
/// too; not `/healthz` nor this path), and of those the ones answered 429 `SlowDown`. No Host or
/// signature needed, no latency or answer delay applied.
pub(crate) const CALLS_PATH: &str = "/_emulator/calls";
/// Largest `POST /jobs` body accepted; larger ones get 413 `InvalidContent`.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;
/// Oversized bodies up to this size are drained before the 413 is sent.
const DRAIN_LIMIT_BYTES: usize = 16 << 20;
/// `size` of `GET /jobs`: default and maximum (list-jobs.md).
const DEFAULT_PAGE: usize = 10;
const MAX_PAGE: usize = 100;
/// CI's other job endpoints, which the emulator does not implement.
const OTHER_CI_PREFIXES: [&str; 7] = [
    "/pic_jobs",
    "/ai_jobs",
    "/asr_jobs",
    "/doc_jobs",
    "/file_jobs",
    "/workflow",
    "/inventorytriggerjob",
];

/// A successful answer: an XML document or an empty body.
enum Reply {
    Xml(String),
    Empty,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(CALLS_PATH, get(calls))
        .route(super::metadata::PATH, get(metadata))
        .route(&format!("{}{{role}}", super::metadata::PATH), get(metadata))
        .route("/", post(sts))
        .fallback(handle)
        .with_state(shared)
}

/// The CVM instance metadata path for role credentials ([`super::metadata`]); not signed, as on a
/// CVM (the service answers the instance itself).
async fn metadata(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let rest = uri.path().strip_prefix(super::metadata::PATH).unwrap_or("");
    let (status, body) = shared
        .verifier
        .temporary()
        .answer(rest, chrono::Utc::now().timestamp());
    let json = status == 200 && !rest.trim_end_matches('/').is_empty();
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
        body,
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if json {
            "application/json"
        } else {
            "text/plain"
        }),
    );
    r
}

/// STS `AssumeRoleWithWebIdentity` ([`super::sts`]): API 3.0's JSON, not CI's XML; not signed.
async fn sts(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let answer = super::sts::answer(
        &headers,
        &body,
        &shared.settings.emulator.web_identity_token_file,
        shared.verifier.temporary(),
        chrono::Utc::now().timestamp(),
    );
    let mut r = (StatusCode::OK, answer.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn healthz() -> &'static str {
    "ok"
}

async fn calls(State(shared): State<Arc<Shared>>) -> Response {
    let body = serde_json::to_vec(&shared.calls.to_json()).unwrap_or_default();
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = match route(&method, &uri) {
        Ok(Route::Submit) => CallKind::Submit,
        Ok(Route::Describe(_)) => CallKind::Describe,
        Ok(Route::List) => CallKind::List,
        Ok(Route::Cancel(_)) => CallKind::Cancel,
        Ok(Route::Queues) => CallKind::Queue,
        Err(_) => CallKind::Other,
    };
    shared.calls.count(kind);
    let request_id = new_request_id();
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // The rate limit counts calls as they reach CI, past the network's latency; before anything
    // else, as a gateway does.
    let result = if shared.faults.within_qps_limit() {
        dispatch(&shared, &method, &uri, &headers, body, &request_id).await
    } else {
        Err(slow_down())
    };
    if matches!(&result, Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS) {
        shared.calls.count_throttled(kind);
    }
    // Handled (a submitted job exists); the answer is slow on its way back.
    let answer_delay = shared.faults.answer_delay();
    if !answer_delay.is_zero() {
        tokio::time::sleep(answer_delay).await;
    }
    let mut response = match result {
        Ok(Reply::Xml(body)) => {
            let mut r = (StatusCode::OK, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            );
            r
        }
        Ok(Reply::Empty) => StatusCode::OK.into_response(),
        Err(e) => {
            if e.status.is_server_error() || e.status == StatusCode::TOO_MANY_REQUESTS {
                tracing::info!(%method, path = uri.path(), code = e.code, "emulator: injected fault");
            } else {
                tracing::info!(%method, path = uri.path(), status = e.status.as_u16(), code = e.code, message = %e.message, "emulator: request refused");
            }
            // COS's `Resource`: the host (without the port) and the path.
            let resource = format!(
                "{}{}",
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(auth::strip_port)
                    .unwrap_or(""),
                uri.path()
            );
            let body = error_body(&CiErrorBody {
                code: e.code.to_string(),
                message: e.message,
                resource,
                request_id: request_id.clone(),
                trace_id: new_trace_id(),
            });
            let mut r = (e.status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            );
            r
        }
    };
    let h = response.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("tencent-ci"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-ci-request-id", v);
    }
    response
}

/// The operations the emulator offers: `/jobs`, and `GET /queue`.
enum Route {
    Submit,
    List,
    Describe(String),
    Cancel(String),
    Queues,
}

fn route(method: &Method, uri: &Uri) -> Result<Route, ApiError> {
    let path = uri.path();
    if (path == "/queue" || path == "/queue/") && *method == Method::GET {
        return Ok(Route::Queues);
    }
    if path == "/jobs" || path == "/jobs/" {
        return match *method {
            Method::POST => Ok(Route::Submit),
            Method::GET => Ok(Route::List),
            _ => Err(ApiError::invalid_url(format!(
                "{method} {path} is not an operation of the job API."
            ))),
        };
    }
    if let Some(ids) = path.strip_prefix("/jobs/") {
        let ids = ids.to_string();
        return match *method {
            Method::GET => Ok(Route::Describe(ids)),
            Method::PUT if has_param(uri.query(), "cancel") => Ok(Route::Cancel(ids)),
            _ => Err(ApiError::invalid_url(format!(
                "{method} {path} is not an operation of the job API (cancel is PUT /jobs/<JobId>?cancel)."
            ))),
        };
    }
    if OTHER_CI_PREFIXES.iter().any(|p| {
        path == *p || path.starts_with(&format!("{p}/")) || path.starts_with(&format!("{p}s"))
    }) {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("The emulator implements the media job API (/jobs) only, not {path}."),
        ));
    }
    Err(ApiError::invalid_url(format!(
        "{path} is not a path of the Cloud Infinite job API."
    )))
}

fn has_param(query: Option<&str>, name: &str) -> bool {
    auth::query_pairs(query.unwrap_or(""))
        .iter()
        .any(|(k, _)| k == name)
}

/// `<bucket>.ci.<region>.myqcloud.com[:port]` → (bucket, region).
pub(crate) fn bucket_and_region(host: &str) -> Option<(String, String)> {
    let host = auth::strip_port(host).to_ascii_lowercase();
    let rest = host.strip_suffix(".myqcloud.com")?;
    let (bucket, region) = rest.rsplit_once(".ci.")?;
    let label = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && !s.ends_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    (label(bucket) && label(region)).then(|| (bucket.to_string(), region.to_string()))
}

async fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (bucket, region) = bucket_and_region(host).ok_or_else(|| {
        ApiError::bad_request(
            "InvalidHost",
            format!("The Host {host:?} is not <BucketName-APPID>.ci.<Region>.myqcloud.com."),
        )
    })?;
    let route = route(method, uri)?;
    let call = match &route {
        Route::Submit => Call::Submit,
        Route::List => Call::List,
        Route::Describe(_) => Call::Describe,
        Route::Cancel(_) => Call::Cancel,
        Route::Queues => Call::Queues,
    };
    shared.verifier.verify(
        &SignedRequest {
            method,
            raw_path: uri.path(),
            raw_query: uri.query(),
            headers,
        },
        chrono::Utc::now().timestamp(),
    )?;
    // COS's answer for a bucket it does not know; CI's own for a bucket without CI bound is not
    // documented (`ci-worker doctor` reads any refusal but a permission's as "not bound").
    if !shared.faults.ci_bound(&bucket, &region) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            format!("The bucket {bucket} has no Cloud Infinite bound in {region}."),
        ));
    }
    if let Some(action) = shared.faults.denied(call.actions()) {
        tracing::info!(
            action,
            bucket,
            "emulator: refused by emulator.denied_actions"
        );
        // The body is error-codes.md's; which action was missing is not said, as by CI.
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "The operation is prohibited.",
        ));
    }
    match route {
        Route::Submit => submit(shared, headers, body, &bucket, &region).await,
        Route::List => list(shared, uri, &bucket, &region, request_id),
        Route::Describe(ids) => describe(shared, &ids, &bucket, &region, request_id),
        Route::Cancel(id) => cancel(shared, &id, &bucket, &region),
        Route::Queues => queues(
            uri,
            &bucket,
            &region,
            request_id,
            shared.faults.media_queue_paused(),
        ),
    }
}

/// `GET /queue` (DescribeMediaProcessQueues): the bucket's one media processing queue, the one
/// its jobs run in when they name none (`queueIds`, `state`, `category`, `pageNumber`, `pageSize`
/// filter as CI does; ids not found are listed in `NonExistPIDs`).
fn queues(
    uri: &Uri,
    bucket: &str,
    region: &str,
    request_id: &str,
    paused: bool,
) -> Result<Reply, ApiError> {
    let queue_state = if paused { "Paused" } else { "Active" };
    let pairs = auth::query_pairs(uri.query().unwrap_or(""));
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let invalid = |m: String| ApiError::bad_request("InvalidArgument", m);
    let number = |name: &str, default: usize, max: usize| match get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(invalid(format!(
                "The value {v:?} of {name} must be an integer from 1 to {max}."
            ))),
        },
    };
    let page_number = number("pageNumber", 1, usize::MAX)?;
    let page_size = number("pageSize", 10, 100)?;
    // `All` (what the Python SDK sends by default) filters nothing.
    let state = get("state").filter(|s| s != "All");
    if let Some(s) = &state {
        if !["Active", "Paused"].contains(&s.as_str()) {
            return Err(invalid(format!(
                "The value {s:?} of state must be All, Active or Paused."
            )));
        }
    }
    let category = get("category").unwrap_or_else(|| "Transcoding".into());
    if !["CateAll", "Transcoding", "SpeedTranscoding"].contains(&category.as_str()) {
        return Err(invalid(format!(
            "The value {category:?} of category must be CateAll, Transcoding or SpeedTranscoding."
        )));
    }
    let default = default_queue_id(bucket, region);
    let wanted: Option<Vec<String>> = get("queueIds").map(|ids| {
        ids.split(',')
            .map(|id| id.trim().to_string())
            .filter(|id| !id.is_empty())
            .collect()
    });
    let matches = category != "SpeedTranscoding"
        && state.as_deref().is_none_or(|s| s == queue_state)
        && wanted.as_ref().is_none_or(|ids| ids.contains(&default));
    let queues: Vec<Node> = (matches && page_number == 1)
        .then(|| {
            Node::Map(vec![
                ("QueueId".into(), default.clone().into()),
                ("Name".into(), "queue-default".to_string().into()),
                ("State".into(), queue_state.to_string().into()),
                ("MaxSize".into(), "10000".to_string().into()),
                ("MaxConcurrent".into(), "10".to_string().into()),
                ("Category".into(), "Transcoding".to_string().into()),
                ("CreateTime".into(), EMULATOR_EPOCH.to_string().into()),
                ("UpdateTime".into(), EMULATOR_EPOCH.to_string().into()),
                (
                    "NotifyConfig".into(),
                    Node::Map(vec![("State".into(), "Off".to_string().into())]),
                ),
            ])
        })
        .into_iter()
        .collect();
    let mut root = Node::Map(vec![
        ("RequestId".into(), request_id.to_string().into()),
        ("TotalCount".into(), usize::from(matches).to_string().into()),
        ("PageNumber".into(), page_number.to_string().into()),
        ("PageSize".into(), page_size.to_string().into()),
    ]);
    if !queues.is_empty() {
        root.insert("QueueList", one_or_many(queues));
    }
    let missing: Vec<String> = wanted
        .unwrap_or_default()
        .into_iter()
        .filter(|id| *id != default)
        .collect();
    if !missing.is_empty() {
        root.insert("NonExistPIDs", missing.join(",").into());
    }
    write_xml(&root)
}

/// CI's answer to too many calls (error-codes.md: 429 `SlowDown`).
fn slow_down() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "SlowDown",
        "Please decrease the access frequency.",
    )
}

/// When the emulator's default queues were "created".
const EMULATOR_EPOCH: &str = "2020-01-01T00:00:00+0800";

async fn submit(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: Body,
    bucket: &str,
    region: &str,
) -> Result<Reply, ApiError> {
    match shared.faults.submit_refusal() {
        Some(Refusal::Throttle) => return Err(slow_down()),
        Some(Refusal::Unavailable) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please try again.",
            ))
        }
        None => {}
    }
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_none() && !chunked {
        return Err(ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "MissingContentLength",
            "The Content-Length request header is missing.",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidContent",
            format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
        )
    };
    // Bodies a little over the limit are read to the end before the 413, so that the client, still
    // sending, gets the answer rather than a reset connection.
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, DRAIN_LIMIT_BYTES)
        .await
        .map_err(|_| too_large())?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "MissingContent",
            "The request body is empty.",
        ));
    }
    if let Some(md5) = headers.get("content-md5") {
        let expected = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&bytes));
        if md5.to_str().ok().map(str::trim) != Some(expected.as_str()) {
            return Err(ApiError::bad_request(
                "InvalidContent",
                "The Content-MD5 you specified does not match the request body.",
            ));
        }
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("InvalidContent", "The request body is not UTF-8."))?;
    let spec = submit::parse_request(text)?;
    if shared.faults.media_queue_paused() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "QueuePaused",
            "The queue is suspended.",
        ));
    }
    let job = shared.store.insert(bucket, region, spec);
    tracing::info!(job_id = %job.id, bucket, region, tag = %job.spec.tag, object = job.spec.fault_key(), "emulator: job submitted");
    shared.notify(EmulatorEvent::StateChanged {
        job_id: job.id.clone(),
        state: JobState::Submitted,
    });
    lifecycle::spawn_lifecycle(shared.clone(), &job);
    if faults::ObjectFaults::of(job.spec.fault_key()).hangup {
        tracing::info!(job_id = %job.id, "emulator: holding the answer (__hangup__)");
        tokio::time::sleep(faults::HANGUP_DELAY).await;
    }
    write_xml(&Node::Map(vec![("JobsDetail".into(), job.detail())]))
}

fn describe(
    shared: &Shared,
    raw_ids: &str,
    bucket: &str,
    region: &str,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw_ids).decode_utf8_lossy();
    let mut ids: Vec<&str> = Vec::new();
    for id in decoded.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "InvalidArgument",
            "GET /jobs/<JobId> needs at least one JobId.",
        ));
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for id in ids {
        match shared.store.get(bucket, region, id) {
            Some(job) => found.push(job.detail()),
            None => missing.push(Node::from(id.to_string())),
        }
    }
    let mut root = Node::Map(vec![("RequestId".into(), request_id.to_string().into())]);
    if !found.is_empty() {
        root.insert("JobsDetail", one_or_many(found));
    }
    if !missing.is_empty() {
        root.insert("NonExistJobIds", one_or_many(missing));
    }
    write_xml(&root)
}

fn list(
    shared: &Shared,
    uri: &Uri,
    bucket: &str,
    region: &str,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let filter = list_filter(uri.query())?;
    let (page, next) = shared.store.list(bucket, region, &filter);
    let mut root = Node::Map(vec![("RequestId".into(), request_id.to_string().into())]);
    let details: Vec<Node> = page.iter().map(|j| j.detail()).collect();
    if !details.is_empty() {
        root.insert("JobsDetail", one_or_many(details));
    }
    root.insert(
        "NextToken",
        next.map(encode_token).unwrap_or_default().into(),
    );
    write_xml(&root)
}

/// Reads the query of `GET /jobs` (names case-insensitive; empty values count as absent, as the
/// Python SDK sends `nextToken=`).
fn list_filter(query: Option<&str>) -> Result<ListFilter, ApiError> {
    let pairs = auth::query_pairs(query.unwrap_or(""));
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    let invalid = |m: String| ApiError::bad_request("InvalidArgument", m);
    let size = match get("size") {
        None => DEFAULT_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(invalid(format!(
                    "The value {s:?} of size must be an integer from 1 to {MAX_PAGE}."
                )))
            }
        },
    };
    let ascending = match get("orderByTime") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("Desc") => false,
        Some(v) if v.eq_ignore_ascii_case("Asc") => true,
        Some(v) => {
            return Err(invalid(format!(
                "The value {v:?} of orderByTime must be Desc or Asc."
            )))
        }
    };
    let states = match get("states") {
        None => None,
        Some(v) if v.split(',').any(|s| s.trim() == "All") => None,
        Some(v) => Some(
            v.split(',')
                .map(|s| {
                    JobState::parse(s.trim()).ok_or_else(|| {
                        invalid(format!(
                            "The value {v:?} of states must be All or a comma-separated list of \
                             Submitted, Running, Success, Failed, Pause, Cancel."
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let time = |name: &str| -> Result<Option<DateTime<FixedOffset>>, ApiError> {
        match get(name) {
            None => Ok(None),
            Some(v) => DateTime::parse_from_str(v, CI_TIME_FORMAT)
                .or_else(|_| DateTime::parse_from_rfc3339(v))
                .map(Some)
                .map_err(|_| {
                    invalid(format!(
                        "The value {v:?} of {name} is not a time like 2022-06-30T18:37:37+0800."
                    ))
                }),
        }
    };
    let after = match get("nextToken") {
        None => None,
        Some(t) => Some(decode_token(t).ok_or_else(|| {
            invalid(format!(
                "The value {t:?} of nextToken is not a token this API issued."
            ))
        })?),
    };
    // Exact match on `Input/Object`, so not trimmed like the other values.
    let input_object = pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("inputObject"))
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty());
    Ok(ListFilter {
        queue_id: get("queueId").map(str::to_string),
        tag: get("tag").map(str::to_string),
        input_object,
        states,
        start: time("startCreationTime")?,
        end: time("endCreationTime")?,
        ascending,
        size,
        after,
    })
}

/// `NextToken`: opaque to clients (a hex position in the emulator's creation order).
fn encode_token(seq: u64) -> String {
    format!("{seq:016x}")
}

fn decode_token(token: &str) -> Option<u64> {
    (token.len() == 16)
        .then(|| u64::from_str_radix(token, 16).ok())
        .flatten()
}

fn cancel(shared: &Shared, raw_id: &str, bucket: &str, region: &str) -> Result<Reply, ApiError> {
    let id = percent_encoding::percent_decode_str(raw_id).decode_utf8_lossy();
    let id = id.trim();
    match shared.store.cancel(bucket, region, id) {
        Ok(changed) => {
            if changed {
                tracing::info!(job_id = %id, "emulator: job cancelled");
                shared.notify(EmulatorEvent::StateChanged {
                    job_id: id.to_string(),
                    state: JobState::Cancel,
                });
            }
            Ok(Reply::Empty)
        }
        Err(CancelRefusal::NotFound) => Err(ApiError::bad_request(
            "InvalidArgument",
            format!("The job {id} does not exist."),
        )),
        Err(CancelRefusal::Finished(state)) => Err(ApiError::bad_request(
            "InvalidArgument",
            format!("The job {id} is {state} and can no longer be cancelled."),
        )),
    }
}

fn one_or_many(mut items: Vec<Node>) -> Node {
    if items.len() == 1 {
        items.pop().unwrap_or_default()
    } else {
        Node::List(items)
    }
}

fn write_xml(tree: &Node) -> Result<Reply, ApiError> {
    xml::to_xml("Response", tree).map(Reply::Xml).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("Internal server error: {e}"),
        )
    })
}

/// CI's request ids are base64 of `<unix seconds hex>_<random hex>_<random hex>_<counter hex>`
/// (`NjJiZDU1ZmZfOTBmYTUwNjRfNzdjY18xYQ==` is `62bd55ff_90fa5064_77cc_1a`).
fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut rng = rand::rng();
    let raw = format!(
        "{:08x}_{:08x}_{:04x}_{:x}",
        chrono::Utc::now().timestamp(),
        rng.random::<u32>(),
        rng.random::<u16>(),
        n
    );
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A `TraceId` like CI's: base64 of 64 hex digits.
fn new_trace_id() -> String {
    let mut rng = rand::rng();
    let bytes: [u8; 32] = rng.random();
    base64::engine::general_purpose::STANDARD.encode(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            bucket_and_region("examplebucket-1250000000.ci.ap-guangzhou.myqcloud.com:9000"),
            Some(("examplebucket-1250000000".into(), "ap-guangzhou".into()))
        );
        assert_eq!(
            bucket_and_region("b.ci.ap-beijing.myqcloud.com"),
            Some(("b".into(), "ap-beijing".into()))
        );
        for bad in [
            "127.0.0.1:9000",
            "b.cos.ap-beijing.myqcloud.com",
            ".ci.ap-beijing.myqcloud.com",
            "b.ci..myqcloud.com",
            "b_x.ci.ap-beijing.myqcloud.com",
            "",
        ] {
            assert_eq!(bucket_and_region(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes() {
        let r = |m: Method, u: &str| {
            route(&m, &u.parse::<Uri>().unwrap()).map_err(|e| (e.status.as_u16(), e.code))
        };
        assert!(matches!(r(Method::POST, "/jobs"), Ok(Route::Submit)));
        assert!(matches!(
            r(Method::GET, "/jobs?tag=DigitalWatermark"),
            Ok(Route::List)
        ));
        assert!(matches!(r(Method::GET, "/jobs/a,b"), Ok(Route::Describe(ids)) if ids == "a,b"));
        assert!(matches!(r(Method::PUT, "/jobs/a?cancel"), Ok(Route::Cancel(id)) if id == "a"));
        assert!(matches!(
            r(Method::PUT, "/jobs/a?cancel="),
            Ok(Route::Cancel(_))
        ));
        assert_eq!(r(Method::PUT, "/jobs/a").err(), Some((404, "InvalidUrl")));
        assert_eq!(r(Method::DELETE, "/jobs").err(), Some((404, "InvalidUrl")));
        assert_eq!(r(Method::GET, "/nope").err(), Some((404, "InvalidUrl")));
        assert_eq!(
            r(Method::POST, "/pic_jobs").err(),
            Some((501, "NotImplemented"))
        );
    }

    #[test]
    fn list_query() {
        let f = list_filter(Some(
            "tag=DigitalWatermark&orderByTime=Asc&states=Success%2CFailed&size=5&nextToken=&queueId=p1\
             &startCreationTime=2022-06-30T18%3A37%3A37%2B0800",
        ))
        .unwrap();
        assert_eq!(f.tag.as_deref(), Some("DigitalWatermark"));
        assert!(f.ascending);
        assert_eq!(f.states, Some(vec![JobState::Success, JobState::Failed]));
        assert_eq!(f.size, 5);
        assert_eq!(f.after, None);
        assert_eq!(f.queue_id.as_deref(), Some("p1"));
        assert_eq!(f.start.unwrap().timestamp(), 1_656_585_457);
        assert_eq!(f.input_object, None);
        let f = list_filter(Some("inputobject=in%2F%20a%20b.mp4&tag=T")).unwrap();
        assert_eq!(
            f.input_object.as_deref(),
            Some("in/ a b.mp4"),
            "decoded, not trimmed"
        );
        assert_eq!(
            list_filter(Some("inputObject=")).unwrap().input_object,
            None
        );
        let f = list_filter(None).unwrap();
        assert_eq!((f.size, f.ascending, f.states), (10, false, None));
        assert_eq!(
            list_filter(Some(&format!("nextToken={}", encode_token(42))))
                .unwrap()
                .after,
            Some(42)
        );
        for bad in [
            "size=0",
            "size=101",
            "size=x",
            "orderByTime=Up",
            "states=Done",
            "nextToken=zz",
            "startCreationTime=yesterday",
        ] {
            let e = list_filter(Some(bad)).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "InvalidArgument"),
                "{bad}"
            );
        }
    }

    #[test]
    fn request_ids_are_unique_base64() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .unwrap();
        assert_eq!(String::from_utf8(raw).unwrap().split('_').count(), 4);
    }
}
