//! Small client-side tools behind `ci-worker submit`: publish a request and follow its results, as a
//! pipeline would (used by the local-stack demo and handy for smoke tests against a deployment).

use crate::config::Settings;
use crate::pulsar::{Follower, Outgoing, Publisher, SubscribeOptions, SubscriptionKind};
use crate::request::SubmitRequest;
use crate::shutdown::Shutdown;
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// Publishes `payload` to the request topic; with `wait`, prints (stdout, one JSON per line) every
/// result for its `request_id` until a final one arrives. A `stop` while waiting (SIGTERM, SIGINT)
/// ends the wait as a failure: no final result was seen.
pub async fn submit_and_wait(
    settings: &Settings,
    payload: Vec<u8>,
    wait: Option<Duration>,
    stop: Shutdown,
) -> Result<()> {
    let request_id = SubmitRequest::parse(&payload)
        .map(|r| r.request_id)
        .map_err(|e| anyhow::anyhow!("not a request: {e}"))?;
    let client = crate::pulsar::connect_with(&settings.pulsar).await?;
    // Subscribe before publishing so no result can slip past.
    let results = match wait {
        Some(_) => Some(
            Follower::subscribe(
                &client,
                &SubscribeOptions {
                    topic: settings.pulsar.result_topic.clone(),
                    subscription: format!("ci-worker-submit-cli-{}", uuid::Uuid::new_v4()),
                    name_prefix: "ci-worker-submit-cli".into(),
                    receiver_queue_size: 1000,
                    dead_letter: None,
                    from_earliest: false,
                    kind: SubscriptionKind::Shared,
                },
            )
            .await?,
        ),
        None => None,
    };
    let publisher = Publisher::new(client.clone(), "ci-worker-submit-cli");
    publisher
        .publish(
            &settings.pulsar.request_topic,
            Outgoing::new(payload).with_key(request_id.clone()),
        )
        .await?;
    eprintln!(
        "published request {request_id} to {}",
        settings.pulsar.request_topic
    );
    publisher.close().await;
    let (Some(mut follower), Some(limit)) = (results, wait) else {
        return Ok(());
    };
    let outcome = tokio::select! {
        outcome = follow(&mut follower, &request_id, limit) => outcome,
        _ = stop.triggered() => Err(anyhow::anyhow!(
            "interrupted before a final result for {request_id} arrived"
        )),
    };
    // The subscription is this run's alone: removed whatever the outcome, so no backlog is left
    // growing on the result topic.
    // Bounded: the crate's consumer engine may be waiting to push results nobody reads any more.
    match tokio::time::timeout(Duration::from_secs(2), follower.unsubscribe()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("could not remove this run's subscription on the result topic: {e}")
        }
        Err(_) => eprintln!(
            "could not remove this run's subscription on the result topic within 2 s; \
             remove it with pulsar-admin if it stays"
        ),
    }
    outcome
}

/// Prints every result for `request_id` until a final one arrives, within `limit`.
async fn follow(follower: &mut Follower, request_id: &str, limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, follower.next())
            .await
            .with_context(|| format!("no final result for {request_id} within {limit:?}"))?;
        let Some(payload) = next else {
            bail!("result consumer ended");
        };
        let payload = payload?;
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&payload) else {
            continue;
        };
        if value["request_id"] != request_id {
            continue;
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        if value["state"] != "submitted" {
            return Ok(());
        }
    }
}
