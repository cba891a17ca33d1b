//! `ci-worker emulator` end to end: a real HTTP server on port 0, requests signed with
//! `ci::sign::sign`, completion events read from a real Apache Pulsar broker with the `pulsar` crate.
//! Waiting is always on an event (a broker message, an emulator notice, a callback request) with a
//! timeout, never a sleep.

mod common;

use ci_worker::ci::response::{parse_error, parse_jobs_response, CiErrorBody, JobDetail};
use ci_worker::ci::tree::Node;
use ci_worker::ci::{ci_host, sign, xml};
use ci_worker::config::{KeyPair, Settings};
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

fn settings(job_duration_ms: u64) -> Settings {
    let mut s = Settings::default();
    s.emulator.listen = "127.0.0.1:0".into();
    s.emulator.job_duration_ms = job_duration_ms;
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

    // The documented sample's keys (callback-digital-watermark.md).
    let sample_detail: BTreeSet<String> = [
        "Code",
        "CreationTime",
        "EndTime",
        "Input",
        "JobId",
        "Message",
        "Operation",
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
    s.emulator.latency_ms = 300;
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
