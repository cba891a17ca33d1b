//! The local stack as a user runs it, for end-to-end tests: the real `ci-worker` binary as two
//! processes (`emulator` and `run`) against the real broker of `tests/common`, each test on its own
//! topics and ports. Processes are killed when the [`Stack`] drops.
//!
//! Included with `mod common; mod stack;` by `e2e`, `lookup`, `operations` and `reliability`. The helpers:
//!
//! | helper | what | used by |
//! | --- | --- | --- |
//! | [`Stack`], [`Topics`], [`SECRET_ID`], [`SECRET_KEY`] | the processes, their topics and key | all three |
//! | [`Stack::follow`] | a consumer of one of the stack's topics, from its start | all three |
//! | [`collect`], [`Received`] | messages received until a condition holds | all three |
//! | [`by_request`], [`finals`], [`all_final`] | results by request id; their final states | `reliability`, `shutdown` |
//! | [`free_port`] | a port nothing listens on | `reliability` |
//! | [`metrics`], [`metric`] | a worker's `/metrics` text; one sample of it | `operations`, `reliability` |
//! | [`http_get`], [`wait_status`] | a GET's status and body; polling until a status | `operations`, `reliability` |
//! | [`PrivateBroker`], [`Stack::on_broker`] | a broker of the test's own, to stop and restart; a stack on it | `operations`, `reliability`, `shutdown` |
//! | [`terminate`], [`Stack::terminate_worker`], [`signal`] | SIGTERM and the time to exit; other signals | `shutdown` |
//! | [`Replica`], [`Stack::start_replica`] | a worker process of its own port, to kill, terminate or replace | `reliability` |
//! | [`Follower`], [`Stack::follow_in_background`] | a topic read in a task of its own while the test acts; caught up or not | `reliability` |
//! | [`Stack::partition_topics`] | request, callback, result and deadline topics created partitioned | `reliability` |
//! | [`Stack::ci_job_count`], [`Stack::settle`] | CI jobs in some states; waiting until the workers have nothing left to do | `reliability` |

#![allow(dead_code)]

use crate::common;
use futures::StreamExt;
use pulsar::{Consumer, TokioExecutor};
use serde_json::Value;
use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET_ID: &str = "AKIDe2etest00000000000000000000000";
pub const SECRET_KEY: &str = "e2etestsecretkey0123456789abcdef";

/// Topics and addresses of one stack.
#[derive(Debug, Clone)]
pub struct Topics {
    pub request: String,
    pub callback: String,
    pub result: String,
    pub dead_letter: String,
    /// Deadlines: a topic of the stack's own, so deadlines left on a long-lived broker by earlier
    /// runs (whose emulators are gone) never reach this stack's worker.
    pub deadline: String,
    /// `MqName` the worker sends to CI; the emulator publishes to `persistent://public/default/<it>`.
    pub mq_name: String,
}

impl Topics {
    pub fn unique(prefix: &str) -> Topics {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mq_name = format!("{prefix}-callbacks-{id}");
        Topics {
            request: format!("persistent://public/default/{prefix}-requests-{id}"),
            callback: format!("persistent://public/default/{mq_name}"),
            result: format!("persistent://public/default/{prefix}-results-{id}"),
            dead_letter: format!("persistent://public/default/{prefix}-dlq-{id}"),
            deadline: format!("persistent://public/default/{prefix}-deadlines-{id}"),
            mq_name,
        }
    }
}

/// A port nothing listens on, below the kernel's ephemeral range (32768–60999 on Linux): a port
/// the kernel hands out for `:0` is also one it may hand to an outgoing connection before the
/// process it was meant for binds it (a private broker's ZooKeeper lost such a race). Each process
/// of the test suite starts at its own random offset and never hands out a port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let seed = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
        let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        // One after the other: a wildcard bind fails while the loopback one is held.
        let loopback = TcpListener::bind(("127.0.0.1", port)).is_ok();
        if loopback && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN)
}

/// The `http.callback_token` of [`Stack::via_http`] stacks.
pub const HTTP_CALLBACK_TOKEN: &str = "test-callback-token-0123456789";

pub struct Stack {
    pub topics: Topics,
    pub emulator_port: u16,
    pub worker_http_port: u16,
    /// The emulator's CMQ API (served when the stack delivers TDMQ events through CMQ).
    pub cmq_port: u16,
    pub emulator: Option<Child>,
    pub worker: Option<Child>,
    /// Extra environment for both processes (e.g. fault rates).
    pub env: HashMap<String, String>,
    /// Processes started so far (names their log files apart).
    spawned: usize,
}

impl Stack {
    /// Environment shared by emulator and worker: credentials, broker, topics.
    fn base_env(&self) -> HashMap<String, String> {
        let t = &self.topics;
        let mut env: HashMap<String, String> = [
            ("TENCENTCLOUD_SECRET_ID", SECRET_ID.to_string()),
            ("TENCENTCLOUD_SECRET_KEY", SECRET_KEY.to_string()),
            ("CI_WORKER__PULSAR__URL", common::pulsar_url()),
            ("CI_WORKER__PULSAR__REQUEST_TOPIC", t.request.clone()),
            ("CI_WORKER__PULSAR__CALLBACK_TOPIC", t.callback.clone()),
            ("CI_WORKER__PULSAR__RESULT_TOPIC", t.result.clone()),
            (
                "CI_WORKER__PULSAR__DEAD_LETTER_TOPIC",
                t.dead_letter.clone(),
            ),
            ("CI_WORKER__PULSAR__DEADLINE_TOPIC", t.deadline.clone()),
            ("CI_WORKER__CI__MQ_NAME", t.mq_name.clone()),
            (
                "CI_WORKER__CI__ENDPOINT",
                format!("http://127.0.0.1:{}", self.emulator_port),
            ),
            (
                "CI_WORKER__EMULATOR__LISTEN",
                format!("127.0.0.1:{}", self.emulator_port),
            ),
            (
                "CI_WORKER__HTTP__LISTEN",
                format!("127.0.0.1:{}", self.worker_http_port),
            ),
            ("CI_WORKER__EMULATOR__JOB_DURATION_MS", "200".to_string()),
            // The emulator publishes TDMQ events into the callback topic itself (a bridge setup):
            // most tests are about what follows. Stack::via_cmq and Stack::via_http take CI's
            // documented paths instead.
            ("CI_WORKER__EMULATOR__TDMQ_DELIVERY", "pulsar".to_string()),
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "pulsar".to_string()),
            (
                "CI_WORKER__EMULATOR__CMQ_LISTEN",
                format!("127.0.0.1:{}", self.cmq_port),
            ),
            (
                "CI_WORKER__CMQ__ENDPOINT",
                format!("http://127.0.0.1:{}", self.cmq_port),
            ),
            ("CI_WORKER__EMULATOR__CMQ_QUEUES", t.mq_name.clone()),
            ("RUST_LOG", "info".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(self.env.clone());
        env
    }

    pub fn new(prefix: &str) -> Stack {
        Stack {
            topics: Topics::unique(prefix),
            emulator_port: free_port(),
            worker_http_port: free_port(),
            cmq_port: free_port(),
            emulator: None,
            worker: None,
            env: HashMap::new(),
            spawned: 0,
        }
    }

    /// A stack on CI's documented TDMQ path: the emulator writes completion events into its CMQ queue
    /// (named like the stack's `MqName`) and the worker's `cmq` ingress reads them.
    pub fn via_cmq(prefix: &str) -> Stack {
        let mut stack = Stack::new(prefix);
        for (k, v) in [
            ("CI_WORKER__EMULATOR__TDMQ_DELIVERY", "cmq"),
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "cmq"),
            // A short poll keeps the worker's shutdown quick in tests.
            ("CI_WORKER__CMQ__POLLING_WAIT", "2s"),
        ] {
            stack.env.insert(k.into(), v.into());
        }
        stack
    }

    /// A stack on CI's CKafka callbacks: jobs are submitted with `CallBackType=Kafka` naming a topic
    /// of the stack's own (created here with `partitions`), the emulator writes completion events
    /// into it on the broker `scripts/kafka.sh` runs, and the worker's `kafka` ingress reads it in a
    /// consumer group of the stack's own.
    pub async fn via_kafka(prefix: &str, partitions: i32) -> Stack {
        let mut stack = Stack::new(prefix);
        let topic = format!("{}-events", stack.topics.mq_name);
        common::create_kafka_topic(&topic, partitions).await;
        let brokers = common::kafka_brokers();
        for (k, v) in [
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "kafka".to_string()),
            ("CI_WORKER__CI__CALLBACK_TYPE", "Kafka".to_string()),
            ("CI_WORKER__CI__KAFKA_REGION", "ap-guangzhou".to_string()),
            (
                "CI_WORKER__CI__KAFKA_INSTANCE_ID",
                "ckafka-e2etest".to_string(),
            ),
            ("CI_WORKER__CI__KAFKA_TOPIC", topic),
            ("CI_WORKER__KAFKA__BROKERS", brokers.clone()),
            (
                "CI_WORKER__KAFKA__GROUP_ID",
                format!("{}-group", stack.topics.mq_name),
            ),
            ("CI_WORKER__EMULATOR__KAFKA_BROKERS", brokers),
        ] {
            stack.env.insert(k.into(), v);
        }
        stack
    }

    /// The Kafka topic of a [`Stack::via_kafka`] stack.
    pub fn kafka_topic(&self) -> String {
        self.env["CI_WORKER__CI__KAFKA_TOPIC"].clone()
    }

    /// A stack on CI's URL callbacks: jobs are submitted with `CallBackType=Url` pointing at the
    /// worker's `http` ingress, which the emulator POSTs completion events to.
    pub fn via_http(prefix: &str) -> Stack {
        let mut stack = Stack::new(prefix);
        let url = format!(
            "http://127.0.0.1:{}/ci/callback/{HTTP_CALLBACK_TOKEN}",
            stack.worker_http_port
        );
        for (k, v) in [
            ("CI_WORKER__WORKER__CALLBACK_INGRESS", "http".to_string()),
            (
                "CI_WORKER__HTTP__CALLBACK_TOKEN",
                HTTP_CALLBACK_TOKEN.to_string(),
            ),
            ("CI_WORKER__CI__CALLBACK_TYPE", "Url".to_string()),
            ("CI_WORKER__CI__CALLBACK_URL", url),
        ] {
            stack.env.insert(k.into(), v);
        }
        stack
    }

    /// A stack on the broker at `url` instead of the shared one (a [`PrivateBroker`]'s).
    pub fn on_broker(prefix: &str, url: &str) -> Stack {
        let mut stack = Stack::new(prefix);
        stack
            .env
            .insert("CI_WORKER__PULSAR__URL".into(), url.to_string());
        stack
    }

    /// Where this stack's processes write their logs.
    pub fn log_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs")
    }

    /// Everything this stack's processes logged so far.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(dir) = std::fs::read_dir(Self::log_dir()) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(&self.topics.mq_name) {
                    all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        all
    }

    fn spawn(&mut self, subcommand: &str) -> Child {
        self.spawn_with(subcommand, &[])
    }

    fn spawn_with(&mut self, subcommand: &str, extra_env: &[(&str, String)]) -> Child {
        self.spawn_args(&[subcommand], extra_env)
    }

    /// `ci-worker <args>` as a process of this stack (a client command such as `submit --wait`),
    /// logging where the others do; the caller owns it.
    pub fn spawn_command(&mut self, args: &[&str]) -> Child {
        self.spawn_args(args, &[])
    }

    fn spawn_args(&mut self, args: &[&str], extra_env: &[(&str, String)]) -> Child {
        let subcommand = args[0];
        self.spawned += 1;
        let log_dir = Self::log_dir();
        std::fs::create_dir_all(&log_dir).unwrap();
        let log = std::fs::File::create(log_dir.join(format!(
            "{}-{subcommand}-{}.log",
            self.topics.mq_name, self.spawned
        )))
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_ci-worker"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.base_env())
            .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ci-worker")
    }

    /// Runs `ci-worker <args>` to its end with this stack's environment (a client-side command such
    /// as `submit`), without blocking the runtime.
    pub async fn run_command(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ci-worker"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.base_env())
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run ci-worker")
    }

    /// Starts the emulator and waits for its `/healthz`.
    pub async fn start_emulator(&mut self) {
        self.emulator = Some(self.spawn("emulator"));
        let url = format!("http://127.0.0.1:{}/healthz", self.emulator_port);
        let http = reqwest::Client::new();
        let ready = async {
            loop {
                if let Ok(r) = http.get(&url).send().await {
                    if r.status().is_success() {
                        return;
                    }
                }
                if let Some(child) = self.emulator.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("emulator exited early: {status}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("emulator did not become healthy");
    }

    pub fn start_worker(&mut self) {
        self.worker = Some(self.spawn("run"));
    }

    /// [`Stack::start_worker`] with environment for the worker alone (what the emulator must not
    /// see, e.g. another credential source; an empty value unsets a shared one).
    pub fn start_worker_with(&mut self, extra_env: &[(&str, String)]) {
        self.worker = Some(self.spawn_with("run", extra_env));
    }

    /// Another worker process on the same topics and subscriptions (a second replica), with its HTTP
    /// endpoint on `http_port`. The caller owns (and kills) it.
    pub fn spawn_replica(&mut self, http_port: u16) -> Child {
        self.spawn_with(
            "run",
            &[("CI_WORKER__HTTP__LISTEN", format!("127.0.0.1:{http_port}"))],
        )
    }

    /// A worker process of its own (a replica) on the stack's topics and subscriptions, with its HTTP
    /// endpoint on a port of its own. Killed when the [`Replica`] drops.
    pub fn start_replica(&mut self) -> Replica {
        let port = free_port();
        Replica {
            child: Some(self.spawn_replica(port)),
            port,
        }
    }

    /// Creates the request, callback and result topics with `n` partitions each, before any process
    /// of the stack uses them. The deadline topic stays unpartitioned (the worker refuses one: a
    /// job's marker names its deadline record by ledger and entry).
    pub async fn partition_topics(&self, n: u32) {
        let t = &self.topics;
        for topic in [&t.request, &t.callback, &t.result] {
            common::create_partitioned_topic(topic, n).await;
        }
    }

    /// How many CI jobs of `tag` the emulator holds in `states` (`All`, or e.g. `Submitted,Running`).
    pub async fn ci_job_count(&self, bucket: &str, region: &str, tag: &str, states: &str) -> usize {
        let ci = self.ci_client();
        let mut query = ci_worker::ci::client::ListQuery {
            tag: tag.into(),
            states: Some(states.into()),
            size: Some(100),
            ..Default::default()
        };
        let mut count = 0;
        loop {
            let page = ci.list(bucket, region, &query).await.unwrap();
            count += page.jobs.len();
            match page.next_token {
                Some(t) => query.next_token = Some(t),
                None => return count,
            }
        }
    }

    /// Waits until the workers have nothing left to do: no request unacknowledged on the request
    /// subscription, no CI job of `tag` still running, no completion event unacknowledged, on two
    /// checks in a row (a job that just finished has its event published right after). An external
    /// observation of the broker and the emulator, so it is polled. Panics after `limit`.
    pub async fn settle(&self, bucket: &str, region: &str, tag: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut quiet_checks = 0;
        loop {
            let requests = common::subscription_backlog(&self.topics.request, "ci-worker").await;
            let running = self
                .ci_job_count(bucket, region, tag, "Submitted,Running")
                .await;
            let events = common::subscription_backlog(&self.topics.callback, "ci-worker").await;
            if requests == Some(0) && running == 0 && events.unwrap_or(0) == 0 {
                quiet_checks += 1;
                if quiet_checks == 2 {
                    return;
                }
            } else {
                quiet_checks = 0;
            }
            assert!(
                Instant::now() < deadline,
                "not settled after {limit:?}: request backlog {requests:?}, {running} jobs \
                 running, callback backlog {events:?}\n{}",
                recent_log_tails(limit)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `subscription` on `topic` has `n` consumers (one per replica), on every partition
    /// of a partitioned topic: every replica shares the load from then on. Polls the broker's stats.
    /// (Replicas' `/readyz` is no signal on partitioned topics: it pings the producers of all
    /// partitions at once over one connection, and the crate keeps one pong slot per connection.)
    pub async fn await_consumers(
        &self,
        topic: &str,
        subscription: &str,
        n: usize,
        limit: Duration,
    ) {
        let deadline = Instant::now() + limit;
        let partitions = common::partitions(topic).await;
        let topics: Vec<String> = if partitions == 0 {
            vec![topic.to_string()]
        } else {
            (0..partitions)
                .map(|i| format!("{topic}-partition-{i}"))
                .collect()
        };
        loop {
            let mut counts = Vec::new();
            for t in &topics {
                let stats = common::topic_stats(t).await;
                counts.push(
                    stats["subscriptions"][subscription]["consumers"]
                        .as_array()
                        .map_or(0, |c| c.len()),
                );
            }
            if counts.iter().all(|c| *c == n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "consumers of {subscription} on {topic} (per partition) {counts:?} after \
                 {limit:?}, wanted {n}\n{}",
                recent_log_tails(limit)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// [`Stack::follow`] in a task of its own, which acknowledges every message as it comes: the test
    /// awaits conditions on what was seen while it kills and starts processes.
    pub async fn follow_in_background(&self, topic: &str) -> Follower {
        Follower::start(self.follow(topic).await)
    }

    /// SIGKILL the worker (a crash: no drain, nothing flushed) and reap it.
    pub fn kill_worker(&mut self) {
        if let Some(mut child) = self.worker.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// A CI client of this stack's emulator, signed with the stack's key.
    pub fn ci_client(&self) -> ci_worker::ci::client::CiClient {
        ci_worker::ci::client::CiClient::new(
            Some(&format!("http://127.0.0.1:{}", self.emulator_port)),
            Some(ci_worker::ci::sign::Credentials {
                secret_id: SECRET_ID.into(),
                secret_key: ci_worker::secret::Secret::new(SECRET_KEY),
                session_token: None,
            }),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// How many CI jobs exist per request id (from the correlation marker), listing every job of
    /// `tag` in the emulator.
    pub async fn ci_jobs_per_request(
        &self,
        bucket: &str,
        region: &str,
        tag: &str,
    ) -> HashMap<String, usize> {
        let ci = self.ci_client();
        let mut query = ci_worker::ci::client::ListQuery {
            tag: tag.into(),
            states: Some("All".into()),
            size: Some(100),
            ..Default::default()
        };
        let mut counts = HashMap::new();
        loop {
            let page = ci.list(bucket, region, &query).await.unwrap();
            for job in &page.jobs {
                let request_id = ci_worker::request::marker::decode(job.user_data()).request_id;
                if let Some(id) = request_id {
                    *counts.entry(id).or_insert(0) += 1;
                }
            }
            match page.next_token {
                Some(t) => query.next_token = Some(t),
                None => return counts,
            }
        }
    }

    /// SIGTERM the worker and wait for it to exit; returns its exit status.
    pub fn stop_worker(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.worker.take()?;
        // SAFETY-free: `kill` command sends SIGTERM.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        Some(child.wait().unwrap())
    }

    /// SIGTERM the worker and wait for it to exit; (exit status, how long it took). Panics, after
    /// killing it, when it is still running after `limit`.
    pub fn terminate_worker(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let mut child = self.worker.take().expect("no worker to terminate");
        terminate(&mut child, limit, "ci-worker run")
    }

    /// The same for the emulator.
    pub fn terminate_emulator(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let mut child = self.emulator.take().expect("no emulator to terminate");
        terminate(&mut child, limit, "ci-worker emulator")
    }

    /// The broker this stack uses (`CI_WORKER__PULSAR__URL` in [`Stack::env`] overrides the shared one).
    pub fn pulsar_url(&self) -> String {
        self.env
            .get("CI_WORKER__PULSAR__URL")
            .cloned()
            .unwrap_or_else(common::pulsar_url)
    }

    /// A consumer of `topic` on this stack's broker (with its token, if any) created now, reading
    /// from the start of the topic.
    pub async fn follow(&self, topic: &str) -> Consumer<Vec<u8>, TokioExecutor> {
        let token = self.env.get("CI_WORKER__PULSAR__TOKEN").cloned();
        common::follow(&self.pulsar_url(), token, topic).await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [self.worker.as_mut(), self.emulator.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `ci-worker run` process of a [`Stack`] with its own HTTP port ([`Stack::start_replica`]).
pub struct Replica {
    child: Option<Child>,
    pub port: u16,
}

impl Replica {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("replica running").id()
    }

    /// Waits until its `/readyz` answers 200.
    pub async fn ready(&self, limit: Duration) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        wait_status(&url, 200, limit).await;
    }

    /// SIGKILL (a crash: no drain, nothing flushed) and reap it.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for its exit off the runtime's threads; (exit status, time to exit).
    /// Panics, after killing it, when it still runs after `limit`.
    pub async fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("replica running");
        tokio::task::spawn_blocking(move || terminate(&mut child, limit, "ci-worker run replica"))
            .await
            .unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a [`Follower`] has seen so far.
#[derive(Debug, Default)]
pub struct Followed {
    /// Every message, in arrival order.
    pub seen: Vec<Received>,
    /// When the follower last found its subscription's backlog empty with nothing more arriving;
    /// `None` once a message arrived after that.
    pub caught_up_at: Option<Instant>,
}

/// A consumer read in a task of its own ([`Stack::follow_in_background`]), every message
/// acknowledged as it comes.
pub struct Follower {
    state: tokio::sync::watch::Receiver<Followed>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    /// How long without a message before the follower asks the broker whether it has read everything.
    const IDLE: Duration = Duration::from_millis(200);

    pub fn start(mut consumer: Consumer<Vec<u8>, TokioExecutor>) -> Follower {
        let (tx, state) = tokio::sync::watch::channel(Followed::default());
        let task = tokio::spawn(async move {
            loop {
                match tokio::time::timeout(Self::IDLE, consumer.next()).await {
                    Ok(Some(Ok(msg))) => {
                        consumer.ack(&msg).await.unwrap();
                        let props = common::properties(&msg).into_iter().collect();
                        let received = (msg.payload.data.clone(), props, msg.key());
                        tx.send_modify(|f| {
                            f.seen.push(received);
                            f.caught_up_at = None;
                        });
                    }
                    Ok(other) => panic!("consumer ended: {:?}", other.map(|r| r.err())),
                    Err(_) => {
                        // Acks went out on the same connection before this request: the backlog
                        // counts only what was not read yet.
                        let stats = consumer.get_stats().await.unwrap();
                        if stats.iter().all(|s| s.msg_backlog == Some(0)) {
                            tx.send_modify(|f| f.caught_up_at = Some(Instant::now()));
                        }
                    }
                }
            }
        });
        Follower { state, task }
    }

    /// Waits until `done` holds for what was seen; panics after `limit` with how many were seen.
    pub async fn until<F>(&mut self, limit: Duration, mut done: F)
    where
        F: FnMut(&[Received]) -> bool,
    {
        let waited = tokio::time::timeout(limit, self.state.wait_for(|f| done(&f.seen)))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => {}
            Ok(false) => panic!("follower task ended"),
            Err(_) => panic!(
                "timed out after {limit:?} with {} messages\n{}",
                self.state.borrow().seen.len(),
                recent_log_tails(limit)
            ),
        }
    }

    /// How many messages were seen so far.
    pub fn count(&self) -> usize {
        self.state.borrow().seen.len()
    }

    /// A copy of what was seen so far.
    pub fn snapshot(&self) -> Vec<Received> {
        self.state.borrow().seen.clone()
    }

    /// Waits until the follower has read everything published to its topic before this call, then
    /// returns all it saw.
    pub async fn drain(&mut self, limit: Duration) -> Vec<Received> {
        let asked = Instant::now();
        let waited = tokio::time::timeout(
            limit,
            self.state
                .wait_for(|f| f.caught_up_at.is_some_and(|at| at > asked)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(waited, "follower not caught up after {limit:?}");
        self.snapshot()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends SIGTERM to `child` and waits for its exit; (exit status, time from the signal to the exit).
/// A process still running after `limit` is killed and the test fails, naming `what`.
pub fn terminate(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> (std::process::ExitStatus, Duration) {
    signal(child, "TERM");
    let sent = std::time::Instant::now();
    loop {
        // A child's exit has no event to await from std's `Child`; its state is polled.
        if let Some(status) = child.try_wait().unwrap() {
            return (status, sent.elapsed());
        }
        if sent.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running {limit:?} after SIGTERM\n{}",
                recent_log_tails(limit * 2)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kill -<name> <pid>` (TERM, STOP, CONT): signals the std library does not send.
pub fn signal_pid(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

pub fn signal(child: &Child, name: &str) {
    signal_pid(child.id(), name);
}

/// Results grouped by request id, in arrival order.
pub fn by_request(seen: &[Received]) -> HashMap<String, Vec<Value>> {
    let mut map: HashMap<String, Vec<Value>> = HashMap::new();
    for (payload, _, _) in seen {
        let v: Value = serde_json::from_slice(payload).unwrap();
        if let Some(id) = v["request_id"].as_str() {
            map.entry(id.to_string()).or_default().push(v);
        }
    }
    map
}

/// The final states among one request's results.
pub fn finals(results: &[Value]) -> Vec<&str> {
    results
        .iter()
        .filter_map(|r| r["state"].as_str())
        .filter(|s| *s != "submitted")
        .collect()
}

/// Whether every request of `ids` has a final result in `seen`.
pub fn all_final(seen: &[Received], ids: &[String]) -> bool {
    let map = by_request(seen);
    ids.iter()
        .all(|id| map.get(id).is_some_and(|r| !finals(r).is_empty()))
}

/// A message [`collect`] received: (payload, properties, key).
pub type Received = (Vec<u8>, HashMap<String, String>, Option<String>);

/// Receives messages until `done` says so, or panics after `limit` with what was seen.
pub async fn collect<F>(
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    limit: Duration,
    mut done: F,
) -> Vec<Received>
where
    F: FnMut(&[Received]) -> bool,
{
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&seen) {
        let next = tokio::time::timeout_at(deadline, consumer.next()).await;
        let msg = match next {
            Ok(Some(Ok(msg))) => msg,
            Ok(other) => panic!("consumer ended: {:?}", other.map(|r| r.err())),
            Err(_) => panic!(
                "timed out after {limit:?} with {} messages\n{}",
                seen.len(),
                recent_log_tails(limit)
            ),
        };
        consumer.ack(&msg).await.unwrap();
        let props = common::properties(&msg).into_iter().collect();
        seen.push((msg.payload.data.clone(), props, msg.key()));
    }
    seen
}

/// The `/metrics` text of the worker whose HTTP endpoint is on `port`.
pub async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `name_and_labels` (e.g. `ci_worker_results_total{state="submitted"}`)
/// in Prometheus text `text`; 0 when it is absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == name_and_labels).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// `GET url`: (status, body), or (0, the error) when nothing answers.
pub async fn http_get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Polls `url` until it answers `status` (an external observation: there is no event to await);
/// returns the body.
pub async fn wait_status(url: &str, status: u16, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (got, body) = http_get(url).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} still answers {got} ({body}) after {limit:?}, wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last lines of every process log written within `window`, for a failure message: CI shows
/// the test's output, not the files.
fn recent_log_tails(window: Duration) -> String {
    let mut out = String::new();
    let Ok(dir) = std::fs::read_dir(Stack::log_dir()) else {
        return out;
    };
    for entry in dir.flatten() {
        let recent = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() <= window);
        if !recent {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {}\n", entry.file_name().to_string_lossy()));
        for line in &lines[lines.len().saturating_sub(12)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A broker of this test's own (ports and data apart from the shared one), stopped on drop.
pub struct PrivateBroker {
    pub env: Vec<(String, String)>,
    pub url: String,
}

impl PrivateBroker {
    /// Runs `scripts/pulsar.sh <verb>` for this broker.
    pub fn script(&self, verb: &str) -> bool {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pulsar.sh"))
            .arg(verb)
            .envs(self.env.iter().cloned())
            .stdout(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn start() -> PrivateBroker {
        let port = free_port();
        let http = free_port();
        let data = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("private-broker-{port}"));
        let broker = PrivateBroker {
            env: vec![
                ("PULSAR_PORT".into(), port.to_string()),
                ("PULSAR_HTTP_PORT".into(), http.to_string()),
                ("PULSAR_BOOKIE_PORT".into(), free_port().to_string()),
                ("PULSAR_ZK_PORT".into(), free_port().to_string()),
                ("PULSAR_DATA_DIR".into(), data.display().to_string()),
                ("PULSAR_WIPE".into(), "1".into()),
            ],
            url: format!("pulsar://127.0.0.1:{port}"),
        };
        assert!(broker.script("start"), "private broker did not start");
        broker
    }

    /// The broker's JVM process id (to stop it with SIGSTOP: a broker that stops answering).
    pub fn pid(&self) -> u32 {
        let data = &self
            .env
            .iter()
            .find(|(k, _)| k == "PULSAR_DATA_DIR")
            .expect("data dir")
            .1;
        std::fs::read_to_string(std::path::Path::new(data).join("pulsar.pid"))
            .expect("pulsar.pid")
            .trim()
            .parse()
            .expect("a pid")
    }

    /// Stops and starts it again on the same data directory.
    pub fn restart(&mut self) {
        self.env.retain(|(k, _)| k != "PULSAR_WIPE");
        assert!(self.script("restart"), "private broker did not restart");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.script("stop");
    }
}
