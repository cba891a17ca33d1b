"""The completion path as a user would write it in Python on Apache's pulsar-client (C++ core):
the peer `scripts/bench.sh --only completion` measures ci-worker against.

Reads CI completion events (JSON, or XML) from the callback topic, maps the main fields of each job,
republishes them as JSON on the result topic with the client's producer batching, and acknowledges
each event once the broker has stored its result (the send callback). Configured as the worker is,
from CI_WORKER__PULSAR__{URL,TOKEN,CALLBACK_TOPIC,CALLBACK_SUBSCRIPTION,RESULT_TOPIC}. Runs until
killed.
"""

import json
import os
import xml.etree.ElementTree as ET

import pulsar

env = os.environ.get
token = env("CI_WORKER__PULSAR__TOKEN")
client = pulsar.Client(
    env("CI_WORKER__PULSAR__URL", "pulsar://127.0.0.1:6650"),
    authentication=pulsar.AuthenticationToken(token) if token else None,
)
producer = client.create_producer(
    env("CI_WORKER__PULSAR__RESULT_TOPIC"),
    batching_enabled=True,
    batching_max_publish_delay_ms=5,
    block_if_queue_full=True,
)
consumer = client.subscribe(
    env("CI_WORKER__PULSAR__CALLBACK_TOPIC"),
    env("CI_WORKER__PULSAR__CALLBACK_SUBSCRIPTION", "ci-worker"),
    consumer_type=pulsar.ConsumerType.Shared,
    initial_position=pulsar.InitialPosition.Earliest,
    receiver_queue_size=1000,
)


def parse(payload):
    if payload.lstrip()[:1] == b"<":
        root = ET.fromstring(payload)
        detail = root.find("JobsDetail")
        return {child.tag: child.text or "" for child in detail} | {
            "UserData": detail.findtext("Operation/UserData", "")
        }
    detail = json.loads(payload)["JobsDetail"]
    return detail | {"UserData": detail.get("Operation", {}).get("UserData", "")}


def result_of(job):
    return {
        "job_id": job.get("JobId"),
        "state": {"Success": "succeeded", "Failed": "failed"}.get(job.get("State"), "running"),
        "code": job.get("Code"),
        "message": job.get("Message"),
        "tag": job.get("Tag"),
        "user_data": job.get("UserData"),
        "created_at": job.get("CreationTime"),
        "finished_at": job.get("EndTime"),
    }


while True:
    msg = consumer.receive()
    result = result_of(parse(msg.data()))
    producer.send_async(
        json.dumps(result).encode(),
        lambda res, _id, msg=msg: consumer.acknowledge(msg)
        if res == pulsar.Result.Ok
        else consumer.negative_acknowledge(msg),
        partition_key=result["job_id"] or "",
        properties={"state": result["state"]},
    )
