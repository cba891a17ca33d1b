//! SIGTERM under load, as Kubernetes sends it on every rolling update: each process ends within its
//! bound and exits 0 whatever the backlog, CI's or the broker's state, and what it could not settle
//! in time is left to the broker, so that a second worker brings every request to a final result.
//!
//! The bound is `worker.shutdown_timeout` (5 s here) plus [`MARGIN`], the documented allowance for
//! releasing what is left and closing the connections (README, Guarantees).

mod common;
mod stack;

use common::{publish, JobRequest};
use stack::{all_final, by_request, collect, finals, signal_pid, PrivateBroker, Stack};
use std::time::Duration;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// What README Guarantees allows past `worker.shutdown_timeout`.
const MARGIN: Duration = Duration::from_secs(5);
/// Past this a test stops waiting and fails with the processes' logs.
const GIVE_UP: Duration = Duration::from_secs(60);

async fn publish_requests(stack: &Stack, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let payloads = ids
        .iter()
        .map(|id| {
            JobRequest::watermark(id, "term")
                .input(&format!("in/{id}.mp4"))
                .output(&format!("out/{id}.mp4"))
                .bytes()
        })
        .collect();
    publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;
    ids
}

/// CI answering in 300 ms, 16 requests in flight, [`SHUTDOWN_TIMEOUT`]: work is always under way.
const SLOW: [(&str, &str); 4] = [
    ("CI_WORKER__EMULATOR__LATENCY_MS", "300"),
    ("CI_WORKER__WORKER__MAX_IN_FLIGHT", "16"),
    ("CI_WORKER__WORKER__SHUTDOWN_TIMEOUT", "5s"),
    ("CI_WORKER__WORKER__JOB_TIMEOUT", "5m"),
];

fn slow_stack(prefix: &str, url: Option<&str>) -> Stack {
    let mut stack = match url {
        Some(url) => Stack::on_broker(prefix, url),
        None => Stack::new(prefix),
    };
    stack
        .env
        .extend(SLOW.map(|(k, v)| (k.to_string(), v.to_string())));
    stack
}

fn assert_ended_in_time(what: &str, status: std::process::ExitStatus, took: Duration) {
    eprintln!("{what}: exit {status} {took:?} after SIGTERM");
    assert!(status.success(), "{what} exited {status}");
    assert!(
        took <= SHUTDOWN_TIMEOUT + MARGIN,
        "{what} took {took:?} to exit after SIGTERM (bound {:?})",
        SHUTDOWN_TIMEOUT + MARGIN
    );
}

/// A second worker, faster than the first, takes over; every request ends with exactly the
/// expected final state.
async fn second_worker_finishes(
    stack: &mut Stack,
    results: &mut pulsar::Consumer<Vec<u8>, pulsar::TokioExecutor>,
    mut seen: Vec<stack::Received>,
    ids: &[String],
) {
    stack
        .env
        .insert("CI_WORKER__WORKER__MAX_IN_FLIGHT".into(), "128".into());
    stack.start_worker();
    let rest = collect(results, Duration::from_secs(300), |s| {
        let mut all = seen.clone();
        all.extend(s.iter().cloned());
        all_final(&all, ids)
    })
    .await;
    seen.extend(rest);
    let map = by_request(&seen);
    for id in ids {
        let f = finals(&map[id]);
        assert!(f.iter().all(|s| *s == "succeeded"), "{id}: {f:?}");
    }
}

/// Thousands of requests queued behind the in-flight ones, CI answering in 300 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_backlog_and_slow_ci_ends_in_time() {
    let mut stack = slow_stack("term-backlog", None);
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    let ids = publish_requests(&stack, "term-backlog", 1000).await;
    stack.start_worker();
    // Under way: results are coming out, and nearly all the requests are still queued.
    let seen = collect(&mut results, GIVE_UP, |s| s.len() >= 32).await;
    let (status, took) = stack.terminate_worker(GIVE_UP);
    assert_ended_in_time("worker with a backlog", status, took);
    second_worker_finishes(&mut stack, &mut results, seen, &ids).await;
}

/// CI unreachable: every handler is in its retry backoff when the signal comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_ci_is_unreachable_ends_in_time() {
    let mut stack = slow_stack("term-noci", None);
    let mut results = stack.follow(&stack.topics.result).await;
    // The emulator is not started yet: the worker's CI calls find nobody listening. The requests
    // come once it serves, so that they are submitted (and retried), not checked as leftovers of an
    // earlier process.
    stack.start_worker();
    let metrics_port = stack.worker_http_port;
    stack::wait_status(
        &format!("http://127.0.0.1:{metrics_port}/readyz"),
        200,
        GIVE_UP,
    )
    .await;
    let ids = publish_requests(&stack, "term-noci", 200).await;
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    loop {
        let (_, text) = stack::http_get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
        if stack::metric(&text, "ci_worker_ci_retries_total") >= 16.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never retried a CI call"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, took) = stack.terminate_worker(GIVE_UP);
    assert_ended_in_time("worker with CI unreachable", status, took);
    stack.start_emulator().await;
    second_worker_finishes(&mut stack, &mut results, Vec::new(), &ids).await;
}

/// The broker stops answering (its process is stopped, its connections stay open) while the worker
/// has work in flight and a backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_stopped_answering_ends_in_time() {
    let broker = PrivateBroker::start();
    let mut stack = slow_stack("term-broker", Some(&broker.url));
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    let ids = publish_requests(&stack, "term-broker", 400).await;
    stack.start_worker();
    let seen = collect(&mut results, GIVE_UP, |s| s.len() >= 32).await;
    signal_pid(broker.pid(), "STOP");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stack.terminate_worker(GIVE_UP)
    }));
    signal_pid(broker.pid(), "CONT");
    let (status, took) = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_ended_in_time("worker with the broker stopped", status, took);
    second_worker_finishes(&mut stack, &mut results, seen, &ids).await;
}

/// The Kafka broker stops answering while the `kafka` ingress has records in hand: the last commit
/// and leaving the group wait on it, and the exit must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_kafka_broker_stopped_answering_ends_in_time() {
    let mut stack = Stack::via_kafka("term-kafka", 2).await;
    stack
        .env
        .extend(SLOW.map(|(k, v)| (k.to_string(), v.to_string())));
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    let ids = publish_requests(&stack, "term-kafka", 200).await;
    stack.start_worker();
    // Under way: events are coming back through Kafka into final results.
    let seen = collect(&mut results, GIVE_UP, |s| {
        by_request(s)
            .values()
            .filter(|r| !finals(r).is_empty())
            .count()
            >= 8
    })
    .await;
    let kafka = common::kafka_pid();
    signal_pid(kafka, "STOP");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stack.terminate_worker(GIVE_UP)
    }));
    signal_pid(kafka, "CONT");
    let (status, took) = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_ended_in_time("worker with the Kafka broker stopped", status, took);
    second_worker_finishes(&mut stack, &mut results, seen, &ids).await;
}

/// The emulator with jobs running and events still to deliver, and `ci-worker submit --wait`
/// waiting for a result that does not come: both end promptly; the client removes its subscription
/// and says it was interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_and_submit_wait_end_on_sigterm() {
    let mut stack = slow_stack("term-tools", None);
    stack.env.insert(
        "CI_WORKER__EMULATOR__JOB_DURATION_MS".into(),
        "30000".into(),
    );
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    let ids = publish_requests(&stack, "term-tools", 100).await;
    stack.start_worker();
    // Every job is created (its `submitted` event is out) and still running at the emulator.
    collect(&mut results, GIVE_UP, |s| s.len() >= ids.len()).await;
    let (status, took) = stack.terminate_emulator(GIVE_UP);
    assert_ended_in_time("emulator with running jobs", status, took);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("request.json");
    let request = JobRequest::watermark("term-tools-wait", "term")
        .input("in/wait.mp4")
        .output("out/wait.mp4")
        .bytes();
    std::fs::write(&file, request).unwrap();
    let mut client = stack.spawn_command(&[
        "submit",
        "--wait",
        "--timeout",
        "600",
        file.to_str().unwrap(),
    ]);
    // Its subscription on the result topic shows that it is waiting.
    let subscriptions = |stats: &serde_json::Value| {
        stats["subscriptions"]
            .as_object()
            .map(|m| {
                m.keys()
                    .filter(|k| k.starts_with("ci-worker-submit-cli"))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    while subscriptions(&common::topic_stats(&stack.topics.result).await) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "submit --wait never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, took) = stack::terminate(&mut client, GIVE_UP, "ci-worker submit --wait");
    eprintln!("submit --wait: exit {status} {took:?} after SIGTERM");
    assert_eq!(
        status.code(),
        Some(1),
        "interrupted before its final result: exit 1"
    );
    assert!(took <= MARGIN, "submit --wait took {took:?} to end");
    assert_eq!(
        subscriptions(&common::topic_stats(&stack.topics.result).await),
        0,
        "submit --wait left its subscription behind"
    );
}
