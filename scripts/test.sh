#!/usr/bin/env bash
# THE test command: installs what is missing, builds, starts two fresh Apache Pulsar brokers and an
# Apache Kafka broker (scripts/kafka.sh), runs
# `cargo test --all-targets --no-fail-fast` and `pytest tests/interop`, validates the deployment files, runs
# the compose stack for real on an image of the tested binary (scripts/compose-check.sh), checks the
# import graph (scripts/module-graph.py), the paths the docs name and README's Layout (scripts/check-paths.py) and the
# production build (--no-default-features), stops the brokers, exits non-zero if anything failed. Used by CI (.ci/run) and by developers alike.
#
# Brokers (all wiped at start, all stopped at exit unless PULSAR_KEEP=1):
#   plain  PULSAR_PORT [6650] / PULSAR_HTTP_PORT [8080]
#   token  PULSAR_AUTH_PORT [PULSAR_PORT+1] / PULSAR_AUTH_HTTP_PORT [PULSAR_HTTP_PORT+1], JWT auth
#   kafka  KAFKA_PORT [9092 + (PULSAR_PORT - 6650)] (its KRaft controller on KAFKA_PORT+1), topics
#          created by the tests
# The tests get:
#   PULSAR_URL, PULSAR_ADMIN_URL                 the plain broker
#   PULSAR_PORT, PULSAR_HTTP_PORT, PULSAR_DATA_DIR  so that tests can `scripts/pulsar.sh restart` it
#   PULSAR_AUTH_URL, PULSAR_AUTH_ADMIN_URL       the token broker
#   PULSAR_AUTH_TOKEN, PULSAR_AUTH_TOKEN_FILE    its admin JWT ({"sub":"admin"})
#   PULSAR_AUTH_DATA_DIR                         its data dir
#   KAFKA_BROKERS, KAFKA_PORT, KAFKA_DATA_DIR    the Kafka broker (127.0.0.1:KAFKA_PORT)
# Other knobs: TEST_SKIP_SETUP=1, CARGO_TEST_ARGS (extra args after `cargo test --all-targets`),
# PYTEST_ARGS (extra pytest args), COMPOSE_CHECK_PORT [PULSAR_PORT + 100] (the compose stack's host
# ports, P..P+6), TEST_SKIP_COMPOSE=1 (no compose check: it needs root for Docker; said in the summary).
set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT" || exit 1
PULSAR_SH="$REPO_ROOT/scripts/pulsar.sh"
KAFKA_SH="$REPO_ROOT/scripts/kafka.sh"
LOG_DIR="$REPO_ROOT/.cache/test-logs"
mkdir -p "$LOG_DIR"

T0=$SECONDS
phase() { echo; echo "=== $* ($((SECONDS - T0)) s)"; }
die() { echo "test.sh: error: $*" >&2; exit 1; }

# --- 1. tools ---------------------------------------------------------------------------------
if [[ ${TEST_SKIP_SETUP:-0} != 1 ]]; then
  phase "setup"
  bash "$REPO_ROOT/scripts/setup.sh" || die "scripts/setup.sh failed"
fi

# --- 2. brokers (started in the background while cargo builds) --------------------------------
PLAIN_PORT=${PULSAR_PORT:-6650}
PLAIN_HTTP=${PULSAR_HTTP_PORT:-8080}
AUTH_PORT=${PULSAR_AUTH_PORT:-$((PLAIN_PORT + 1))}
AUTH_HTTP=${PULSAR_AUTH_HTTP_PORT:-$((PLAIN_HTTP + 1))}
PLAIN_DATA=${PULSAR_DATA_DIR:-$REPO_ROOT/.cache/pulsar/data-$PLAIN_PORT}
AUTH_DATA=${PULSAR_AUTH_DATA_DIR:-$REPO_ROOT/.cache/pulsar/data-$AUTH_PORT}
# Offset like the Pulsar ports, so that two suites with different PULSAR_PORTs never share a broker.
KAFKA_PORT=${KAFKA_PORT:-$((9092 + PLAIN_PORT - 6650))}
KAFKA_DATA=${KAFKA_DATA_DIR:-$REPO_ROOT/.cache/kafka/data-$KAFKA_PORT}
# Bookie/ZooKeeper ports follow from PULSAR_PORT inside pulsar.sh; never share them between the two.
# The Kafka controller port follows from KAFKA_PORT the same way.
unset PULSAR_BOOKIE_PORT PULSAR_ZK_PORT PULSAR_WIPE PULSAR_AUTH PULSAR_METADATA KAFKA_CONTROLLER_PORT KAFKA_WIPE
# The brokers start while cargo builds on the same cores: a cold build can slow their bootstrap far
# past the 180 s an idle machine needs, so they get the whole build's time.
export PULSAR_START_TIMEOUT=${PULSAR_START_TIMEOUT:-1200}
export KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-1200}

plain_broker() { PULSAR_PORT=$PLAIN_PORT PULSAR_HTTP_PORT=$PLAIN_HTTP PULSAR_DATA_DIR=$PLAIN_DATA "$@"; }
auth_broker() { PULSAR_PORT=$AUTH_PORT PULSAR_HTTP_PORT=$AUTH_HTTP PULSAR_DATA_DIR=$AUTH_DATA "$@"; }
kafka_broker() { KAFKA_PORT=$KAFKA_PORT KAFKA_DATA_DIR=$KAFKA_DATA "$@"; }

stop_brokers() {
  local rc=$?
  if [[ ${PULSAR_KEEP:-0} == 1 ]]; then
    echo "test.sh: PULSAR_KEEP=1: leaving the brokers running (scripts/pulsar.sh stop, scripts/kafka.sh stop)" >&2
  else
    # Waits for a start still in progress (the per-data-dir lock), then stops.
    plain_broker bash "$PULSAR_SH" stop || true
    auth_broker bash "$PULSAR_SH" stop || true
    kafka_broker bash "$KAFKA_SH" stop || true
  fi
  exit "$rc"
}
trap stop_brokers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase "starting brokers: plain on $PLAIN_PORT/$PLAIN_HTTP, token auth on $AUTH_PORT/$AUTH_HTTP, Kafka on $KAFKA_PORT (background)"
plain_broker env PULSAR_WIPE=1 PULSAR_AUTH=none bash "$PULSAR_SH" start >"$LOG_DIR/broker-plain.out" 2>&1 &
PLAIN_START=$!
auth_broker env PULSAR_WIPE=1 PULSAR_AUTH=token bash "$PULSAR_SH" start >"$LOG_DIR/broker-auth.out" 2>&1 &
AUTH_START=$!
kafka_broker env KAFKA_WIPE=1 bash "$KAFKA_SH" start >"$LOG_DIR/broker-kafka.out" 2>&1 &
KAFKA_START=$!

# --- 3. build ---------------------------------------------------------------------------------
phase "cargo build --all-targets"
if ! cargo build --all-targets; then
  wait "$PLAIN_START" "$AUTH_START" "$KAFKA_START" 2>/dev/null
  die "cargo build --all-targets failed"
fi

phase "waiting for the brokers"
broker_failed=0
wait "$PLAIN_START" || broker_failed=1
cat "$LOG_DIR/broker-plain.out"
wait "$AUTH_START" || broker_failed=1
cat "$LOG_DIR/broker-auth.out"
wait "$KAFKA_START" || broker_failed=1
cat "$LOG_DIR/broker-kafka.out"
((broker_failed == 0)) || die "a broker did not start (output above; logs under .cache/pulsar/*/logs, .cache/kafka/*/logs)"

export PULSAR_PORT=$PLAIN_PORT PULSAR_HTTP_PORT=$PLAIN_HTTP PULSAR_DATA_DIR=$PLAIN_DATA
export PULSAR_URL="pulsar://127.0.0.1:$PLAIN_PORT"
export PULSAR_ADMIN_URL="http://127.0.0.1:$PLAIN_HTTP"
export PULSAR_AUTH_URL="pulsar://127.0.0.1:$AUTH_PORT"
export PULSAR_AUTH_ADMIN_URL="http://127.0.0.1:$AUTH_HTTP"
export PULSAR_AUTH_DATA_DIR=$AUTH_DATA
export PULSAR_AUTH_TOKEN_FILE="$AUTH_DATA/auth/admin.token"
PULSAR_AUTH_TOKEN=$(cat "$PULSAR_AUTH_TOKEN_FILE") || die "no token in $PULSAR_AUTH_TOKEN_FILE"
export PULSAR_AUTH_TOKEN
export KAFKA_PORT KAFKA_DATA_DIR=$KAFKA_DATA KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
echo "PULSAR_URL=$PULSAR_URL PULSAR_ADMIN_URL=$PULSAR_ADMIN_URL"
echo "PULSAR_AUTH_URL=$PULSAR_AUTH_URL PULSAR_AUTH_ADMIN_URL=$PULSAR_AUTH_ADMIN_URL PULSAR_AUTH_TOKEN_FILE=$PULSAR_AUTH_TOKEN_FILE"
echo "KAFKA_BROKERS=$KAFKA_BROKERS"

# --- 4. tests ---------------------------------------------------------------------------------
failed_phases=()

phase "cargo test --all-targets --no-fail-fast"
CARGO_LOG="$LOG_DIR/cargo-test.log"
read -r -a cargo_extra <<<"${CARGO_TEST_ARGS:-}"
cargo test --all-targets --no-fail-fast "${cargo_extra[@]}" 2>&1 | tee "$CARGO_LOG"
cargo_rc=${PIPESTATUS[0]}
((cargo_rc == 0)) || failed_phases+=("cargo test (exit $cargo_rc)")

phase "pytest tests/interop"
PYTEST_LOG="$LOG_DIR/pytest.log"
read -r -a pytest_extra <<<"${PYTEST_ARGS:-}"
"$REPO_ROOT/.venv/bin/pytest" tests/interop -q "${pytest_extra[@]}" 2>&1 | tee "$PYTEST_LOG"
pytest_rc=${PIPESTATUS[0]}
case $pytest_rc in
0) ;;
5) echo "test.sh: warning: pytest collected no tests" ;;
*) failed_phases+=("pytest (exit $pytest_rc)") ;;
esac

# Deployment artifacts (docker-compose.yml, deploy/), validated offline; needs target/debug/ci-worker.
phase "scripts/validate-deploy.sh"
deploy_rc=0
bash "$REPO_ROOT/scripts/validate-deploy.sh" || deploy_rc=$?
((deploy_rc == 0)) || failed_phases+=("validate-deploy (exit $deploy_rc)")

# The compose stack for real: an image of the binary tested above (Dockerfile target
# runtime-prebuilt), the sample, 20 requests from the host, the worker's SIGTERM, `down -v`.
# Before the production build, which replaces target/debug/ci-worker with one without the emulator.
phase "scripts/compose-check.sh"
compose_rc=0
if [[ ${TEST_SKIP_COMPOSE:-0} == 1 ]]; then
  echo "test.sh: TEST_SKIP_COMPOSE=1: the compose check is skipped"
else
  COMPOSE_CHECK_PORT=${COMPOSE_CHECK_PORT:-$((PLAIN_PORT + 100))} CI_WORKER_BIN="$REPO_ROOT/target/debug/ci-worker" \
    bash "$REPO_ROOT/scripts/compose-check.sh" || compose_rc=$?
fi
((compose_rc == 0)) || failed_phases+=("compose-check (exit $compose_rc)")

# The import graph (scripts/module-graph.py): no cycle between files or top-level modules.
phase "scripts/module-graph.py"
graph_rc=0
python3 "$REPO_ROOT/scripts/module-graph.py" || graph_rc=$?
((graph_rc == 0)) || failed_phases+=("module-graph (exit $graph_rc)")

# Paths that the docs, scripts and deployment files name exist, and README's Layout names every *.rs
# (scripts/check-paths.py).
phase "scripts/check-paths.py"
paths_rc=0
python3 "$REPO_ROOT/scripts/check-paths.py" || paths_rc=$?
((paths_rc == 0)) || failed_phases+=("check-paths (exit $paths_rc)")

# The production build: no emulator, no bench (cargo features, on by default). Last, because it
# replaces target/debug/ci-worker, which the tests above run; the default binary is rebuilt after.
phase "cargo build --no-default-features (the production build)"
prod_rc=0
if cargo build --no-default-features --bin ci-worker && cargo test --no-default-features --lib 2>&1 | tee "$LOG_DIR/cargo-test-prod.log"; then
  help_text=$("$REPO_ROOT/target/debug/ci-worker" --help)
  if grep -qiE '^ *(emulator|bench) ' <<<"$help_text"; then
    echo "test.sh: the production build's --help still offers the emulator or the bench:"
    echo "$help_text"
    prod_rc=1
  else
    echo "production build: --help lists $(grep -cE '^  [a-z]+ ' <<<"$help_text") subcommands, neither emulator nor bench"
  fi
else
  prod_rc=1
fi
cargo build --bin ci-worker --quiet || prod_rc=1
((prod_rc == 0)) || failed_phases+=("production build (exit $prod_rc)")

# --- 5. summary -------------------------------------------------------------------------------
phase "summary"
echo "cargo test:"
grep -E '^\s*Running |^test result: ' "$CARGO_LOG" | sed 's/^/  /'
cargo_passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1/p' "$CARGO_LOG" | awk '{s+=$1} END {print s+0}')
cargo_failed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\2/p' "$CARGO_LOG" | awk '{s+=$1} END {print s+0}')
if ((cargo_rc != 0 && cargo_failed == 0)); then
  echo "  cargo test exited $cargo_rc without a failing test count (build error or a crashed test binary): counted as 1 failure"
  cargo_failed=1
fi
py_line=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped|deselected)|no tests ran' "$PYTEST_LOG" | tail -n 1)
echo "pytest: ${py_line:-<no summary line>}"
py_passed=$(grep -oE '[0-9]+ passed' <<<"$py_line" | grep -oE '[0-9]+' || echo 0)
py_failed=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$py_line" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
if ((pytest_rc != 0 && pytest_rc != 5 && py_failed == 0)); then
  echo "  pytest exited $pytest_rc without a failing test count: counted as 1 failure"
  py_failed=1
fi
deploy_passed=$((deploy_rc == 0 ? 1 : 0))
compose_passed=$((compose_rc == 0 ? 1 : 0))
compose_checks=1
[[ ${TEST_SKIP_COMPOSE:-0} == 1 ]] && compose_passed=0 compose_checks=0
graph_passed=$((graph_rc == 0 ? 1 : 0))
paths_passed=$((paths_rc == 0 ? 1 : 0))
prod_passed=$((prod_rc == 0 ? 1 : 0))
prod_unit_passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed;.*/\1/p' "$LOG_DIR/cargo-test-prod.log" 2>/dev/null | awk '{s+=$1} END {print s+0}')
echo "validate-deploy: $([[ $deploy_rc == 0 ]] && echo passed || echo "failed (exit $deploy_rc)")"
echo "compose stack: $( ((compose_checks == 0)) && echo "skipped (TEST_SKIP_COMPOSE=1)" ||
  { [[ $compose_rc == 0 ]] && echo passed || echo "failed (exit $compose_rc)"; })"
echo "module graph: $([[ $graph_rc == 0 ]] && echo "no cycle" || echo "cycles (above)")"
echo "named paths: $([[ $paths_rc == 0 ]] && echo "all exist, Layout complete" || echo "dangling or missing from Layout (above)")"
echo "production build (--no-default-features): $([[ $prod_rc == 0 ]] && echo "passed, $prod_unit_passed unit tests" || echo failed)"
echo "took $((SECONDS - T0)) s; logs in $LOG_DIR"
if ((${#failed_phases[@]})); then
  echo "FAILED: ${failed_phases[*]}"
fi
echo "summary: $((cargo_passed + py_passed + deploy_passed + compose_passed + graph_passed + paths_passed + prod_passed)) passed, $((cargo_failed + py_failed + 4 + compose_checks - deploy_passed - compose_passed - graph_passed - paths_passed - prod_passed)) failed"
((${#failed_phases[@]} == 0))
