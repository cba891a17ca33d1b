//! The Pulsar checks: the broker (`pulsar.url`, `pulsar.token`), then each topic of `[pulsar]`
//! for its role: it exists (partitioned or not), and the broker accepts a producer on it (none is
//! sent) and a subscription (non-durable, of its own, unsubscribed at once) where the worker
//! produces or reads.
//!
//! Existence is asked without creating anything: a producer or consumer on a missing topic would
//! create it on a broker that allows auto-creation (Apache Pulsar's default). A partitioned topic
//! is found by its partition count (the partitioned-metadata lookup, which does not create one on
//! a broker whose auto-created topics are non-partitioned, the default), any other by the
//! namespace's topic list (`CommandGetTopicsOfNamespace`, which the role's consume or produce
//! permission on the namespace allows; no admin API, which TDMQ restricts).
//!
//! The crate's calls for the two look-ups are made here rather than through a wrapper of
//! `crate::pulsar` (which has none for them): they are read-only and used by this command alone.

use super::check::Check;
use crate::config::{CallbackIngress, PulsarSettings, Settings};
use crate::pulsar::{subscribe, Client, Publisher, SubscribeOptions, SubscriptionKind};
use crate::shutdown::Shutdown;
use std::time::Duration;

pub const BROKER: &str = "pulsar broker";
/// The most one broker call of a check may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The name the throwaway subscriptions and the producers start with.
const NAME_PREFIX: &str = "ci-worker-doctor";

/// One topic of `[pulsar]` and what the worker does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub key: &'static str,
    pub topic: String,
    pub produce: bool,
    pub consume: bool,
    /// The worker refuses this topic partitioned (`pulsar.deadline_topic`).
    pub unpartitioned: bool,
}

/// The topics to check, in `[pulsar]`'s order (`done_topic`, unused, is not one).
pub fn roles(settings: &Settings) -> Vec<Role> {
    let p: &PulsarSettings = &settings.pulsar;
    let ingress_writes =
        settings.has_ingress(CallbackIngress::Cmq) || settings.has_ingress(CallbackIngress::Http);
    let role = |key, topic: &String, produce, consume| Role {
        key,
        topic: topic.clone(),
        produce,
        consume,
        unpartitioned: false,
    };
    vec![
        role("pulsar.request_topic", &p.request_topic, false, true),
        role(
            "pulsar.callback_topic",
            &p.callback_topic,
            ingress_writes,
            true,
        ),
        role("pulsar.result_topic", &p.result_topic, true, false),
        role(
            "pulsar.dead_letter_topic",
            &p.dead_letter_topic,
            true,
            false,
        ),
        Role {
            unpartitioned: true,
            ..role("pulsar.deadline_topic", &p.deadline_topic, true, true)
        },
    ]
}

/// What the broker said of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Not partitioned (0) or with this many partitions.
    Exists {
        partitions: u32,
    },
    Missing,
    /// The broker could not be asked.
    Unknown(String),
}

/// The topic's line, from what was found and the producer's and subscription's outcomes (`None`:
/// not tried).
pub fn judge_topic(
    role: &Role,
    found: &Found,
    produced: Option<Result<(), String>>,
    subscribed: Option<Result<(), String>>,
) -> Check {
    let topic = &role.topic;
    let name = format!("{} {topic}", role.key);
    let partitions = match found {
        Found::Missing => {
            return Check::fail(
                name,
                "does not exist",
                format!(
                    "create it (TDMQ for Pulsar console: Topic → Create in its namespace; Apache Pulsar: pulsar-admin topics create {topic}), or set {} to the topic meant",
                    role.key
                ),
            )
        }
        Found::Unknown(e) => {
            return Check::fail(
                name,
                format!("cannot be looked up: {e}"),
                "check pulsar.url and pulsar.token, and that the token's role may use the topic's namespace",
            )
        }
        Found::Exists { partitions } => *partitions,
    };
    if role.unpartitioned && partitions > 0 {
        return Check::fail(
            name,
            format!("has {partitions} partitions; the worker refuses a partitioned {} (a job's marker names its deadline record by ledger and entry)", role.key),
            format!("use a topic that is not partitioned for {}", role.key),
        );
    }
    let grant = |what: &str| {
        format!(
            "grant the role of pulsar.token {what} permission on the topic's namespace (TDMQ for Pulsar console: Role management → the namespace's permissions)"
        )
    };
    if let Some(Err(e)) = &produced {
        return Check::fail(name, format!("refused a producer: {e}"), grant("produce"));
    }
    if let Some(Err(e)) = &subscribed {
        return Check::fail(
            name,
            format!("refused a subscription: {e}"),
            grant("consume"),
        );
    }
    let shape = if partitions == 0 {
        "exists (not partitioned)".to_string()
    } else {
        format!("exists ({partitions} partitions)")
    };
    let mut did = Vec::new();
    if produced.is_some() {
        did.push("a producer accepted (nothing sent)");
    }
    if subscribed.is_some() {
        did.push("a throwaway subscription accepted and deleted");
    }
    Check::ok(name, format!("{shape}; {}", did.join("; ")))
}

/// Whether `topic` exists, asked without creating it.
async fn find(client: &Client, topic: &str) -> Found {
    match bounded(client.existing_partitions(topic)).await {
        Ok(Some(partitions)) => Found::Exists { partitions },
        Ok(None) => Found::Missing,
        Err(e) => Found::Unknown(e),
    }
}

async fn bounded<T>(
    what: impl std::future::Future<Output = Result<T, crate::pulsar::PulsarIoError>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, what).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// A producer on `topic`, built and closed: nothing is sent. The broker's answer to its creation
/// is the proof (no ping: the crate keeps one pong slot per connection, and a ping racing its
/// keep-alive ping can wait for the next one).
async fn try_produce(client: &Client, topic: &str) -> Result<(), String> {
    let publisher = Publisher::new(client.clone(), NAME_PREFIX);
    let stop = Shutdown::new();
    let outcome = match tokio::time::timeout(
        CALL_TIMEOUT,
        publisher.wait_until_connected(topic, &stop),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no producer within {CALL_TIMEOUT:?}")),
    };
    publisher.close().await;
    outcome
}

/// A consumer on a non-durable subscription of its own, unsubscribed at once.
async fn try_subscribe(client: &Client, topic: &str) -> Result<(), String> {
    let options = SubscribeOptions {
        topic: topic.to_string(),
        subscription: NAME_PREFIX.to_string(),
        name_prefix: NAME_PREFIX.to_string(),
        receiver_queue_size: 1,
        dead_letter: None,
        from_earliest: false,
        kind: SubscriptionKind::OwnNonDurable,
    };
    let mut consumer = bounded(subscribe(client, &options)).await?;
    // A non-durable subscription goes with its consumer anyway; unsubscribing says so at once.
    let _ = tokio::time::timeout(CALL_TIMEOUT, consumer.unsubscribe()).await;
    Ok(())
}

/// The broker's line and each topic's.
pub async fn checks(settings: &Settings) -> Vec<Check> {
    let roles = roles(settings);
    let client = match bounded(crate::pulsar::connect_with(&settings.pulsar)).await {
        Ok(c) => c,
        Err(e) => {
            let mut out = vec![Check::fail(
                BROKER,
                e,
                "check pulsar.url (TDMQ for Pulsar: the cluster's access address) and pulsar.token (a role's token)",
            )];
            out.extend(
                roles
                    .iter()
                    .map(|r| Check::skipped(format!("{} {}", r.key, r.topic), "no broker to ask")),
            );
            return out;
        }
    };
    let mut out = vec![Check::ok(BROKER, settings.pulsar.url_usage())];
    for role in &roles {
        let found = find(&client, &role.topic).await;
        let usable = matches!(found, Found::Exists { partitions } if !(role.unpartitioned && partitions > 0));
        let produced = if usable && role.produce {
            Some(try_produce(&client, &role.topic).await)
        } else {
            None
        };
        let subscribed = if usable && role.consume && !matches!(produced, Some(Err(_))) {
            Some(try_subscribe(&client, &role.topic).await)
        } else {
            None
        };
        out.push(judge_topic(role, &found, produced, subscribed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::check::Status;

    #[test]
    fn each_topic_is_checked_for_what_the_worker_does_with_it() {
        let s = Settings::default();
        let r = roles(&s);
        let keys: Vec<&str> = r.iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            [
                "pulsar.request_topic",
                "pulsar.callback_topic",
                "pulsar.result_topic",
                "pulsar.dead_letter_topic",
                "pulsar.deadline_topic"
            ]
        );
        assert!(r[0].consume && !r[0].produce);
        assert!(
            r[1].produce && r[1].consume,
            "the default cmq ingress writes it"
        );
        assert!(r[2].produce && !r[2].consume);
        assert!(r[4].unpartitioned && r[4].produce && r[4].consume);
    }

    #[test]
    fn missing_partitioned_and_refused_topics_fail_with_their_key() {
        let r = &roles(&Settings::default())[4];
        let missing = judge_topic(r, &Found::Missing, None, None);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing
            .name
            .starts_with("pulsar.deadline_topic persistent://"));
        assert!(missing.fix.unwrap().contains("pulsar-admin topics create"));
        let split = judge_topic(r, &Found::Exists { partitions: 4 }, None, None);
        assert!(split.detail.starts_with("has 4 partitions"));
        let refused = judge_topic(
            r,
            &Found::Exists { partitions: 0 },
            Some(Err("AuthorizationError".into())),
            None,
        );
        assert!(refused.fix.unwrap().contains("produce permission"));
        let ok = judge_topic(
            r,
            &Found::Exists { partitions: 0 },
            Some(Ok(())),
            Some(Ok(())),
        );
        assert_eq!(ok.status, Status::Ok);
        assert_eq!(
            ok.detail,
            "exists (not partitioned); a producer accepted (nothing sent); a throwaway subscription accepted and deleted"
        );
    }
}
