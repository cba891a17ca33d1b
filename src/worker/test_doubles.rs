//! In-memory doubles of the worker's I/O ([`super::io`]) and builders of its inputs, for the
//! worker's unit tests ([`super::test_context`] puts them in a context): a broker that keeps what is
//! published (and can refuse a topic), and a CI that answers from a script and records the calls it
//! got.

use super::io::{Broker, CiApi};
use crate::ci::client::{CiError, ListQuery};
use crate::ci::response::{parse_jobs_response, CiErrorBody, JobDetail, JobsResponse, QueueInfo};
use crate::ci::tree::Node;
use crate::config::Settings;
use crate::pulsar::consume::Delivery;
use crate::pulsar::{Outgoing, PulsarIoError};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A broker that stores every message it accepts; topics put in [`MemoryBroker::refuse`] fail.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    published: Arc<Mutex<Vec<(String, Outgoing)>>>,
    refused: Arc<Mutex<HashSet<String>>>,
}

impl MemoryBroker {
    /// Publishes to `topic` fail from now on.
    pub fn refuse(&self, topic: &str) {
        self.refused.lock().unwrap().insert(topic.to_string());
    }

    /// Publishes to `topic` succeed again.
    pub fn accept(&self, topic: &str) {
        self.refused.lock().unwrap().remove(topic);
    }

    /// The messages stored on `topic`, oldest first.
    pub fn on(&self, topic: &str) -> Vec<Outgoing> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every message stored, on any topic.
    pub fn count(&self) -> usize {
        self.published.lock().unwrap().len()
    }
}

impl MemoryBroker {
    /// Stores `msg`; where: ledger 1, the entry its index among every message stored.
    fn store(&self, topic: &str, msg: Outgoing) -> Result<(u64, u64), PulsarIoError> {
        if self.refused.lock().unwrap().contains(topic) {
            return Err(PulsarIoError::Publish {
                topic: topic.to_string(),
                message: "refused by the test".into(),
            });
        }
        let mut published = self.published.lock().unwrap();
        published.push((topic.to_string(), msg));
        Ok((1, published.len() as u64 - 1))
    }
}

impl Broker for MemoryBroker {
    fn publish(
        &self,
        topic: &str,
        msg: Outgoing,
    ) -> impl Future<Output = Result<(), PulsarIoError>> + Send {
        std::future::ready(self.store(topic, msg).map(drop))
    }

    fn publish_at(
        &self,
        topic: &str,
        msg: Outgoing,
    ) -> impl Future<Output = Result<Option<(u64, u64)>, PulsarIoError>> + Send {
        std::future::ready(self.store(topic, msg).map(Some))
    }
}

/// A CI that answers each call with the next scripted answer for its operation and panics on a call
/// nobody scripted (so a test fails on any CI call it did not expect).
#[derive(Default)]
pub struct ScriptedCi {
    submits: Mutex<VecDeque<Result<JobDetail, CiError>>>,
    describes: Mutex<VecDeque<Result<JobsResponse, CiError>>>,
    lists: Mutex<VecDeque<Result<JobsResponse, CiError>>>,
    queues: Mutex<VecDeque<Result<Vec<QueueInfo>, CiError>>>,
    /// Operations called, in order (`submit`, `describe`, `list`, `cancel`).
    calls: Mutex<Vec<&'static str>>,
    /// The queries of the list calls.
    pub list_queries: Mutex<Vec<ListQuery>>,
}

impl ScriptedCi {
    pub fn submit_answers(self, answer: Result<JobDetail, CiError>) -> ScriptedCi {
        self.submits.lock().unwrap().push_back(answer);
        self
    }

    pub fn describe_answers(self, answer: Result<JobsResponse, CiError>) -> ScriptedCi {
        self.describes.lock().unwrap().push_back(answer);
        self
    }

    /// Answers of `GET /queue`; unscripted, CI names no queue (and the call is not counted).
    pub fn queue_answers(self, answer: Result<Vec<QueueInfo>, CiError>) -> ScriptedCi {
        self.queues.lock().unwrap().push_back(answer);
        self
    }

    pub fn list_answers(self, answer: Result<JobsResponse, CiError>) -> ScriptedCi {
        self.lists.lock().unwrap().push_back(answer);
        self
    }

    /// The operations called so far, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }

    fn next<T>(
        &self,
        op: &'static str,
        script: &Mutex<VecDeque<Result<T, CiError>>>,
    ) -> Result<T, CiError> {
        self.calls.lock().unwrap().push(op);
        let answer = script.lock().unwrap().pop_front();
        answer.unwrap_or_else(|| panic!("unexpected CI call: {op}"))
    }
}

impl CiApi for ScriptedCi {
    fn submit(
        &self,
        _bucket: &str,
        _region: &str,
        _job: &Node<'_>,
    ) -> impl Future<Output = Result<JobDetail, CiError>> + Send {
        std::future::ready(self.next("submit", &self.submits))
    }

    fn describe(
        &self,
        _bucket: &str,
        _region: &str,
        _job_ids: &[&str],
    ) -> impl Future<Output = Result<JobsResponse, CiError>> + Send {
        std::future::ready(self.next("describe", &self.describes))
    }

    fn list(
        &self,
        _bucket: &str,
        _region: &str,
        query: &ListQuery,
    ) -> impl Future<Output = Result<JobsResponse, CiError>> + Send {
        self.list_queries.lock().unwrap().push(query.clone());
        std::future::ready(self.next("list", &self.lists))
    }

    fn queues(
        &self,
        _bucket: &str,
        _region: &str,
    ) -> impl Future<Output = Result<Vec<QueueInfo>, CiError>> + Send {
        let answer = if self.queues.lock().unwrap().is_empty() {
            Ok(Vec::new())
        } else {
            self.next("queues", &self.queues)
        };
        std::future::ready(answer)
    }

    fn cancel(
        &self,
        _bucket: &str,
        _region: &str,
        _job_id: &str,
    ) -> impl Future<Output = Result<(), CiError>> + Send {
        self.calls.lock().unwrap().push("cancel");
        std::future::ready(Ok(()))
    }
}

/// Default settings, with retries short enough for a test.
pub fn settings() -> Settings {
    let mut s = Settings::default();
    s.worker.retry_max_attempts = 3;
    s.worker.retry_base_delay = Duration::from_millis(1);
    s.worker.retry_max_delay = Duration::from_millis(2);
    s.worker.max_redeliveries = 3;
    // Long enough that no test holds a request for half of it unless it means to.
    s.worker.takeover_grace = Duration::from_secs(2);
    s
}

/// A message as the consume loop hands it over, published and taken now: each at the next position
/// of ledger 1000 (the positions [`MemoryBroker`] gives are in ledger 1).
pub fn delivery(topic: &str, payload: impl Into<Vec<u8>>) -> Delivery {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let entry = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Delivery {
        payload: payload.into(),
        properties: Default::default(),
        key: None,
        topic: topic.to_string(),
        position: crate::pulsar::consume::Position {
            ledger: 1000,
            entry,
            batch_index: -1,
        },
        message_id: format!("1000:{entry}:-1"),
        publish_time: SystemTime::now(),
        held_since: tokio::time::Instant::now(),
        attempt: 1,
    }
}

pub const BUCKET: &str = "test-123456789";
pub const REGION: &str = "ap-chongqing";

/// A valid request `request_id` whose caller's `UserData` is `mine`.
pub fn request(request_id: &str) -> String {
    serde_json::json!({
        "request_id": request_id,
        "bucket": BUCKET,
        "region": REGION,
        "job": {
            "Tag": "DigitalWatermark",
            "Input": {"Object": "input/demo.mp4"},
            "Operation": {
                "DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
                "Output": {"Region": REGION, "Bucket": BUCKET, "Object": "output/out.mp4"},
                "UserData": "mine"
            }
        }
    })
    .to_string()
}

/// The `UserData` the worker sends CI for [`request`]`(request_id)`.
pub fn sent_user_data(request_id: &str) -> String {
    crate::request::marker::encode(request_id, None, Some("mine")).unwrap()
}

/// A job as CI describes it, read from CI's XML like a real answer.
pub fn job(job_id: &str, state: &str, user_data: &str) -> JobDetail {
    jobs(&[(job_id, state, user_data)], None).jobs.remove(0)
}

/// A submit/describe/list answer holding these `(job id, state, UserData)` jobs.
pub fn jobs(jobs: &[(&str, &str, &str)], next_token: Option<&str>) -> JobsResponse {
    let details: String = jobs
        .iter()
        .map(|(id, state, user_data)| {
            format!(
                "<JobsDetail><Code>Success</Code><Message/><JobId>{id}</JobId><State>{state}</State>\
                 <CreationTime>2022-06-27T15:23:10+0800</CreationTime><QueueId>q1</QueueId>\
                 <Tag>DigitalWatermark</Tag><Input><BucketId>{BUCKET}</BucketId>\
                 <Object>input/demo.mp4</Object><Region>{REGION}</Region></Input><Operation>\
                 <Output><Region>{REGION}</Region><Bucket>{BUCKET}</Bucket>\
                 <Object>output/out.mp4</Object></Output><UserData>{user_data}</UserData>\
                 </Operation></JobsDetail>"
            )
        })
        .collect();
    let token = next_token
        .map(|t| format!("<NextToken>{t}</NextToken>"))
        .unwrap_or_default();
    parse_jobs_response(&format!("<Response>{details}{token}</Response>")).unwrap()
}

/// CI's refusal with HTTP `status` and error `code`.
pub fn refusal(status: u16, code: &str) -> CiError {
    CiError::Api {
        status,
        body: CiErrorBody {
            code: code.into(),
            message: format!("{code} (test)"),
            ..CiErrorBody::default()
        },
    }
}
