//! A CMQ API 2.0 client over HTTP: the queue actions a reader needs (`BatchReceiveMessage`,
//! `BatchDeleteMessage`), the ones that set a queue up or fill it (`CreateQueue`, `SendMessage`),
//! and `GetQueueAttributes` (what `ci-worker doctor` checks a queue with).
//!
//! Requests are `POST <endpoint>/v2/index.php` with the signed parameters form-urlencoded in the
//! body, as Tencent's SDKs send them. The host signed is the endpoint's, with its port when it names
//! one (what the `Host` header carries). The endpoint's scheme decides TLS: TDMQ's public addresses are
//! `https://cmq-<region>.public.tencenttdmq.com`, its VPC ones `http://<region>.mqadapter.cmq.tencentyun.com`.

use super::api::{code, Answer, DeleteFailure, ReceivedMessage, MAX_BATCH};
use super::sign::{signed_params, CmqCredentials, RequestStamp, SignatureMethod, PATH};
use crate::ci::sign::{Credentials, SharedCredentials};
use std::time::Duration;

/// Why a CMQ call failed. Never holds a secret: the parameters (and the signature) are not kept.
#[derive(Debug, thiserror::Error)]
pub enum CmqError {
    #[error("CMQ endpoint {0:?} is not an http(s):// address with a host")]
    Endpoint(String),
    #[error("CMQ {action}: {detail}")]
    Transport {
        action: &'static str,
        detail: String,
    },
    #[error("CMQ {action}: HTTP {status}")]
    Status { action: &'static str, status: u16 },
    #[error("CMQ {action}: code {code}: {message} (requestId {request_id:?})")]
    Refused {
        action: &'static str,
        code: i64,
        message: String,
        request_id: String,
    },
    #[error("CMQ {action}: unreadable answer: {detail}")]
    Malformed {
        action: &'static str,
        detail: String,
    },
}

impl CmqError {
    /// Whether the same call may succeed after a pause (network, 5xx, throttling, CMQ's own
    /// failures), as opposed to a refusal that needs a change (credentials, queue name).
    pub fn is_transient(&self) -> bool {
        match self {
            CmqError::Endpoint(_) => false,
            CmqError::Transport { .. } | CmqError::Malformed { .. } => true,
            CmqError::Status { status, .. } => *status >= 500 || *status == 429,
            CmqError::Refused { code, .. } => code::is_transient(*code),
        }
    }

    /// CMQ's result code, when CMQ answered one.
    pub fn code(&self) -> Option<i64> {
        match self {
            CmqError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A short label for metrics: `network`, `http_<status>` or `code_<code>`.
    pub fn label(&self) -> String {
        match self {
            CmqError::Endpoint(_) => "endpoint".into(),
            CmqError::Transport { .. } => "network".into(),
            CmqError::Status { status, .. } => format!("http_{status}"),
            CmqError::Refused { code, .. } => format!("code_{code}"),
            CmqError::Malformed { .. } => "malformed".into(),
        }
    }
}

/// What a `BatchDeleteMessage` did not delete (code 6010: some handles were invalid, e.g. because
/// their visibility timeout passed and the message went back to the queue).
#[derive(Debug, Default)]
pub struct DeleteOutcome {
    pub failed: Vec<DeleteFailure>,
}

/// Queue attributes for `CreateQueue` (CMQ's defaults when `None`), and as `GetQueueAttributes`
/// answers them (`None`: not in the answer).
#[derive(Debug, Clone, Default)]
pub struct QueueAttributes {
    pub polling_wait_seconds: Option<u64>,
    pub visibility_timeout: Option<u64>,
    pub max_msg_size: Option<u64>,
    pub msg_retention_seconds: Option<u64>,
}

/// A CMQ client for one endpoint and key pair. Cheap to clone.
#[derive(Clone)]
pub struct CmqClient {
    http: reqwest::Client,
    url: String,
    host: String,
    /// Asked once per call: temporary credentials are replaced under a running client.
    credentials: SharedCredentials,
    method: SignatureMethod,
    timeout: Duration,
}

impl CmqClient {
    /// `timeout` bounds one call; a long poll gets its wait on top.
    pub fn new(
        endpoint: &str,
        credentials: CmqCredentials,
        method: SignatureMethod,
        timeout: Duration,
    ) -> Result<CmqClient, CmqError> {
        let shared = SharedCredentials::new(Credentials {
            secret_id: credentials.secret_id,
            secret_key: credentials.secret_key,
            session_token: credentials.token,
        });
        Self::with_shared(endpoint, shared, method, timeout)
    }

    /// [`CmqClient::new`] with the key set the CI client signs with, which may be replaced while the
    /// client runs (temporary credentials); each call signs with the one current when it is made.
    pub fn with_shared(
        endpoint: &str,
        credentials: SharedCredentials,
        method: SignatureMethod,
        timeout: Duration,
    ) -> Result<CmqClient, CmqError> {
        let parsed = url::Url::parse(endpoint.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| CmqError::Endpoint(endpoint.to_string()))?;
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(CmqError::Endpoint(endpoint.to_string())),
        };
        let url = format!("{}://{host}{PATH}", parsed.scheme());
        let http = reqwest::Client::builder()
            .user_agent(super::sign::REQUEST_CLIENT)
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|e| CmqError::Transport {
                action: "client",
                detail: e.to_string(),
            })?;
        Ok(CmqClient {
            http,
            url,
            host,
            credentials,
            method,
            timeout,
        })
    }

    /// The host requests are signed for (`host[:port]`).
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn call(
        &self,
        action: &'static str,
        params: &[(&str, String)],
        extra_wait: Duration,
    ) -> Result<Answer, CmqError> {
        let stamp = RequestStamp {
            nonce: rand::random::<u32>() as u64 + 1,
            timestamp: chrono::Utc::now().timestamp(),
        };
        let current = self.credentials.current();
        let credentials = CmqCredentials {
            secret_id: current.secret_id.clone(),
            secret_key: current.secret_key.clone(),
            token: current.session_token.clone(),
        };
        let signed = signed_params(&credentials, self.method, &self.host, action, params, stamp);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(signed.iter())
            .finish();
        let response = self
            .http
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .timeout(self.timeout + extra_wait)
            .body(body)
            .send()
            .await
            .map_err(|e| CmqError::Transport {
                action,
                // Without the URL: it is only the endpoint, but keep errors short and uniform.
                detail: e.without_url().to_string(),
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(CmqError::Status {
                action,
                status: status.as_u16(),
            });
        }
        let bytes = response.bytes().await.map_err(|e| CmqError::Transport {
            action,
            detail: e.without_url().to_string(),
        })?;
        Answer::parse(&bytes).map_err(|e| CmqError::Malformed {
            action,
            detail: e.0,
        })
    }

    fn refused(action: &'static str, answer: Answer) -> CmqError {
        CmqError::Refused {
            action,
            code: answer.code,
            message: answer.message,
            request_id: answer.request_id,
        }
    }

    /// Up to `count` (1–16) messages, waiting up to `polling_wait` (≤ 30 s) for the first one. An
    /// empty queue (code 7000) is an empty list, not an error.
    pub async fn batch_receive(
        &self,
        queue: &str,
        count: usize,
        polling_wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, CmqError> {
        const ACTION: &str = "BatchReceiveMessage";
        let wait = polling_wait
            .as_secs()
            .min(super::api::MAX_POLLING_WAIT_SECONDS);
        let params = [
            ("queueName", queue.to_string()),
            ("numOfMsg", count.clamp(1, MAX_BATCH).to_string()),
            ("pollingWaitSeconds", wait.to_string()),
        ];
        let answer = self
            .call(ACTION, &params, Duration::from_secs(wait))
            .await?;
        match answer.code {
            code::SUCCESS => answer.messages().map_err(|e| CmqError::Malformed {
                action: ACTION,
                detail: e.0,
            }),
            code::NO_MESSAGE => Ok(Vec::new()),
            _ => Err(Self::refused(ACTION, answer)),
        }
    }

    /// Deletes up to 16 received messages by their receipt handles. Handles CMQ did not accept
    /// (code 6010) come back in the outcome; any other refusal is an error.
    pub async fn batch_delete(
        &self,
        queue: &str,
        receipt_handles: &[&str],
    ) -> Result<DeleteOutcome, CmqError> {
        const ACTION: &str = "BatchDeleteMessage";
        if receipt_handles.is_empty() {
            return Ok(DeleteOutcome::default());
        }
        let names: Vec<String> = (1..=receipt_handles.len())
            .map(|n| format!("receiptHandle.{n}"))
            .collect();
        let mut params: Vec<(&str, String)> = vec![("queueName", queue.to_string())];
        params.extend(
            names
                .iter()
                .zip(receipt_handles)
                .map(|(n, h)| (n.as_str(), h.to_string())),
        );
        let answer = self.call(ACTION, &params, Duration::ZERO).await?;
        match answer.code {
            code::SUCCESS => Ok(DeleteOutcome::default()),
            code::DELETE_PARTIALLY_FAILED => Ok(DeleteOutcome {
                failed: answer.delete_failures().map_err(|e| CmqError::Malformed {
                    action: ACTION,
                    detail: e.0,
                })?,
            }),
            _ => Err(Self::refused(ACTION, answer)),
        }
    }

    /// Sends one message; returns its `msgId`.
    pub async fn send_message(&self, queue: &str, body: &str) -> Result<String, CmqError> {
        const ACTION: &str = "SendMessage";
        let params = [
            ("queueName", queue.to_string()),
            ("msgBody", body.to_string()),
            ("delaySeconds", "0".to_string()),
        ];
        let answer = self.call(ACTION, &params, Duration::ZERO).await?;
        if answer.code != code::SUCCESS {
            return Err(Self::refused(ACTION, answer));
        }
        Ok(answer
            .fields
            .get("msgId")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string())
    }

    /// `GetQueueAttributes`: the settable attributes of `queue`, as Tencent's CMQ SDKs read them
    /// (`qcloud-cmq-sdk-py3` `Queue.get_attributes`: each one only when the answer has it, a
    /// number or a numeric string). A queue that does not exist is code 4440 (or 4000 with module
    /// code 10100 on TDMQ's pages).
    pub async fn get_queue_attributes(&self, queue: &str) -> Result<QueueAttributes, CmqError> {
        const ACTION: &str = "GetQueueAttributes";
        let answer = self
            .call(ACTION, &[("queueName", queue.to_string())], Duration::ZERO)
            .await?;
        if answer.code != code::SUCCESS {
            return Err(Self::refused(ACTION, answer));
        }
        let number = |name: &str| match answer.fields.get(name) {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        Ok(QueueAttributes {
            polling_wait_seconds: number("pollingWaitSeconds"),
            visibility_timeout: number("visibilityTimeout"),
            max_msg_size: number("maxMsgSize"),
            msg_retention_seconds: number("msgRetentionSeconds"),
        })
    }

    /// Creates a queue; an existing one (code 4460) is not an error, so set-up can be repeated.
    pub async fn create_queue(
        &self,
        queue: &str,
        attributes: &QueueAttributes,
    ) -> Result<(), CmqError> {
        const ACTION: &str = "CreateQueue";
        let mut params: Vec<(&str, String)> = vec![("queueName", queue.to_string())];
        for (name, value) in [
            ("pollingWaitSeconds", attributes.polling_wait_seconds),
            ("visibilityTimeout", attributes.visibility_timeout),
            ("maxMsgSize", attributes.max_msg_size),
            ("msgRetentionSeconds", attributes.msg_retention_seconds),
        ] {
            if let Some(v) = value {
                params.push((name, v.to_string()));
            }
        }
        let answer = self.call(ACTION, &params, Duration::ZERO).await?;
        match answer.code {
            code::SUCCESS => Ok(()),
            code::QUEUE_EXISTS => Ok(()),
            code::INVALID_PARAMETER if answer.message.contains("already existed") => Ok(()),
            _ => Err(Self::refused(ACTION, answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn credentials() -> CmqCredentials {
        CmqCredentials {
            secret_id: "AKIDtest".into(),
            secret_key: Secret::new("k"),
            token: None,
        }
    }

    #[test]
    fn the_signed_host_keeps_an_explicit_port() {
        let method = SignatureMethod::HmacSha256;
        let t = Duration::from_secs(5);
        let c = CmqClient::new("http://127.0.0.1:9100/", credentials(), method, t).unwrap();
        assert_eq!(c.host(), "127.0.0.1:9100");
        assert_eq!(c.url, "http://127.0.0.1:9100/v2/index.php");
        let c = CmqClient::new(
            "https://cmq-gz.public.tencenttdmq.com",
            credentials(),
            method,
            t,
        )
        .unwrap();
        assert_eq!(c.host(), "cmq-gz.public.tencenttdmq.com");
        for bad in ["cmq-gz.public.tencenttdmq.com", "ftp://x", "http://"] {
            assert!(
                CmqClient::new(bad, credentials(), method, t).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let refused = |code| CmqError::Refused {
            action: "BatchReceiveMessage",
            code,
            message: String::new(),
            request_id: String::new(),
        };
        assert!(refused(4420).is_transient());
        assert!(!refused(4100).is_transient());
        assert_eq!(refused(4100).label(), "code_4100");
        let status = |status| CmqError::Status {
            action: "BatchReceiveMessage",
            status,
        };
        assert!(status(503).is_transient());
        assert!(!status(404).is_transient());
    }
}
