# shellcheck shell=bash
# The Java and Maven plumbing of scripts/pulsar.sh and scripts/kafka.sh, sourced by both (not run):
# a broker resolved from Maven Central into a jar cache, started from a data dir in the background
# under a pid file and a lock, waited for, stopped with SIGTERM then SIGKILL. Each broker script
# keeps what is its own (configuration, readiness, its subcommands and environment variables).
#
# Before calling anything here, the sourcing script sets (all required):
#   JVM_TOOL            its name in messages ("pulsar.sh")
#   JVM_PRODUCT         "Apache Pulsar"
#   JVM_KEY             "pulsar": the pom takes the version as -D$JVM_KEY.version, and the cache stamp
#                       reads "$JVM_KEY=$JVM_VERSION pom=<sha256 of the pom>"
#   JVM_VERSION         the broker version
#   JVM_ARTIFACT        groupId:artifactId whose jar must be among those resolved
#   JVM_FETCH_TIME      how long the first fetch takes, for the message ("about a minute")
#   POM                 the pom whose runtime dependencies are the broker's classpath
#   CACHE_DIR           the jar cache: jars in $CACHE_DIR/lib
#   DATA_DIR            conf, logs, pid file, lock, storage of one broker
#   PID_FILE  LOG_DIR  BROKER_LOG  JVM_OUT   within DATA_DIR
#   JVM_MAIN_CLASS  JVM_CONF   the broker's main class and conf file: a process whose command line
#                       names both, in this order, is our broker (not another one reusing the pid)
#   START_TIMEOUT  STOP_TIMEOUT   seconds
#   POLL_INTERVAL       seconds between two readiness checks
# and defines broker_ready (0 once the broker serves) and print_urls (its addresses, on stdout).

die() { echo "$JVM_TOOL: error: $*" >&2; exit 1; }
info() { echo "$JVM_TOOL: $*" >&2; }

is_port() { [[ $1 =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)); }

# --- jars -------------------------------------------------------------------------------------

jvm_lib_dir() { echo "$CACHE_DIR/lib"; }

lib_wanted_stamp() {
  local pom_sum
  pom_sum=$(sha256sum "$POM" | cut -d' ' -f1)
  echo "$JVM_KEY=$JVM_VERSION pom=$pom_sum"
}

lib_ready() {
  local lib stamp="$CACHE_DIR/lib.stamp"
  lib=$(jvm_lib_dir)
  [[ -d $lib && -f $stamp && "$(cat "$stamp")" == "$(lib_wanted_stamp)" ]]
}

# Resolves the pom's runtime dependencies into $CACHE_DIR/lib once (a stamp records for which
# version and pom); later calls return at once.
cmd_fetch() {
  [[ -f $POM ]] || die "missing $POM"
  if lib_ready; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is not installed; run scripts/setup.sh or apt-get install maven"
  mkdir -p "$CACHE_DIR"
  (
    # One resolver at a time per cache dir; a second caller waits and then finds the stamp.
    exec 8>"$CACHE_DIR/.fetch.lock"
    flock 8
    if lib_ready; then exit 0; fi
    local lib partial="$CACHE_DIR/lib.partial" started=$SECONDS
    local group=${JVM_ARTIFACT%%:*} artifact=${JVM_ARTIFACT#*:}
    local main_jar="$group.$artifact-$JVM_VERSION.jar"
    lib=$(jvm_lib_dir)
    rm -rf "$partial" "$lib" "$CACHE_DIR/lib.stamp"
    info "resolving $JVM_PRODUCT $JVM_VERSION jars with Maven into $lib (first time: $JVM_FETCH_TIME)"
    local mvn_log="$CACHE_DIR/mvn.log"
    # Maven 3.8 prints stray ANSI resets even with -q: keep its output in a log, show it on failure.
    if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -D"$JVM_KEY.version=$JVM_VERSION" -Dmdep.prependGroupId=true -DincludeScope=runtime \
      -DoutputDirectory="$partial" >"$mvn_log" 2>&1 8>&-; then
      sed 's/\x1b\[[0-9;]*m//g' "$mvn_log" >&2
      rm -rf "$partial"
      die "Maven could not resolve $JVM_ARTIFACT:$JVM_VERSION (output above, also in $mvn_log)"
    fi
    [[ -f "$partial/$main_jar" ]] || die "resolved jars lack $main_jar (in $partial)"
    mv "$partial" "$lib"
    lib_wanted_stamp >"$CACHE_DIR/lib.stamp"
    info "resolved $(find "$lib" -name '*.jar' | wc -l) jars ($(du -sh "$lib" | cut -f1)) in $((SECONDS - started)) s"
  )
  # Maven's build directory for a pom-only project; nothing useful in it.
  rm -rf "$(dirname "$POM")/target"
}

find_java() {
  local java=java
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then java=$JAVA_HOME/bin/java; fi
  command -v "$java" >/dev/null || die "Java 17+ is not installed (apt-get install openjdk-17-jre-headless)"
  local major
  major=$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | head -n 1)
  [[ $major =~ ^[0-9]+$ ]] || die "cannot tell the version of $java"
  ((major >= 17)) || die "$java is Java $major; ${JVM_PRODUCT#Apache } $JVM_VERSION needs Java 17 or newer"
  echo "$java"
}

# --- configuration ----------------------------------------------------------------------------

# The broker's log4j2 configuration: INFO and up into $BROKER_LOG, rolled at 50 MB (3 kept); the
# loggers named after the file only from WARN up (they are chatty at INFO).
write_log4j2() { # file logger...
  local file=$1 logger quiet=""
  shift
  for logger in "$@"; do quiet+="    <Logger name=\"$logger\" level=\"warn\"/>"$'\n'; done
  cat >"$file" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/$JVM_TOOL. -->
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <RollingFile name="file" fileName="$BROKER_LOG" filePattern="${BROKER_LOG%.log}-%i.log">
      <PatternLayout pattern="%d{ISO8601} [%t] %-5level %logger{36} - %msg%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
${quiet}    <Root level="info"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
EOF
}

# --- process helpers --------------------------------------------------------------------------

# The pid from the pid file if that process is alive and is our broker (same main class and conf).
broker_pid() {
  local pid cmdline
  [[ -f $PID_FILE ]] || return 1
  pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$JVM_MAIN_CLASS"*"$JVM_CONF"* ]] || return 1
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

# Fails clearly when a port the broker needs is taken, instead of letting the JVM die with a
# BindException. Arguments: "port:role" pairs.
require_free_ports() {
  local p role owner
  for p in "$@"; do
    role=${p#*:}
    p=${p%%:*}
    if port_in_use "$p"; then
      owner=$(port_owner "$p")
      die "port $p needed for the $role is already in use${owner:+ by $owner}; stop that process or choose other ports"
    fi
  done
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

wait_ready() { # pid
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      print_log_tail 80
      die "the broker process $pid exited during startup (logs: $LOG_DIR)"
    fi
    if broker_ready; then return 0; fi
    sleep "$POLL_INTERVAL"
  done
  print_log_tail 80
  die "the broker (pid $pid) was not ready after ${START_TIMEOUT}s (logs: $LOG_DIR); it is still running, stop it with: scripts/$JVM_TOOL stop"
}

# --- start / stop / status --------------------------------------------------------------------

# Takes the data dir's lock (fd 9) for the rest of the calling script: one start or stop at a time.
lock_data_dir() {
  mkdir -p "$DATA_DIR"
  exec 9>"$DATA_DIR/.lock"
  flock 9
}

# Under the lock: 0 (after waiting for it to be ready and printing its addresses) when our broker
# already runs, else 1 with a stale pid file removed.
already_running() {
  local pid
  if pid=$(broker_pid); then
    wait_ready "$pid"
    info "already running (pid $pid)"
    print_urls
    return 0
  fi
  rm -f "$PID_FILE"
  return 1
}

# Under the lock: runs the command line "$@" (java and its arguments, possibly behind `env`) in the
# background from the data dir, records its pid and waits until the broker is ready.
launch_broker() {
  local pid started=$SECONDS
  # Run from the data dir (relative paths land there), detached from our stdio and lock fd.
  (
    cd "$DATA_DIR" || exit 1
    exec nohup "$@" </dev/null >>"$JVM_OUT" 2>&1 9>&-
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
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    info "still running after ${STOP_TIMEOUT}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PID_FILE"
}

cmd_stop() {
  [[ -d $DATA_DIR ]] || return 0
  exec 9>"$DATA_DIR/.lock"
  flock 9
  stop_locked
  exec 9>&-
}

report_status() { # details shown after the pid (", auth=none", or empty) -> status exit code
  local pid
  if ! pid=$(broker_pid); then
    echo "not running ($DATA_DIR)"
    return 1
  fi
  if broker_ready; then
    echo "running (pid $pid$1)"
    print_urls
    return 0
  fi
  echo "process $pid is running but the broker is not ready"
  return 1
}

cmd_logs() {
  local n=${1:-100}
  [[ -f $BROKER_LOG ]] || die "no log at $BROKER_LOG"
  tail -n "$n" "$BROKER_LOG"
}

usage() { # script -> its header comment
  sed -n '2,/^set -euo/p' "$1" | sed '$d; s/^# \{0,1\}//'
}
