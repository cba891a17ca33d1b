//! Where CI's completion events go and whether the worker reads them there:
//! - `callback route`: `ci.callback_type` against `worker.callback_ingress`
//!   ([`Settings::callback_mismatch`], what `ci-worker run` warns about);
//! - `TDMQ` with the `cmq` ingress: `cmq queue <name>`, CMQ API 2.0 `GetQueueAttributes` (what
//!   `qcloud-cmq-sdk-py3`'s `Queue.get_attributes` calls): the queue exists and the keys may read
//!   it; `cmq unack time`: the queue's Max Message Unack Time — `msgRetentionSeconds` in the API's
//!   answer (TDMQ for CMQ: 30 s to 12 h, "the server will automatically acknowledge the message"
//!   after it, counted from sending) — against `worker.job_timeout`;
//!   Tencent lists `GetQueueAttributes` among the CMQ API 2.0 calls retired on 2022-12-31 (TDMQ
//!   for CMQ's "API 2.0 to 3.0 switch guide", 1111/52720; its API 3.0 counterpart is
//!   `DescribeCmqQueueDetail` on `tdmq.tencentcloudapi.com`, signed TC3-HMAC-SHA256), while saying
//!   TDMQ for CMQ stays compatible with the CMQ SDKs: an endpoint that answers the action as
//!   unknown makes the two lines `skipped`, with what to look at in the console instead;
//! - `Url`: `callback url`, not checkable from inside (whether CI reaches it from the internet);
//! - `Kafka` with the `kafka` ingress: `kafka topic <name>`, the topic's metadata from
//!   `kafka.brokers` with the `[kafka]` security settings (the consumer's own): the brokers answer,
//!   accept the credentials, and know the topic with at least one partition (CKafka creates no
//!   topic by itself). Read-only: no group is joined, nothing is produced.

use super::check::Check;
use crate::ci::rules::{CallbackType, MqMode};
use crate::ci::sign::SharedCredentials;
use crate::cmq::api::code;
use crate::cmq::client::{CmqClient, CmqError, QueueAttributes};
use crate::config::{CallbackIngress, Settings};
use std::time::Duration;

pub const ROUTE: &str = "callback route";
pub const UNACK: &str = "cmq unack time";
pub const URL: &str = "callback url";
pub const KAFKA: &str = "kafka topic";

fn queue_name(queue: &str) -> String {
    format!("cmq queue {queue}")
}

/// The `callback route` line.
pub fn judge_route(settings: &Settings) -> Check {
    match settings.callback_mismatch() {
        Some(m) => Check::fail(ROUTE, m.consequence(), m.fix()),
        None => Check::ok(
            ROUTE,
            format!(
                "ci.callback_type = {} is read by worker.callback_ingress {}",
                settings.ci.callback_type,
                settings
                    .worker
                    .callback_ingress
                    .iter()
                    .map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
    }
}

/// The `cmq queue` line for `GetQueueAttributes`' outcome.
pub fn judge_queue(
    settings: &Settings,
    endpoint: &str,
    outcome: Result<&QueueAttributes, &CmqError>,
) -> Check {
    let queue = settings.cmq_queue();
    let name = queue_name(queue);
    let region = settings.ci.mq_region.as_str();
    let topic_note = if settings.ci.mq_mode == MqMode::Topic {
        format!(
            " (ci.mq_mode = Topic: CI writes to topic {}; whether this queue subscribes to it is not checked)",
            settings.ci.mq_name
        )
    } else {
        String::new()
    };
    match outcome {
        Ok(a) => Check::ok(
            name,
            format!(
                "exists at {endpoint} (visibilityTimeout {}, pollingWaitSeconds {}){topic_note}",
                seconds(a.visibility_timeout),
                seconds(a.polling_wait_seconds)
            ),
        ),
        Err(CmqError::Refused { code, message, .. })
            if *code == code::QUEUE_NOT_EXIST
                || (*code == code::INVALID_PARAMETER && message.contains("10100")) =>
        {
            Check::fail(
                name,
                format!("CMQ at {endpoint} has no queue {queue} (code {code}: {message})"),
                format!(
                    "create the queue in the TDMQ for CMQ console (region {region}, queue service) with a Max Message Unack Time of at least worker.job_timeout, or set ci.mq_name (cmq.queue) to the queue CI writes to"
                ),
            )
        }
        Err(CmqError::Refused { code, message, .. })
            if *code == code::INVALID_PARAMETER && message.contains("10430") =>
        {
            Check::skipped(
                name,
                format!(
                    "CMQ at {endpoint} does not serve GetQueueAttributes (code {code}: {message}; TDMQ retired API 2.0's queue management calls): check in the TDMQ for CMQ console (region {region}) that queue {queue} exists with a Max Message Unack Time of at least worker.job_timeout"
                ),
            )
        }
        Err(CmqError::Refused { code, message, .. }) if *code == code::AUTH_FAILED => Check::fail(
            name,
            format!("CMQ at {endpoint} refused the signature (code {code}: {message})"),
            "use keys of the account that owns the queue (a temporary key with its session token); cmq.signature_method must be one CMQ accepts",
        ),
        Err(CmqError::Refused { code, message, .. }) => Check::fail(
            name,
            format!("CMQ at {endpoint} refused GetQueueAttributes (code {code}: {message})"),
            "when the message says CAM (10461 \"no cam authentication\", 4110): grant the credentials' CAM user or role the TDMQ for CMQ queue's read, receive and delete actions; otherwise see CMQ's error codes",
        ),
        Err(e) => Check::fail(
            name,
            format!("CMQ unreachable at {endpoint}: {e}"),
            format!("check cmq.endpoint (empty: the public endpoint of ci.mq_region = {region}) and the network"),
        ),
    }
}

fn seconds(v: Option<u64>) -> String {
    v.map_or_else(|| "not reported".into(), |s| format!("{s}s"))
}

/// The `cmq unack time` line: the queue keeps an event at least `worker.job_timeout`.
pub fn judge_unack(msg_retention_seconds: Option<u64>, job_timeout: Duration) -> Check {
    let Some(unack) = msg_retention_seconds else {
        return Check::skipped(
            UNACK,
            "GetQueueAttributes reported no msgRetentionSeconds (the queue's Max Message Unack Time)",
        );
    };
    let wait = job_timeout.as_secs();
    if Duration::from_secs(unack) >= job_timeout {
        Check::ok(
            UNACK,
            format!("Max Message Unack Time {unack}s ≥ worker.job_timeout {wait}s"),
        )
    } else {
        Check::fail(
            UNACK,
            format!(
                "Max Message Unack Time {unack}s < worker.job_timeout {wait}s: TDMQ drops an event not deleted within {unack}s of its sending, so events written while the worker is stopped or behind are lost and their jobs' results wait for the deadline's describe"
            ),
            format!(
                "raise the queue's Max Message Unack Time to at least {wait}s (TDMQ for CMQ console: queue → Edit; at most 12h), or lower worker.job_timeout"
            ),
        )
    }
}

/// The callback lines.
pub async fn checks(settings: &Settings, credentials: Option<&SharedCredentials>) -> Vec<Check> {
    let mut out = vec![judge_route(settings)];
    match settings.ci.callback_type {
        CallbackType::Tdmq if !settings.has_ingress(CallbackIngress::Cmq) => {
            out.push(Check::skipped(
                queue_name(settings.cmq_queue()),
                "worker.callback_ingress has no cmq: whatever copies CI's TDMQ events into pulsar.callback_topic reads the queue",
            ));
        }
        CallbackType::Tdmq => {
            let endpoint = settings.cmq_endpoint();
            let Some(keys) = credentials else {
                out.push(Check::skipped(
                    queue_name(settings.cmq_queue()),
                    "no credentials to sign GetQueueAttributes with",
                ));
                return out;
            };
            let client = CmqClient::with_shared(
                &endpoint,
                keys.clone(),
                settings.cmq.signature_method,
                settings.ci.request_timeout,
            );
            let outcome = match client {
                Ok(c) => c.get_queue_attributes(settings.cmq_queue()).await,
                Err(e) => Err(e),
            };
            let queue = judge_queue(settings, &endpoint, outcome.as_ref());
            let unknown = queue.status == super::check::Status::Skipped;
            out.push(queue);
            match &outcome {
                Ok(a) => out.push(judge_unack(
                    a.msg_retention_seconds,
                    settings.worker.job_timeout,
                )),
                Err(_) if unknown => {
                    out.push(Check::skipped(UNACK, "needs GetQueueAttributes' answer"))
                }
                Err(_) => {}
            }
        }
        CallbackType::Url => out.push(Check::skipped(
            URL,
            format!(
                "{} must be reachable by CI from the internet: not checkable from inside",
                settings.ci.callback_url.as_ref().map_or("", |u| u.as_str())
            ),
        )),
        CallbackType::Kafka if !settings.has_ingress(CallbackIngress::Kafka) => {
            out.push(Check::skipped(
                format!("{KAFKA} {}", settings.kafka_topic()),
                "worker.callback_ingress has no kafka: whatever copies CI's Kafka events into pulsar.callback_topic reads the topic",
            ))
        }
        CallbackType::Kafka => out.push(kafka_topic(settings).await),
    }
    out
}

/// The topic's metadata, read the way the ingress's consumer connects.
async fn kafka_topic(settings: &Settings) -> Check {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topic = settings.kafka_topic().to_string();
    let name = format!("{KAFKA} {topic}");
    let config = crate::kafka::client_config(&settings.kafka);
    let looked = {
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create()?;
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            Ok::<_, rdkafka::error::KafkaError>(
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| (t.error().is_none(), t.partitions().len())),
            )
        })
        .await
    };
    judge_kafka(&name, &settings.kafka.brokers, looked.ok())
}

/// What the metadata answer says: `None` when the lookup could not run at all.
fn judge_kafka(
    name: &str,
    brokers: &str,
    looked: Option<Result<Option<(bool, usize)>, rdkafka::error::KafkaError>>,
) -> Check {
    match looked {
        Some(Ok(Some((true, partitions)))) if partitions > 0 => Check::ok(
            name,
            format!("{partitions} partition(s) on {brokers}"),
        ),
        Some(Ok(_)) => Check::fail(
            name,
            "the brokers do not know the topic",
            "create it in the CKafka console (Topic Management) with the name ci.kafka_topic gives, or fix kafka.topic / ci.kafka_topic",
        ),
        Some(Err(e)) => Check::fail(
            name,
            format!("the brokers at {brokers} did not answer: {e}"),
            "check kafka.brokers (the instance's access address), kafka.security_protocol and, on the public endpoint, kafka.sasl_username (<instanceId>#<user>) and kafka.sasl_password",
        ),
        None => Check::fail(name, "the lookup did not run", "see the log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::check::Status;

    #[test]
    fn kafka_answers_are_judged() {
        let ok = judge_kafka("kafka topic t", "b:9092", Some(Ok(Some((true, 3)))));
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.detail.contains("3 partition"), "{ok:?}");
        for missing in [
            Some(Ok(None)),
            Some(Ok(Some((false, 0)))),
            Some(Ok(Some((true, 0)))),
        ] {
            let check = judge_kafka("kafka topic t", "b:9092", missing);
            assert_eq!(check.status, Status::Fail);
            assert!(
                check
                    .fix
                    .as_deref()
                    .unwrap_or_default()
                    .contains("CKafka console"),
                "{check:?}"
            );
        }
        let down = judge_kafka(
            "kafka topic t",
            "b:9092",
            Some(Err(rdkafka::error::KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
            ))),
        );
        assert_eq!(down.status, Status::Fail);
        assert!(
            down.fix
                .as_deref()
                .unwrap_or_default()
                .contains("kafka.brokers"),
            "{down:?}"
        );
    }

    #[test]
    fn the_unack_time_must_cover_the_job_timeout() {
        let ten_min = Duration::from_secs(600);
        assert_eq!(judge_unack(Some(600), ten_min).status, Status::Ok);
        let short = judge_unack(Some(60), ten_min);
        assert_eq!(short.status, Status::Fail);
        assert!(short
            .detail
            .starts_with("Max Message Unack Time 60s < worker.job_timeout 600s"));
        assert!(short.fix.unwrap().contains("at least 600s"));
        assert_eq!(judge_unack(None, ten_min).status, Status::Skipped);
    }

    #[test]
    fn a_missing_queue_says_where_to_create_it() {
        let s = Settings::default();
        let missing = CmqError::Refused {
            action: "GetQueueAttributes",
            code: 4440,
            message: "(10100)queue is not existed".into(),
            request_id: String::new(),
        };
        let c = judge_queue(&s, "http://x", Err(&missing));
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.name, "cmq queue ci-callbacks");
        assert!(c.fix.unwrap().contains("TDMQ for CMQ console (region gz"));
        let attrs = QueueAttributes {
            visibility_timeout: Some(30),
            ..QueueAttributes::default()
        };
        let retired = CmqError::Refused {
            action: "GetQueueAttributes",
            code: 4000,
            message: "(10430)action name GetQueueAttributes is not existed".into(),
            request_id: String::new(),
        };
        let c = judge_queue(&s, "http://x", Err(&retired));
        assert_eq!(c.status, Status::Skipped);
        assert!(c.detail.contains("check in the TDMQ for CMQ console"));
        let ok = judge_queue(&s, "http://x", Ok(&attrs));
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.detail.contains("visibilityTimeout 30s"));
    }

    #[test]
    fn the_route_fails_when_no_ingress_reads_the_events() {
        let mut s = Settings::default();
        assert_eq!(judge_route(&s).status, Status::Ok);
        s.worker.callback_ingress = vec![CallbackIngress::Http];
        let c = judge_route(&s);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("neither cmq nor pulsar"));
    }
}
