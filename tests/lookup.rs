//! HTTP lookup (`pulsar.url = "http://…"`, TDMQ for Pulsar 2.7.1+'s service URL) against the real
//! brokers: a job through the worker and the emulator on the plain broker's HTTP URL, the same on
//! the token broker with its JWT, a worker refused for a missing or wrong token exiting with an
//! error that names `pulsar.token` and prints no secret, a client following a lookup service
//! whose answer changes, every partition of a partitioned topic looked up over HTTP (through a
//! lookup-counting proxy in front of the broker's HTTP port), and each partition's producer and
//! consumer on the broker its own lookup names (a lookup service that splits the partitions
//! between the plain and the token broker).

mod common;
mod stack;

use ci_worker::pulsar::{subscribe, Outgoing, Publisher, SubscribeOptions, SubscriptionKind};
use ci_worker::secret::Secret;
use common::JobRequest;
use futures::StreamExt;
use serde_json::Value;
use stack::{all_final, by_request, collect, finals, Stack};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Publishes one job request per id to the stack's request topic on the binary `url`.
async fn publish_jobs(stack: &Stack, url: &str, token: Option<String>, ids: &[String]) {
    let payloads = ids
        .iter()
        .map(|id| {
            JobRequest::watermark(id, "lookup")
                .output(&format!("out/{id}.mp4"))
                .bytes()
        })
        .collect();
    common::publish(url, token, &stack.topics.request, payloads).await;
}

/// Runs emulator and worker with `pulsar.url` = `http_url` (and `token`), and checks that every
/// job gets exactly one final result, `succeeded`. Requests go in and results come out over the
/// broker's binary URL `binary_url`, as a pipeline on the plain protocol would see them.
async fn jobs_through_http_lookup(
    prefix: &str,
    http_url: &str,
    binary_url: &str,
    token: Option<String>,
) {
    common::require_broker(http_url).await;
    let mut stack = Stack::new(prefix);
    stack
        .env
        .insert("CI_WORKER__PULSAR__URL".into(), http_url.to_string());
    if let Some(t) = &token {
        stack
            .env
            .insert("CI_WORKER__PULSAR__TOKEN".into(), t.clone());
    }
    stack.start_emulator().await;
    let mut results = common::follow(binary_url, token.clone(), &stack.topics.result).await;
    stack.start_worker();
    let ids: Vec<String> = (0..3).map(|i| format!("{prefix}-{i}")).collect();
    publish_jobs(&stack, binary_url, token.clone(), &ids).await;
    let seen = collect(&mut results, Duration::from_secs(120), |s| {
        all_final(s, &ids)
    })
    .await;
    let by_id = by_request(&seen);
    for id in &ids {
        let states = finals(&by_id[id]);
        assert_eq!(states, ["succeeded"], "{id}: {:?}", by_id[id]);
    }
    let logs = stack.logs();
    assert!(logs.contains("Pulsar through HTTP lookup"), "{logs}");
    if let Some(t) = &token {
        assert!(!logs.contains(t.as_str()), "a log shows the token");
    }
    let result: &Value = by_id[&ids[0]].last().unwrap();
    assert_eq!(result["request_id"], ids[0].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_through_on_the_plain_brokers_http_url() {
    jobs_through_http_lookup(
        "lookup-http",
        &common::admin_url(),
        &common::pulsar_url(),
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_through_on_the_token_brokers_http_url_with_the_token() {
    jobs_through_http_lookup(
        "lookup-auth",
        &common::auth_admin_url(),
        &common::auth_pulsar_url(),
        Some(common::auth_token()),
    )
    .await;
}

/// Starts a worker on the token broker's HTTP URL with `token` (none when `None`) and returns its
/// exit status and logs once it exits (at most 60 s).
async fn refused_worker(prefix: &str, token: Option<&str>) -> (std::process::ExitStatus, String) {
    let url = common::auth_admin_url();
    common::require_broker(&url).await;
    let mut stack = Stack::new(prefix);
    stack.env.insert("CI_WORKER__PULSAR__URL".into(), url);
    if let Some(t) = token {
        stack
            .env
            .insert("CI_WORKER__PULSAR__TOKEN".into(), t.into());
    }
    stack.start_worker();
    let worker = stack.worker.as_mut().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        // A process's exit has no event to await from std's `Child`: polled.
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a worker without a valid token still runs after 60 s\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stack.worker = None;
    (status, stack.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_token_the_worker_exits_naming_pulsar_token() {
    let admin_token = common::auth_token();
    let wrong = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJub2JvZHkifQ.wrong-signature-lookup-test";
    for (prefix, token) in [("lookup-notoken", None), ("lookup-badtoken", Some(wrong))] {
        let (status, logs) = refused_worker(prefix, token).await;
        assert!(!status.success(), "{prefix}: exited {status}\n{logs}");
        assert!(logs.contains("pulsar.token"), "{prefix}: {logs}");
        assert!(logs.contains("HTTP lookup"), "{prefix}: {logs}");
        for secret in [admin_token.as_str(), wrong, stack::SECRET_KEY] {
            assert!(
                !logs.contains(secret),
                "{prefix}: a log shows a secret\n{logs}"
            );
        }
    }
}

/// A lookup service of the test's own in front of the plain broker: it answers `brokers[i % 2]`
/// for the i-th lookup, and counts lookups.
async fn alternating_lookup(brokers: [String; 2], lookups: Arc<AtomicUsize>) -> String {
    use axum::routing::get;
    let json = |v: Value| {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
    };
    let app = axum::Router::new()
        .route(
            "/lookup/v2/topic/persistent/{tenant}/{ns}/{topic}",
            get(move || {
                let n = lookups.fetch_add(1, Ordering::SeqCst);
                let broker = brokers[n % 2].clone();
                async move { json(serde_json::json!({"brokerUrl": broker})) }
            }),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/partitions",
            get(move || async move { json(serde_json::json!({"partitions": 0})) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_producer_built_looks_the_topic_up_again() {
    let binary = common::pulsar_url();
    common::require_broker(&binary).await;
    // Two spellings of the one real broker: two broker URLs, two crate clients.
    let other = binary.replace("127.0.0.1", "localhost");
    assert_ne!(other, binary, "PULSAR_URL is expected on 127.0.0.1");
    let lookups = Arc::new(AtomicUsize::new(0));
    let url = alternating_lookup([binary, other], lookups.clone()).await;
    let client = ci_worker::pulsar::connect(&url, &ci_worker::secret::Secret::default())
        .await
        .unwrap();
    let topic = common::unique_topic("lookup-relookup");
    let mut results = common::follow(&common::pulsar_url(), None, &topic).await;
    for (i, payload) in ["first", "second", "third"].into_iter().enumerate() {
        // A Publisher per round: each builds its producer anew, as after a failure.
        let publisher = ci_worker::pulsar::Publisher::new(client.clone(), "lookup-test");
        common::within(
            60,
            "a publish through the looked-up broker",
            publisher.publish(&topic, ci_worker::pulsar::Outgoing::new(payload)),
        )
        .await
        .unwrap();
        publisher.close().await;
        assert_eq!(lookups.load(Ordering::SeqCst), i + 1);
        let msg = common::next_message(&mut results, 30).await;
        assert_eq!(msg.payload.data, payload.as_bytes());
    }
}

type Json = (
    axum::http::StatusCode,
    [(axum::http::header::HeaderName, &'static str); 1],
    String,
);

fn json_answer(status: u16, body: String) -> Json {
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

/// Serves `app` on a port of its own; its `http://` URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// An HTTP proxy in front of the broker's HTTP port `target` that records the path and query of
/// every request it forwards.
async fn counting_proxy(target: String, seen: Arc<Mutex<Vec<String>>>) -> String {
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (http, target, seen) = (http.clone(), target.clone(), seen.clone());
        async move {
            let path = uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            seen.lock().unwrap().push(path.clone());
            let answer = http.get(format!("{target}{path}")).send().await.unwrap();
            let status = answer.status().as_u16();
            json_answer(status, answer.text().await.unwrap())
        }
    });
    serve(app).await
}

/// Shared subscription options of the tests below: from the earliest message.
fn shared(topic: &str, subscription: &str) -> SubscribeOptions {
    SubscribeOptions {
        topic: topic.to_string(),
        subscription: subscription.to_string(),
        name_prefix: "lookup-test".into(),
        receiver_queue_size: 16,
        dead_letter: None,
        from_earliest: true,
        kind: SubscriptionKind::Shared,
    }
}

/// Publishes `n` messages (`<prefix><i>`, keyed `k<i>`) to `topic` through a new [`Publisher`] of
/// `client`, so through lookups of its own, and closes it.
async fn publish_through(client: &ci_worker::pulsar::Client, topic: &str, n: usize, prefix: &str) {
    let publisher = Publisher::new(client.clone(), "lookup-test");
    for i in 0..n {
        let msg = Outgoing::new(format!("{prefix}{i}")).with_key(format!("k{i}"));
        common::within(
            60,
            "a publish through the HTTP lookup",
            publisher.publish(topic, msg),
        )
        .await
        .unwrap();
    }
    publisher.close().await;
}

/// Reads `n` messages off `consumer`, acknowledging each; how many came from each partition.
async fn read_partitions(
    consumer: &mut ci_worker::pulsar::subscribe::PulsarConsumer,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut by_topic = BTreeMap::new();
    for _ in 0..n {
        let msg = match common::within(30, "a message", consumer.next()).await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => panic!("consumer stream ended"),
        };
        // As from the crate's own multi-topic consumer: the id names the partition.
        let n: i32 = msg
            .topic
            .rsplit_once("-partition-")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(msg.message_id().partition, Some(n), "{}", msg.topic);
        consumer.ack(&msg).await.unwrap();
        *by_topic.entry(msg.topic.clone()).or_insert(0) += 1;
    }
    by_topic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_is_looked_up_over_http() {
    common::require_broker(&common::admin_url()).await;
    let topic = common::unique_topic("lookup-parts");
    common::create_partitioned_topic(&topic, 4).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = counting_proxy(common::admin_url(), seen.clone()).await;
    let client = ci_worker::pulsar::connect(&url, &Secret::default())
        .await
        .unwrap();

    let mut consumer = common::within(
        60,
        "a consumer through the HTTP lookup",
        subscribe(&client, &shared(&topic, "lookup-parts")),
    )
    .await
    .unwrap();
    let partitions: Vec<String> = (0..4).map(|n| format!("{topic}-partition-{n}")).collect();
    assert_eq!(consumer.topics(), partitions);

    // The worker's producers take the partitions in turn, keys or not: 8 messages, 2 on each.
    publish_through(&client, &topic, 8, "m").await;
    let by_topic = read_partitions(&mut consumer, 8).await;
    let expected: BTreeMap<String, usize> = partitions.iter().map(|p| (p.clone(), 2)).collect();
    assert_eq!(by_topic, expected);
    consumer.close().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let local = topic.rsplit('/').next().unwrap();
    let lookups = |path: &str| seen.iter().filter(|s| s.as_str() == path).count();
    for n in 0..4 {
        let path = format!("/lookup/v2/topic/persistent/public/default/{local}-partition-{n}");
        assert_eq!(
            lookups(&path),
            2,
            "partition {n} looked up once for the consumer, once for the producer: {seen:?}"
        );
    }
    assert_eq!(
        lookups(&format!(
            "/admin/v2/persistent/public/default/{local}/partitions?checkAllowAutoCreation=true"
        )),
        2,
        "{seen:?}"
    );
    assert_eq!(
        lookups(&format!(
            "/lookup/v2/topic/persistent/public/default/{local}"
        )),
        0,
        "the partitioned topic itself has no owner to look up: {seen:?}"
    );
}

/// The stats of `topic` at the broker whose HTTP API is `admin` (with `token`); `null` where it
/// does not serve the topic.
async fn stats_at(admin: &str, token: Option<&str>, topic: &str) -> Value {
    let url = format!("{admin}/admin/v2/{}/stats", topic.replace("://", "/"));
    let mut req = reqwest::Client::new().get(&url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let text = req.send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Creates `topic` with `n` partitions at the broker whose HTTP API is `admin` (with `token`).
async fn create_partitioned_at(admin: &str, token: Option<&str>, topic: &str, n: u32) {
    let url = format!("{admin}/admin/v2/{}/partitions", topic.replace("://", "/"));
    let mut req = reqwest::Client::new()
        .put(&url)
        .header("Content-Type", "application/json")
        .body(n.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let answer = req.send().await.unwrap();
    assert!(
        answer.status().is_success(),
        "PUT {url}: {}",
        answer.status()
    );
}

/// A lookup service that answers `brokers[owner[n]]` for partition `n` of any topic (4 partitions),
/// counting each partition's lookups.
async fn splitting_lookup(
    brokers: [String; 2],
    owner: Arc<Mutex<[usize; 4]>>,
    lookups: Arc<Mutex<[usize; 4]>>,
) -> String {
    use axum::extract::Path;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/lookup/v2/topic/persistent/{tenant}/{ns}/{topic}",
            get(move |Path((_, _, topic)): Path<(String, String, String)>| {
                let n: Option<usize> = topic
                    .rsplit_once("-partition-")
                    .and_then(|(_, n)| n.parse().ok());
                let answer = match n {
                    Some(n) if n < 4 => {
                        lookups.lock().unwrap()[n] += 1;
                        let broker = &brokers[owner.lock().unwrap()[n]];
                        json_answer(200, serde_json::json!({ "brokerUrl": broker }).to_string())
                    }
                    _ => json_answer(404, r#"{"reason":"not a partition"}"#.into()),
                };
                async move { answer }
            }),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{ns}/{topic}/partitions",
            get(|| async { json_answer(200, r#"{"partitions":4}"#.into()) }),
        );
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_partition_is_served_by_the_broker_its_lookup_names() {
    let (plain, auth) = (common::pulsar_url(), common::auth_pulsar_url());
    common::require_broker(&plain).await;
    common::require_broker(&auth).await;
    let token = common::auth_token();
    let admins: [(String, Option<&str>); 2] = [
        (common::admin_url(), None),
        (common::auth_admin_url(), Some(token.as_str())),
    ];
    let topic = common::unique_topic("lookup-split");
    for (admin, token) in &admins {
        create_partitioned_at(admin, *token, &topic, 4).await;
    }
    // Even partitions on the plain broker, odd ones on the token broker (which ignores nothing:
    // the client sends its token to both, and the plain broker has no authentication).
    let owner = Arc::new(Mutex::new([0, 1, 0, 1]));
    let lookups = Arc::new(Mutex::new([0; 4]));
    let url = splitting_lookup([plain, auth], owner.clone(), lookups.clone()).await;
    let client = ci_worker::pulsar::connect(&url, &Secret::new(token.clone()))
        .await
        .unwrap();
    let partition = |n: usize| format!("{topic}-partition-{n}");

    let mut consumer = common::within(
        60,
        "a consumer split between two brokers",
        subscribe(&client, &shared(&topic, "lookup-split")),
    )
    .await
    .unwrap();
    publish_through(&client, &topic, 8, "m").await;
    let by_topic = read_partitions(&mut consumer, 8).await;
    assert_eq!(by_topic.len(), 4, "{by_topic:?}");
    assert_eq!(
        *lookups.lock().unwrap(),
        [2; 4],
        "one lookup per partition each for the consumer and the producer"
    );

    // Each partition's messages and its consumer are at the broker named for it, none at the other.
    for n in 0..4 {
        for (b, (admin, token)) in admins.iter().enumerate() {
            let stats = stats_at(admin, *token, &partition(n)).await;
            let stored = stats["msgInCounter"].as_u64().unwrap_or(0);
            let consumers = stats["subscriptions"]["lookup-split"]["consumers"]
                .as_array()
                .map_or(0, Vec::len);
            if b == [0, 1, 0, 1][n] {
                assert_eq!(
                    (stored, consumers),
                    (2, 1),
                    "partition {n} at its broker {admin}: {stats}"
                );
            } else {
                assert_eq!(
                    (stored, consumers),
                    (0, 0),
                    "partition {n} at the other broker {admin}: {stats}"
                );
            }
        }
    }
    consumer.close().await.unwrap();

    // The lookups now answer the other way round: a producer built again follows them.
    *owner.lock().unwrap() = [1, 0, 1, 0];
    publish_through(&client, &topic, 4, "moved").await;
    assert_eq!(*lookups.lock().unwrap(), [3; 4]);
    let mut at: BTreeSet<(usize, usize, u64)> = BTreeSet::new();
    for n in 0..4 {
        for (b, (admin, token)) in admins.iter().enumerate() {
            let stored = stats_at(admin, *token, &partition(n)).await["msgInCounter"]
                .as_u64()
                .unwrap_or(0);
            at.insert((n, b, stored));
        }
    }
    let expected: BTreeSet<(usize, usize, u64)> = (0..4)
        .flat_map(|n| {
            let first = [0, 1, 0, 1][n];
            [(n, first, 2), (n, 1 - first, 1)]
        })
        .collect();
    assert_eq!(at, expected, "(partition, broker, messages stored)");
}
