//! `ci-worker health`, the probe the compose stack's healthchecks run: exit 0 only once the worker
//! answers ready, exit 1 with one line saying why otherwise, within its timeout.

mod common;
mod stack;

use stack::{free_port, wait_status, Stack};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Past this a test stops waiting for a worker or emulator and fails.
const GIVE_UP: Duration = Duration::from_secs(60);

/// `ci-worker health <args>` with a clean environment plus `env`.
fn health(args: &[&str], env: &[(&str, String)]) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_ci-worker"))
        .arg("health")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run ci-worker health");
    (output, started.elapsed())
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Exit 1 and exactly one line on stderr, which contains every one of `needles`.
fn assert_unhealthy(output: &Output, needles: &[&str]) {
    let lines = stderr_lines(output);
    assert_eq!(output.status.code(), Some(1), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "one line, got {lines:?}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{needle:?} not in {:?}",
            lines[0]
        );
    }
}

#[test]
fn nothing_listening_is_unhealthy_with_the_reason() {
    let url = format!("http://127.0.0.1:{}/readyz", free_port());
    let (output, _) = health(&["--url", &url], &[]);
    assert_unhealthy(&output, &[&url, "refused"]);
}

#[test]
fn an_endpoint_that_never_answers_is_unhealthy_within_the_timeout() {
    // The kernel completes the handshake of a bound socket's backlog; nobody ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/readyz", silent.local_addr().unwrap());
    let (output, took) = health(&["--url", &url, "--timeout", "500ms"], &[]);
    assert_unhealthy(&output, &[&url, "no answer within 500ms"]);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_worker_still_connecting_to_its_broker_is_unhealthy() {
    // A "broker" that accepts connections and never speaks: the worker stays at "connecting".
    let silent_broker = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_ci-worker"))
        .arg("run")
        .env_clear()
        .env(
            "CI_WORKER__PULSAR__URL",
            format!("pulsar://{}", silent_broker.local_addr().unwrap()),
        )
        .env("CI_WORKER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("TENCENTCLOUD_SECRET_ID", stack::SECRET_ID)
        .env("TENCENTCLOUD_SECRET_KEY", stack::SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ci-worker run");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(wait_status(
        &format!("http://127.0.0.1:{port}/readyz"),
        503,
        GIVE_UP,
    ));
    // The default URL: /readyz of http.listen, from the same environment the worker reads.
    let (output, _) = health(
        &[],
        &[("CI_WORKER__HTTP__LISTEN", format!("127.0.0.1:{port}"))],
    );
    let _ = worker.kill();
    let _ = worker.wait();
    assert_unhealthy(
        &output,
        &[
            &format!("http://127.0.0.1:{port}/readyz"),
            "answered 503",
            "connecting to the broker",
        ],
    );
}

#[tokio::test]
async fn a_ready_worker_and_a_serving_emulator_are_healthy() {
    common::require_broker(&common::pulsar_url()).await;
    let mut stack = Stack::new("health");
    stack.start_emulator().await;
    stack.start_worker();
    let readyz = format!("http://127.0.0.1:{}/readyz", stack.worker_http_port);
    wait_status(&readyz, 200, GIVE_UP).await;

    // The worker, through the default URL (http.listen from the stack's environment).
    let output = stack.run_command(&["health"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with(&format!("{readyz} answered 200")),
        "{stdout}"
    );

    // The emulator, as the compose stack probes it.
    let healthz = format!("http://127.0.0.1:{}/healthz", stack.emulator_port);
    let output = stack.run_command(&["health", "--url", &healthz]).await;
    assert!(output.status.success(), "{output:?}");
}
