"""Apache's own Python client (pulsar-client, a C++ core) against the test broker: produce,
consume and acknowledge with properties and keys, and nack -> redelivery."""
import pulsar

from conftest import unique_name

RECEIVE_MS = 30_000


def _shared(client, topic, sub=None):
    return client.subscribe(
        topic,
        sub or unique_name("sub"),
        consumer_type=pulsar.ConsumerType.Shared,
        consumer_name=unique_name("py-consumer"),
        initial_position=pulsar.InitialPosition.Earliest,
        negative_ack_redelivery_delay_ms=100,
    )


def test_produce_consume_ack_with_properties_and_key(pulsar_client, unique_topic):
    topic = unique_topic("py-roundtrip")
    consumer = _shared(pulsar_client, topic)
    producer = pulsar_client.create_producer(topic, batching_enabled=False,
                                             producer_name=unique_name("py-producer"))
    sent = {}
    for i in range(5):
        msg_id = producer.send(f"hello-{i}".encode(), properties={"seq": str(i), "kind": "interop"},
                               partition_key=f"key-{i}")
        sent[f"hello-{i}"] = msg_id

    got = {}
    while len(got) < len(sent):
        msg = consumer.receive(timeout_millis=RECEIVE_MS)
        payload = msg.data().decode()
        assert payload in sent, payload
        assert payload not in got, f"{payload} delivered twice"
        i = payload.split("-", 1)[1]
        assert msg.properties() == {"seq": i, "kind": "interop"}
        assert msg.partition_key() == f"key-{i}"
        assert msg.topic_name() == topic
        assert msg.redelivery_count() == 0
        got[payload] = msg.message_id()
        consumer.acknowledge(msg)

    assert {p: str(m) for p, m in got.items()} == {p: str(m) for p, m in sent.items()}

    # Everything is acknowledged: the next message is a fresh marker, not a redelivery.
    producer.send(b"marker", partition_key="marker")
    msg = consumer.receive(timeout_millis=RECEIVE_MS)
    assert msg.data() == b"marker"
    consumer.acknowledge(msg)
    producer.close()
    consumer.close()


def test_negative_ack_redelivers(pulsar_client, unique_topic):
    topic = unique_topic("py-nack")
    consumer = _shared(pulsar_client, topic)
    producer = pulsar_client.create_producer(topic, batching_enabled=False)
    producer.send(b"nack-me", properties={"attempt": "1"}, partition_key="nack-key")

    first = consumer.receive(timeout_millis=RECEIVE_MS)
    assert first.data() == b"nack-me"
    assert first.redelivery_count() == 0
    consumer.negative_acknowledge(first)

    again = consumer.receive(timeout_millis=RECEIVE_MS)
    assert again.data() == b"nack-me"
    assert str(again.message_id()) == str(first.message_id())
    assert again.redelivery_count() == 1
    assert again.properties() == {"attempt": "1"}
    assert again.partition_key() == "nack-key"
    consumer.acknowledge(again)
    producer.close()
    consumer.close()


def test_token_broker_round_trip(pulsar_auth_client, unique_topic):
    topic = unique_topic("py-auth")
    consumer = _shared(pulsar_auth_client, topic)
    producer = pulsar_auth_client.create_producer(topic, batching_enabled=False)
    producer.send(b"authenticated", properties={"who": "admin"})
    msg = consumer.receive(timeout_millis=RECEIVE_MS)
    assert msg.data() == b"authenticated"
    assert msg.properties() == {"who": "admin"}
    consumer.acknowledge(msg)
    producer.close()
    consumer.close()
