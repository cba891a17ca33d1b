//! The consume/settle loop every worker path shares, against the real broker: handlers run
//! concurrently inside the loop's task, so a panicking handler must not take the loop down; its
//! message is released for redelivery and everything else is still served and acknowledged.

mod common;

use ci_worker::pulsar::consume::{self, Delivery, Disposition, LoopOptions};
use ci_worker::pulsar::{self, SubscribeOptions, SubscriptionKind};
use ci_worker::shutdown::Shutdown;
use ci_worker::telemetry::Health;
use ci_worker::telemetry::Metrics;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gets_its_message_redelivered_and_the_loop_serves_on() {
    let client: pulsar::Client = common::client().await.into();
    let topic = common::unique_topic("consume-loop");
    let publisher = pulsar::Publisher::new(client.clone(), "consume-loop-test");
    for payload in ["first", "boom", "last"] {
        publisher
            .publish(&topic, pulsar::Outgoing::new(payload))
            .await
            .unwrap();
    }

    // Every delivery is reported; "boom" panics on its first delivery only.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    let boomed = Arc::new(Mutex::new(false));
    let handler = move |d: Delivery| {
        let seen_tx = seen_tx.clone();
        let boomed = boomed.clone();
        async move {
            let text = String::from_utf8(d.payload).unwrap();
            let _ = seen_tx.send(text.clone());
            if text == "boom" && !std::mem::replace(&mut *boomed.lock().unwrap(), true) {
                panic!("handler bug");
            }
            Disposition::Ack
        }
    };
    let stop = Shutdown::new();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let looping = tokio::spawn(consume::run(
        client,
        LoopOptions {
            name: "test",
            subscribe: SubscribeOptions {
                topic: topic.clone(),
                subscription: "test".into(),
                name_prefix: "consume-loop-test".into(),
                receiver_queue_size: 10,
                dead_letter: None,
                from_earliest: true,
                kind: SubscriptionKind::Shared,
            },
            max_in_flight: 4,
            drain_timeout: Duration::from_secs(5),
            retry_after: Duration::from_millis(50),
            acks: None,
        },
        stop.clone(),
        metrics.clone(),
        health.clone(),
        handler,
    ));

    let mut seen = Vec::new();
    common::within(120, "every message, and boom twice", async {
        while !(seen.iter().filter(|s| *s == "boom").count() == 2
            && seen.contains(&"first".to_string())
            && seen.contains(&"last".to_string()))
        {
            seen.push(seen_rx.recv().await.unwrap());
        }
    })
    .await;
    assert!(health.failing().is_empty());
    assert!(
        metrics.redeliveries_requested.get() >= 1,
        "the panicked message was released"
    );

    stop.trigger();
    common::within(30, "the loop to stop", looping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.in_flight.get(), 0);
}
