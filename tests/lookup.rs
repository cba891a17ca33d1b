//! HTTP lookup (`pulsar.url = "http://…"`, TDMQ for Pulsar 2.7.1+'s service URL) against the real
//! brokers: a job through the worker and the emulator on the plain broker's HTTP URL, the same on
//! the token broker with its JWT, a worker refused for a missing or wrong token exiting with an
//! error that names `pulsar.token` and prints no secret, and a client following a lookup service
//! whose answer changes.

mod common;
mod stack;

use common::JobRequest;
use serde_json::Value;
use stack::{all_final, by_request, collect, finals, Stack};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
