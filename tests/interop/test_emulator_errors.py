"""The emulator's error bodies as Tencent's official Python SDK (cos-python-sdk-v5) reads them.

The SDK's `digest_xml` reads `Code`, `Message`, `Resource` and `RequestId` from an `<Error>` and gives
up on the whole body when any of them is missing or empty: every getter of `CosServiceError` then
answers "Unknown". So each error path of the emulator (refused job, bad signature, unknown path,
endpoint it does not implement, injected 503, bad Host) must carry all four, with the right values.
"""
import uuid

import pytest
from qcloud_cos.cos_exception import CosServiceError
from conftest import BUCKET, CI_HOST, REGION, emulator_process, free_port, sdk_client

SECRET_ID = "AKIDemulatorPythonErrors00000000"
SECRET_KEY = "emulatorpythonerrorssecret012345"


def emulator_env(pulsar_url, **extra):
    return {
        "TENCENTCLOUD_SECRET_ID": SECRET_ID,
        "TENCENTCLOUD_SECRET_KEY": SECRET_KEY,
        "CI_WORKER__PULSAR__URL": pulsar_url,
        "CI_WORKER__EMULATOR__JOB_DURATION_MS": "300",
        "CI_WORKER__EMULATOR__CALLBACK_TOPIC_TEMPLATE": (
            f"persistent://public/default/py-err-{uuid.uuid4().hex[:12]}-{{MqName}}"
        ),
        "CI_WORKER__EMULATOR__TDMQ_DELIVERY": "pulsar",
        **extra,
    }


def job(tag="DigitalWatermark"):
    return {
        "Tag": tag,
        "Input": {"Object": "input/demo.mp4"},
        "Operation": {
            "DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
            "Output": {"Bucket": BUCKET, "Region": REGION, "Object": "output/digital.mp4"},
        },
        "CallBack": "no",
    }


def refusal(call):
    with pytest.raises(CosServiceError) as err:
        call()
    e = err.value
    assert isinstance(e.get_digest_msg(), dict), f"the SDK could not read the body: {e.get_origin_msg()!r}"
    got = {
        "status": e.get_status_code(),
        "code": e.get_error_code(),
        "message": e.get_error_msg(),
        "resource": e.get_resource_location(),
        "request_id": e.get_request_id(),
        "trace_id": e.get_trace_id(),
    }
    for key, value in got.items():
        assert value and value != "Unknown", f"{key} is {value!r} in {e.get_origin_msg()!r}"
    return got


def test_every_error_path_carries_what_the_sdk_reads(tmp_path, pulsar_url):
    port = free_port()
    with emulator_process(tmp_path, port, emulator_env(pulsar_url)):
        client = sdk_client(port, SECRET_ID, SECRET_KEY)
        cases = [
            # (call, status, code, path of Resource, a word the message has)
            (lambda: client.ci_create_media_jobs(Bucket=BUCKET, Jobs=job("NoSuchTag")),
             400, "InvalidArgument", "/jobs", "Tag"),
            (lambda: client.ci_create_media_jobs(Bucket=BUCKET, Jobs={**job(), "Input": {}}),
             400, "InvalidArgument", "/jobs", "Input"),
            (lambda: sdk_client(port, SECRET_ID, "wrong").ci_get_media_jobs(Bucket=BUCKET, JobIDs="j0"),
             401, "AccessDenied", "/jobs/j0", ""),
            (lambda: client.ci_cancel_jobs(Bucket=BUCKET, JobID="jdoesnotexist"),
             400, "InvalidArgument", "/jobs/jdoesnotexist", "jdoesnotexist"),
            (lambda: client.ci_get_media_queue(Bucket=BUCKET, UrlPath="/no/such/path"),
             404, "InvalidUrl", "/no/such/path", "/no/such/path"),
            (lambda: client.ci_get_media_queue(Bucket=BUCKET, UrlPath="/pic_jobs"),
             501, "NotImplemented", "/pic_jobs", "/pic_jobs"),
        ]
        request_ids = set()
        for call, status, code, path, word in cases:
            got = refusal(call)
            assert (got["status"], got["code"]) == (status, code), got
            assert got["resource"] == f"{CI_HOST}{path}", got
            assert word in got["message"], got
            request_ids.add(got["request_id"])
        assert len(request_ids) == len(cases), "each error has its own RequestId"

        # A Host that is not <bucket>.ci.<region>.myqcloud.com: Resource is what was asked for.
        got = refusal(lambda: sdk_client(port, SECRET_ID, SECRET_KEY, domain="127.0.0.1").ci_get_media_jobs(Bucket=BUCKET, JobIDs="j0"))
        assert (got["status"], got["code"]) == (400, "InvalidHost"), got
        assert got["resource"] == "127.0.0.1/jobs/j0", got


def test_injected_server_errors_carry_what_the_sdk_reads(tmp_path, pulsar_url):
    port = free_port()
    env = emulator_env(pulsar_url, CI_WORKER__EMULATOR__ERROR_RATE="1")
    with emulator_process(tmp_path, port, env):
        got = refusal(lambda: sdk_client(port, SECRET_ID, SECRET_KEY).ci_create_media_jobs(Bucket=BUCKET, Jobs=job()))
        assert (got["status"], got["code"]) == (503, "ServiceUnavailable"), got
        assert got["resource"] == f"{CI_HOST}/jobs", got
