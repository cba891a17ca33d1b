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
JVM_TOOL=pulsar.sh
# The jar cache, pid file, start and stop: shared with scripts/kafka.sh.
# shellcheck source-path=SCRIPTDIR source=lib/jvm.sh
source "$REPO_ROOT/scripts/lib/jvm.sh"

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

# What scripts/lib/jvm.sh works with.
JVM_PRODUCT="Apache Pulsar" JVM_KEY=pulsar JVM_VERSION=$PULSAR_VERSION
JVM_ARTIFACT=org.apache.pulsar:pulsar-broker JVM_FETCH_TIME="about a minute"
JVM_MAIN_CLASS=PulsarStandaloneStarter JVM_CONF="$CONF_DIR/standalone.conf"
CACHE_DIR=$PULSAR_CACHE_DIR DATA_DIR=$PULSAR_DATA_DIR
LIB_DIR=$(jvm_lib_dir)
START_TIMEOUT=$PULSAR_START_TIMEOUT STOP_TIMEOUT=$PULSAR_STOP_TIMEOUT POLL_INTERVAL=0.5

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

# --- process helpers --------------------------------------------------------------------------

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

  write_log4j2 "$CONF_DIR/log4j2.xml" org.apache.zookeeper org.apache.bookkeeper.proto

  {
    echo "auth=$PULSAR_AUTH"
    echo "metadata=$PULSAR_METADATA"
    echo "port=$PULSAR_PORT"
    echo "http_port=$PULSAR_HTTP_PORT"
  } >"$MODE_FILE"
}

# --- commands ---------------------------------------------------------------------------------

cmd_start() {
  command -v curl >/dev/null || die "curl is not installed; run scripts/setup.sh or apt-get install curl"
  lock_data_dir

  local pid
  if [[ $PULSAR_WIPE == 1 ]] && pid=$(broker_pid); then
    info "PULSAR_WIPE=1: stopping the running broker (pid $pid) first"
    stop_locked
  fi
  resolve_modes

  if pid=$(broker_pid) &&
    [[ $(saved_setting auth) != "$PULSAR_AUTH" || $(saved_setting metadata) != "$PULSAR_METADATA" ]]; then
    die "a broker is already running on this data dir (pid $pid) with auth=$(saved_setting auth) metadata=$(saved_setting metadata); stop it first"
  fi
  if already_running; then return 0; fi

  local roles=("$PULSAR_PORT:broker (PULSAR_PORT)" "$PULSAR_HTTP_PORT:HTTP admin (PULSAR_HTTP_PORT)"
    "$PULSAR_BOOKIE_PORT:bookie (PULSAR_BOOKIE_PORT)")
  [[ $PULSAR_METADATA == zookeeper ]] && roles+=("$PULSAR_ZK_PORT:ZooKeeper (PULSAR_ZK_PORT)")
  require_free_ports "${roles[@]}"

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
  # The starter picks its metadata store from this variable; `env` execs java, which keeps the pid.
  local launcher=(env -u PULSAR_STANDALONE_USE_ZOOKEEPER)
  if [[ $PULSAR_METADATA == zookeeper ]]; then
    launcher=(env PULSAR_STANDALONE_USE_ZOOKEEPER=1)
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
  launch_broker "${launcher[@]}" "$java" "${jvm[@]}" org.apache.pulsar.PulsarStandaloneStarter "${args[@]}"
}

pulsar_status() {
  resolve_modes
  report_status ", auth=$PULSAR_AUTH, metadata=$PULSAR_METADATA"
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

case ${1:-} in
fetch) cmd_fetch ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart)
  cmd_stop
  PULSAR_WIPE=0 cmd_start
  ;;
status) pulsar_status ;;
env) cmd_env ;;
token) cmd_token ;;
logs) cmd_logs "${2:-}" ;;
-h | --help | help) usage "${BASH_SOURCE[0]}" ;;
*)
  usage "${BASH_SOURCE[0]}" >&2
  exit 2
  ;;
esac
