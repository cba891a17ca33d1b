#!/usr/bin/env bash
# Runs docker-compose.yml for real and checks what a user relies on:
#   1. the stack comes up: broker healthy, emulator healthy, worker ready (`ci-worker health`)
#   2. `docker compose --profile sample run --rm sample` ends with a `succeeded` result
#   3. clients ON THE HOST, with no listener name, through PULSAR_HOST_PORT: Apache's Python client
#      publishes 20 requests and reads their 20 final results; `ci-worker submit --wait` (pulsar-rs)
#      and Apache's Java client do one each
#   4. profile kafka (`docker compose --profile kafka up --wait`) on the running stack: the Apache
#      Kafka broker healthy, the one-shot kafka-topic exited 0, worker-kafka ready; the one-shot
#      sample-kafka (`--profile kafka-sample run --rm sample-kafka`) ends with a `succeeded` result
#      and worker-kafka's /metrics counts the event its kafka ingress stored; the topic is described
#      from the host through KAFKA_HOST_PORT (Kafka's own TopicCommand, when java is here). About 40 s
#      on a shared 2-core machine (the Kafka stand-in's first build about 1.5 minutes more)
#   5. SIGTERM: `docker stop` of the worker, timed; it must exit 0 before its grace period
#   6. `docker compose down -v` (every profile); then the emulator alone, by the Dockerfile's `docker run`
# and ends with one summary line (`compose-check: passed: ...` or `compose-check: FAILED: ...`).
#
#   scripts/compose-check.sh           the ci-worker image from a binary already built (CI_WORKER_BIN),
#                                      Dockerfile target runtime-prebuilt; what scripts/test.sh runs
#                                      (about 2 minutes, 40 s of them the kafka profile; the stand-ins'
#                                      first build about 4 more)
#   scripts/compose-check.sh --full    the image from the Dockerfile's whole multi-stage build
#                                      (`docker compose build`): from a fresh clone and an empty build
#                                      cache 17 minutes on a shared 2-core machine, 13 of them cargo
#
# What it installs when missing (Debian): docker.io (engine, containerd, runc), debootstrap; Docker
# Compose v2 as scripts/validate-deploy.sh does (Go module proxy); starts dockerd when no daemon
# answers (and stops it at the end if no other compose-check is using it).
#
# Base images: the official ones when they are here or can be pulled. Where they cannot (no
# registry access), it builds STAND-INS with the same tags, cached in the engine (a label records
# their recipe; a later run rebuilds only when the recipe changed):
#   gcr.io/distroless/static-debian12:nonroot
#       The Debian 12 packages distroless puts in `static` (base-files, netbase, tzdata, media-types),
#       the CA bundle from ca-certificates, /etc/passwd and /etc/group with root, nobody and nonroot
#       (65532), /tmp, /home/nonroot, user 65532. Differs: current bookworm packages instead of
#       distroless's pinned snapshot, /etc/os-release says Debian rather than Distroless, no SBOM.
#   apachepulsar/pulsar:<version of docker-compose.yml>
#       Debian 12 minbase (debootstrap) with openjdk-17-jre-headless, bash, curl and python3, and
#       under /pulsar the broker jars scripts/pulsar.sh resolves from Maven Central, a minimal
#       conf/standalone.conf, a console log configuration, bin/apply-config-from-env.py (replaces
#       `key=` lines from variables named like the key, and sets PULSAR_PREFIX_<key> whether or
#       not the file has the key, as the official one does) and bin/pulsar (`standalone` only),
#       user 10000. Differs: Alpine and Java 21 there; no other bin/ tools (pulsar-admin, ...), no
#       functions runtime, no connectors or offloaders, no Python client.
#   rust:<RUST_VERSION>-bookworm (--full only)
#       Debian 12 minbase with gcc, libc6-dev and ca-certificates, and the rustc/cargo toolchain
#       of that version copied from this machine's rustup (no docs) at /usr/local/rustup, with
#       CARGO_HOME=/usr/local/cargo as the official image has it. Differs: no rustup, none of
#       buildpack-deps' other packages (git, curl, libssl-dev, ...).
#   apache/kafka:<version of docker-compose.yml>
#       Debian 12 minbase with openjdk-17-jre-headless, and the official image's layout: under
#       /opt/kafka/libs the broker and tools jars scripts/kafka.sh resolves from Maven Central,
#       /opt/kafka/config, /etc/kafka/docker (default server.properties, log4j2.yaml,
#       tools-log4j2.yaml), /var/lib/kafka/data, /mnt/shared/config, user appuser (1000), CMD
#       /etc/kafka/docker/run. That run script is written here; it does what the official one does
#       (NAME=value arguments exported, CLUSTER_ID defaulted to the official default, a controller-only
#       node refuses advertised listeners, KAFKA_LISTENERS derived from KAFKA_ADVERTISED_LISTENERS
#       when unset) and then calls Kafka's own kafka.docker.KafkaDockerWrapper `setup`, the class the
#       official image calls, so the KAFKA_* variables become server.properties keys exactly as there
#       (`_` -> `.`, `__` -> `_`, `___` -> `-`; a mounted /mnt/shared/config/server.properties; the
#       defaults when no variable is set) and the storage is formatted the same way. The default
#       server.properties is a one-node broker+controller on 9092/9093 with a static quorum.
#       bin/: kafka-run-class.sh, kafka-server-start.sh, kafka-storage.sh, kafka-topics.sh,
#       kafka-broker-api-versions.sh, kafka-consumer-groups.sh (short launchers of their classes,
#       same KAFKA_HEAP_OPTS / KAFKA_JVM_PERFORMANCE_OPTS / KAFKA_LOG4J_OPTS / KAFKA_OPTS defaults).
#       Differs: Alpine and Java 21 there (Java 17 here); no other bin/ tools, no connect, no JMX
#       settings (KAFKA_JMX_*), no class-data-sharing archives (kafka.jsa), no SSL/SASL checks of the
#       run script (the wrapper still writes their keys), no shipped config/ examples.
#
# Environment:
#   COMPOSE_CHECK_PORT [16650]  host ports: broker P, its HTTP P+1, worker metrics P+2,
#                               emulator P+3, emulator CMQ P+4, Kafka P+5, worker-kafka metrics
#                               P+6; also names the project
#                               (ci-worker-check-P) and the image (ci-worker:check-P)
#   CI_WORKER_BIN [newest of target/{release,debug}/ci-worker]  the binary of the default mode
#   COMPOSE_CHECK_PULL [1]      0: never try to pull the official base images
#   COMPOSE_CHECK_KEEP [0]      1: leave the stack running at the end (stop it with the `down -v` printed)
#   DEBIAN_MIRROR [http://deb.debian.org/debian]  for debootstrap
#   DOCKERD_ARGS []             extra dockerd arguments when it is started here (e.g. --storage-driver=vfs)
#   BUILD_CA_FILE               (--full) a PEM CA bundle the image build trusts; by default the CAs this
#                               machine added in /usr/local/share/ca-certificates, if any (a proxy's)
#   CARGO_REGISTRY_MIRROR       (--full) passed to the build (see Dockerfile)
# Logs: .cache/compose-check/ (dockerd, builds, compose logs on failure).
set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT" || exit 1

FULL=0
case ${1:-} in
--full) FULL=1 ;;
"") ;;
-h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
*) echo "compose-check: unknown argument '$1' (--full, --help)" >&2; exit 2 ;;
esac

T0=$SECONDS
WORK="$REPO_ROOT/.cache/compose-check"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/compose-check"
mkdir -p "$WORK" "$CACHE"
P=${COMPOSE_CHECK_PORT:-16650}
export PULSAR_HOST_PORT=$P PULSAR_HOST_HTTP_PORT=$((P + 1)) WORKER_METRICS_PORT=$((P + 2))
export EMULATOR_PORT=$((P + 3)) EMULATOR_CMQ_PORT=$((P + 4))
export KAFKA_HOST_PORT=$((P + 5)) WORKER_KAFKA_METRICS_PORT=$((P + 6))
export CI_WORKER_IMAGE="ci-worker:check-$P"
PROJECT="ci-worker-check-$P"
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
STAND_IN_LABEL=org.ci-worker.compose-check.stand-in

say() { echo "compose-check: $*" >&2; }
phase() { say "$* ($((SECONDS - T0)) s)"; }
FAILED_AT=""
fail() {
  FAILED_AT=$*
  echo "compose-check: error: $*" >&2
  exit 1
}

# --- tools ------------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() { # package...
  command -v apt-get >/dev/null || fail "no apt-get; install by hand: $*"
  ((EUID == 0)) || fail "need root to install $* (and to run dockerd)"
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  if ((APT_UPDATED == 0)); then
    apt-get update -qq || fail "apt-get update failed"
    APT_UPDATED=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null || fail "apt-get install $* failed"
}

ensure_tools() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v objcopy >/dev/null || missing+=(binutils)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt_install "${missing[@]}"
  fi
  local compose
  compose=$(bash "$REPO_ROOT/scripts/validate-deploy.sh" --compose-only) || fail "no Docker Compose v2"
  read -r -a COMPOSE <<<"$compose"
}

# --- the engine -------------------------------------------------------------------------------

# Every compose-check holds this lock shared while it runs; whoever started dockerd stops it at the
# end only if it can take it exclusively (no other check is using the daemon).
USERS_LOCK="$CACHE/users.lock"
DOCKERD_PID=""

ensure_daemon() {
  exec 7>"$USERS_LOCK"
  flock -s 7
  docker info >/dev/null 2>&1 && return 0
  (
    exec 8>"$CACHE/dockerd-start.lock"
    flock 8
    docker info >/dev/null 2>&1 && exit 0
    say "no Docker daemon answers: starting dockerd (log: $WORK/dockerd.log)"
    # shellcheck disable=SC2086
    nohup dockerd ${DOCKERD_ARGS:-} >"$WORK/dockerd.log" 2>&1 </dev/null 7>&- 8>&- &
    echo $! >"$WORK/dockerd.pid"
    for _ in $(seq 1 120); do
      docker info >/dev/null 2>&1 && exit 0
      kill -0 "$(cat "$WORK/dockerd.pid")" 2>/dev/null || break
      sleep 0.5
    done
    tail -n 30 "$WORK/dockerd.log" >&2
    exit 1
  ) || fail "dockerd did not start (log above; DOCKERD_ARGS for other flags, e.g. --storage-driver=vfs)"
  [[ -s $WORK/dockerd.pid ]] && DOCKERD_PID=$(cat "$WORK/dockerd.pid")
  say "dockerd $(docker version -f '{{.Server.Version}}') (pid $DOCKERD_PID), storage driver $(docker info -f '{{.Driver}}')"
}

stop_daemon() {
  [[ -n $DOCKERD_PID ]] || return 0
  flock -u 7
  if ! flock -n -x 7; then
    say "leaving dockerd (pid $DOCKERD_PID) running: another compose-check uses it"
    return 0
  fi
  kill -TERM "$DOCKERD_PID" 2>/dev/null || return 0
  for _ in $(seq 1 60); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || return 0
    sleep 0.5
  done
  say "dockerd (pid $DOCKERD_PID) still running after 30 s"
}

# --- base images: official, else stand-ins ----------------------------------------------------

image_label() { docker image inspect -f "{{index .Config.Labels \"$STAND_IN_LABEL\"}}" "$1" 2>/dev/null; }

# ensure_base TAG BUILDER [RECIPE...]: the official image if present or pullable, else the stand-in
# BUILDER makes (rebuilt when the recipe — BUILDER's text and RECIPE — changed).
ensure_base() {
  local tag=$1 builder=$2
  shift 2
  local recipe have
  recipe=$({ declare -f "$builder"; printf '%s\n' "$@"; } | sha256sum | cut -c1-16)
  if docker image inspect "$tag" >/dev/null 2>&1; then
    have=$(image_label "$tag")
    if [[ -z $have || $have == "<no value>" ]]; then
      BASES+=("$tag (official)")
      return 0
    fi
  fi
  if [[ ${COMPOSE_CHECK_PULL:-1} == 1 ]] && timeout 600 docker pull -q "$tag" >/dev/null 2>"$WORK/pull.err"; then
    BASES+=("$tag (official, pulled)")
    return 0
  fi
  if [[ ${have:-} == "$recipe" ]]; then
    BASES+=("$tag (stand-in, cached)")
    return 0
  fi
  say "$tag cannot be pulled ($(tail -n 1 "$WORK/pull.err" 2>/dev/null)): building a stand-in"
  local started=$SECONDS rootfs="$WORK/rootfs-${builder#standin_}" old
  old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null)
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  local changes=()
  "$builder" "$rootfs" || fail "building the stand-in for $tag failed"
  tar -C "$rootfs" --numeric-owner -c . |
    docker import "${changes[@]}" --change "LABEL $STAND_IN_LABEL=$recipe" - "$tag" >/dev/null ||
    fail "docker import of the stand-in for $tag failed"
  rm -rf "$rootfs"
  # The stand-in of an older recipe, untagged now.
  [[ -z $old ]] || docker image rm "$old" >/dev/null 2>&1 || true
  BASES+=("$tag (stand-in, built in $((SECONDS - started)) s)")
}

debootstrap_minbase() { # rootfs packages(comma-separated)
  debootstrap --variant=minbase --include="$2" "$SUITE" "$1" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log" >&2; return 1; }
  rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*
}

standin_distroless_static() { # rootfs
  local root=$1 debs="$WORK/debs"
  rm -rf "$debs" && mkdir -p "$debs"
  (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root base-files netbase tzdata media-types ca-certificates >/dev/null) ||
    { apt-get update -qq && (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root base-files netbase tzdata media-types ca-certificates >/dev/null); } ||
    return 1
  local deb
  for deb in "$debs"/*.deb; do
    [[ $deb == */ca-certificates_* ]] || dpkg-deb -x "$deb" "$root"
  done
  # ca-certificates' certificates as the bundle that update-ca-certificates would write.
  dpkg-deb -x "$debs"/ca-certificates_*.deb "$debs/ca"
  mkdir -p "$root/etc/ssl/certs"
  find "$debs/ca/usr/share/ca-certificates" -name '*.crt' | sort | xargs cat >"$root/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$root/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' 'networks: files' \
    'protocols: files' 'services: files' >"$root/etc/nsswitch.conf"
  mkdir -p "$root/tmp" "$root/root" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root" "$root/home/nonroot"
  chown 65532:65532 "$root/home/nonroot"
  rm -rf "$debs"
  changes=(--change 'USER 65532' --change 'WORKDIR /home/nonroot'
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt')
}

PULSAR_VERSION=""
standin_pulsar() { # rootfs
  local root=$1 lib
  lib="${PULSAR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/pulsar-$PULSAR_VERSION}/lib"
  PULSAR_VERSION=$PULSAR_VERSION bash "$REPO_ROOT/scripts/pulsar.sh" fetch || return 1
  debootstrap_minbase "$root" openjdk-17-jre-headless,curl,python3-minimal || return 1
  local java_home
  java_home=$(dirname "$(dirname "$(chroot "$root" readlink -f /usr/bin/java)")")
  mkdir -p "$root/pulsar/bin" "$root/pulsar/conf" "$root/pulsar/data" "$root/pulsar/logs"
  cp -a "$lib" "$root/pulsar/lib"
  cat >"$root/pulsar/bin/pulsar" <<'EOF'
#!/bin/bash
# Stand-in for Apache Pulsar's bin/pulsar (scripts/compose-check.sh): `standalone` only, in the
# foreground, logging to the console. PULSAR_MEM and PULSAR_EXTRA_OPTS as in the official image.
set -e
cd /pulsar
if [ "${1:-}" != standalone ]; then
  echo "this stand-in of bin/pulsar runs 'standalone' only (got '${1:-}')" >&2
  exit 2
fi
shift
exec java ${PULSAR_MEM:--Xms512m -Xmx512m -XX:MaxDirectMemorySize=512m} ${PULSAR_EXTRA_OPTS:-} \
  -XX:+UseG1GC -XX:+PerfDisableSharedMem -Djava.net.preferIPv4Stack=true \
  -Dlog4j.configurationFile=/pulsar/conf/log4j2.xml -Dlog4j2.formatMsgNoLookups=true \
  -Dio.netty.tryReflectionSetAccessible=true -Dpulsar.allocator.exit_on_oom=true \
  --add-opens java.base/java.io=ALL-UNNAMED --add-opens java.base/java.util.zip=ALL-UNNAMED \
  --add-opens java.base/java.nio=ALL-UNNAMED --add-opens java.base/jdk.internal.misc=ALL-UNNAMED \
  --add-opens java.base/sun.net=ALL-UNNAMED --add-opens java.management/sun.management=ALL-UNNAMED \
  -Dbookkeeper.metadata.bookie.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataBookieDriver \
  -Dbookkeeper.metadata.client.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataClientDriver \
  -cp '/pulsar/lib/*' org.apache.pulsar.PulsarStandaloneStarter --config /pulsar/conf/standalone.conf "$@"
EOF
  cat >"$root/pulsar/bin/apply-config-from-env.py" <<'EOF'
#!/usr/bin/env python3
"""Stand-in for the official image's bin/apply-config-from-env.py (scripts/compose-check.sh): in each
properties file given, a variable named like a key (also a commented-out `#key=`) replaces that
line, and PULSAR_PREFIX_<key> replaces it or, when the file lacks the key, appends it."""
import os
import re
import sys

PREFIX = "PULSAR_PREFIX_"
for path in sys.argv[1:]:
    with open(path) as f:
        lines = f.read().splitlines()
    where = {}
    for n, line in enumerate(lines):
        m = re.match(r"\s*#?\s*([A-Za-z0-9_.-]+)\s*=", line)
        if m:
            where.setdefault(m.group(1), n)
    values = {k: v for k, v in os.environ.items() if k in where}
    values.update({k[len(PREFIX):]: v for k, v in os.environ.items() if k.startswith(PREFIX)})
    for key in sorted(values):
        line = f"{key}={values[key].strip()}"
        if key in where:
            lines[where[key]] = line
        else:
            lines.append(line)
        print(f"[{path}] {key} set from the environment")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
EOF
  cat >"$root/pulsar/conf/standalone.conf" <<'EOF'
# Stand-in (scripts/compose-check.sh): what a one-bookie standalone needs; every other key has
# ServiceConfiguration's default. metadataStoreUrl empty: the starter keeps metadata under data/.
clusterName=standalone
metadataStoreUrl=
brokerServicePort=6650
webServicePort=8080
bindAddress=0.0.0.0
advertisedAddress=
advertisedListeners=
internalListenerName=
bindAddresses=
managedLedgerDefaultEnsembleSize=1
managedLedgerDefaultWriteQuorum=1
managedLedgerDefaultAckQuorum=1
allowAutoTopicCreationType=non-partitioned
allowLoopback=true
EOF
  cat >"$root/pulsar/conf/log4j2.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <Console name="console" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%t] %-5level %logger{36} - %msg%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="org.apache.zookeeper" level="warn"/>
    <Logger name="org.apache.bookkeeper.proto" level="warn"/>
    <Root level="info"><AppenderRef ref="console"/></Root>
  </Loggers>
</Configuration>
EOF
  chmod 0755 "$root/pulsar/bin/pulsar" "$root/pulsar/bin/apply-config-from-env.py"
  echo 'pulsar:x:10000:0:pulsar:/pulsar/data:/bin/sh' >>"$root/etc/passwd"
  chown -R 10000:0 "$root/pulsar/conf" "$root/pulsar/data" "$root/pulsar/logs"
  chmod -R ug+rwX "$root/pulsar/conf" "$root/pulsar/data" "$root/pulsar/logs"
  changes=(--change 'USER 10000' --change 'WORKDIR /pulsar' --change "ENV JAVA_HOME=$java_home"
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/pulsar/bin'
    --change 'ENV PULSAR_PID_DIR=/pulsar/logs')
}

KAFKA_VERSION=""
standin_kafka() { # rootfs
  local root=$1 lib
  lib="${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/kafka-$KAFKA_VERSION}/lib"
  KAFKA_VERSION=$KAFKA_VERSION bash "$REPO_ROOT/scripts/kafka.sh" fetch || return 1
  debootstrap_minbase "$root" openjdk-17-jre-headless || return 1
  local java_home
  java_home=$(dirname "$(dirname "$(chroot "$root" readlink -f /usr/bin/java)")")
  mkdir -p "$root/opt/kafka/bin" "$root/opt/kafka/config" "$root/opt/kafka/logs" "$root/etc/kafka/docker" \
    "$root/etc/kafka/secrets" "$root/var/lib/kafka/data" "$root/mnt/shared/config" "$root/usr/logs" \
    "$root/home/appuser"
  cp -a "$lib" "$root/opt/kafka/libs"
  # bin/: the launcher every tool goes through, and the tools the compose file and its healthcheck
  # call, each a one-line wrapper naming its class as the distribution's scripts do.
  cat >"$root/opt/kafka/bin/kafka-run-class.sh" <<'EOF'
#!/bin/bash
# Stand-in for Apache Kafka's bin/kafka-run-class.sh (scripts/compose-check.sh): runs CLASS with the
# jars of /opt/kafka/libs. The variables the distribution's launcher reads, with its defaults:
# KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_LOG4J_OPTS (the tools' console logging unless
# set), KAFKA_OPTS, LOG_DIR; no JMX, GC log or daemon mode.
base=/opt/kafka
if [ $# -lt 1 ]; then
  echo "usage: $0 CLASS [args]" >&2
  exit 1
fi
class=$1
shift
exec "${JAVA_HOME:+$JAVA_HOME/bin/}java" ${KAFKA_HEAP_OPTS:--Xmx256M} \
  ${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true} \
  "-Dkafka.logs.dir=${LOG_DIR:-$base/logs}" ${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base/config/tools-log4j2.yaml} \
  ${KAFKA_OPTS:-} -cp "$base/libs/*" "$class" "$@"
EOF
  cat >"$root/opt/kafka/bin/kafka-server-start.sh" <<'EOF'
#!/bin/bash
# Stand-in for bin/kafka-server-start.sh (scripts/compose-check.sh): the broker in the foreground,
# 1 GB heap and config/log4j2.yaml unless KAFKA_HEAP_OPTS / KAFKA_LOG4J_OPTS say otherwise.
if [ $# -lt 1 ]; then
  echo "usage: $0 server.properties [--override property=value]*" >&2
  exit 1
fi
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
export KAFKA_LOG4J_OPTS=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml}
exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$@"
EOF
  local tool class
  for tool in kafka-storage.sh:kafka.tools.StorageTool kafka-topics.sh:org.apache.kafka.tools.TopicCommand \
    kafka-broker-api-versions.sh:org.apache.kafka.tools.BrokerApiVersionsCommand \
    kafka-consumer-groups.sh:org.apache.kafka.tools.consumer.group.ConsumerGroupCommand; do
    class=${tool#*:}
    tool=${tool%%:*}
    printf '#!/bin/bash\n# Stand-in (scripts/compose-check.sh): %s as the distribution runs it.\nexec /opt/kafka/bin/kafka-run-class.sh %s "$@"\n' \
      "$class" "$class" >"$root/opt/kafka/bin/$tool"
  done
  # The image's defaults (/etc/kafka/docker, which the official Dockerfile copies from the
  # distribution's config/): a one-node KRaft combined broker and controller for a container started
  # with no KAFKA_* variables, console logging for the broker, stderr for the tools.
  cat >"$root/etc/kafka/docker/server.properties" <<'EOF'
# Stand-in default (scripts/compose-check.sh): used only when no KAFKA_* variable configures the
# broker. One node, broker and controller (KRaft), static quorum of one, PLAINTEXT on 9092.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
listeners=PLAINTEXT://:9092,CONTROLLER://:9093
advertised.listeners=PLAINTEXT://localhost:9092
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=/tmp/kraft-combined-logs
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
  cat >"$root/etc/kafka/docker/log4j2.yaml" <<'EOF'
# Stand-in (scripts/compose-check.sh): the broker logs to the console.
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
EOF
  cat >"$root/etc/kafka/docker/tools-log4j2.yaml" <<'EOF'
# Stand-in (scripts/compose-check.sh): the command-line tools warn on stderr.
Configuration:
  Appenders:
    Console:
      name: STDERR
      target: SYSTEM_ERR
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDERR
EOF
  cp "$root/etc/kafka/docker/server.properties" "$root/etc/kafka/docker/log4j2.yaml" \
    "$root/etc/kafka/docker/tools-log4j2.yaml" "$root/opt/kafka/config/"
  cat >"$root/etc/kafka/docker/run" <<'EOF'
#!/bin/bash
# Stand-in for the official image's /etc/kafka/docker/run (scripts/compose-check.sh). As there:
# NAME=value arguments are exported first; CLUSTER_ID defaults to the official image's default; a
# KRaft controller-only node refuses KAFKA_ADVERTISED_LISTENERS; KAFKA_LISTENERS, when unset, is
# KAFKA_ADVERTISED_LISTENERS with every host 0.0.0.0. Then Kafka's own kafka.docker.KafkaDockerWrapper
# (in the jars) writes /opt/kafka/config from the KAFKA_* variables (KAFKA_ dropped, lower case,
# `_` -> `.`, `__` -> `_`, `___` -> `-`), or from a server.properties in /mnt/shared/config, or the
# defaults in /etc/kafka/docker when neither says anything, and formats the storage (a storage
# formatted before is kept); the broker runs in the foreground.
set -o nounset -o errexit
for assignment in "$@"; do export "$assignment"; done
export CLUSTER_ID=${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}
if [[ ${KAFKA_PROCESS_ROLES:-} == controller ]]; then
  if [[ -n ${KAFKA_ADVERTISED_LISTENERS:-} ]]; then
    echo "KAFKA_ADVERTISED_LISTENERS is not supported on a KRaft controller." >&2
    exit 1
  fi
  unset KAFKA_ADVERTISED_LISTENERS
elif [[ -z ${KAFKA_LISTENERS:-} && -n ${KAFKA_ADVERTISED_LISTENERS:-} ]]; then
  export KAFKA_LISTENERS
  KAFKA_LISTENERS=$(sed -e 's|://[^:,]*:|://0.0.0.0:|g' <<<"$KAFKA_ADVERTISED_LISTENERS")
fi
[[ -w /opt/kafka/config/ ]] || { echo "/opt/kafka/config/ is not writable" >&2; exit 1; }
echo "===> Configuring (cluster id $CLUSTER_ID) ..."
if ! out=$(/opt/kafka/bin/kafka-run-class.sh kafka.docker.KafkaDockerWrapper setup \
  --default-configs-dir /etc/kafka/docker --mounted-configs-dir /mnt/shared/config \
  --final-configs-dir /opt/kafka/config 2>&1); then
  grep -qi "already formatted" <<<"$out" || { echo "$out" >&2; exit 1; }
fi
echo "===> Launching ..."
exec /opt/kafka/bin/kafka-server-start.sh /opt/kafka/config/server.properties
EOF
  chmod 0755 "$root"/opt/kafka/bin/*.sh "$root/etc/kafka/docker/run"
  echo 'appuser:x:1000:1000::/home/appuser:/bin/bash' >>"$root/etc/passwd"
  echo 'appuser:x:1000:' >>"$root/etc/group"
  chown -R 1000:1000 "$root/opt/kafka" "$root/mnt/shared/config" "$root/usr/logs" "$root/home/appuser"
  chown -R 1000:0 "$root/var/lib/kafka" "$root/etc/kafka"
  chmod -R ug+w "$root/etc/kafka" "$root/var/lib/kafka"
  changes=(--change 'USER appuser' --change "ENV JAVA_HOME=$java_home"
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'EXPOSE 9092' --change 'VOLUME ["/etc/kafka/secrets", "/var/lib/kafka/data", "/mnt/shared/config"]'
    --change 'CMD ["/etc/kafka/docker/run"]')
}

RUST_VERSION=""
standin_rust() { # rootfs
  local root=$1 toolchain=""
  local t
  for t in "${RUSTUP_HOME:-$HOME/.rustup}"/toolchains/"$RUST_VERSION"*-x86_64-unknown-linux-gnu; do
    [[ -x $t/bin/cargo ]] && toolchain=$t
  done
  [[ -n $toolchain ]] ||
    { say "no Rust $RUST_VERSION toolchain on this machine: rustup toolchain install $RUST_VERSION"; return 1; }
  debootstrap_minbase "$root" gcc,libc6-dev,ca-certificates || return 1
  local dest
  dest="$root/usr/local/rustup/toolchains/$(basename "$toolchain")"
  mkdir -p "$dest" "$root/usr/local/cargo/bin"
  cp -a "$toolchain/bin" "$toolchain/lib" "$toolchain/libexec" "$dest/"
  for t in cargo rustc rustdoc; do
    ln -s "/usr/local/rustup/toolchains/$(basename "$toolchain")/bin/$t" "$root/usr/local/cargo/bin/$t"
  done
  chroot "$root" /usr/local/cargo/bin/cargo --version >/dev/null || return 1
  changes=(--change 'ENV CARGO_HOME=/usr/local/cargo' --change 'ENV RUSTUP_HOME=/usr/local/rustup'
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change "ENV RUST_VERSION=$RUST_VERSION")
}

# --- the stack --------------------------------------------------------------------------------

COMPOSE=()
OVERRIDE="$WORK/prebuilt.override.yml"
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO_ROOT/docker-compose.yml" "$@"; }

STACK_UP=0
SUMMARY=()
BASES=()

cleanup() {
  local rc=$?
  if ((STACK_UP == 1)); then
    if ((rc != 0)); then
      compose --profile '*' ps -a >&2 || true
      compose --profile '*' logs --no-color --tail 60 >"$WORK/compose-failure.log" 2>&1 || true
      tail -n 120 "$WORK/compose-failure.log" >&2
      say "compose logs: $WORK/compose-failure.log"
    fi
    if [[ ${COMPOSE_CHECK_KEEP:-0} == 1 ]]; then
      say "COMPOSE_CHECK_KEEP=1: the stack stays up; stop it with: ${COMPOSE[*]} -p $PROJECT down -v"
    else
      compose --profile '*' down -v --remove-orphans >"$WORK/down.log" 2>&1 || say "down -v failed (log: $WORK/down.log)"
    fi
  fi
  stop_daemon
  local took=$((SECONDS - T0)) mode=prebuilt
  ((FULL == 1)) && mode=full
  local so_far=""
  ((${#SUMMARY[@]})) && so_far=$(printf '%s; ' "${SUMMARY[@]}") && so_far=${so_far%; }
  if ((rc == 0)); then
    echo "compose-check: passed ($mode, ${took} s): $so_far"
  else
    echo "compose-check: FAILED ($mode, ${took} s) at: ${FAILED_AT:-exit $rc}${so_far:+ (so far: $so_far)}"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

seconds_between() { # RFC 3339 timestamps -> seconds, 1 decimal
  python3 -c 'import sys
from datetime import datetime
def t(s):
    s = s.rstrip("Z").split("+")[0]
    d, _, f = s.partition(".")
    return datetime.fromisoformat(d).timestamp() + float("0." + (f or "0"))
print(f"{t(sys.argv[2]) - t(sys.argv[1]):.1f}")' "$1" "$2"
}

phase "tools"
ensure_tools
ensure_daemon

for port in $PULSAR_HOST_PORT $PULSAR_HOST_HTTP_PORT $WORKER_METRICS_PORT $EMULATOR_PORT $EMULATOR_CMQ_PORT \
  $KAFKA_HOST_PORT $WORKER_KAFKA_METRICS_PORT; do
  port_free "$port" || fail "host port $port is in use (COMPOSE_CHECK_PORT=$P picks P..P+6)"
done
compose --profile '*' down -v --remove-orphans >/dev/null 2>&1 # a previous run's leftovers

phase "base images"
exec 9>"$CACHE/stand-ins.lock"
flock 9
pulsar_image=$(compose config --images 2>/dev/null | grep '^apachepulsar/pulsar:' | head -n 1)
[[ -n $pulsar_image ]] || fail "docker-compose.yml names no apachepulsar/pulsar image"
PULSAR_VERSION=${pulsar_image##*:}
kafka_image=$(compose --profile kafka config --images 2>/dev/null | grep '^apache/kafka:' | head -n 1)
[[ -n $kafka_image ]] || fail "docker-compose.yml names no apache/kafka image (profile kafka)"
KAFKA_VERSION=${kafka_image##*:}
dockerfile_arg() { sed -n "s/^ARG $1=//p" "$REPO_ROOT/Dockerfile" | head -n 1; }
runtime_image=$(dockerfile_arg RUNTIME_IMAGE)
RUST_VERSION=$(dockerfile_arg RUST_VERSION)
[[ $runtime_image == gcr.io/distroless/static-debian12:* ]] ||
  fail "the Dockerfile's RUNTIME_IMAGE is $runtime_image: this script has a stand-in for distroless static-debian12 only"
ensure_base "$runtime_image" standin_distroless_static "$SUITE"
ensure_base "$pulsar_image" standin_pulsar "$PULSAR_VERSION" "$(sha256sum <"$REPO_ROOT/scripts/pulsar/pom.xml")"
ensure_base "$kafka_image" standin_kafka "$KAFKA_VERSION" "$(sha256sum <"$REPO_ROOT/scripts/kafka/pom.xml")"
if ((FULL == 1)); then
  ensure_base "rust:$RUST_VERSION-bookworm" standin_rust "$RUST_VERSION" \
    "$(rustc "+$RUST_VERSION" --version 2>/dev/null || echo "rustc $RUST_VERSION")"
fi
flock -u 9
bases=$(printf '%s, ' "${BASES[@]}")
SUMMARY+=("bases: ${bases%, }")

phase "the ci-worker image ($CI_WORKER_IMAGE)"
export DOCKER_BUILDKIT=1 BUILDKIT_PROGRESS=plain
# The build fetches crates over TLS: where this machine trusts CAs of its own (a TLS-intercepting
# proxy's, in /usr/local/share/ca-certificates), the build gets them through its CA hook.
if ((FULL == 1)) && [[ -z ${BUILD_CA_FILE:-} ]] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cat /usr/local/share/ca-certificates/*.crt >"$WORK/build-ca.pem"
  export BUILD_CA_FILE="$WORK/build-ca.pem"
  say "the build trusts this machine's own CAs too (/usr/local/share/ca-certificates, through BUILD_CA_FILE)"
fi
build_started=$SECONDS
if ((FULL == 1)); then
  compose build emulator >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; fail "docker compose build (log: $WORK/build.log)"; }
  how="full multi-stage build"
else
  if [[ -z ${CI_WORKER_BIN:-} ]]; then
    for b in target/release/ci-worker target/debug/ci-worker; do
      if [[ -x $b && (-z ${CI_WORKER_BIN:-} || $b -nt ${CI_WORKER_BIN:-}) ]]; then CI_WORKER_BIN=$b; fi
    done
  fi
  [[ -n ${CI_WORKER_BIN:-} && -x $CI_WORKER_BIN ]] ||
    fail "no ci-worker binary: build one (cargo build) or set CI_WORKER_BIN, or use --full"
  "$CI_WORKER_BIN" --help | grep '^  emulator ' >/dev/null ||
    fail "$CI_WORKER_BIN has no emulator subcommand (a --no-default-features build?)"
  context="$WORK/context"
  rm -rf "$context" && mkdir -p "$context"
  bash "$REPO_ROOT/scripts/image-rootfs.sh" "$CI_WORKER_BIN" "$context/prebuilt" "$WORK/ci-worker.debug" >&2 ||
    fail "scripts/image-rootfs.sh $CI_WORKER_BIN"
  cat >"$OVERRIDE" <<EOF
services:
  emulator:
    build:
      context: $context
      dockerfile: $REPO_ROOT/Dockerfile
      target: runtime-prebuilt
EOF
  "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO_ROOT/docker-compose.yml" -f "$OVERRIDE" build emulator >"$WORK/build.log" 2>&1 ||
    { tail -n 40 "$WORK/build.log" >&2; fail "docker compose build of the runtime-prebuilt target (log: $WORK/build.log)"; }
  how="runtime-prebuilt from $CI_WORKER_BIN"
fi
# The image this tag named before, now untagged.
docker image prune -f --filter "label=org.opencontainers.image.title=ci-worker" >/dev/null 2>&1 || true
image_bytes=$(docker image inspect -f '{{.Size}}' "$CI_WORKER_IMAGE") || fail "no image $CI_WORKER_IMAGE after the build"
image_mb=$(awk -v b="$image_bytes" 'BEGIN { printf "%.1f", b / 1e6 }')
SUMMARY+=("image ${image_mb} MB ($how, $((SECONDS - build_started)) s)")
say "image $CI_WORKER_IMAGE: ${image_mb} MB"
docker run --rm "$CI_WORKER_IMAGE" --version >/dev/null || fail "the image does not run ci-worker --version"

phase "docker compose up (ports $P..$((P + 4)))"
up_started=$SECONDS
STACK_UP=1
compose up -d --no-build --wait --wait-timeout 600 >"$WORK/up.log" 2>&1 ||
  { tail -n 30 "$WORK/up.log" >&2; fail "docker compose up --wait"; }
worker=$(compose ps -q worker)
started_at=$(docker inspect -f '{{.State.StartedAt}}' "$worker")
first_ok=$(docker inspect -f '{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{.End}}{{"\n"}}{{end}}{{end}}' "$worker" | head -n 1)
ready_after=$(seconds_between "$started_at" "$first_ok")
SUMMARY+=("up in $((SECONDS - up_started)) s, worker ready ${ready_after} s after its start")
say "stack healthy after $((SECONDS - up_started)) s; worker ready ${ready_after} s after its start"

phase "the sample (docker compose --profile sample run --rm sample)"
sample_user=()
if [[ $(stat -c %A "$REPO_ROOT/schemas/examples/request.json" "$REPO_ROOT/schemas/examples/request-kafka.json" | sort -u) != ???????r?? ]]; then
  say "schemas/examples/request*.json are not readable by others (umask?): SAMPLE_USER=$(id -u):$(id -g)"
  sample_user=(env "SAMPLE_USER=$(id -u):$(id -g)")
fi
sample_started=$SECONDS
"${sample_user[@]}" "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO_ROOT/docker-compose.yml" --profile sample \
  run --rm -T sample >"$WORK/sample.out" 2>"$WORK/sample.err" ||
  { cat "$WORK/sample.err" "$WORK/sample.out" >&2; fail "the sample"; }
grep -q '"state": "succeeded"' "$WORK/sample.out" ||
  { cat "$WORK/sample.out" >&2; fail "the sample's final result is not succeeded"; }
SUMMARY+=("sample succeeded in $((SECONDS - sample_started)) s")

phase "clients on the host (pulsar://127.0.0.1:$PULSAR_HOST_PORT)"
host_env=(CI_WORKER__PULSAR__URL="pulsar://127.0.0.1:$PULSAR_HOST_PORT")
while IFS='=' read -r key value; do
  host_env+=("$key=$value")
done < <(compose config --format json | python3 -c '
import json, sys
env = json.load(sys.stdin)["services"]["worker"]["environment"]
for k in ("CI_WORKER__PULSAR__REQUEST_TOPIC", "CI_WORKER__PULSAR__RESULT_TOPIC"):
    print(f"{k}={env[k]}")')
request_topic=$(printf '%s\n' "${host_env[@]}" | sed -n 's/^CI_WORKER__PULSAR__REQUEST_TOPIC=//p')
result_topic=$(printf '%s\n' "${host_env[@]}" | sed -n 's/^CI_WORKER__PULSAR__RESULT_TOPIC=//p')

PY="$REPO_ROOT/.venv/bin/python"
if ! "$PY" -c 'import pulsar' >/dev/null 2>&1; then
  SETUP_SKIP_PULSAR=1 bash "$REPO_ROOT/scripts/setup.sh" || fail "scripts/setup.sh (the .venv with pulsar-client)"
fi
py_started=$SECONDS
"$PY" - "pulsar://127.0.0.1:$PULSAR_HOST_PORT" "$request_topic" "$result_topic" \
  "$REPO_ROOT/schemas/examples/request.json" 20 180 <<'EOF' || fail "Apache's Python client on the host"
import json, sys, time, uuid
import pulsar

url, request_topic, result_topic, template_path, n, limit = sys.argv[1:]
n, limit = int(n), float(limit)
template = json.load(open(template_path))
run = uuid.uuid4().hex[:8]
quiet = pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
client = pulsar.Client(url, operation_timeout_seconds=30, logger=quiet)
results = client.subscribe(result_topic, f"compose-check-{run}", consumer_type=pulsar.ConsumerType.Exclusive,
                           initial_position=pulsar.InitialPosition.Latest)
deadline = time.monotonic() + limit


def publish_and_wait(producer, ids):
    for request_id in ids:
        request = json.loads(json.dumps(template))
        request["request_id"] = request_id
        request["job"]["Operation"]["Output"]["Object"] = f"output/{request_id}.mp4"
        producer.send(json.dumps(request).encode(), partition_key=request_id)
    finals = {}
    while len(finals) < len(ids):
        left = deadline - time.monotonic()
        if left <= 0:
            sys.exit(f"python client: {len(finals)}/{len(ids)} final results within {limit:.0f} s")
        try:
            msg = results.receive(timeout_millis=int(min(left, 5) * 1000))
        except pulsar.Timeout:
            continue
        results.acknowledge(msg)
        result = json.loads(msg.data())
        if result.get("request_id") in ids and result.get("state") != "submitted":
            finals[result["request_id"]] = result["state"]
    return sorted(set(finals.values()))


states = publish_and_wait(client.create_producer(request_topic), [f"compose-check-{run}-{i}" for i in range(n)])
print(f"python client: {n} requests published, {n} final results read: {', '.join(states)}")
results.unsubscribe()
client.close()
sys.exit(0 if states == ["succeeded"] else 1)
EOF
SUMMARY+=("host Python client: 20/20 succeeded in $((SECONDS - py_started)) s")

# pulsar-rs: the binary on the host, or (--full on a clean machine) the image on the host's network.
submit=()
if [[ -n ${CI_WORKER_BIN:-} && -x $CI_WORKER_BIN ]]; then
  submit=(env "${host_env[@]}" "$CI_WORKER_BIN")
  rs_where="$CI_WORKER_BIN"
else
  submit=(docker run --rm -i --network host)
  for kv in "${host_env[@]}"; do submit+=(-e "$kv"); done
  submit+=("$CI_WORKER_IMAGE")
  rs_where="the image with --network host"
fi
python3 -c 'import json, sys, uuid
r = json.load(open(sys.argv[1])); r["request_id"] = "compose-check-rs-" + uuid.uuid4().hex[:8]
print(json.dumps(r))' "$REPO_ROOT/schemas/examples/request.json" >"$WORK/rs-request.json"
"${submit[@]}" submit - --wait --timeout 120 <"$WORK/rs-request.json" >"$WORK/rs.out" 2>"$WORK/rs.err" ||
  { cat "$WORK/rs.err" >&2; fail "ci-worker submit (pulsar-rs) on the host"; }
grep -q '"state": "succeeded"' "$WORK/rs.out" || { cat "$WORK/rs.out" >&2; fail "ci-worker submit on the host: no succeeded result"; }
SUMMARY+=("host pulsar-rs (ci-worker submit, $rs_where): succeeded")

# Apache's Java client, with the jars scripts/pulsar.sh resolved (the broker's own client): the
# binary URL as README shows it, and an HTTP lookup, which needs the listener named.
jars="${PULSAR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/pulsar-$PULSAR_VERSION}/lib"
if command -v java >/dev/null && ls "$jars"/org.apache.pulsar.pulsar-client-original-*.jar >/dev/null 2>&1; then
  mkdir -p "$WORK/java"
  cat >"$WORK/java/HostClient.java" <<'EOF'
import java.nio.charset.StandardCharsets;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import org.apache.pulsar.client.api.*;

/**
 * From the host (scripts/compose-check.sh): for each URL|LISTENER argument, one request published
 * and its final result read. Exit 0 only if every one succeeded.
 */
public class HostClient {
    public static void main(String[] args) throws Exception {
        String requestTopic = args[0], resultTopic = args[1], template = args[2];
        for (int i = 3; i < args.length; i++) {
            String url = args[i].split("\\|", -1)[0], listener = args[i].split("\\|", -1)[1];
            String state = roundTrip(url, listener, requestTopic, resultTopic, template);
            System.out.println(url + (listener.isEmpty() ? "" : " (listener " + listener + ")") + ": " + state);
            if (!state.equals("succeeded")) System.exit(1);
        }
    }

    static String roundTrip(String url, String listener, String requestTopic, String resultTopic, String template)
            throws Exception {
        String id = "compose-check-java-" + UUID.randomUUID().toString().substring(0, 8);
        String request = template.replace("\"order-42\"", "\"" + id + "\"");
        ClientBuilder builder = PulsarClient.builder().serviceUrl(url);
        if (!listener.isEmpty()) builder.listenerName(listener);
        try (PulsarClient client = builder.build();
             Consumer<byte[]> results = client.newConsumer().topic(resultTopic)
                 .subscriptionName("compose-check-" + id).subscribe();
             Producer<byte[]> producer = client.newProducer().topic(requestTopic).create()) {
            producer.newMessage().key(id).value(request.getBytes(StandardCharsets.UTF_8)).send();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
            while (System.nanoTime() < deadline) {
                Message<byte[]> m = results.receive(5, TimeUnit.SECONDS);
                if (m == null) continue;
                results.acknowledge(m);
                String r = new String(m.getData(), StandardCharsets.UTF_8).replace(" ", "");
                if (r.contains("\"request_id\":\"" + id + "\"") && !r.contains("\"state\":\"submitted\"")) {
                    results.unsubscribe();
                    return r.contains("\"state\":\"succeeded\"") ? "succeeded" : r;
                }
            }
            return "no final result for " + id + " within 120 s";
        }
    }
}
EOF
  java_started=$SECONDS
  java -cp "$jars/*" "$WORK/java/HostClient.java" "$request_topic" "$result_topic" \
    "$(cat "$REPO_ROOT/schemas/examples/request.json")" \
    "pulsar://127.0.0.1:$PULSAR_HOST_PORT|" "http://127.0.0.1:$PULSAR_HOST_HTTP_PORT|external" \
    >"$WORK/java.out" 2>"$WORK/java.err" ||
    { tail -n 30 "$WORK/java.err" >&2; cat "$WORK/java.out" >&2; fail "Apache's Java client on the host"; }
  SUMMARY+=("host Java client: succeeded through the binary port and through an HTTP lookup (listener external), $((SECONDS - java_started)) s")
else
  say "no java or no Pulsar jars in $jars: the Java client check is skipped"
  SUMMARY+=("host Java client: skipped (no java)")
fi

phase "profile kafka (docker compose --profile kafka up --wait; ports $KAFKA_HOST_PORT, $WORKER_KAFKA_METRICS_PORT)"
kafka_started=$SECONDS
# On the running stack: adds the broker, the topic's one-shot and worker-kafka; `--wait` returns once
# the broker is healthy, the one-shot has exited 0 (worker-kafka waits for that) and worker-kafka is
# ready, and fails if any of them does not get there.
compose --profile kafka up -d --no-build --wait --wait-timeout 600 >"$WORK/up-kafka.log" 2>&1 ||
  { tail -n 30 "$WORK/up-kafka.log" >&2; fail "docker compose --profile kafka up --wait"; }
topic_job=$(compose --profile kafka ps -a -q kafka-topic)
[[ -n $topic_job && $(docker inspect -f '{{.State.ExitCode}}' "$topic_job") == 0 ]] ||
  fail "the one-shot kafka-topic did not exit 0"
kafka_up=$((SECONDS - kafka_started))
say "profile kafka healthy after ${kafka_up} s"
sample_kafka_started=$SECONDS
"${sample_user[@]}" "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO_ROOT/docker-compose.yml" --profile kafka --profile kafka-sample \
  run --rm -T sample-kafka >"$WORK/sample-kafka.out" 2>"$WORK/sample-kafka.err" ||
  { cat "$WORK/sample-kafka.err" "$WORK/sample-kafka.out" >&2; fail "the sample through Kafka (sample-kafka)"; }
grep -q '"state": "succeeded"' "$WORK/sample-kafka.out" ||
  { cat "$WORK/sample-kafka.out" >&2; fail "sample-kafka's final result is not succeeded"; }
# The final result could also come from the worker's deadline (it asks CI itself): the kafka
# ingress's own counter says the completion event did come through Kafka.
stored=$(curl -fsS "http://127.0.0.1:$WORKER_KAFKA_METRICS_PORT/metrics" |
  awk '/^ci_worker_ingress_events_total[{]/ && /source="kafka"/ && /outcome="stored"/ { print $NF; exit }')
if ! awk -v n="${stored:-0}" 'BEGIN { exit !(n + 0 >= 1) }'; then
  curl -fsS "http://127.0.0.1:$WORKER_KAFKA_METRICS_PORT/metrics" | grep ingress_events >&2
  fail "worker-kafka's kafka ingress stored no event (its /metrics)"
fi
SUMMARY+=("profile kafka up in ${kafka_up} s; sample-kafka succeeded in $((SECONDS - sample_kafka_started)) s (kafka ingress stored ${stored%.*})")
# From the host, through the EXTERNAL listener that KAFKA_HOST_PORT publishes, with Kafka's own
# TopicCommand from the jars scripts/kafka.sh resolved (the stand-in's; present on any machine that
# built it).
kafka_jars="${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/kafka-$KAFKA_VERSION}/lib"
if command -v java >/dev/null && ls "$kafka_jars"/org.apache.kafka.kafka-tools-*.jar >/dev/null 2>&1; then
  printf '%s\n' '<Configuration status="warn"><Appenders><Console name="e" target="SYSTEM_ERR"><PatternLayout pattern="%p %m%n"/></Console></Appenders><Loggers><Root level="warn"><AppenderRef ref="e"/></Root></Loggers></Configuration>' \
    >"$WORK/kafka-tools-log4j2.xml"
  java -Xmx256m -Dlog4j2.configurationFile="$WORK/kafka-tools-log4j2.xml" -cp "$kafka_jars/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_HOST_PORT" --describe --topic ci-callbacks >"$WORK/kafka-topic.out" 2>"$WORK/kafka-topic.err" ||
    { cat "$WORK/kafka-topic.err" >&2; fail "kafka-topics --describe from the host (127.0.0.1:$KAFKA_HOST_PORT)"; }
  partitions=$(sed -n 's/.*PartitionCount: *\([0-9]*\).*/\1/p' "$WORK/kafka-topic.out" | head -n 1)
  [[ $partitions == 3 ]] || { cat "$WORK/kafka-topic.out" >&2; fail "topic ci-callbacks from the host: ${partitions:-no} partitions, not 3"; }
  SUMMARY+=("host Kafka client: ci-callbacks, 3 partitions, through 127.0.0.1:$KAFKA_HOST_PORT")
else
  say "no java or no Kafka jars in $kafka_jars: the host Kafka client check is skipped"
  SUMMARY+=("host Kafka client: skipped (no java)")
fi

phase "SIGTERM (docker stop) of the worker"
grace=$(compose config --format json | python3 -c 'import json, sys
g = json.load(sys.stdin)["services"]["worker"].get("stop_grace_period", "10s")
import re
m = re.fullmatch(r"(\d+)s", g)
print(m.group(1) if m else 10)')
stop_started=$(date +%s.%N)
docker stop -t "$grace" "$worker" >/dev/null || fail "docker stop of the worker"
stop_took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$stop_started" "$(date +%s.%N)")
code=$(docker inspect -f '{{.State.ExitCode}}' "$worker")
[[ $code == 0 ]] || { docker logs --tail 30 "$worker" >&2; fail "the worker exited $code on SIGTERM (after ${stop_took} s)"; }
# grep reads to the end (no -q): under pipefail, a grep that quits early makes its writer's SIGPIPE the
# pipeline's status.
docker logs "$worker" 2>&1 | grep 'shutdown signal received' >/dev/null ||
  fail "the worker's log does not show the shutdown signal"
SUMMARY+=("worker SIGTERM: exit 0 in ${stop_took} s (grace ${grace} s)")

phase "docker compose down -v"
if [[ ${COMPOSE_CHECK_KEEP:-0} != 1 ]]; then
  compose --profile '*' down -v --remove-orphans >"$WORK/down.log" 2>&1 || fail "docker compose down -v (log: $WORK/down.log)"
  STACK_UP=0
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
  [[ -z $left ]] || fail "containers left after down: $left"
  docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | grep . >/dev/null && fail "volumes left after down -v"
  SUMMARY+=("down -v: nothing left")
fi

if [[ ${COMPOSE_CHECK_KEEP:-0} != 1 ]]; then
  phase "the emulator alone (the Dockerfile's docker run)"
  # As the Dockerfile's header shows it, on the ports the stack used: both APIs answer from the host.
  emulator=$(docker run -d --rm -p "127.0.0.1:$EMULATOR_PORT:9000" -p "127.0.0.1:$EMULATOR_CMQ_PORT:9100" \
    -e CI_WORKER__EMULATOR__LISTEN=0.0.0.0:9000 -e CI_WORKER__EMULATOR__CMQ_LISTEN=0.0.0.0:9100 \
    -e TENCENTCLOUD_SECRET_ID=AKIDlocalDemoOnlyNotARealKey0000 -e TENCENTCLOUD_SECRET_KEY=localDemoOnlyNotARealSecretKey00 \
    "$CI_WORKER_IMAGE" emulator) || fail "docker run of the emulator alone"
  emulator_ok=0
  for _ in $(seq 1 60); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$EMULATOR_PORT/healthz" 2>/dev/null &&
      [[ $(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$EMULATOR_CMQ_PORT/v2/index.php") != 000 ]]; then
      emulator_ok=1
      break
    fi
    sleep 0.5
  done
  docker stop "$emulator" >/dev/null 2>&1
  ((emulator_ok == 1)) || fail "the emulator alone did not answer on :$EMULATOR_PORT/healthz and :$EMULATOR_CMQ_PORT"
  SUMMARY+=("emulator alone (docker run): job API and CMQ API answer")
fi
