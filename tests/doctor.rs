//! `ci-worker doctor` against the real emulator and the real broker: the local stack passes every
//! check (exit 0), and each broken setup fails the check that names it, with its fix (exit 1).

mod common;
mod stack;

use common::{BUCKET, REGION};
use stack::Stack;
use std::time::Duration;

/// A stack on CI's documented TDMQ path (the `cmq` ingress) whose topics exist, the request topic
/// partitioned, as an operator would have created them.
async fn stack(prefix: &str, emulator_env: &[(&str, &str)]) -> Stack {
    common::require_broker(&common::pulsar_url()).await;
    let mut stack = Stack::via_cmq(prefix);
    for (k, v) in emulator_env {
        stack.env.insert(k.to_string(), v.to_string());
    }
    common::create_partitioned_topic(&stack.topics.request, 2).await;
    let t = stack.topics.clone();
    for topic in [&t.callback, &t.result, &t.dead_letter, &t.deadline] {
        create_topic(topic).await;
    }
    stack.start_emulator().await;
    stack
}

/// Creates a topic that is not partitioned (`PUT /admin/v2/<topic>`).
async fn create_topic(topic: &str) {
    let url = format!(
        "{}/admin/v2/{}",
        common::admin_url(),
        topic.replace("://", "/")
    );
    let status = reqwest::Client::new()
        .put(&url)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "PUT {url}: {status}");
}

/// Whether the broker knows `topic` (non-partitioned), asked through the admin API.
async fn topic_exists(topic: &str) -> bool {
    let (tenant_ns, _) = topic
        .trim_start_matches("persistent://")
        .rsplit_once('/')
        .unwrap();
    let url = format!("{}/admin/v2/persistent/{tenant_ns}", common::admin_url());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let listed: Vec<String> = serde_json::from_str(&text).unwrap();
    listed.iter().any(|t| t == topic)
}

/// What one doctor run printed and how it exited.
struct Run {
    lines: Vec<String>,
    code: Option<i32>,
    stderr: String,
}

impl Run {
    fn fails(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.starts_with("FAIL"))
            .map(String::as_str)
            .collect()
    }

    /// The line of the check named `name` (its start after the status).
    fn line(&self, name: &str) -> &str {
        self.lines
            .iter()
            .find(|l| l.get(8..).is_some_and(|rest| rest.starts_with(name)))
            .unwrap_or_else(|| panic!("no line for {name:?} in {:#?}\n{}", self.lines, self.stderr))
    }
}

async fn doctor(stack: &Stack, args: &[&str]) -> Run {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let out = tokio::time::timeout(Duration::from_secs(120), stack.run_command(&all))
        .await
        .expect("doctor ends");
    Run {
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

const FOR_BUCKET: [&str; 4] = ["--bucket", BUCKET, "--region", REGION];

fn ci(what: &str) -> String {
    format!("ci {BUCKET} ({REGION}) {what}")
}

#[tokio::test]
async fn the_local_stack_passes_every_check_and_changes_nothing() {
    let stack = stack("doctor-ok", &[]).await;
    let run = doctor(&stack, &FOR_BUCKET).await;
    assert_eq!(run.code, Some(0), "{:#?}\n{}", run.lines, run.stderr);
    assert!(run.fails().is_empty(), "{:#?}", run.lines);
    let t = &stack.topics;
    for (name, starts) in [
        (
            "credentials",
            "ok      credentials: from keys (ci.secret_id / TENCENTCLOUD_SECRET_ID)",
        ),
        (
            &ci("binding"),
            "ok      ci examplebucket-1250000000 (ap-guangzhou) binding: CI accepted the signature and lists 1 media queue(s)",
        ),
        (&ci("media queue"), "ok      ci examplebucket-1250000000 (ap-guangzhou) media queue: the default queue"),
        (&ci("submit permission"), "ok      ci examplebucket-1250000000 (ap-guangzhou) submit permission: CI refused an empty POST /jobs for its content"),
        (&ci("job queries"), "ok      ci examplebucket-1250000000 (ap-guangzhou) job queries: GET /jobs and GET /jobs/<id> answered"),
        ("callback route", "ok      callback route: ci.callback_type = TDMQ is read by worker.callback_ingress cmq"),
        (&format!("cmq queue {}", t.mq_name), &format!("ok      cmq queue {}: exists at http://127.0.0.1:{} (visibilityTimeout 30s", t.mq_name, stack.cmq_port)),
        ("cmq unack time", "ok      cmq unack time: Max Message Unack Time 3600s ≥ worker.job_timeout 600s"),
        ("pulsar broker", "ok      pulsar broker: pulsar.url pulsar://"),
        (&format!("pulsar.request_topic {}", t.request), &format!("ok      pulsar.request_topic {}: exists (2 partitions); a throwaway subscription accepted and deleted", t.request)),
        (&format!("pulsar.result_topic {}", t.result), &format!("ok      pulsar.result_topic {}: exists (not partitioned); a producer accepted (nothing sent)", t.result)),
        (&format!("pulsar.deadline_topic {}", t.deadline), &format!("ok      pulsar.deadline_topic {}: exists (not partitioned); a producer accepted (nothing sent); a throwaway subscription accepted and deleted", t.deadline)),
    ] {
        let line = run.line(name);
        assert!(line.starts_with(starts), "{line}\n  does not start with\n{starts}");
    }
    assert_eq!(
        run.lines.last().unwrap(),
        "doctor: 14 ok, 0 skipped, 0 failed"
    );
    // Nothing changed: no job, no subscription left behind, nothing stored on the topics.
    assert_eq!(
        stack
            .ci_job_count(BUCKET, REGION, "DigitalWatermark", "All")
            .await,
        0
    );
    for topic in [&t.result, &t.deadline] {
        let stats = common::topic_stats(topic).await;
        assert_eq!(stats["msgInCounter"], 0, "{topic}: {stats}");
        assert!(
            stats["subscriptions"]
                .as_object()
                .is_none_or(|s| s.is_empty()),
            "{topic}: {stats}"
        );
    }

    // Without a bucket the CI checks are skipped, not failed; --json says the same for machines.
    let run = doctor(&stack, &["--json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.lines.join("\n")).unwrap();
    assert_eq!(report["passed"], true);
    let checks = report["checks"].as_array().unwrap();
    let bucket = checks.iter().find(|c| c["name"] == "ci bucket").unwrap();
    assert_eq!(bucket["status"], "skipped");
    assert!(checks.iter().all(|c| c["status"] != "fail"));
    assert!(checks
        .iter()
        .all(|c| c.get("detail").is_some() && c.get("fix").is_some()));
}

#[tokio::test]
async fn a_bucket_without_ci_a_wrong_region_and_a_foreign_queue_fail() {
    let bound = format!("{BUCKET}@{REGION}");
    let mut stack = stack("doctor-ci", &[("CI_WORKER__EMULATOR__CI_BUCKETS", &bound)]).await;
    let run = doctor(&stack, &["--bucket", BUCKET, "--region", "ap-beijing"]).await;
    assert_eq!(run.code, Some(1));
    let line = run.line("ci examplebucket-1250000000 (ap-beijing) binding");
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("CI does not know bucket examplebucket-1250000000 in ap-beijing (HTTP 404 NoSuchBucket): CI is not bound to it there, or the region is wrong — fix: bind the bucket to Cloud Infinite in ap-beijing"), "{line}");
    assert!(run
        .line("ci examplebucket-1250000000 (ap-beijing) media queue")
        .starts_with("skipped"));

    let run = doctor(
        &stack,
        &["--bucket", "other-1250000000", "--region", REGION],
    )
    .await;
    assert_eq!(run.code, Some(1));
    assert!(run
        .line("ci other-1250000000 (ap-guangzhou) binding")
        .contains("CI is not bound to it there"));

    stack
        .env
        .insert("CI_WORKER__CI__QUEUE_ID".into(), "p0123456789abcdef".into());
    let run = doctor(&stack, &FOR_BUCKET).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.fails().len(), 1, "{:#?}", run.lines);
    let line = run.line(&ci("media queue"));
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(
        line.contains("ci.queue_id = p0123456789abcdef is not a media queue of this bucket"),
        "{line}"
    );
    assert!(
        line.contains("fix: set ci.queue_id to one of the bucket's queues"),
        "{line}"
    );
}

#[tokio::test]
async fn a_paused_queue_and_refused_permissions_are_named() {
    let stack = stack(
        "doctor-cam",
        &[
            ("CI_WORKER__EMULATOR__MEDIA_QUEUE_PAUSED", "true"),
            (
                "CI_WORKER__EMULATOR__DENIED_ACTIONS",
                "cam:PassRole,ci:DescribeMediaJobs",
            ),
        ],
    )
    .await;
    let run = doctor(&stack, &FOR_BUCKET).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.fails().len(), 3, "{:#?}", run.lines);
    let paused = run.line(&ci("media queue"));
    assert!(
        paused.contains(
            "is Paused: CI refuses new jobs with 403 QueuePaused — fix: resume the queue"
        ),
        "{paused}"
    );
    let submit = run.line(&ci("submit permission"));
    assert!(submit.starts_with("FAIL"), "{submit}");
    assert!(submit.contains("CI refused with HTTP 403 AccessDenied (The operation is prohibited.): the credentials' CAM user or role lacks ci:CreateMediaJobs or cam:PassRole — fix: grant ci:CreateMediaJobs and cam:PassRole on qcs::ci:ap-guangzhou:uid/<APPID>:bucket/examplebucket-1250000000/*"), "{submit}");
    let queries = run.line(&ci("job queries"));
    assert!(
        queries.contains("lacks ci:DescribeMediaJobs — fix: grant ci:DescribeMediaJobs on"),
        "{queries}"
    );

    let listing = stack_denying("ci:DescribeMediaQueues").await;
    let run = doctor(&listing, &FOR_BUCKET).await;
    assert_eq!(run.code, Some(1));
    let binding = run.line(&ci("binding"));
    assert!(
        binding.contains("lacks ci:DescribeMediaQueues — fix: grant ci:DescribeMediaQueues on"),
        "{binding}"
    );
}

async fn stack_denying(action: &str) -> Stack {
    stack(
        "doctor-cam2",
        &[("CI_WORKER__EMULATOR__DENIED_ACTIONS", action)],
    )
    .await
}

#[tokio::test]
async fn a_missing_cmq_queue_and_a_short_unack_time_fail() {
    let mut stack = stack(
        "doctor-cmq",
        &[("CI_WORKER__EMULATOR__CMQ_MAX_UNACK_TIME", "60s")],
    )
    .await;
    let run = doctor(&stack, &[]).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.fails().len(), 1, "{:#?}", run.lines);
    let unack = run.line("cmq unack time");
    assert!(
        unack.starts_with(
            "FAIL    cmq unack time: Max Message Unack Time 60s < worker.job_timeout 600s"
        ),
        "{unack}"
    );
    assert!(
        unack.contains("fix: raise the queue's Max Message Unack Time to at least 600s"),
        "{unack}"
    );
    // The same queue passes once the worker waits less.
    stack
        .env
        .insert("CI_WORKER__WORKER__JOB_TIMEOUT".into(), "1m".into());
    let run = doctor(&stack, &[]).await;
    assert_eq!(run.code, Some(0), "{:#?}", run.lines);

    stack
        .env
        .insert("CI_WORKER__CMQ__QUEUE".into(), "no-such-queue".into());
    let run = doctor(&stack, &[]).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.fails().len(), 1, "{:#?}", run.lines);
    let missing = run.line("cmq queue no-such-queue");
    assert!(
        missing.contains("has no queue no-such-queue (code 4440"),
        "{missing}"
    );
    assert!(
        missing.contains("fix: create the queue in the TDMQ for CMQ console (region gz"),
        "{missing}"
    );
}

#[tokio::test]
async fn a_missing_topic_and_a_callback_no_ingress_reads_fail() {
    let mut stack = stack("doctor-topics", &[]).await;
    let missing = format!("{}-missing", stack.topics.result);
    stack
        .env
        .insert("CI_WORKER__PULSAR__RESULT_TOPIC".into(), missing.clone());
    stack
        .env
        .insert("CI_WORKER__WORKER__CALLBACK_INGRESS".into(), "http".into());
    stack.env.insert(
        "CI_WORKER__HTTP__CALLBACK_TOKEN".into(),
        stack::HTTP_CALLBACK_TOKEN.into(),
    );
    let run = doctor(&stack, &[]).await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.fails().len(), 2, "{:#?}", run.lines);
    let topic = run.line(&format!("pulsar.result_topic {missing}"));
    assert!(
        topic.contains(": does not exist — fix: create it"),
        "{topic}"
    );
    assert!(
        topic.contains("or set pulsar.result_topic to the topic meant"),
        "{topic}"
    );
    assert!(
        !topic_exists(&missing).await,
        "the doctor created {missing}"
    );
    let route = run.line("callback route");
    assert!(route.starts_with("FAIL    callback route: ci.callback_type = TDMQ but worker.callback_ingress has neither cmq nor pulsar"), "{route}");
    assert!(
        route.contains("fix: add cmq to worker.callback_ingress"),
        "{route}"
    );
    assert!(run
        .line(&format!("cmq queue {}", stack.topics.mq_name))
        .starts_with("skipped"));
}

#[tokio::test]
async fn no_credentials_fail_and_skip_what_needs_them() {
    let mut stack = stack("doctor-keys", &[]).await;
    let nowhere = format!("http://127.0.0.1:{}", stack::free_port());
    for (k, v) in [
        ("TENCENTCLOUD_SECRET_ID", ""),
        ("TENCENTCLOUD_SECRET_KEY", ""),
        ("CI_WORKER__CI__METADATA_ENDPOINT", &nowhere),
    ] {
        stack.env.insert(k.into(), v.to_string());
    }
    let run = doctor(&stack, &FOR_BUCKET).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(run.fails().len(), 1, "{:#?}", run.lines);
    let keys = run.line("credentials");
    assert!(
        keys.starts_with("FAIL    credentials: no source gave keys"),
        "{keys}"
    );
    assert!(
        keys.contains("fix: set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY"),
        "{keys}"
    );
    assert!(run
        .line(&format!("ci {BUCKET} ({REGION})"))
        .starts_with("skipped"));
    assert!(run
        .line(&format!("cmq queue {}", stack.topics.mq_name))
        .starts_with("skipped"));
}

/// `CallBackType=Kafka` read by the `kafka` ingress: the topic on the Kafka broker is checked by its
/// metadata; a topic the broker does not know fails, naming where to create it.
#[tokio::test]
async fn the_kafka_topic_is_checked_and_a_missing_one_fails() {
    common::require_broker(&common::pulsar_url()).await;
    let mut stack = Stack::via_kafka("doctor-kafka", 2).await;
    let topic = stack.kafka_topic();
    common::create_partitioned_topic(&stack.topics.request, 2).await;
    let t = stack.topics.clone();
    for pulsar_topic in [&t.callback, &t.result, &t.dead_letter, &t.deadline] {
        create_topic(pulsar_topic).await;
    }
    stack.start_emulator().await;
    let run = doctor(&stack, &[]).await;
    assert_eq!(run.code, Some(0), "{:#?}\n{}", run.lines, run.stderr);
    let line = run.line(&format!("kafka topic {topic}"));
    assert!(line.starts_with("ok"), "{line}");
    assert!(line.contains("2 partition(s)"), "{line}");

    let missing = format!("{topic}-missing");
    stack
        .env
        .insert("CI_WORKER__CI__KAFKA_TOPIC".into(), missing.clone());
    let run = doctor(&stack, &[]).await;
    assert_eq!(run.code, Some(1));
    let line = run.line(&format!("kafka topic {missing}"));
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains("create it in the CKafka console"), "{line}");
}
