//! Smoke tests of the real Apache Pulsar broker through the `pulsar` crate: the features the worker
//! relies on (Shared subscriptions, properties, keys, ack, nack → redelivery) and JWT token auth.
//! Needs the brokers started by `scripts/test.sh` (see tests/common/mod.rs for the variables).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{next_message, properties, unique_name, unique_topic, within};
use futures::StreamExt;
use pulsar::{
    consumer::{ConsumerOptions, InitialPosition, Message},
    message::proto::MessageIdData,
    producer::ProducerOptions,
    Authentication, ConnectionRetryOptions, Consumer, OperationRetryOptions, Producer, Pulsar,
    SubType, TokioExecutor,
};

type Msg = Message<Vec<u8>>;

async fn shared_consumer(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    subscription: &str,
    name: &str,
) -> Consumer<Vec<u8>, TokioExecutor> {
    within(
        30,
        "consumer creation",
        client
            .consumer()
            .with_topic(topic)
            .with_subscription(subscription)
            .with_subscription_type(SubType::Shared)
            .with_consumer_name(name)
            .with_options(
                ConsumerOptions::default().with_initial_position(InitialPosition::Earliest),
            )
            .build(),
    )
    .await
    .expect("create consumer")
}

/// Batching off: every message is its own entry, so ack/nack/redelivery are per message.
async fn unbatched_producer(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
) -> Producer<TokioExecutor> {
    let producer = within(
        30,
        "producer creation",
        client
            .producer()
            .with_topic(topic)
            .with_name(unique_name("smoke-producer"))
            .with_options(ProducerOptions {
                batch_size: None,
                batch_byte_size: None,
                batch_timeout: None,
                ..Default::default()
            })
            .build(),
    )
    .await
    .expect("create producer");
    assert!(producer.options().batch_size.is_none());
    producer
}

async fn send(
    producer: &mut Producer<TokioExecutor>,
    payload: &str,
    key: &str,
    props: &[(&str, &str)],
) {
    let mut builder = producer
        .create_message()
        .with_content(payload.as_bytes().to_vec())
        .with_key(key);
    for (k, v) in props {
        builder = builder.with_property(*k, *v);
    }
    let receipt = within(30, "send", builder.send_non_blocking())
        .await
        .expect("send");
    within(30, "send receipt", receipt)
        .await
        .expect("send receipt");
}

/// The next message from either of two consumers of one subscription: (consumer index, message).
async fn next_from_either(
    a: &mut Consumer<Vec<u8>, TokioExecutor>,
    b: &mut Consumer<Vec<u8>, TokioExecutor>,
    secs: u64,
) -> (usize, Msg) {
    let (idx, item) = within(secs, "a message on the Shared subscription", async {
        tokio::select! {
            m = a.next() => (0, m),
            m = b.next() => (1, m),
        }
    })
    .await;
    match item {
        Some(Ok(m)) => (idx, m),
        Some(Err(e)) => panic!("consumer {idx} error: {e}"),
        None => panic!("consumer {idx} stream ended"),
    }
}

fn id_of(m: &Msg) -> (u64, u64) {
    let id: &MessageIdData = m.message_id();
    (id.ledger_id, id.entry_id)
}

fn text(m: &Msg) -> String {
    String::from_utf8(m.payload.data.clone()).expect("utf-8 payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_properties_and_keys_once() {
    let client = common::client().await;
    let topic = unique_topic("smoke-shared");
    let sub = unique_name("smoke-sub");
    let (name_a, name_b) = (unique_name("smoke-a"), unique_name("smoke-b"));
    let mut a = shared_consumer(&client, &topic, &sub, &name_a).await;
    let mut b = shared_consumer(&client, &topic, &sub, &name_b).await;
    assert_eq!(a.consumer_name(), Some(name_a.as_str()));
    assert_eq!(b.consumer_name(), Some(name_b.as_str()));
    assert_ne!(a.consumer_name(), b.consumer_name());
    assert_eq!(a.sub_type(), SubType::Shared);

    let mut producer = unbatched_producer(&client, &topic).await;
    const N: usize = 20;
    for i in 0..N {
        let seq = i.to_string();
        send(
            &mut producer,
            &format!("payload-{i}"),
            &format!("key-{i}"),
            &[("seq", seq.as_str()), ("kind", "smoke")],
        )
        .await;
    }

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_consumer = [0usize; 2];
    while seen.len() < N {
        let (idx, m) = next_from_either(&mut a, &mut b, 30).await;
        let payload = text(&m);
        let i: usize = payload
            .strip_prefix("payload-")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected payload {payload:?}"));
        assert_eq!(
            m.key().as_deref(),
            Some(format!("key-{i}").as_str()),
            "partition key"
        );
        assert_eq!(
            m.metadata().partition_key.as_deref(),
            Some(format!("key-{i}").as_str())
        );
        let props = properties(&m);
        assert!(
            props.contains(&("seq".to_string(), i.to_string())),
            "props {props:?}"
        );
        assert!(
            props.contains(&("kind".to_string(), "smoke".to_string())),
            "props {props:?}"
        );
        assert_eq!(
            m.message_id.batch_size, None,
            "batching is off: {:?}",
            m.message_id
        );
        if seen.insert(payload.clone(), idx).is_some() {
            panic!("{payload} delivered twice although it was acked");
        }
        per_consumer[idx] += 1;
        if idx == 0 {
            a.ack(&m).await.expect("ack");
        } else {
            b.ack(&m).await.expect("ack");
        }
    }
    assert_eq!(per_consumer[0] + per_consumer[1], N);
    eprintln!("Shared subscription split {N} messages as {per_consumer:?}");

    producer.close().await.expect("close producer");
    a.close().await.expect("close consumer a");
    b.close().await.expect("close consumer b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_the_same_message() {
    let client = common::client().await;
    let topic = unique_topic("smoke-nack");
    let sub = unique_name("smoke-sub");
    let mut a = shared_consumer(&client, &topic, &sub, &unique_name("smoke-a")).await;
    let mut b = shared_consumer(&client, &topic, &sub, &unique_name("smoke-b")).await;
    let mut producer = unbatched_producer(&client, &topic).await;

    send(
        &mut producer,
        "nack-me",
        "nack-key",
        &[("attempt", "first")],
    )
    .await;
    let (idx, first) = next_from_either(&mut a, &mut b, 30).await;
    assert_eq!(text(&first), "nack-me");
    let first_id = id_of(&first);
    // The crate's nack asks the broker for redelivery at once (no client-side delay).
    if idx == 0 {
        a.nack(&first).await.expect("nack");
    } else {
        b.nack(&first).await.expect("nack");
    }

    // Redelivered (to either consumer): same payload, same entry, same key and properties.
    // (pulsar 6.9 does not expose the broker's redelivery_count on Message.)
    let (idx2, again) = next_from_either(&mut a, &mut b, 30).await;
    assert_eq!(text(&again), "nack-me", "redelivered payload");
    assert_eq!(id_of(&again), first_id, "redelivered message id");
    assert_eq!(again.key().as_deref(), Some("nack-key"));
    assert_eq!(
        properties(&again),
        vec![("attempt".to_string(), "first".to_string())]
    );
    if idx2 == 0 {
        a.ack(&again).await.expect("ack");
    } else {
        b.ack(&again).await.expect("ack");
    }

    // After the ack the message must not come back: the next delivery is a fresh marker.
    send(&mut producer, "marker", "marker-key", &[]).await;
    let (idx3, marker) = next_from_either(&mut a, &mut b, 30).await;
    assert_eq!(
        text(&marker),
        "marker",
        "an acked message was delivered again"
    );
    if idx3 == 0 {
        a.ack(&marker).await.expect("ack");
    } else {
        b.ack(&marker).await.expect("ack");
    }

    a.close().await.expect("close a");
    b.close().await.expect("close b");
    producer.close().await.expect("close producer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_accepts_the_admin_token() {
    let client = common::auth_client().await;
    let topic = unique_topic("smoke-auth");
    let sub = unique_name("smoke-sub");
    let mut consumer = shared_consumer(&client, &topic, &sub, &unique_name("smoke-auth")).await;
    let mut producer = unbatched_producer(&client, &topic).await;
    send(
        &mut producer,
        "authenticated",
        "auth-key",
        &[("who", "admin")],
    )
    .await;
    let m = next_message(&mut consumer, 30).await;
    assert_eq!(text(&m), "authenticated");
    assert_eq!(
        properties(&m),
        vec![("who".to_string(), "admin".to_string())]
    );
    consumer.ack(&m).await.expect("ack");
    consumer.close().await.expect("close consumer");
    producer.close().await.expect("close producer");
}

/// Connect to the token broker with `auth` (or none) and try to create a producer; the error text
/// if the broker refused at any step.
async fn try_connect_and_produce(auth: Option<Authentication>) -> Result<(), String> {
    let url = common::auth_pulsar_url();
    common::require_broker(&url).await;
    let mut builder = Pulsar::builder(url.as_str(), TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            max_retries: 1,
            connection_timeout: Duration::from_secs(10),
            ..Default::default()
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: Duration::from_secs(10),
            retry_delay: Duration::from_millis(200),
            max_retries: Some(1),
        });
    if let Some(auth) = auth {
        builder = builder.with_auth(auth);
    }
    let client = builder
        .build()
        .await
        .map_err(|e| format!("connect: {e} ({e:?})"))?;
    let mut producer = client
        .producer()
        .with_topic(unique_topic("smoke-refused"))
        .build()
        .await
        .map_err(|e| format!("create producer: {e}"))?;
    producer
        .send_non_blocking(b"must not be stored".to_vec())
        .await
        .map_err(|e| format!("send: {e}"))?
        .await
        .map_err(|e| format!("receipt: {e}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_refuses_a_client_without_token() {
    let result = within(
        90,
        "the broker's answer to a client without token",
        try_connect_and_produce(None),
    )
    .await;
    let err = result.expect_err("the token broker accepted a client without a token");
    eprintln!("refused as expected: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_refuses_a_forged_token() {
    // Same claims, signature bytes altered: must fail signature verification.
    let token = common::auth_token();
    let (unsigned, sig) = token.rsplit_once('.').expect("JWT has three parts");
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{unsigned}.{first}{}", &sig[1..]);
    assert_ne!(forged, token);
    let auth = Authentication {
        name: "token".to_string(),
        data: forged.into_bytes(),
    };
    let result = within(
        90,
        "the broker's answer to a forged token",
        try_connect_and_produce(Some(auth)),
    )
    .await;
    let err = result.expect_err("the token broker accepted a forged token");
    eprintln!("refused as expected: {err}");
}

/// The helpers' URL handling: what every test file relies on.
#[test]
fn unique_names_differ() {
    let a = unique_topic("x");
    let b = unique_topic("x");
    assert_ne!(a, b);
    assert!(a.starts_with("persistent://public/default/x-"));
    let names: BTreeSet<String> = (0..100).map(|_| unique_name("c")).collect();
    assert_eq!(names.len(), 100);
}
