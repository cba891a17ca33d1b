//! Operations on a running worker: `/metrics` counters move as jobs flow, `/healthz` and `/readyz`
//! answer, readiness drops when the broker goes away and returns when it is back, and the
//! `pulsar.token` path works against a broker that enforces JWT authentication.

mod common;
mod stack;

use common::{publish, JobRequest};
use stack::{collect, http_get, metric, metrics, wait_status, Stack};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_follow_the_jobs() {
    let mut stack = Stack::new("ops");
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    let base = format!("http://127.0.0.1:{}", stack.worker_http_port);
    wait_status(&format!("{base}/healthz"), 200, Duration::from_secs(30)).await;
    wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(30)).await;
    let before = metrics(stack.worker_http_port).await;
    assert_eq!(metric(&before, "ci_worker_requests_consumed_total"), 0.0);

    let mut payloads: Vec<Vec<u8>> = (0..6)
        .map(|i| JobRequest::watermark(&format!("ops-{i}"), "ops").bytes())
        .collect();
    payloads.push(b"not json".to_vec());
    publish(&common::pulsar_url(), None, &stack.topics.request, payloads).await;
    collect(&mut results, Duration::from_secs(60), |seen| {
        seen.iter()
            .filter(|(p, _, _)| !String::from_utf8_lossy(p).contains("\"submitted\""))
            .count()
            >= 6
    })
    .await;

    // The readiness probe pings with a producer of its own: results never wait behind a ping.
    let body = common::topic_stats(&stack.topics.result).await;
    let producers: Vec<&str> = body["publishers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|p| p["producerName"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let probe = |name: &&str| name.starts_with("ci-worker-probe-");
    assert!(producers.iter().any(probe), "{producers:?}");
    assert!(
        producers
            .iter()
            .any(|name| !probe(name) && name.starts_with("ci-worker-")),
        "{producers:?}"
    );

    // A completion event is acknowledged once its done record is stored, a moment after its
    // result: read the counters once nothing is left in flight.
    stack
        .settle(
            common::BUCKET,
            common::REGION,
            "DigitalWatermark",
            Duration::from_secs(30),
        )
        .await;
    let after = metrics(stack.worker_http_port).await;
    assert_eq!(
        metric(&after, "ci_worker_requests_consumed_total"),
        7.0,
        "{after}"
    );
    assert_eq!(metric(&after, "ci_worker_jobs_submitted_total"), 6.0);
    assert_eq!(
        metric(&after, "ci_worker_results_total{state=\"submitted\"}"),
        6.0
    );
    assert_eq!(
        metric(&after, "ci_worker_results_total{state=\"succeeded\"}"),
        6.0
    );
    assert_eq!(
        metric(&after, "ci_worker_dead_letters_total{source=\"request\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "ci_worker_ci_calls_total{op=\"submit\",outcome=\"ok\",status=\"200\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(&after, "ci_worker_completion_events_total{format=\"json\"}"),
        6.0
    );
    assert_eq!(
        metric(
            &after,
            "ci_worker_ci_call_duration_seconds_count{op=\"submit\"}"
        ),
        6.0
    );
    assert_eq!(metric(&after, "ci_worker_job_duration_seconds_count"), 6.0);
    assert_eq!(metric(&after, "ci_worker_in_flight"), 0.0);
    assert!(stack.stop_worker().unwrap().success());
}

/// The subscriptions on `topic` (the broker's stats).
async fn subscriptions(topic: &str) -> Vec<String> {
    common::topic_stats(topic).await["subscriptions"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Runs `ci-worker submit <payload as a file> --wait --timeout <secs>` with the stack's settings.
async fn submit_and_wait(stack: &Stack, payload: &[u8], timeout_secs: u32) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payload).unwrap();
    let timeout = timeout_secs.to_string();
    let path = file.path().to_str().unwrap();
    stack
        .run_command(&["submit", path, "--wait", "--timeout", &timeout])
        .await
}

/// `ci-worker submit FILE --wait`: prints the job's results through the final one, and leaves
/// neither a subscription on the result topic nor an error line behind, also when it gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_command_follows_its_job_and_cleans_up() {
    let mut stack = Stack::new("cli");
    stack.start_emulator().await;
    stack.start_worker();
    let out = submit_and_wait(
        &stack,
        &JobRequest::watermark("cli-done", "ops").bytes(),
        60,
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let last: serde_json::Value = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .last()
        .expect("a result on stdout");
    assert_eq!(last["request_id"], "cli-done", "{stdout}");
    assert_eq!(last["state"], "succeeded", "{stdout}");
    assert!(!stderr.contains("ERROR"), "{stderr}");

    // A job that never finishes: the command gives up after its timeout, with the reason.
    let lost = JobRequest::watermark("cli-lost", "ops")
        .input("input/__lost__/cli-lost.mp4")
        .bytes();
    let out = submit_and_wait(&stack, &lost, 3).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no final result for cli-lost"), "{stderr}");

    let left: Vec<String> = subscriptions(&stack.topics.result)
        .await
        .into_iter()
        .filter(|s| s.starts_with("ci-worker-submit-cli-"))
        .collect();
    assert!(left.is_empty(), "subscriptions left behind: {left:?}");
    assert!(stack.stop_worker().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_drops_without_the_broker_and_returns_with_it() {
    let mut broker = stack::PrivateBroker::start();
    let mut stack = Stack::on_broker("ready", &broker.url);
    stack.start_emulator().await;
    stack.start_worker();
    let ready = format!("http://127.0.0.1:{}/readyz", stack.worker_http_port);
    wait_status(&ready, 200, Duration::from_secs(60)).await;

    assert!(broker.script("stop"));
    let reason = wait_status(&ready, 503, Duration::from_secs(60)).await;
    assert!(reason.contains("not ready"), "{reason}");
    // Liveness is not readiness: the process is alive and says so.
    let (status, _) = http_get(&format!(
        "http://127.0.0.1:{}/healthz",
        stack.worker_http_port
    ))
    .await;
    assert_eq!(status, 200);

    // Same data directory: the worker reconnects by itself and serves again.
    broker.env.retain(|(k, _)| k != "PULSAR_WIPE");
    assert!(broker.script("start"));
    wait_status(&ready, 200, Duration::from_secs(120)).await;
    let mut results = stack.follow(&stack.topics.result).await;
    publish(
        &broker.url,
        None,
        &stack.topics.request,
        vec![JobRequest::watermark("after-restart", "ops").bytes()],
    )
    .await;
    collect(&mut results, Duration::from_secs(90), |seen| {
        seen.iter()
            .any(|(p, _, _)| String::from_utf8_lossy(p).contains("\"succeeded\""))
    })
    .await;
    assert!(stack.stop_worker().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_authenticates_with_pulsar_token() {
    let mut stack = Stack::new("auth");
    for (k, v) in [
        ("CI_WORKER__PULSAR__URL", common::auth_pulsar_url()),
        ("CI_WORKER__PULSAR__TOKEN", common::auth_token()),
    ] {
        stack.env.insert(k.into(), v);
    }
    stack.start_emulator().await;
    // On the token broker, with the token: the stack's settings.
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    publish(
        &common::auth_pulsar_url(),
        Some(common::auth_token()),
        &stack.topics.request,
        vec![JobRequest::watermark("with-token", "ops").bytes()],
    )
    .await;
    collect(&mut results, Duration::from_secs(60), |seen| {
        seen.iter()
            .any(|(p, _, _)| String::from_utf8_lossy(p).contains("\"succeeded\""))
    })
    .await;
    assert!(stack.stop_worker().unwrap().success());

    // A wrong token: the worker refuses to start, says why, and leaks no token.
    stack.env.insert(
        "CI_WORKER__PULSAR__TOKEN".into(),
        "eyJhbGciOiJIUzI1NiJ9.e30.c2VjcmV0LXRva2Vu".into(),
    );
    stack.start_worker();
    let mut child = stack.worker.take().unwrap();
    let status = common::within(120, "the worker to give up", async {
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(!status.success());
    let logs = stack.logs();
    assert!(logs.contains("refused the handshake"), "{logs}");
    assert!(
        !logs.contains("c2VjcmV0LXRva2Vu"),
        "the token leaked: {logs}"
    );
}
