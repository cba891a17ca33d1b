//! The emulator's TDMQ for CMQ API 2.0, served on `emulator.cmq_listen` when
//! `emulator.tdmq_delivery = "cmq"` (the reference pages are `cmq-*.md`).
//!
//! # `/v2/index.php`
//! `POST` takes the parameters from the form-urlencoded body whatever the `Content-Type` says
//! (Tencent's Python SDK sends none) and ignores the query string; `GET` takes them from the query
//! string ("POST and GET requests cannot be mixed"). Other methods are refused with
//! `4000`/`10410`. Every answer is HTTP 200 with `application/json`
//! `{"code": …, "message": …, "requestId": …, …}`, `message` starting with CMQ's module code
//! (`(10200)no message`); details the pages do not show (why a signature failed) go to the log only.
//!
//! Checks, in order:
//! 1. The body is at most 1 MB (`4000`/`10420` "request size is more than 1MB"); no parameter is
//!    repeated (`4000`/`10330`).
//! 2. The injected outage, if any (below).
//! 3. The signature, unless `emulator.allow_anonymous`: `SecretId` must be one of the emulator's key
//!    pairs (`ci.secret_id`/`secret_key` with `ci.session_token`, and `emulator.credentials`) —
//!    else `4100`/`10270` "secret id is not existed"; everything else that fails is `4100`/`10030`
//!    "authentication failed": no `Signature`, no positive integer `Nonce` (the SDK's reach 2^63),
//!    a `Timestamp` more than 2 h from now, a key with a session token whose `Token` is missing or
//!    different, or a signature that does not verify. It is verified with `SignatureMethod`'s HMAC
//!    (HmacSHA256 only when named exactly) over `<METHOD><Host header>/v2/index.php?<sorted params>`
//!    — with every parameter, or (POST only) without those whose value starts with `@`, as the
//!    Python SDK leaves them out. Unknown parameters are signed like any other and otherwise
//!    ignored (the SDKs send `UserpollingWaitSeconds` and `RequestClient`). `Region` is not needed:
//!    one emulator is one region. The `Nonce` is not remembered: the pages say two requests must
//!    not share one, but the worker's client draws 32-bit nonces and a long-running emulator would
//!    refuse its own client's rare collisions.
//! 4. The action (`4000`/`10430` "action name %s is not existed" for others).
//!
//! The 2 h rule is the API 2.0 signature page's ("the difference between the Timestamp and Tencent
//! server time should not be greater than 2 hours"), which files it under `4500` "replay attack";
//! CMQ's own error table uses `4500` for "number of subscription has reached the limit" and has no
//! replay code, so the emulator answers `4100` "authentication failed", which a client already
//! treats as a credentials problem.
//!
//! Actions (queue rules: [`super::cmq_queues`]):
//! - `CreateQueue` (`queueName`, the attributes) → `queueId`; a taken name → `4460`.
//! - `GetQueueAttributes` → the attributes, `createTime`, `lastModifyTime`, `activeMsgNum`,
//!   `inactiveMsgNum`, `delayMsgNum`, `rewindmsgNum`.
//! - `SendMessage` (`msgBody`, `delaySeconds`) → `msgId`; `BatchSendMessage` (`msgBody.n`, ≤ 16)
//!   → `msgList[].msgId`.
//! - `ReceiveMessage` → the message's fields at the top level; `BatchReceiveMessage` (`numOfMsg`
//!   1–16, required) → `msgInfoList`. `pollingWaitSeconds` 0–30, default the queue's; nothing
//!   within it → `7000` "no message". A shutdown ends a long poll at once.
//! - `DeleteMessage` (`receiptHandle`); `BatchDeleteMessage` (`receiptHandle.n`, `n` from 0 or 1,
//!   consecutive, ≤ 16): some handles refused → `6010` "delete message partially failed", all
//!   refused → `6020` "batch delete message failed" (the BatchDeleteMessage page: "6020: Failed to
//!   delete all messages"); both with `errorList[{code: 4430, message, receiptHandle}]` — the pages
//!   show `errorList` only with 6010; it is kept for 6020 so that a reader learns why.
//!
//! A queue that does not exist → `4440`; missing or malformed parameters → `4000` (`10390`
//! missing, `10360` not an unsigned integer, `10350` out of range, `10370` too many, `10380`
//! indexes not consecutive). CMQ's other actions (`DeleteQueue`, `ListQueue`, topics, …) are not
//! emulated and answer as unknown actions.
//!
//! # Outage switch (tests)
//! Outside `/v2/index.php`, unauthenticated (the emulator is a local test tool):
//! - `POST /_emulator/cmq/outage?seconds=N[&actions=A,B,…]`: for the next `N` seconds the named
//!   actions (default: every request to `/v2/index.php`, whatever its action) answer HTTP 503 with
//!   `{"error":"ServiceUnavailable","message":…}` — before any check, as a failing gateway would.
//! - `POST /_emulator/cmq/outage?count=N[&actions=…]`: the next `N` calls of those actions do.
//! - `DELETE /_emulator/cmq/outage`: ends every outage.
//!
//! Exactly one of `seconds`/`count`; `actions` must name actions listed above (else 400). Outages
//! add up: a call fails while any matches it (a counted one counts down only when it is the one
//! that fails the call). The answer is 200 `{"actions": "all" | [...], "seconds"|"count": N}`.
//! CI's own deliveries into the queues are not affected: they do not go through this API.

use super::auth::Verifier;
use super::cmq_queues::{Clock, Ids, Queue, QueueAttributes, QueueError};
use super::shared::Shared;
use crate::cmq::api::{code, DeleteFailure, ReceivedMessage, MAX_BATCH, MAX_POLLING_WAIT_SECONDS};
use crate::cmq::sign::{self, SignatureMethod, PATH};

use crate::secret::Secret;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The actions the emulator serves.
pub(crate) const ACTIONS: [&str; 8] = [
    "CreateQueue",
    "GetQueueAttributes",
    "SendMessage",
    "BatchSendMessage",
    "ReceiveMessage",
    "BatchReceiveMessage",
    "DeleteMessage",
    "BatchDeleteMessage",
];
/// The largest request body (`10420`: "request size is more than 1MB"). With `maxMsgSize` up to
/// 1 MB too, the largest messages cannot be sent through the API; the pages leave that unresolved.
pub(crate) const MAX_REQUEST_BYTES: usize = 1 << 20;
/// How far `Timestamp` may be from the emulator's clock.
pub(crate) const MAX_CLOCK_SKEW_S: i64 = 7_200;
/// The outage switch.
pub(crate) const OUTAGE_PATH: &str = "/_emulator/cmq/outage";

/// A refused request: CMQ's `code` and `message`, `BatchDeleteMessage`'s `errorList`, and what only
/// the log says.
#[derive(Debug)]
struct Refusal {
    code: i64,
    message: String,
    error_list: Vec<DeleteFailure>,
    detail: Option<String>,
}

impl Refusal {
    fn new(code: i64, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            error_list: Vec::new(),
            detail: None,
        }
    }

    /// `4000` with a module code.
    fn invalid(module: u32, text: impl std::fmt::Display) -> Refusal {
        Refusal::new(code::INVALID_PARAMETER, format!("({module}){text}"))
    }

    fn auth_failed(detail: impl Into<String>) -> Refusal {
        Refusal::new(code::AUTH_FAILED, "(10030)authentication failed").because(detail)
    }

    fn because(mut self, detail: impl Into<String>) -> Refusal {
        self.detail = Some(detail.into());
        self
    }

    fn answer(self, request_id: &str) -> Response {
        let mut fields = Map::new();
        if !self.error_list.is_empty() {
            fields.insert(
                "errorList".into(),
                serde_json::to_value(&self.error_list).unwrap_or_default(),
            );
        }
        answer(self.code, &self.message, request_id, fields)
    }
}

impl From<QueueError> for Refusal {
    fn from(e: QueueError) -> Refusal {
        Refusal::new(e.code(), e.to_string())
    }
}

/// A request's parameters, in the order sent, each name once.
#[derive(Debug)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: &[u8]) -> Result<Params, Refusal> {
        let mut seen = HashSet::new();
        let mut list = Vec::new();
        for (name, value) in url::form_urlencoded::parse(raw) {
            if !seen.insert(name.to_string()) {
                return Err(Refusal::invalid(
                    10330,
                    format!("parameter {name} is NOT a repeatable parameter"),
                ));
            }
            list.push((name.into_owned(), value.into_owned()));
        }
        Ok(Params(list))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, Refusal> {
        self.get(name)
            .ok_or_else(|| Refusal::invalid(10390, format!("lacked of required parameter {name}")))
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, Refusal> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| Refusal::invalid(10360, format!("parameter {name} error type"))),
        }
    }

    /// `<prefix>.n` values in index order: `n` from 0 or 1, consecutive, at most [`MAX_BATCH`].
    fn indexed(&self, prefix: &str) -> Result<Vec<&str>, Refusal> {
        let mut found: Vec<(u64, &str)> = Vec::new();
        for (name, value) in &self.0 {
            let Some(index) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('.'))
            else {
                continue;
            };
            let index = index.parse::<u64>().map_err(|_| {
                Refusal::invalid(10310, format!("error: parameter {name} key format error"))
            })?;
            found.push((index, value.as_str()));
        }
        if found.is_empty() {
            return Err(Refusal::invalid(
                10390,
                format!("lacked of required parameter {prefix}"),
            ));
        }
        if found.len() > MAX_BATCH {
            return Err(Refusal::invalid(
                10370,
                format!("{prefix} parameter batch size is out of range"),
            ));
        }
        found.sort_by_key(|(i, _)| *i);
        let start = found[0].0;
        let consecutive = found
            .iter()
            .enumerate()
            .all(|(k, (i, _))| *i == start + k as u64);
        if start > 1 || !consecutive {
            return Err(Refusal::invalid(
                10380,
                format!("{prefix} parameter is not consequent"),
            ));
        }
        Ok(found.into_iter().map(|(_, v)| v).collect())
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }
}

/// One accepted key pair.
struct Key {
    secret_key: Secret,
    /// Temporary credentials: the `Token` requests must carry.
    token: Option<Secret>,
}

/// The key pairs CMQ requests may be signed with: the same ones the CI API accepts
/// ([`super::auth::Verifier`] checked them when the emulator started).
struct Keys {
    keys: HashMap<String, Key>,
    /// The temporary key sets the metadata path issued, valid until they expire.
    temporary: std::sync::Arc<super::metadata::TemporaryKeys>,
    anonymous: bool,
}

impl Keys {
    /// The CI API's key pairs ([`Verifier`]).
    fn from_verifier(verifier: &Verifier) -> Keys {
        let keys = verifier
            .key_pairs()
            .map(|(id, secret_key, token)| {
                (
                    id.to_string(),
                    Key {
                        secret_key: secret_key.clone(),
                        token: token.cloned(),
                    },
                )
            })
            .collect();
        Keys {
            keys,
            temporary: verifier.temporary().clone(),
            anonymous: verifier.is_anonymous(),
        }
    }

    #[cfg(test)]
    fn from_settings(settings: &crate::config::Settings) -> Keys {
        Keys::from_verifier(&Verifier::from_settings(settings).expect("test key pairs"))
    }

    /// Accepts the request or says why not (see the module doc); `now` is Unix seconds.
    fn authenticate(
        &self,
        method: &Method,
        host: Option<&str>,
        params: &Params,
        now: i64,
    ) -> Result<(), Refusal> {
        if self.anonymous {
            return Ok(());
        }
        let id = params.get("SecretId").unwrap_or("");
        let issued;
        let (secret_key, token) = match self.keys.get(id) {
            Some(key) => (&key.secret_key, key.token.as_ref()),
            None => {
                issued = self.temporary.lookup(id).ok_or_else(|| {
                    Refusal::new(code::AUTH_FAILED, "(10270)secret id is not existed")
                        .because(format!("unknown SecretId {id:?}"))
                })?;
                if issued.expired(now) {
                    return Err(
                        Refusal::new(code::AUTH_FAILED, "(10080)secret id status error").because(
                            format!(
                                "the temporary credentials {id} expired at {} (ExpiredTime); now is {now}",
                                issued.expired_time
                            ),
                        ),
                    );
                }
                (&issued.secret_key, Some(&issued.token))
            }
        };
        let claimed = params
            .get("Signature")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Refusal::auth_failed("no Signature"))?;
        let timestamp = params
            .get("Timestamp")
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or_else(|| Refusal::auth_failed("no integer Timestamp"))?;
        if (now - timestamp).abs() > MAX_CLOCK_SKEW_S {
            return Err(Refusal::auth_failed(format!(
                "Timestamp {timestamp} is more than {MAX_CLOCK_SKEW_S} s from the emulator's clock ({now})"
            )));
        }
        params
            .get("Nonce")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| Refusal::auth_failed("no positive integer Nonce"))?;
        if let Some(token) = token {
            let sent = params.get("Token").unwrap_or("");
            if !constant_time_eq(sent.as_bytes(), token.expose().as_bytes()) {
                return Err(Refusal::auth_failed(
                    "these are temporary credentials: the request must carry their Token",
                ));
            }
        }
        let host = host.ok_or_else(|| Refusal::auth_failed("no Host header"))?;
        let hmac = SignatureMethod::of_request(params.get("SignatureMethod"));
        let all = params.pairs();
        let text = sign::string_to_sign(method.as_str(), host, PATH, &all);
        if sign::verify(hmac, secret_key.expose(), &text, claimed) {
            return Ok(());
        }
        if method == Method::POST {
            // Tencent's Python SDK signs a POST without the parameters whose value starts with `@`
            // (a PHP-style file upload marker).
            let without: Vec<(&str, &str)> = all
                .iter()
                .copied()
                .filter(|(_, v)| !v.starts_with('@'))
                .collect();
            if without.len() != all.len() {
                let text = sign::string_to_sign(method.as_str(), host, PATH, &without);
                if sign::verify(hmac, secret_key.expose(), &text, claimed) {
                    return Ok(());
                }
            }
        }
        Err(Refusal::auth_failed(format!(
            "the {} signature does not verify over {text:?}",
            hmac.as_str()
        )))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long an outage lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    Until(Instant),
    Calls(u32),
}

/// One injected outage: which actions (`None`: all) and for how long.
#[derive(Debug)]
struct Rule {
    actions: Option<BTreeSet<String>>,
    span: Span,
}

impl Rule {
    fn active(&self, now: Instant) -> bool {
        match self.span {
            Span::Until(t) => now < t,
            Span::Calls(n) => n > 0,
        }
    }

    fn matches(&self, action: &str) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(action))
    }
}

/// The injected outages.
#[derive(Debug, Default)]
struct Outage {
    rules: Vec<Rule>,
}

impl Outage {
    /// Whether a call of `action` fails now (and counts it if a counted outage fails it).
    fn hit(&mut self, action: &str, now: Instant) -> bool {
        self.rules.retain(|r| r.active(now));
        let Some(rule) = self.rules.iter_mut().find(|r| r.matches(action)) else {
            return false;
        };
        if let Span::Calls(n) = &mut rule.span {
            *n -= 1;
        }
        true
    }
}

/// The CMQ API's state.
struct Api {
    shared: Arc<Shared>,
    keys: Keys,
    outage: Mutex<Outage>,
    request_ids: Ids,
}

/// The CMQ API 2.0 router (see the module doc).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Arc::new(Api {
        keys: Keys::from_verifier(&shared.verifier),
        outage: Mutex::new(Outage::default()),
        request_ids: Ids::new(),
        shared,
    });
    Router::new()
        .route(PATH, any(index))
        .route(OUTAGE_PATH, post(set_outage).delete(clear_outage))
        .with_state(api)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, serde_json::to_vec(body).unwrap_or_default()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// CMQ's answer: `code`, `message`, `requestId`, then `fields`.
fn answer(code: i64, message: &str, request_id: &str, fields: Map<String, Value>) -> Response {
    let mut body = Map::new();
    body.insert("code".into(), code.into());
    body.insert("message".into(), message.into());
    body.insert("requestId".into(), request_id.into());
    body.extend(fields);
    json_response(StatusCode::OK, &Value::Object(body))
}

async fn index(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = api.request_ids.next();
    let params = match read_params(&method, &uri, body).await {
        Ok(p) => p,
        Err(r) => {
            tracing::info!(%method, code = r.code, message = %r.message, "emulator: CMQ request refused");
            return r.answer(&request_id);
        }
    };
    let action = params.get("Action").unwrap_or("").to_string();
    let outage = api.outage.lock().hit(&action, Instant::now());
    if outage {
        tracing::info!(action, "emulator: CMQ outage injected: HTTP 503");
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "error": "ServiceUnavailable",
                "message": format!("injected CMQ outage ({OUTAGE_PATH})"),
            }),
        );
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match api.process(&method, host, &params, &action).await {
        Ok(fields) => {
            tracing::debug!(action, request_id, "emulator: CMQ request served");
            answer(code::SUCCESS, "", &request_id, fields)
        }
        Err(r) => {
            if r.code == code::NO_MESSAGE {
                tracing::debug!(action, request_id, "emulator: CMQ: no message");
            } else {
                tracing::info!(action, request_id, code = r.code, message = %r.message, detail = r.detail.as_deref().unwrap_or(""), "emulator: CMQ request refused");
            }
            r.answer(&request_id)
        }
    }
}

/// The parameters: the body of a POST, the query of a GET.
async fn read_params(method: &Method, uri: &Uri, body: Body) -> Result<Params, Refusal> {
    match *method {
        Method::GET => Params::parse(uri.query().unwrap_or("").as_bytes()),
        Method::POST => {
            let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
                .await
                .map_err(|_| {
                    Refusal::invalid(
                        10420,
                        "cannot parse request, or request size is more than 1MB",
                    )
                })?;
            Params::parse(&bytes)
        }
        ref other => Err(Refusal::invalid(
            10410,
            format!("unexpected http {other} only GET or POST is supported"),
        )),
    }
}

/// A message as the answers carry it.
fn message_fields(m: &ReceivedMessage) -> Map<String, Value> {
    match serde_json::to_value(m) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn fields(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Api {
    async fn process(
        &self,
        method: &Method,
        host: Option<&str>,
        params: &Params,
        action: &str,
    ) -> Result<Map<String, Value>, Refusal> {
        self.keys
            .authenticate(method, host, params, chrono::Utc::now().timestamp())?;
        let clock = Clock::now();
        match action {
            "" => Err(Refusal::invalid(
                10390,
                "lacked of required parameter Action",
            )),
            "CreateQueue" => {
                let name = params.required("queueName")?;
                let mut attributes = QueueAttributes::default();
                for attribute in QueueAttributes::NAMES {
                    if let Some(v) = params.uint(attribute)? {
                        attributes.set(attribute, v)?;
                    }
                }
                // `maxMsgHeapNum` (the SDK sends it when set) is accepted and not enforced.
                let queue = self.shared.cmq_queues.create(name, attributes, clock)?;
                tracing::info!(queue = %queue.name, queue_id = %queue.id, "emulator: CMQ queue created");
                Ok(fields([("queueId", queue.id.clone().into())]))
            }
            "GetQueueAttributes" => {
                let queue = self.queue(params)?;
                let a = queue.attributes;
                let counts = queue.counts(clock);
                // `maxMsgHeapNum` and `minMsgTime` are left out: not emulated (the SDK reads every
                // attribute only when present).
                Ok(fields([
                    ("pollingWaitSeconds", a.polling_wait_seconds.into()),
                    ("visibilityTimeout", a.visibility_timeout.into()),
                    ("maxMsgSize", a.max_msg_size.into()),
                    ("msgRetentionSeconds", a.msg_retention_seconds.into()),
                    ("createTime", queue.create_time.into()),
                    ("lastModifyTime", queue.create_time.into()),
                    ("activeMsgNum", counts.active.into()),
                    ("inactiveMsgNum", counts.inactive.into()),
                    ("delayMsgNum", counts.delayed.into()),
                    ("rewindSeconds", a.rewind_seconds.into()),
                    ("rewindmsgNum", 0.into()),
                ]))
            }
            "SendMessage" => {
                let queue = self.queue(params)?;
                let body = params.required("msgBody")?;
                let delay = params.uint("delaySeconds")?.unwrap_or(0);
                let id = queue.send(body, delay, clock)?;
                Ok(fields([("msgId", id.into())]))
            }
            "BatchSendMessage" => {
                let queue = self.queue(params)?;
                let bodies = params.indexed("msgBody")?;
                let delay = params.uint("delaySeconds")?.unwrap_or(0);
                let ids = queue.send_all(&bodies, delay, clock)?;
                let list: Vec<Value> = ids.into_iter().map(|id| json!({ "msgId": id })).collect();
                Ok(fields([("msgList", list.into())]))
            }
            "ReceiveMessage" => {
                let queue = self.queue(params)?;
                let wait = polling_wait(params, &queue)?;
                match self.receive(&queue, 1, wait).await.first() {
                    Some(m) => Ok(message_fields(m)),
                    None => Err(no_message()),
                }
            }
            "BatchReceiveMessage" => {
                let queue = self.queue(params)?;
                let n = params.uint("numOfMsg")?.ok_or_else(|| {
                    Refusal::invalid(10390, "lacked of required parameter numOfMsg")
                })?;
                if !(1..=MAX_BATCH as u64).contains(&n) {
                    return Err(QueueError::OutOfRange("numOfMsg").into());
                }
                let wait = polling_wait(params, &queue)?;
                let got = self.receive(&queue, n as usize, wait).await;
                if got.is_empty() {
                    return Err(no_message());
                }
                let list: Vec<Value> = got
                    .iter()
                    .map(|m| Value::Object(message_fields(m)))
                    .collect();
                Ok(fields([("msgInfoList", list.into())]))
            }
            "DeleteMessage" => {
                let queue = self.queue(params)?;
                let handle = params.required("receiptHandle")?;
                queue.delete(handle, clock)?;
                Ok(Map::new())
            }
            "BatchDeleteMessage" => {
                let queue = self.queue(params)?;
                let handles = params.indexed("receiptHandle")?;
                let failures: Vec<DeleteFailure> = handles
                    .iter()
                    .filter_map(|h| {
                        queue.delete(h, clock).err().map(|e| DeleteFailure {
                            code: e.code(),
                            // The page's sample writes this text for a 4430 in errorList.
                            message: "invalid receiptHandle".into(),
                            receipt_handle: h.to_string(),
                        })
                    })
                    .collect();
                if failures.is_empty() {
                    return Ok(Map::new());
                }
                let mut refusal = if failures.len() == handles.len() {
                    Refusal::new(
                        code::DELETE_ALL_FAILED,
                        "(10290)batch delete message failed",
                    )
                } else {
                    Refusal::new(
                        code::DELETE_PARTIALLY_FAILED,
                        "(10150)delete message partially failed",
                    )
                };
                refusal.error_list = failures;
                Err(refusal)
            }
            other => Err(Refusal::invalid(
                10430,
                format!("action name {other} is not existed"),
            )),
        }
    }

    /// The queue `queueName` names.
    fn queue(&self, params: &Params) -> Result<Arc<Queue>, Refusal> {
        let name = params.required("queueName")?;
        Ok(self.shared.cmq_queues.get(name)?)
    }

    /// A long poll that a shutdown ends at once (so that graceful shutdown does not wait 30 s).
    async fn receive(&self, queue: &Queue, n: usize, wait: Duration) -> Vec<ReceivedMessage> {
        tokio::select! {
            got = queue.receive(n, wait) => got,
            _ = self.shared.shutdown.triggered() => Vec::new(),
        }
    }
}

fn no_message() -> Refusal {
    Refusal::new(code::NO_MESSAGE, "(10200)no message")
}

/// `pollingWaitSeconds` (0–30), or the queue's.
fn polling_wait(params: &Params, queue: &Queue) -> Result<Duration, Refusal> {
    let seconds = match params.uint("pollingWaitSeconds")? {
        None => queue.attributes.polling_wait_seconds,
        Some(s) if s <= MAX_POLLING_WAIT_SECONDS => s,
        Some(_) => return Err(QueueError::OutOfRange("pollingWaitSeconds").into()),
    };
    Ok(Duration::from_secs(seconds))
}

fn bad_outage(message: impl Into<String>) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({ "error": "InvalidArgument", "message": message.into() }),
    )
}

/// Parses an outage request's query into the rule it asks for.
fn outage_rule(query: &str, now: Instant) -> Result<(Rule, Value), String> {
    let mut seconds = None;
    let mut count = None;
    let mut actions: Option<BTreeSet<String>> = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let number = || {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("{name} must be a non-negative integer, not {value:?}"))
        };
        match name.as_ref() {
            "seconds" => seconds = Some(number()?),
            "count" => count = Some(number()?),
            "actions" => {
                let mut set = BTreeSet::new();
                for a in value.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    if !ACTIONS.contains(&a) {
                        return Err(format!(
                            "unknown action {a:?}; the emulator serves {}",
                            ACTIONS.join(", ")
                        ));
                    }
                    set.insert(a.to_string());
                }
                if set.is_empty() {
                    return Err("actions names no action".into());
                }
                actions = Some(set);
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?} (seconds, count, actions)"
                ))
            }
        }
    }
    let (span, length) = match (seconds, count) {
        (Some(s), None) => (
            Span::Until(now + Duration::from_secs(s)),
            ("seconds", Value::from(s)),
        ),
        (None, Some(c)) => (
            Span::Calls(u32::try_from(c).map_err(|_| "count is too large".to_string())?),
            ("count", Value::from(c)),
        ),
        _ => return Err("give exactly one of seconds=N and count=N".into()),
    };
    let mut answer = Map::new();
    answer.insert(
        "actions".into(),
        match &actions {
            None => "all".into(),
            Some(a) => a.iter().cloned().collect::<Vec<_>>().into(),
        },
    );
    answer.insert(length.0.into(), length.1);
    Ok((Rule { actions, span }, Value::Object(answer)))
}

async fn set_outage(State(api): State<Arc<Api>>, uri: Uri) -> Response {
    match outage_rule(uri.query().unwrap_or(""), Instant::now()) {
        Ok((rule, answer)) => {
            tracing::info!(outage = %answer, "emulator: CMQ outage set");
            api.outage.lock().rules.push(rule);
            json_response(StatusCode::OK, &answer)
        }
        Err(message) => bad_outage(message),
    }
}

async fn clear_outage(State(api): State<Arc<Api>>) -> Response {
    let mut outage = api.outage.lock();
    let cleared = outage.rules.len();
    outage.rules.clear();
    tracing::info!(cleared, "emulator: CMQ outages cleared");
    json_response(StatusCode::OK, &json!({ "cleared": cleared }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmq::sign::{signed_params, CmqCredentials, RequestStamp};
    use crate::config::{KeyPair, Settings};

    const ID: &str = "AKIDcmqemulator";
    const KEY: &str = "cmq-emulator-key";
    const HOST: &str = "127.0.0.1:9100";
    const NOW: i64 = 1_700_000_000;

    fn keys(token: Option<&str>) -> Keys {
        let mut s = Settings::default();
        s.emulator.credentials.push(KeyPair {
            secret_id: "AKIDother".into(),
            secret_key: Secret::new("other"),
        });
        s.ci.secret_id = ID.into();
        s.ci.secret_key = Secret::new(KEY);
        if let Some(t) = token {
            s.ci.session_token = Secret::new(t);
        }
        Keys::from_settings(&s)
    }

    fn form(pairs: &[(String, String)]) -> Params {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter())
            .finish();
        Params::parse(body.as_bytes()).unwrap()
    }

    fn signed(
        method: SignatureMethod,
        token: Option<&str>,
        timestamp: i64,
    ) -> Vec<(String, String)> {
        signed_params(
            &CmqCredentials {
                secret_id: ID.into(),
                secret_key: Secret::new(KEY),
                token: token.map(Secret::new),
            },
            method,
            HOST,
            "BatchReceiveMessage",
            &[("queueName", "q".into()), ("numOfMsg", "16".into())],
            RequestStamp {
                nonce: 9_223_372_036_854_775_807,
                timestamp,
            },
        )
    }

    fn code_of(r: Result<(), Refusal>) -> Option<(i64, String)> {
        r.err().map(|r| (r.code, r.message))
    }

    #[test]
    fn both_signature_methods_verify_and_the_host_is_signed() {
        let k = keys(None);
        for method in [SignatureMethod::HmacSha1, SignatureMethod::HmacSha256] {
            let p = form(&signed(method, None, NOW));
            k.authenticate(&Method::POST, Some(HOST), &p, NOW).unwrap();
            let refused = code_of(k.authenticate(&Method::POST, Some("127.0.0.1:9101"), &p, NOW));
            assert_eq!(refused, Some((4100, "(10030)authentication failed".into())));
            let refused = code_of(k.authenticate(&Method::GET, Some(HOST), &p, NOW));
            assert_eq!(refused.map(|r| r.0), Some(4100), "the method is signed");
        }
    }

    #[test]
    fn refusals_say_4100() {
        let k = keys(None);
        let auth_failed = Some((4100, "(10030)authentication failed".to_string()));
        let mut p = signed(SignatureMethod::HmacSha256, None, NOW);
        // A changed value.
        p.iter_mut().find(|(n, _)| n == "numOfMsg").unwrap().1 = "1".into();
        assert_eq!(
            code_of(k.authenticate(&Method::POST, Some(HOST), &form(&p), NOW)),
            auth_failed
        );
        // Unknown SecretId.
        let mut p = signed(SignatureMethod::HmacSha256, None, NOW);
        p.iter_mut().find(|(n, _)| n == "SecretId").unwrap().1 = "AKIDnobody".into();
        assert_eq!(
            code_of(k.authenticate(&Method::POST, Some(HOST), &form(&p), NOW)),
            Some((4100, "(10270)secret id is not existed".into()))
        );
        // Another configured key's id with this key's signature.
        p.iter_mut().find(|(n, _)| n == "SecretId").unwrap().1 = "AKIDother".into();
        assert_eq!(
            code_of(k.authenticate(&Method::POST, Some(HOST), &form(&p), NOW)),
            auth_failed
        );
        // Timestamp: 2 h either way is fine, more is not.
        for (skew, ok) in [
            (7_200, true),
            (-7_200, true),
            (7_201, false),
            (-7_201, false),
        ] {
            let p = form(&signed(SignatureMethod::HmacSha1, None, NOW + skew));
            let r = k.authenticate(&Method::POST, Some(HOST), &p, NOW);
            assert_eq!(r.is_ok(), ok, "skew {skew}");
        }
        // No signature, no nonce, no host.
        let without = |name: &str| {
            let p: Vec<_> = signed(SignatureMethod::HmacSha1, None, NOW)
                .into_iter()
                .filter(|(n, _)| n != name)
                .collect();
            form(&p)
        };
        for name in ["Signature", "Nonce", "Timestamp"] {
            assert_eq!(
                code_of(k.authenticate(&Method::POST, Some(HOST), &without(name), NOW)),
                auth_failed,
                "{name}"
            );
        }
        let p = form(&signed(SignatureMethod::HmacSha1, None, NOW));
        assert_eq!(
            code_of(k.authenticate(&Method::POST, None, &p, NOW)),
            auth_failed
        );
    }

    #[test]
    fn issued_temporary_credentials_expire_with_4100() {
        let mut s = Settings::default();
        s.emulator.cvm_roles = vec!["CVMas".into()];
        s.emulator.temporary_credentials_lifetime = std::time::Duration::from_secs(60);
        let k = Keys::from_settings(&s);
        let issued = k.temporary.for_role("CVMas", NOW).unwrap();
        let at = |now: i64| {
            let p = form(&signed_params(
                &CmqCredentials {
                    secret_id: issued.secret_id.clone(),
                    secret_key: issued.secret_key.clone(),
                    token: Some(issued.token.clone()),
                },
                SignatureMethod::HmacSha256,
                HOST,
                "BatchReceiveMessage",
                &[("queueName", "q".into())],
                RequestStamp {
                    nonce: 7,
                    timestamp: now,
                },
            ));
            code_of(k.authenticate(&Method::POST, Some(HOST), &p, now))
        };
        assert_eq!(at(NOW + 59), None);
        assert_eq!(
            at(NOW + 60),
            Some((4100, "(10080)secret id status error".to_string()))
        );
    }

    #[test]
    fn temporary_credentials_need_their_token() {
        let k = keys(Some("session-token"));
        let good = form(&signed(
            SignatureMethod::HmacSha256,
            Some("session-token"),
            NOW,
        ));
        k.authenticate(&Method::POST, Some(HOST), &good, NOW)
            .unwrap();
        let none = form(&signed(SignatureMethod::HmacSha256, None, NOW));
        assert_eq!(
            code_of(k.authenticate(&Method::POST, Some(HOST), &none, NOW)).map(|r| r.0),
            Some(4100)
        );
        let other = form(&signed(
            SignatureMethod::HmacSha256,
            Some("other-token"),
            NOW,
        ));
        assert_eq!(
            code_of(k.authenticate(&Method::POST, Some(HOST), &other, NOW)).map(|r| r.0),
            Some(4100)
        );
        assert!(
            keys(None)
                .authenticate(&Method::POST, Some(HOST), &good, NOW)
                .is_ok(),
            "a Token sent for a long-term key is only signed"
        );
    }

    /// The Python SDK's string to sign leaves out POST values starting with `@`.
    #[test]
    fn the_python_sdks_at_sign_variant_is_accepted_on_post_only() {
        let k = keys(None);
        let mut pairs: Vec<(String, String)> = [
            ("Action", "SendMessage"),
            ("Nonce", "12345"),
            ("RequestClient", "SDK_Python_1.3"),
            ("SecretId", ID),
            ("SignatureMethod", "HmacSHA1"),
            ("Timestamp", &NOW.to_string()),
            ("delaySeconds", "0"),
            ("msgBody", "@mention me"),
            ("queueName", "q"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let kept: Vec<(String, String)> = pairs
            .iter()
            .filter(|(_, v)| !v.starts_with('@'))
            .cloned()
            .collect();
        let kept: Vec<(&str, &str)> = kept.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let text = sign::string_to_sign("POST", HOST, PATH, &kept);
        assert!(!text.contains("msgBody"), "{text}");
        let signature = sign::signature(SignatureMethod::HmacSha1, KEY, &text);
        let get_text = sign::string_to_sign("GET", HOST, PATH, &kept);
        let get_signature = sign::signature(SignatureMethod::HmacSha1, KEY, &get_text);
        pairs.push(("Signature".into(), signature));
        let p = form(&pairs);
        k.authenticate(&Method::POST, Some(HOST), &p, NOW).unwrap();
        pairs.last_mut().unwrap().1 = get_signature;
        assert!(
            k.authenticate(&Method::GET, Some(HOST), &form(&pairs), NOW)
                .is_err(),
            "GET signs every parameter"
        );
    }

    #[test]
    fn anonymous_accepts_anything() {
        let mut s = Settings::default();
        s.emulator.allow_anonymous = true;
        let k = Keys::from_settings(&s);
        k.authenticate(&Method::POST, None, &form(&[]), NOW)
            .unwrap();
    }

    #[test]
    fn indexed_parameters_start_at_0_or_1_and_are_consecutive() {
        let p = |names: &[&str]| {
            form(
                &names
                    .iter()
                    .map(|n| (n.to_string(), format!("v-{n}")))
                    .collect::<Vec<_>>(),
            )
        };
        let params = p(&["receiptHandle.2", "receiptHandle.1", "queueName"]);
        let values = params.indexed("receiptHandle").unwrap();
        assert_eq!(values, ["v-receiptHandle.1", "v-receiptHandle.2"]);
        assert_eq!(
            p(&["receiptHandle.0"]).indexed("receiptHandle").unwrap(),
            ["v-receiptHandle.0"]
        );
        let refused = |names: &[&str]| {
            let r = p(names).indexed("receiptHandle").unwrap_err();
            (r.code, r.message)
        };
        assert_eq!(
            refused(&["receiptHandle.1", "receiptHandle.3"]),
            (
                4000,
                "(10380)receiptHandle parameter is not consequent".into()
            )
        );
        assert_eq!(refused(&["receiptHandle.2"]).0, 4000);
        assert_eq!(
            refused(&["queueName"]),
            (
                4000,
                "(10390)lacked of required parameter receiptHandle".into()
            )
        );
        assert_eq!(refused(&["receiptHandle.x"]).0, 4000);
        let seventeen: Vec<String> = (1..=17).map(|i| format!("receiptHandle.{i}")).collect();
        let names: Vec<&str> = seventeen.iter().map(String::as_str).collect();
        assert_eq!(
            refused(&names),
            (
                4000,
                "(10370)receiptHandle parameter batch size is out of range".into()
            )
        );
        let sixteen = &names[..16];
        assert_eq!(p(sixteen).indexed("receiptHandle").unwrap().len(), 16);
        // `receiptHandleX.1` is another parameter.
        assert_eq!(refused(&["receiptHandleX.1"]).0, 4000);
    }

    #[test]
    fn parameters_are_form_decoded_and_not_repeated() {
        let p = Params::parse(b"msgBody=a+b%26c&queueName=q").unwrap();
        assert_eq!(p.get("msgBody"), Some("a b&c"));
        let r = Params::parse(b"a=1&a=2").unwrap_err();
        assert_eq!(
            (r.code, r.message),
            (
                4000,
                "(10330)parameter a is NOT a repeatable parameter".into()
            )
        );
        let p = Params::parse(b"numOfMsg=x").unwrap();
        assert_eq!(
            p.uint("numOfMsg").unwrap_err().message,
            "(10360)parameter numOfMsg error type"
        );
        assert_eq!(p.uint("absent").unwrap(), None);
    }

    #[test]
    fn outages_by_time_and_by_count() {
        let now = Instant::now();
        let mut outage = Outage::default();
        assert!(!outage.hit("BatchDeleteMessage", now));

        let (rule, answer) = outage_rule("count=2&actions=BatchDeleteMessage", now).unwrap();
        assert_eq!(
            answer,
            json!({"actions": ["BatchDeleteMessage"], "count": 2})
        );
        outage.rules.push(rule);
        assert!(
            !outage.hit("BatchReceiveMessage", now),
            "other actions pass"
        );
        assert!(outage.hit("BatchDeleteMessage", now));
        assert!(outage.hit("BatchDeleteMessage", now));
        assert!(
            !outage.hit("BatchDeleteMessage", now),
            "two calls, then recovered"
        );
        assert!(outage.rules.is_empty() || !outage.hit("BatchDeleteMessage", now));

        let (rule, answer) = outage_rule("seconds=5", now).unwrap();
        assert_eq!(answer, json!({"actions": "all", "seconds": 5}));
        outage.rules.push(rule);
        assert!(outage.hit("SendMessage", now));
        assert!(
            outage.hit("", now + Duration::from_millis(4_999)),
            "all requests"
        );
        assert!(!outage.hit("SendMessage", now + Duration::from_secs(5)));

        for bad in [
            "",
            "seconds=1&count=1",
            "seconds=-1",
            "count=1&actions=Nope",
            "count=1&actions=",
            "minutes=1",
        ] {
            assert!(outage_rule(bad, now).is_err(), "{bad}");
        }
    }
}
