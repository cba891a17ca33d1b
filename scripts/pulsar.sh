#!/usr/bin/env bash
# A local Apache Pulsar standalone broker for development and tests, run from Maven Central
# jars (no Docker, no tarball). Idempotent; safe to call from scripts.
#
#   scripts/pulsar.sh fetch            resolve the broker jars into the cache (once)
#   scripts/pulsar.sh start            start in the background, wait until ready, print the URLs
#   scripts/pulsar.sh stop             SIGTERM, wait up to PULSAR_STOP_TIMEOUT s, then SIGKILL
#   scripts/pulsar.sh restart          stop + start, keeping the data
#   scripts/pulsar.sh status           exit 0 if running and ready, 1 otherwise
#   scripts/pulsar.sh env              print shell assignments (PULSAR_URL, PULSAR_ADMIN_URL, ...)
#   scripts/pulsar.sh token            print the admin JWT (PULSAR_AUTH=token only)
#   scripts/pulsar.sh logs [N]         print the last N lines (default 100) of the broker log
#
# Environment (defaults in brackets):
#   PULSAR_PORT [6650]  PULSAR_HTTP_PORT [8080]
#   PULSAR_BOOKIE_PORT [3181 + (PULSAR_PORT - 6650)]  PULSAR_ZK_PORT [2181 + (PULSAR_PORT - 6650)]
#   PULSAR_DATA_DIR [<repo>/.cache/pulsar/data-$PULSAR_PORT]   conf, logs, pid, auth files, storage
#   PULSAR_VERSION [4.0.7]
#   PULSAR_CACHE_DIR [${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/pulsar-$PULSAR_VERSION]   jars in lib/
#   PULSAR_WIPE [0]        1: delete the stored data (and auth keys) before starting
#   PULSAR_AUTH [none]     token: JWT (HS256) authentication; the key and an admin token
#                          ({"sub":"admin"}) are generated into $PULSAR_DATA_DIR/auth/
#   PULSAR_METADATA [zookeeper]  metadata store: zookeeper (recommended upstream) or rocksdb
#   PULSAR_MEM [-Xms512m -Xmx1g -XX:MaxDirectMemorySize=1g]   PULSAR_EXTRA_OPTS []
#   PULSAR_START_TIMEOUT [180]  PULSAR_STOP_TIMEOUT [20]   seconds
#   JAVA_HOME (optional; otherwise java from PATH, 17 or newer)
#
# PULSAR_AUTH and PULSAR_METADATA are remembered in the data dir: a later start/restart/status of the
# same data dir reuses them unless set explicitly (or PULSAR_WIPE=1).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POM="$REPO_ROOT/scripts/pulsar/pom.xml"

die() { echo "pulsar.sh: error: $*" >&2; exit 1; }
info() { echo "pulsar.sh: $*" >&2; }

is_port() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)); }

PULSAR_VERSION=${PULSAR_VERSION:-4.0.7}
PULSAR_PORT=${PULSAR_PORT:-6650}
PULSAR_HTTP_PORT=${PULSAR_HTTP_PORT:-8080}
is_port "$PULSAR_PORT" || die "PULSAR_PORT='$PULSAR_PORT' is not a port number"
is_port "$PULSAR_HTTP_PORT" || die "PULSAR_HTTP_PORT='$PULSAR_HTTP_PORT' is not a port number"
port_offset=$((PULSAR_PORT - 6650))
PULSAR_BOOKIE_PORT=${PULSAR_BOOKIE_PORT:-$((3181 + port_offset))}
PULSAR_ZK_PORT=${PULSAR_ZK_PORT:-$((2181 + port_offset))}
is_port "$PULSAR_BOOKIE_PORT" || die "PULSAR_BOOKIE_PORT='$PULSAR_BOOKIE_PORT' is not a port number (set it explicitly)"
is_port "$PULSAR_ZK_PORT" || die "PULSAR_ZK_PORT='$PULSAR_ZK_PORT' is not a port number (set it explicitly)"

PULSAR_DATA_DIR=${PULSAR_DATA_DIR:-$REPO_ROOT/.cache/pulsar/data-$PULSAR_PORT}
PULSAR_CACHE_DIR=${PULSAR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ci-worker/pulsar-$PULSAR_VERSION}
LIB_DIR="$PULSAR_CACHE_DIR/lib"
LIB_STAMP="$PULSAR_CACHE_DIR/lib.stamp"
PULSAR_WIPE=${PULSAR_WIPE:-0}
PULSAR_MEM=${PULSAR_MEM:--Xms512m -Xmx1g -XX:MaxDirectMemorySize=1g}
PULSAR_EXTRA_OPTS=${PULSAR_EXTRA_OPTS:-}
PULSAR_START_TIMEOUT=${PULSAR_START_TIMEOUT:-180}
PULSAR_STOP_TIMEOUT=${PULSAR_STOP_TIMEOUT:-20}

CONF_DIR="$PULSAR_DATA_DIR/conf"
LOG_DIR="$PULSAR_DATA_DIR/logs"
STORE_DIR="$PULSAR_DATA_DIR/store"
AUTH_DIR="$PULSAR_DATA_DIR/auth"
PID_FILE="$PULSAR_DATA_DIR/pulsar.pid"
MODE_FILE="$PULSAR_DATA_DIR/instance.env"
SECRET_FILE="$AUTH_DIR/secret.key"
TOKEN_FILE="$AUTH_DIR/admin.token"
HEADER_FILE="$AUTH_DIR/curl-auth-header"
BROKER_LOG="$LOG_DIR/pulsar.log"
JVM_OUT="$LOG_DIR/jvm.out"

BROKER_URL="pulsar://127.0.0.1:$PULSAR_PORT"
ADMIN_URL="http://127.0.0.1:$PULSAR_HTTP_PORT"

# --- remembered settings (auth / metadata mode) ----------------------------------------------

saved_setting() { # name -> value stored for this data dir, or empty
  [[ -f $MODE_FILE ]] || return 0
  sed -n "s/^$1=//p" "$MODE_FILE" | tail -n 1
}

resolve_modes() {
  if [[ $PULSAR_WIPE == 1 ]]; then
    PULSAR_AUTH=${PULSAR_AUTH:-none}
    PULSAR_METADATA=${PULSAR_METADATA:-zookeeper}
  else
    PULSAR_AUTH=${PULSAR_AUTH:-$(saved_setting auth)}
    PULSAR_AUTH=${PULSAR_AUTH:-none}
    PULSAR_METADATA=${PULSAR_METADATA:-$(saved_setting metadata)}
    PULSAR_METADATA=${PULSAR_METADATA:-zookeeper}
  fi
  case $PULSAR_AUTH in none | token) ;; *) die "PULSAR_AUTH must be 'none' or 'token' (got '$PULSAR_AUTH')" ;; esac
  case $PULSAR_METADATA in zookeeper | rocksdb) ;; *) die "PULSAR_METADATA must be 'zookeeper' or 'rocksdb' (got '$PULSAR_METADATA')" ;; esac
}

# --- jars -------------------------------------------------------------------------------------

lib_wanted_stamp() {
  local pom_sum
  pom_sum=$(sha256sum "$POM" | cut -d' ' -f1)
  echo "pulsar=$PULSAR_VERSION pom=$pom_sum"
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
  mkdir -p "$PULSAR_CACHE_DIR"
  (
    # One resolver at a time per cache dir; a second caller waits and then finds the stamp.
    exec 8>"$PULSAR_CACHE_DIR/.fetch.lock"
    flock 8
    if lib_ready; then exit 0; fi
    local partial="$PULSAR_CACHE_DIR/lib.partial" started=$SECONDS
    rm -rf "$partial" "$LIB_DIR" "$LIB_STAMP"
    info "resolving Apache Pulsar $PULSAR_VERSION jars with Maven into $LIB_DIR (first time: about a minute)"
    local mvn_log="$PULSAR_CACHE_DIR/mvn.log"
    # Maven 3.8 prints stray ANSI resets even with -q: keep its output in a log, show it on failure.
    if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -Dpulsar.version="$PULSAR_VERSION" -Dmdep.prependGroupId=true -DincludeScope=runtime \
      -DoutputDirectory="$partial" >"$mvn_log" 2>&1 8>&-; then
      sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" >&2
      rm -rf "$partial"
      die "Maven could not resolve org.apache.pulsar:pulsar-broker:$PULSAR_VERSION (output above, also in $mvn_log)"
    fi
    [[ -f "$partial/org.apache.pulsar.pulsar-broker-$PULSAR_VERSION.jar" ]] ||
      die "resolved jars lack org.apache.pulsar.pulsar-broker-$PULSAR_VERSION.jar (in $partial)"
    mv "$partial" "$LIB_DIR"
    lib_wanted_stamp >"$LIB_STAMP"
    info "resolved $(find "$LIB_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIB_DIR" | cut -f1)) in $((SECONDS - started)) s"
  )
  # Maven's build directory for a pom-only project; nothing useful in it.
  rm -rf "$REPO_ROOT/scripts/pulsar/target"
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
  [[ $cmdline == *PulsarStandaloneStarter*"$CONF_DIR/standalone.conf"* ]] || return 1
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

auth_curl_args() {
  if [[ $PULSAR_AUTH == token && -f $HEADER_FILE ]]; then
    printf '%s\n' -H "@$HEADER_FILE"
  fi
}

http_ok() { # path -> 0 if the admin API answers 2xx
  local args=()
  mapfile -t args < <(auth_curl_args)
  curl -fsS -o /dev/null --max-time 5 "${args[@]}" "$ADMIN_URL$1" 2>/dev/null
}

broker_ready() {
  http_ok /admin/v2/brokers/ready && http_ok /admin/v2/namespaces/public/default
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
  echo "Pulsar broker: $BROKER_URL"
  echo "Pulsar admin:  $ADMIN_URL"
  if [[ $PULSAR_AUTH == token ]]; then
    echo "Auth token:    $TOKEN_FILE  (scripts/pulsar.sh token)"
  fi
}

# --- configuration ----------------------------------------------------------------------------

b64url() { python3 -c 'import base64,sys; sys.stdout.write(base64.urlsafe_b64encode(sys.stdin.buffer.read()).rstrip(b"=").decode())'; }

ensure_auth_files() {
  mkdir -p "$AUTH_DIR"
  chmod 700 "$AUTH_DIR"
  if [[ ! -s $SECRET_FILE ]]; then
    command -v python3 >/dev/null || die "python3 is needed to generate the token key"
    # 32 random bytes: the minimum key size for HS256.
    (umask 077 && python3 -c 'import os,sys; sys.stdout.buffer.write(os.urandom(32))' >"$SECRET_FILE")
    rm -f "$TOKEN_FILE"
  fi
  if [[ ! -s $TOKEN_FILE ]]; then
    (umask 077 && python3 - "$SECRET_FILE" >"$TOKEN_FILE" <<'PY'
import base64, hashlib, hmac, json, sys
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
key = open(sys.argv[1], "rb").read()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
body = b64(json.dumps({"sub": "admin"}, separators=(",", ":")).encode())
sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
    )
  fi
  (umask 077 && printf 'Authorization: Bearer %s\n' "$(cat "$TOKEN_FILE")" >"$HEADER_FILE")
}

write_conf() {
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$STORE_DIR"
  local conf="$CONF_DIR/standalone.conf"
  cat >"$conf" <<EOF
# Generated by scripts/pulsar.sh on every start; edits are overwritten.
clusterName=standalone
# Left empty on purpose: the starter fills it in (rocksdb:// or zk:), see --metadata-dir / --zookeeper-port.
metadataStoreUrl=
configurationMetadataStoreUrl=
brokerServicePort=$PULSAR_PORT
webServicePort=$PULSAR_HTTP_PORT
bindAddress=127.0.0.1
advertisedAddress=127.0.0.1
brokerShutdownTimeoutMs=10000
numIOThreads=2
numHttpServerThreads=4
numOrderedExecutorThreads=2
numExecutorThreadPoolSize=2
numWorkerThreadsForNonPersistentTopic=2
# Single bookie: quorums must be 1/1/1.
managedLedgerDefaultEnsembleSize=1
managedLedgerDefaultWriteQuorum=1
managedLedgerDefaultAckQuorum=1
managedLedgerDigestType=CRC32C
managedLedgerCacheSizeMB=64
bookkeeperUseV2WireProtocol=true
bookkeeperClientRackawarePolicyEnabled=true
loadManagerClassName=org.apache.pulsar.broker.loadbalance.NoopLoadManager
loadBalancerEnabled=false
defaultNumberOfNamespaceBundles=4
allowAutoTopicCreation=true
allowAutoTopicCreationType=non-partitioned
allowAutoSubscriptionCreation=true
defaultNumPartitions=1
# Idle test topics must not disappear in the middle of a test run.
brokerDeleteInactiveTopicsEnabled=false
subscriptionRedeliveryTrackerEnabled=true
systemTopicEnabled=true
topicLevelPoliciesEnabled=true
delayedDeliveryEnabled=true
delayedDeliveryTickTimeMillis=1000
isDelayedDeliveryDeliverAtTimeStrict=false
transactionCoordinatorEnabled=false
webSocketServiceEnabled=false
statusFilePath=
# --- bookie (the bookie reads this same file) ---
ledgerStorageClass=org.apache.bookkeeper.bookie.storage.ldb.DbLedgerStorage
journalSyncData=false
journalMaxGroupWaitMSec=1
allowLoopback=true
diskUsageThreshold=0.99
diskUsageWarnThreshold=0.99
dbStorage_writeCacheMaxSizeMb=32
dbStorage_readAheadCacheMaxSizeMb=32
dbStorage_rocksDB_blockCacheSize=16777216
dbStorage_rocksDB_writeBufferSizeMB=4
dbStorage_rocksDB_sstSizeInMB=4
nettyMaxFrameSizeBytes=5253120
flushInterval=60000
gcWaitTime=300000
EOF
  if [[ $PULSAR_AUTH == token ]]; then
    cat >>"$conf" <<EOF
# --- JWT (HS256) token authentication ---
authenticationEnabled=true
authenticationProviders=org.apache.pulsar.broker.authentication.AuthenticationProviderToken
tokenSecretKey=file://$SECRET_FILE
superUserRoles=admin
authorizationEnabled=false
# The broker's own admin client (it creates public/default) must authenticate too.
brokerClientAuthenticationPlugin=org.apache.pulsar.client.impl.auth.AuthenticationToken
brokerClientAuthenticationParameters=file://$TOKEN_FILE
EOF
  fi

  cat >"$CONF_DIR/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/pulsar.sh. -->
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <RollingFile name="file" fileName="$BROKER_LOG" filePattern="$LOG_DIR/pulsar-%i.log">
      <PatternLayout pattern="%d{ISO8601} [%t] %-5level %logger{36} - %msg%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="org.apache.zookeeper" level="warn"/>
    <Logger name="org.apache.bookkeeper.proto" level="warn"/>
    <Root level="info"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
EOF

  {
    echo "auth=$PULSAR_AUTH"
    echo "metadata=$PULSAR_METADATA"
    echo "port=$PULSAR_PORT"
    echo "http_port=$PULSAR_HTTP_PORT"
  } >"$MODE_FILE"
}

find_java() {
  local java=java
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then java=$JAVA_HOME/bin/java; fi
  command -v "$java" >/dev/null || die "Java 17+ is not installed (apt-get install openjdk-17-jre-headless)"
  local major
  major=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | head -n 1)
  [[ $major =~ ^[0-9]+$ ]] || die "cannot tell the version of $java"
  ((major >= 17)) || die "$java is Java $major; Pulsar $PULSAR_VERSION needs Java 17 or newer"
  echo "$java"
}

# --- commands ---------------------------------------------------------------------------------

wait_ready() { # pid
  local pid=$1 deadline=$((SECONDS + PULSAR_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      print_log_tail 80
      die "the broker process $pid exited during startup (logs: $LOG_DIR)"
    fi
    if broker_ready; then return 0; fi
    sleep 0.5
  done
  print_log_tail 80
  die "the broker (pid $pid) was not ready after ${PULSAR_START_TIMEOUT}s (logs: $LOG_DIR); it is still running, stop it with: scripts/pulsar.sh stop"
}

cmd_start() {
  command -v curl >/dev/null || die "curl is not installed; run scripts/setup.sh or apt-get install curl"
  mkdir -p "$PULSAR_DATA_DIR"
  exec 9>"$PULSAR_DATA_DIR/.lock"
  flock 9

  local pid
  if [[ $PULSAR_WIPE == 1 ]] && pid=$(broker_pid); then
    info "PULSAR_WIPE=1: stopping the running broker (pid $pid) first"
    stop_locked
  fi
  resolve_modes

  if pid=$(broker_pid); then
    if [[ $(saved_setting auth) != "$PULSAR_AUTH" || $(saved_setting metadata) != "$PULSAR_METADATA" ]]; then
      die "a broker is already running on this data dir (pid $pid) with auth=$(saved_setting auth) metadata=$(saved_setting metadata); stop it first"
    fi
    wait_ready "$pid"
    info "already running (pid $pid)"
    print_urls
    return 0
  fi
  rm -f "$PID_FILE"

  # Ports: fail clearly instead of letting the JVM die with a BindException.
  local p role roles=("$PULSAR_PORT:broker (PULSAR_PORT)" "$PULSAR_HTTP_PORT:HTTP admin (PULSAR_HTTP_PORT)"
    "$PULSAR_BOOKIE_PORT:bookie (PULSAR_BOOKIE_PORT)")
  [[ $PULSAR_METADATA == zookeeper ]] && roles+=("$PULSAR_ZK_PORT:ZooKeeper (PULSAR_ZK_PORT)")
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

  if [[ $PULSAR_WIPE == 1 ]]; then
    info "PULSAR_WIPE=1: deleting $STORE_DIR, $AUTH_DIR and $LOG_DIR"
    rm -rf "$STORE_DIR" "$AUTH_DIR" "$LOG_DIR"
  fi
  if [[ $PULSAR_AUTH == token ]]; then ensure_auth_files; fi
  write_conf

  local args=(--config "$CONF_DIR/standalone.conf" --no-functions-worker --no-stream-storage
    --advertised-address 127.0.0.1 --bookkeeper-port "$PULSAR_BOOKIE_PORT"
    --bookkeeper-dir "$STORE_DIR/bookkeeper")
  local zk_env=0
  if [[ $PULSAR_METADATA == zookeeper ]]; then
    zk_env=1
    args+=(--zookeeper-port "$PULSAR_ZK_PORT" --zookeeper-dir "$STORE_DIR/zookeeper")
  else
    [[ -d $STORE_DIR/zookeeper ]] && die "$STORE_DIR holds ZooKeeper metadata; use PULSAR_METADATA=zookeeper or PULSAR_WIPE=1"
    args+=(--zookeeper-dir "$STORE_DIR/zookeeper" --metadata-dir "$STORE_DIR/metadata")
  fi

  local jvm=()
  read -r -a jvm <<<"$PULSAR_MEM $PULSAR_EXTRA_OPTS"
  jvm+=(-XX:+UseG1GC -XX:+PerfDisableSharedMem
    -Dlog4j.configurationFile="$CONF_DIR/log4j2.xml" -Dlog4j.shutdownHookEnabled=false
    -Dlog4j2.formatMsgNoLookups=true
    -Djute.maxbuffer=10485760 -Djava.net.preferIPv4Stack=true
    -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.recycler.maxCapacityPerThread=4096
    -Dpulsar.allocator.exit_on_oom=true
    --add-opens java.base/java.io=ALL-UNNAMED --add-opens java.base/java.util.zip=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED --add-opens java.base/jdk.internal.misc=ALL-UNNAMED
    --add-opens java.base/sun.net=ALL-UNNAMED --add-opens java.management/sun.management=ALL-UNNAMED
    -Dzookeeper.admin.enableServer=false -Dzookeeper.4lw.commands.whitelist='*'
    -Dzookeeper.snapshot.trust.empty=true
    -Dbookkeeper.metadata.bookie.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataBookieDriver
    -Dbookkeeper.metadata.client.drivers=org.apache.pulsar.metadata.bookkeeper.PulsarMetadataClientDriver
    -Dpulsar.log.dir="$LOG_DIR"
    -cp "$LIB_DIR/*")

  info "starting Apache Pulsar $PULSAR_VERSION standalone (metadata=$PULSAR_METADATA, auth=$PULSAR_AUTH, data=$PULSAR_DATA_DIR)"
  local started=$SECONDS
  # Run from the data dir (relative paths land there), detached from our stdio and lock fd.
  (
    cd "$PULSAR_DATA_DIR"
    if [[ $zk_env == 1 ]]; then export PULSAR_STANDALONE_USE_ZOOKEEPER=1; else unset PULSAR_STANDALONE_USE_ZOOKEEPER; fi
    exec nohup "$java" "${jvm[@]}" org.apache.pulsar.PulsarStandaloneStarter "${args[@]}" \
      </dev/null >>"$JVM_OUT" 2>&1 9>&-
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
  local deadline=$((SECONDS + PULSAR_STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    info "still running after ${PULSAR_STOP_TIMEOUT}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PID_FILE"
}

cmd_stop() {
  [[ -d $PULSAR_DATA_DIR ]] || return 0
  exec 9>"$PULSAR_DATA_DIR/.lock"
  flock 9
  stop_locked
  exec 9>&-
}

cmd_status() {
  resolve_modes
  local pid
  if ! pid=$(broker_pid); then
    echo "not running ($PULSAR_DATA_DIR)"
    return 1
  fi
  if broker_ready; then
    echo "running (pid $pid, auth=$PULSAR_AUTH, metadata=$PULSAR_METADATA)"
    print_urls
    return 0
  fi
  echo "process $pid is running but the broker is not ready"
  return 1
}

cmd_env() {
  resolve_modes
  printf 'PULSAR_URL=%q\n' "$BROKER_URL"
  printf 'PULSAR_ADMIN_URL=%q\n' "$ADMIN_URL"
  printf 'PULSAR_DATA_DIR=%q\n' "$PULSAR_DATA_DIR"
  if [[ $PULSAR_AUTH == token ]]; then
    printf 'PULSAR_AUTH_TOKEN_FILE=%q\n' "$TOKEN_FILE"
  fi
}

cmd_token() {
  [[ -s $TOKEN_FILE ]] || die "no token in $TOKEN_FILE: start the broker with PULSAR_AUTH=token"
  cat "$TOKEN_FILE"
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
  PULSAR_WIPE=0 cmd_start
  ;;
status) cmd_status ;;
env) cmd_env ;;
token) cmd_token ;;
logs) cmd_logs "${2:-}" ;;
-h | --help | help) usage ;;
*)
  usage >&2
  exit 2
  ;;
esac
