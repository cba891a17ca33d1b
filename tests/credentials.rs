//! The credential chain and temporary credentials that rotate, end to end against an emulator
//! process: its CVM metadata path and its STS `AssumeRoleWithWebIdentity` issue key sets that expire
//! within seconds (and are refused after).
//!
//! - The chain (run in the test process against the emulator): each source taken when it is the
//!   first there (keys, profile file, TKE OIDC, the CVM role the metadata service names,
//!   `ci.credentials_file`), none without any; a wrong web identity token or half the `TKE_*`
//!   variables stop it with an error naming the variable and file, no secret in it; TKE OIDC keys
//!   refreshed before expiry with the token file re-read at each exchange (the test rotates it).
//! - A worker keeps submitting across several lifetimes without a failure, with its keys from
//!   `ci.cvm_role`, TKE OIDC (token rotated meanwhile), or `ci.credentials_file` (rewritten by the
//!   test as a Kubernetes Secret volume would be). The CMQ ingress signs with the same key sets
//!   (the stacks read completion events through CMQ).

mod common;
mod stack;

use ci_worker::ci::client::{CiClient, CiError};
use ci_worker::ci::sign::Credentials;
use ci_worker::config::Settings;
use ci_worker::credentials::{resolve, Resolved, Source};
use ci_worker::secret::Secret;
use ci_worker::shutdown::Shutdown;
use common::JobRequest;
use serde_json::Value;
use stack::{all_final, by_request, finals, Stack};
use std::collections::HashMap;
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
    assert_eq!(
        accepted(stack, keys).await,
        Err("SignatureExpired".to_string()),
        "expected 401 SignatureExpired"
    );
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

/// A stack whose emulator also serves STS, accepting the token in `token_file`.
fn sts_stack(prefix: &str, role: &str, lifetime_s: u64, token_file: &std::path::Path) -> Stack {
    let mut stack = stack(prefix, role, lifetime_s);
    stack.env.insert(
        "CI_WORKER__EMULATOR__WEB_IDENTITY_TOKEN_FILE".into(),
        token_file.display().to_string(),
    );
    stack
}

/// Writes `text` to `path` as kubelet updates a projected token: aside, then swapped in.
fn rotate(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// The `TKE_*` variables of a pod whose token is in `token_file`, exchanged at the emulator.
fn tke_vars(token_file: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("TKE_REGION", "ap-guangzhou".into()),
        ("TKE_PROVIDER_ID", "cls-emulator".into()),
        (
            "TKE_WEB_IDENTITY_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        (
            "TKE_ROLE_ARN",
            "qcs::cam::uin/100000000001:roleName/ci-worker".into(),
        ),
    ]
}

/// A running emulator whose STS accepts the token in `<dir>/token` (`jwt-0` now), and the
/// variables of a pod exchanging that very file there: one file for both sides, as the token
/// kubelet writes is the one the issuer accepts, so a worker that kept an old token would be
/// refused after a rotation.
async fn tke_pod(
    prefix: &str,
    lifetime_s: u64,
) -> (Stack, tempfile::TempDir, Vec<(&'static str, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    rotate(&token, "jwt-0");
    let mut stack = sts_stack(prefix, "Unused", lifetime_s, &token);
    stack.start_emulator().await;
    let mut vars = tke_vars(&token);
    vars.push((
        "CI_WORKER__CI__STS_ENDPOINT",
        format!("http://127.0.0.1:{}", stack.emulator_port),
    ));
    (stack, dir, vars)
}

/// The chain over `vars` (configuration and environment alike), as `ci-worker run` starts it.
async fn chain(
    vars: &[(&str, String)],
    stop: &Shutdown,
) -> Result<Option<Resolved>, ci_worker::credentials::CredentialError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let settings = Settings::load_from(None, &vars).unwrap();
    resolve(&settings, &vars, stop).await
}

/// Whether the emulator's CI API accepts `keys` now (a describe that gets past the signature).
async fn accepted(stack: &Stack, keys: Credentials) -> Result<(), String> {
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
        Err(CiError::Api { status: 401, body }) => Err(body.code),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_takes_the_first_source_there_in_the_sdks_order() {
    const ROLE: &str = "ChainRole";
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    rotate(&token, "jwt-chain-NeverShown");
    let mut stack = sts_stack("cred-chain", ROLE, 60, &token);
    stack.start_emulator().await;
    let endpoint = format!("http://127.0.0.1:{}", stack.emulator_port);
    let profile = dir.path().join("profile");
    std::fs::write(
        &profile,
        "[default]\nsecret_id = AKIDprofile\nsecret_key = profile-key-NeverShown\n",
    )
    .unwrap();
    let file = dir.path().join("credentials.json");
    std::fs::write(
        &file,
        r#"{"TmpSecretId":"AKIDfile","TmpSecretKey":"file-key-NeverShown"}"#,
    )
    .unwrap();
    let keys = vec![
        ("TENCENTCLOUD_SECRET_ID", "AKIDkeys".to_string()),
        ("TENCENTCLOUD_SECRET_KEY", "keys-key-NeverShown".to_string()),
        ("TENCENTCLOUD_TOKEN", "keys-token-NeverShown".to_string()),
    ];
    let profile_var = vec![(
        "TENCENTCLOUD_CREDENTIALS_FILE",
        profile.display().to_string(),
    )];
    let mut ambient = vec![
        ("CI_WORKER__CI__METADATA_ENDPOINT", endpoint.clone()),
        ("CI_WORKER__CI__STS_ENDPOINT", endpoint.clone()),
        ("HOME", dir.path().join("home").display().to_string()),
    ];
    ambient.extend(tke_vars(&token));
    let stop = Shutdown::new();
    let with = |parts: &[&[(&'static str, String)]]| -> Vec<(&'static str, String)> {
        parts.iter().flat_map(|p| p.iter().cloned()).collect()
    };

    // 1. Keys, before everything else there (their session token under TENCENTCLOUD_TOKEN).
    let r = chain(&with(&[&keys, &profile_var, &ambient]), &stop)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.source, Source::Keys);
    let current = r.credentials.current();
    assert_eq!(current.secret_id, "AKIDkeys");
    assert_eq!(
        current.session_token.as_ref().unwrap().expose(),
        "keys-token-NeverShown"
    );
    // 2. The profile file, before TKE OIDC and the CVM role.
    let r = chain(&with(&[&profile_var, &ambient]), &stop)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.source, Source::Profile(profile.clone()));
    assert_eq!(r.credentials.current().secret_id, "AKIDprofile");
    // 3. TKE OIDC, before the CVM role: keys STS issued, which CI accepts.
    let r = chain(&ambient, &stop).await.unwrap().unwrap();
    assert!(
        matches!(&r.source, Source::TkeOidc { role_arn } if role_arn.ends_with("roleName/ci-worker")),
        "{:?}",
        r.source
    );
    let tke_keys = (*r.credentials.current()).clone();
    assert!(tke_keys.secret_id.starts_with("AKIDemu"));
    accepted(&stack, tke_keys).await.unwrap();
    // 4. The CVM role, its name found at .../security-credentials/ (ci.cvm_role is empty).
    let no_tke: Vec<_> = ambient
        .iter()
        .filter(|(k, _)| !k.starts_with("TKE_"))
        .cloned()
        .collect();
    let r = chain(&no_tke, &stop).await.unwrap().unwrap();
    assert_eq!(
        r.source,
        Source::CvmRole {
            role: ROLE.into(),
            discovered: true
        }
    );
    let role_keys = (*r.credentials.current()).clone();
    assert_eq!(
        role_keys.secret_id,
        metadata(&stack, ROLE).await["TmpSecretId"]
    );
    accepted(&stack, role_keys).await.unwrap();
    // 5. ci.credentials_file: a role the configuration does not name is not looked for then.
    let file_var = vec![(
        "CI_WORKER__CI__CREDENTIALS_FILE",
        file.display().to_string(),
    )];
    let r = chain(&with(&[&no_tke, &file_var]), &stop)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.source, Source::File(file.clone()));
    assert_eq!(r.credentials.current().secret_id, "AKIDfile");
    // None: no source, no role bound (nothing listens on port 9).
    let none = vec![
        (
            "CI_WORKER__CI__METADATA_ENDPOINT",
            "http://127.0.0.1:9".to_string(),
        ),
        ("HOME", dir.path().join("home").display().to_string()),
    ];
    assert!(chain(&none, &stop).await.unwrap().is_none());
    stop.trigger();
    let logs = stack.logs();
    assert!(
        !logs.contains("NeverShown"),
        "a secret in the emulator's logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_web_identity_token_or_half_the_variables_stop_the_chain_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let accepted_token = dir.path().join("accepted");
    rotate(&accepted_token, "jwt-right");
    let mut stack = sts_stack("cred-wrong", "Unused", 60, &accepted_token);
    stack.start_emulator().await;
    let endpoint = format!("http://127.0.0.1:{}", stack.emulator_port);
    let pod_token = dir.path().join("pod-token");
    rotate(&pod_token, "jwt-wrong-NeverShown");
    let mut vars = tke_vars(&pod_token);
    vars.push(("CI_WORKER__CI__STS_ENDPOINT", endpoint.clone()));
    vars.push(("CI_WORKER__CI__METADATA_ENDPOINT", endpoint.clone()));
    let stop = Shutdown::new();
    let e = chain(&vars, &stop).await.unwrap_err().to_string();
    assert!(
        e.starts_with("TKE OIDC: STS refused AssumeRoleWithWebIdentity"),
        "{e}"
    );
    assert!(e.contains("InvalidParameter.WebIdentityTokenError"), "{e}");
    assert!(
        e.contains(&format!(
            "TKE_WEB_IDENTITY_TOKEN_FILE {}",
            pod_token.display()
        )),
        "{e}"
    );
    assert!(!e.contains("jwt-"), "{e}");
    // A token file that is not there is named with its variable (the older spelling here).
    let mut older: Vec<_> = vars
        .iter()
        .filter(|(k, _)| *k != "TKE_WEB_IDENTITY_TOKEN_FILE")
        .cloned()
        .collect();
    older.push(("TKE_IDENTITY_TOKEN_FILE", "/nonexistent/token".into()));
    let e = chain(&older, &stop).await.unwrap_err().to_string();
    assert!(
        e.starts_with("TKE OIDC: TKE_IDENTITY_TOKEN_FILE /nonexistent/token: cannot read"),
        "{e}"
    );
    // Half the variables: the missing ones named.
    let half: Vec<_> = vars
        .iter()
        .filter(|(k, _)| *k != "TKE_REGION" && *k != "TKE_PROVIDER_ID")
        .cloned()
        .collect();
    let e = chain(&half, &stop).await.unwrap_err().to_string();
    assert!(
        e.starts_with("TKE OIDC: TKE_REGION, TKE_PROVIDER_ID not set"),
        "{e}"
    );
    // An STS endpoint that is not STS.
    let mut elsewhere = vars.clone();
    elsewhere.push(("CI_WORKER__CI__STS_ENDPOINT", format!("{endpoint}/healthz")));
    let e = chain(&elsewhere, &stop).await.unwrap_err().to_string();
    assert!(e.contains("is ci.sts_endpoint STS?"), "{e}");
    stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tke_oidc_keys_are_refreshed_before_expiry_with_the_rotated_token() {
    const LIFETIME_S: u64 = 6;
    let (stack, dir, vars) = tke_pod("cred-tke", LIFETIME_S).await;
    let token = dir.path().join("token");
    let stop = Shutdown::new();
    let r = chain(&vars, &stop).await.unwrap().unwrap();
    let first = (*r.credentials.current()).clone();
    let mut seen = vec![first.secret_id.clone()];
    let started = Instant::now();
    let mut rotations = 0;
    while started.elapsed() < Duration::from_secs(3 * LIFETIME_S) {
        // The keys in use are accepted at every moment: refreshed before they expire.
        let now = (*r.credentials.current()).clone();
        accepted(&stack, now.clone())
            .await
            .unwrap_or_else(|code| panic!("keys in use refused: {code}"));
        if seen.last() != Some(&now.secret_id) {
            seen.push(now.secret_id.clone());
            rotations += 1;
            rotate(&token, &format!("jwt-{rotations}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A refresh a lifetime at least: 6 s keys, refreshed 2 s before expiry, over 18 s.
    assert!(seen.len() >= 4, "only {} key sets: {seen:?}", seen.len());
    assert_eq!(
        accepted(&stack, first).await.unwrap_err(),
        "SignatureExpired"
    );
    stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_tke_oidc_keeps_working_across_credential_lifetimes_and_token_rotations() {
    const LIFETIME_S: u64 = 6;
    let (mut stack, dir, env) = tke_pod("cred-oidc", LIFETIME_S).await;
    let token = dir.path().join("token");
    stack.start_worker_with(&without_keys(&env));
    let mut n = 0;
    let token_ref = &token;
    let sent = submit_throughout(
        &stack,
        "cred-oidc",
        Duration::from_secs(4 * LIFETIME_S),
        || {
            // kubelet rotates the token now and then (here every 2 s).
            n += 1;
            if n % 4 == 0 {
                rotate(token_ref, &format!("jwt-{n}"));
            }
            async {}
        },
    )
    .await;
    assert!(sent >= 40, "{sent}");
    let logs = stack.logs();
    assert!(
        logs.contains(
            "credentials: from TKE OIDC (role qcs::cam::uin/100000000001:roleName/ci-worker)"
        ),
        "the source is not logged"
    );
    assert!(
        logs.matches("TKE OIDC credentials refreshed").count() >= 3,
        "too few refreshes"
    );
    no_expired_key_used(&logs);
    assert!(!logs.contains("jwt-"), "a token in the logs");
    assert!(stack.stop_worker().unwrap().success());
}
