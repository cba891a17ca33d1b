"""Shared fixtures for the interop tests: real independent clients (Apache's pulsar-client,
Tencent's cos-python-sdk-v5) against the services that scripts/test.sh starts.

Environment (defaults match scripts/pulsar.sh's defaults):
  PULSAR_URL             pulsar://127.0.0.1:6650   broker without authentication
  PULSAR_ADMIN_URL       http://127.0.0.1:8080     its admin REST API
  PULSAR_AUTH_URL        pulsar://127.0.0.1:6651   broker with JWT token authentication
  PULSAR_AUTH_ADMIN_URL  http://127.0.0.1:8081
  PULSAR_AUTH_TOKEN      the admin JWT; else read from PULSAR_AUTH_TOKEN_FILE
  PULSAR_AUTH_TOKEN_FILE <repo>/.cache/pulsar/data-6651/auth/admin.token
"""
import contextlib
import os
import pathlib
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = REPO_ROOT / "target" / "debug" / "ci-worker"

HOW_TO_START = (
    "run the tests with scripts/test.sh (it starts the brokers), or start one by hand with "
    "scripts/pulsar.sh start (and PULSAR_PORT=6651 PULSAR_HTTP_PORT=8081 PULSAR_AUTH=token "
    "scripts/pulsar.sh start for the token-auth broker)"
)


def _env(name, default):
    value = os.environ.get(name, "").strip()
    return value or default


def require_listening(url, what="Pulsar broker"):
    """Fail (not skip) with a clear message when nothing answers at url's host:port."""
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname, parsed.port
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as e:
        pytest.fail(f"no {what} answers at {url} ({e}); {HOW_TO_START}", pytrace=False)


def unique_name(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def pulsar_url():
    url = _env("PULSAR_URL", "pulsar://127.0.0.1:6650")
    require_listening(url)
    return url


@pytest.fixture(scope="session")
def pulsar_admin_url():
    return _env("PULSAR_ADMIN_URL", "http://127.0.0.1:8080")


@pytest.fixture(scope="session")
def pulsar_auth_url():
    url = _env("PULSAR_AUTH_URL", "pulsar://127.0.0.1:6651")
    require_listening(url, "token-auth Pulsar broker")
    return url


@pytest.fixture(scope="session")
def pulsar_auth_admin_url():
    return _env("PULSAR_AUTH_ADMIN_URL", "http://127.0.0.1:8081")


@pytest.fixture(scope="session")
def pulsar_auth_token():
    token = _env("PULSAR_AUTH_TOKEN", "")
    if token:
        return token
    path = pathlib.Path(
        _env("PULSAR_AUTH_TOKEN_FILE", str(REPO_ROOT / ".cache/pulsar/data-6651/auth/admin.token"))
    )
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if not token:
        pytest.fail(f"no Pulsar auth token: PULSAR_AUTH_TOKEN unset and {path} missing; {HOW_TO_START}",
                    pytrace=False)
    return token


@pytest.fixture
def unique_topic():
    """Factory: unique_topic("prefix") -> persistent://public/default/prefix-<uuid>."""

    def make(prefix="interop"):
        return f"persistent://public/default/{unique_name(prefix)}"

    return make


def _quiet_logger():
    import pulsar

    # The C++ client logs every connection at INFO on stderr; keep warnings and errors.
    return pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)


@pytest.fixture
def pulsar_client(pulsar_url):
    """An Apache pulsar-client (Python) Client of the unauthenticated broker, closed afterwards."""
    import pulsar

    client = pulsar.Client(pulsar_url, operation_timeout_seconds=30, logger=_quiet_logger())
    yield client
    client.close()


@pytest.fixture
def pulsar_auth_client(pulsar_auth_url, pulsar_auth_token):
    """An Apache pulsar-client Client of the token-auth broker, authenticated as admin."""
    import pulsar

    client = pulsar.Client(
        pulsar_auth_url,
        authentication=pulsar.AuthenticationToken(pulsar_auth_token),
        operation_timeout_seconds=30,
        logger=_quiet_logger(),
    )
    yield client
    client.close()


# The bucket and region of every job the interop tests submit, and CI's Host for them.
BUCKET, REGION = "examplebucket-1250000000", "ap-guangzhou"
CI_HOST = f"{BUCKET}.ci.{REGION}.myqcloud.com"


def sdk_client(port, secret_id, secret_key, domain=CI_HOST):
    """Tencent's cos-python-sdk-v5 client of an emulator on 127.0.0.1:`port`, configured as
    sdk-interop.md says: it connects there while sending and signing the Host `domain` (CI's real
    one unless a test needs another). No retries, so each call is one request the test can see."""
    from qcloud_cos import CosConfig, CosS3Client

    config = CosConfig(
        Region=REGION,
        SecretId=secret_id,
        SecretKey=secret_key,
        Scheme="http",
        IP="127.0.0.1",
        Port=port,
        Domain=domain,
    )
    return CosS3Client(config, retry=0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc, port, log_path, timeout=30.0):
    """Polls the emulator's /healthz until it answers 200 (the process offers no other readiness
    signal; its CMQ port, when it has one, is bound before either server starts)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/healthz"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the emulator exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200 and r.read() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"the emulator did not answer {url} within {timeout} s:\n{log_path.read_text()}")


@contextlib.contextmanager
def emulator_process(tmp_path, port, env):
    """`ci-worker emulator` with `env` (its CI API on `port`), healthy before the body runs; stopped
    with SIGTERM afterwards, which it must obey with exit code 0 within 20 s."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `cargo build --bin ci-worker` (scripts/test.sh does)")
    env = {"PATH": os.environ.get("PATH", ""), "CI_WORKER__EMULATOR__LISTEN": f"127.0.0.1:{port}", **env}
    log_path = tmp_path / "emulator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BINARY), "emulator"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, port, log_path)
        yield proc
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"the emulator ignored SIGTERM for 20 s:\n{log_path.read_text()}")
        assert rc == 0, f"the emulator exited with {rc} on SIGTERM:\n{log_path.read_text()}"


@contextlib.contextmanager
def sdk_emulator(tmp_path, secret_id, secret_key, env):
    """`emulator_process` on a free port for the SDK's tests: its CI API accepts `secret_id` /
    `secret_key`, a job lasts 300 ms, `env` adds the rest (callback delivery); yields the port."""
    port = free_port()
    env = {
        "TENCENTCLOUD_SECRET_ID": secret_id,
        "TENCENTCLOUD_SECRET_KEY": secret_key,
        "CI_WORKER__EMULATOR__JOB_DURATION_MS": "300",
        **env,
    }
    with emulator_process(tmp_path, port, env):
        yield port


def digital_watermark_job(obj, user_data, **fields):
    """A DigitalWatermark job of `obj` (the dict the SDK turns into CI's XML), `fields` (queue,
    callback) after its Operation."""
    return {
        "Tag": "DigitalWatermark",
        "Input": {"Object": obj},
        "Operation": {
            "DigitalWatermark": {"Type": "Text", "Message": "123456789ab", "Version": "V1"},
            "Output": {"Bucket": BUCKET, "Region": REGION, "Object": "output/digital.mp4"},
            "UserData": user_data,
        },
        **fields,
    }
