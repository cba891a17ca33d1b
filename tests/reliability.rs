//! What happens when things break, proven against the real broker, the emulator and the `ci-worker`
//! binary as processes: a worker killed mid-flight, answers lost after CI created the job, a broker
//! restart, CI throttling and errors with duplicate callbacks, lost callbacks across a restart,
//! deadlines across two replicas, scale-out (three replicas, two killed mid-submission, on plain and
//! on 4-partition topics; a rolling update under load), hostile input with secrets kept out of logs
//! and dead letters, and poison messages.
//!
//! 1. `worker_killed_mid_flight_loses_nothing_and_submits_once`
//! 2. `lost_submit_answers_do_not_create_second_jobs`
//! 3. `broker_restart_loses_nothing`
//! 4. `ci_faults_and_duplicate_callbacks`
//!    - 4b. `a_ci_rate_limit_costs_no_request_and_no_second_job`
//! 5. `lost_callbacks_are_found_by_deadlines_across_a_restart`
//!    - 5b. `deadlines_of_finished_jobs_cost_nothing_across_replicas`
//!    - 5c. `replicas_killed_mid_submission_create_no_second_job` and
//!      `replicas_killed_mid_submission_create_no_second_job_partitioned`
//!    - 5d. `rolling_update_creates_no_extra_job_and_no_duplicate_final`
//! 6. `hostile_input_is_refused_or_escaped_and_secrets_stay_secret`
//! 7. `poison_messages_are_dead_lettered_with_their_history`

mod common;
mod stack;

use common::{publish, JobRequest, BUCKET, REGION};
use serde_json::json;
use stack::{all_final, by_request, collect, finals, metric, metrics, Stack};
use std::time::Duration;

/// Publishes `n` requests `<prefix>-<i>` whose input object is `object(id)`; returns their ids.
async fn publish_requests(
    stack: &Stack,
    prefix: &str,
    n: usize,
    object: impl Fn(&str) -> String,
) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let payloads = ids
        .iter()
        .map(|id| {
            JobRequest::watermark(id, "reliable")
                .input(&object(id))
                .user_data(&format!("data of {id}"))
                .bytes()
        })
        .collect();
    publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;
    ids
}

/// 1. `kill -9` with 500 requests in flight, then a restart: every request ends with a final result,
///    none with two different final states, and no request has two CI jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_flight_loses_nothing_and_submits_once() {
    let mut stack = Stack::new("crash");
    stack.env.extend([
        ("CI_WORKER__EMULATOR__JOB_DURATION_MS".into(), "300".into()),
        ("CI_WORKER__WORKER__JOB_TIMEOUT".into(), "5m".into()),
    ]);
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    let ids = publish_requests(&stack, "crash", 500, |id| format!("in/{id}.mp4")).await;
    // Kill it once a good part of the work is under way.
    let mut seen = collect(&mut results, Duration::from_secs(120), |s| s.len() >= 150).await;
    stack.kill_worker();
    stack.start_worker();
    let rest = collect(&mut results, Duration::from_secs(240), |s| {
        let mut all = seen.to_vec();
        all.extend(s.iter().cloned());
        all_final(&all, &ids)
    })
    .await;
    seen.extend(rest);

    let map = by_request(&seen);
    let (mut duplicate_finals, mut duplicate_submitted) = (0, 0);
    for id in &ids {
        let results = &map[id];
        let f = finals(results);
        assert!(f.iter().all(|s| *s == "succeeded"), "{id}: {f:?}");
        duplicate_finals += f.len() - 1;
        duplicate_submitted += results.len() - f.len() - 1.min(results.len() - f.len());
    }
    let jobs = stack
        .ci_jobs_per_request(BUCKET, REGION, "DigitalWatermark")
        .await;
    let duplicate_jobs: usize = jobs.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: 500 requests, {duplicate_finals} duplicate final results, \
         {duplicate_submitted} duplicate submitted events, {duplicate_jobs} duplicate CI jobs"
    );
    assert_eq!(jobs.len(), 500, "every request has a CI job");
    assert_eq!(
        duplicate_jobs, 0,
        "no request was submitted twice: {jobs:?}"
    );
}

/// 2. A `POST /jobs` whose answer never comes (the job was created): the retry finds the job by its
///    marker instead of creating a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_submit_answers_do_not_create_second_jobs() {
    let mut stack = Stack::new("ambiguous");
    stack.env.extend([
        // The job outlives the lost answer, so the retry finds it still running.
        ("CI_WORKER__EMULATOR__JOB_DURATION_MS".into(), "4000".into()),
        ("CI_WORKER__CI__REQUEST_TIMEOUT".into(), "1s".into()),
        ("CI_WORKER__WORKER__RETRY_BASE_DELAY".into(), "100ms".into()),
    ]);
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    let ids = publish_requests(&stack, "hangup", 5, |id| format!("in/__hangup__/{id}.mp4")).await;
    // The `submitted` event can only come from the job the retry found (its answer never came).
    let seen = collect(&mut results, Duration::from_secs(120), |s| {
        let map = by_request(s);
        all_final(s, &ids)
            && ids
                .iter()
                .all(|id| map[id].iter().any(|r| r["state"] == "submitted"))
    })
    .await;
    let map = by_request(&seen);
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}");
    }
    let jobs = stack
        .ci_jobs_per_request(BUCKET, REGION, "DigitalWatermark")
        .await;
    for id in &ids {
        assert_eq!(jobs.get(id), Some(&1), "{id}: {jobs:?}");
    }
    let m = metrics(stack.worker_http_port).await;
    assert_eq!(
        metric(&m, "ci_worker_submissions_recovered_total"),
        5.0,
        "{m}"
    );
}

/// 3. The broker restarts mid-run (same data): the worker reconnects by itself and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing() {
    let mut broker = stack::PrivateBroker::start();
    let mut stack = Stack::on_broker("restart", &broker.url);
    stack.start_emulator().await;
    stack.start_worker();
    let first: Vec<String> = (0..100).map(|i| format!("before-{i}")).collect();
    let second: Vec<String> = (0..100).map(|i| format!("after-{i}")).collect();
    let encode = |ids: &[String]| -> Vec<Vec<u8>> {
        ids.iter()
            .map(|id| {
                JobRequest::watermark(id, "reliable")
                    .input(&format!("in/{id}.mp4"))
                    .user_data(&format!("data of {id}"))
                    .bytes()
            })
            .collect()
    };
    let mut results = stack.follow(&stack.topics.result).await;
    publish(&broker.url, None, &stack.topics.request, encode(&first)).await;
    collect(&mut results, Duration::from_secs(120), |s| s.len() >= 40).await;
    drop(results);
    broker.restart();
    publish(&broker.url, None, &stack.topics.request, encode(&second)).await;
    // A new reader from the start of the topic: everything before and after the restart.
    let mut all = stack.follow(&stack.topics.result).await;
    let ids: Vec<String> = first.iter().chain(&second).cloned().collect();
    let seen = collect(&mut all, Duration::from_secs(300), |s| all_final(s, &ids)).await;
    let map = by_request(&seen);
    for id in &ids {
        let f = finals(&map[id]);
        assert!(
            !f.is_empty() && f.iter().all(|s| *s == "succeeded"),
            "{id}: {f:?}"
        );
    }
    assert!(stack.stop_worker().unwrap().success());
}

/// 4. CI throttles 30% and fails 10% of submissions, and delivers every callback twice: all jobs
///    complete, retries show in the metrics, and no job gets two final results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_faults_and_duplicate_callbacks() {
    let mut stack = Stack::new("faults");
    stack.env.extend([
        ("CI_WORKER__EMULATOR__THROTTLE_RATE".into(), "0.3".into()),
        ("CI_WORKER__EMULATOR__ERROR_RATE".into(), "0.1".into()),
        ("CI_WORKER__EMULATOR__DUPLICATE_RATE".into(), "1.0".into()),
        ("CI_WORKER__WORKER__RETRY_BASE_DELAY".into(), "20ms".into()),
        ("CI_WORKER__WORKER__RETRY_MAX_DELAY".into(), "200ms".into()),
        ("CI_WORKER__WORKER__RETRY_MAX_ATTEMPTS".into(), "8".into()),
    ]);
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    let ids = publish_requests(&stack, "faulty", 120, |id| format!("in/{id}.mp4")).await;
    let seen = collect(&mut results, Duration::from_secs(180), |s| {
        all_final(s, &ids)
    })
    .await;
    // Every duplicate callback has been consumed once the metrics count them all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = metrics(stack.worker_http_port).await;
        if metric(&m, "ci_worker_completion_events_total{format=\"json\"}") >= 240.0 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "duplicates not consumed: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let later = collect(&mut results, Duration::from_secs(5), |_| true).await;
    let mut all = seen;
    all.extend(later);
    let map = by_request(&all);
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}");
    }
    assert!(metric(&m, "ci_worker_ci_retries_total") > 0.0, "{m}");
    assert!(
        metric(
            &m,
            "ci_worker_ci_calls_total{op=\"submit\",outcome=\"transient\",status=\"429\"}"
        ) > 0.0
    );
    assert!(
        metric(
            &m,
            "ci_worker_ci_calls_total{op=\"submit\",outcome=\"transient\",status=\"503\"}"
        ) > 0.0
    );
    assert_eq!(
        metric(&m, "ci_worker_duplicates_suppressed_total"),
        120.0,
        "{m}"
    );
    let jobs = stack
        .ci_jobs_per_request(BUCKET, REGION, "DigitalWatermark")
        .await;
    assert!(jobs.values().all(|n| *n == 1), "{jobs:?}");
}

/// 4b. CI limits calls per second (the emulator's `qps_limit`, far below what the worker would send)
///     and the worker is not told: it learns a pace and fewer submissions in flight from the 429s,
///     and still turns every request into exactly one CI job, one `submitted` event and one final
///     result. Outcomes only; the speed it reaches is the benchmark's (`--only throttle`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_rate_limit_costs_no_request_and_no_second_job() {
    let mut stack = Stack::new("qps");
    stack.env.extend([
        ("CI_WORKER__EMULATOR__QPS_LIMIT".into(), "8".into()),
        ("CI_WORKER__EMULATOR__JOB_DURATION_MS".into(), "300".into()),
        ("CI_WORKER__WORKER__RETRY_MAX_ATTEMPTS".into(), "8".into()),
    ]);
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    let ids = publish_requests(&stack, "paced", 60, |id| format!("in/{id}.mp4")).await;
    let seen = collect(&mut results, Duration::from_secs(180), |s| {
        all_final(s, &ids)
    })
    .await;
    // Anything published late (a duplicate) would be in by now.
    let later = collect(&mut results, Duration::from_secs(2), |_| true).await;
    let mut all = seen;
    all.extend(later);
    let map = by_request(&all);
    for id in &ids {
        let states: Vec<&str> = map[id].iter().filter_map(|r| r["state"].as_str()).collect();
        assert_eq!(states, ["submitted", "succeeded"], "{id}");
    }
    let m = metrics(stack.worker_http_port).await;
    assert!(
        metric(
            &m,
            "ci_worker_ci_calls_total{op=\"submit\",outcome=\"transient\",status=\"429\"}"
        ) > 0.0,
        "CI did throttle: {m}"
    );
    assert!(
        metric(&m, "ci_worker_ci_rate_limit") > 0.0,
        "a pace was learnt: {m}"
    );
    assert!(metric(&m, "ci_worker_ci_concurrency_limit") >= 1.0, "{m}");
    // The emulator's window has room again for the test's own list call.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let jobs = stack
        .ci_jobs_per_request(BUCKET, REGION, "DigitalWatermark")
        .await;
    assert_eq!(jobs.len(), ids.len(), "{jobs:?}");
    assert!(jobs.values().all(|n| *n == 1), "{jobs:?}");
}

/// 5. A job whose completion event never comes is found by its deadline, even across a restart of the
///    worker (the deadline lives in Pulsar); one that never finishes ends `timed_out`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_callbacks_are_found_by_deadlines_across_a_restart() {
    let mut stack = Stack::new("deadline");
    stack.env.extend([
        ("CI_WORKER__EMULATOR__JOB_DURATION_MS".into(), "1000".into()),
        ("CI_WORKER__WORKER__JOB_TIMEOUT".into(), "3s".into()),
        ("CI_WORKER__WORKER__JOB_TIMEOUT_MAX".into(), "7s".into()),
        (
            "CI_WORKER__PULSAR__DEADLINE_TOPIC".into(),
            common::unique_topic("deadlines"),
        ),
    ]);
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    let lost: Vec<String> = (0..3).map(|i| format!("lost-{i}")).collect();
    let slow: Vec<String> = (0..2).map(|i| format!("slow-{i}")).collect();
    let mut payloads = Vec::new();
    for id in &lost {
        payloads.push(
            JobRequest::watermark(id, "reliable")
                .input(&format!("in/__lost__/{id}.mp4"))
                .user_data(&format!("data of {id}"))
                .bytes(),
        );
    }
    for id in &slow {
        payloads.push(
            JobRequest::watermark(id, "reliable")
                .input(&format!("in/__slow__/{id}.mp4"))
                .user_data(&format!("data of {id}"))
                .bytes(),
        );
    }
    publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;
    let mut seen = collect(&mut results, Duration::from_secs(60), |s| s.len() >= 5).await;
    // Every job is submitted and has its deadline; the worker that scheduled them goes away.
    stack.kill_worker();
    stack.start_worker();
    let ids: Vec<String> = lost.iter().chain(&slow).cloned().collect();
    let rest = collect(&mut results, Duration::from_secs(120), |s| {
        let mut all = seen.to_vec();
        all.extend(s.iter().cloned());
        all_final(&all, &ids)
    })
    .await;
    seen.extend(rest);
    let map = by_request(&seen);
    for id in &lost {
        let f = finals(&map[id]);
        assert_eq!(f, ["succeeded"], "{id}");
        let r = map[id].iter().find(|r| r["state"] == "succeeded").unwrap();
        assert_eq!(r["user_data"], format!("data of {id}"));
        assert!(r["finished_at"].is_string());
    }
    for id in &slow {
        assert_eq!(finals(&map[id]), ["timed_out"], "{id}");
        let r = map[id].iter().find(|r| r["state"] == "timed_out").unwrap();
        assert!(r["job_id"].is_string());
        assert_eq!(r["input"]["object"], format!("in/__slow__/{id}.mp4"));
        assert_eq!(r["user_data"], format!("data of {id}"));
    }
    // The timed-out jobs were cancelled at CI, so no late success follows.
    let ci = stack.ci_client();
    for r in slow
        .iter()
        .map(|id| map[id].iter().find(|r| r["state"] == "timed_out").unwrap())
    {
        let job_id = r["job_id"].as_str().unwrap();
        let described = ci.describe(BUCKET, REGION, &[job_id]).await.unwrap();
        assert_eq!(described.jobs[0].tree().text_at(&["State"]), Some("Cancel"));
    }
}

/// 5b. With two replicas on a two-partition request topic, every job's deadline record is
///     cancelled by whichever replica finishes the job: none is delivered, no job is described for
///     nothing, no final result is published twice, and the replicas never read each other's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_of_finished_jobs_cost_nothing_across_replicas() {
    const JOB_TIMEOUT: Duration = Duration::from_secs(10);
    let mut stack = Stack::new("replicas");
    stack.env.extend([
        ("CI_WORKER__EMULATOR__JOB_DURATION_MS".into(), "200".into()),
        (
            "CI_WORKER__WORKER__JOB_TIMEOUT".into(),
            format!("{}s", JOB_TIMEOUT.as_secs()),
        ),
        ("CI_WORKER__WORKER__MAX_IN_FLIGHT".into(), "4".into()),
    ]);
    stack.partition_topics(2).await;
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    let second_port = stack::free_port();
    let mut second = stack.spawn_replica(second_port);
    for port in [stack.worker_http_port, second_port] {
        let ready = format!("http://127.0.0.1:{port}/readyz");
        stack::wait_status(&ready, 200, Duration::from_secs(60)).await;
    }
    stack
        .await_consumers(
            &stack.topics.request,
            "ci-worker",
            2,
            Duration::from_secs(60),
        )
        .await;
    let ids = publish_requests(&stack, "replica", 100, |id| format!("in/{id}.mp4")).await;
    let mut seen = collect(&mut results, Duration::from_secs(120), |s| {
        all_final(s, &ids)
    })
    .await;
    let deadline_topic = &stack.topics.deadline;
    // Every record cancelled: the subscription holds none, long before any is due.
    let cancelled_by = tokio::time::Instant::now() + JOB_TIMEOUT / 2;
    loop {
        let body = common::topic_stats(deadline_topic).await;
        if body["subscriptions"]["ci-worker"]["msgBacklog"].as_i64() == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < cancelled_by,
            "deadlines still pending: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past the time every record was due: none was delivered.
    tokio::time::sleep(JOB_TIMEOUT).await;
    seen.extend(collect(&mut results, Duration::from_secs(2), |_| true).await);
    let map = by_request(&seen);
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}");
    }
    // Under TDMQ's rules: a Shared subscription (the only kind TDMQ delays messages on), one record
    // per request, published before its job existed.
    let deadlines = common::topic_stats(deadline_topic).await;
    let sub = &deadlines["subscriptions"]["ci-worker"];
    assert_eq!(sub["type"], "Shared", "{deadlines}");
    assert_eq!(
        deadlines["msgInCounter"].as_u64(),
        Some(ids.len() as u64),
        "one record per request: {deadlines}"
    );
    assert_eq!(
        sub["msgOutCounter"].as_u64(),
        Some(0),
        "none delivered: {deadlines}"
    );
    let first_metrics = metrics(stack.worker_http_port).await;
    let second_metrics = metrics(second_port).await;
    for m in [&first_metrics, &second_metrics] {
        assert_eq!(metric(m, "ci_worker_deadline_checks_total"), 0.0, "{m}");
    }
    // Both replicas took part: each owns a partition of the requests.
    assert!(metric(&first_metrics, "ci_worker_requests_consumed_total") > 0.0);
    assert!(metric(&second_metrics, "ci_worker_requests_consumed_total") > 0.0);
    second.kill().unwrap();
    second.wait().unwrap();
}

/// The emulator setting that holds CI's answers after the job was created (`answer_delay_ms`).
const ANSWER_DELAY_ENV: &str = "CI_WORKER__EMULATOR__ANSWER_DELAY_MS";

/// A stack of three replicas under load for the scale-out tests: `max_in_flight` 8, CI answers held
/// 150 ms after the job was created, jobs finishing during the run; on `partitions`-partitioned
/// request, callback, result and deadline topics when `partitions` > 0.
async fn scale_out_stack(
    prefix: &str,
    partitions: u32,
) -> (Stack, stack::Follower, Vec<stack::Replica>) {
    let mut stack = Stack::new(prefix);
    stack.env.extend([
        ("CI_WORKER__EMULATOR__JOB_DURATION_MS".into(), "500".into()),
        (ANSWER_DELAY_ENV.into(), "150".into()),
        ("CI_WORKER__WORKER__MAX_IN_FLIGHT".into(), "8".into()),
        // No deadline comes due during the test: every final result comes from a completion event.
        ("CI_WORKER__WORKER__JOB_TIMEOUT".into(), "5m".into()),
        ("CI_WORKER__WORKER__SHUTDOWN_TIMEOUT".into(), "5s".into()),
    ]);
    if partitions > 0 {
        stack.partition_topics(partitions).await;
    }
    stack.start_emulator().await;
    let results = stack.follow_in_background(&stack.topics.result).await;
    let replicas: Vec<stack::Replica> = (0..3).map(|_| stack.start_replica()).collect();
    for topic in [&stack.topics.request, &stack.topics.callback] {
        stack
            .await_consumers(topic, "ci-worker", replicas.len(), Duration::from_secs(60))
            .await;
    }
    (stack, results, replicas)
}

/// What a scale-out run produced, per request and in CI.
struct Outcome {
    duplicate_finals: usize,
    duplicate_submitted: usize,
    extra_jobs: Vec<(String, usize)>,
    without_job: usize,
    wrong_finals: Vec<String>,
}

/// Waits for every request's final result and for the workers to have nothing left to do, then
/// reads everything the result topic holds and counts.
async fn outcome(stack: &Stack, results: &mut stack::Follower, ids: &[String]) -> Outcome {
    results
        .until(Duration::from_secs(120), |s| all_final(s, ids))
        .await;
    stack
        .settle(BUCKET, REGION, "DigitalWatermark", Duration::from_secs(60))
        .await;
    let seen = results.drain(Duration::from_secs(30)).await;
    let map = by_request(&seen);
    let (mut duplicate_finals, mut duplicate_submitted) = (0, 0);
    let mut wrong_finals = Vec::new();
    for id in ids {
        let f = finals(&map[id]);
        if !f.iter().all(|s| *s == "succeeded") {
            wrong_finals.push(format!("{id}: {f:?}"));
        }
        duplicate_finals += f.len() - 1;
        duplicate_submitted += (map[id].len() - f.len()).saturating_sub(1);
    }
    let jobs = stack
        .ci_jobs_per_request(BUCKET, REGION, "DigitalWatermark")
        .await;
    let mut extra_jobs: Vec<(String, usize)> = jobs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.clone(), *n))
        .collect();
    extra_jobs.sort();
    let without_job = ids.iter().filter(|id| !jobs.contains_key(*id)).count();
    Outcome {
        duplicate_finals,
        duplicate_submitted,
        extra_jobs,
        without_job,
        wrong_finals,
    }
}

impl Outcome {
    fn extra_job_count(&self) -> usize {
        self.extra_jobs.iter().map(|(_, n)| n - 1).sum()
    }

    fn report(&self, what: &str, n: usize, started: std::time::Instant) {
        eprintln!(
            "{what}: {n} requests, {} extra CI jobs (on {} requests), {} duplicate final results, \
             {} duplicate submitted events, {} requests without a job, {:?} wall time",
            self.extra_job_count(),
            self.extra_jobs.len(),
            self.duplicate_finals,
            self.duplicate_submitted,
            self.without_job,
            started.elapsed()
        );
        if !self.extra_jobs.is_empty() {
            eprintln!(
                "{what}: requests with more than one CI job: {:?}",
                self.extra_jobs
            );
        }
    }
}

/// The completion path's in-flight bound (`max(worker.max_in_flight, 256)`): results published but
/// not yet acknowledged when a replica dies, each published again by whoever gets the event next.
const COMPLETION_IN_FLIGHT: usize = 256;

/// 5c. Scale-out: three replicas on the same subscriptions; two of them are killed with `kill -9`
///     and restarted at once while requests are still being submitted. No request gets a second CI
///     job, every request ends `succeeded`, and duplicate final results stay within what the
///     completion path can have had in flight in the killed replicas.
async fn replicas_killed_mid_submission(partitions: u32) {
    const N: usize = 600;
    let started = std::time::Instant::now();
    let prefix = if partitions > 0 {
        "scalekillp"
    } else {
        "scalekill"
    };
    let (mut stack, mut results, mut replicas) = scale_out_stack(prefix, partitions).await;
    let ids = publish_requests(&stack, prefix, N, |id| format!("in/{id}.mp4")).await;
    let mut submitted_at_kill = Vec::new();
    for (victim, after) in [(0, 150), (1, 300)] {
        results
            .until(Duration::from_secs(120), |s| s.len() >= after)
            .await;
        let submitted = by_request(&results.snapshot())
            .values()
            .filter(|r| r.iter().any(|v| v["state"] == "submitted"))
            .count();
        submitted_at_kill.push(submitted);
        let fresh = stack.start_replica();
        std::mem::replace(&mut replicas[victim], fresh).kill();
    }
    let outcome = outcome(&stack, &mut results, &ids).await;
    let what = format!("scale-out kill, {partitions} partitions");
    eprintln!("{what}: requests submitted when each replica was killed: {submitted_at_kill:?}");
    outcome.report(&what, N, started);
    assert!(
        submitted_at_kill.iter().all(|n| *n < N),
        "each kill came while requests were still being submitted: {submitted_at_kill:?}"
    );
    assert!(
        outcome.wrong_finals.is_empty(),
        "{:?}",
        outcome.wrong_finals
    );
    assert_eq!(outcome.without_job, 0, "every request has a CI job");
    assert!(
        outcome.duplicate_finals <= 2 * COMPLETION_IN_FLIGHT,
        "{} duplicate final results for 2 killed replicas",
        outcome.duplicate_finals
    );
    assert_eq!(
        outcome.extra_job_count(),
        0,
        "no request has a second CI job: {:?}",
        outcome.extra_jobs
    );
    drop(replicas);
    drop(stack);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_mid_submission_create_no_second_job() {
    replicas_killed_mid_submission(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_killed_mid_submission_create_no_second_job_partitioned() {
    replicas_killed_mid_submission(4).await;
}

/// 5d. A rolling update of three replicas under load: one at a time, SIGTERM, its replacement started
///     at once, the old one's exit awaited (status 0 within `worker.shutdown_timeout` + 5 s), while
///     requests are being submitted and completion events flow. Nothing lost, no extra CI job, no
///     duplicate final result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_creates_no_extra_job_and_no_duplicate_final() {
    const N: usize = 600;
    let started = std::time::Instant::now();
    let (mut stack, mut results, mut replicas) = scale_out_stack("rolling", 0).await;
    let ids = publish_requests(&stack, "rolling", N, |id| format!("in/{id}.mp4")).await;
    results
        .until(Duration::from_secs(120), |s| s.len() >= 100)
        .await;
    let mut exits = Vec::new();
    for slot in replicas.iter_mut() {
        let fresh = stack.start_replica();
        let leaving = std::mem::replace(slot, fresh);
        // shutdown_timeout (5 s) + 5 s.
        exits.push(leaving.terminate(Duration::from_secs(10)).await);
    }
    let in_progress = {
        let seen = results.snapshot();
        let map = by_request(&seen);
        let finished = ids
            .iter()
            .filter(|id| map.get(*id).is_some_and(|r| !finals(r).is_empty()))
            .count();
        let submitted = map
            .values()
            .filter(|r| r.iter().any(|v| v["state"] == "submitted"))
            .count();
        (submitted, finished)
    };
    let outcome = outcome(&stack, &mut results, &ids).await;
    eprintln!(
        "rolling update: exits {:?}; when the last replica had exited, {} requests were submitted \
         and {} final",
        exits, in_progress.0, in_progress.1
    );
    outcome.report("rolling update", N, started);
    assert!(
        in_progress.0 < N,
        "the rolling update ended while requests were still being submitted"
    );
    for (status, took) in &exits {
        assert!(status.success(), "a replica exited {status} after {took:?}");
    }
    assert!(
        outcome.wrong_finals.is_empty(),
        "{:?}",
        outcome.wrong_finals
    );
    assert_eq!(outcome.without_job, 0, "every request has a CI job");
    assert_eq!(
        outcome.extra_job_count(),
        0,
        "no extra CI job: {:?}",
        outcome.extra_jobs
    );
    assert_eq!(outcome.duplicate_finals, 0, "no duplicate final result");
    drop(replicas);
}

/// 6. Hostile input: invalid UTF-8, deep nesting, markup and injection attempts in text fields, a
///    large payload. Nothing crashes, nothing is lost (each ends as a result or a dead letter), text
///    comes back exactly as sent, and the secrets appear nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_or_escaped_and_secrets_stay_secret() {
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.TOKEN-SECRET-VALUE";
    let mut stack = Stack::new("hostile");
    stack
        .env
        .insert("CI_WORKER__PULSAR__TOKEN".into(), TOKEN.into());
    stack.env.insert("RUST_LOG".into(), "debug".into());
    stack.start_emulator().await;
    let mut results = stack.follow(&stack.topics.result).await;
    let mut dead = stack.follow(&stack.topics.dead_letter).await;
    stack.start_worker();

    let injection =
        r#"</UserData><Tag>Evil</Tag><!ENTITY x SYSTEM "file:///etc/passwd">&x; ]]> "' ciw1:x;"#;
    let mut nested = String::new();
    for _ in 0..10_000 {
        nested.push_str("{\"a\":");
    }
    nested.push('1');
    for _ in 0..10_000 {
        nested.push('}');
    }
    let mut big = JobRequest::watermark("big", "reliable")
        .input("in/big.mp4")
        .user_data("data of big")
        .json();
    big["job"]["Operation"]["Padding"] = json!("x".repeat(4 * 1024 * 1024));
    // Nested past serde_json's limit, even with a request_id inside, it is not readable JSON.
    let unreadable: Vec<Vec<u8>> = vec![
        vec![0xc3, 0x28, 0xa0, 0xa1],
        nested.clone().into_bytes(),
        format!("{{\"request_id\": \"deep\", \"job\": {nested}}}").into_bytes(),
    ];
    let mut escaped = JobRequest::watermark("escaped", "reliable")
        .input("in/<&>\"'.mp4")
        .user_data("data of escaped")
        .json();
    escaped["job"]["Operation"]["UserData"] = json!(injection);
    let mut evil_tag = JobRequest::watermark("evil-tag", "reliable")
        .input("in/x.mp4")
        .user_data("data of evil-tag")
        .json();
    evil_tag["job"]["Tag"] = json!("</Tag><Input>");
    let mut payloads = unreadable.clone();
    payloads.push(escaped.to_string().into_bytes());
    payloads.push(evil_tag.to_string().into_bytes());
    payloads.push(big.to_string().into_bytes());
    publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;

    let ids = vec![
        "escaped".to_string(),
        "evil-tag".to_string(),
        "big".to_string(),
    ];
    let seen = collect(&mut results, Duration::from_secs(120), |s| {
        all_final(s, &ids)
    })
    .await;
    let map = by_request(&seen);
    let escaped_result = map["escaped"]
        .iter()
        .find(|r| r["state"] != "submitted")
        .unwrap();
    assert_eq!(escaped_result["state"], "succeeded", "{escaped_result}");
    assert_eq!(
        escaped_result["user_data"], injection,
        "text comes back exactly"
    );
    assert_eq!(escaped_result["input"]["object"], "in/<&>\"'.mp4");
    let evil = map["evil-tag"]
        .iter()
        .find(|r| r["state"] != "submitted")
        .unwrap();
    assert_eq!(evil["state"], "rejected", "{evil}");
    assert!(finals(&map["big"]).len() == 1);

    let letters = collect(&mut dead, Duration::from_secs(60), |s| s.len() >= 3).await;
    let mut got: Vec<Vec<u8>> = letters.iter().map(|(p, _, _)| p.clone()).collect();
    got.sort();
    let mut want = unreadable.clone();
    want.sort();
    assert!(
        got == want,
        "the dead letters are the unreadable payloads, untouched"
    );

    // The worker is still serving, and no secret was written anywhere.
    let m = metrics(stack.worker_http_port).await;
    assert!(metric(&m, "ci_worker_requests_consumed_total") >= 6.0);
    assert!(stack.stop_worker().unwrap().success());
    let logs = stack.logs();
    assert!(logs.contains("dead-lettering"), "logs were captured");
    for secret in [stack::SECRET_KEY, TOKEN] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
        for (payload, props, _) in &letters {
            assert!(!String::from_utf8_lossy(payload).contains(secret));
            assert!(props.values().all(|v| !v.contains(secret)));
        }
    }
}

/// 7. A message that keeps failing goes to the dead-letter topic after `worker.max_redeliveries`,
///    untouched, with its history in properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_their_history() {
    let mut stack = Stack::new("poison");
    stack.env.extend([
        ("CI_WORKER__EMULATOR__ERROR_RATE".into(), "1.0".into()),
        ("CI_WORKER__WORKER__RETRY_MAX_ATTEMPTS".into(), "1".into()),
        ("CI_WORKER__WORKER__MAX_REDELIVERIES".into(), "3".into()),
    ]);
    stack.start_emulator().await;
    let mut dead = stack.follow(&stack.topics.dead_letter).await;
    stack.start_worker();
    let payload = JobRequest::watermark("poison-1", "reliable")
        .input("in/p.mp4")
        .user_data("data of poison-1")
        .bytes();
    publish(
        &stack.pulsar_url(),
        None,
        &stack.topics.request,
        vec![payload.clone()],
    )
    .await;
    let letters = collect(&mut dead, Duration::from_secs(60), |s| !s.is_empty()).await;
    let (got, props, _) = &letters[0];
    assert_eq!(got, &payload, "payload untouched");
    assert_eq!(props["ci-worker-attempts"], "3");
    assert!(
        props["ci-worker-dlq-reason"].contains("ServiceUnavailable"),
        "{props:?}"
    );
    assert!(props.contains_key("ci-worker-first-failure-at"));
    assert_eq!(props["ci-worker-source-topic"], stack.topics.request);
    // And it does not come back.
    let m = metrics(stack.worker_http_port).await;
    assert_eq!(metric(&m, "ci_worker_requests_consumed_total"), 3.0, "{m}");
}
