"""`ci-worker emulator`'s TDMQ for CMQ API (CMQ API 2.0, `/v2/index.php`) driven by Tencent's own
Python client, qcloud-cmq-sdk-py3 (`cmq`), and, for the completion events, CI's jobs submitted with
cos-python-sdk-v5. Nothing here shares code with the emulator, and no Pulsar broker is needed.

The SDK as it is: it POSTs the form without a Content-Type, signs the host with the port, sends
`UserpollingWaitSeconds`, raises CMQServerException for a non-zero `code` and
CMQServerNetworkException for an HTTP status other than 200; its logger writes CMQ_python_sdk.log
into the working directory (each test runs in its own temporary one).
"""
import threading
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET

import pytest
from cmq.account import Account
from cmq.cmq_exception import CMQServerException, CMQServerNetworkException
from cmq.queue import Message, QueueMeta
from conftest import BUCKET, REGION, emulator_process, free_port, sdk_client

SECRET_ID = "AKIDemulatorCmqInterop000000000"
SECRET_KEY = "emulatorcmqinteropsecret0123456"
QUEUE = "ci-callbacks"






@pytest.fixture
def cmq_emulator(tmp_path, monkeypatch):
    """`ci-worker emulator` with `tdmq_delivery = "cmq"` on two free ports; yields
    (CI API port, CMQ endpoint). The working directory is tmp_path (the SDK's log file)."""
    monkeypatch.chdir(tmp_path)
    port, cmq_port = free_port(), free_port()
    env = {
        "TENCENTCLOUD_SECRET_ID": SECRET_ID,
        "TENCENTCLOUD_SECRET_KEY": SECRET_KEY,
        "CI_WORKER__EMULATOR__JOB_DURATION_MS": "200",
        "CI_WORKER__EMULATOR__TDMQ_DELIVERY": "cmq",
        "CI_WORKER__EMULATOR__CMQ_LISTEN": f"127.0.0.1:{cmq_port}",
        "CI_WORKER__EMULATOR__CMQ_QUEUES": QUEUE,
    }
    with emulator_process(tmp_path, port, env):
        yield port, f"http://127.0.0.1:{cmq_port}"


def account(endpoint, secret_id=SECRET_ID, secret_key=SECRET_KEY, sign=None):
    a = Account(endpoint, secret_id, secret_key)
    if sign:
        a.set_sign(sign)
    return a


def tdmq_meta():
    """QueueMeta with TDMQ's default Max Message Unack Time: the SDK's default (345600 s, CMQ's 4 days
    before TDMQ) is outside TDMQ for CMQ's range (30 s to 12 h)."""
    meta = QueueMeta()
    meta.msgRetentionSeconds = 3600
    return meta


def new_queue(acct, visibility_timeout=None):
    """A fresh queue made with CreateQueue (the SDK sends every QueueMeta attribute)."""
    name = f"py-{uuid.uuid4().hex[:16]}"
    meta = tdmq_meta()
    if visibility_timeout is not None:
        meta.visibilityTimeout = visibility_timeout
    q = acct.get_queue(name)
    q.create(meta)
    return q


def server_code(fn):
    with pytest.raises(CMQServerException) as e:
        fn()
    return e.value.code


@pytest.mark.parametrize("sign", [None, "sha256"], ids=["HmacSHA1", "HmacSHA256"])
def test_send_receive_delete(cmq_emulator, sign):
    _, endpoint = cmq_emulator
    q = account(endpoint, sign=sign).get_queue(QUEUE)
    sent = q.send_message(Message("hello & welcome: <ci>"))
    assert sent.msgId
    got = q.receive_message(1)
    assert got.msgBody == "hello & welcome: <ci>"
    assert got.msgId == sent.msgId
    assert got.dequeueCount == 1
    assert got.receiptHandle
    assert got.nextVisibleTime == got.firstDequeueTime + 30, "emulator.cmq_visibility_timeout_s"
    assert abs(got.enqueueTime - time.time()) < 5
    q.delete_message(got.receiptHandle)
    assert server_code(lambda: q.receive_message(0)) == 7000, "deleted: the queue is empty"
    meta = q.get_attributes()
    assert (meta.activeMsgNum, meta.inactiveMsgNum) == (0, 0)


def test_an_at_sign_value_is_signed_the_sdks_way(cmq_emulator):
    """The SDK leaves `@`-prefixed values out of a POST's string to sign."""
    _, endpoint = cmq_emulator
    q = account(endpoint).get_queue(QUEUE)
    q.send_message(Message("@ci-worker ping"))
    assert q.receive_message(1).msgBody == "@ci-worker ping"


def test_batch_receive_long_poll_returns_a_message_sent_meanwhile(cmq_emulator):
    _, endpoint = cmq_emulator
    name = new_queue(account(endpoint)).queue_name
    sent = {}

    def send_later():
        # Another Account: the SDK's objects are not thread-safe.
        time.sleep(1.0)  # the batch receive below is waiting by then
        sent["id"] = account(endpoint).get_queue(name).send_message(Message("late")).msgId

    sender = threading.Thread(target=send_later)
    started = time.monotonic()
    sender.start()
    got = account(endpoint).get_queue(name).batch_receive_message(16, 10)
    waited = time.monotonic() - started
    sender.join()
    assert [m.msgBody for m in got] == ["late"]
    assert got[0].msgId == sent["id"]
    assert 0.9 <= waited < 8, f"returned on the send, long before the 10 s poll ended: {waited:.2f} s"


def test_empty_batch_receive_waits_out_the_poll(cmq_emulator):
    _, endpoint = cmq_emulator
    q = new_queue(account(endpoint))
    started = time.monotonic()
    assert server_code(lambda: q.batch_receive_message(16, 1)) == 7000
    assert time.monotonic() - started >= 1.0


def test_batch_send_receive_and_delete(cmq_emulator):
    _, endpoint = cmq_emulator
    q = new_queue(account(endpoint, sign="sha256"))
    sent = q.batch_send_message([Message(f"m{i}") for i in range(3)])
    assert len({m.msgId for m in sent}) == 3
    got = q.batch_receive_message(16, 1)
    assert [m.msgBody for m in got] == ["m0", "m1", "m2"]
    assert [m.msgId for m in got] == [m.msgId for m in sent]
    meta = q.get_attributes()
    assert (meta.activeMsgNum, meta.inactiveMsgNum) == (0, 3)
    handles = [m.receiptHandle for m in got]
    q.batch_delete_message(handles)
    meta = q.get_attributes()
    assert (meta.activeMsgNum, meta.inactiveMsgNum) == (0, 0)
    with pytest.raises(CMQServerException) as e:
        q.batch_delete_message(handles)
    assert e.value.code == 6020, "every handle refused"
    assert [f["code"] for f in e.value.data["errorList"]] == [4430] * 3
    assert [f["receiptHandle"] for f in e.value.data["errorList"]] == handles


def test_visibility_timeout_and_partial_batch_delete(cmq_emulator):
    _, endpoint = cmq_emulator
    q = new_queue(account(endpoint), visibility_timeout=1)
    assert q.get_attributes().visibilityTimeout == 1
    q.send_message(Message("again"))
    first = q.receive_message(0)
    second = q.receive_message(10)  # comes back after 1 s
    assert second.msgId == first.msgId
    assert second.dequeueCount == 2
    assert second.receiptHandle != first.receiptHandle
    with pytest.raises(CMQServerException) as e:
        q.batch_delete_message([first.receiptHandle, second.receiptHandle])
    assert e.value.code == 6010
    assert e.value.data["errorList"] == [
        {"code": 4430, "message": "invalid receiptHandle", "receiptHandle": first.receiptHandle}
    ]
    assert server_code(lambda: q.receive_message(0)) == 7000, "the new handle deleted it"


def test_create_queue_and_its_refusals(cmq_emulator):
    _, endpoint = cmq_emulator
    acct = account(endpoint)
    q = new_queue(acct)
    meta = q.get_attributes()
    assert (meta.pollingWaitSeconds, meta.visibilityTimeout, meta.maxMsgSize, meta.msgRetentionSeconds) == (
        0,
        30,
        65536,
        3600,
    )
    assert abs(meta.createTime - time.time()) < 5
    assert server_code(lambda: acct.get_queue(q.queue_name.upper()).create(tdmq_meta())) == 4460
    assert server_code(lambda: acct.get_queue("1-not-a-name").create(tdmq_meta())) == 4000
    assert server_code(lambda: acct.get_queue(f"py-{uuid.uuid4().hex[:16]}").create(QueueMeta())) == 4000, \
        "the SDK's 4-day default retention is no Max Message Unack Time"
    assert server_code(lambda: acct.get_queue("no-such-queue").send_message(Message("x"))) == 4440
    assert server_code(lambda: q.batch_receive_message(17, 0)) == 4000


@pytest.mark.parametrize("sign", [None, "sha256"], ids=["HmacSHA1", "HmacSHA256"])
def test_a_wrong_key_is_refused_with_4100(cmq_emulator, sign):
    _, endpoint = cmq_emulator
    wrong_key = account(endpoint, secret_key="not-the-secret-key", sign=sign).get_queue(QUEUE)
    assert server_code(lambda: wrong_key.send_message(Message("x"))) == 4100
    unknown_id = account(endpoint, secret_id="AKIDnobody", sign=sign).get_queue(QUEUE)
    with pytest.raises(CMQServerException) as e:
        unknown_id.receive_message(0)
    assert (e.value.code, e.value.message) == (4100, "(10270)secret id is not existed")
    assert account(endpoint).get_queue(QUEUE).get_attributes().activeMsgNum == 0, "nothing went in"


def test_the_outage_switch_answers_503(cmq_emulator):
    _, endpoint = cmq_emulator
    q = account(endpoint).get_queue(QUEUE)
    req = urllib.request.Request(
        f"{endpoint}/_emulator/cmq/outage?count=1&actions=SendMessage", method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
    with pytest.raises(CMQServerNetworkException) as e:
        q.send_message(Message("x"))
    assert e.value.status == 503
    q.send_message(Message("recovered"))
    assert q.receive_message(0).msgBody == "recovered"


def test_tdmq_completion_events_arrive_in_the_cmq_queue(cmq_emulator):
    """Both official SDKs: a job submitted with cos-python-sdk-v5 (CallBackType=TDMQ, MqName = the
    queue), its TaskFinish event read with the CMQ SDK."""
    port, endpoint = cmq_emulator
    ci = sdk_client(port, SECRET_ID, SECRET_KEY)
    job = {
        "Tag": "DigitalWatermark",
        "Input": {"Object": "input/demo.mp4"},
        "Operation": {
            "DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
            "Output": {"Bucket": BUCKET, "Region": REGION, "Object": "output/digital.mp4"},
            "UserData": "req-cmq",
        },
        "CallBackFormat": "XML",
        "CallBackType": "TDMQ",
        "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Queue", "MqName": QUEUE},
    }
    job_id = ci.ci_create_media_jobs(Bucket=BUCKET, Jobs=job)["JobsDetail"][0]["JobId"]
    q = account(endpoint, sign="sha256").get_queue(QUEUE)
    deadline = time.monotonic() + 60
    got = []
    while not got and time.monotonic() < deadline:
        try:
            got = q.batch_receive_message(16, 10)  # woken by the delivery
        except CMQServerException as e:
            assert e.code == 7000, e
    assert len(got) == 1, "one event, within 60 s"
    body = got[0].msgBody
    assert body.startswith("<Response><EventName>TaskFinish</EventName><JobsDetail>"), body
    detail = ET.fromstring(body).find("JobsDetail")
    assert detail.findtext("JobId") == job_id
    assert detail.findtext("State") == "Success"
    assert detail.findtext("Operation/UserData") == "req-cmq"
    q.delete_message(got[0].receiptHandle)
