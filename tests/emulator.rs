//! `ci-worker emulator` end to end: a real HTTP server on port 0, requests signed with
//! `ci::sign::sign`, completion events read from a real Apache Pulsar broker with the `pulsar` crate
//! (`tdmq_delivery = "pulsar"`) or from the emulator's CMQ queues with `cmq::client::CmqClient`
//! (`tdmq_delivery = "cmq"`; the `cmq_*` and `tdmq_*_cmq_*` tests, which need no broker);
//! `CallBackType=Kafka` events from a real Apache Kafka broker (`scripts/kafka.sh`, `KAFKA_BROKERS`)
//! with an `rdkafka` consumer (the `*kafka*` tests).
//! Waiting is always on an event (a broker message, an emulator notice, a callback request, a CMQ
//! long poll) with a timeout, never a sleep — except where time itself is what is tested (a long poll
//! that must last, an outage that must end).

mod common;

use ci_worker::ci::response::{parse_error, parse_jobs_response, CiErrorBody, JobDetail};
use ci_worker::ci::tree::Node;
use ci_worker::ci::{ci_host, sign, xml};
use ci_worker::cmq::api::DeleteFailure;
use ci_worker::cmq::client::{CmqClient, CmqError, QueueAttributes};
use ci_worker::cmq::sign::{self as cmq_sign, CmqCredentials, SignatureMethod};
use ci_worker::config::{KeyPair, Settings, TdmqDelivery};
use ci_worker::emulator::{self, EmulatorEvent, EmulatorHandle, JobState};
use ci_worker::secret::Secret;
use common::{BUCKET, REGION};
use pulsar::{Consumer, TokioExecutor};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const SECRET_ID: &str = "AKIDemulatorIntegration";
const SECRET_KEY: &str = "emulator-integration-secret";

/// An emulator that publishes `CallBackType=TDMQ` events to Pulsar (what these tests read) and so
/// serves no CMQ API.
fn settings(job_duration_ms: u64) -> Settings {
    let mut s = Settings::default();
    s.emulator.listen = "127.0.0.1:0".parse().unwrap();
    s.emulator.tdmq_delivery = TdmqDelivery::Pulsar;
    s.emulator.cmq_listen = "127.0.0.1:0".parse().unwrap();
    s.emulator.job_duration = Duration::from_millis(job_duration_ms);
    s.emulator.credentials.push(KeyPair {
        secret_id: SECRET_ID.into(),
        secret_key: Secret::new(SECRET_KEY),
    });
    s.emulator.callback_topic_template = format!(
        "persistent://public/default/{}-{{MqName}}-{{MqRegion}}-{{MqMode}}",
        common::unique_name("emu")
    );
    s.pulsar.url = common::pulsar_url();
    s
}

/// The topic the emulator publishes to for `MqName=cb, MqRegion=gz, MqMode=Queue`.
fn topic_of(s: &Settings) -> String {
    s.emulator
        .callback_topic_template
        .replace("{MqName}", "cb")
        .replace("{MqRegion}", "gz")
        .replace("{MqMode}", "Queue")
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn error(&self) -> CiErrorBody {
        parse_error(&self.body).unwrap_or_else(|| panic!("not an <Error>: {}", self.body))
    }

    fn refusal(&self) -> (u16, String) {
        (self.status, self.error().code)
    }

    fn request_id(&self) -> String {
        self.headers
            .get("x-ci-request-id")
            .expect("x-ci-request-id")
            .to_str()
            .unwrap()
            .to_string()
    }
}

/// A CI client for the emulator: sends the real CI Host and signs it.
struct Ci {
    base: String,
    host: String,
    id: String,
    key: String,
    http: reqwest::Client,
}

impl Ci {
    fn new(em: &EmulatorHandle) -> Ci {
        Ci {
            base: em.endpoint(),
            host: ci_host(BUCKET, REGION),
            id: SECRET_ID.into(),
            key: SECRET_KEY.into(),
            http: reqwest::Client::new(),
        }
    }

    fn with_key(mut self, id: &str, key: &str) -> Ci {
        self.id = id.into();
        self.key = key.into();
        self
    }

    /// Signs over `now-60 .. now+600` like the Python SDK.
    async fn call(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let now = chrono::Utc::now().timestamp();
        self.call_signed(
            method,
            path,
            params,
            body,
            Some((now - 60, now + 600)),
            None,
        )
        .await
    }

    /// `window`: the sign time, `None` for no Authorization; `raw_auth` overrides the header.
    async fn call_signed(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: Option<&str>,
        window: Option<(i64, i64)>,
        raw_auth: Option<&str>,
    ) -> Reply {
        let length = body.map(|b| b.len().to_string());
        let mut headers: Vec<(&str, &str)> = vec![("host", self.host.as_str())];
        if let Some(len) = &length {
            headers.push(("content-type", "application/xml"));
            headers.push(("content-length", len));
        }
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    sign::encode(k)
                } else {
                    format!("{}={}", sign::encode(k), sign::encode(v))
                }
            })
            .collect();
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{}", self.base, query.join("&"))
        };
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .header("host", &self.host);
        if let Some(b) = body {
            // Explicit, so that an empty body still says `Content-Length: 0` (reqwest omits it).
            req = req
                .header("content-type", "application/xml")
                .header("content-length", b.len().to_string())
                .body(b.to_string());
        }
        let auth = match (raw_auth, window) {
            (Some(a), _) => Some(a.to_string()),
            (None, Some((start, end))) => Some(
                sign::sign(
                    &self.id, &self.key, method, path, params, &headers, start, end,
                )
                .authorization,
            ),
            (None, None) => None,
        };
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("request to the emulator");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn submit(&self, body: &str) -> Reply {
        self.call("POST", "/jobs", &[], Some(body)).await
    }

    async fn describe(&self, ids: &str) -> Reply {
        self.call("GET", &format!("/jobs/{ids}"), &[], None).await
    }
}

/// A DigitalWatermark request as the docs show it, with a TDMQ callback (`MqName=cb`).
fn job_xml(object: &str, format: &str, user_data: &str) -> String {
    format!(
        "<Request><Tag>DigitalWatermark</Tag><Input><Object>{object}</Object></Input>\
         <Operation><DigitalWatermark><Type>Text</Type><Message>123456789ab</Message>\
         <Version>V1</Version></DigitalWatermark><Output><Region>{REGION}</Region>\
         <Bucket>{BUCKET}</Bucket><Object>output/out.mp4</Object></Output>\
         <UserData>{user_data}</UserData><JobLevel>0</JobLevel></Operation>\
         <QueueId>p2242ab62c7c94486915508540933a2c6</QueueId>\
         <CallBackFormat>{format}</CallBackFormat><CallBackType>TDMQ</CallBackType>\
         <CallBackMqConfig><MqRegion>gz</MqRegion><MqMode>Queue</MqMode><MqName>cb</MqName>\
         </CallBackMqConfig></Request>"
    )
}

fn submitted_job(reply: &Reply) -> JobDetail {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let resp = parse_jobs_response(&reply.body).expect("a <Response>");
    assert_eq!(resp.jobs.len(), 1, "{}", reply.body);
    resp.jobs.into_iter().next().unwrap()
}

async fn consumer(topic: &str) -> Consumer<Vec<u8>, TokioExecutor> {
    common::follow(&common::pulsar_url(), None, topic).await
}

/// A completion event parsed either way into (format, whole tree as CI's JSON, JobsDetail).
fn parse_event(payload: &[u8]) -> (&'static str, Value, JobDetail) {
    let text = std::str::from_utf8(payload).expect("UTF-8 event");
    if text.trim_start().starts_with('<') {
        let doc = xml::parse(text).expect("XML event");
        assert_eq!(doc.root, "Response", "{text}");
        let mut tree = doc.node;
        let detail = JobDetail::new(tree.get("JobsDetail").cloned().unwrap_or_default());
        tree.canonicalize();
        ("XML", tree.into_value(), detail)
    } else {
        let v: Value = serde_json::from_str(text).expect("JSON event");
        let detail = JobDetail::new(Node::from_value(&v["JobsDetail"]));
        ("JSON", v, detail)
    }
}

/// A tree as a `Value`, to index and compare with JSON literals.
fn value(tree: &Node) -> Value {
    tree.clone().into_value()
}

async fn next_event(c: &mut Consumer<Vec<u8>, TokioExecutor>) -> (&'static str, Value, JobDetail) {
    let msg = common::next_message(c, 60).await;
    c.ack(&msg).await.expect("ack");
    parse_event(&msg.payload.data)
}

/// Waits for `want` among the emulator's notices.
async fn notice(
    rx: &mut broadcast::Receiver<EmulatorEvent>,
    want: impl Fn(&EmulatorEvent) -> bool,
) -> EmulatorEvent {
    common::within(60, "an emulator notice", async {
        loop {
            match rx.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("notice feed closed: {e}"),
            }
        }
    })
    .await
}

fn is_state(id: &str, state: JobState) -> impl Fn(&EmulatorEvent) -> bool + '_ {
    move |e| matches!(e, EmulatorEvent::StateChanged { job_id, state: s } if job_id == id && *s == state)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn submit_describe_list_cancel_with_cis_shapes() {
    // Jobs that stay pending for the whole test.
    let em = emulator::start(settings(600_000)).await.unwrap();
    let ci = Ci::new(&em);
    let mut notices = em.subscribe();

    let reply = ci
        .submit(&job_xml("input/demo.mp4", "JSON", "req-42"))
        .await;
    assert_eq!(reply.headers["server"], "tencent-ci");
    assert_eq!(reply.headers["content-type"], "application/xml");
    assert!(
        reply
            .body
            .starts_with("<Response><JobsDetail><Code>Success</Code><Message/><JobId>"),
        "{}",
        reply.body
    );
    let job = submitted_job(&reply);
    let id = job.job_id().unwrap().to_string();
    assert!(
        id.len() == 33 && id.starts_with('j') && id[1..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(job.tree().text_at(&["Code"]), Some("Success"));
    assert_eq!(job.tree().text_at(&["State"]), Some("Submitted"));
    let created = job.tree().text_at(&["CreationTime"]).unwrap().to_string();
    assert!(
        chrono::DateTime::parse_from_str(&created, "%Y-%m-%dT%H:%M:%S%z").is_ok()
            && created.ends_with("+0800"),
        "{created}"
    );
    assert_eq!(job.tree().text_at(&["StartTime"]), Some("-"));
    assert_eq!(job.tree().text_at(&["EndTime"]), Some("-"));
    assert_eq!(
        job.tree().text_at(&["QueueId"]),
        Some("p2242ab62c7c94486915508540933a2c6")
    );
    assert_eq!(job.tree().text_at(&["Tag"]), Some("DigitalWatermark"));
    assert_eq!(job.tree().text_at(&["Input", "BucketId"]), Some(BUCKET));
    assert_eq!(
        job.tree().text_at(&["Input", "Object"]),
        Some("input/demo.mp4")
    );
    assert_eq!(job.tree().text_at(&["Input", "Region"]), Some(REGION));
    assert_eq!(job.user_data(), Some("req-42"));
    assert_eq!(
        value(job.operation())["DigitalWatermark"]["Message"],
        "123456789ab"
    );
    assert_eq!(value(job.operation())["Output"]["Object"], "output/out.mp4");
    assert!(value(job.operation()).get("MediaResult").is_none());
    assert_eq!(value(job.tree())["CallBackType"], "TDMQ");
    assert_eq!(value(job.tree())["CallBackFormat"], "JSON");
    assert_eq!(value(job.tree())["CallBackMqConfig"]["MqName"], "cb");
    notice(&mut notices, is_state(&id, JobState::Submitted)).await;

    // A second job without QueueId lands in the bucket's default queue `p` + 32 hex.
    let reply2 = ci
        .submit(
            &job_xml("input/other.mp4", "XML", "req-43")
                .replace("<QueueId>p2242ab62c7c94486915508540933a2c6</QueueId>", ""),
        )
        .await;
    assert_ne!(
        reply.request_id(),
        reply2.request_id(),
        "request ids are unique"
    );
    let job2 = submitted_job(&reply2);
    let id2 = job2.job_id().unwrap().to_string();
    let default_queue = job2.tree().text_at(&["QueueId"]).unwrap().to_string();
    assert!(
        default_queue.starts_with('p') && default_queue.len() == 33,
        "{default_queue}"
    );

    // Describe one, several, and unknown ids.
    let d = ci.describe(&id).await;
    assert_eq!(d.status, 200, "{}", d.body);
    let resp = parse_jobs_response(&d.body).unwrap();
    assert_eq!(resp.jobs[0].job_id(), Some(id.as_str()));
    assert!(resp.non_exist_job_ids.is_empty());
    let d = ci.describe(&format!("{id},jdoesnotexist,{id2}")).await;
    assert_eq!(d.status, 200, "{}", d.body);
    let doc = xml::parse(&d.body).unwrap();
    assert_eq!(value(&doc.node)["RequestId"], Value::String(d.request_id()));
    let resp = parse_jobs_response(&d.body).unwrap();
    let got: Vec<_> = resp
        .jobs
        .iter()
        .filter_map(|j| j.job_id().map(String::from))
        .collect();
    assert_eq!(got, [id.clone(), id2.clone()]);
    assert_eq!(resp.non_exist_job_ids, ["jdoesnotexist"]);

    // List: newest first by default, paged by size with an opaque NextToken, filtered.
    let page1 = ci
        .call(
            "GET",
            "/jobs",
            &[
                ("tag", "DigitalWatermark"),
                ("size", "1"),
                ("states", "All"),
                ("nextToken", ""),
            ],
            None,
        )
        .await;
    assert_eq!(page1.status, 200, "{}", page1.body);
    let p1 = parse_jobs_response(&page1.body).unwrap();
    assert_eq!(p1.jobs.len(), 1);
    assert_eq!(p1.jobs[0].job_id(), Some(id2.as_str()));
    let token = p1.next_token.clone().expect("a NextToken");
    let page2 = ci
        .call(
            "GET",
            "/jobs",
            &[
                ("tag", "DigitalWatermark"),
                ("size", "1"),
                ("nextToken", &token),
            ],
            None,
        )
        .await;
    let p2 = parse_jobs_response(&page2.body).unwrap();
    assert_eq!(p2.jobs[0].job_id(), Some(id.as_str()));
    assert_eq!(p2.next_token, None, "{}", page2.body);
    let asc = ci
        .call("GET", "/jobs", &[("orderByTime", "Asc")], None)
        .await;
    let asc: Vec<_> = parse_jobs_response(&asc.body)
        .unwrap()
        .jobs
        .into_iter()
        .filter_map(|j| j.job_id().map(String::from))
        .collect();
    assert_eq!(asc, [id.clone(), id2.clone()]);
    let by_queue = ci
        .call("GET", "/jobs", &[("queueId", &default_queue)], None)
        .await;
    let by_queue = parse_jobs_response(&by_queue.body).unwrap();
    assert_eq!(by_queue.jobs.len(), 1);
    assert_eq!(by_queue.jobs[0].job_id(), Some(id2.as_str()));
    let none = ci
        .call("GET", "/jobs", &[("states", "Success,Failed")], None)
        .await;
    assert!(
        parse_jobs_response(&none.body).unwrap().jobs.is_empty(),
        "{}",
        none.body
    );
    let future = ci
        .call(
            "GET",
            "/jobs",
            &[("startCreationTime", "2099-01-01T00:00:00+0800")],
            None,
        )
        .await;
    assert!(parse_jobs_response(&future.body).unwrap().jobs.is_empty());
    let bad = ci.call("GET", "/jobs", &[("size", "101")], None).await;
    assert_eq!(bad.refusal(), (400, "InvalidArgument".into()));
    let other_bucket = Ci {
        host: ci_host("otherbucket-1250000000", REGION),
        ..Ci::new(&em)
    };
    let other = other_bucket.call("GET", "/jobs", &[], None).await;
    assert!(
        parse_jobs_response(&other.body).unwrap().jobs.is_empty(),
        "jobs are per bucket"
    );

    // Cancel: empty 200, state Cancel with an EndTime; again is accepted; unknown ids refused.
    let c = ci
        .call("PUT", &format!("/jobs/{id}"), &[("cancel", "")], None)
        .await;
    assert_eq!((c.status, c.body.as_str()), (200, ""));
    assert_eq!(c.headers["server"], "tencent-ci");
    notice(&mut notices, is_state(&id, JobState::Cancel)).await;
    let d = submitted_job(&ci.describe(&id).await);
    assert_eq!(d.tree().text_at(&["State"]), Some("Cancel"));
    assert_ne!(d.tree().text_at(&["EndTime"]), Some("-"));
    let again = ci
        .call("PUT", &format!("/jobs/{id}"), &[("cancel", "")], None)
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let unknown = ci
        .call("PUT", "/jobs/jdoesnotexist", &[("cancel", "")], None)
        .await;
    assert_eq!(unknown.refusal(), (400, "InvalidArgument".into()));
    let cancelled = ci.call("GET", "/jobs", &[("states", "Cancel")], None).await;
    let cancelled = parse_jobs_response(&cancelled.body).unwrap();
    assert_eq!(cancelled.jobs.len(), 1);

    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn jobs_run_and_publish_cis_completion_events_to_pulsar() {
    let s = settings(300);
    let topic = topic_of(&s);
    let mut events = consumer(&topic).await;
    let em = emulator::start(s).await.unwrap();
    let ci = Ci::new(&em);
    let mut notices = em.subscribe();

    let xml_job = submitted_job(
        &ci.submit(&job_xml("input/demo.mp4", "XML", "req-xml"))
            .await,
    );
    let json_job = submitted_job(
        &ci.submit(&job_xml("input/demo2.mp4", "JSON", "req-json"))
            .await,
    );
    let xml_id = xml_job.job_id().unwrap().to_string();
    let json_id = json_job.job_id().unwrap().to_string();
    notice(&mut notices, is_state(&xml_id, JobState::Running)).await;
    notice(&mut notices, is_state(&xml_id, JobState::Success)).await;

    // The documented sample's keys (callback-digital-watermark.md), and `Progress`: that sample lacks
    // it, but the other Tags' callback samples (callback-transcode.md) and cos-go-sdk-v5's demo
    // callback (callback-generic.md, a job with SubTag DigitalWatermark) carry `Progress` 100.
    let sample_detail: BTreeSet<String> = [
        "Code",
        "CreationTime",
        "EndTime",
        "Input",
        "JobId",
        "Message",
        "Operation",
        "Progress",
        "QueueId",
        "StartTime",
        "State",
        "SubTag",
        "Tag",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let sample_operation: BTreeSet<String> = [
        "DigitalWatermark",
        "JobLevel",
        "MediaInfo",
        "MediaResult",
        "Output",
        "UserData",
    ]
    .into_iter()
    .map(String::from)
    .collect();

    let mut seen = Vec::new();
    for _ in 0..2 {
        let (format, tree, detail) = next_event(&mut events).await;
        assert_eq!(tree["EventName"], "TaskFinish");
        assert_eq!(detail.tree().text_at(&["State"]), Some("Success"));
        assert_eq!(detail.tree().text_at(&["Code"]), Some("Success"));
        assert_eq!(detail.tree().text_at(&["SubTag"]), Some("DigitalWatermark"));
        assert_eq!(detail.tree().text_at(&["Input", "BucketId"]), Some(BUCKET));
        assert_ne!(detail.tree().text_at(&["StartTime"]), Some("-"));
        assert_ne!(detail.tree().text_at(&["EndTime"]), Some("-"));
        let jd = &tree["JobsDetail"];
        assert!(jd.is_object(), "one JobsDetail is an object in CI's JSON");
        let file = &jd["Operation"]["MediaResult"]["OutputFile"];
        assert_eq!(file["ObjectName"], "output/out.mp4");
        assert_eq!(file["Md5Info"]["Md5"].as_str().map(str::len), Some(32));
        assert_eq!(jd["Operation"]["MediaInfo"]["Format"]["NumStream"], "2");
        let id = detail.job_id().unwrap().to_string();
        match format {
            "XML" => {
                assert_eq!(id, xml_id);
                assert_eq!(detail.user_data(), Some("req-xml"));
                // In XML the empty Message is there; CI's JSON drops it (checked below).
                let mut expected = sample_detail.clone();
                expected.remove("Message");
                assert_eq!(keys(jd), expected);
            }
            _ => {
                assert_eq!(id, json_id);
                assert_eq!(detail.user_data(), Some("req-json"));
                assert!(
                    jd.get("Message").is_none(),
                    "empty elements are dropped in JSON"
                );
                let mut expected = sample_detail.clone();
                expected.remove("Message");
                assert_eq!(keys(jd), expected);
            }
        }
        assert_eq!(keys(&jd["Operation"]), sample_operation);
        seen.push(format);
    }
    seen.sort();
    assert_eq!(seen, ["JSON", "XML"]);

    // The raw XML keeps CI's literal shape: alphabetical, <Message/> present, callback settings absent.
    let d = submitted_job(&ci.describe(&xml_id).await);
    assert_eq!(d.tree().text_at(&["State"]), Some("Success"));
    assert!(value(d.operation()).get("MediaResult").is_some());
    assert_ne!(d.tree().text_at(&["StartTime"]), Some("-"));
    let refused = ci
        .call("PUT", &format!("/jobs/{xml_id}"), &[("cancel", "")], None)
        .await;
    assert_eq!(
        refused.refusal(),
        (400, "InvalidArgument".into()),
        "a finished job cannot be cancelled"
    );

    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn fail_and_lost_markers() {
    let s = settings(200);
    let topic = topic_of(&s);
    let mut events = consumer(&topic).await;
    let em = emulator::start(s).await.unwrap();
    let ci = Ci::new(&em);
    let mut notices = em.subscribe();

    let failed = submitted_job(
        &ci.submit(&job_xml("input/__fail__.mp4", "JSON", "req-fail"))
            .await,
    );
    let failed_id = failed.job_id().unwrap().to_string();
    let (_, tree, detail) = next_event(&mut events).await;
    assert_eq!(detail.job_id(), Some(failed_id.as_str()));
    assert_eq!(detail.tree().text_at(&["State"]), Some("Failed"));
    assert_eq!(
        detail.tree().text_at(&["Code"]),
        Some("ResourceNotSupported")
    );
    assert!(
        detail
            .tree()
            .text_at(&["Message"])
            .is_some_and(|m| m.contains("90 s")),
        "{tree}"
    );
    assert_eq!(detail.user_data(), Some("req-fail"));
    assert!(tree["JobsDetail"]["Operation"].get("MediaResult").is_none());
    let d = submitted_job(&ci.describe(&failed_id).await);
    assert_eq!(d.tree().text_at(&["State"]), Some("Failed"));
    assert_eq!(d.tree().text_at(&["Code"]), Some("ResourceNotSupported"));

    let lost = submitted_job(
        &ci.submit(&job_xml("input/__lost__.mp4", "XML", "req-lost"))
            .await,
    );
    let lost_id = lost.job_id().unwrap().to_string();
    notice(
        &mut notices,
        |e| matches!(e, EmulatorEvent::CallbackSuppressed { job_id } if *job_id == lost_id),
    )
    .await;
    let d = submitted_job(&ci.describe(&lost_id).await);
    assert_eq!(
        d.tree().text_at(&["State"]),
        Some("Success"),
        "a __lost__ job succeeds"
    );
    // A job submitted after the lost one finished: its event is the next message on the topic.
    let sentinel = submitted_job(
        &ci.submit(&job_xml("input/after.mp4", "XML", "req-after"))
            .await,
    );
    let (_, _, detail) = next_event(&mut events).await;
    assert_eq!(
        detail.job_id(),
        sentinel.job_id(),
        "no event was published for the __lost__ job"
    );

    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn signatures_are_verified_with_cis_error_codes() {
    let em = emulator::start(settings(600_000)).await.unwrap();
    let ci = Ci::new(&em);
    let now = chrono::Utc::now().timestamp();
    let window = Some((now - 60, now + 600));

    let missing = ci.call_signed("GET", "/jobs", &[], None, None, None).await;
    assert_eq!(missing.refusal(), (401, "MissingAuthorization".into()));
    let err = missing.error();
    assert_eq!(
        err.request_id,
        missing.request_id(),
        "the body's RequestId is the header's"
    );
    assert!(!err.trace_id.is_empty());
    assert_eq!(missing.headers["content-type"], "application/xml");
    assert!(missing.body.starts_with("<?xml"), "{}", missing.body);

    let garbage = ci
        .call_signed(
            "GET",
            "/jobs",
            &[],
            None,
            window,
            Some("q-sign-algorithm=sha1&nonsense"),
        )
        .await;
    assert_eq!(garbage.refusal(), (401, "InvalidAuthorization".into()));

    let unknown = Ci::new(&em)
        .with_key("AKIDunknown", SECRET_KEY)
        .call("GET", "/jobs", &[], None)
        .await;
    assert_eq!(unknown.refusal(), (401, "SecretidNotExist".into()));

    let expired = ci
        .call_signed(
            "GET",
            "/jobs",
            &[],
            None,
            Some((now - 7200, now - 3600)),
            None,
        )
        .await;
    assert_eq!(expired.refusal(), (401, "SignatureExpired".into()));
    let not_yet = ci
        .call_signed(
            "GET",
            "/jobs",
            &[],
            None,
            Some((now + 3600, now + 7200)),
            None,
        )
        .await;
    assert_eq!(not_yet.refusal(), (401, "SignatureExpired".into()));

    let wrong = Ci::new(&em)
        .with_key(SECRET_ID, "not-the-key")
        .submit(&job_xml("input/a.mp4", "XML", "u"))
        .await;
    assert_eq!(wrong.refusal(), (401, "AccessDenied".into()));

    // A signed header altered in transit (the body length) does not verify either.
    let body = job_xml("input/a.mp4", "XML", "u");
    let parts = sign::sign(
        SECRET_ID,
        SECRET_KEY,
        "POST",
        "/jobs",
        &[],
        &[("host", &ci.host), ("content-length", "1")],
        now - 60,
        now + 600,
    );
    let tampered = ci
        .call_signed(
            "POST",
            "/jobs",
            &[],
            Some(&body),
            None,
            Some(&parts.authorization),
        )
        .await;
    assert_eq!(tampered.refusal(), (401, "AccessDenied".into()));

    // Host with the port, signed without it (the Python SDK) or with it (the Go SDK): both accepted.
    let port = em.addr().port();
    for signed in [ci.host.clone(), format!("{}:{port}", ci.host)] {
        let sent = format!("{}:{port}", ci.host);
        let parts = sign::sign(
            SECRET_ID,
            SECRET_KEY,
            "GET",
            "/jobs",
            &[],
            &[("host", &signed)],
            now - 60,
            now + 600,
        );
        let resp = reqwest::Client::new()
            .get(format!("{}/jobs", em.endpoint()))
            .header("host", sent)
            .header("authorization", parts.authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            200,
            "signed host {signed}: {}",
            resp.text().await.unwrap()
        );
    }

    // Not a CI host, not a CI path.
    let bad_host = Ci {
        host: "127.0.0.1".into(),
        ..Ci::new(&em)
    }
    .call("GET", "/jobs", &[], None)
    .await;
    assert_eq!(bad_host.refusal(), (400, "InvalidHost".into()));
    let bad_path = ci.call("GET", "/nothing-here", &[], None).await;
    assert_eq!(bad_path.refusal(), (404, "InvalidUrl".into()));

    // Health needs nothing.
    let health = reqwest::get(format!("{}/healthz", em.endpoint()))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn submissions_are_validated_like_ci() {
    let em = emulator::start(settings(600_000)).await.unwrap();
    let ci = Ci::new(&em);
    let good = job_xml("input/a.mp4", "XML", "u");
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (
            good.replace("<Tag>DigitalWatermark</Tag>", ""),
            400,
            "InvalidArgument",
            "Request.Tag",
        ),
        (
            good.replace("<Input><Object>input/a.mp4</Object></Input>", ""),
            400,
            "InvalidArgument",
            "Request.Input",
        ),
        (
            good.replace("<Object>input/a.mp4</Object>", "<Object></Object>"),
            400,
            "InvalidArgument",
            "Request.Input.Object",
        ),
        (
            good.replace(
                "<CallBackType>TDMQ</CallBackType>",
                "<CallBackType>Kafka</CallBackType>",
            ),
            400,
            "InvalidArgument",
            "CallBackType",
        ),
        (
            good.replace(
                "<MqRegion>gz</MqRegion>",
                "<MqRegion>ap-guangzhou</MqRegion>",
            ),
            400,
            "InvalidArgument",
            "MqRegion",
        ),
        (
            good.replace("<MqMode>Queue</MqMode>", ""),
            400,
            "InvalidArgument",
            "MqMode",
        ),
        (
            good.replace(
                "<CallBackFormat>XML</CallBackFormat>",
                "<CallBackFormat>TEXT</CallBackFormat>",
            ),
            400,
            "InvalidArgument",
            "CallBackFormat",
        ),
        (
            good.replace(
                "<Message>123456789ab</Message>",
                "<Message>not allowed!</Message>",
            ),
            400,
            "InvalidArgument",
            "DigitalWatermark.Message",
        ),
        (
            good.replace("<Type>Text</Type>", "<Type>Image</Type>"),
            400,
            "InvalidArgument",
            "DigitalWatermark.Type",
        ),
        (
            good.replace("<JobLevel>0</JobLevel>", "<JobLevel>5</JobLevel>"),
            400,
            "InvalidArgument",
            "JobLevel",
        ),
        (
            good.replace(
                "<UserData>u</UserData>",
                &format!("<UserData>{}</UserData>", "x".repeat(1025)),
            ),
            400,
            "InvalidArgument",
            "UserData",
        ),
        ("<Request><Tag>".into(), 400, "InvalidContent", "XML"),
    ];
    for (body, status, code, needle) in cases {
        let r = ci.submit(&body).await;
        let err = r.error();
        assert_eq!((r.status, err.code.as_str()), (status, code), "{body}");
        assert!(
            err.message.contains(needle),
            "{:?} should name {needle}",
            err.message
        );
    }
    let tdmq_without_config = good.replace(
        "<CallBackMqConfig><MqRegion>gz</MqRegion><MqMode>Queue</MqMode><MqName>cb</MqName></CallBackMqConfig>",
        "",
    );
    assert_eq!(
        ci.submit(&tdmq_without_config).await.refusal(),
        (400, "InvalidArgument".into())
    );

    let huge = format!("<Request>{}</Request>", "<Tag>x</Tag>".repeat(200_000));
    assert_eq!(
        ci.submit(&huge).await.refusal(),
        (413, "InvalidContent".into())
    );
    let empty = ci.submit("").await;
    assert_eq!(
        empty.refusal(),
        (400, "MissingContent".into()),
        "{}",
        empty.body
    );

    let listed = ci.call("GET", "/jobs", &[], None).await;
    assert!(
        parse_jobs_response(&listed.body).unwrap().jobs.is_empty(),
        "refused jobs are not created"
    );
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn fault_rates_and_latency() {
    let mut s = settings(600_000);
    s.emulator.throttle_rate = 1.0;
    let em = emulator::start(s).await.unwrap();
    let r = Ci::new(&em)
        .submit(&job_xml("input/a.mp4", "XML", "u"))
        .await;
    assert_eq!(r.refusal(), (429, "SlowDown".into()));
    em.shutdown().await.unwrap();

    let mut s = settings(600_000);
    s.emulator.error_rate = 1.0;
    s.emulator.latency = Duration::from_millis(300);
    let em = emulator::start(s).await.unwrap();
    let started = Instant::now();
    let r = Ci::new(&em)
        .submit(&job_xml("input/a.mp4", "XML", "u"))
        .await;
    assert_eq!(r.refusal(), (503, "ServiceUnavailable".into()));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "latency_ms delays the response"
    );
    em.shutdown().await.unwrap();
}

/// `GET /_emulator/calls`, unsigned and without CI's Host.
async fn calls(em: &EmulatorHandle) -> Value {
    let resp = reqwest::get(format!("{}/_emulator/calls", em.endpoint()))
        .await
        .expect("GET /_emulator/calls");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    serde_json::from_str(&resp.text().await.unwrap()).expect("JSON counts")
}

#[tokio::test]
async fn answer_delay_holds_the_answer_after_the_job_exists() {
    let mut s = settings(600_000);
    s.emulator.answer_delay = Duration::from_millis(1500);
    let em = emulator::start(s).await.unwrap();
    let delay = Duration::from_millis(1500);
    let mut notices = em.subscribe();
    let submitter = Ci::new(&em);
    let started = Instant::now();
    let submit = tokio::spawn(async move {
        let reply = submitter
            .submit(&job_xml("input/delayed.mp4", "XML", "u-delayed"))
            .await;
        (reply, started.elapsed())
    });
    let EmulatorEvent::StateChanged { job_id, .. } = notice(&mut notices, |e| {
        matches!(
            e,
            EmulatorEvent::StateChanged {
                state: JobState::Submitted,
                ..
            }
        )
    })
    .await
    else {
        unreachable!()
    };
    let created_after = started.elapsed();
    assert!(
        created_after < delay / 2,
        "the job is created before the answer is held, not after: {created_after:?}"
    );
    assert!(!submit.is_finished(), "the submitter has no answer yet");
    // Another client finds the job while the submitter still waits for its answer.
    let other = Ci::new(&em);
    let (described, listed) = tokio::join!(
        other.describe(&job_id),
        other.call(
            "GET",
            "/jobs",
            &[("inputObject", "input/delayed.mp4")],
            None
        )
    );
    assert_eq!(submitted_job(&described).job_id(), Some(job_id.as_str()));
    assert_eq!(submitted_job(&listed).job_id(), Some(job_id.as_str()));
    let (reply, answered_after) = submit.await.unwrap();
    assert_eq!(submitted_job(&reply).job_id(), Some(job_id.as_str()));
    assert!(
        answered_after >= delay,
        "the answer is held for answer_delay_ms: {answered_after:?}"
    );
    // Errors are held too; the control path and /healthz are not.
    let t = Instant::now();
    assert_eq!(
        other
            .call("GET", "/jobs", &[("size", "0")], None)
            .await
            .status,
        400
    );
    assert!(t.elapsed() >= delay, "{:?}", t.elapsed());
    let t = Instant::now();
    calls(&em).await;
    reqwest::get(format!("{}/healthz", em.endpoint()))
        .await
        .unwrap();
    assert!(t.elapsed() < delay / 2, "{:?}", t.elapsed());
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn emulator_calls_counts_every_job_api_request() {
    let em = emulator::start(settings(600_000)).await.unwrap();
    assert_eq!(
        calls(&em).await,
        serde_json::json!({"submit": 0, "describe": 0, "list": 0, "cancel": 0, "queue": 0, "other": 0,
            "throttled": {"submit": 0, "describe": 0, "list": 0, "cancel": 0, "queue": 0, "other": 0}})
    );
    let ci = Ci::new(&em);
    let job = submitted_job(&ci.submit(&job_xml("input/count.mp4", "XML", "u")).await);
    let id = job.job_id().unwrap().to_string();
    // Refused ones count as what they asked for.
    let wrong_key = Ci::new(&em).with_key(SECRET_ID, "not-the-key");
    assert_eq!(
        wrong_key
            .submit(&job_xml("input/count.mp4", "XML", "u"))
            .await
            .status,
        401
    );
    assert_eq!(ci.submit("").await.status, 400);
    assert_eq!(ci.describe(&id).await.status, 200);
    assert_eq!(ci.describe(&format!("{id},jnope")).await.status, 200);
    assert_eq!(ci.call("GET", "/jobs", &[], None).await.status, 200);
    assert_eq!(
        ci.call("GET", "/jobs", &[("size", "0")], None).await.status,
        400
    );
    assert_eq!(
        ci.call("PUT", &format!("/jobs/{id}"), &[("cancel", "")], None)
            .await
            .status,
        200
    );
    assert_eq!(
        ci.call("PUT", &format!("/jobs/{id}"), &[], None)
            .await
            .status,
        404
    );
    assert_eq!(ci.call("GET", "/nope", &[], None).await.status, 404);
    assert_eq!(
        ci.call("POST", "/pic_jobs", &[], Some("<x/>")).await.status,
        501
    );
    reqwest::get(format!("{}/healthz", em.endpoint()))
        .await
        .unwrap();
    assert_eq!(
        calls(&em).await,
        serde_json::json!({"submit": 3, "describe": 2, "list": 2, "cancel": 1, "queue": 0, "other": 3,
            "throttled": {"submit": 0, "describe": 0, "list": 0, "cancel": 0, "queue": 0, "other": 0}}),
        "not counted: /healthz and /_emulator/calls itself"
    );
    em.shutdown().await.unwrap();

    // Throttled submits are counted too.
    let mut s = settings(600_000);
    s.emulator.throttle_rate = 1.0;
    let em = emulator::start(s).await.unwrap();
    let ci = Ci::new(&em);
    for _ in 0..3 {
        let r = ci.submit(&job_xml("input/count.mp4", "XML", "u")).await;
        assert_eq!(r.refusal(), (429, "SlowDown".into()));
    }
    assert_eq!(calls(&em).await["submit"], 3);
    assert_eq!(calls(&em).await["throttled"]["submit"], 3);
    em.shutdown().await.unwrap();
}

/// `emulator.qps_limit`: a rate limit over every job API call, not a roll of the dice. The exact
/// window arithmetic is unit-tested on given instants (`emulator::faults`); here, calls made well
/// within one second: beyond the limit, every one is refused with CI's 429 `SlowDown` body.
#[tokio::test]
async fn qps_limit_answers_slow_down_beyond_n_calls_a_second() {
    let mut s = settings(600_000);
    s.emulator.qps_limit = 4;
    let em = emulator::start(s).await.unwrap();
    let ci = Ci::new(&em);
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut refusals = Vec::new();
    for i in 0..7 {
        // Every operation counts against the one limit.
        let r = if i % 2 == 0 {
            ci.submit(&job_xml("input/qps.mp4", "XML", "u")).await
        } else {
            ci.call("GET", "/jobs", &[], None).await
        };
        statuses.push(r.status);
        if r.status != 200 {
            refusals.push(r.error());
        }
    }
    let took = started.elapsed();
    if took < Duration::from_millis(900) {
        assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429], "{took:?}");
        let counts = calls(&em).await;
        assert_eq!(counts["throttled"]["submit"], 2, "{counts}");
        assert_eq!(counts["throttled"]["list"], 1, "{counts}");
    } else {
        // A machine too slow to make 7 calls in a second: still never more than 4 a second.
        assert!(
            statuses.iter().filter(|s| **s == 200).count() >= 4,
            "{statuses:?}"
        );
    }
    for e in &refusals {
        assert_eq!(e.code, "SlowDown");
        assert!(
            !e.message.is_empty() && !e.request_id.is_empty() && !e.resource.is_empty(),
            "{e:?}"
        );
    }
    // Once the second has passed, calls go through again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(ci.call("GET", "/jobs", &[], None).await.status, 200);
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn list_filters_on_the_exact_input_object_through_the_client() {
    use ci_worker::ci::client::{CiClient, ListQuery};
    let em = emulator::start(settings(600_000)).await.unwrap();
    let ci = Ci::new(&em);
    let key = "in/a b.mp4";
    let watermark = |object: &str| job_xml(object, "XML", "u");
    let transcode = |object: &str| {
        format!(
            "<Request><Tag>Transcode</Tag><Input><Object>{object}</Object></Input>\
             <Operation><TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId></Operation>\
             </Request>"
        )
    };
    let id = |r: Reply| submitted_job(&r).job_id().unwrap().to_string();
    let w1 = id(ci.submit(&watermark(key)).await);
    for other in ["in/a b.mp4x", "in/a", "IN/A B.MP4", "in/a%20b.mp4"] {
        id(ci.submit(&watermark(other)).await);
    }
    let w2 = id(ci.submit(&watermark(key)).await);
    let t1 = id(ci.submit(&transcode(key)).await);
    id(ci.submit(&transcode("in/other.mp4")).await);

    let client = CiClient::new(
        Some(&em.endpoint()),
        Some(sign::Credentials {
            secret_id: SECRET_ID.into(),
            secret_key: Secret::new(SECRET_KEY),
            session_token: None,
        }),
        Duration::from_secs(10),
    )
    .unwrap();
    let list = |query: ListQuery| {
        let client = client.clone();
        async move {
            let page = client.list(BUCKET, REGION, &query).await.unwrap();
            page.jobs
                .iter()
                .map(|j| j.job_id().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let by_object = ListQuery {
        input_object: Some(key.into()),
        size: Some(100),
        ..ListQuery::default()
    };
    assert_eq!(
        list(by_object.clone()).await,
        [t1.clone(), w2.clone(), w1.clone()]
    );
    let watermarks = ListQuery {
        tag: "DigitalWatermark".into(),
        ..by_object.clone()
    };
    assert_eq!(list(watermarks.clone()).await, [w2.clone(), w1.clone()]);
    assert_eq!(
        list(ListQuery {
            tag: "Transcode".into(),
            ..by_object.clone()
        })
        .await,
        [t1.as_str()]
    );
    assert_eq!(
        ci.call("PUT", &format!("/jobs/{w1}"), &[("cancel", "")], None)
            .await
            .status,
        200
    );
    assert_eq!(
        list(ListQuery {
            states: Some("Cancel".into()),
            ..watermarks.clone()
        })
        .await,
        [w1.as_str()]
    );
    assert_eq!(
        list(ListQuery {
            states: Some("Submitted,Running".into()),
            ..watermarks.clone()
        })
        .await,
        [w2.as_str()]
    );
    let at = |offset: chrono::Duration| {
        (chrono::Utc::now() + offset)
            .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
            .format("%Y-%m-%dT%H:%M:%S%z")
            .to_string()
    };
    assert_eq!(
        list(ListQuery {
            start_creation_time: Some(at(chrono::Duration::hours(-1))),
            ..watermarks.clone()
        })
        .await,
        [w2.clone(), w1.clone()]
    );
    assert!(list(ListQuery {
        start_creation_time: Some(at(chrono::Duration::hours(1))),
        ..watermarks.clone()
    })
    .await
    .is_empty());
    assert!(list(ListQuery {
        input_object: Some("in/none.mp4".into()),
        ..by_object
    })
    .await
    .is_empty());
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn duplicate_rate_delivers_events_twice() {
    let mut s = settings(100);
    s.emulator.duplicate_rate = 1.0;
    let topic = topic_of(&s);
    let mut events = consumer(&topic).await;
    let em = emulator::start(s).await.unwrap();
    let ci = Ci::new(&em);
    let id = submitted_job(
        &ci.submit(&job_xml("input/dup.mp4", "JSON", "req-dup"))
            .await,
    )
    .job_id()
    .map(String::from);
    let (_, first, a) = next_event(&mut events).await;
    let (_, second, b) = next_event(&mut events).await;
    assert_eq!(a.job_id().map(String::from), id);
    assert_eq!(b.job_id().map(String::from), id);
    assert_eq!(
        first, second,
        "the duplicate is byte-for-byte the same event"
    );
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn url_callbacks_are_posted() {
    use axum::routing::post;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(4);
    let app = axum::Router::new().route(
        "/cb",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send((ct, body)).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cb_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let em = emulator::start(settings(100)).await.unwrap();
    let ci = Ci::new(&em);
    let body = job_xml("input/url.mp4", "XML", "req-url")
        .replace(
            "<CallBackType>TDMQ</CallBackType>",
            "<CallBackType>Url</CallBackType>",
        )
        .replace(
            "</Request>",
            &format!("<CallBack>http://{cb_addr}/cb</CallBack></Request>"),
        );
    let id = submitted_job(&ci.submit(&body).await)
        .job_id()
        .map(String::from);
    let (ct, posted) = common::within(30, "the URL callback", rx.recv())
        .await
        .unwrap();
    assert_eq!(ct, "application/xml");
    let (format, _, detail) = parse_event(posted.as_bytes());
    assert_eq!(format, "XML");
    assert_eq!(detail.job_id().map(String::from), id);
    assert_eq!(detail.user_data(), Some("req-url"));
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn refuses_to_start_without_credentials() {
    let mut s = settings(100);
    s.emulator.credentials.clear();
    assert!(matches!(
        emulator::start(s.clone()).await,
        Err(emulator::EmulatorError::NoCredentials)
    ));
    s.emulator.allow_anonymous = true;
    let em = emulator::start(s).await.unwrap();
    let r = Ci::new(&em)
        .call_signed("GET", "/jobs", &[], None, None, None)
        .await;
    assert_eq!(
        r.status, 200,
        "anonymous mode accepts unsigned requests: {}",
        r.body
    );
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn serves_while_the_broker_is_unreachable_and_shuts_down_promptly() {
    let mut s = settings(50);
    // Nothing listens on port 1: every publish attempt fails and is retried in the background.
    s.pulsar.url = "pulsar://127.0.0.1:1".into();
    let em = emulator::start(s).await.unwrap();
    let ci = Ci::new(&em);
    let mut notices = em.subscribe();
    let id = submitted_job(&ci.submit(&job_xml("input/a.mp4", "XML", "u")).await)
        .job_id()
        .unwrap()
        .to_string();
    notice(&mut notices, is_state(&id, JobState::Success)).await;
    let d = submitted_job(&ci.describe(&id).await);
    assert_eq!(d.tree().text_at(&["State"]), Some("Success"));
    common::within(10, "the emulator's shutdown", em.shutdown())
        .await
        .unwrap();
}

// ---- CMQ (`tdmq_delivery = "cmq"`): the emulator's TDMQ for CMQ queues over CMQ API 2.0 ----

/// The queue CI writes `job_xml`'s events into (`MqName=cb`), and another one.
const CMQ_QUEUES: [&str; 2] = ["cb", "ci-callbacks"];

/// An emulator that delivers `CallBackType=TDMQ` events into its CMQ queues, on two free ports.
fn cmq_settings(job_duration_ms: u64) -> Settings {
    let mut s = settings(job_duration_ms);
    s.emulator.tdmq_delivery = TdmqDelivery::Cmq;
    s.emulator.cmq_queues = CMQ_QUEUES.iter().map(|q| q.to_string()).collect();
    // Nothing may reach Pulsar in CMQ mode: a publish attempt here would fail.
    s.pulsar.url = "pulsar://127.0.0.1:1".into();
    s
}

fn cmq_client_with(em: &EmulatorHandle, id: &str, key: &str, method: SignatureMethod) -> CmqClient {
    CmqClient::new(
        &em.cmq_endpoint().expect("the CMQ API is served"),
        CmqCredentials {
            secret_id: id.into(),
            secret_key: Secret::new(key),
            token: None,
        },
        method,
        Duration::from_secs(10),
    )
    .unwrap()
}

fn cmq_client(em: &EmulatorHandle) -> CmqClient {
    cmq_client_with(em, SECRET_ID, SECRET_KEY, SignatureMethod::HmacSha256)
}

/// One CMQ API call by hand (to reach what `CmqClient` does not: other actions, GET, bad
/// parameters): signed over `method`, HmacSHA1; returns the HTTP status and the answer.
async fn cmq_raw(
    em: &EmulatorHandle,
    method: &str,
    action: &str,
    params: &[(&str, &str)],
) -> (u16, Value) {
    cmq_raw_at(em.cmq_addr().unwrap(), method, action, params).await
}

async fn cmq_raw_at(
    addr: std::net::SocketAddr,
    method: &str,
    action: &str,
    params: &[(&str, &str)],
) -> (u16, Value) {
    let host = addr.to_string();
    let now = chrono::Utc::now().timestamp().to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("Action", action),
        ("Nonce", "9223372036854775807"),
        ("SecretId", SECRET_ID),
        ("SignatureMethod", "HmacSHA1"),
        ("Timestamp", &now),
        ("UserpollingWaitSeconds", "0"),
    ];
    all.extend_from_slice(params);
    let text = cmq_sign::string_to_sign(method, &host, cmq_sign::PATH, &all);
    let signature = cmq_sign::signature(SignatureMethod::HmacSha1, SECRET_KEY, &text);
    all.push(("Signature", &signature));
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(all.iter())
        .finish();
    let url = format!("http://{host}{}", cmq_sign::PATH);
    let http = reqwest::Client::new();
    // As Tencent's Python SDK: the form as the body, no Content-Type.
    let request = match method {
        "GET" => http.get(format!("{url}?{form}")),
        _ => http.post(url).body(form),
    };
    let response = request.send().await.expect("request to the CMQ API");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

fn refused_code(r: Result<impl std::fmt::Debug, CmqError>) -> Option<i64> {
    match r {
        Ok(v) => panic!("not refused: {v:?}"),
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn cmq_send_receive_delete_round_trip() {
    let em = emulator::start(cmq_settings(600_000)).await.unwrap();
    let cmq = cmq_client(&em);
    let queue = "ci-callbacks";

    let msg_id = cmq.send_message(queue, "hello & <world>").await.unwrap();
    assert!(!msg_id.is_empty());
    let started = Instant::now();
    let got = cmq
        .batch_receive(queue, 16, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a visible message is returned at once"
    );
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.msg_body, "hello & <world>");
    assert_eq!(m.msg_id, msg_id);
    assert_eq!(m.dequeue_count, 1);
    let now = chrono::Utc::now().timestamp();
    assert!((now - m.enqueue_time).abs() <= 2, "{m:?}");
    assert_eq!(m.next_visible_time, m.first_dequeue_time + 30, "{m:?}");
    // Inactive for the queue's visibility timeout (emulator.cmq_visibility_timeout_s = 30).
    assert!(cmq
        .batch_receive(queue, 16, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    let outcome = cmq
        .batch_delete(queue, &[m.receipt_handle.as_str()])
        .await
        .unwrap();
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    let (_, attrs) = cmq_raw(&em, "POST", "GetQueueAttributes", &[("queueName", queue)]).await;
    assert_eq!(attrs["code"], 0, "{attrs}");
    assert_eq!(
        (&attrs["activeMsgNum"], &attrs["inactiveMsgNum"]),
        (&Value::from(0), &Value::from(0)),
        "deleted: {attrs}"
    );

    // A queue made over the API works the same; making it again is refused with 4460, which
    // CmqClient::create_queue accepts.
    let made = format!("made-{}", common::unique_name("q"));
    cmq.create_queue(&made, &QueueAttributes::default())
        .await
        .unwrap();
    cmq.create_queue(&made, &QueueAttributes::default())
        .await
        .unwrap();
    cmq.send_message(&made, "in the new queue").await.unwrap();
    let got = cmq
        .batch_receive(&made, 16, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got[0].msg_body, "in the new queue");
    assert!(cmq
        .batch_receive(queue, 16, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn cmq_actions_answer_as_the_pages_show() {
    let em = emulator::start(cmq_settings(600_000)).await.unwrap();
    let q = "ci-callbacks";

    let (status, created) = cmq_raw(
        &em,
        "POST",
        "CreateQueue",
        &[("queueName", "pages-q"), ("visibilityTimeout", "60")],
    )
    .await;
    assert_eq!(status, 200);
    let text = created.to_string();
    assert!(
        text.starts_with(r#"{"code":0,"message":"","requestId":""#),
        "{text}"
    );
    assert!(created["queueId"].as_str().is_some_and(|s| !s.is_empty()));
    let (_, again) = cmq_raw(&em, "POST", "CreateQueue", &[("queueName", "Pages-Q")]).await;
    assert_eq!(
        again["code"], 4460,
        "names collide case-insensitively: {again}"
    );
    let (_, bad) = cmq_raw(&em, "POST", "CreateQueue", &[("queueName", "1st")]).await;
    assert_eq!(
        (&bad["code"], &bad["message"]),
        (
            &Value::from(4000),
            &Value::from("(10020)queue name format error")
        )
    );
    let (_, bad) = cmq_raw(
        &em,
        "POST",
        "CreateQueue",
        &[("queueName", "q2"), ("visibilityTimeout", "0")],
    )
    .await;
    assert_eq!(bad["code"], 4000, "{bad}");

    // SendMessage / BatchSendMessage (msgBody.n from 0) / ReceiveMessage's top-level fields.
    let (_, sent) = cmq_raw(
        &em,
        "POST",
        "SendMessage",
        &[("queueName", q), ("msgBody", "one")],
    )
    .await;
    assert_eq!(sent["code"], 0, "{sent}");
    let (_, batch) = cmq_raw(
        &em,
        "POST",
        "BatchSendMessage",
        &[
            ("queueName", q),
            ("msgBody.0", "two"),
            ("msgBody.1", "three"),
        ],
    )
    .await;
    let ids: Vec<&str> = batch["msgList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msgId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{batch}");
    let (_, one) = cmq_raw(&em, "POST", "ReceiveMessage", &[("queueName", q)]).await;
    assert_eq!(one["code"], 0, "{one}");
    assert_eq!(one["msgBody"], "one");
    assert_eq!(one["msgId"], sent["msgId"]);
    assert_eq!(
        keys(&one),
        [
            "code",
            "dequeueCount",
            "enqueueTime",
            "firstDequeueTime",
            "message",
            "msgBody",
            "msgId",
            "nextVisibleTime",
            "receiptHandle",
            "requestId"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    // GET: the parameters from the query string, signed with GET.
    let (_, listed) = cmq_raw(
        &em,
        "GET",
        "BatchReceiveMessage",
        &[
            ("queueName", q),
            ("numOfMsg", "16"),
            ("pollingWaitSeconds", "0"),
        ],
    )
    .await;
    let bodies: Vec<&str> = listed["msgInfoList"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|m| m["msgBody"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["two", "three"]);
    let (_, attrs) = cmq_raw(&em, "POST", "GetQueueAttributes", &[("queueName", q)]).await;
    assert_eq!(
        (
            &attrs["activeMsgNum"],
            &attrs["inactiveMsgNum"],
            &attrs["visibilityTimeout"]
        ),
        (&Value::from(0), &Value::from(3), &Value::from(30)),
        "{attrs}"
    );
    let (_, attrs) = cmq_raw(
        &em,
        "POST",
        "GetQueueAttributes",
        &[("queueName", "pages-q")],
    )
    .await;
    assert_eq!(attrs["visibilityTimeout"], 60, "{attrs}");

    // DeleteMessage with a handle, then the same handle again.
    let handle = one["receiptHandle"].as_str().unwrap();
    let (_, deleted) = cmq_raw(
        &em,
        "POST",
        "DeleteMessage",
        &[("queueName", q), ("receiptHandle", handle)],
    )
    .await;
    assert_eq!(deleted["code"], 0, "{deleted}");
    let (_, again) = cmq_raw(
        &em,
        "POST",
        "DeleteMessage",
        &[("queueName", q), ("receiptHandle", handle)],
    )
    .await;
    assert_eq!(
        (&again["code"], &again["message"]),
        (
            &Value::from(4430),
            &Value::from("(10260)receipt handle is invalid")
        )
    );

    // Refusals: all HTTP 200 with CMQ's codes.
    for (action, params, code, message) in [
        (
            "Nope",
            vec![],
            4000,
            "(10430)action name Nope is not existed",
        ),
        (
            "SendMessage",
            vec![("queueName", "absent"), ("msgBody", "x")],
            4440,
            "(10100)queue is not existed, or deleted",
        ),
        (
            "SendMessage",
            vec![("queueName", q), ("msgBody", "")],
            4000,
            "(10120)message body can't be empty",
        ),
        (
            "BatchReceiveMessage",
            vec![("queueName", q), ("numOfMsg", "17")],
            4000,
            "(10350)parameter numOfMsg value or length is out of range",
        ),
        (
            "BatchReceiveMessage",
            vec![("queueName", q)],
            4000,
            "(10390)lacked of required parameter numOfMsg",
        ),
        (
            "ReceiveMessage",
            vec![("queueName", q), ("pollingWaitSeconds", "31")],
            4000,
            "(10350)parameter pollingWaitSeconds value or length is out of range",
        ),
        (
            "ReceiveMessage",
            vec![("queueName", q), ("pollingWaitSeconds", "0")],
            7000,
            "(10200)no message",
        ),
        (
            "BatchDeleteMessage",
            vec![
                ("queueName", q),
                ("receiptHandle.1", "1"),
                ("receiptHandle.3", "3"),
            ],
            4000,
            "(10380)receiptHandle parameter is not consequent",
        ),
    ] {
        let (status, answer) = cmq_raw(&em, "POST", action, &params).await;
        assert_eq!(status, 200, "{action}: {answer}");
        assert_eq!(
            (&answer["code"], &answer["message"]),
            (&Value::from(code), &Value::from(message)),
            "{action} {params:?}"
        );
        assert!(answer["requestId"].as_str().is_some_and(|r| !r.is_empty()));
    }
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn cmq_refuses_a_wrong_key_with_4100() {
    let em = emulator::start(cmq_settings(600_000)).await.unwrap();
    for method in [SignatureMethod::HmacSha1, SignatureMethod::HmacSha256] {
        let wrong = cmq_client_with(&em, SECRET_ID, "not-the-key", method);
        assert_eq!(
            refused_code(wrong.send_message("ci-callbacks", "x").await),
            Some(4100),
            "{method:?}"
        );
        let right = cmq_client_with(&em, SECRET_ID, SECRET_KEY, method);
        right.send_message("ci-callbacks", "x").await.unwrap();
    }
    let unknown = cmq_client_with(&em, "AKIDnobody", SECRET_KEY, SignatureMethod::HmacSha256);
    match unknown
        .batch_receive("ci-callbacks", 1, Duration::ZERO)
        .await
    {
        Err(CmqError::Refused { code, message, .. }) => {
            assert_eq!(
                (code, message.as_str()),
                (4100, "(10270)secret id is not existed")
            )
        }
        other => panic!("{other:?}"),
    }
    // Unsigned.
    let response = reqwest::Client::new()
        .post(format!("{}/v2/index.php", em.cmq_endpoint().unwrap()))
        .body("Action=SendMessage&queueName=ci-callbacks&msgBody=x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(answer["code"], 4100, "{answer}");
    let (_, attrs) = cmq_raw(
        &em,
        "POST",
        "GetQueueAttributes",
        &[("queueName", "ci-callbacks")],
    )
    .await;
    assert_eq!(
        attrs["activeMsgNum"], 2,
        "only the signed sends went in: {attrs}"
    );
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn cmq_empty_queue_long_poll_waits_then_returns_empty() {
    let em = emulator::start(cmq_settings(600_000)).await.unwrap();
    let cmq = cmq_client(&em);
    let started = Instant::now();
    let got = cmq
        .batch_receive("ci-callbacks", 16, Duration::from_secs(1))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_secs(1),
        "the poll lasts: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "and ends: {waited:?}");
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn cmq_visibility_timeout_brings_a_message_back_and_kills_its_old_handle() {
    let em = emulator::start(cmq_settings(600_000)).await.unwrap();
    let cmq = cmq_client(&em);
    let queue = "vt-queue";
    cmq.create_queue(
        queue,
        &QueueAttributes {
            visibility_timeout: Some(1),
            ..QueueAttributes::default()
        },
    )
    .await
    .unwrap();
    cmq.send_message(queue, "not deleted in time")
        .await
        .unwrap();
    let first = cmq
        .batch_receive(queue, 16, Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.dequeue_count, 1);
    // Not deleted: the long poll is woken when it becomes visible again, after 1 s.
    let started = Instant::now();
    let again = cmq
        .batch_receive(queue, 16, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(again.len(), 1);
    let second = &again[0];
    assert_eq!(second.msg_id, first.msg_id);
    assert_eq!(second.dequeue_count, 2);
    assert_eq!(second.first_dequeue_time, first.first_dequeue_time);
    assert_ne!(second.receipt_handle, first.receipt_handle);

    // The old handle fails, the new one deletes: 6010 with the old one in errorList.
    let outcome = cmq
        .batch_delete(
            queue,
            &[
                first.receipt_handle.as_str(),
                second.receipt_handle.as_str(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.failed,
        [DeleteFailure {
            code: 4430,
            message: "invalid receiptHandle".into(),
            receipt_handle: first.receipt_handle.clone(),
        }]
    );
    // Every handle refused: 6020.
    match cmq
        .batch_delete(queue, &[second.receipt_handle.as_str()])
        .await
    {
        Err(CmqError::Refused { code, message, .. }) => {
            assert_eq!(
                (code, message.as_str()),
                (6020, "(10290)batch delete message failed")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(cmq
        .batch_receive(queue, 16, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    em.shutdown().await.unwrap();
}

/// All CMQ messages of `queue` until `want` have come, each long poll woken by the delivery.
async fn cmq_messages(cmq: &CmqClient, queue: &str, want: usize) -> Vec<String> {
    common::within(60, "completion events in the CMQ queue", async {
        let mut bodies = Vec::new();
        while bodies.len() < want {
            for m in cmq
                .batch_receive(queue, 16, Duration::from_secs(10))
                .await
                .unwrap()
            {
                cmq.batch_delete(queue, &[m.receipt_handle.as_str()])
                    .await
                    .unwrap();
                bodies.push(m.msg_body);
            }
        }
        bodies
    })
    .await
}

#[tokio::test]
async fn tdmq_completion_events_land_in_the_cmq_queue() {
    let em = emulator::start(cmq_settings(300)).await.unwrap();
    let ci = Ci::new(&em);
    let cmq = cmq_client(&em);
    let mut notices = em.subscribe();
    let xml_id = submitted_job(&ci.submit(&job_xml("input/a.mp4", "XML", "req-xml")).await)
        .job_id()
        .unwrap()
        .to_string();
    let delivered = notice(
        &mut notices,
        |e| matches!(e, EmulatorEvent::CallbackDelivered { job_id, .. } if *job_id == xml_id),
    )
    .await;
    assert_eq!(
        delivered,
        EmulatorEvent::CallbackDelivered {
            job_id: xml_id.clone(),
            target: "cmq:cb".into(),
            copy: 1
        }
    );
    let json_id = submitted_job(&ci.submit(&job_xml("input/b.mp4", "JSON", "req-json")).await)
        .job_id()
        .unwrap()
        .to_string();

    let bodies = cmq_messages(&cmq, "cb", 2).await;
    assert!(
        bodies[0].starts_with("<Response><EventName>TaskFinish</EventName><JobsDetail>"),
        "{}",
        bodies[0]
    );
    let (format, _, detail) = parse_event(bodies[0].as_bytes());
    assert_eq!(format, "XML");
    assert_eq!(detail.job_id(), Some(xml_id.as_str()));
    assert_eq!(detail.tree().text_at(&["State"]), Some("Success"));
    assert_eq!(detail.user_data(), Some("req-xml"));
    let (format, tree, detail) = parse_event(bodies[1].as_bytes());
    assert_eq!(format, "JSON");
    assert_eq!(tree["EventName"], "TaskFinish");
    assert_eq!(detail.job_id(), Some(json_id.as_str()));
    assert_eq!(detail.user_data(), Some("req-json"));
    assert!(
        cmq.batch_receive("ci-callbacks", 16, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "only the queue MqName gets them"
    );
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn tdmq_duplicates_are_two_cmq_messages() {
    let mut s = cmq_settings(100);
    s.emulator.duplicate_rate = 1.0;
    let em = emulator::start(s).await.unwrap();
    let id = submitted_job(
        &Ci::new(&em)
            .submit(&job_xml("input/d.mp4", "XML", "dup"))
            .await,
    )
    .job_id()
    .unwrap()
    .to_string();
    let bodies = cmq_messages(&cmq_client(&em), "cb", 2).await;
    assert_eq!(bodies[0], bodies[1], "the same event twice");
    assert_eq!(
        parse_event(bodies[0].as_bytes()).2.job_id(),
        Some(id.as_str())
    );
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn tdmq_callback_to_a_missing_cmq_queue_fails() {
    let em = emulator::start(cmq_settings(100)).await.unwrap();
    let mut notices = em.subscribe();
    let body = job_xml("input/a.mp4", "XML", "u")
        .replace("<MqName>cb</MqName>", "<MqName>no-such-queue</MqName>");
    let id = submitted_job(&Ci::new(&em).submit(&body).await)
        .job_id()
        .unwrap()
        .to_string();
    let failed = notice(&mut notices, |e| {
        matches!(e, EmulatorEvent::CallbackFailed { job_id, .. } | EmulatorEvent::CallbackDelivered { job_id, .. } if *job_id == id)
    })
    .await;
    match failed {
        EmulatorEvent::CallbackFailed { error, .. } => {
            assert!(error.contains("no-such-queue"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn cmq_outage_switch_answers_503_then_recovers() {
    let em = emulator::start(cmq_settings(600_000)).await.unwrap();
    let cmq = cmq_client(&em);
    let http = reqwest::Client::new();
    let switch = format!("{}/_emulator/cmq/outage", em.cmq_endpoint().unwrap());
    let queue = "ci-callbacks";

    // The next two deletes fail; receives do not.
    let r = http
        .post(format!("{switch}?count=2&actions=BatchDeleteMessage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cmq.send_message(queue, "m").await.unwrap();
    let m = cmq
        .batch_receive(queue, 1, Duration::ZERO)
        .await
        .unwrap()
        .remove(0);
    for _ in 0..2 {
        match cmq.batch_delete(queue, &[m.receipt_handle.as_str()]).await {
            Err(e @ CmqError::Status { status: 503, .. }) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
    }
    let outcome = cmq
        .batch_delete(queue, &[m.receipt_handle.as_str()])
        .await
        .unwrap();
    assert!(outcome.failed.is_empty(), "recovered: {:?}", outcome.failed);

    // Everything for a second.
    let r = http
        .post(format!("{switch}?seconds=1"))
        .send()
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(1);
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"actions": "all", "seconds": 1}));
    let raw = http
        .post(format!("{}/v2/index.php", em.cmq_endpoint().unwrap()))
        .body("Action=SendMessage")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 503);
    let body: Value = serde_json::from_str(&raw.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "ServiceUnavailable");
    assert!(matches!(
        cmq.send_message(queue, "x").await,
        Err(CmqError::Status { status: 503, .. })
    ));
    // The outage is a time span: waiting it out is the point.
    tokio::time::sleep_until(until.into()).await;
    cmq.send_message(queue, "after").await.unwrap();

    // Cleared on demand; a bad request is refused.
    http.post(format!("{switch}?seconds=600"))
        .send()
        .await
        .unwrap();
    assert!(cmq.send_message(queue, "x").await.is_err());
    let cleared = http.delete(&switch).send().await.unwrap();
    assert_eq!(cleared.status(), 200);
    cmq.send_message(queue, "cleared").await.unwrap();
    let bad = http
        .post(format!("{switch}?count=1&actions=NoSuchAction"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn pulsar_delivery_serves_no_cmq_api() {
    let em = emulator::start(settings(100)).await.unwrap();
    assert_eq!(em.cmq_addr(), None);
    assert_eq!(em.cmq_endpoint(), None);
    em.shutdown().await.unwrap();
    let em = emulator::start(cmq_settings(100)).await.unwrap();
    assert_ne!(em.cmq_addr().unwrap().port(), 0, "port 0 is resolved");
    em.shutdown().await.unwrap();
}

#[tokio::test]
async fn cmq_queues_setting_is_checked_at_start() {
    let mut s = cmq_settings(100);
    s.emulator.cmq_queues = vec!["9-lives".into()];
    assert!(matches!(
        emulator::start(s).await,
        Err(emulator::EmulatorError::InvalidSetting {
            key: "emulator.cmq_queues",
            ..
        })
    ));
}

#[tokio::test]
async fn shutdown_ends_a_cmq_long_poll_at_once() {
    let em = emulator::start(cmq_settings(100)).await.unwrap();
    let addr = em.cmq_addr().unwrap();
    let poll = tokio::spawn(cmq_raw_at(
        addr,
        "POST",
        "BatchReceiveMessage",
        &[
            ("queueName", "ci-callbacks"),
            ("numOfMsg", "16"),
            ("pollingWaitSeconds", "30"),
        ],
    ));
    // Nothing shows that the poll has reached the emulator (CMQ reports no waiters): give the
    // local request a moment, far less than the 30 s it would otherwise hold the shutdown.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    common::within(10, "the emulator's shutdown", em.shutdown())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a 30 s long poll does not hold the shutdown"
    );
    let (status, answer) = common::within(10, "the long poll's end", poll)
        .await
        .unwrap();
    assert_eq!(
        (status, &answer["code"]),
        (200, &Value::from(7000)),
        "{answer}"
    );
}

/// `job_xml` with `CallBackType=Kafka` and `CallBackKafkaConfig` `config` (its inner XML).
fn kafka_job_xml(object: &str, format: &str, user_data: &str, config: &str) -> String {
    let tdmq = job_xml(object, format, user_data);
    let (head, _) = tdmq
        .split_once("<CallBackType>")
        .expect("job_xml has a CallBackType");
    format!(
        "{head}<CallBackType>Kafka</CallBackType><CallBackKafkaConfig>{config}</CallBackKafkaConfig></Request>"
    )
}

fn kafka_config(topic: &str) -> String {
    format!("<Region>ap-guangzhou</Region><InstanceId>ckafka-emulator</InstanceId><Topic>{topic}</Topic>")
}

/// An emulator producing `CallBackType=Kafka` events to the test broker (`KAFKA_BROKERS`).
fn kafka_settings(job_duration_ms: u64) -> Settings {
    let mut s = settings(job_duration_ms);
    s.emulator.kafka_brokers = common::kafka_brokers();
    s
}

/// `CallBackType=Kafka`: each job's event reaches the request's topic on the real broker, keyed by
/// its job id, in the job's `CallBackFormat`, with the body the other callback types carry.
#[tokio::test]
async fn kafka_callbacks_are_produced_to_the_requests_topic() {
    let topic = common::unique_name("emu-kafka");
    common::create_kafka_topic(&topic, 3).await;
    let reader = common::kafka_reader(&topic).await;
    let em = emulator::start(kafka_settings(300)).await.unwrap();
    let ci = Ci::new(&em);
    let mut notices = em.subscribe();

    let mut ids = std::collections::BTreeMap::new();
    for format in ["XML", "JSON"] {
        let reply = ci
            .submit(&kafka_job_xml(
                &format!("input/{format}.mp4"),
                format,
                &format!("req-{format}"),
                &kafka_config(&topic),
            ))
            .await;
        let job = submitted_job(&reply);
        // CI echoes the callback settings it was given.
        assert!(
            reply.body.contains(&format!(
                "<CallBackType>Kafka</CallBackType><CallBackKafkaConfig>{}</CallBackKafkaConfig>",
                kafka_config(&topic)
            )),
            "{}",
            reply.body
        );
        ids.insert(format, job.job_id().unwrap().to_string());
    }

    let mut seen = Vec::new();
    for _ in 0..2 {
        let record = common::next_record(&reader, 60).await;
        let (format, tree, detail) = parse_event(&record.payload);
        let id = &ids[format];
        assert_eq!(detail.job_id(), Some(id.as_str()));
        assert_eq!(record.key.as_deref(), Some(id.as_str()), "keyed by job id");
        assert_eq!(tree["EventName"], "TaskFinish");
        assert_eq!(detail.tree().text_at(&["State"]), Some("Success"));
        assert_eq!(detail.user_data(), Some(format!("req-{format}").as_str()));
        for key in ["CallBackType", "CallBackKafkaConfig", "CallBackFormat"] {
            assert!(tree["JobsDetail"].get(key).is_none(), "{key} in the event");
        }
        assert_eq!(
            tree["JobsDetail"]["Operation"]["MediaResult"]["OutputFile"]["ObjectName"],
            "output/out.mp4"
        );
        assert!((0..3).contains(&record.partition));
        seen.push(format);
    }
    seen.sort();
    assert_eq!(seen, ["JSON", "XML"]);
    // Both deliveries were notified, in either order, each to the topic's label.
    let mut notified = std::collections::BTreeSet::new();
    while notified.len() < ids.len() {
        if let EmulatorEvent::CallbackDelivered {
            job_id,
            target,
            copy,
        } = notice(&mut notices, |e| {
            matches!(e, EmulatorEvent::CallbackDelivered { .. })
        })
        .await
        {
            assert_eq!(target, format!("kafka:{topic}"));
            assert_eq!(copy, 1);
            notified.insert(job_id);
        }
    }
    assert_eq!(notified, ids.values().cloned().collect());
    em.shutdown().await.unwrap();
}

/// A `CallBackKafkaConfig` missing a value is refused as CI refuses a bad `CallBackMqConfig`: 400
/// `InvalidArgument` naming the element; no job is made.
#[tokio::test]
async fn a_bad_kafka_callback_config_is_refused_like_ci() {
    let em = emulator::start(kafka_settings(300)).await.unwrap();
    let ci = Ci::new(&em);
    for (config, element) in [
        (
            "<InstanceId>ckafka-1</InstanceId><Topic>t</Topic>".to_string(),
            "Request.CallBackKafkaConfig.Region",
        ),
        (
            "<Region>ap-guangzhou</Region><InstanceId/><Topic>t</Topic>".to_string(),
            "Request.CallBackKafkaConfig.InstanceId",
        ),
        (
            "<Region>ap-guangzhou</Region><InstanceId>ckafka-1</InstanceId>".to_string(),
            "Request.CallBackKafkaConfig.Topic",
        ),
        (
            "<Region>ap-guangzhou</Region><InstanceId>ckafka-1</InstanceId><Topic>a/b</Topic>"
                .to_string(),
            "Request.CallBackKafkaConfig.Topic",
        ),
    ] {
        let reply = ci
            .submit(&kafka_job_xml("input/a.mp4", "JSON", "u", &config))
            .await;
        assert_eq!(reply.refusal(), (400, "InvalidArgument".into()), "{config}");
        assert!(
            reply.error().message.contains(element),
            "{config}: {}",
            reply.body
        );
    }
    let without = job_xml("input/a.mp4", "JSON", "u").replace(
        "<CallBackType>TDMQ</CallBackType>",
        "<CallBackType>Kafka</CallBackType>",
    );
    let reply = ci.submit(&without).await;
    assert_eq!(reply.refusal(), (400, "InvalidArgument".into()));
    assert!(
        reply
            .error()
            .message
            .contains("Request.CallBackKafkaConfig: is required when CallBackType is Kafka"),
        "{}",
        reply.body
    );
    let listed = ci
        .call("GET", "/jobs", &[("tag", "DigitalWatermark")], None)
        .await;
    assert_eq!(parse_jobs_response(&listed.body).unwrap().jobs.len(), 0);
    em.shutdown().await.unwrap();
}

/// A topic that does not exist (the broker creates none: `scripts/kafka.sh` turns
/// `auto.create.topics.enable` off, as CKafka has it): the event is retried, not lost, and arrives
/// once the topic is made; the emulator made no topic of its own.
#[tokio::test]
async fn a_kafka_event_for_a_missing_topic_waits_for_the_topic() {
    let topic = common::unique_name("emu-kafka-late");
    common::require_kafka().await;
    let em = emulator::start(kafka_settings(100)).await.unwrap();
    let ci = Ci::new(&em);
    let mut notices = em.subscribe();
    let id = submitted_job(
        &ci.submit(&kafka_job_xml(
            "input/late.mp4",
            "XML",
            "req-late",
            &kafka_config(&topic),
        ))
        .await,
    )
    .job_id()
    .unwrap()
    .to_string();
    notice(&mut notices, is_state(&id, JobState::Success)).await;
    // Time is what is tested here: no delivery while the topic is missing.
    let early = tokio::time::timeout(
        Duration::from_secs(3),
        notice(&mut notices, |e| {
            matches!(
                e,
                EmulatorEvent::CallbackDelivered { .. } | EmulatorEvent::CallbackFailed { .. }
            )
        }),
    )
    .await;
    assert!(
        early.is_err(),
        "delivered or given up without a topic: {early:?}"
    );
    // Panics if the topic exists already, i.e. if anything created it meanwhile.
    common::create_kafka_topic(&topic, 1).await;
    let reader = common::kafka_reader(&topic).await;
    let record = common::next_record(&reader, 90).await;
    assert_eq!(record.key.as_deref(), Some(id.as_str()));
    let (_, _, detail) = parse_event(&record.payload);
    assert_eq!(detail.user_data(), Some("req-late"));
    em.shutdown().await.unwrap();
}

/// Without `emulator.kafka_brokers` a Kafka event is given up at once, saying why.
#[tokio::test]
async fn a_kafka_event_without_brokers_is_given_up_saying_why() {
    let em = emulator::start(settings(100)).await.unwrap();
    let ci = Ci::new(&em);
    let mut notices = em.subscribe();
    let id = submitted_job(
        &ci.submit(&kafka_job_xml(
            "input/a.mp4",
            "JSON",
            "u",
            &kafka_config("t"),
        ))
        .await,
    )
    .job_id()
    .unwrap()
    .to_string();
    match notice(&mut notices, |e| {
        matches!(e, EmulatorEvent::CallbackFailed { .. })
    })
    .await
    {
        EmulatorEvent::CallbackFailed { job_id, error } => {
            assert_eq!(job_id, id);
            assert!(error.contains("emulator.kafka_brokers is empty"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    em.shutdown().await.unwrap();
}
