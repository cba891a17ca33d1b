"""`CallBackType=Kafka`: jobs submitted with Tencent's official Python SDK (cos-python-sdk-v5) to
`ci-worker emulator`, their completion events read from a real Apache Kafka broker
(scripts/kafka.sh) by an independent client, `kafka-python`. Nothing here shares code with the
emulator or with rdkafka.

Environment: KAFKA_BROKERS [127.0.0.1:9092] (scripts/test.sh exports it).
"""
import json
import uuid
import xml.etree.ElementTree as ET

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic
from qcloud_cos.cos_exception import CosServiceError
from conftest import BUCKET, _env, digital_watermark_job, free_port, require_listening, sdk_client, sdk_emulator

SECRET_ID = "AKIDemulatorKafkaInterop00000000"
SECRET_KEY = "emulatorkafkainteropsecret012345"


@pytest.fixture(scope="session")
def kafka_brokers():
    brokers = _env("KAFKA_BROKERS", "127.0.0.1:9092")
    require_listening(f"kafka://{brokers.split(',')[0]}", "Kafka broker (scripts/kafka.sh start)")
    return brokers


@pytest.fixture
def kafka_topic(kafka_brokers):
    """A new topic of 2 partitions (the broker creates none by itself, as CKafka)."""
    name = f"py-emu-kafka-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_brokers, client_id="interop-admin")
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    return name


@pytest.fixture
def emulator(tmp_path, kafka_brokers):
    env = {
        "CI_WORKER__EMULATOR__CMQ_LISTEN": f"127.0.0.1:{free_port()}",
        "CI_WORKER__EMULATOR__KAFKA_BROKERS": kafka_brokers,
    }
    with sdk_emulator(tmp_path, SECRET_ID, SECRET_KEY, env) as port:
        yield port


def kafka_job(obj, callback_format, user_data, kafka_config):
    """A DigitalWatermark job with a Kafka callback, the dict the SDK turns into CI's XML."""
    return digital_watermark_job(
        obj,
        user_data,
        CallBackFormat=callback_format,
        CallBackType="Kafka",
        CallBackKafkaConfig=kafka_config,
    )


def read_event(value):
    """(format, JobId, State, UserData) of a completion event, XML or JSON."""
    text = value.decode("utf-8")
    if text.lstrip().startswith("<"):
        root = ET.fromstring(text)
        assert root.tag == "Response" and root.findtext("EventName") == "TaskFinish"
        d = root.find("JobsDetail")
        return "XML", d.findtext("JobId"), d.findtext("State"), d.findtext("Operation/UserData")
    event = json.loads(text)
    assert event["EventName"] == "TaskFinish"
    d = event["JobsDetail"]
    return "JSON", d["JobId"], d["State"], d["Operation"]["UserData"]


def test_kafka_python_reads_the_emulators_events(emulator, kafka_brokers, kafka_topic):
    client = sdk_client(emulator, SECRET_ID, SECRET_KEY)
    config = {"Region": "ap-guangzhou", "InstanceId": "ckafka-interop", "Topic": kafka_topic}
    created = {}
    for fmt in ("XML", "JSON"):
        detail = client.ci_create_media_jobs(
            Bucket=BUCKET, Jobs=kafka_job(f"input/{fmt}.mp4", fmt, f"req-{fmt}", config)
        )["JobsDetail"][0]
        assert detail["Code"] == "Success"
        assert detail["CallBackType"] == "Kafka"
        assert detail["CallBackKafkaConfig"] == config
        created[fmt] = detail["JobId"]

    consumer = KafkaConsumer(
        kafka_topic,
        bootstrap_servers=kafka_brokers,
        group_id=f"py-reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=60_000,
    )
    try:
        events = {}
        for record in consumer:
            fmt, job_id, state, user_data = read_event(record.value)
            assert record.key == job_id.encode(), "keyed by the job id"
            assert state == "Success"
            assert user_data == f"req-{fmt}"
            events[fmt] = job_id
            if len(events) == 2:
                break
    finally:
        consumer.close()
    assert events == created


def test_the_sdk_sees_cis_refusal_of_a_bad_kafka_config(emulator):
    client = sdk_client(emulator, SECRET_ID, SECRET_KEY)
    bad = kafka_job("input/a.mp4", "JSON", "u", {"Region": "ap-guangzhou", "InstanceId": "ckafka-x"})
    with pytest.raises(CosServiceError) as err:
        client.ci_create_media_jobs(Bucket=BUCKET, Jobs=bad)
    assert err.value.get_status_code() == 400
    assert err.value.get_error_code() == "InvalidArgument"
    assert "CallBackKafkaConfig.Topic" in err.value.get_error_msg()


def test_the_worker_takes_events_kafka_python_produces(tmp_path, kafka_brokers, kafka_topic):
    """CI's part played by `kafka-python`: completion events (XML and JSON, and one that is not an
    event) produced into the topic; `ci-worker run` reads them in its group and Apache's Python
    `pulsar-client` reads the results and the dead letter it publishes."""
    import os
    import pathlib
    import subprocess
    import time

    import pulsar
    from kafka import KafkaProducer

    root = pathlib.Path(__file__).resolve().parents[2]
    binary = root / "target" / "debug" / "ci-worker"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `cargo build` (scripts/test.sh does)")
    pulsar_url = _env("PULSAR_URL", "pulsar://127.0.0.1:6650")
    tag = uuid.uuid4().hex[:12]
    results_topic = f"persistent://public/default/py-kafka-results-{tag}"
    dlq_topic = f"persistent://public/default/py-kafka-dlq-{tag}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TENCENTCLOUD_SECRET_ID": SECRET_ID,
        "TENCENTCLOUD_SECRET_KEY": SECRET_KEY,
        "CI_WORKER__PULSAR__URL": pulsar_url,
        "CI_WORKER__PULSAR__REQUEST_TOPIC": f"persistent://public/default/py-kafka-requests-{tag}",
        "CI_WORKER__PULSAR__RESULT_TOPIC": results_topic,
        "CI_WORKER__PULSAR__DEAD_LETTER_TOPIC": dlq_topic,
        "CI_WORKER__PULSAR__DEADLINE_TOPIC": f"persistent://public/default/py-kafka-deadlines-{tag}",
        "CI_WORKER__HTTP__LISTEN": f"127.0.0.1:{free_port()}",
        "CI_WORKER__WORKER__CALLBACK_INGRESS": "kafka",
        "CI_WORKER__CI__CALLBACK_TYPE": "Kafka",
        "CI_WORKER__CI__KAFKA_REGION": "ap-guangzhou",
        "CI_WORKER__CI__KAFKA_INSTANCE_ID": "ckafka-interop",
        "CI_WORKER__CI__KAFKA_TOPIC": kafka_topic,
        "CI_WORKER__KAFKA__BROKERS": kafka_brokers,
        "CI_WORKER__KAFKA__GROUP_ID": f"py-kafka-{tag}",
    }
    client = pulsar.Client(pulsar_url)
    results = client.subscribe(results_topic, f"py-{tag}", initial_position=pulsar.InitialPosition.Earliest)
    dead = client.subscribe(dlq_topic, f"py-{tag}", initial_position=pulsar.InitialPosition.Earliest)
    producer = KafkaProducer(bootstrap_servers=kafka_brokers, acks="all")
    xml = ("<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>py-k-xml</JobId>"
           "<State>Success</State><Tag>DigitalWatermark</Tag></JobsDetail></Response>")
    js = json.dumps({"EventName": "TaskFinish",
                     "JobsDetail": {"JobId": "py-k-json", "State": "Failed", "Tag": "DigitalWatermark"}})
    for body in (xml, "not an event", js):
        producer.send(kafka_topic, body.encode(), partition=0).get(timeout=30)
    producer.close()
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([str(binary), "run"], env=env, stdout=log, stderr=log)
    try:
        finals = {}
        deadline = time.monotonic() + 90
        while len(finals) < 2:
            remaining = int((deadline - time.monotonic()) * 1000)
            assert remaining > 0, (tmp_path / "worker.log").read_text()[-4000:]
            msg = results.receive(timeout_millis=remaining)
            results.acknowledge(msg)
            result = json.loads(msg.data())
            finals[result["job_id"]] = result["state"]
        assert finals == {"py-k-xml": "succeeded", "py-k-json": "failed"}
        letter = dead.receive(timeout_millis=30_000)
        assert letter.data() == b"not an event"
        props = letter.properties()
        assert props["ci-worker-dlq-reason"].startswith("unparseable completion event"), props
        assert props["ci-worker-source-topic"] == f"kafka:{kafka_topic}/0"
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        client.close()
