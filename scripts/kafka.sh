#!/usr/bin/env bash
# A local Apache Kafka broker (KRaft mode: one process is broker and controller, no ZooKeeper) for
# development and tests, run from Maven Central jars (no Docker, no tarball). Idempotent; safe to
# call from scripts.
#
#   scripts/kafka.sh fetch                  resolve the broker jars into the cache (once)
#   scripts/kafka.sh start                  format the storage (first start only), start in the
#                                           background, wait until ready, print the bootstrap address
#   scripts/kafka.sh stop                   SIGTERM, wait up to KAFKA_STOP_TIMEOUT s, then SIGKILL
#   scripts/kafka.sh restart                stop + start, keeping the data
#   scripts/kafka.sh status                 exit 0 if running and ready, 1 otherwise
#   scripts/kafka.sh env                    print shell assignments (KAFKA_BROKERS, KAFKA_DATA_DIR)
#   scripts/kafka.sh topic NAME [PARTITIONS]  create a topic (default 1 partition) unless it exists
#   scripts/kafka.sh logs [N]               print the last N lines (default 100) of the broker log
#
# Environment (defaults in brackets):
#   KAFKA_PORT [9092]  KAFKA_CONTROLLER_PORT [KAFKA_PORT + 1]   both on 127.0.0.1
#   KAFKA_DATA_DIR [<repo>/.cache/kafka/data-$KAFKA_PORT]   conf, logs, pid, cluster id, storage
#   KAFKA_VERSION [4.1.1]
#   KAFKA_CACHE_DIR [${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/kafka-$KAFKA_VERSION]   jars in lib/
#   KAFKA_WIPE [0]         1: delete the stored data (and the cluster id) before starting
#   KAFKA_AUTO_CREATE_TOPICS [false]   the broker's auto.create.topics.enable. Off, as on a CKafka
#                          instance by default: topics are created by their owner (`topic` above, the
#                          CKafka console), and a producer or consumer naming a missing topic gets an
#                          error instead of a new empty topic.
#   KAFKA_HEAP [-Xms256m -Xmx512m]  KAFKA_EXTRA_OPTS []
#   KAFKA_START_TIMEOUT [120]  KAFKA_STOP_TIMEOUT [30]   seconds
#   JAVA_HOME (optional; otherwise java from PATH, 17 or newer)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POM="$REPO_ROOT/scripts/kafka/pom.xml"
JVM_TOOL=kafka.sh
# The jar cache, pid file, start and stop: shared with scripts/pulsar.sh.
# shellcheck source-path=SCRIPTDIR source=lib/jvm.sh
source "$REPO_ROOT/scripts/lib/jvm.sh"

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
KAFKA_PORT=${KAFKA_PORT:-9092}
is_port "$KAFKA_PORT" || die "KAFKA_PORT='$KAFKA_PORT' is not a port number"
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
is_port "$KAFKA_CONTROLLER_PORT" || die "KAFKA_CONTROLLER_PORT='$KAFKA_CONTROLLER_PORT' is not a port number"
[[ $KAFKA_CONTROLLER_PORT != "$KAFKA_PORT" ]] || die "KAFKA_CONTROLLER_PORT must differ from KAFKA_PORT ($KAFKA_PORT)"

KAFKA_DATA_DIR=${KAFKA_DATA_DIR:-$REPO_ROOT/.cache/kafka/data-$KAFKA_PORT}
KAFKA_CACHE_DIR=${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/kafka-$KAFKA_VERSION}
KAFKA_WIPE=${KAFKA_WIPE:-0}
KAFKA_AUTO_CREATE_TOPICS=${KAFKA_AUTO_CREATE_TOPICS:-false}
case $KAFKA_AUTO_CREATE_TOPICS in
true | false) ;;
1) KAFKA_AUTO_CREATE_TOPICS=true ;;
0) KAFKA_AUTO_CREATE_TOPICS=false ;;
*) die "KAFKA_AUTO_CREATE_TOPICS must be true or false (got '$KAFKA_AUTO_CREATE_TOPICS')" ;;
esac
KAFKA_HEAP=${KAFKA_HEAP:--Xms256m -Xmx512m}
KAFKA_EXTRA_OPTS=${KAFKA_EXTRA_OPTS:-}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}

CONF_DIR="$KAFKA_DATA_DIR/conf"
LOG_DIR="$KAFKA_DATA_DIR/logs"
STORE_DIR="$KAFKA_DATA_DIR/store"
PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
CLUSTER_ID_FILE="$KAFKA_DATA_DIR/cluster.id"
SERVER_CONF="$CONF_DIR/server.properties"
BROKER_LOG="$LOG_DIR/kafka.log"
TOOLS_LOG="$LOG_DIR/tools.log"
JVM_OUT="$LOG_DIR/jvm.out"

BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
# The line KafkaRaftServer logs once the broker and the controller accept requests.
READY_LINE="Kafka Server started"

# What scripts/lib/jvm.sh works with.
JVM_PRODUCT="Apache Kafka" JVM_KEY=kafka JVM_VERSION=$KAFKA_VERSION
JVM_ARTIFACT=org.apache.kafka:kafka_2.13 JVM_FETCH_TIME="under a minute"
JVM_MAIN_CLASS=kafka.Kafka JVM_CONF=$SERVER_CONF
CACHE_DIR=$KAFKA_CACHE_DIR DATA_DIR=$KAFKA_DATA_DIR
LIB_DIR=$(jvm_lib_dir)
START_TIMEOUT=$KAFKA_START_TIMEOUT STOP_TIMEOUT=$KAFKA_STOP_TIMEOUT POLL_INTERVAL=0.25

# --- process helpers --------------------------------------------------------------------------

# Ready: the server logged its start since the JVM was launched (the log is rotated away at each
# start) and the client listener accepts connections. Kafka opens its listeners only at the end of
# its startup, so an accepted connection alone means the same on a broker started earlier.
broker_ready() {
  grep -qF "$READY_LINE" "$BROKER_LOG" 2>/dev/null && port_in_use "$KAFKA_PORT"
}

print_urls() {
  echo "Kafka bootstrap: $BOOTSTRAP"
}

# --- configuration ----------------------------------------------------------------------------

write_conf() {
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$STORE_DIR"
  cat >"$SERVER_CONF" <<EOF
# Generated by scripts/kafka.sh on every start; edits are overwritten.
# One node that is both broker and controller (KRaft combined mode), quorum of one.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STORE_DIR
auto.create.topics.enable=$KAFKA_AUTO_CREATE_TOPICS
num.partitions=1
default.replication.factor=1
# A single broker: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start consumer groups one after another: no 3 s wait for more members on the first join.
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
EOF

  write_log4j2 "$CONF_DIR/log4j2.xml" kafka.log.LogCleaner org.apache.kafka.storage

  cat >"$CONF_DIR/tools-log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh: the admin tools (format, topic) log here, not on the terminal. -->
<Configuration status="warn">
  <Appenders>
    <File name="file" fileName="$TOOLS_LOG">
      <PatternLayout pattern="%d{ISO8601} [%t] %-5level %logger{36} - %msg%n"/>
    </File>
  </Appenders>
  <Loggers><Root level="warn"><AppenderRef ref="file"/></Root></Loggers>
</Configuration>
EOF
}

run_tool() { # java class args... (the Kafka command-line tools, logging into $TOOLS_LOG)
  local java=$1 class=$2
  shift 2
  "$java" -Xmx256m -Dlog4j2.configurationFile="$CONF_DIR/tools-log4j2.xml" -cp "$LIB_DIR/*" "$class" "$@"
}

# `kafka-storage.sh format` once per data dir: the cluster id is kept so that a restart (or a start
# after a stop) finds its topics and offsets again.
format_storage() { # java
  local java=$1
  if [[ -f $STORE_DIR/meta.properties ]]; then return 0; fi
  if [[ ! -s $CLUSTER_ID_FILE ]]; then
    run_tool "$java" kafka.tools.StorageTool random-uuid >"$CLUSTER_ID_FILE.tmp" ||
      die "kafka-storage random-uuid failed (log: $TOOLS_LOG)"
    mv "$CLUSTER_ID_FILE.tmp" "$CLUSTER_ID_FILE"
  fi
  info "formatting $STORE_DIR (cluster id $(cat "$CLUSTER_ID_FILE"))"
  run_tool "$java" kafka.tools.StorageTool format --cluster-id "$(cat "$CLUSTER_ID_FILE")" \
    --config "$SERVER_CONF" --ignore-formatted >/dev/null ||
    die "kafka-storage format failed (log: $TOOLS_LOG)"
}

# --- commands ---------------------------------------------------------------------------------

cmd_start() {
  lock_data_dir

  local pid
  if [[ $KAFKA_WIPE == 1 ]] && pid=$(broker_pid); then
    info "KAFKA_WIPE=1: stopping the running broker (pid $pid) first"
    stop_locked
  fi

  if already_running; then return 0; fi
  require_free_ports "$KAFKA_PORT:broker (KAFKA_PORT)" "$KAFKA_CONTROLLER_PORT:controller (KAFKA_CONTROLLER_PORT)"

  cmd_fetch
  local java
  java=$(find_java)

  if [[ $KAFKA_WIPE == 1 ]]; then
    info "KAFKA_WIPE=1: deleting $STORE_DIR, $CLUSTER_ID_FILE and $LOG_DIR"
    rm -rf "$STORE_DIR" "$CLUSTER_ID_FILE" "$LOG_DIR"
  fi
  write_conf
  format_storage "$java"
  # A fresh log per start: readiness is the start line of this run.
  if [[ -f $BROKER_LOG ]]; then mv -f "$BROKER_LOG" "$LOG_DIR/kafka-previous.log"; fi

  local jvm=()
  read -r -a jvm <<<"$KAFKA_HEAP $KAFKA_EXTRA_OPTS"
  jvm+=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+PerfDisableSharedMem
    -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
    -Dlog4j2.configurationFile="$CONF_DIR/log4j2.xml" -Dlog4j2.formatMsgNoLookups=true
    -Dkafka.logs.dir="$LOG_DIR"
    -cp "$LIB_DIR/*")

  info "starting Apache Kafka $KAFKA_VERSION (KRaft, broker + controller; data=$KAFKA_DATA_DIR)"
  launch_broker "$java" "${jvm[@]}" kafka.Kafka "$SERVER_CONF"
}

cmd_env() {
  printf 'KAFKA_BROKERS=%q\n' "$BOOTSTRAP"
  printf 'KAFKA_DATA_DIR=%q\n' "$KAFKA_DATA_DIR"
}

cmd_topic() { # name [partitions]
  local name=${1:-} partitions=${2:-1}
  [[ -n $name ]] || die "usage: scripts/kafka.sh topic NAME [PARTITIONS]"
  [[ $partitions =~ ^[1-9][0-9]*$ ]] || die "PARTITIONS must be a positive number (got '$partitions')"
  broker_pid >/dev/null || die "the broker is not running ($KAFKA_DATA_DIR): scripts/kafka.sh start"
  cmd_fetch
  local java
  java=$(find_java)
  mkdir -p "$LOG_DIR"
  [[ -f $CONF_DIR/tools-log4j2.xml ]] || write_conf
  run_tool "$java" org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
    --create --if-not-exists --topic "$name" --partitions "$partitions" --replication-factor 1 >/dev/null ||
    die "could not create topic '$name' (log: $TOOLS_LOG)"
  info "topic $name ready ($partitions partition(s) if created now)"
}

case ${1:-} in
fetch) cmd_fetch ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart)
  cmd_stop
  KAFKA_WIPE=0 cmd_start
  ;;
status) report_status "" ;;
env) cmd_env ;;
topic) cmd_topic "${2:-}" "${3:-}" ;;
logs) cmd_logs "${2:-}" ;;
-h | --help | help) usage "${BASH_SOURCE[0]}" ;;
*)
  usage "${BASH_SOURCE[0]}" >&2
  exit 2
  ;;
esac
