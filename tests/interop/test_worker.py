"""A user's own service, written with Apache's Python `pulsar-client`, publishes requests and reads
results from `ci-worker run` (with `ci-worker emulator` as CI) over the real broker."""
import json
import os
import pathlib
import subprocess
import time
import urllib.request
import uuid

import jsonschema
import pulsar
import pytest
from conftest import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = ROOT / "target" / "debug" / "ci-worker"
PULSAR_URL = os.environ.get("PULSAR_URL", "pulsar://127.0.0.1:6650")
RESULT_SCHEMA = json.loads((ROOT / "schemas" / "result.schema.json").read_text())
BUCKET, REGION = "examplebucket-1250000000", "ap-guangzhou"




@pytest.fixture
def worker_stack(tmp_path):
    """Emulator + worker processes on unique topics; yields the topic names. Completion events take
    CI's documented TDMQ path: the emulator's CMQ queue, read by the worker's cmq ingress."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `cargo build` (scripts/test.sh does)")
    tag = uuid.uuid4().hex[:12]
    topics = {
        "request": f"persistent://public/default/py-requests-{tag}",
        "result": f"persistent://public/default/py-results-{tag}",
        "dlq": f"persistent://public/default/py-dlq-{tag}",
        "mq_name": f"py-callbacks-{tag}",
    }
    emulator_port = free_port()
    cmq_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TENCENTCLOUD_SECRET_ID": "AKIDpythoninterop000000000000000",
        "TENCENTCLOUD_SECRET_KEY": "pythoninteropsecretkey0123456789",
        "CI_WORKER__PULSAR__URL": PULSAR_URL,
        "CI_WORKER__PULSAR__REQUEST_TOPIC": topics["request"],
        "CI_WORKER__PULSAR__RESULT_TOPIC": topics["result"],
        "CI_WORKER__PULSAR__DEAD_LETTER_TOPIC": topics["dlq"],
        "CI_WORKER__PULSAR__CALLBACK_TOPIC": f"persistent://public/default/{topics['mq_name']}",
        "CI_WORKER__CI__MQ_NAME": topics["mq_name"],
        "CI_WORKER__CI__ENDPOINT": f"http://127.0.0.1:{emulator_port}",
        "CI_WORKER__EMULATOR__LISTEN": f"127.0.0.1:{emulator_port}",
        "CI_WORKER__EMULATOR__JOB_DURATION_MS": "100",
        "CI_WORKER__HTTP__LISTEN": f"127.0.0.1:{free_port()}",
        "CI_WORKER__EMULATOR__TDMQ_DELIVERY": "cmq",
        "CI_WORKER__EMULATOR__CMQ_LISTEN": f"127.0.0.1:{cmq_port}",
        "CI_WORKER__EMULATOR__CMQ_QUEUES": topics["mq_name"],
        "CI_WORKER__WORKER__CALLBACK_INGRESS": "cmq",
        "CI_WORKER__CMQ__ENDPOINT": f"http://127.0.0.1:{cmq_port}",
        "CI_WORKER__CMQ__POLLING_WAIT": "2s",
    }
    procs = []
    try:
        for sub in ("emulator", "run"):
            log = open(tmp_path / f"{sub}.log", "wb")
            procs.append(subprocess.Popen([str(BINARY), sub], env=env, stdout=log, stderr=log))
            if sub == "emulator":
                deadline = time.monotonic() + 30
                while True:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{emulator_port}/healthz", timeout=1)
                        break
                    except OSError:
                        assert procs[0].poll() is None, (tmp_path / "emulator.log").read_text()
                        assert time.monotonic() < deadline, "emulator not healthy"
                        time.sleep(0.05)
        yield topics
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_python_service_gets_results(worker_stack):
    client = pulsar.Client(PULSAR_URL)
    try:
        results = client.subscribe(
            worker_stack["result"], f"py-{uuid.uuid4().hex}",
            consumer_type=pulsar.ConsumerType.Exclusive,
            initial_position=pulsar.InitialPosition.Earliest,
        )
        producer = client.create_producer(worker_stack["request"], batching_enabled=False)
        requests = {}
        for i in range(20):
            rid = f"py-{i}-{uuid.uuid4().hex[:6]}"
            fmt = "XML" if i % 2 else "JSON"
            req = {"request_id": rid, "bucket": BUCKET, "region": REGION,
                   "job": {"Tag": "DigitalWatermark", "Input": {"Object": f"input/{rid}.mp4"},
                           "Operation": {"DigitalWatermark": {"Type": "Text", "Message": "py_interop", "Version": "V1"},
                                         "Output": {"Region": REGION, "Bucket": BUCKET, "Object": f"out/{rid}.mp4"},
                                         "UserData": f"python caller {i}"},
                           "CallBackFormat": fmt}}
            requests[rid] = req
            producer.send(json.dumps(req).encode(), partition_key=rid, properties={"origin": "python"})
        validator = jsonschema.Draft202012Validator(RESULT_SCHEMA)
        finals = {}
        deadline = time.monotonic() + 120
        while len(finals) < len(requests):
            remaining = int((deadline - time.monotonic()) * 1000)
            assert remaining > 0, f"only {len(finals)} of {len(requests)} final results"
            msg = results.receive(timeout_millis=remaining)
            results.acknowledge(msg)
            result = json.loads(msg.data())
            validator.validate(result)
            assert msg.partition_key() == result["request_id"]
            assert msg.properties()["state"] == result["state"]
            if result["state"] != "submitted":
                assert result["request_id"] not in finals, "two final results"
                finals[result["request_id"]] = result
        for rid, result in finals.items():
            req = requests[rid]
            assert result["state"] == "succeeded"
            assert result["user_data"] == req["job"]["Operation"]["UserData"]
            assert result["input"]["object"] == req["job"]["Input"]["Object"]
            assert result["output"]["object"] == req["job"]["Operation"]["Output"]["Object"]
    finally:
        client.close()
