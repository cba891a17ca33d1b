//! Smoke tests of the real Apache Pulsar broker through the `pulsar` crate: the features the worker
//! relies on (Shared subscriptions, properties, keys, ack, nack → redelivery) and JWT token auth,
//! and the facts replica coordination builds on (`docs/design/pulsar-facts.md` sums them up):
//! delayed messages acknowledged early by id, Failover ownership of partitions and what moves with
//! it, what a nack does on each subscription type, which redeliveries the broker counts, delayed
//! delivery on Key_Shared, and the message ids the crate hands to the application.
//! Needs the brokers started by `scripts/test.sh` (see tests/common/mod.rs for the variables).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use common::{next_message, properties, unique_name, unique_topic, within};
use futures::StreamExt;
use pulsar::{
    consumer::{ConsumerOptions, DeadLetterPolicy, InitialPosition, Message},
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
    consumer_of(client, topic, subscription, SubType::Shared, name, None).await
}

/// A consumer of `topic` (every partition of a partitioned one) from its start. `dead_letters` is
/// used as a probe of the broker's redelivery count, which the crate does not hand to the
/// application: it diverts a delivery whose count is at least `max_redeliver_count` to the
/// dead-letter topic instead of the consumer.
async fn consumer_of(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    subscription: &str,
    sub_type: SubType,
    name: &str,
    dead_letters: Option<DeadLetterPolicy>,
) -> Consumer<Vec<u8>, TokioExecutor> {
    let mut builder = client
        .consumer()
        .with_topic(topic)
        .with_subscription(subscription)
        .with_subscription_type(sub_type)
        .with_consumer_name(name)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest));
    if let Some(policy) = dead_letters {
        builder = builder.with_dead_letter_policy(policy);
    }
    within(30, "consumer creation", builder.build())
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
    publish_one(producer, payload, key, props, None).await;
}

/// Sends one message (delivered no earlier than `deliver_at` if given) and returns the id in the
/// broker's receipt.
async fn publish_one(
    producer: &mut Producer<TokioExecutor>,
    payload: &str,
    key: &str,
    props: &[(&str, &str)],
    deliver_at: Option<SystemTime>,
) -> MessageIdData {
    let mut builder = producer
        .create_message()
        .with_content(payload.as_bytes().to_vec())
        .with_key(key);
    for (k, v) in props {
        builder = builder.with_property(*k, *v);
    }
    if let Some(at) = deliver_at {
        builder = builder.deliver_at(at).expect("deliver_at after 1970");
    }
    let receipt = within(30, "send", builder.send_non_blocking())
        .await
        .expect("send");
    within(30, "send receipt", receipt)
        .await
        .expect("send receipt")
        .message_id
        .expect("a receipt carries the message id")
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

// ---- Facts replica coordination builds on (docs/design/pulsar-facts.md) ----

fn partition_topic(topic: &str, i: u32) -> String {
    format!("{topic}-partition-{i}")
}

/// The partition a delivered message came from, read from its topic's name (`…-partition-N`).
fn partition_of(m: &Msg) -> u32 {
    m.topic
        .rsplit_once("-partition-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("{} is not a partition's topic", m.topic))
}

/// One unbatched producer per partition of `topic`, so that each test decides where a message goes
/// (and so knows the partition of every send receipt).
async fn partition_producers(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    n: u32,
) -> Vec<Producer<TokioExecutor>> {
    let mut producers = Vec::new();
    for i in 0..n {
        producers.push(unbatched_producer(client, &partition_topic(topic, i)).await);
    }
    producers
}

/// Fails if `consumer` receives anything within `window`. Only for negatives: every caller says
/// why its window is long enough for what it rules out.
async fn assert_quiet(
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    window: Duration,
    what: &str,
) {
    if let Ok(item) = tokio::time::timeout(window, consumer.next()).await {
        match item {
            Some(Ok(m)) => panic!("{what}: got {:?} at {:?}", text(&m), m.message_id()),
            Some(Err(e)) => panic!("{what}: consumer error {e}"),
            None => panic!("{what}: consumer stream ended"),
        }
    }
}

/// Polls the broker's stats of one topic (a plain topic or one partition) until `ready` holds.
/// The broker pushes no event for what these tests wait for (a dispatch, an ack applied, an
/// active consumer chosen), so its stats are read every 50 ms.
async fn await_stats(
    topic: &str,
    secs: u64,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    within(secs, what, async {
        loop {
            let stats = common::topic_stats(topic).await;
            if ready(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// How many messages the broker sent to the consumer named `name` on `subscription`.
fn messages_out(stats: &serde_json::Value, subscription: &str, name: &str) -> Option<u64> {
    stats["subscriptions"][subscription]["consumers"]
        .as_array()?
        .iter()
        .find(|c| c["consumerName"] == name)?["msgOutCounter"]
        .as_u64()
}

fn active_consumer(stats: &serde_json::Value, subscription: &str) -> Option<String> {
    stats["subscriptions"][subscription]["activeConsumerName"]
        .as_str()
        .map(str::to_string)
}

fn backlog(stats: &serde_json::Value, subscription: &str) -> Option<i64> {
    stats["subscriptions"][subscription]["msgBacklog"].as_i64()
}

/// A Failover consumer of `topic` from its start.
async fn failover_consumer(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    subscription: &str,
    name: &str,
) -> Consumer<Vec<u8>, TokioExecutor> {
    consumer_of(client, topic, subscription, SubType::Failover, name, None).await
}

/// Three clients, three connections: as two replicas and a producer (or three replicas) have.
async fn three_clients() -> (
    Pulsar<TokioExecutor>,
    Pulsar<TokioExecutor>,
    Pulsar<TokioExecutor>,
) {
    (
        common::client().await,
        common::client().await,
        common::client().await,
    )
}

/// Probe of the broker's redelivery count (see [`consumer_of`]): a delivery counted once or more
/// goes to `topic` instead of the application.
fn count_probe(topic: &str) -> Option<DeadLetterPolicy> {
    Some(DeadLetterPolicy {
        max_redeliver_count: 1,
        dead_letter_topic: topic.to_string(),
    })
}

/// Receives `n` messages and returns their payloads in arrival order, keeping the messages.
async fn receive_n(
    consumer: &mut Consumer<Vec<u8>, TokioExecutor>,
    n: usize,
    secs: u64,
) -> Vec<Msg> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(next_message(consumer, secs).await);
    }
    got
}

fn texts(ms: &[Msg]) -> Vec<String> {
    ms.iter().map(text).collect()
}

/// A deadline acknowledged by whichever replica finished the job: a delayed message acked by id
/// before it is due, from another client's consumer of the same Shared subscription, is never
/// delivered; the id in the producer's receipt serves, paired with the partition's topic name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_delayed_message_acked_early_by_id_from_another_client_is_never_delivered() {
    let topic = unique_topic("smoke-deadline");
    common::create_partitioned_topic(&topic, 2).await;
    let sub = unique_name("smoke-sub");
    let (ca, cb, cp) = three_clients().await;
    let mut a = consumer_of(
        &ca,
        &topic,
        &sub,
        SubType::Shared,
        &unique_name("smoke-a"),
        None,
    )
    .await;
    let mut b = consumer_of(
        &cb,
        &topic,
        &sub,
        SubType::Shared,
        &unique_name("smoke-b"),
        None,
    )
    .await;
    let mut producers = partition_producers(&cp, &topic, 2).await;

    let sent = Instant::now();
    let due = SystemTime::now() + Duration::from_secs(3);
    let acked = publish_one(&mut producers[1], "deadline-acked", "job-1", &[], Some(due)).await;
    // Same partition, due a second later: when it arrives, the acked one (ahead of it in the
    // partition and due earlier) would have been delivered already if it were to be.
    let control = publish_one(
        &mut producers[1],
        "deadline-control",
        "job-2",
        &[],
        Some(due + Duration::from_secs(1)),
    )
    .await;
    eprintln!("send receipts: acked {acked:?}, control {control:?}");
    // The receipt gives the position (ledger, entry), not the partition: the application keeps
    // the partition's topic name beside it.
    assert_eq!(acked.partition, None, "receipt id {acked:?}");

    // A consumer of a partitioned topic acks by id only under the partition's topic name.
    let refused = b.ack_with_id(&topic, acked.clone()).await;
    assert!(
        refused.is_err(),
        "ack_with_id under the partitioned topic's name: {refused:?}"
    );
    b.ack_with_id(&partition_topic(&topic, 1), acked.clone())
        .await
        .expect("ack by id");

    let (idx, m) = next_from_either(&mut a, &mut b, 20).await;
    let waited = sent.elapsed();
    assert_eq!(
        text(&m),
        "deadline-control",
        "the message acked before it was due was delivered"
    );
    assert_eq!(id_of(&m), (control.ledger_id, control.entry_id));
    // Apache's default (isDelayedDeliveryDeliverAtTimeStrict=false) may deliver up to one tick
    // (delayedDeliveryTickTimeMillis, 1 s) early: due at 4 s, so not before 3 s.
    assert!(
        waited >= Duration::from_millis(2900),
        "delivered after {waited:?}"
    );
    eprintln!("control (due at 4 s) delivered after {waited:?}");
    if idx == 0 {
        a.ack(&m).await.expect("ack");
    } else {
        b.ack(&m).await.expect("ack");
    }
    // Nothing else is due. One more delayed-delivery tick (1 s) and margin, on both consumers.
    within(10, "the quiet check", async {
        tokio::join!(
            assert_quiet(
                &mut a,
                Duration::from_millis(1500),
                "consumer a after the control"
            ),
            assert_quiet(
                &mut b,
                Duration::from_millis(1500),
                "consumer b after the control"
            ),
        )
    })
    .await;
    a.close().await.expect("close a");
    b.close().await.expect("close b");
}

/// Failover on a partitioned topic: the broker gives partition i to the (i mod n)-th consumer in
/// name order; a joining consumer takes its partitions about a second later, with every unacked
/// message of them — including those the previous owner still holds, and those still in its
/// local queue, which it goes on reading. New messages of a moved partition go to the new owner
/// only, and an ack by the previous owner after the move is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_partitions_move_to_a_joining_consumer_with_their_unacked_messages() {
    const N: u32 = 4;
    let topic = unique_topic("smoke-failover");
    common::create_partitioned_topic(&topic, N).await;
    let sub = unique_name("smoke-sub");
    let (ca, cb, cp) = three_clients().await;
    // The broker orders a partition's consumers by priority, then name: a before b.
    let (name_a, name_b) = (unique_name("smoke-fo-a"), unique_name("smoke-fo-b"));
    let mut a = failover_consumer(&ca, &topic, &sub, &name_a).await;
    let mut producers = partition_producers(&cp, &topic, N).await;

    // Round 0: A owns every partition; it reads one message of each and holds it unacked.
    for i in 0..N {
        publish_one(
            &mut producers[i as usize],
            &format!("p{i}-0"),
            "k",
            &[],
            None,
        )
        .await;
    }
    let round0 = receive_n(&mut a, N as usize, 20).await;
    let mut r0: Vec<String> = texts(&round0);
    r0.sort();
    assert_eq!(r0, ["p0-0", "p1-0", "p2-0", "p3-0"]);

    // Round 1: sent to A but left in its local queue (the application does not read it yet).
    for i in 0..N {
        publish_one(
            &mut producers[i as usize],
            &format!("p{i}-1"),
            "k",
            &[],
            None,
        )
        .await;
    }
    for i in 0..N {
        await_stats(&partition_topic(&topic, i), 20, "round 1 out to A", |s| {
            messages_out(s, &sub, &name_a) == Some(2)
        })
        .await;
    }

    // B joins: it takes the odd partitions, and receives both rounds of them although A holds
    // round 0 unacked and has round 1 in its queue.
    let mut b = failover_consumer(&cb, &topic, &sub, &name_b).await;
    let joined = Instant::now();
    let first = next_message(&mut b, 20).await;
    let moved_after = joined.elapsed();
    let mut to_b = vec![first];
    to_b.extend(receive_n(&mut b, 3, 20).await);
    let mut got_b = texts(&to_b);
    got_b.sort();
    assert_eq!(got_b, ["p1-0", "p1-1", "p3-0", "p3-1"]);
    eprintln!("B received the moved partitions' first message {moved_after:?} after joining");
    assert!(
        moved_after >= Duration::from_millis(500),
        "moved after {moved_after:?}: the broker's failover delay (1 s) did not apply"
    );
    for i in 0..N {
        let stats = common::topic_stats(&partition_topic(&topic, i)).await;
        let owner = if i % 2 == 0 { &name_a } else { &name_b };
        assert_eq!(
            active_consumer(&stats, &sub).as_ref(),
            Some(owner),
            "partition {i}"
        );
    }

    // A still reads round 1 of every partition from its queue, the moved ones included.
    let round1 = receive_n(&mut a, N as usize, 20).await;
    let mut r1 = texts(&round1);
    r1.sort();
    assert_eq!(r1, ["p0-1", "p1-1", "p2-1", "p3-1"]);

    // Round 2: new messages go to each partition's owner only.
    for i in 0..N {
        publish_one(
            &mut producers[i as usize],
            &format!("p{i}-2"),
            "k",
            &[],
            None,
        )
        .await;
    }
    let mut a2 = texts(&receive_n(&mut a, 2, 20).await);
    let mut b2 = texts(&receive_n(&mut b, 2, 20).await);
    a2.sort();
    b2.sort();
    assert_eq!(a2, ["p0-2", "p2-2"]);
    assert_eq!(b2, ["p1-2", "p3-2"]);
    // Each message of round 2 has reached its owner, so the broker has nothing more of it to send;
    // a second covers a dispatch that was under way.
    assert_quiet(&mut a, Duration::from_secs(1), "A after round 2").await;

    // A acks p1-1 (read from its queue after partition 1 moved): the broker applies it.
    let p1_1 = round1.iter().find(|m| text(m) == "p1-1").expect("p1-1");
    a.ack(p1_1).await.expect("ack");
    await_stats(&partition_topic(&topic, 1), 20, "A's ack applied", |s| {
        backlog(s, &sub) == Some(2)
    })
    .await;

    // B leaves: its partitions come back to A with what is unacked there — p1-1 is not.
    let left = Instant::now();
    b.close().await.expect("close b");
    let back = receive_n(&mut a, 5, 20).await;
    eprintln!(
        "A received the returned partitions after {:?}",
        left.elapsed()
    );
    let per_partition = |p: u32| -> Vec<String> {
        back.iter()
            .filter(|m| partition_of(m) == p)
            .map(text)
            .collect()
    };
    assert_eq!(per_partition(1), ["p1-0", "p1-2"]);
    assert_eq!(per_partition(3), ["p3-0", "p3-1", "p3-2"]);
    a.close().await.expect("close a");
}

/// On Failover a nack of one message rewinds the subscription: every unacked message comes back,
/// in order, behind those already delivered (a lower position), and uncounted (the probe diverts
/// nothing). Fresh messages follow the rewound ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_nack_of_one_message_rewinds_every_unacked_message_uncounted() {
    let client = common::client().await;
    let topic = unique_topic("smoke-fo-nack");
    let dead = unique_topic("smoke-fo-nack-dlq");
    let sub = unique_name("smoke-sub");
    let name = unique_name("smoke-a");
    let mut a = consumer_of(
        &client,
        &topic,
        &sub,
        SubType::Failover,
        &name,
        count_probe(&dead),
    )
    .await;
    let mut producer = unbatched_producer(&client, &topic).await;
    for i in 0..4 {
        publish_one(&mut producer, &format!("m{i}"), "k", &[], None).await;
    }
    let first = receive_n(&mut a, 4, 20).await;
    assert_eq!(texts(&first), ["m0", "m1", "m2", "m3"]);
    let entries: Vec<u64> = first.iter().map(|m| m.message_id().entry_id).collect();
    assert!(entries.windows(2).all(|w| w[0] < w[1]), "{entries:?}");

    a.ack(&first[0]).await.expect("ack m0");
    a.nack(&first[2]).await.expect("nack m2");
    let rewound = next_message(&mut a, 20).await;
    assert_eq!(text(&rewound), "m1", "the nack of m2 brought back m1 first");
    assert!(
        rewound.message_id().entry_id < entries[3],
        "a rewind shows as a lower position"
    );
    // A fresh message published now comes after the rewound ones.
    publish_one(&mut producer, "m4", "k", &[], None).await;
    let rest = receive_n(&mut a, 3, 20).await;
    assert_eq!(texts(&rest), ["m2", "m3", "m4"]);
    for m in std::iter::once(&rewound).chain(rest.iter()) {
        a.ack(m).await.expect("ack");
    }
    a.close().await.expect("close a");
}

/// Positive control of the redelivery-count probe, and the contrast with Failover: on Shared a
/// nack brings back only that message, counted (so the probe diverts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_nack_redelivers_only_that_message_counted() {
    let client = common::client().await;
    let topic = unique_topic("smoke-sh-nack");
    let dead = unique_topic("smoke-sh-nack-dlq");
    let sub = unique_name("smoke-sub");
    let mut dead_letters = shared_consumer(
        &client,
        &dead,
        &unique_name("smoke-dlq"),
        &unique_name("smoke-d"),
    )
    .await;
    let mut a = consumer_of(
        &client,
        &topic,
        &sub,
        SubType::Shared,
        &unique_name("smoke-a"),
        count_probe(&dead),
    )
    .await;
    let mut producer = unbatched_producer(&client, &topic).await;
    for i in 0..3 {
        publish_one(&mut producer, &format!("m{i}"), "k", &[], None).await;
    }
    let first = receive_n(&mut a, 3, 20).await;
    assert_eq!(texts(&first), ["m0", "m1", "m2"]);
    a.nack(&first[1]).await.expect("nack m1");
    let diverted = next_message(&mut dead_letters, 20).await;
    assert_eq!(
        text(&diverted),
        "m1",
        "the nacked message came back with a count of 1"
    );
    dead_letters.ack(&diverted).await.expect("ack");
    // The broker replays redelivered messages before new ones: were m0 or m2 redelivered, they
    // would come before this marker.
    publish_one(&mut producer, "marker", "k", &[], None).await;
    let next = next_message(&mut a, 20).await;
    assert_eq!(text(&next), "marker");
    for m in first.iter().chain(std::iter::once(&next)) {
        a.ack(m).await.expect("ack");
    }
    a.close().await.expect("close a");
    dead_letters.close().await.expect("close dead letters");
}

/// Set in the child process of the next test: "<topic> <subscription>".
const FAILOVER_CHILD_ENV: &str = "BROKER_SMOKE_FAILOVER_CHILD";
const CHILD_SAYS: &str = "broker-smoke-child-received";

/// On Failover, messages a consumer held when it closed, or when its process was killed, reach the
/// next consumer uncounted (the probe diverts nothing). The killed process is this test binary
/// run again as a child (the role is chosen by [`FAILOVER_CHILD_ENV`]) and killed with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_redelivery_after_close_or_kill_is_uncounted() {
    if let Ok(spec) = std::env::var(FAILOVER_CHILD_ENV) {
        return failover_child(&spec).await;
    }
    let client = common::client().await;
    let topic = unique_topic("smoke-fo-kill");
    let dead = unique_topic("smoke-fo-kill-dlq");
    let mut producer = unbatched_producer(&client, &topic).await;
    for i in 0..2 {
        publish_one(&mut producer, &format!("m{i}"), "k", &[], None).await;
    }

    // Closed: A holds both unacked and closes; C (another client) receives them uncounted.
    let closed_sub = unique_name("smoke-sub-close");
    let other = common::client().await;
    let mut a = failover_consumer(&client, &topic, &closed_sub, &unique_name("smoke-a")).await;
    assert_eq!(texts(&receive_n(&mut a, 2, 20).await), ["m0", "m1"]);
    a.close().await.expect("close a");
    let mut c = consumer_of(
        &other,
        &topic,
        &closed_sub,
        SubType::Failover,
        &unique_name("smoke-c"),
        count_probe(&dead),
    )
    .await;
    let after_close = receive_n(&mut c, 2, 20).await;
    assert_eq!(
        texts(&after_close),
        ["m0", "m1"],
        "redelivered after a close, uncounted"
    );
    for m in &after_close {
        c.ack(m).await.expect("ack");
    }
    c.close().await.expect("close c");

    // Killed: a child process receives both, says so, and is killed holding them.
    let killed_sub = unique_name("smoke-sub-kill");
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = tokio::process::Command::new(exe)
        .args([
            "failover_redelivery_after_close_or_kill_is_uncounted",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FAILOVER_CHILD_ENV, format!("{topic} {killed_sub}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut child_got = Vec::new();
    while child_got.len() < 2 {
        let line = within(60, "the child's deliveries", lines.next_line())
            .await
            .expect("child stdout")
            .expect("the child ended before receiving both messages");
        // The harness may print "test <name> ... " on the same line first.
        if let Some((_, payload)) = line.split_once(CHILD_SAYS) {
            child_got.push(payload.trim().to_string());
        }
    }
    assert_eq!(child_got, ["m0", "m1"]);
    child.start_kill().expect("SIGKILL the child");
    let status = within(30, "the child's end", child.wait())
        .await
        .expect("wait");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "the child was killed: {status:?}");
    }
    let mut d = consumer_of(
        &other,
        &topic,
        &killed_sub,
        SubType::Failover,
        &unique_name("smoke-d"),
        count_probe(&dead),
    )
    .await;
    let after_kill = receive_n(&mut d, 2, 20).await;
    assert_eq!(
        texts(&after_kill),
        ["m0", "m1"],
        "redelivered after a kill, uncounted"
    );
    for m in &after_kill {
        d.ack(m).await.expect("ack");
    }
    d.close().await.expect("close d");
    producer.close().await.expect("close producer");
}

/// The child of the test above: a Failover consumer that prints what it receives, acks nothing,
/// and waits to be killed (ending by itself after a minute if nobody does).
async fn failover_child(spec: &str) {
    let (topic, sub) = spec.split_once(' ').expect("<topic> <subscription>");
    let client = common::client().await;
    let mut consumer = failover_consumer(&client, topic, sub, &unique_name("smoke-child")).await;
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let m = next_message(&mut consumer, 60).await;
            println!("{CHILD_SAYS} {}", text(&m));
        }
    })
    .await;
}

/// An ack by id for a partition, from a consumer of the Failover subscription that is not that
/// partition's active consumer (with the id from the send receipt), is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_ack_by_id_from_a_consumer_not_active_for_the_partition_is_applied() {
    let topic = unique_topic("smoke-fo-ack");
    common::create_partitioned_topic(&topic, 2).await;
    let sub = unique_name("smoke-sub");
    let (ca, cb, cp) = three_clients().await;
    let (name_a, name_b) = (unique_name("smoke-fo-a"), unique_name("smoke-fo-b"));
    let mut a = failover_consumer(&ca, &topic, &sub, &name_a).await;
    let mut b = failover_consumer(&cb, &topic, &sub, &name_b).await;
    let p1 = partition_topic(&topic, 1);
    // Partition 1 belongs to B (second in name order) once the broker has chosen.
    await_stats(&p1, 20, "B active on partition 1", |s| {
        active_consumer(s, &sub).as_deref() == Some(name_b.as_str())
    })
    .await;
    let mut producers = partition_producers(&cp, &topic, 2).await;
    let m = publish_one(&mut producers[1], "acked-by-a", "k", &[], None).await;
    publish_one(&mut producers[1], "held-by-b", "k", &[], None).await;
    let at_b = receive_n(&mut b, 2, 20).await;
    assert_eq!(texts(&at_b), ["acked-by-a", "held-by-b"]);

    // A, not active on partition 1 and never given the message, acks it by the receipt's id.
    a.ack_with_id(&p1, m.clone()).await.expect("ack by id");
    await_stats(&p1, 20, "A's ack applied", |s| backlog(s, &sub) == Some(1)).await;

    // B leaves; partition 1 comes back to A with what is unacked: only the message B held.
    b.close().await.expect("close b");
    let back = next_message(&mut a, 20).await;
    assert_eq!(text(&back), "held-by-b", "the message acked by A came back");
    a.ack(&back).await.expect("ack");
    a.close().await.expect("close a");
}

/// Apache Pulsar honours delayed delivery on Key_Shared (TDMQ documents that it does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shared_honours_delayed_delivery() {
    let client = common::client().await;
    let topic = unique_topic("smoke-ks-delay");
    let sub = unique_name("smoke-sub");
    let mut consumer = consumer_of(
        &client,
        &topic,
        &sub,
        SubType::KeyShared,
        &unique_name("smoke-a"),
        None,
    )
    .await;
    let mut producer = unbatched_producer(&client, &topic).await;
    let sent = Instant::now();
    publish_one(
        &mut producer,
        "late",
        "key-late",
        &[],
        Some(SystemTime::now() + Duration::from_secs(3)),
    )
    .await;
    publish_one(&mut producer, "now", "key-now", &[], None).await;
    let first = next_message(&mut consumer, 20).await;
    assert_eq!(
        text(&first),
        "now",
        "the delayed message, published first, came first"
    );
    let second = next_message(&mut consumer, 20).await;
    let waited = sent.elapsed();
    assert_eq!(text(&second), "late");
    // Up to one tick (1 s) early is allowed by Apache's default, see the Shared test above.
    assert!(
        waited >= Duration::from_millis(1900),
        "delivered after {waited:?}"
    );
    eprintln!("Key_Shared: delayed message (due at 3 s) delivered after {waited:?}");
    consumer.ack(&first).await.expect("ack");
    consumer.ack(&second).await.expect("ack");
    consumer.close().await.expect("close");
}

/// The ids the crate hands to the application on a partitioned topic: the partition index, the
/// position (ledger, entry) equal to the send receipt's, no batch fields when batching is off;
/// `get_last_message_id` gives one id per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_name_partition_and_position() {
    const N: u32 = 3;
    let topic = unique_topic("smoke-ids");
    common::create_partitioned_topic(&topic, N).await;
    let client = common::client().await;
    let sub = unique_name("smoke-sub");
    let mut consumer = failover_consumer(&client, &topic, &sub, &unique_name("smoke-a")).await;
    let mut producers = partition_producers(&client, &topic, N).await;
    let mut receipts: BTreeMap<String, MessageIdData> = BTreeMap::new();
    for i in 0..N {
        for j in 0..2 {
            let payload = format!("p{i}-{j}");
            let id = publish_one(&mut producers[i as usize], &payload, "k", &[], None).await;
            receipts.insert(payload, id);
        }
    }
    let got = receive_n(&mut consumer, (2 * N) as usize, 20).await;
    let mut last_entry: BTreeMap<u32, u64> = BTreeMap::new();
    for m in &got {
        let id = m.message_id();
        let p = partition_of(m);
        eprintln!(
            "{} from {}: {:?} batch_size {:?}",
            text(m),
            m.topic,
            id,
            m.message_id.batch_size
        );
        assert_eq!(id.partition, Some(p as i32), "{id:?}");
        assert_eq!(id.batch_index, None);
        assert_eq!(id.batch_size, None);
        assert_eq!(m.message_id.batch_size, None);
        let receipt = &receipts[&text(m)];
        assert_eq!(
            (id.ledger_id, id.entry_id),
            (receipt.ledger_id, receipt.entry_id)
        );
        if let Some(prev) = last_entry.insert(p, id.entry_id) {
            assert!(
                prev < id.entry_id,
                "positions increase within partition {p}"
            );
        }
        consumer.ack(m).await.expect("ack");
    }
    let last = within(20, "get_last_message_id", consumer.get_last_message_id())
        .await
        .expect("get_last_message_id");
    eprintln!("get_last_message_id: {last:?}");
    // One id per partition, in the order of the partitions' topic names (a BTreeMap inside the
    // crate: partition-10 sorts before partition-2), each naming its partition.
    assert_eq!(last.len(), N as usize);
    for (i, id) in (0..N).zip(&last) {
        let receipt = &receipts[&format!("p{i}-1")];
        assert_eq!(id.partition, Some(i as i32), "{id:?}");
        assert_eq!(
            (id.ledger_id, id.entry_id),
            (receipt.ledger_id, receipt.entry_id)
        );
    }
    consumer.close().await.expect("close");
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
