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

die() { echo "kafka.sh: error: $*" >&2; exit 1; }
info() { echo "kafka.sh: $*" >&2; }

is_port() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)); }

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
KAFKA_PORT=${KAFKA_PORT:-9092}
is_port "$KAFKA_PORT" || die "KAFKA_PORT='$KAFKA_PORT' is not a port number"
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
is_port "$KAFKA_CONTROLLER_PORT" || die "KAFKA_CONTROLLER_PORT='$KAFKA_CONTROLLER_PORT' is not a port number"
[[ $KAFKA_CONTROLLER_PORT != "$KAFKA_PORT" ]] || die "KAFKA_CONTROLLER_PORT must differ from KAFKA_PORT ($KAFKA_PORT)"

KAFKA_DATA_DIR=${KAFKA_DATA_DIR:-$REPO_ROOT/.cache/kafka/data-$KAFKA_PORT}
KAFKA_CACHE_DIR=${KAFKA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/kafka-$KAFKA_VERSION}
LIB_DIR="$KAFKA_CACHE_DIR/lib"
LIB_STAMP="$KAFKA_CACHE_DIR/lib.stamp"
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

# --- jars -------------------------------------------------------------------------------------

lib_wanted_stamp() {
  local pom_sum
  pom_sum=$(sha256sum "$POM" | cut -d' ' -f1)
  echo "kafka=$KAFKA_VERSION pom=$pom_sum"
}

lib_ready() {
  [[ -d $LIB_DIR && -f $LIB_STAMP && "$(cat "$LIB_STAMP")" == "$(lib_wanted_stamp)" ]]
}

cmd_fetch() {
  [[ -f $POM ]] || die "missing $POM"
  if lib_ready; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is not installed; run scripts/setup.sh or apt-get install maven"
  mkdir -p "$KAFKA_CACHE_DIR"
  (
    # One resolver at a time per cache dir; a second caller waits and then finds the stamp.
    exec 8>"$KAFKA_CACHE_DIR/.fetch.lock"
    flock 8
    if lib_ready; then exit 0; fi
    local partial="$KAFKA_CACHE_DIR/lib.partial" started=$SECONDS
    rm -rf "$partial" "$LIB_DIR" "$LIB_STAMP"
    info "resolving Apache Kafka $KAFKA_VERSION jars with Maven into $LIB_DIR (first time: under a minute)"
    local mvn_log="$KAFKA_CACHE_DIR/mvn.log"
    # Maven 3.8 prints stray ANSI resets even with -q: keep its output in a log, show it on failure.
    if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -Dmdep.prependGroupId=true -DincludeScope=runtime \
      -DoutputDirectory="$partial" >"$mvn_log" 2>&1 8>&-; then
      sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" >&2
      rm -rf "$partial"
      die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (output above, also in $mvn_log)"
    fi
    [[ -f "$partial/org.apache.kafka.kafka_2.13-$KAFKA_VERSION.jar" ]] ||
      die "resolved jars lack org.apache.kafka.kafka_2.13-$KAFKA_VERSION.jar (in $partial)"
    mv "$partial" "$LIB_DIR"
    lib_wanted_stamp >"$LIB_STAMP"
    info "resolved $(find "$LIB_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIB_DIR" | cut -f1)) in $((SECONDS - started)) s"
  )
  # Maven's build directory for a pom-only project; nothing useful in it.
  rm -rf "$REPO_ROOT/scripts/kafka/target"
}

# --- process helpers --------------------------------------------------------------------------

# The pid from the pid file if that process is alive and is our broker (same conf file).
broker_pid() {
  local pid cmdline
  [[ -f $PID_FILE ]] || return 1
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *kafka.Kafka*"$SERVER_CONF"* ]] || return 1
  echo "$pid"
}

port_in_use() { # port -> 0 if something accepts connections on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

port_owner() { # best effort description of who listens on a port
  if command -v ss >/dev/null; then
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\(.*\)))/\1/p' | head -n 1
  fi
}

# Ready: the server logged its start since the JVM was launched (the log is rotated away at each
# start) and the client listener accepts connections. Kafka opens its listeners only at the end of
# its startup, so an accepted connection alone means the same on a broker started earlier.
broker_ready() {
  grep -qF "$READY_LINE" "$BROKER_LOG" 2>/dev/null && port_in_use "$KAFKA_PORT"
}

print_log_tail() {
  local n=${1:-60}
  if [[ -s $BROKER_LOG ]]; then
    echo "----- last $n lines of $BROKER_LOG -----" >&2
    tail -n "$n" "$BROKER_LOG" >&2
  fi
  if [[ -s $JVM_OUT ]]; then
    echo "----- last 20 lines of $JVM_OUT -----" >&2
    tail -n 20 "$JVM_OUT" >&2
  fi
  echo "-----" >&2
}

print_urls() {
  echo "Kafka bootstrap: $BOOTSTRAP"
}

find_java() {
  local java=java
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then java=$JAVA_HOME/bin/java; fi
  command -v "$java" >/dev/null || die "Java 17+ is not installed (apt-get install openjdk-17-jre-headless)"
  local major
  major=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | head -n 1)
  [[ $major =~ ^[0-9]+$ ]] || die "cannot tell the version of $java"
  ((major >= 17)) || die "$java is Java $major; Kafka $KAFKA_VERSION needs Java 17 or newer"
  echo "$java"
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

  cat >"$CONF_DIR/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh. -->
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <RollingFile name="file" fileName="$BROKER_LOG" filePattern="$LOG_DIR/kafka-%i.log">
      <PatternLayout pattern="%d{ISO8601} [%t] %-5level %logger{36} - %msg%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.log.LogCleaner" level="warn"/>
    <Logger name="org.apache.kafka.storage" level="warn"/>
    <Root level="info"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
EOF

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

wait_ready() { # pid
  local pid=$1 deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      print_log_tail 80
      die "the broker process $pid exited during startup (logs: $LOG_DIR)"
    fi
    if broker_ready; then return 0; fi
    sleep 0.25
  done
  print_log_tail 80
  die "the broker (pid $pid) was not ready after ${KAFKA_START_TIMEOUT}s (logs: $LOG_DIR); it is still running, stop it with: scripts/kafka.sh stop"
}

cmd_start() {
  mkdir -p "$KAFKA_DATA_DIR"
  exec 9>"$KAFKA_DATA_DIR/.lock"
  flock 9

  local pid
  if [[ $KAFKA_WIPE == 1 ]] && pid=$(broker_pid); then
    info "KAFKA_WIPE=1: stopping the running broker (pid $pid) first"
    stop_locked
  fi

  if pid=$(broker_pid); then
    wait_ready "$pid"
    info "already running (pid $pid)"
    print_urls
    return 0
  fi
  rm -f "$PID_FILE"

  # Ports: fail clearly instead of letting the JVM die with a BindException.
  local p role roles=("$KAFKA_PORT:broker (KAFKA_PORT)" "$KAFKA_CONTROLLER_PORT:controller (KAFKA_CONTROLLER_PORT)")
  for p in "${roles[@]}"; do
    role=${p#*:}
    p=${p%%:*}
    if port_in_use "$p"; then
      local owner
      owner=$(port_owner "$p")
      die "port $p needed for the $role is already in use${owner:+ by $owner}; stop that process or choose other ports"
    fi
  done

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
  local started=$SECONDS
  # Run from the data dir (relative paths land there), detached from our stdio and lock fd.
  (
    cd "$KAFKA_DATA_DIR"
    exec nohup "$java" "${jvm[@]}" kafka.Kafka "$SERVER_CONF" </dev/null >>"$JVM_OUT" 2>&1 9>&-
  ) &
  pid=$!
  echo "$pid" >"$PID_FILE"
  wait_ready "$pid"
  info "ready after $((SECONDS - started)) s (pid $pid, log $BROKER_LOG)"
  print_urls
}

stop_locked() {
  local pid
  if ! pid=$(broker_pid); then
    rm -f "$PID_FILE"
    return 0
  fi
  info "stopping the broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    info "still running after ${KAFKA_STOP_TIMEOUT}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PID_FILE"
}

cmd_stop() {
  [[ -d $KAFKA_DATA_DIR ]] || return 0
  exec 9>"$KAFKA_DATA_DIR/.lock"
  flock 9
  stop_locked
  exec 9>&-
}

cmd_status() {
  local pid
  if ! pid=$(broker_pid); then
    echo "not running ($KAFKA_DATA_DIR)"
    return 1
  fi
  if broker_ready; then
    echo "running (pid $pid)"
    print_urls
    return 0
  fi
  echo "process $pid is running but the broker is not ready"
  return 1
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

cmd_logs() {
  local n=${1:-100}
  [[ -f $BROKER_LOG ]] || die "no log at $BROKER_LOG"
  tail -n "$n" "$BROKER_LOG"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

case ${1:-} in
fetch) cmd_fetch ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart)
  cmd_stop
  KAFKA_WIPE=0 cmd_start
  ;;
status) cmd_status ;;
env) cmd_env ;;
topic) cmd_topic "${2:-}" "${3:-}" ;;
logs) cmd_logs "${2:-}" ;;
-h | --help | help) usage ;;
*)
  usage >&2
  exit 2
  ;;
esac
