//! Temporary credentials that rotate, end to end: the emulator's CVM metadata path issues key sets
//! that expire within seconds (and refuses them after), and a worker keeps submitting across
//! several lifetimes without a failure, with its keys from `ci.cvm_role` (refreshed before expiry)
//! or from `ci.credentials_file` (rewritten by the test as a Kubernetes Secret volume would be).
//! The CMQ ingress signs with the same key sets (the stacks read completion events through CMQ).

mod common;
mod stack;

use ci_worker::ci::client::{CiClient, CiError};
use ci_worker::ci::sign::Credentials;
use ci_worker::secret::Secret;
use common::JobRequest;
use serde_json::Value;
use stack::{all_final, by_request, finals, Stack};
use std::time::{Duration, Instant};

/// A stack whose emulator issues key sets of `lifetime_s` for `role`.
fn stack(prefix: &str, role: &str, lifetime_s: u64) -> Stack {
    let mut stack = Stack::via_cmq(prefix);
    stack
        .env
        .insert("CI_WORKER__EMULATOR__CVM_ROLES".into(), role.into());
    stack.env.insert(
        "CI_WORKER__EMULATOR__TEMPORARY_CREDENTIALS_LIFETIME_SECS".into(),
        lifetime_s.to_string(),
    );
    stack
}

/// The worker's environment without the stack's long-term keys (only the emulator keeps them).
fn without_keys(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("TENCENTCLOUD_SECRET_ID", String::new()),
        ("TENCENTCLOUD_SECRET_KEY", String::new()),
    ];
    env.extend_from_slice(extra);
    env
}

async fn metadata(stack: &Stack, role: &str) -> Value {
    let url = format!(
        "http://127.0.0.1:{}/latest/meta-data/cam/security-credentials/{role}",
        stack.emulator_port
    );
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn keys_of(answer: &Value) -> Credentials {
    Credentials {
        secret_id: answer["TmpSecretId"].as_str().unwrap().into(),
        secret_key: Secret::new(answer["TmpSecretKey"].as_str().unwrap()),
        session_token: Some(Secret::new(answer["Token"].as_str().unwrap())),
    }
}

/// Publishes a request every 500 ms for `span` (calling `tick` between), then waits for every final
/// result and checks they all succeeded; returns how many requests went.
async fn submit_throughout<F, Fut>(
    stack: &Stack,
    prefix: &str,
    span: Duration,
    mut tick: F,
) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut results = stack.follow_in_background(&stack.topics.result).await;
    let mut ids = Vec::new();
    let started = Instant::now();
    while started.elapsed() < span {
        let id = format!("{prefix}-{}", ids.len());
        common::publish(
            &common::pulsar_url(),
            None,
            &stack.topics.request,
            vec![JobRequest::watermark(&id, "rotation").bytes()],
        )
        .await;
        ids.push(id);
        tick().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    results
        .until(Duration::from_secs(60), |seen| all_final(seen, &ids))
        .await;
    let map = by_request(&results.snapshot());
    for id in &ids {
        assert_eq!(finals(&map[id]), ["succeeded"], "{id}: {:?}", map[id]);
    }
    ids.len()
}

/// The emulator refuses `keys` now (they expired) with CI's 401 for it.
async fn refused_as_expired(stack: &Stack, keys: Credentials) {
    let client = CiClient::new(
        Some(&format!("http://127.0.0.1:{}", stack.emulator_port)),
        Some(keys),
        Duration::from_secs(5),
    )
    .unwrap();
    match client
        .describe(
            common::BUCKET,
            common::REGION,
            &["j00000000000000000000000000000000"],
        )
        .await
    {
        Err(CiError::Api { status: 401, body }) => assert_eq!(body.code, "SignatureExpired"),
        other => panic!("expected 401 SignatureExpired, got {other:?}"),
    }
}

/// No request signed with an expired key set reached the emulator (it logs every refusal).
fn no_expired_key_used(logs: &str) {
    let used: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("SignatureExpired") || l.contains("(10080)"))
        .collect();
    assert!(used.is_empty(), "{used:#?}");
}

fn assert_never_logged(stack: &Stack, answers: &[Value]) {
    let logs = stack.logs();
    for a in answers {
        for field in ["TmpSecretKey", "Token"] {
            let secret = a[field].as_str().unwrap();
            assert!(!logs.contains(secret), "{field} in the logs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_a_cvm_role_keeps_working_across_credential_lifetimes() {
    const ROLE: &str = "CVMrotation";
    const LIFETIME_S: u64 = 6;
    let mut stack = stack("cred-role", ROLE, LIFETIME_S);
    stack.start_emulator().await;
    let endpoint = format!("http://127.0.0.1:{}", stack.emulator_port);
    stack.start_worker_with(&without_keys(&[
        ("CI_WORKER__CI__CVM_ROLE", ROLE.to_string()),
        ("CI_WORKER__CI__METADATA_ENDPOINT", endpoint),
    ]));
    // What the worker got first (the emulator hands out one set until half its life is gone).
    let first = metadata(&stack, ROLE).await;
    let sent = submit_throughout(
        &stack,
        "cred-role",
        Duration::from_secs(4 * LIFETIME_S),
        || async {},
    )
    .await;
    assert!(sent >= 40, "{sent}");
    // Neither the worker nor the emulator (which logs refusals) saw an expired key in use.
    let logs = stack.logs();
    assert!(
        logs.matches("CVM role credentials refreshed").count() >= 3,
        "too few refreshes"
    );
    no_expired_key_used(&logs);
    refused_as_expired(&stack, keys_of(&first)).await;
    assert_never_logged(&stack, &[first, metadata(&stack, ROLE).await]);
    assert!(stack.stop_worker().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_a_credentials_file_follows_its_rewrites() {
    const ROLE: &str = "FileRole";
    const LIFETIME_S: u64 = 12;
    let mut stack = stack("cred-file", ROLE, LIFETIME_S);
    stack.start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    // A Secret volume's update: the new content is written aside and swapped in at once.
    let write = |answer: &Value| {
        let next = dir.path().join(".next");
        std::fs::write(&next, answer.to_string()).unwrap();
        std::fs::rename(&next, &path).unwrap();
    };
    let first = metadata(&stack, ROLE).await;
    write(&first);
    stack.start_worker_with(&without_keys(&[(
        "CI_WORKER__CI__CREDENTIALS_FILE",
        path.display().to_string(),
    )]));
    let answers = std::sync::Mutex::new(vec![first.clone()]);
    let sent = submit_throughout(
        &stack,
        "cred-file",
        Duration::from_secs(5 * LIFETIME_S / 2),
        || async {
            // The operator's side (a controller renewing the Secret): new keys once the service
            // rotates, well before the old ones expire.
            let now = metadata(&stack, ROLE).await;
            let mut seen = answers.lock().unwrap();
            if seen.last().unwrap()["TmpSecretId"] != now["TmpSecretId"] {
                write(&now);
                seen.push(now);
            }
        },
    )
    .await;
    assert!(sent >= 50, "{sent}");
    let answers = answers.into_inner().unwrap();
    assert!(answers.len() >= 3, "only {} key sets", answers.len());
    let logs = stack.logs();
    assert!(
        logs.matches("ci.credentials_file changed; new keys in use")
            .count()
            >= 2
    );
    no_expired_key_used(&logs);
    refused_as_expired(&stack, keys_of(&first)).await;
    assert_never_logged(&stack, &answers);
    assert!(stack.stop_worker().unwrap().success());
}
