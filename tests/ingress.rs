//! The completion events' ways in (`worker.callback_ingress`), end to end with the real broker, the
//! emulator and the worker as processes: `cmq` (the emulator writes events into its CMQ queue, as CI
//! does for `CallBackType=TDMQ`), `http` (the emulator POSTs them to the worker, as CI does for
//! `CallBackType=Url`), and what each promises when a part fails: nothing lost, nothing twice.
//! The `pulsar` ingress (something else writes the callback topic) is what `e2e` and the other
//! suites run on.

mod common;
mod stack;

use common::JobRequest;
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

/// Publishes `n` requests and waits for every final result; asserts one final `succeeded` each and
/// returns the `ci-worker-ingress` property of each message on the callback topic.
async fn run_requests(stack: &Stack, prefix: &str, n: usize) -> Vec<String> {
    let mut results = stack.follow(&stack.topics.result).await;
    let mut callbacks = stack.follow(&stack.topics.callback).await;
    let (ids, payloads) = requests(prefix, n);
    common::publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;
    let seen = collect(&mut results, Duration::from_secs(120), |seen| {
        all_final(seen, &ids)
    })
    .await;
    let map = by_request(&seen);
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}: {:?}", map[id]);
    }
    let events = collect(&mut callbacks, Duration::from_secs(30), |seen| {
        seen.len() >= n
    })
    .await;
    events
        .iter()
        .map(|(_, props, _)| props.get("ci-worker-ingress").cloned().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingress_takes_ci_url_callbacks_to_results() {
    let mut stack = Stack::via_http("ingress-http");
    stack.start_emulator().await;
    stack.start_worker();
    let sources = run_requests(&stack, "http", 20).await;
    assert!(sources.iter().all(|s| s == "http"), "{sources:?}");
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

/// The route answers only its token, bounded bodies, and a repeated body is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingress_refuses_strangers_and_stores_a_repeat_once() {
    let mut stack = Stack::via_http("ingress-http-edge");
    stack.start_worker();
    let base = format!("http://127.0.0.1:{}", stack.worker_http_port);
    stack::wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;
    let mut callbacks = stack.follow(&stack.topics.callback).await;
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
    let other = b"{\"EventName\":\"TaskFinish\",\"JobsDetail\":{\"JobId\":\"j-other\"}}".to_vec();
    assert_eq!(post(right.clone(), other.clone()).await, 200);
    // Both distinct events arrive, in order; the repeat of the first would sit between them.
    let seen = collect(&mut callbacks, Duration::from_secs(30), |s| s.len() >= 2).await;
    assert_eq!(seen[0].0, event);
    assert_eq!(seen[0].2.as_deref(), Some("j-edge"), "keyed by job id");
    assert_eq!(
        seen[1].0, other,
        "the repeated body was stored a second time"
    );
    let text = metrics(stack.worker_http_port).await;
    assert_eq!(
        metric(
            &text,
            "ci_worker_ingress_events_total{source=\"http\",outcome=\"refused\"}"
        ),
        1.0,
        "only the wrong token counts as refused: {text}"
    );
}

/// With the broker not answering, the ingress answers 5xx (CI keeps the event and retries); the
/// retries store nothing twice once the broker is back.
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
    assert_eq!(last, 200, "stored once the broker answers again");
    let mut callbacks = stack.follow(&stack.topics.callback).await;
    let seen = collect(&mut callbacks, Duration::from_secs(30), |s| !s.is_empty()).await;
    assert_eq!(seen[0].0, event);
    // Anything after it within a few seconds would be a second copy.
    let more = tokio::time::timeout(Duration::from_secs(3), async {
        use futures::StreamExt;
        callbacks.next().await
    })
    .await;
    assert!(
        more.is_err(),
        "a second copy of the event: {:?}",
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
    let sources = run_requests(&stack, "cmq", 20).await;
    assert!(sources.iter().all(|s| s == "cmq"), "{sources:?}");
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
    stack.start_emulator().await;
    stack.start_worker();
    let base = format!("http://127.0.0.1:{}", stack.worker_http_port);
    stack::wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;
    cmq_outage(&stack, "seconds=4").await;
    let not_ready =
        stack::wait_status(&format!("{base}/readyz"), 503, Duration::from_secs(30)).await;
    assert!(not_ready.contains("cmq"), "{not_ready}");
    let sources = run_requests(&stack, "outage", 20).await;
    assert!(sources.iter().all(|s| s == "cmq"), "{sources:?}");
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

/// Deletes that fail leave stored events in CMQ; after the visibility timeout CMQ hands them out
/// again and they are stored a second time. The completion path gives each job one final result.
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
    stack.start_emulator().await;
    stack.start_worker();
    let base = format!("http://127.0.0.1:{}", stack.worker_http_port);
    stack::wait_status(&format!("{base}/readyz"), 200, Duration::from_secs(60)).await;
    // Every attempt at deleting the first batch fails.
    cmq_outage(&stack, "count=3&actions=BatchDeleteMessage").await;
    let n = 10;
    let mut callbacks = stack.follow(&stack.topics.callback).await;
    let mut results = stack.follow(&stack.topics.result).await;
    let (ids, payloads) = requests("again", n);
    common::publish(&stack.pulsar_url(), None, &stack.topics.request, payloads).await;
    // The stored copies: each job once, and the undeleted ones again with dequeueCount 2.
    let events = collect(&mut callbacks, Duration::from_secs(120), |seen| {
        seen.len() > n
            && seen
                .iter()
                .any(|(_, p, _)| p.get("cmq-dequeue-count").map(String::as_str) == Some("2"))
    })
    .await;
    let seen = collect(&mut results, Duration::from_secs(120), |seen| {
        all_final(seen, &ids)
    })
    .await;
    let map = by_request(&seen);
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}: {:?}", map[id]);
    }
    // Every second copy stored so far reaches the completion path and is suppressed there.
    let copies = (events.len() - n) as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics(stack.worker_http_port).await;
        if metric(&text, "ci_worker_duplicates_suppressed_total") >= copies {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{copies} copies, not all suppressed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing after the finals: a second final would have been published before its suppression.
    let more = tokio::time::timeout(Duration::from_secs(2), async {
        use futures::StreamExt;
        results.next().await
    })
    .await;
    assert!(more.is_err(), "a result after the finals");
}

/// Two replicas reading one CMQ queue (competing consumers): every job still gets exactly one final
/// result, and the two together stored every event.
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
    let sources = run_requests(&stack, "replicas", n).await;
    assert!(sources.iter().all(|s| s == "cmq"), "{sources:?}");
    let mut stored = 0.0;
    for port in [stack.worker_http_port, second_port] {
        let text = metrics(port).await;
        stored += metric(
            &text,
            "ci_worker_ingress_events_total{source=\"cmq\",outcome=\"stored\"}",
        );
    }
    assert!(stored >= n as f64, "{stored} events stored for {n} jobs");
    let _ = second.kill();
    let _ = second.wait();
}
