#!/usr/bin/env python3
"""Checks what schemas cannot: that deploy/, docker-compose.yml and the Dockerfile fit ci-worker and
each other. Run by scripts/validate-deploy.sh after rendering (kustomize) and schema validation
(kubernetes-validate); needs PyYAML and jsonschema (both come with kubernetes-validate).

  check_manifests.py --repo DIR --render NAME=FILE... --compose-json FILE --keda-out FILE [--binary BIN]

--render       a `kustomize build` output to check (name: what to call it in messages)
--compose-json `docker compose config --format json` of docker-compose.yml with every profile
--keda-out     where to write the KEDA objects found, for keda-crd-check.mjs
--binary       a built ci-worker: every environment given to it here must pass `ci-worker config`

Prints one line per check ("ok" or "FAIL"), exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

FAILURES: list[str] = []
PASSED = 0
QUIET = False

# Placeholders a committed Secret may hold; anything else counts as a value that could be real.
PLACEHOLDER = re.compile(r"^(|REPLACE_ME(_[A-Z0-9_]+)?)$")
# Words that mark a committed credential-like value as a local demo value.
FAKE_MARKER = re.compile(r"(?i)(local|demo|fake|example|notareal|replace|dummy|test)")
# Shapes of real credentials: Tencent Cloud SecretId (AKID + 32), a JWT, a PEM private key.
REAL_LOOKING = [
    ("a Tencent Cloud SecretId", re.compile(r"AKID[A-Za-z0-9]{32}")),
    ("a JWT", re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
]


def check(ok: bool, what: str, why: str = "") -> bool:
    global PASSED
    if ok:
        PASSED += 1
        if not QUIET:
            print(f"ok   {what}")
    else:
        why = " | ".join(line.strip() for line in str(why).splitlines() if line.strip())
        msg = f"{what}: {why}" if why else what
        print(f"FAIL {msg}")
        FAILURES.append(msg)
    return ok


def duration_seconds(text: str) -> float:
    """ci-worker's durations: "500ms", "20s", "10m", "2h", "1day"; a bare number is seconds."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*", str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    unit = {"": 1, "s": 1, "sec": 1, "secs": 1, "ms": 0.001, "m": 60, "min": 60, "mins": 60,
            "h": 3600, "hr": 3600, "hrs": 3600, "d": 86400, "day": 86400, "days": 86400}
    if m.group(2) not in unit:
        raise ValueError(f"unknown duration unit in {text!r}")
    return float(m.group(1)) * unit[m.group(2)]


class Config:
    """ci-worker's effective configuration for a set of environment variables: the defaults of
    ci-worker.example.toml overlaid by CI_WORKER__<SECTION>__<KEY> (what Settings::load does)."""

    def __init__(self, defaults: dict, env: dict[str, str]):
        self.values = {section: dict(keys) for section, keys in defaults.items()}
        self.unknown = []
        for name, value in env.items():
            m = re.fullmatch(r"CI_WORKER__([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
            if not m:
                continue
            section, key = m.group(1).lower(), m.group(2).lower()
            if section not in self.values or key not in self.values[section]:
                self.unknown.append(name)
                continue
            self.values[section][key] = value

    def __getitem__(self, dotted: str):
        section, key = dotted.split(".", 1)
        return self.values[section][key]


def binary_accepts(binary: str | None, env: dict[str, str], what: str) -> None:
    if not binary:
        return
    clean = {k: str(v) for k, v in env.items()}
    clean["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    proc = subprocess.run([binary, "config"], env=clean, capture_output=True, text=True, timeout=60)
    check(proc.returncode == 0, f"{what}: `ci-worker config` accepts the environment",
          (proc.stderr or proc.stdout).strip()[:400])


def last_part(topic: str) -> str:
    return topic.rstrip("/").rsplit("/", 1)[-1]


def metric_names(repo: Path) -> set[str]:
    """Series names the worker exports, from the registrations in src/telemetry/metrics.rs."""
    text = (repo / "src" / "telemetry" / "metrics.rs").read_text()
    names = set()
    for m in re.finditer(r'\.register\(\s*"([a-z0-9_]+)"', text):
        base = "ci_worker_" + m.group(1)
        names |= {base, base + "_total", base + "_bucket", base + "_sum", base + "_count"}
    return names


def scan_for_real_credentials(repo: Path, paths: list[Path]) -> None:
    hits = []
    for path in paths:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for label, pattern in REAL_LOOKING:
                for m in pattern.finditer(line):
                    if not FAKE_MARKER.search(m.group(0)):
                        hits.append(f"{path.relative_to(repo)}:{lineno} looks like {label}")
    check(not hits, f"no real-looking credentials in {len(paths)} deployment files", "; ".join(hits))


# --- Kubernetes ---------------------------------------------------------------------------------

def check_render(name: str, path: Path, defaults: dict, binary: str | None, metrics: set[str],
                 keda_schema: dict, keda_out: list) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    p = f"[{name}]"

    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if not check(len(deployments) == 1, f"{p} exactly one Deployment", f"found {len(deployments)}"):
        return
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"].get("labels", {})
    containers = pod["containers"]
    check(len(containers) == 1, f"{p} one container", f"found {len(containers)}")
    c = containers[0]
    check(c.get("args") == ["run"] and not c.get("command"), f"{p} container runs `ci-worker run`",
          f"command={c.get('command')} args={c.get('args')}")
    check(":" in c["image"].rsplit("/", 1)[-1] and not c["image"].endswith(":latest"),
          f"{p} image has a pinned tag", c["image"])

    # Security context (Pod Security Standards "restricted", plus a read-only root filesystem).
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and csc.get("runAsNonRoot", True) is True,
          f"{p} runAsNonRoot", f"pod={psc.get('runAsNonRoot')} container={csc.get('runAsNonRoot')}")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    check(uid == 65532, f"{p} runs as uid 65532 (the image's nonroot)", f"runAsUser={uid}")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    check(seccomp == "RuntimeDefault", f"{p} seccompProfile RuntimeDefault", f"{seccomp}")
    check(csc.get("allowPrivilegeEscalation") is False, f"{p} allowPrivilegeEscalation false")
    check(csc.get("readOnlyRootFilesystem") is True, f"{p} readOnlyRootFilesystem true")
    caps = csc.get("capabilities", {})
    check(caps.get("drop") == ["ALL"] and not caps.get("add"), f"{p} capabilities drop ALL, add none",
          json.dumps(caps))
    check(not csc.get("privileged") and not pod.get("hostNetwork") and not pod.get("hostPID"),
          f"{p} no privileged container, host network or host PID")

    # Configuration: envFrom references and the effective settings.
    env: dict[str, str] = {}
    missing = []
    for ref in c.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in ref:
                obj = objs.get((kind, ref[key]["name"]))
                if obj is None:
                    if not ref[key].get("optional"):
                        missing.append(f"{kind} {ref[key]['name']}")
                    continue
                if kind == "ConfigMap":
                    env.update(obj.get("data", {}))
                else:
                    env.update(obj.get("stringData", {}))
                    env.update({k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()})
    check(not missing, f"{p} envFrom ConfigMaps and Secrets exist", ", ".join(missing))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    cfg = Config(defaults, env)
    check(not cfg.unknown, f"{p} every CI_WORKER__* variable names a configuration key", ", ".join(cfg.unknown))
    binary_accepts(binary, env, f"{p} Deployment")
    check(cfg["log.format"] == "json", f"{p} log.format json (for log collectors)", cfg["log.format"])
    check(cfg["ci.mq_name"] == last_part(cfg["pulsar.callback_topic"]),
          f"{p} ci.mq_name is the callback topic's last part",
          f"{cfg['ci.mq_name']!r} vs {cfg['pulsar.callback_topic']!r}")
    check(cfg["ci.endpoint"] == "", f"{p} ci.endpoint empty (the real CI)", cfg["ci.endpoint"])

    # HTTP port, probes, Service.
    listen_port = int(str(cfg["http.listen"]).rsplit(":", 1)[-1])
    ports = {pt.get("name"): pt["containerPort"] for pt in c.get("ports", [])}
    check(ports.get("metrics") == listen_port, f"{p} container port 'metrics' = http.listen port {listen_port}",
          json.dumps(ports))
    check(not str(cfg["http.listen"]).startswith("127.") and not str(cfg["http.listen"]).startswith("localhost"),
          f"{p} http.listen reachable by the kubelet", cfg["http.listen"])

    def probe_ok(probe_name: str, path_: str) -> None:
        pr = c.get(probe_name) or {}
        get = pr.get("httpGet") or {}
        port = get.get("port")
        port_num = ports.get(port) if isinstance(port, str) else port
        check(get.get("path") == path_ and port_num == listen_port,
              f"{p} {probe_name} GET {path_} on the metrics port", json.dumps(pr))
        return pr

    probe_ok("startupProbe", "/healthz")
    probe_ok("livenessProbe", "/healthz")
    ready = probe_ok("readinessProbe", "/readyz")
    check(ready.get("timeoutSeconds", 1) > 3, f"{p} readiness timeout above /readyz's own 3 s wait",
          f"timeoutSeconds={ready.get('timeoutSeconds', 1)}")

    res = c.get("resources", {})
    check(all(k in res.get(kind, {}) for kind in ("requests", "limits") for k in ("cpu", "memory")),
          f"{p} cpu and memory requests and limits", json.dumps(res))

    drain = duration_seconds(cfg["worker.shutdown_timeout"])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace >= drain + 10, f"{p} terminationGracePeriodSeconds ({grace}) ≥ worker.shutdown_timeout ({drain:g} s) + 10",
          "SIGKILL would cut the drain short")

    def selects_pods(selector: dict) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    services = [d for d in docs if d["kind"] == "Service"]
    for svc in services:
        check(selects_pods(svc["spec"].get("selector", {})), f"{p} Service {svc['metadata']['name']} selects the worker pods")
        for sp in svc["spec"].get("ports", []):
            tp = sp.get("targetPort", sp["port"])
            check(tp in ports or tp == listen_port,
                  f"{p} Service {svc['metadata']['name']} port {sp.get('name')} targets the container", str(tp))
    check(bool(services), f"{p} a Service exposes the metrics port")

    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    check(len(pdbs) == 1, f"{p} one PodDisruptionBudget", f"found {len(pdbs)}")
    for pdb in pdbs:
        check(pdb["apiVersion"] == "policy/v1", f"{p} PodDisruptionBudget is policy/v1")
        check(selects_pods(pdb["spec"].get("selector", {}).get("matchLabels", {})),
              f"{p} PodDisruptionBudget selects the worker pods")
        check(("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]),
              f"{p} PodDisruptionBudget sets one of minAvailable / maxUnavailable")

    # Secrets: placeholders only.
    for sec in (d for d in docs if d["kind"] == "Secret"):
        values = dict(sec.get("stringData", {}))
        values.update({k: base64.b64decode(v).decode(errors="replace") for k, v in sec.get("data", {}).items()})
        bad = [k for k, v in values.items() if not PLACEHOLDER.match(str(v))]
        check(not bad, f"{p} Secret {sec['metadata']['name']} holds placeholders only (REPLACE_ME)",
              "real-looking values under " + ", ".join(bad))

    # KEDA.
    keda = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    for obj in keda:
        keda_out.append({"_source": name, **obj})
        errors = sorted(jsonschema.Draft202012Validator(keda_schema).iter_errors(obj), key=lambda e: e.path)
        detail = "; ".join(f"/{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
        check(not errors, f"{p} {obj['kind']}/{obj['metadata']['name']} matches keda.schema.json (strict)", detail)
    scaled = [d for d in keda if d["kind"] == "ScaledObject"]
    check(len(scaled) == 1, f"{p} one ScaledObject", f"found {len(scaled)}")
    for so in scaled:
        spec = so["spec"]
        target = spec["scaleTargetRef"]
        check(target.get("kind", "Deployment") == "Deployment" and target["name"] == dep["metadata"]["name"],
              f"{p} ScaledObject scales Deployment {dep['metadata']['name']}", json.dumps(target))
        check(1 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100),
              f"{p} ScaledObject 1 ≤ minReplicaCount ≤ maxReplicaCount",
              "the worker also consumes completion events: keep at least one replica")
        partitions = so["metadata"].get("annotations", {}).get("ci-worker/request-topic-partitions")
        if check(partitions is not None and partitions.isdigit(),
                 f"{p} ScaledObject names the request topic's partitions (ci-worker/request-topic-partitions)",
                 "requests are shared by partition: say how many there are"):
            check(spec.get("maxReplicaCount", 100) <= max(int(partitions), 1),
                  f"{p} maxReplicaCount ≤ the request topic's partitions ({partitions})",
                  "a replica beyond the partition count owns no requests")
            for trig in spec["triggers"]:
                if trig["type"] == "pulsar":
                    check(trig["metadata"].get("isPartitionedTopic") == ("true" if int(partitions) > 0 else "false"),
                          f"{p} pulsar trigger's isPartitionedTopic matches the partitions",
                          f"{trig['metadata'].get('isPartitionedTopic')} vs {partitions} partitions")
        if "replicas" in dep["spec"]:
            check(False, f"{p} Deployment leaves spec.replicas to KEDA", "remove spec.replicas")
        for trig in spec["triggers"]:
            meta = trig["metadata"]
            if trig["type"] == "pulsar":
                check(meta.get("topic") == cfg["pulsar.request_topic"]
                      and meta.get("subscription") == cfg["pulsar.request_subscription"],
                      f"{p} pulsar trigger watches the worker's request subscription",
                      f"trigger {meta.get('topic')}/{meta.get('subscription')} vs worker "
                      f"{cfg['pulsar.request_topic']}/{cfg['pulsar.request_subscription']}")
            if trig["type"] == "prometheus":
                used = set(re.findall(r"\bci_worker_[a-z0-9_]+", meta.get("query", "")))
                unknown = sorted(used - metrics)
                check(bool(used) and not unknown, f"{p} prometheus query uses series the worker exports",
                      f"unknown: {unknown}" if used else "no ci_worker_* series in the query")
            ref = trig.get("authenticationRef")
            if ref:
                ta = objs.get((ref.get("kind", "TriggerAuthentication"), ref["name"]))
                if check(ta is not None, f"{p} authenticationRef {ref['name']} exists"):
                    params = {t["parameter"] for t in ta["spec"].get("secretTargetRef", [])}
                    modes = set(filter(None, meta.get("authModes", "").split(",")))
                    if "bearer" in modes:
                        check("bearerToken" in params, f"{p} bearer auth gets a bearerToken parameter")
                    for t in ta["spec"].get("secretTargetRef", []):
                        sec = objs.get(("Secret", t["name"]))
                        keys = set(sec.get("stringData", {})) | set(sec.get("data", {})) if sec else set()
                        check(t["key"] in keys, f"{p} TriggerAuthentication reads Secret {t['name']} key {t['key']}",
                              "no such Secret or key in the render")
    for ta in (d for d in keda if d["kind"] == "TriggerAuthentication"):
        used = any(t.get("authenticationRef", {}).get("name") == ta["metadata"]["name"]
                   for so in scaled for t in so["spec"]["triggers"])
        check(used, f"{p} TriggerAuthentication {ta['metadata']['name']} is used by a trigger")


# --- docker compose -----------------------------------------------------------------------------

def check_compose(repo: Path, path: Path, defaults: dict, binary: str | None) -> None:
    project = json.loads(path.read_text())
    services = project.get("services", {})
    p = "[compose]"
    if not check(all(s in services for s in ("pulsar", "emulator", "worker", "sample")),
                 f"{p} services pulsar, emulator, worker, sample", ", ".join(services)):
        return
    pulsar = services["pulsar"]
    check(pulsar.get("image", "").startswith("apachepulsar/pulsar:"), f"{p} broker is the official Apache Pulsar image",
          pulsar.get("image", ""))
    cmd = " ".join(pulsar.get("command") or [])
    check("apply-config-from-env.py conf/standalone.conf" in cmd and "bin/pulsar standalone" in cmd,
          f"{p} standalone broker, configured from PULSAR_PREFIX_* variables", cmd)
    check(bool(pulsar.get("healthcheck", {}).get("test")), f"{p} broker has a healthcheck")
    # Two listeners: `internal` (pulsar://pulsar:6650) for the services, `external` bound to a port of
    # its own that the host publishes, advertising the address the host reaches it at.
    penv = {k: str(v) for k, v in (pulsar.get("environment") or {}).items()}
    named = lambda value: dict(x.split(":", 1) for x in value.split(",") if ":" in x)  # noqa: E731
    listeners = named(penv.get("PULSAR_PREFIX_advertisedListeners", ""))
    binds = named(penv.get("PULSAR_PREFIX_bindAddresses", ""))
    check(listeners.get("internal") == "pulsar://pulsar:6650"
          and penv.get("PULSAR_PREFIX_internalListenerName") == "internal",
          f"{p} broker's internal listener is pulsar://pulsar:6650", json.dumps(listeners))
    ext = re.fullmatch(r"pulsar://([^:/]+):([0-9]+)", listeners.get("external", ""))
    ext_bind = re.fullmatch(r"pulsar://0\.0\.0\.0:([0-9]+)", binds.get("external", ""))
    published = [port for port in pulsar.get("ports", [])
                 if ext and ext_bind and str(port.get("target")) == ext_bind.group(1)
                 and str(port.get("published")) == ext.group(2) and port.get("host_ip") == ext.group(1)]
    check(bool(published) and ext_bind.group(1) != "6650",
          f"{p} broker's external listener: its own container port, published on the host address and "
          f"port it advertises", f"listeners {json.dumps(listeners)}, binds {json.dumps(binds)}, "
          f"ports {json.dumps(pulsar.get('ports', []))}")

    builders = [name for name, svc in services.items() if svc.get("build")]
    check(builders == ["emulator"], f"{p} one service builds the image (the emulator, which the others "
          f"depend on), so `up --build` builds it once", ", ".join(builders))

    cfgs = {}
    for name in ("emulator", "worker", "sample"):
        svc = services[name]
        env = {k: ("" if v is None else str(v)) for k, v in (svc.get("environment") or {}).items()}
        cfgs[name] = (Config(defaults, env), env)
        check(not cfgs[name][0].unknown, f"{p} {name}: every CI_WORKER__* variable names a configuration key",
              ", ".join(cfgs[name][0].unknown))
        binary_accepts(binary, env, f"{p} {name}")
        dep = (svc.get("depends_on") or {}).get("pulsar", {})
        check(dep.get("condition") == "service_healthy", f"{p} {name} waits for a healthy broker", json.dumps(dep))
        check(svc.get("image") == services["worker"].get("image"), f"{p} {name} uses the ci-worker image")
        check(cfgs[name][0]["pulsar.url"] == "pulsar://pulsar:6650", f"{p} {name} connects to pulsar://pulsar:6650",
              cfgs[name][0]["pulsar.url"])

    keys = ["pulsar.request_topic", "pulsar.request_subscription", "pulsar.callback_topic",
            "pulsar.result_topic", "pulsar.dead_letter_topic", "ci.mq_name", "ci.mq_region", "ci.mq_mode"]
    for key in keys:
        vals = {n: c[key] for n, (c, _) in cfgs.items()}
        check(len(set(vals.values())) == 1, f"{p} {key} is the same for emulator, worker and sample", json.dumps(vals))
    emu, emu_env = cfgs["emulator"]
    wrk, wrk_env = cfgs["worker"]
    for var in ("TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY"):
        check(emu_env.get(var) and emu_env.get(var) == wrk_env.get(var),
              f"{p} {var} is set and shared by emulator and worker")
        check(bool(FAKE_MARKER.search(wrk_env.get(var, ""))), f"{p} default {var} is an obvious demo value",
              "compose config printed a value without a demo marker (set in your environment?)")
    callback = emu["emulator.callback_topic_template"].replace("{MqName}", wrk["ci.mq_name"]) \
        .replace("{MqRegion}", wrk["ci.mq_region"]).replace("{MqMode}", wrk["ci.mq_mode"])
    check(callback == wrk["pulsar.callback_topic"], f"{p} the emulator publishes completion events to the worker's callback topic",
          f"{callback} vs {wrk['pulsar.callback_topic']}")
    emu_port = str(emu["emulator.listen"]).rsplit(":", 1)[-1]
    check(str(emu["emulator.listen"]).startswith("0.0.0.0:"), f"{p} emulator listens on all interfaces", emu["emulator.listen"])
    check(wrk["ci.endpoint"] == f"http://emulator:{emu_port}", f"{p} worker calls the emulator", wrk["ci.endpoint"])
    check(str(wrk["http.listen"]).startswith("0.0.0.0:"), f"{p} worker's /metrics reachable from the host", wrk["http.listen"])
    check(services["emulator"].get("command") == ["emulator"] and services["worker"].get("command") == ["run"],
          f"{p} emulator runs `emulator`, worker runs `run`")
    grace = duration_seconds(services["worker"].get("stop_grace_period", "10s"))
    check(grace >= duration_seconds(wrk["worker.shutdown_timeout"]) + 10,
          f"{p} worker stop_grace_period ≥ worker.shutdown_timeout + 10 s", f"{grace:g} s")

    # Healthchecks: `ci-worker health` (the image has no shell or curl) against the worker's /readyz
    # (the default URL, from http.listen) and the emulator's /healthz; dependants wait for them.
    emu_test = (services["emulator"].get("healthcheck") or {}).get("test") or []
    check(emu_test == ["CMD", "ci-worker", "health", "--url", f"http://127.0.0.1:{emu_port}/healthz"],
          f"{p} emulator healthcheck: ci-worker health --url http://127.0.0.1:{emu_port}/healthz", json.dumps(emu_test))
    wrk_test = (services["worker"].get("healthcheck") or {}).get("test") or []
    check(wrk_test == ["CMD", "ci-worker", "health"],
          f"{p} worker healthcheck: ci-worker health (/readyz of http.listen)", json.dumps(wrk_test))
    for name, needs in (("worker", "emulator"), ("sample", "worker")):
        dep = (services[name].get("depends_on") or {}).get(needs, {})
        check(dep.get("condition") == "service_healthy", f"{p} {name} waits for a healthy {needs}", json.dumps(dep))

    sample = services["sample"]
    check(sample.get("profiles") == ["sample"], f"{p} sample only runs with --profile sample", json.dumps(sample.get("profiles")))
    command = sample.get("command") or []
    check(command[:1] == ["submit"] and "--wait" in command, f"{p} sample submits and waits", " ".join(command))
    mounts = {v.get("target"): v for v in sample.get("volumes", [])}
    samples = mounts.get("/samples", {})
    check(samples.get("read_only") is True and Path(samples.get("source", "")).resolve() == (repo / "schemas" / "examples").resolve(),
          f"{p} sample mounts schemas/examples read-only at /samples", json.dumps(samples))
    if len(command) > 1 and command[1].startswith("/samples/"):
        check((repo / "schemas" / "examples" / command[1][len("/samples/"):]).is_file(),
              f"{p} sample request {command[1]} exists in schemas/examples")


# --- Dockerfile ---------------------------------------------------------------------------------

def dockerfile_stages(instr: list[tuple[str, str]]) -> list[dict]:
    """The stages: base (image or earlier stage), name, and their instructions."""
    stages: list[dict] = []
    for i, a in instr:
        if i == "FROM":
            words = a.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append({"base": words[0], "name": name, "instr": []})
        elif stages:
            stages[-1]["instr"].append((i, a))
    return stages


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern that matches the path or one of its parent
    directories decides; a `!pattern` takes the path back in."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        glob = pattern.lstrip("!").lstrip("/").rstrip("/")
        if any(fnmatch.fnmatch(x, glob) or fnmatch.fnmatch(x, glob.replace("**/", "")) for x in prefixes):
            excluded = not keep
    return excluded


def check_dockerfile(repo: Path) -> None:
    p = "[Dockerfile]"
    text = (repo / "Dockerfile").read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if len(l.split(None, 1)) > 1 else "")
             for l in (x.strip() for x in lines) if l and not l.startswith("#")]
    froms = [a for i, a in instr if i == "FROM"]
    args: dict[str, str] = {}
    for i, a in instr:
        if i == "ARG" and "=" in a:
            key, _, value = a.partition("=")
            args.setdefault(key.strip(), value.strip())
    check(len(froms) >= 2 and froms[0].startswith("rust:") and "bookworm" in froms[0],
          f"{p} builds on the official Rust image (bookworm)", froms[0] if froms else "no FROM")
    stages = dockerfile_stages(instr)
    by_name = {st["name"]: st for st in stages}

    def chain(stage: dict) -> list[dict]:
        """The stage and the stages it is FROM, root first."""
        out = [stage]
        while out[0]["base"] in by_name:
            out.insert(0, by_name[out[0]["base"]])
        return out

    def image_of(stage: dict) -> tuple[str, list[tuple[str, str]]]:
        """The base image a stage starts from and every instruction up to its end."""
        stages_ = chain(stage)
        base = stages_[0]["base"]
        for key, value in args.items():
            base = base.replace("${" + key + "}", value)
        return base, [x for st in stages_ for x in st["instr"]]

    final = stages[-1]
    check(final["name"] == "runtime", f"{p} the last stage (what `docker build .` makes) is `runtime`", final["name"])
    runtime, final_instr = image_of(final)
    check("distroless/static-debian12" in runtime and runtime.endswith(":nonroot"),
          f"{p} runs on distroless static-debian12:nonroot", runtime)
    runs = " ".join(a for i, a in instr if i == "RUN")
    check("protobuf-compiler" in runs, f"{p} installs protoc (protobuf-compiler) for the pulsar crate")
    check(runs.count("cargo build --release --locked") >= 1, f"{p} cargo build --release --locked")
    check("--mount=type=cache,target=/build/target" in runs and "--mount=type=cache,target=/usr/local/cargo/registry" in runs,
          f"{p} target/ and the crates registry in BuildKit cache mounts")
    check("image-rootfs target/release/ci-worker /out/rootfs" in runs,
          f"{p} the build stage assembles /out/rootfs with scripts/image-rootfs.sh (stripped binary, its libraries)")
    final_d: dict[str, list[str]] = {}
    for i, a in final_instr:
        final_d.setdefault(i, []).append(a)
    check(final_d.get("USER", [""])[-1] in ("65532", "65532:65532", "nonroot", "nonroot:nonroot"),
          f"{p} runtime user is nonroot (65532)", str(final_d.get("USER")))
    check(final_d.get("ENTRYPOINT", [""])[-1] == '["ci-worker"]' and final_d.get("CMD", [""])[-1] == '["run"]',
          f"{p} ENTRYPOINT [\"ci-worker\"], CMD [\"run\"]")
    exposed = set(" ".join(final_d.get("EXPOSE", [])).split())
    check({"9464", "9000", "9100"} <= exposed, f"{p} EXPOSE 9464 9000 9100", " ".join(sorted(exposed)))
    check(any(a.split()[-2:] == ["/out/rootfs/", "/"] and "--from=build" in a for a in final_d.get("COPY", [])),
          f"{p} the runtime copies /out/rootfs/ (binary at /usr/local/bin/ci-worker, libraries) from the build stage")
    check(any(a.startswith("org.opencontainers.image.") for a in final_d.get("LABEL", [])), f"{p} OCI labels")
    prebuilt = by_name.get("runtime-prebuilt")
    check(prebuilt is not None and chain(prebuilt)[0] is chain(final)[0] and len(chain(final)) > 1,
          f"{p} runtime-prebuilt and runtime share their base stage (only the files differ)")

    # Rust version of the image against the crate's rust-version.
    cargo = tomllib.loads((repo / "Cargo.toml").read_text())
    need = cargo["package"].get("rust-version")
    have = args.get("RUST_VERSION", "")
    if need and have:
        as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
        check(as_tuple(have)[:2] >= as_tuple(need)[:2], f"{p} RUST_VERSION {have} ≥ rust-version {need}")
    bins = [b["name"] for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
    check("ci-worker" in bins, f"{p} the crate builds a binary named ci-worker", str(bins))

    # Everything the default target's stages COPY from the context exists and survives .dockerignore
    # (runtime-prebuilt's context is the one scripts/compose-check.sh makes).
    ignore = [l.strip() for l in (repo / ".dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    used = {st["name"] for st in chain(final)}
    for st in chain(final):
        used |= {a.split("--from=", 1)[1].split()[0] for i, a in st["instr"] if i == "COPY" and "--from=" in a}
    for st in stages:
        if st["name"] not in used:
            continue
        for i, a in st["instr"]:
            if i != "COPY" or "--from=" in a:
                continue
            for src in a.split()[:-1]:
                if src.startswith("--"):
                    continue
                path = repo / src
                check(path.exists() and not ignored(src, ignore), f"{p} COPY source {src} is in the build context",
                      "missing" if not path.exists() else "excluded by .dockerignore")

    dry_run_build(repo, instr)


# A stand-in for cargo in the dry run: `cargo build` becomes `cargo fetch --locked` (the manifest must
# parse with only what the Dockerfile copied, and Cargo.lock must fit it) plus a placeholder binary.
FAKE_CARGO = """#!/bin/sh
if [ "$1" = build ]; then
  "$REAL_CARGO" fetch --locked --quiet || exit $?
  mkdir -p target/release
  printf '#!/bin/sh\\necho "ci-worker (dry run)"\\n' > target/release/ci-worker
  chmod +x target/release/ci-worker
  exit 0
fi
exec "$REAL_CARGO" "$@"
"""


def dry_run_build(repo: Path, instr: list[tuple[str, str]]) -> None:
    """Replays the build stage's COPY and cargo RUN steps in a scratch directory, with `cargo build`
    replaced by `cargo fetch --locked`: catches a manifest that cannot be read from the files the
    Dockerfile copies (e.g. a declared bench whose file is not there) and a stale Cargo.lock,
    without building anything."""
    p = "[Dockerfile]"
    cargo = shutil.which("cargo")
    if not cargo:
        print(f"note {p} dry run of the build stage skipped: no cargo on this machine")
        return
    stage_end = [k for k, (i, _) in enumerate(instr) if i == "FROM"][1]
    with tempfile.TemporaryDirectory(prefix="ci-worker-dockerfile-") as tmp:
        work, fake = Path(tmp, "build"), Path(tmp, "bin")
        work.mkdir()
        fake.mkdir()
        (fake / "cargo").write_text(FAKE_CARGO)
        (fake / "cargo").chmod(0o755)
        env = dict(os.environ, REAL_CARGO=cargo, PATH=f"{fake}:{os.environ.get('PATH', '')}")
        for i, a in instr[:stage_end]:
            if i == "COPY" and "--from=" not in a:
                *srcs, dest = a.split()
                # Absolute destinations (outside WORKDIR) land in the scratch directory too.
                base = Path(tmp, "root") if dest.startswith("/") else work
                dest = dest.lstrip("/")
                for src in srcs:
                    target = base / dest / Path(src).name if dest.endswith("/") else base / dest
                    if (repo / src).is_dir():
                        shutil.copytree(repo / src, target, dirs_exist_ok=True)
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(repo / src, target)
            elif i == "RUN" and "cargo " in a:
                # The cargo commands of the step only, without its BuildKit --mount options.
                steps = [x.strip() for x in re.sub(r"^(--mount=\S+\s+)+", "", a).split("&&")]
                cmd = " && ".join(x for x in steps if x.startswith("cargo "))
                proc = subprocess.run(["sh", "-ec", cmd], cwd=work, env=env, capture_output=True,
                                      text=True, timeout=600)
                if not check(proc.returncode == 0, f"{p} dry run of `RUN {cmd[:60]}...`",
                             (proc.stderr or proc.stdout).strip()[-600:]):
                    return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True, type=Path)
    ap.add_argument("--render", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--compose-json", type=Path)
    ap.add_argument("--keda-out", type=Path, required=True)
    ap.add_argument("--binary")
    ap.add_argument("--quiet", action="store_true", help="print failures and a summary only")
    opts = ap.parse_args()
    global QUIET
    QUIET = opts.quiet
    repo = opts.repo.resolve()
    defaults = tomllib.loads((repo / "ci-worker.example.toml").read_text())
    keda_schema = json.loads((repo / "deploy" / "validate" / "keda.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(keda_schema)
    metrics = metric_names(repo)
    keda: list = []
    for item in opts.render:
        name, _, file = item.partition("=")
        check_render(name, Path(file), defaults, opts.binary, metrics, keda_schema, keda)
    if opts.compose_json:
        check_compose(repo, opts.compose_json, defaults, opts.binary)
    check_dockerfile(repo)
    files = sorted(f for f in (repo / "deploy").rglob("*") if f.is_file() and f.suffix in (".yaml", ".yml", ".env", ".json")
                   and "node_modules" not in f.parts and f.name != "package-lock.json")
    files += [repo / "docker-compose.yml"] + [f for f in (repo / "README.md",) if f.exists()]
    scan_for_real_credentials(repo, files)
    opts.keda_out.write_text(json.dumps(keda, indent=1))
    total = PASSED + len(FAILURES)
    print(f"check_manifests: {'all ' if not FAILURES else ''}{total} checks run, {len(FAILURES)} failing")
    if FAILURES:
        print(f"\n{len(FAILURES)} check(s) failed:", file=sys.stderr)
        for f in FAILURES:
            print(f"  - {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
