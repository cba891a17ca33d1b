//! HTTP lookup: `pulsar.url = "http://…"` or `"https://…"`, the service URL TDMQ for Pulsar gives
//! clusters on 2.7.1 and later, which the `pulsar` crate cannot use (it speaks only the binary
//! protocol, `pulsar://` and `pulsar+ssl://`, and never implemented HTTP lookup: pulsar-rs#181).
//!
//! What Pulsar's Java client (`HttpLookupService`) does, done here before the crate is involved:
//! `GET /admin/v2/<domain>/<tenant>/<namespace>/<topic>/partitions?checkAllowAutoCreation=true`
//! tells whether a topic is partitioned; `GET /lookup/v2/topic/<domain>/<tenant>/<namespace>/<topic>`
//! of the topic, or of **each** partition (`<topic>-partition-<n>`) of a partitioned one, answers
//! the broker that serves it, as [`LookupData`]. The client ([`super::client`]) then connects a
//! crate client to that broker's binary URL — `brokerUrlTls` when the service URL is `https`, else
//! `brokerUrl` (`nativeUrl` when a lookup names no `brokerUrl`) — and builds that partition's
//! producer or consumer on it. The token goes as `Authorization: Bearer <jwt>`, and is never part
//! of an error or a log line. No listener name is sent (Java's `listenerName` query parameter,
//! the broker's `X-Pulsar-ListenerName` header): the service URL a cluster gives per network
//! already answers that network's addresses, and the crate's own binary lookup that follows could
//! not carry one.
//!
//! The pure parts ([`TopicName`], [`parts`], [`LookupData::broker_url`], [`LookupError`] from a
//! status) are apart from the HTTP calls ([`HttpLookup`]) so that they are tested without a
//! server.

use crate::secret::Secret;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::time::Duration;

/// What the HTTP lookup can answer instead of a broker URL.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(
        "{0:?} is not a Pulsar topic name (want my-topic, tenant/namespace/topic or \
         persistent://tenant/namespace/topic)"
    )]
    TopicName(String),
    #[error(
        "the HTTP lookup at {url} refused {} ({status}) for topic {topic}: check pulsar.token",
        if *.token_sent { "the token" } else { "a request without a token" }
    )]
    Unauthorized {
        url: String,
        topic: String,
        status: u16,
        token_sent: bool,
    },
    #[error("the HTTP lookup at {url} does not know topic {topic} (404: {message})")]
    NotFound {
        url: String,
        topic: String,
        message: String,
    },
    #[error("the HTTP lookup at {url} answered {status} for topic {topic}: {message}")]
    Status {
        url: String,
        topic: String,
        status: u16,
        message: String,
    },
    #[error("cannot reach the HTTP lookup at {url} (topic {topic}): {source}")]
    Unreachable {
        url: String,
        topic: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the HTTP lookup at {url} answered for topic {topic} with something that is not Pulsar's \
         ({message}): is pulsar.url the cluster's HTTP service URL?"
    )]
    Body {
        url: String,
        topic: String,
        message: String,
    },
    #[error("the lookup of topic {topic} names no {wanted} broker URL (it answered {answered})")]
    NoBroker {
        topic: String,
        wanted: &'static str,
        answered: String,
    },
    #[error("the HTTP lookup of topic {topic} was redirected more than {MAX_REDIRECTS} times")]
    Redirects { topic: String },
    #[error("cannot set up the HTTP client for the lookup: {0}")]
    Setup(#[source] reqwest::Error),
}

impl LookupError {
    /// Whether waiting cannot fix it (see [`super::PulsarIoError::is_refusal`]): a bad token, an
    /// unknown topic, a URL that is not a Pulsar cluster's. A broker that cannot be reached or
    /// answers 5xx, 408 or 429 may be starting or busy.
    pub fn is_refusal(&self) -> bool {
        match self {
            LookupError::Unreachable { .. } => false,
            LookupError::Status { status, .. } => !(*status >= 500 || [408, 429].contains(status)),
            _ => true,
        }
    }

    /// The error for a non-success `status` with body `message`.
    fn from_status(url: &str, topic: &str, status: u16, message: String, token_sent: bool) -> Self {
        let (url, topic) = (url.to_string(), topic.to_string());
        match status {
            401 | 403 => LookupError::Unauthorized {
                url,
                topic,
                status,
                token_sent,
            },
            404 => LookupError::NotFound {
                url,
                topic,
                message,
            },
            _ => LookupError::Status {
                url,
                topic,
                status,
                message,
            },
        }
    }
}

/// Redirects followed per request (a broker sends a lookup to the one that owns the topic).
pub const MAX_REDIRECTS: usize = 5;
/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Characters escaped in a path segment (what Java's `Codec.encode` leaves alone stays readable).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A topic name in its parts, as Pulsar's `TopicName` reads it: `my-topic` is
/// `persistent://public/default/my-topic`, `tenant/ns/topic` is `persistent://tenant/ns/topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicName {
    /// `persistent` or `non-persistent`.
    pub domain: String,
    pub tenant: String,
    pub namespace: String,
    pub local: String,
}

impl TopicName {
    pub fn parse(topic: &str) -> Result<TopicName, LookupError> {
        let bad = || LookupError::TopicName(topic.to_string());
        let (domain, rest) = match topic.split_once("://") {
            Some((d @ ("persistent" | "non-persistent"), rest)) => (d, rest),
            Some(_) => return Err(bad()),
            None => ("persistent", topic),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (tenant, namespace, local) = match parts.as_slice() {
            [local] if !topic.contains("://") => ("public", "default", *local),
            [tenant, namespace, local] => (*tenant, *namespace, *local),
            // V1 names (`property/cluster/namespace/topic`) are not in use on TDMQ.
            _ => return Err(bad()),
        };
        if [tenant, namespace, local]
            .iter()
            .any(|p| p.trim().is_empty())
        {
            return Err(bad());
        }
        Ok(TopicName {
            domain: domain.to_string(),
            tenant: tenant.to_string(),
            namespace: namespace.to_string(),
            local: local.to_string(),
        })
    }

    /// `domain/tenant/namespace/topic`, each part escaped: what follows `/lookup/v2/topic/` and
    /// `/admin/v2/`.
    pub fn path(&self) -> String {
        [&self.domain, &self.tenant, &self.namespace, &self.local]
            .iter()
            .map(|p| utf8_percent_encode(p, SEGMENT).to_string())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Whether this is one partition of a partitioned topic (`…-partition-<n>`).
    pub fn is_partition(&self) -> bool {
        self.partition_index().is_some()
    }

    /// `n` when this is partition `n` of a partitioned topic (`…-partition-<n>`).
    pub fn partition_index(&self) -> Option<u32> {
        let (_, n) = self.local.rsplit_once("-partition-")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }

    /// Partition `n` of this (partitioned) topic.
    pub fn partition(&self, n: u32) -> TopicName {
        TopicName {
            local: format!("{}-partition-{n}", self.local),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}/{}/{}",
            self.domain, self.tenant, self.namespace, self.local
        )
    }
}

/// The lookup's answer (`GET /lookup/v2/topic/…`). Pulsar 2.x and later also send `brokerUrlSsl`
/// (the older name of `brokerUrlTls`, empty when there is none) and `nativeUrl`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupData {
    #[serde(default)]
    pub broker_url: Option<String>,
    #[serde(default)]
    pub broker_url_tls: Option<String>,
    #[serde(default)]
    pub broker_url_ssl: Option<String>,
    #[serde(default)]
    pub http_url: Option<String>,
    #[serde(default)]
    pub http_url_tls: Option<String>,
    #[serde(default)]
    pub native_url: Option<String>,
}

impl LookupData {
    /// The binary URL to connect to: `brokerUrlTls` when the service URL is `https` (`tls`), else
    /// `brokerUrl` (or `nativeUrl` when there is no `brokerUrl`), as the Java client chooses.
    pub fn broker_url(&self, tls: bool, topic: &TopicName) -> Result<String, LookupError> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        let (url, wanted, scheme) = if tls {
            (
                given(&self.broker_url_tls).or(given(&self.broker_url_ssl)),
                "brokerUrlTls",
                "pulsar+ssl://",
            )
        } else {
            (
                given(&self.broker_url).or(given(&self.native_url)),
                "brokerUrl",
                "pulsar://",
            )
        };
        match url {
            Some(u) if u.starts_with(scheme) => Ok(u.to_string()),
            _ => Err(LookupError::NoBroker {
                topic: topic.to_string(),
                wanted,
                answered: format!(
                    "brokerUrl {:?}, brokerUrlTls {:?}",
                    given(&self.broker_url).unwrap_or(""),
                    given(&self.broker_url_tls)
                        .or(given(&self.broker_url_ssl))
                        .unwrap_or("")
                ),
            }),
        }
    }
}

/// `GET /admin/v2/…/partitions`.
#[derive(Debug, serde::Deserialize)]
struct PartitionedMetadata {
    #[serde(default)]
    partitions: u32,
}

/// What is looked up and served on its own for `topic` of `partitions` partitions: each partition
/// of a partitioned topic (its parent has no owner), in partition order, else the topic itself.
pub fn parts(topic: &TopicName, partitions: u32) -> Vec<TopicName> {
    if partitions > 0 {
        (0..partitions).map(|n| topic.partition(n)).collect()
    } else {
        vec![topic.clone()]
    }
}

/// Whether `url` is an HTTP service URL (HTTP lookup) rather than a binary one.
pub fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The HTTP calls of a lookup at one service URL.
#[derive(Clone)]
pub struct HttpLookup {
    /// The service URL without a trailing `/`.
    base: String,
    tls: bool,
    token: Secret,
    http: reqwest::Client,
}

impl HttpLookup {
    /// For the service URL `url` (`http://` or `https://`), sending `token` when set.
    pub fn new(url: &str, token: &Secret) -> Result<HttpLookup, LookupError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            // Followed by hand: reqwest drops the Authorization header on a redirect to another host,
            // and a broker redirects a lookup to the broker that owns the topic.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ci-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(LookupError::Setup)?;
        Ok(HttpLookup {
            base: url.trim_end_matches('/').to_string(),
            tls: url.starts_with("https://"),
            token: token.clone(),
            http,
        })
    }

    /// The service URL (no secret in it: the token goes in a header).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The binary URL of the broker serving `topic`, or its first partition when it is partitioned
    /// (a fresh lookup every call).
    pub async fn broker_url(&self, topic: &str) -> Result<String, LookupError> {
        let name = TopicName::parse(topic)?;
        let first = match self.partitions(&name).await? {
            0 => name,
            _ => name.partition(0),
        };
        self.broker_of(&first).await
    }

    /// The binary URL of the broker serving exactly `topic` (a topic that is not partitioned, or one
    /// partition): `GET /lookup/v2/topic/…`, fresh every call.
    pub async fn broker_of(&self, topic: &TopicName) -> Result<String, LookupError> {
        let data: LookupData = self
            .get_json(&format!("/lookup/v2/topic/{}", topic.path()), topic)
            .await?;
        data.broker_url(self.tls, topic)
    }

    /// How many partitions `topic` has (0: not partitioned, or itself a partition).
    /// `checkAllowAutoCreation` as the Java client sends it: a topic the broker would create on
    /// first use is not "not found".
    pub async fn partitions(&self, topic: &TopicName) -> Result<u32, LookupError> {
        if topic.is_partition() {
            return Ok(0);
        }
        let meta: PartitionedMetadata = self
            .get_json(
                &format!(
                    "/admin/v2/{}/partitions?checkAllowAutoCreation=true",
                    topic.path()
                ),
                topic,
            )
            .await?;
        Ok(meta.partitions)
    }

    /// `GET` of `path`, following redirects with the token, and the JSON answer.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        topic: &TopicName,
    ) -> Result<T, LookupError> {
        let topic_str = topic.to_string();
        let mut url = format!("{}{path}", self.base);
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.http.get(&url).header("Accept", "application/json");
            if !self.token.is_empty() {
                req = req.bearer_auth(self.token.expose());
            }
            let unreachable = |source: reqwest::Error| LookupError::Unreachable {
                url: self.base.clone(),
                topic: topic_str.clone(),
                source: source.without_url(),
            };
            let resp = req.send().await.map_err(unreachable)?;
            let status = resp.status();
            if status.is_redirection() {
                let next = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| resp.url().join(l).ok())
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
                match next {
                    Some(next) => {
                        tracing::debug!(topic = %topic_str, to = %next, "HTTP lookup redirected");
                        url = next.to_string();
                        continue;
                    }
                    None => {
                        return Err(LookupError::Status {
                            url: self.base.clone(),
                            topic: topic_str,
                            status: status.as_u16(),
                            message: "a redirect without a usable Location".into(),
                        })
                    }
                }
            }
            let body = resp.text().await.map_err(unreachable)?;
            if !status.is_success() {
                return Err(LookupError::from_status(
                    &self.base,
                    &topic_str,
                    status.as_u16(),
                    reason(&body),
                    !self.token.is_empty(),
                ));
            }
            return serde_json::from_str(&body).map_err(|e| LookupError::Body {
                url: self.base.clone(),
                topic: topic_str,
                message: e.to_string(),
            });
        }
        Err(LookupError::Redirects { topic: topic_str })
    }
}

/// The broker's reason in an error body (`{"reason": "…"}`), or the body's start.
fn reason(body: &str) -> String {
    let reason = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(String::from));
    let text = reason.unwrap_or_else(|| body.trim().to_string());
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_become_lookup_paths() {
        for (topic, path) in [
            ("my-topic", "persistent/public/default/my-topic"),
            ("t/ns/my-topic", "persistent/t/ns/my-topic"),
            (
                "persistent://pulsar-xxxx/ns/ci-requests",
                "persistent/pulsar-xxxx/ns/ci-requests",
            ),
            ("non-persistent://t/ns/x", "non-persistent/t/ns/x"),
            ("persistent://t/ns/a b:c", "persistent/t/ns/a%20b%3Ac"),
        ] {
            assert_eq!(TopicName::parse(topic).unwrap().path(), path, "{topic}");
        }
        assert_eq!(
            TopicName::parse("my-topic").unwrap().to_string(),
            "persistent://public/default/my-topic"
        );
        for bad in [
            "",
            "persistent://my-topic",
            "persistent://t/ns/",
            "a/b",
            "http://t/ns/x",
            "persistent://p/cluster/ns/x",
        ] {
            let e = TopicName::parse(bad).unwrap_err();
            assert!(matches!(e, LookupError::TopicName(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn partitioned_topics_are_looked_up_partition_by_partition() {
        let t = TopicName::parse("persistent://t/ns/jobs").unwrap();
        assert!(!t.is_partition());
        assert_eq!(parts(&t, 0), std::slice::from_ref(&t));
        let all = parts(&t, 4);
        let names: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "persistent://t/ns/jobs-partition-0",
                "persistent://t/ns/jobs-partition-1",
                "persistent://t/ns/jobs-partition-2",
                "persistent://t/ns/jobs-partition-3",
            ]
        );
        for (n, p) in all.iter().enumerate() {
            assert_eq!(p.partition_index(), Some(n as u32));
            assert_eq!(p.path(), format!("persistent/t/ns/jobs-partition-{n}"));
        }
        let short = TopicName::parse("my-topic-partition-12").unwrap();
        assert_eq!(short.partition_index(), Some(12));
        assert_eq!(
            short.to_string(),
            "persistent://public/default/my-topic-partition-12"
        );
        for not_one in [
            "t/ns/x-partition-",
            "t/ns/x-partition-a1",
            "t/ns/x-partitions-1",
        ] {
            let name = TopicName::parse(not_one).unwrap();
            assert_eq!(name.partition_index(), None, "{not_one}");
            assert!(!name.is_partition(), "{not_one}");
        }
    }

    #[test]
    fn the_broker_url_follows_the_service_urls_scheme() {
        let topic = TopicName::parse("my-topic").unwrap();
        // What the local standalone (Pulsar 4.0) answers.
        let plain: LookupData = serde_json::from_str(
            r#"{"brokerUrl":"pulsar://127.0.0.1:6650","httpUrl":"http://127.0.0.1:8080",
                "nativeUrl":"pulsar://127.0.0.1:6650","brokerUrlSsl":""}"#,
        )
        .unwrap();
        assert_eq!(
            plain.broker_url(false, &topic).unwrap(),
            "pulsar://127.0.0.1:6650"
        );
        let e = plain.broker_url(true, &topic).unwrap_err();
        assert!(e.to_string().contains("brokerUrlTls"), "{e}");
        assert!(e.is_refusal());

        let both: LookupData = serde_json::from_str(
            r#"{"brokerUrl":"pulsar://b:6650","brokerUrlTls":"pulsar+ssl://b:6651"}"#,
        )
        .unwrap();
        assert_eq!(both.broker_url(false, &topic).unwrap(), "pulsar://b:6650");
        assert_eq!(
            both.broker_url(true, &topic).unwrap(),
            "pulsar+ssl://b:6651"
        );
        let ssl_only: LookupData =
            serde_json::from_str(r#"{"brokerUrlSsl":"pulsar+ssl://b:6651"}"#).unwrap();
        assert_eq!(
            ssl_only.broker_url(true, &topic).unwrap(),
            "pulsar+ssl://b:6651"
        );
        let http_only: LookupData =
            serde_json::from_str(r#"{"brokerUrl":"http://b:8080"}"#).unwrap();
        assert!(http_only.broker_url(false, &topic).is_err());
        // No brokerUrl: the Java client takes nativeUrl.
        let native_only: LookupData =
            serde_json::from_str(r#"{"brokerUrl":null,"nativeUrl":"pulsar://n:6650"}"#).unwrap();
        assert_eq!(
            native_only.broker_url(false, &topic).unwrap(),
            "pulsar://n:6650"
        );
        assert!(native_only.broker_url(true, &topic).is_err());
    }

    #[test]
    fn statuses_become_errors_that_say_what_to_fix() {
        let e =
            LookupError::from_status("http://c:8080", "persistent://t/ns/x", 401, "".into(), true);
        assert!(e.to_string().contains("pulsar.token"), "{e}");
        assert!(e.is_refusal());
        let e = LookupError::from_status(
            "http://c:8080",
            "persistent://t/ns/x",
            403,
            "".into(),
            false,
        );
        assert!(e.to_string().contains("pulsar.token"), "{e}");
        assert!(e.to_string().contains("without a token"), "{e}");
        let e = LookupError::from_status(
            "http://c:8080",
            "persistent://t/ns/x",
            404,
            "Namespace does not exist".into(),
            true,
        );
        assert!(e.to_string().contains("persistent://t/ns/x"), "{e}");
        assert!(e.is_refusal());
        for waitable in [500, 503, 429, 408] {
            let e = LookupError::from_status("http://c", "t", waitable, "".into(), true);
            assert!(!e.is_refusal(), "{waitable}");
        }
        assert_eq!(reason(r#"{"reason":"Topic not found"}"#), "Topic not found");
    }
}
