//! The completion events' ways in (`worker.callback_ingress`), end to end with the real broker, the
//! emulator and the worker as processes: `cmq` (the emulator writes events into its CMQ queue, as CI
//! does for `CallBackType=TDMQ`), `http` (the emulator POSTs them to the worker, as CI does for
//! `CallBackType=Url`), and what each promises when a part fails: nothing lost, no second final,
//! unreadable events dead-lettered and acknowledged. Each feeds the completion handler directly
//! (the callback topic stays unused). The `pulsar` ingress (something else writes the callback
//! topic) is what `e2e` and the other suites run on.

mod common;
mod stack;

use common::JobRequest;
use pulsar::{Consumer, TokioExecutor};
use stack::{all_final, by_request, collect, finals, metric, metrics, PrivateBroker, Stack};
use std::time::Duration;

fn requests(prefix: &str, n: usize) -> (Vec<String>, Vec<Vec<u8>>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let payloads = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            // Both formats CI writes.
            JobRequest::watermark(id, "ingress-watermark")
                .callback_format(if i % 2 == 0 { "JSON" } else { "XML" })
                .bytes()
        })
        .collect();
    (ids, payloads)
}

/// Publishes `n` requests and waits for every final result; asserts one final `succeeded` each.
/// Returns the follower of the result topic, for what a test expects after the finals.
async fn run_requests(stack: &Stack, prefix: &str, n: usize) -> Consumer<Vec<u8>, TokioExecutor> {
    let mut results = stack.follow(&stack.topics.result).await;
    let (ids, payloads) = requests(prefix, n);
    common::publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;
    let seen = collect(&mut results, Duration::from_secs(150), |seen| {
        all_final(seen, &ids)
    })
    .await;
    let map = by_request(&seen);
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}: {:?}", map[id]);
    }
    results
}

/// Starts the emulator and the worker and waits until the worker is ready; its base URL.
async fn start_ready(stack: &mut Stack) -> String {
    stack.start_emulator().await;
    stack.start_worker();
    let base = format!("http://127.0.0.1:{}", stack.worker_http_port);
    stack::wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;
    base
}

/// A CI completion event (XML) of a job that succeeded.
fn finished_event(job: &str) -> String {
    format!(
        "<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>{job}</JobId>\
         <State>Success</State></JobsDetail></Response>"
    )
}

/// The `job_id`s of the results in `seen`, sorted.
fn sorted_job_ids(seen: &[stack::Received]) -> Vec<String> {
    let mut ids: Vec<String> = seen
        .iter()
        .map(|(p, _, _)| {
            let result: serde_json::Value = serde_json::from_slice(p).unwrap();
            result["job_id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    ids.sort();
    ids
}

/// Starts the worker on a source holding two readable events around an unreadable one: the results
/// of `jobs` (sorted), and the unreadable body dead-lettered with its reason and `source`. The dead
/// letter's properties, and the follower of the dead-letter topic.
async fn handled_around_garbage(
    stack: &mut Stack,
    jobs: [&str; 2],
    garbage: &[u8],
    source: &str,
) -> (
    std::collections::HashMap<String, String>,
    Consumer<Vec<u8>, TokioExecutor>,
) {
    let mut results = stack.follow(&stack.topics.result).await;
    let mut dead = stack.follow(&stack.topics.dead_letter).await;
    stack.start_worker();
    let seen = collect(&mut results, Duration::from_secs(60), |s| s.len() >= 2).await;
    assert_eq!(sorted_job_ids(&seen), jobs);
    let letters = collect(&mut dead, Duration::from_secs(30), |s| !s.is_empty()).await;
    assert_eq!(letters[0].0, garbage);
    let props = letters[0].1.clone();
    assert!(
        props["ci-worker-dlq-reason"].starts_with("unparseable completion event"),
        "{props:?}"
    );
    assert_eq!(props["ci-worker-source-topic"], source);
    (props, dead)
}

/// The source fed the completion handler directly: nothing went through the callback topic.
async fn callback_topic_unused(stack: &Stack) {
    let stats = common::topic_stats(&stack.topics.callback).await;
    let stored = stats["msgInCounter"].as_u64().unwrap_or(0);
    assert_eq!(stored, 0, "events stored in the callback topic: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingress_takes_ci_url_callbacks_to_results() {
    let mut stack = Stack::via_http("ingress-http");
    stack.start_emulator().await;
    stack.start_worker();
    run_requests(&stack, "http", 20).await;
    callback_topic_unused(&stack).await;
    let text = metrics(stack.worker_http_port).await;
    assert_eq!(
        metric(
            &text,
            "ci_worker_ingress_events_total{source=\"http\",outcome=\"stored\"}"
        ),
        20.0,
        "{text}"
    );
}

/// The route answers only its token and bounded bodies; a repeated body gives one result; an
/// unreadable one is dead-lettered with the reason and answered 200 (CI must not retry it forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingress_refuses_strangers_handles_a_repeat_once_and_dead_letters_garbage() {
    let mut stack = Stack::via_http("ingress-http-edge");
    stack.start_worker();
    let base = format!("http://127.0.0.1:{}", stack.worker_http_port);
    stack::wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;
    let mut results = stack.follow(&stack.topics.result).await;
    let mut dead = stack.follow(&stack.topics.dead_letter).await;
    let http = reqwest::Client::new();
    let post = |path: String, body: Vec<u8>| {
        let http = http.clone();
        async move {
            http.post(path)
                .header("Content-Type", "application/xml")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let event = b"<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>j-edge</JobId>\
                  <State>Success</State></JobsDetail></Response>"
        .to_vec();
    let right = format!("{base}/ci/callback/{}", stack::HTTP_CALLBACK_TOKEN);
    assert_eq!(
        post(
            format!("{base}/ci/callback/wrong-token-0123456789"),
            event.clone()
        )
        .await,
        404
    );
    assert_eq!(
        post(format!("{base}/ci/callback/"), event.clone()).await,
        404
    );
    assert_eq!(
        post(
            format!("{base}/callback/{}", stack::HTTP_CALLBACK_TOKEN),
            event.clone()
        )
        .await,
        404
    );
    assert_eq!(
        post(right.clone(), vec![b'<'; 5 * 1024 * 1024 + 1]).await,
        413
    );
    assert_eq!(post(right.clone(), event.clone()).await, 200);
    // CI retrying an answer it did not see.
    assert_eq!(post(right.clone(), event.clone()).await, 200);
    let garbage = b"<Response><JobsDetail>".to_vec();
    assert_eq!(post(right.clone(), garbage.clone()).await, 200);
    let other = b"{\"EventName\":\"TaskFinish\",\"JobsDetail\":{\"JobId\":\"j-other\",\"State\":\"Failed\"}}"
        .to_vec();
    assert_eq!(post(right.clone(), other.clone()).await, 200);
    // Both results arrive, in order; a result of the repeat would sit between them.
    let seen = collect(&mut results, Duration::from_secs(30), |s| s.len() >= 2).await;
    let result = |i: usize| serde_json::from_slice::<serde_json::Value>(&seen[i].0).unwrap();
    assert_eq!(result(0)["job_id"], "j-edge");
    assert_eq!(result(0)["state"], "succeeded");
    assert_eq!(
        result(1)["job_id"],
        "j-other",
        "the repeat gave a second result"
    );
    assert_eq!(result(1)["state"], "failed");
    let letters = collect(&mut dead, Duration::from_secs(30), |s| !s.is_empty()).await;
    assert_eq!(letters[0].0, garbage);
    let reason = &letters[0].1["ci-worker-dlq-reason"];
    assert!(
        reason.starts_with("unparseable completion event"),
        "{reason}"
    );
    assert_eq!(letters[0].1["ci-worker-ingress"], "http");
    let text = metrics(stack.worker_http_port).await;
    assert_eq!(
        metric(
            &text,
            "ci_worker_ingress_events_total{source=\"http\",outcome=\"refused\"}"
        ),
        1.0,
        "only the wrong token counts as refused: {text}"
    );
    assert_eq!(
        metric(
            &text,
            "ci_worker_ingress_events_total{source=\"http\",outcome=\"repeated\"}"
        ),
        1.0,
        "{text}"
    );
    callback_topic_unused(&stack).await;
}

/// With the broker not answering, the ingress answers 5xx (CI keeps the event and retries); the
/// retries give one result once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingress_answers_503_while_the_broker_is_down_and_stores_once() {
    let broker = PrivateBroker::start();
    let mut stack = Stack::via_http("ingress-http-down");
    stack
        .env
        .insert("CI_WORKER__PULSAR__URL".into(), broker.url.clone());
    stack.start_worker();
    let base = format!("http://127.0.0.1:{}", stack.worker_http_port);
    stack::wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;
    let right = format!("{base}/ci/callback/{}", stack::HTTP_CALLBACK_TOKEN);
    let event = b"<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>j-down</JobId>\
                  <State>Success</State></JobsDetail></Response>"
        .to_vec();
    let http = reqwest::Client::new();
    let post = || async {
        http.post(&right)
            .body(event.clone())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    stack::signal_pid(broker.pid(), "STOP");
    let first = post().await;
    let retry = post().await;
    stack::signal_pid(broker.pid(), "CONT");
    assert_eq!(
        (first, retry),
        (503, 503),
        "answers while the broker is stopped"
    );
    // CI retries until it gets its 200.
    let mut last = 0;
    for _ in 0..20 {
        last = post().await;
        if last == 200 {
            break;
        }
    }
    assert_eq!(last, 200, "handled once the broker answers again");
    let mut results = stack.follow(&stack.topics.result).await;
    let seen = collect(&mut results, Duration::from_secs(30), |s| !s.is_empty()).await;
    let result: serde_json::Value = serde_json::from_slice(&seen[0].0).unwrap();
    assert_eq!(result["job_id"], "j-down");
    // Anything after it within a few seconds would be a second final.
    let more = tokio::time::timeout(Duration::from_secs(3), async {
        use futures::StreamExt;
        results.next().await
    })
    .await;
    assert!(
        more.is_err(),
        "a second final: {:?}",
        more.ok().flatten().map(|m| m.map(|m| m.payload.data))
    );
    let text = metrics(stack.worker_http_port).await;
    assert!(
        metric(
            &text,
            "ci_worker_ingress_events_total{source=\"http\",outcome=\"failed\"}"
        ) >= 2.0,
        "{text}"
    );
    drop(broker);
}

/// Arms the emulator's CMQ fault switch (`POST /_emulator/cmq/outage`).
async fn cmq_outage(stack: &Stack, query: &str) {
    let url = format!(
        "http://127.0.0.1:{}/_emulator/cmq/outage?{query}",
        stack.cmq_port
    );
    let status = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{url}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmq_ingress_takes_tdmq_callbacks_to_results() {
    let mut stack = Stack::via_cmq("ingress-cmq");
    stack.start_emulator().await;
    stack.start_worker();
    run_requests(&stack, "cmq", 20).await;
    callback_topic_unused(&stack).await;
    let text = metrics(stack.worker_http_port).await;
    assert_eq!(
        metric(
            &text,
            "ci_worker_ingress_events_total{source=\"cmq\",outcome=\"stored\"}"
        ),
        20.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "ci_worker_cmq_calls_total{action=\"BatchDeleteMessage\",outcome=\"ok\"}"
        ) >= 1.0,
        "{text}"
    );
}

/// CMQ answering 503 for a while: the ingress backs off, shows it, and takes every event once CMQ is
/// back (the deadline is 10 minutes away, so the results can only have come through CMQ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmq_unavailable_for_a_while_loses_nothing() {
    let mut stack = Stack::via_cmq("ingress-cmq-outage");
    let base = start_ready(&mut stack).await;
    cmq_outage(&stack, "seconds=4").await;
    let not_ready =
        stack::wait_status(&format!("{base}/readyz"), 503, Duration::from_secs(30)).await;
    assert!(not_ready.contains("cmq"), "{not_ready}");
    run_requests(&stack, "outage", 20).await;
    let text = metrics(stack.worker_http_port).await;
    assert!(
        metric(
            &text,
            "ci_worker_cmq_calls_total{action=\"BatchReceiveMessage\",outcome=\"http_503\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "ci_worker_deadline_checks_total"),
        0.0,
        "{text}"
    );
    stack::wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(30)).await;
}

/// The stack's CMQ queue, as CI writes into it (a test's own events).
fn cmq_client(stack: &Stack) -> ci_worker::cmq::client::CmqClient {
    ci_worker::cmq::client::CmqClient::new(
        &format!("http://127.0.0.1:{}", stack.cmq_port),
        ci_worker::cmq::sign::CmqCredentials {
            secret_id: stack::SECRET_ID.into(),
            secret_key: ci_worker::secret::Secret::new(stack::SECRET_KEY),
            token: None,
        },
        ci_worker::cmq::sign::SignatureMethod::HmacSha256,
        Duration::from_secs(10),
    )
    .unwrap()
}

/// Waits until the worker's `name_and_labels` metric is at least `at_least`; its text then.
async fn metric_reaches(port: u16, name_and_labels: &str, at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics(port).await;
        if metric(&text, name_and_labels) >= at_least {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name_and_labels} < {at_least}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CMQ_SETTLED: &str = "ci_worker_ingress_events_total{source=\"cmq\",outcome=\"stored\"}";

/// Deletes that fail leave handled events in CMQ; after the visibility timeout CMQ hands them out
/// again and they are handled a second time. The completion handler gives each job one final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cmq_delivers_again_give_no_second_final_result() {
    let mut stack = Stack::via_cmq("ingress-cmq-again");
    stack.env.insert(
        "CI_WORKER__EMULATOR__CMQ_VISIBILITY_TIMEOUT_S".into(),
        "2".into(),
    );
    // One receive loop, so that the three failed deletes below are all the first batch's.
    stack
        .env
        .insert("CI_WORKER__CMQ__CONCURRENCY".into(), "1".into());
    start_ready(&mut stack).await;
    // Every attempt at deleting the first batch fails.
    cmq_outage(&stack, "count=3&actions=BatchDeleteMessage").await;
    let n = 10;
    let mut results = run_requests(&stack, "again", n).await;
    // The undeleted first batch comes again and is handled again: each of those copies was
    // suppressed (a copy counts as suppressed before it counts as handled).
    let text = metric_reaches(stack.worker_http_port, CMQ_SETTLED, n as f64 + 1.0).await;
    let copies = metric(&text, CMQ_SETTLED) - n as f64;
    assert!(
        metric(&text, "ci_worker_duplicates_suppressed_total") >= copies,
        "{copies} copies, not all suppressed: {text}"
    );
    // Nothing after the finals: a second final would have been published before its suppression.
    let more = tokio::time::timeout(Duration::from_secs(2), async {
        use futures::StreamExt;
        results.next().await
    })
    .await;
    assert!(more.is_err(), "a result after the finals");
    callback_topic_unused(&stack).await;
}

/// What the worker cannot read — a body that is no event, a body that is not the event of any job —
/// is dead-lettered with its body and reason and deleted, and the events around it in the same
/// batch are handled: nothing waits for CMQ to drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmq_message_the_worker_cannot_read_is_dead_lettered_and_deleted() {
    let mut stack = Stack::via_cmq("ingress-cmq-garbage");
    stack.env.insert(
        "CI_WORKER__EMULATOR__CMQ_VISIBILITY_TIMEOUT_S".into(),
        "2".into(),
    );
    stack
        .env
        .insert("CI_WORKER__CMQ__CONCURRENCY".into(), "1".into());
    stack.start_emulator().await;
    let cmq = cmq_client(&stack);
    let queue = stack.topics.mq_name.clone();
    // In the queue before the worker starts: one batch of three.
    cmq.send_message(&queue, &finished_event("j-before"))
        .await
        .unwrap();
    cmq.send_message(&queue, "this is not an event")
        .await
        .unwrap();
    cmq.send_message(&queue, &finished_event("j-after"))
        .await
        .unwrap();
    let (props, mut dead) = handled_around_garbage(
        &mut stack,
        ["j-after", "j-before"],
        b"this is not an event",
        &format!("cmq:{queue}"),
    )
    .await;
    assert_eq!(props["cmq-dequeue-count"], "1");
    // Deleted with the others: after the visibility timeout has passed twice, nothing came again.
    metric_reaches(stack.worker_http_port, CMQ_SETTLED, 3.0).await;
    let again = tokio::time::timeout(Duration::from_secs(5), async {
        use futures::StreamExt;
        dead.next().await
    })
    .await;
    assert!(again.is_err(), "the unreadable message came again");
    let text = metrics(stack.worker_http_port).await;
    assert_eq!(metric(&text, CMQ_SETTLED), 3.0, "{text}");
}

/// TDMQ for CMQ deletes an event nobody deleted within the queue's Max Message Unack Time. Here CMQ
/// is out of the worker's reach for longer than that (30 s): the events are gone when it comes
/// back, and each job's deadline finds its outcome by describing it at CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cmq_dropped_after_the_unack_time_are_found_by_deadlines() {
    let mut stack = Stack::via_cmq("ingress-cmq-unack");
    stack.env.extend([
        (
            "CI_WORKER__EMULATOR__CMQ_MAX_UNACK_TIME".into(),
            "30s".into(),
        ),
        ("CI_WORKER__WORKER__JOB_TIMEOUT".into(), "45s".into()),
    ]);
    start_ready(&mut stack).await;
    cmq_outage(&stack, "seconds=40&actions=BatchReceiveMessage").await;
    let n = 6;
    run_requests(&stack, "unack", n).await;
    let text = metrics(stack.worker_http_port).await;
    assert_eq!(
        metric(&text, CMQ_SETTLED),
        0.0,
        "the events were gone when CMQ came back: {text}"
    );
    assert!(
        metric(&text, "ci_worker_deadline_checks_total") >= n as f64,
        "{text}"
    );
}

/// A worker SIGKILLed with CMQ batches in hand, then started again: every job ends with its final
/// result and none with two different ones; the events it held are shown again after the
/// visibility timeout. (A final it had published but not deleted the event of is published once
/// more, with the same state: README Guarantees.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmq_reader_killed_mid_batch_loses_nothing() {
    let mut stack = Stack::via_cmq("ingress-cmq-kill");
    stack.env.insert(
        "CI_WORKER__EMULATOR__CMQ_VISIBILITY_TIMEOUT_S".into(),
        "3".into(),
    );
    killed_mid_batch(stack, "cmq").await;
}

/// 300 jobs through `stack`'s ingress, the worker SIGKILLed once 80 have their final and started
/// again: every job ends `succeeded` (no second final with another state), no request has a second
/// CI job, nothing goes through the callback topic. The repeated finals are counted and said.
async fn killed_mid_batch(mut stack: Stack, source: &str) {
    stack.env.extend([
        ("CI_WORKER__EMULATOR__JOB_DURATION_MS".into(), "300".into()),
        ("CI_WORKER__WORKER__JOB_TIMEOUT".into(), "5m".into()),
    ]);
    stack.start_emulator().await;
    let mut results = stack.follow_in_background(&stack.topics.result).await;
    stack.start_worker();
    let n = 300;
    let (ids, payloads) = requests(&format!("{source}-kill"), n);
    common::publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;
    results
        .until(Duration::from_secs(120), |s| {
            s.iter()
                .filter(|(_, p, _)| p.get("state").map(String::as_str) == Some("succeeded"))
                .count()
                >= 80
        })
        .await;
    stack.kill_worker();
    stack.start_worker();
    results
        .until(Duration::from_secs(240), |s| all_final(s, &ids))
        .await;
    let map = by_request(&results.snapshot());
    let mut repeated = 0;
    for id in &ids {
        let f = finals(&map[id]);
        assert!(f.iter().all(|s| *s == "succeeded"), "{id}: {f:?}");
        repeated += f.len() - 1;
    }
    let jobs = stack
        .ci_jobs_per_request(common::BUCKET, common::REGION, "DigitalWatermark")
        .await;
    let extra_jobs: usize = jobs.values().map(|n| n - 1).sum();
    eprintln!(
        "{source} kill: {n} requests, {repeated} repeated finals, {extra_jobs} extra CI jobs"
    );
    assert_eq!(extra_jobs, 0, "{jobs:?}");
    callback_topic_unused(&stack).await;
}

/// Two replicas reading one CMQ queue (competing consumers): every job still gets exactly one final
/// result, and the two together handled every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_cmq_queue() {
    let mut stack = Stack::via_cmq("ingress-cmq-replicas");
    stack.start_emulator().await;
    stack.start_worker();
    let second_port = stack::free_port();
    let mut second = stack.spawn_replica(second_port);
    for port in [stack.worker_http_port, second_port] {
        stack::wait_status(
            &format!("http://127.0.0.1:{port}/readyz"),
            200,
            Duration::from_secs(60),
        )
        .await;
    }
    let n = 40;
    run_requests(&stack, "replicas", n).await;
    let mut handled = 0.0;
    for port in [stack.worker_http_port, second_port] {
        let text = metrics(port).await;
        handled += metric(&text, CMQ_SETTLED);
    }
    assert!(handled >= n as f64, "{handled} events handled for {n} jobs");
    callback_topic_unused(&stack).await;
    let _ = second.kill();
    let _ = second.wait();
}

const KAFKA_SETTLED: &str = "ci_worker_ingress_events_total{source=\"kafka\",outcome=\"stored\"}";

/// A producer of the test's own to the Kafka broker (CI writing into the topic).
fn kafka_producer() -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .create()
        .expect("a Kafka producer")
}

async fn produce(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    body: &[u8],
) {
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), [u8]>::to(topic)
                .partition(partition)
                .payload(body),
            Duration::from_secs(30),
        )
        .await
        .expect("the Kafka broker stored the record");
}

/// What the worker's group committed on each partition of `topic` (-1001: nothing yet).
async fn committed(stack: &Stack, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let group = stack.env["CI_WORKER__KAFKA__GROUP_ID"].clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::kafka_brokers())
            .set("group.id", group)
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
        }
        consumer
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap_or(-1))
            .collect()
    })
    .await
    .unwrap()
}

/// Waits until the group's committed offsets of `topic` satisfy `done`, failing after 30 s with the
/// last ones read. Polled: a commit has no event another client can await.
async fn await_committed(
    stack: &Stack,
    topic: &str,
    partitions: i32,
    done: impl Fn(&[i64]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let offsets = committed(stack, topic, partitions).await;
        if done(&offsets) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {offsets:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `CallBackType=Kafka`: the emulator writes XML and JSON events into the CKafka topic, the `kafka`
/// ingress reads them in its group: one final each, nothing through the callback topic, and the
/// group's offsets committed to the end of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_ingress_takes_ckafka_callbacks_to_results() {
    let mut stack = Stack::via_kafka("ingress-kafka", 3).await;
    stack.start_emulator().await;
    stack.start_worker();
    run_requests(&stack, "kafka", 20).await;
    callback_topic_unused(&stack).await;
    let text = metric_reaches(stack.worker_http_port, KAFKA_SETTLED, 20.0).await;
    assert_eq!(metric(&text, KAFKA_SETTLED), 20.0, "{text}");
    await_committed(&stack, &stack.kafka_topic(), 3, |offsets| {
        offsets.iter().map(|o| (*o).max(0)).sum::<i64>() == 20
    })
    .await;
}

/// A record the worker cannot read is dead-lettered with its body, the reason and its partition, and
/// the group's offset moves past it; the records around it are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_record_the_worker_cannot_read_is_dead_lettered_and_committed() {
    let mut stack = Stack::via_kafka("ingress-kafka-garbage", 1).await;
    let topic = stack.kafka_topic();
    let producer = kafka_producer();
    produce(&producer, &topic, 0, finished_event("k-before").as_bytes()).await;
    produce(&producer, &topic, 0, b"{\"not\": \"an event\"").await;
    produce(&producer, &topic, 0, finished_event("k-after").as_bytes()).await;
    let (props, _) = handled_around_garbage(
        &mut stack,
        ["k-after", "k-before"],
        b"{\"not\": \"an event\"",
        &format!("kafka:{topic}/0"),
    )
    .await;
    assert_eq!(props["kafka-offset"], "1");
    // Past the three records: the unreadable one in the middle did not hold the offset.
    await_committed(&stack, &topic, 1, |offsets| offsets == [3]).await;
}

/// A replica takes a partition over from an owner that was killed with records handled past its
/// committed offset: the commit's metadata names those still in flight then (here records 0 and 3
/// of 6), and the new owner handles only them, passing over the others without a second final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_the_last_owner_handled_are_passed_over() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let mut stack = Stack::via_kafka("ingress-kafka-inherit", 1).await;
    let topic = stack.kafka_topic();
    let producer = kafka_producer();
    for i in 0..6 {
        produce(
            &producer,
            &topic,
            0,
            finished_event(&format!("inherit-{i}")).as_bytes(),
        )
        .await;
    }
    // The last owner's commit, as the worker writes it: offset 0, six records from there, the
    // first and the fourth not handled.
    let group = stack.env["CI_WORKER__KAFKA__GROUP_ID"].clone();
    let committer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::kafka_brokers())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(0))
        .unwrap();
    list.find_partition(&topic, 0)
        .unwrap()
        .set_metadata("ci-worker/1 6 0,3");
    committer.commit(&list, CommitMode::Sync).unwrap();
    drop(committer);
    let mut results = stack.follow(&stack.topics.result).await;
    stack.start_worker();
    let seen = collect(&mut results, Duration::from_secs(60), |s| s.len() >= 2).await;
    assert_eq!(sorted_job_ids(&seen), ["inherit-0", "inherit-3"]);
    let skipped = "ci_worker_ingress_events_total{source=\"kafka\",outcome=\"skipped\"}";
    metric_reaches(stack.worker_http_port, skipped, 4.0).await;
    await_committed(&stack, &topic, 1, |offsets| offsets == [6]).await;
    let text = metrics(stack.worker_http_port).await;
    assert_eq!(metric(&text, KAFKA_SETTLED), 2.0, "{text}");
    assert_eq!(metric(&text, skipped), 4.0, "{text}");
}

/// The Kafka broker stopped (SIGSTOP) for a while with jobs under way: the emulator's deliveries and
/// the ingress wait, and every job still gets one final once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unavailable_for_a_while_loses_nothing() {
    let mut stack = Stack::via_kafka("ingress-kafka-outage", 2).await;
    start_ready(&mut stack).await;
    let pid = common::kafka_pid();
    let mut results = stack.follow(&stack.topics.result).await;
    let (ids, payloads) = requests("kafka-outage", 20);
    stack::signal_pid(pid, "STOP");
    common::publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;
    // The jobs finish at CI meanwhile; their events cannot be written or read.
    let submitted = collect(&mut results, Duration::from_secs(60), |s| s.len() >= 20).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack::signal_pid(pid, "CONT");
    let rest = collect(&mut results, Duration::from_secs(180), |s| {
        let mut all = submitted.clone();
        all.extend(s.iter().cloned());
        all_final(&all, &ids)
    })
    .await;
    let mut seen = submitted;
    seen.extend(rest);
    let map = by_request(&seen);
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}: {:?}", map[id]);
    }
    let text = metrics(stack.worker_http_port).await;
    assert_eq!(
        metric(&text, "ci_worker_deadline_checks_total"),
        0.0,
        "{text}"
    );
}

/// A worker SIGKILLed with records in hand, then started again: every job ends with its final and
/// none with two different ones; the records after the group's last commit are read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_reader_killed_mid_batch_loses_nothing() {
    killed_mid_batch(Stack::via_kafka("ingress-kafka-kill", 2).await, "kafka").await;
}

/// Two replicas in one group: the second joins while events flow and leaves (SIGTERM) while they
/// still flow. The rebalances move partitions with their settled offsets committed first: every job
/// gets exactly one final, and both replicas took events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_kafka_topic_through_rebalances() {
    let mut stack = Stack::via_kafka("ingress-kafka-replicas", 4).await;
    stack.start_emulator().await;
    let mut results = stack.follow_in_background(&stack.topics.result).await;
    stack.start_worker();
    let n = 300;
    let (ids, payloads) = requests("kafka-replicas", n);
    // A steady 20 requests/s for 15 s, so that events flow through both rebalances.
    let url = stack.pulsar_url();
    let topic = stack.topics.request.clone();
    let publisher = tokio::spawn(async move {
        for chunk in payloads.chunks(5) {
            common::publish(&url, None, &topic, chunk.to_vec()).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let finals_seen = |s: &[stack::Received]| {
        s.iter()
            .filter(|(_, p, _)| p.get("state").map(String::as_str) == Some("succeeded"))
            .count()
    };
    results
        .until(Duration::from_secs(120), |s| finals_seen(s) >= 20)
        .await;
    let second = stack.start_replica();
    second.ready(Duration::from_secs(60)).await;
    // It has taken events once its KAFKA_SETTLED moves.
    metric_reaches(second.port, KAFKA_SETTLED, 10.0).await;
    let second_took = metric(&metrics(second.port).await, KAFKA_SETTLED);
    let (status, _) = second.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    publisher.await.unwrap();
    results
        .until(Duration::from_secs(240), |s| all_final(s, &ids))
        .await;
    let map = by_request(&results.snapshot());
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}: {:?}", map[id]);
    }
    let first_took = metric(&metrics(stack.worker_http_port).await, KAFKA_SETTLED);
    eprintln!("kafka replicas: first {first_took}, second at least {second_took} events");
}
