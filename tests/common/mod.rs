//! Shared helpers for the integration tests: the real Apache Pulsar broker, and the requests and
//! checks several test files need.
//!
//! Each test file includes this with `mod common;` and uses a subset, hence the
//! `#![allow(dead_code)]`. The broker comes from `scripts/test.sh` (which starts it and exports the
//! variables below) or from `scripts/pulsar.sh start` by hand (the defaults match its defaults):
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `PULSAR_URL` | `pulsar://127.0.0.1:6650` | broker without authentication |
//! | `PULSAR_ADMIN_URL` | `http://127.0.0.1:8080` | its admin REST API |
//! | `PULSAR_AUTH_URL` | `pulsar://127.0.0.1:6651` | broker with JWT token authentication |
//! | `PULSAR_AUTH_ADMIN_URL` | `http://127.0.0.1:8081` | its admin REST API (needs the token) |
//! | `PULSAR_AUTH_TOKEN` | read from `PULSAR_AUTH_TOKEN_FILE` | admin JWT for the auth broker |
//! | `PULSAR_AUTH_TOKEN_FILE` | `.cache/pulsar/data-6651/auth/admin.token` | file holding that JWT |
//! | `KAFKA_BROKERS` | `127.0.0.1:9092` | the Kafka broker (`scripts/kafka.sh`) |
//!
//! The helpers, and the test files that use them (`tests/stack` builds on this module too):
//!
//! | helper | what | used by |
//! | --- | --- | --- |
//! | [`pulsar_url`], [`admin_url`], [`auth_pulsar_url`], [`auth_admin_url`], [`auth_token`] | where the brokers are | stack, `broker_smoke`, `emulator`, `operations` |
//! | [`client`], [`auth_client`], [`client_for`], [`require_broker`] | connected clients, failing fast without a broker | stack, `broker_smoke`, `consume_loop` |
//! | [`unique_topic`], [`unique_name`] | names no other test uses | `broker_smoke`, `consume_loop`, `emulator`, `reliability` |
//! | [`topic_stats`] | the broker's stats of a topic | `operations`, `reliability` |
//! | [`partitions`], [`create_partitioned_topic`], [`any_topic_stats`], [`subscription_backlog`] | partitioned topics; stats and a subscription's backlog of either kind | stack, `reliability` |
//! | [`publish`] | sends payloads to a topic and waits for every receipt | `e2e`, `operations`, `reliability` |
//! | [`follow`] | a consumer of a topic from its start | stack (`Stack::follow`), `emulator` |
//! | [`next_message`], [`properties`] | the next message; its properties | stack, `broker_smoke`, `emulator` |
//! | [`within`] | a future with a timeout | stack, `broker_smoke`, `consume_loop`, `emulator`, `operations`, `reliability` |
//! | [`BUCKET`], [`REGION`] | the bucket and region of every test job | stack users, `emulator`, `fuzz` |
//! | [`JobRequest`] | a DigitalWatermark request in the worker's input format, field by field | `credentials`, `e2e`, `fuzz`, `ingress`, `lookup`, `operations`, `reliability`, `shutdown` |
//! | [`is_rfc3339_utc`] | the result times' format | `e2e`, `fuzz` |
//! | [`kafka_brokers`], [`create_kafka_topic`], [`kafka_reader`], [`next_record`] | the Kafka broker: a new topic, a reader of it from its start, the next record | `emulator` |

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use pulsar::{
    consumer::{ConsumerOptions, InitialPosition, Message},
    producer::ProducerOptions,
    Authentication, Consumer, DeserializeMessage, Pulsar, SubType, TokioExecutor,
};
use serde_json::{json, Value};

const HOW_TO_START_KAFKA: &str =
    "run the tests with `scripts/test.sh` (it starts the Kafka broker \
     too), or start one by hand with `scripts/kafka.sh start` (and KAFKA_BROKERS=127.0.0.1:<port> \
     for another port than 9092)";

const HOW_TO_START: &str = "run the tests with `scripts/test.sh` (it starts the brokers), \
     or start one by hand with `scripts/pulsar.sh start` \
     (and `PULSAR_PORT=6651 PULSAR_HTTP_PORT=8081 PULSAR_AUTH=token scripts/pulsar.sh start` \
     for the token-auth broker)";

fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => default.to_string(),
    }
}

/// `pulsar://` URL of the broker without authentication.
pub fn pulsar_url() -> String {
    env_or("PULSAR_URL", "pulsar://127.0.0.1:6650")
}

/// `http://` URL of that broker's admin REST API.
pub fn admin_url() -> String {
    env_or("PULSAR_ADMIN_URL", "http://127.0.0.1:8080")
}

/// The broker's stats of `topic` (`GET /admin/v2/<topic>/stats`); `null` when it has none to give
/// (a topic not created yet).
pub async fn topic_stats(topic: &str) -> serde_json::Value {
    let url = format!(
        "{}/admin/v2/{}/stats",
        admin_url(),
        topic.replace("://", "/")
    );
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// The admin API path of `topic` (`persistent/public/default/<name>`).
fn admin_path(topic: &str) -> String {
    topic.replace("://", "/")
}

/// How many partitions `topic` has (`GET /admin/v2/<topic>/partitions`); 0 for a topic that is not
/// partitioned (or does not exist yet).
pub async fn partitions(topic: &str) -> u32 {
    let url = format!("{}/admin/v2/{}/partitions", admin_url(), admin_path(topic));
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    body["partitions"].as_u64().unwrap_or(0) as u32
}

/// Creates `topic` as a partitioned topic of `n` partitions (`PUT /admin/v2/<topic>/partitions`),
/// before anything publishes to or subscribes to it.
pub async fn create_partitioned_topic(topic: &str, n: u32) {
    let url = format!("{}/admin/v2/{}/partitions", admin_url(), admin_path(topic));
    let response = reqwest::Client::new()
        .put(&url)
        .header("Content-Type", "application/json")
        .body(n.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "PUT {url} {n}: {status} {text}");
    assert_eq!(partitions(topic).await, n, "{topic} has {n} partitions");
}

/// The broker's stats of `topic`, partitioned or not (`/partitioned-stats` sums its partitions);
/// `null` when it has none to give.
pub async fn any_topic_stats(topic: &str) -> serde_json::Value {
    if partitions(topic).await == 0 {
        return topic_stats(topic).await;
    }
    let url = format!(
        "{}/admin/v2/{}/partitioned-stats",
        admin_url(),
        admin_path(topic)
    );
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// The backlog of `subscription` on `topic` (all partitions), `None` while the subscription does not
/// exist.
pub async fn subscription_backlog(topic: &str, subscription: &str) -> Option<i64> {
    any_topic_stats(topic).await["subscriptions"][subscription]["msgBacklog"].as_i64()
}

/// `pulsar://` URL of the broker that requires a JWT.
pub fn auth_pulsar_url() -> String {
    env_or("PULSAR_AUTH_URL", "pulsar://127.0.0.1:6651")
}

/// `http://` URL of the token broker's admin REST API (send `Authorization: Bearer <token>`).
pub fn auth_admin_url() -> String {
    env_or("PULSAR_AUTH_ADMIN_URL", "http://127.0.0.1:8081")
}

/// The admin JWT (`{"sub":"admin"}`) accepted by the token broker.
pub fn auth_token() -> String {
    if let Ok(t) = std::env::var("PULSAR_AUTH_TOKEN") {
        if !t.trim().is_empty() {
            return t.trim().to_string();
        }
    }
    let file = std::env::var("PULSAR_AUTH_TOKEN_FILE")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/pulsar/data-6651/auth/admin.token")
        });
    match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => panic!(
            "no Pulsar auth token: PULSAR_AUTH_TOKEN is not set and {} is missing or empty; {HOW_TO_START}",
            file.display()
        ),
    }
}

/// `persistent://public/default/<prefix>-<uuid>`: a topic no other test (or earlier run) uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("persistent://public/default/{}", unique_name(prefix))
}

/// `<prefix>-<uuid>`: for subscription, consumer and producer names.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `host:port` of a `pulsar://host:port` URL.
fn host_port(url: &str) -> String {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .trim_end_matches('/');
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Fails fast, with a message that says what to do, when nothing listens at `url`.
/// (The client itself would retry for minutes before giving up.)
pub async fn require_broker(url: &str) {
    let addr = host_port(url);
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("no Pulsar broker answers at {url} ({e}); {HOW_TO_START}"),
        Err(_) => panic!("no Pulsar broker answers at {url} (connect timed out); {HOW_TO_START}"),
    }
}

/// A client of the broker without authentication ([`pulsar_url`]).
pub async fn client() -> Pulsar<TokioExecutor> {
    client_for(&pulsar_url(), None).await
}

/// A client of the token broker ([`auth_pulsar_url`]) that sends [`auth_token`].
pub async fn auth_client() -> Pulsar<TokioExecutor> {
    client_for(&auth_pulsar_url(), Some(auth_token())).await
}

/// A client of `url`, with a JWT if given; panics with a clear message if it cannot connect.
pub async fn client_for(url: &str, token: Option<String>) -> Pulsar<TokioExecutor> {
    require_broker(url).await;
    let mut builder = Pulsar::builder(url, TokioExecutor);
    if let Some(token) = token {
        builder = builder.with_auth(Authentication {
            name: "token".to_string(),
            data: token.into_bytes(),
        });
    }
    match tokio::time::timeout(Duration::from_secs(60), builder.build()).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("cannot connect a Pulsar client to {url}: {e}; {HOW_TO_START}"),
        Err(_) => panic!("connecting a Pulsar client to {url} took over 60 s; {HOW_TO_START}"),
    }
}

/// Awaits `fut` for at most `secs` seconds, panicking with `what` on timeout.
pub async fn within<F: Future>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s waiting for {what}"),
    }
}

/// The next message of `consumer`, waiting at most `secs` seconds.
pub async fn next_message<T: DeserializeMessage + 'static>(
    consumer: &mut Consumer<T, TokioExecutor>,
    secs: u64,
) -> Message<T> {
    match within(secs, "a message", consumer.next()).await {
        Some(Ok(msg)) => msg,
        Some(Err(e)) => panic!("consumer error: {e}"),
        None => panic!("consumer stream ended"),
    }
}

/// The properties of a received message, as (key, value) pairs in arrival order.
pub fn properties<T>(msg: &Message<T>) -> Vec<(String, String)> {
    msg.metadata()
        .properties
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

/// Publishes `payloads` to `topic` on the broker at `url` (with a JWT if given), in order, and waits
/// for every receipt. Sends are pipelined; a full queue waits for room instead of failing.
pub async fn publish(url: &str, token: Option<String>, topic: &str, payloads: Vec<Vec<u8>>) {
    let client = client_for(url, token).await;
    let mut producer = client
        .producer()
        .with_topic(topic)
        .with_options(ProducerOptions {
            // Hundreds of sends in flight: wait for room instead of failing with SlowDown.
            block_queue_if_full: true,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for p in payloads {
        receipts.push(producer.send_non_blocking(p).await.unwrap());
    }
    for r in receipts {
        r.await.unwrap();
    }
}

/// A consumer of `topic` on the broker at `url` (with a JWT if given), created now on an Exclusive
/// subscription of its own, reading from the start of the topic.
pub async fn follow(
    url: &str,
    token: Option<String>,
    topic: &str,
) -> Consumer<Vec<u8>, TokioExecutor> {
    let client = client_for(url, token).await;
    within(
        60,
        "a consumer",
        client
            .consumer()
            .with_topic(topic)
            .with_subscription(unique_name("test-follow"))
            .with_subscription_type(SubType::Exclusive)
            .with_options(
                ConsumerOptions::default().with_initial_position(InitialPosition::Earliest),
            )
            .build::<Vec<u8>>(),
    )
    .await
    .expect("consumer")
}

/// The bucket of every test job.
pub const BUCKET: &str = "examplebucket-1250000000";
/// The region of every test job.
pub const REGION: &str = "ap-guangzhou";

/// A DigitalWatermark request in the worker's input format, built field by field:
/// `JobRequest::watermark(id, message)` is job `id` on [`BUCKET`] in [`REGION`] writing the text
/// watermark `message` from `input/<id>.mp4` into `output/<id>.mp4` of the same bucket; the other
/// methods change one field each. A test that needs a field no method sets edits [`JobRequest::json`].
#[derive(Debug, Clone)]
pub struct JobRequest(Value);

impl JobRequest {
    pub fn watermark(id: &str, message: &str) -> Self {
        JobRequest(json!({"request_id": id, "bucket": BUCKET, "region": REGION,
            "job": {"Tag": "DigitalWatermark", "Input": {"Object": format!("input/{id}.mp4")},
                    "Operation": {"DigitalWatermark": {"Type": "Text", "Message": message, "Version": "V1"},
                                  "Output": {"Region": REGION, "Bucket": BUCKET,
                                             "Object": format!("output/{id}.mp4")}}}}))
    }

    /// The input object (`job.Input.Object`).
    pub fn input(mut self, object: &str) -> Self {
        self.0["job"]["Input"]["Object"] = json!(object);
        self
    }

    /// The output object (`job.Operation.Output.Object`).
    pub fn output(mut self, object: &str) -> Self {
        self.0["job"]["Operation"]["Output"]["Object"] = json!(object);
        self
    }

    /// CI's callback format, `JSON` or `XML` (`job.CallBackFormat`).
    pub fn callback_format(mut self, format: &str) -> Self {
        self.0["job"]["CallBackFormat"] = json!(format);
        self
    }

    /// The caller's data (`job.Operation.UserData`).
    pub fn user_data(mut self, data: &str) -> Self {
        self.0["job"]["Operation"]["UserData"] = json!(data);
        self
    }

    /// The job's priority (`job.Operation.JobLevel`).
    pub fn job_level(mut self, level: &str) -> Self {
        self.0["job"]["Operation"]["JobLevel"] = json!(level);
        self
    }

    /// The request as JSON.
    pub fn json(self) -> Value {
        self.0
    }

    /// The request as the bytes published on the request topic.
    pub fn bytes(self) -> Vec<u8> {
        self.0.to_string().into_bytes()
    }
}

/// Whether `s` is an RFC 3339 time in UTC (`…Z`), the format of every time in a result.
pub fn is_rfc3339_utc(s: &str) -> bool {
    s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// `host:port` of the Kafka broker (`KAFKA_BROKERS`, as `scripts/kafka.sh env` prints it).
pub fn kafka_brokers() -> String {
    env_or("KAFKA_BROKERS", "127.0.0.1:9092")
}

/// The process id of scripts/kafka.sh's broker (its `KAFKA_DATA_DIR`'s `kafka.pid`), to stop it
/// with SIGSTOP: a broker that stops answering with its connections open.
pub fn kafka_pid() -> u32 {
    let pid_file = std::path::PathBuf::from(
        std::env::var("KAFKA_DATA_DIR")
            .unwrap_or_else(|_| format!("{}/.cache/kafka/data-9092", env!("CARGO_MANIFEST_DIR"))),
    )
    .join("kafka.pid");
    std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
}

/// Fails fast, saying what to do, when no Kafka broker listens at [`kafka_brokers`] (librdkafka
/// itself would retry forever).
pub async fn require_kafka() {
    let brokers = kafka_brokers();
    let first = brokers
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&first),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("no Kafka broker answers at {first} ({e}); {HOW_TO_START_KAFKA}"),
        Err(_) => {
            panic!("no Kafka broker answers at {first} (connect timed out); {HOW_TO_START_KAFKA}")
        }
    }
}

/// Creates `topic` with `partitions` partitions (one replica) on the Kafka broker; panics if it
/// exists already (a name from [`unique_name`] never does) or the broker refuses.
pub async fn create_kafka_topic(topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    require_kafka().await;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .expect("a Kafka admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = within(
        60,
        "the Kafka broker to create a topic",
        admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        ),
    )
    .await
    .expect("CreateTopics");
    for result in results {
        if let Err((name, code)) = result {
            panic!("the Kafka broker did not create topic {name}: {code}");
        }
    }
}

/// A reader of `topic` from its oldest record, in a consumer group of its own.
pub async fn kafka_reader(topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    require_kafka().await;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique_name("test-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // A topic created a moment ago may not be in the first metadata answer yet; without this
        // the group would wait for the next refresh (5 minutes by default) to see its partitions.
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .expect("a Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// One record: its key, payload and partition.
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub partition: i32,
}

/// The next record `consumer` reads, waiting at most `secs` seconds.
pub async fn next_record(consumer: &rdkafka::consumer::StreamConsumer, secs: u64) -> Record {
    use rdkafka::Message;
    let msg = within(secs, "a Kafka record", consumer.recv())
        .await
        .expect("a record from the Kafka broker");
    Record {
        key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: msg.payload().unwrap_or_default().to_vec(),
        partition: msg.partition(),
    }
}
