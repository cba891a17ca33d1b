//! Completion events: CI's `TaskFinish` body and its delivery.
//!
//! The body is `<Response><EventName>TaskFinish</EventName><JobsDetail>…</JobsDetail></Response>`
//! (callback-digital-watermark.md, keys in alphabetical order) in the job's `CallBackFormat`; the JSON
//! form is CI's mechanical conversion of that tree ([`crate::ci::tree::Node::canonicalize`]: empty
//! elements dropped, one child an object). The pages do not say that CI writes the same body into
//! TDMQ as it POSTs to a URL; that is the plausible reading, and the emulator does so.
//!
//! `CallBackType=TDMQ` with `emulator.tdmq_delivery = "cmq"` (as CI does): the body is sent into the
//! emulator's CMQ queue named `MqName` ([`super::cmq_queues`], read over [`super::cmq_api`]).
//! `MqRegion` and `MqMode` are accepted and not used: one emulator is one region, and `MqMode=Topic`
//! (a CMQ topic pushing to its subscribed queues) is emulated as the queue `MqName` itself. A queue
//! that does not exist, or a body over its `maxMsgSize`, is not retried: the event is dropped, logged
//! at error level and reported as [`EmulatorEvent::CallbackFailed`] — the pages do not say what CI
//! does then; a queue CI cannot write to loses the event there too.
//!
//! `tdmq_delivery = "pulsar"` (a bridge setup): published to the Pulsar topic
//! `emulator.callback_topic_template` names, with `{MqName}`, `{MqRegion}` and `{MqMode}`
//! substituted, keyed by the job id as the README asks of a bridge (so that every copy of a job's
//! event reaches the same replica), no properties (CI documents none). The Pulsar client is connected on first
//! use, so the API serves even while the broker is down; failed publishes are retried with backoff (a
//! broker restart is survived) for up to [`TDMQ_DEADLINE`], then logged and dropped.
//!
//! `CallBackType=Kafka`: produced to `emulator.kafka_brokers` (one emulator stands for one CKafka
//! instance: `Region` and `InstanceId` are checked at submit, not used), into the topic
//! `CallBackKafkaConfig.Topic`, keyed by the job id (every copy of a job's event lands in one
//! partition, so one consumer of the group sees them in order), the body as the `Url` callback's.
//! The topic is never created here: what CI does with a topic that does not exist is not
//! documented, so a failed produce (a missing topic, the broker down) is logged and retried with
//! backoff for up to [`TDMQ_DEADLINE`], like a Pulsar publish; the broker creates the topic only
//! if its own `auto.create.topics.enable` says so. With no `emulator.kafka_brokers` the event is
//! given up at once (logged).
//!
//! `CallBackType=Url` with a `CallBack` address: the same body is POSTed there (`Content-Type`
//! `application/xml` or `application/json`), up to [`URL_ATTEMPTS`] times until a 2xx.
//!
//! An injected duplicate (`emulator.duplicate_rate`) delivers the same body a second time, whatever
//! the target.

use super::cmq_queues::{Clock, Queues};
use super::faults::Faults;
use super::job::Job;
use super::notices::{EmulatorEvent, Notices};
use super::submit::{CallbackTarget, MqConfig};
use crate::ci::rules::CallbackFormat;
use crate::ci::tree::Node;
use crate::ci::xml;
use crate::config::{Settings, TdmqDelivery};
use crate::pulsar::{Outgoing, Publisher};
use crate::secret::Secret;
use crate::shutdown::Shutdown;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a TDMQ or Kafka completion event is retried before it is given up.
pub(crate) const TDMQ_DEADLINE: Duration = Duration::from_secs(600);
/// One Kafka produce attempt: librdkafka's own retries within it (`message.timeout.ms`).
const KAFKA_ATTEMPT: Duration = Duration::from_secs(10);
/// The emulator's `client.id` at the Kafka broker.
const KAFKA_CLIENT_ID: &str = "tencent-ci-emulator";
/// Attempts of one URL callback.
pub(crate) const URL_ATTEMPTS: u32 = 3;
/// Timeout of one URL callback attempt.
const URL_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The completion event body of a finished job, in its `CallBackFormat`.
pub(crate) fn completion_body(job: &Job) -> (Vec<u8>, &'static str) {
    let mut tree = Node::Map(vec![
        ("EventName".into(), "TaskFinish".into()),
        ("JobsDetail".into(), job.event_detail()),
    ]);
    match job.spec.format {
        CallbackFormat::Xml => {
            let body = xml::to_xml("Response", &tree).unwrap_or_else(|e| {
                // The tree is built from parsed XML and fixed names, so this cannot happen; still a
                // well-formed event rather than a panic.
                tracing::error!(error = %e, "emulator: cannot write the completion event as XML");
                "<Response><EventName>TaskFinish</EventName></Response>".into()
            });
            (body.into_bytes(), "application/xml")
        }
        CallbackFormat::Json => {
            tree.canonicalize();
            let body = serde_json::to_vec(&tree).unwrap_or_default();
            (body, "application/json")
        }
    }
}

/// The Pulsar topic for a job's `CallBackMqConfig`.
pub(crate) fn topic_for(template: &str, mq: &MqConfig) -> String {
    template
        .replace("{MqName}", &mq.name)
        .replace("{MqRegion}", &mq.region)
        .replace("{MqMode}", &mq.mode)
}

/// Sends completion events: into the CMQ queues, or with one lazily connected Pulsar client; and
/// one HTTP client.
pub(crate) struct Deliverer {
    tdmq_delivery: TdmqDelivery,
    queues: Arc<Queues>,
    pulsar_url: String,
    pulsar_token: Secret,
    topic_template: String,
    /// The connected publisher and its generation (bumped on every reconnect).
    publisher: Mutex<Option<(u64, Publisher)>>,
    generation: std::sync::atomic::AtomicU64,
    http: reqwest::Client,
    /// `emulator.kafka_brokers`; empty = no Kafka delivery.
    kafka_brokers: String,
    /// Created on the first Kafka event (librdkafka connects in the background, so the API serves
    /// while the broker is down).
    kafka: tokio::sync::OnceCell<FutureProducer>,
    shutdown: Shutdown,
}

impl Deliverer {
    pub(crate) fn new(settings: &Settings, shutdown: Shutdown, queues: Arc<Queues>) -> Deliverer {
        let http = reqwest::Client::builder()
            .timeout(URL_TIMEOUT)
            .user_agent("tencent-ci-emulator")
            .build()
            .unwrap_or_default();
        Deliverer {
            tdmq_delivery: settings.emulator.tdmq_delivery,
            queues,
            pulsar_url: settings.pulsar.url.clone(),
            pulsar_token: settings.pulsar.token.clone(),
            topic_template: settings.emulator.callback_topic_template.clone(),
            publisher: Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            http,
            kafka_brokers: settings.emulator.kafka_brokers.trim().to_string(),
            kafka: tokio::sync::OnceCell::new(),
            shutdown,
        }
    }

    /// The connected publisher, connecting first if needed.
    async fn publisher(&self) -> Result<(u64, Publisher), String> {
        let mut slot = self.publisher.lock().await;
        if let Some((generation, p)) = slot.as_ref() {
            return Ok((*generation, p.clone()));
        }
        let client = crate::pulsar::connect(&self.pulsar_url, &self.pulsar_token)
            .await
            .map_err(|e| e.to_string())?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let publisher = Publisher::new(client, "ci-emulator");
        *slot = Some((generation, publisher.clone()));
        tracing::info!(url = %self.pulsar_url, "emulator: connected to Pulsar");
        Ok((generation, publisher))
    }

    /// Drops the publisher of `generation` so that the next attempt reconnects.
    async fn reset(&self, generation: u64) {
        let mut slot = self.publisher.lock().await;
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            if let Some((_, p)) = slot.take() {
                p.close().await;
            }
        }
    }

    async fn publish_once(&self, topic: &str, key: &str, body: &[u8]) -> Result<(), String> {
        let (generation, publisher) = self.publisher().await?;
        let msg = Outgoing::new(body.to_vec()).with_key(key.to_string());
        match publisher.publish(topic, msg).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.reset(generation).await;
                Err(e.to_string())
            }
        }
    }

    /// Produces the body into the Kafka topic `topic`, keyed `key`: one attempt, bounded by
    /// [`KAFKA_ATTEMPT`].
    async fn produce_once(&self, topic: &str, key: &str, body: &[u8]) -> Result<(), String> {
        let producer = self
            .kafka
            .get_or_try_init(|| async {
                let config = crate::kafka::producer_config(
                    &self.kafka_brokers,
                    KAFKA_CLIENT_ID,
                    KAFKA_ATTEMPT.as_millis() as u64,
                );
                tracing::info!(settings = %crate::kafka::summary(&config), "emulator: Kafka producer created");
                config.create::<FutureProducer>()
            })
            .await
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        let record = FutureRecord::to(topic).key(key).payload(body);
        producer
            .send(record, Timeout::After(KAFKA_ATTEMPT))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }

    /// Sends the body into the CMQ queue `queue`; a refusal is final (see the module doc).
    fn enqueue(&self, queue: &str, body: &[u8]) -> Result<(), String> {
        // The body is CI's XML or JSON text, so always UTF-8.
        let text = String::from_utf8_lossy(body);
        let q = self
            .queues
            .get(queue)
            .map_err(|_| format!("the CMQ queue {queue:?} does not exist; the event is dropped"))?;
        q.send(&text, 0, Clock::now())
            .map(|_| ())
            .map_err(|e| format!("the CMQ queue {queue:?} refused the event: {e}"))
    }

    async fn post_once(&self, url: &str, body: &[u8], content_type: &str) -> Result<(), String> {
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the callback URL answered {}", response.status()))
        }
    }

    /// Closes the Pulsar producers (on shutdown).
    pub(crate) async fn close(&self) {
        if let Some((_, p)) = self.publisher.lock().await.take() {
            p.close().await;
        }
    }
}

/// Delivers a finished job's completion event (and an injected duplicate) to its target, retrying as
/// the module doc says. Returns when done, given up, or on shutdown.
pub(crate) async fn deliver(deliverer: &Deliverer, faults: &Faults, notices: &Notices, job: Job) {
    let target = match &job.spec.target {
        CallbackTarget::None => return,
        CallbackTarget::Url(url) => Target::Url(url.clone()),
        CallbackTarget::Tdmq(mq) => match deliverer.tdmq_delivery {
            TdmqDelivery::Cmq => Target::Queue {
                label: format!("cmq:{}", mq.name),
                queue: mq.name.clone(),
            },
            TdmqDelivery::Pulsar => Target::Topic {
                topic: topic_for(&deliverer.topic_template, mq),
                key: job.id.clone(),
            },
        },
        CallbackTarget::Kafka(kafka) => Target::Kafka {
            label: format!("kafka:{}", kafka.topic),
            topic: kafka.topic.clone(),
            key: job.id.clone(),
        },
    };
    let (body, content_type) = completion_body(&job);
    let copies = faults.copies();
    for copy in 1..=copies {
        let outcome = deliver_one(deliverer, &target, &body, content_type).await;
        match outcome {
            Ok(()) => {
                tracing::info!(job_id = %job.id, target = %target.name(), copy, "emulator: completion event delivered");
                notices.notify(EmulatorEvent::CallbackDelivered {
                    job_id: job.id.clone(),
                    target: target.name().to_string(),
                    copy,
                });
            }
            Err(error) if deliverer.shutdown.is_triggered() => {
                tracing::warn!(job_id = %job.id, target = %target.name(), %error, "emulator: completion event dropped at shutdown");
                return;
            }
            Err(error) => {
                tracing::error!(job_id = %job.id, target = %target.name(), %error, "emulator: completion event given up");
                notices.notify(EmulatorEvent::CallbackFailed {
                    job_id: job.id.clone(),
                    error,
                });
                return;
            }
        }
    }
}

enum Target {
    /// A Pulsar topic, and the key of what is published there (the job id).
    Topic {
        topic: String,
        key: String,
    },
    Url(String),
    /// A CMQ queue; `label` is `cmq:<queue>`, the notices' and the log's name for it.
    Queue {
        queue: String,
        label: String,
    },
    /// A Kafka topic on `emulator.kafka_brokers`, the record's key (the job id); `label` is
    /// `kafka:<topic>`.
    Kafka {
        topic: String,
        key: String,
        label: String,
    },
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Topic { topic: t, .. } | Target::Url(t) => t,
            Target::Queue { label, .. } | Target::Kafka { label, .. } => label,
        }
    }
}

async fn deliver_one(
    deliverer: &Deliverer,
    target: &Target,
    body: &[u8],
    content_type: &str,
) -> Result<(), String> {
    let started = Instant::now();
    let mut backoff = MIN_BACKOFF;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = match target {
            Target::Topic { topic, key } => {
                let remaining = TDMQ_DEADLINE.saturating_sub(started.elapsed());
                tokio::time::timeout(remaining, deliverer.publish_once(topic, key, body))
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()))
            }
            Target::Url(url) => deliverer.post_once(url, body, content_type).await,
            Target::Queue { queue, .. } => deliverer.enqueue(queue, body),
            Target::Kafka { .. } if deliverer.kafka_brokers.is_empty() => {
                return Err(
                    "emulator.kafka_brokers is empty: no Kafka broker to deliver to; the event is dropped"
                        .into(),
                )
            }
            Target::Kafka { topic, key, .. } => deliverer.produce_once(topic, key, body).await,
        };
        let error = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let exhausted = match target {
            Target::Topic { .. } | Target::Kafka { .. } => {
                started.elapsed() + backoff >= TDMQ_DEADLINE
            }
            Target::Url(_) => attempt >= URL_ATTEMPTS,
            // In memory: it works at once or never.
            Target::Queue { .. } => return Err(error),
        };
        if exhausted {
            return Err(format!("after {attempt} attempts: {error}"));
        }
        tracing::warn!(target = %target.name(), attempt, %error, "emulator: completion event not delivered yet; retrying");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = deliverer.shutdown.triggered() => return Err("the emulator is shutting down".into()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::store::Store;
    use crate::emulator::submit::parse_request;
    use serde_json::Value;

    fn finished(format: &str, object: &str) -> Job {
        let spec = parse_request(&format!(
            "<Request><Tag>DigitalWatermark</Tag><Input><Object>{object}</Object></Input>\
             <Operation><DigitalWatermark><Type>Text</Type><Message>123456789ab</Message>\
             <Version>V1</Version></DigitalWatermark><Output><Region>ap-chongqing</Region>\
             <Bucket>test-123456789</Bucket><Object>output/digital.mp4</Object></Output>\
             <UserData>This is my DigitalWatermark job.</UserData></Operation>\
             <CallBackFormat>{format}</CallBackFormat><CallBackType>TDMQ</CallBackType>\
             <CallBackMqConfig><MqRegion>gz</MqRegion><MqMode>Queue</MqMode><MqName>q1</MqName>\
             </CallBackMqConfig></Request>"
        ))
        .unwrap();
        let mut job = Store::new().insert("test-123456789", "ap-chongqing", spec);
        job.state = if object.contains("__fail__") {
            job.failure = Some(("ResourceNotSupported".into(), "bad".into()));
            crate::emulator::job::JobState::Failed
        } else {
            crate::emulator::job::JobState::Success
        };
        job.started = Some(job.created);
        job.ended = Some(job.created);
        job
    }

    #[test]
    fn xml_event_has_the_documented_shape() {
        let job = finished("XML", "input/demo.mp4");
        let (body, ct) = completion_body(&job);
        assert_eq!(ct, "application/xml");
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("<Response><EventName>TaskFinish</EventName><JobsDetail><Code>Success</Code><CreationTime>"), "{text}");
        let doc = xml::parse(&text).unwrap().node.into_value();
        let d = &doc["JobsDetail"];
        assert_eq!(d["State"], "Success");
        assert_eq!(d["SubTag"], "DigitalWatermark");
        assert_eq!(d["Message"], "");
        assert_eq!(d["Input"]["BucketId"], "test-123456789");
        assert_eq!(
            d["Operation"]["UserData"],
            "This is my DigitalWatermark job."
        );
        let file = &d["Operation"]["MediaResult"]["OutputFile"];
        assert_eq!(file["Md5Info"]["ObjectName"], "output/digital.mp4");
        assert_eq!(file["ObjectPrefix"], "");
        assert!(d.get("CallBackType").is_none());
    }

    #[test]
    fn json_event_is_the_mechanical_conversion() {
        let job = finished("JSON", "input/demo.mp4");
        let (body, ct) = completion_body(&job);
        assert_eq!(ct, "application/json");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["EventName"], "TaskFinish");
        let d = &v["JobsDetail"];
        assert!(d.is_object(), "one JobsDetail is an object");
        assert!(d.get("Message").is_none(), "empty Message dropped");
        assert_eq!(d["Operation"]["MediaInfo"]["Format"]["NumStream"], "2");
        assert!(d["Operation"]["MediaInfo"]["Stream"]
            .get("Subtitle")
            .is_none());
        assert!(d["Operation"]["MediaResult"]["OutputFile"]
            .get("ObjectPrefix")
            .is_none());

        let failed = finished("JSON", "input/__fail__.mp4");
        let v: Value = serde_json::from_slice(&completion_body(&failed).0).unwrap();
        assert_eq!(v["JobsDetail"]["State"], "Failed");
        assert_eq!(v["JobsDetail"]["Code"], "ResourceNotSupported");
        assert_eq!(v["JobsDetail"]["Message"], "bad");
        assert!(v["JobsDetail"]["Operation"].get("MediaResult").is_none());
    }

    #[test]
    fn topic_template_substitutes_all_three() {
        let mq = MqConfig {
            region: "gz".into(),
            mode: "Queue".into(),
            name: "cb".into(),
        };
        assert_eq!(
            topic_for("persistent://public/{MqRegion}/{MqMode}-{MqName}", &mq),
            "persistent://public/gz/Queue-cb"
        );
    }

    fn cmq_deliverer(duplicate_rate: f64) -> (Deliverer, Faults, Arc<Queues>) {
        let mut settings = Settings::default();
        settings.emulator.duplicate_rate = duplicate_rate;
        let queues = Arc::new(Queues::new());
        queues
            .create(
                "q1",
                crate::emulator::cmq_queues::QueueAttributes::default(),
                Clock::now(),
            )
            .unwrap();
        let deliverer = Deliverer::new(&settings, Shutdown::new(), queues.clone());
        let faults = Faults::from_settings(&settings.emulator).unwrap();
        (deliverer, faults, queues)
    }

    #[tokio::test]
    async fn tdmq_events_go_into_the_cmq_queue_mq_name_with_duplicates() {
        assert_eq!(
            Settings::default().emulator.tdmq_delivery,
            TdmqDelivery::Cmq,
            "CMQ is the default, as CI does"
        );
        let (deliverer, faults, queues) = cmq_deliverer(1.0);
        let notices = Notices::new();
        let mut feed = notices.subscribe();
        let job = finished("XML", "input/demo.mp4");
        let id = job.id.clone();
        let (body, _) = completion_body(&job);
        deliver(&deliverer, &faults, &notices, job).await;
        for copy in [1, 2] {
            assert_eq!(
                feed.try_recv().unwrap(),
                EmulatorEvent::CallbackDelivered {
                    job_id: id.clone(),
                    target: "cmq:q1".into(),
                    copy,
                }
            );
        }
        let (got, _) = queues.get("q1").unwrap().try_receive(16, Clock::now());
        assert_eq!(got.len(), 2, "the duplicate is a second message");
        assert_eq!(got[0].msg_body.as_bytes(), body.as_slice());
        assert_eq!(got[1].msg_body, got[0].msg_body);
        assert_ne!(got[0].msg_id, got[1].msg_id);
    }

    #[tokio::test]
    async fn a_missing_queue_drops_the_event_at_once() {
        let (deliverer, faults, queues) = cmq_deliverer(0.0);
        let notices = Notices::new();
        let mut feed = notices.subscribe();
        let mut job = finished("JSON", "input/demo.mp4");
        if let CallbackTarget::Tdmq(mq) = &mut job.spec.target {
            mq.name = "nowhere".into();
        }
        let id = job.id.clone();
        // No retry loop: this returns at once.
        tokio::time::timeout(
            Duration::from_secs(5),
            deliver(&deliverer, &faults, &notices, job),
        )
        .await
        .unwrap();
        match feed.try_recv().unwrap() {
            EmulatorEvent::CallbackFailed { job_id, error } => {
                assert_eq!(job_id, id);
                assert!(error.contains("\"nowhere\" does not exist"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(feed.try_recv().is_err());
        assert_eq!(queues.names(), ["q1"], "no queue is made for it");
    }
}
