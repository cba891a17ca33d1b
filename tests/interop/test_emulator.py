"""`ci-worker emulator` driven by Tencent's official Python SDK (cos-python-sdk-v5), its completion
events read from a real Apache Pulsar broker by Apache's Python `pulsar-client`.

The SDK is configured as sdk-interop.md says: it connects to 127.0.0.1:PORT while sending and signing
the real CI Host `<bucket>.ci.<region>.myqcloud.com`. Nothing here shares code with the emulator.
"""
import json
import urllib.request
import uuid
import xml.etree.ElementTree as ET

import pulsar
import pytest
from qcloud_cos.cos_exception import CosServiceError
from conftest import BUCKET, REGION, digital_watermark_job, sdk_client, sdk_emulator

SECRET_ID = "AKIDemulatorPythonInterop0000000"
SECRET_KEY = "emulatorpythoninteropsecret01234"
MQ_NAME = "ci-callback-queue"


@pytest.fixture
def emulator(tmp_path, pulsar_url):
    """`ci-worker emulator` on a free port with a unique callback topic; yields (port, topic)."""
    prefix = f"py-emu-{uuid.uuid4().hex[:12]}"
    env = {
        "CI_WORKER__PULSAR__URL": pulsar_url,
        "CI_WORKER__EMULATOR__CALLBACK_TOPIC_TEMPLATE": f"persistent://public/default/{prefix}-{{MqName}}",
        # These tests read TDMQ events from Pulsar (the bridge setup); test_cmq_sdk.py reads them
        # from the emulator's CMQ queues, as CI delivers them.
        "CI_WORKER__EMULATOR__TDMQ_DELIVERY": "pulsar",
    }
    with sdk_emulator(tmp_path, SECRET_ID, SECRET_KEY, env) as port:
        yield port, f"persistent://public/default/{prefix}-{MQ_NAME}"


def tts_job(output):
    """A Tts job (no Input: its text is in TtsConfig) writing `output`, without a callback."""
    return {
        "Tag": "Tts",
        "Operation": {"TtsConfig": {"Input": "hello", "InputType": "Text"},
                      "Output": {"Bucket": BUCKET, "Region": REGION, "Object": output}},
        "CallBack": "no",
    }


def watermark_job(obj, callback_format, user_data):
    return digital_watermark_job(
        obj,
        user_data,
        QueueId="p0123456789abcdef",
        CallBackFormat=callback_format,
        CallBackType="TDMQ",
        CallBackMqConfig={"MqRegion": "gz", "MqMode": "Queue", "MqName": MQ_NAME},
    )


def parse_event(payload):
    """A completion event as CI sends it: XML (parsed with ElementTree) or JSON."""
    text = payload.decode("utf-8")
    if text.lstrip().startswith("<"):
        root = ET.fromstring(text)
        assert root.tag == "Response"
        assert root.findtext("EventName") == "TaskFinish"
        detail = root.find("JobsDetail")
        return "XML", {
            "JobId": detail.findtext("JobId"),
            "State": detail.findtext("State"),
            "Code": detail.findtext("Code"),
            "UserData": detail.findtext("Operation/UserData"),
            "SubTag": detail.findtext("SubTag"),
            "Md5": detail.findtext("Operation/MediaResult/OutputFile/Md5Info/Md5"),
            "children": [c.tag for c in detail],
        }
    event = json.loads(text)
    assert event["EventName"] == "TaskFinish"
    detail = event["JobsDetail"]
    assert isinstance(detail, dict), "one JobsDetail is an object in CI's JSON"
    assert "Message" not in detail, "CI's JSON drops empty elements"
    assert all(isinstance(v, str) for v in detail["Operation"]["MediaInfo"]["Format"].values())
    return "JSON", {
        "JobId": detail["JobId"],
        "State": detail["State"],
        "Code": detail["Code"],
        "UserData": detail["Operation"]["UserData"],
        "SubTag": detail["SubTag"],
        "Md5": detail["Operation"]["MediaResult"]["OutputFile"]["Md5Info"]["Md5"],
        "children": list(detail),
    }


def test_official_sdk_against_the_emulator(emulator, pulsar_client):
    port, topic = emulator
    consumer = pulsar_client.subscribe(
        topic,
        f"py-emu-{uuid.uuid4().hex[:8]}",
        consumer_type=pulsar.ConsumerType.Exclusive,
        initial_position=pulsar.InitialPosition.Earliest,
    )
    client = sdk_client(port, SECRET_ID, SECRET_KEY)

    created = {}
    for fmt in ("JSON", "XML"):
        resp = client.ci_create_media_jobs(
            Bucket=BUCKET, Jobs=watermark_job("input/demo.mp4", fmt, f"req-{fmt.lower()}")
        )
        detail = resp["JobsDetail"][0]
        assert detail["Code"] == "Success"
        assert detail["State"] == "Submitted"
        assert detail["Progress"] == "0"
        assert detail["JobId"].startswith("j") and len(detail["JobId"]) == 33
        assert detail["CreationTime"].endswith("+0800")
        assert detail["StartTime"] == "-" and detail["EndTime"] == "-"
        assert detail["QueueId"] == "p0123456789abcdef"
        assert detail["Tag"] == "DigitalWatermark"
        assert detail["Input"] == {"BucketId": BUCKET, "Object": "input/demo.mp4", "Region": REGION}
        assert detail["Operation"]["UserData"] == f"req-{fmt.lower()}"
        assert detail["CallBackMqConfig"]["MqName"] == MQ_NAME
        created[fmt] = detail["JobId"]

    # A slow job (ten times the duration) to cancel while it is pending.
    slow = client.ci_create_media_jobs(
        Bucket=BUCKET, Jobs=watermark_job("input/__slow__.mp4", "XML", "req-slow")
    )["JobsDetail"][0]["JobId"]
    assert client.ci_cancel_jobs(Bucket=BUCKET, JobID=slow) == ""

    got = client.ci_get_media_jobs(Bucket=BUCKET, JobIDs=f"{created['JSON']},{slow},jnotajob")
    states = {d["JobId"]: d["State"] for d in got["JobsDetail"]}
    assert states[slow] == "Cancel"
    assert created["JSON"] in states
    assert got["NonExistJobIds"] == "jnotajob"

    listed = client.ci_list_media_jobs(Bucket=BUCKET, Tag="DigitalWatermark", Size=10)
    listed_ids = [d["JobId"] for d in listed["JobsDetail"]]
    assert listed_ids == [slow, created["XML"], created["JSON"]], "newest first"
    page = client.ci_list_media_jobs(Bucket=BUCKET, Tag="DigitalWatermark", Size=2)
    assert len(page["JobsDetail"]) == 2 and page["NextToken"]
    rest = client.ci_list_media_jobs(
        Bucket=BUCKET, Tag="DigitalWatermark", Size=2, NextToken=page["NextToken"]
    )
    assert [d["JobId"] for d in rest["JobsDetail"]] == [created["JSON"]]
    cancelled = client.ci_list_media_jobs(Bucket=BUCKET, Tag="DigitalWatermark", States="Cancel")
    assert [d["JobId"] for d in cancelled["JobsDetail"]] == [slow]

    # Both completion events arrive on the broker, each in its job's CallBackFormat.
    events = {}
    for _ in range(2):
        msg = consumer.receive(timeout_millis=60_000)
        consumer.acknowledge(msg)
        fmt, event = parse_event(msg.data())
        events[fmt] = event
    for fmt in ("JSON", "XML"):
        event = events[fmt]
        assert event["JobId"] == created[fmt]
        assert event["State"] == "Success" and event["Code"] == "Success"
        assert event["UserData"] == f"req-{fmt.lower()}"
        assert event["SubTag"] == "DigitalWatermark"
        assert len(event["Md5"]) == 32
        assert event["children"] == sorted(event["children"]), "CI lists event elements alphabetically"
    consumer.close()

    finished = client.ci_get_media_jobs(Bucket=BUCKET, JobIDs=created["XML"])["JobsDetail"][0]
    assert finished["State"] == "Success"
    assert finished["Progress"] == "100"
    assert finished["EndTime"] != "-"
    assert finished["Operation"]["MediaResult"]["OutputFile"]["ObjectName"] == "output/digital.mp4"


def test_inputs_without_object(emulator):
    port, _ = emulator
    client = sdk_client(port, SECRET_ID, SECRET_KEY)
    by_url = client.ci_create_media_jobs(Bucket=BUCKET, Jobs={
        "Tag": "Transcode",
        "Input": {"Url": "https://example.com/in/demo.mp4"},
        "Operation": {"TemplateId": "t1", "Output": {"Bucket": BUCKET, "Region": REGION, "Object": "out.mp4"}},
        "CallBack": "no",
    })["JobsDetail"][0]
    assert by_url["Input"] == {"BucketId": BUCKET, "Region": REGION, "Url": "https://example.com/in/demo.mp4"}
    by_vod = client.ci_create_media_jobs(Bucket=BUCKET, Jobs={
        "Tag": "SpeechRecognition",
        "Input": {"Vod": {"FileId": "5285890799710173650", "SubAppId": "1500000"}},
        "Operation": {"TemplateId": "t1"},
        "CallBack": "no",
    })["JobsDetail"][0]
    assert by_vod["Input"]["Vod"]["FileId"] == "5285890799710173650"
    assert "Object" not in by_vod["Input"]
    tts = client.ci_create_media_jobs(Bucket=BUCKET, Jobs=tts_job("out.mp3"))["JobsDetail"][0]
    assert tts["Tag"] == "Tts" and tts["State"] == "Submitted"
    listed = client.ci_list_media_jobs(Bucket=BUCKET, Tag="Tts")
    assert [d["JobId"] for d in listed["JobsDetail"]] == [tts["JobId"]]


def test_official_sdk_lists_the_default_media_queue(emulator):
    port, _ = emulator
    client = sdk_client(port, SECRET_ID, SECRET_KEY)
    listed = client.ci_get_media_queue(Bucket=BUCKET)
    assert listed["TotalCount"] == "1"
    [queue] = listed["QueueList"]
    assert queue["QueueId"].startswith("p") and len(queue["QueueId"]) == 33
    assert queue["State"] == "Active"
    # Jobs that name no queue run in it, and the list of that queue finds them.
    job = client.ci_create_media_jobs(Bucket=BUCKET, Jobs=tts_job("q.mp3"))["JobsDetail"][0]
    assert job["QueueId"] == queue["QueueId"]
    by_id = client.ci_get_media_queue(Bucket=BUCKET, QueueIds=queue["QueueId"] + ",pnosuchqueue")
    assert [q["QueueId"] for q in by_id["QueueList"]] == [queue["QueueId"]]
    assert by_id["NonExistPIDs"] == "pnosuchqueue"
    assert "QueueList" not in client.ci_get_media_queue(Bucket=BUCKET, State="Paused")


def test_official_sdk_sees_cis_errors(emulator):
    port, _ = emulator
    wrong_key = sdk_client(port, SECRET_ID, "not-the-secret-key")
    with pytest.raises(CosServiceError) as err:
        wrong_key.ci_get_media_jobs(Bucket=BUCKET, JobIDs="j0")
    assert (err.value.get_status_code(), err.value.get_error_code()) == (401, "AccessDenied")
    assert err.value.get_request_id()

    unknown_id = sdk_client(port, "AKIDnobodyknows", SECRET_KEY)
    with pytest.raises(CosServiceError) as err:
        unknown_id.ci_list_media_jobs(Bucket=BUCKET, Tag="DigitalWatermark")
    assert (err.value.get_status_code(), err.value.get_error_code()) == (401, "SecretidNotExist")

    client = sdk_client(port, SECRET_ID, SECRET_KEY)
    bad = watermark_job("input/demo.mp4", "JSON", "u")
    del bad["CallBackMqConfig"]
    with pytest.raises(CosServiceError) as err:
        client.ci_create_media_jobs(Bucket=BUCKET, Jobs=bad)
    assert (err.value.get_status_code(), err.value.get_error_code()) == (400, "InvalidArgument")
    assert "CallBackMqConfig" in err.value.get_error_msg()

    with pytest.raises(CosServiceError) as err:
        client.ci_cancel_jobs(Bucket=BUCKET, JobID="jdoesnotexist")
    assert (err.value.get_status_code(), err.value.get_error_code()) == (400, "InvalidArgument")
