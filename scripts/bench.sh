#!/usr/bin/env bash
# The benchmark in one command (figures and their meaning in docs/performance.md):
#   1. builds ci-worker (release),
#   2. starts the Apache Pulsar standalone broker if it is not running, and the Apache Kafka broker
#      (scripts/kafka.sh) when the ingress or messages section runs (each stopped at the end only if
#      it started it),
#   3. runs the criterion benches of the pure parts (cargo bench --bench pure),
#   4. runs `ci-worker bench` on the local stack: completion-path throughput against the raw relay
#      limit and a Python worker on Apache's pulsar-client (scripts/bench-python-worker.py, from the
#      project's .venv, set up here when missing; `--no-python` leaves it out),
#      submission-path throughput, end-to-end latency at a steady rate, cost, scaling,
#      each callback ingress (`ingress`: events published on the callback topic / sent into the
#      emulator's CMQ queue / POSTed to the worker / produced to a Kafka topic, into results: a
#      burst and steady runs at 200 and 1,000 events/s, events/s and the latency each source adds;
#      `--ingress`, `--ingress-events`, `--ingress-rates`, `--ingress-duration-secs`,
#      `--ingress-repeat`, `--ingress-http-concurrency`, `--cmq-concurrency`, `--kafka-brokers`
#      (default: scripts/kafka.sh's), `--kafka-partitions`; `--only cmq` is its cmq row alone,
#      `--cmq-events` / `--cmq-rate` the same flags as `--ingress-events` / `--ingress-rates`;
#      about 7 minutes),
#      broker messages per job (`messages`: topic stats, events on the Pulsar callback topic, through
#      CMQ, POSTed to the worker and through Kafka, `--message-ingress pulsar,cmq,http,kafka`,
#      about 40 s),
#      scale-out without duplicate CI jobs (`scaleout`: 3 replicas, replicas killed or replaced while
#      600 requests are submitted; CI jobs, duplicate results, CI calls, ack lag; about 2 minutes),
#      memory (`memory`: peak and current RSS of `ci-worker run` with 1,000 / 10,000 jobs waiting for
#      their callbacks and working through a backlog of 5,000 / 50,000 events; about 1.5 minutes),
#      the submission path against a CI that limits calls per second (`throttle`: emulator
#      qps_limit 50, 1,000 requests, adaptive / fixed / paced / concurrency-only, CI latency 0 and
#      50 ms; throughput and POST /jobs throttled; about 3–4 minutes),
#      and, only when named in `--only` (they are long): broker cost per job (`cost`: steady
#      10 / 100 / 500 requests/s × 1 / 4 / 8 replicas, 30 s each, every deadline due; messages per job
#      by topic from the broker's stats, CI list calls per 1,000 requests, one final per request;
#      about 10 minutes) and a soak (`soak`: 50 requests/s, 2 replicas, a SIGKILL + restart every
#      minute for 3 minutes; extra CI jobs, second finals, requests without a final),
#   5. prints one table of every figure with the command that produced it.
#
#   scripts/bench.sh [BENCH OPTIONS]      options go to `ci-worker bench` (`--help` lists them), e.g.
#   scripts/bench.sh --only completion --events 5000      a quick run of one section
#   BENCH_SKIP_BUILD=1 BENCH_SKIP_CRITERION=1 scripts/bench.sh --only messages   broker messages per job
#   BENCH_SKIP_CRITERION=1 scripts/bench.sh --only ingress --ingress pulsar,cmq,http,kafka   events/s and added latency per source
#   BENCH_SKIP_CRITERION=1 scripts/bench.sh --only cmq --cmq-concurrency 1,2,4   the cmq source alone, per cmq.concurrency
#   BENCH_SKIP_CRITERION=1 scripts/bench.sh --only scaleout --scaleout-requests 200 --scaleout-partitions 0 --scaleout-mode kill
#   BENCH_WORKER_BIN=/path/to/old/ci-worker scripts/bench.sh --only scaleout   an older worker, this bench and emulator
#   BENCH_SKIP_CRITERION=1 scripts/bench.sh --only memory --memory-jobs 1000,10000 --memory-backlog 5000,50000
#   BENCH_SKIP_CRITERION=1 scripts/bench.sh --only throttle --throttle-variants adaptive,fixed --throttle-latency-ms 0
#   BENCH_SKIP_CRITERION=1 scripts/bench.sh --only cost --cost-rates 10,100,500 --cost-replicas 1,4,8 --cost-duration-secs 30
#   BENCH_SKIP_CRITERION=1 scripts/bench.sh --only soak --soak-duration-secs 2700 --soak-kill-every-secs 300   the 45-minute soak
#
# Environment: BENCH_SKIP_BUILD=1 (use the binary as built), BENCH_BIN (the binary to run instead of
# the release build, e.g. target/debug/ci-worker; implies BENCH_SKIP_BUILD), BENCH_WORKER_BIN (the
# binary of the `ci-worker run` processes only, `--worker-bin`), BENCH_SKIP_CRITERION=1,
# BENCH_CRITERION_ARGS (extra criterion arguments, e.g. "--measurement-time 10"), BENCH_LOG (the
# benchmark's own log filter, default warn,pulsar=error; `--worker-log` sets that of the processes under test),
# PULSAR_PORT / PULSAR_HTTP_PORT as for scripts/pulsar.sh, KAFKA_PORT / KAFKA_DATA_DIR as for
# scripts/kafka.sh, CARGO_TARGET_DIR.
# Output: the table on stdout; logs and a copy of the figures (last.md, last.json) in .cache/bench/.
# Takes about 12–14 minutes on a 2-core machine with the default sections (a first release build comes on top).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
say() { echo "bench.sh: $*" >&2; }
SECONDS=0

OUT_DIR="$REPO_ROOT/.cache/bench"
mkdir -p "$OUT_DIR"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
BIN=${BENCH_BIN:-$TARGET_DIR/release/ci-worker}

if [[ ${BENCH_SKIP_BUILD:-0} != 1 && -z ${BENCH_BIN:-} ]]; then
  say "building ci-worker (release)"
  cargo build --release --quiet
fi
[[ -x $BIN ]] || { say "no binary at $BIN"; exit 1; }

# The completion section's Python peer runs on Apache's pulsar-client from the project's venv.
if ! "$REPO_ROOT/.venv/bin/python" -c 'import pulsar' >/dev/null 2>&1; then
  say "setting up the Python venv (scripts/setup.sh)"
  SETUP_SKIP_PULSAR=1 bash scripts/setup.sh >&2
fi

started_broker=0
started_kafka=0
cleanup() {
  if ((started_broker)); then
    say "stopping the broker this script started"
    bash scripts/pulsar.sh stop >/dev/null 2>&1 || true
  fi
  if ((started_kafka)); then
    say "stopping the Kafka broker this script started"
    bash scripts/kafka.sh stop >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
if ! bash scripts/pulsar.sh status >/dev/null 2>&1; then
  say "starting the Apache Pulsar standalone broker"
  bash scripts/pulsar.sh start >/dev/null
  started_broker=1
fi
eval "$(bash scripts/pulsar.sh env)"
# The kafka source of the ingress and messages sections (in their defaults) reads a real Kafka
# broker: scripts/kafka.sh's, started here when it is not running and a section may need it.
if [[ " $* " != *" --only"* || " $* " == *ingress* || " $* " == *messages* ]] &&
  ! bash scripts/kafka.sh status >/dev/null 2>&1; then
  say "starting the Apache Kafka broker (scripts/kafka.sh)"
  bash scripts/kafka.sh start >/dev/null
  started_kafka=1
fi
if bash scripts/kafka.sh status >/dev/null 2>&1; then
  eval "$(bash scripts/kafka.sh env)"
  export KAFKA_BROKERS
fi
broker_pid=$(cat "$PULSAR_DATA_DIR/pulsar.pid" 2>/dev/null || true)

criterion_summary=""
if [[ ${BENCH_SKIP_CRITERION:-0} != 1 ]]; then
  say "criterion: the pure parts (cargo bench --bench pure)"
  # shellcheck disable=SC2086  # BENCH_CRITERION_ARGS is a list of arguments
  cargo bench --quiet --bench pure -- ${BENCH_CRITERION_ARGS:-} 2>&1 | tee "$OUT_DIR/criterion.txt" >&2
  # "name  time: [low mid high]" (the name may be alone on the line before): keep the middle estimate.
  criterion_summary=$(awk '
    /^[A-Za-z_\/]+/ && !/time:/ && !/thrpt:/ && !/change:/ && !/Found|Benchmarking|Performance|No change|Change within|mild|severe|Gnuplot|Warming|Collecting|Analyzing/ { name = $1 }
    /time:/ && !/%/ {   # not the "change:" block of a comparison with an earlier run
      if ($1 != "time:") name = $1
      sub(/.*time: *\[/, ""); split($0, v, " ")
      printf "| %s (criterion, per operation) | %s %s | `cargo bench --bench pure` |\n", name, v[3], v[4]
    }' "$OUT_DIR/criterion.txt")
fi

say "ci-worker bench on the local stack (logs: $OUT_DIR)"
export CI_WORKER__PULSAR__URL=${CI_WORKER__PULSAR__URL:-$PULSAR_URL}
bench_args=(--admin-url "$PULSAR_ADMIN_URL" --log-dir "$OUT_DIR" --json "$OUT_DIR/last.json")
[[ -n $broker_pid ]] && bench_args+=(--broker-pid "$broker_pid")
# The benchmark's own log (stderr) at warn; the processes under test keep their configuration (info).
RUST_LOG=${BENCH_LOG:-warn,pulsar=error} "$BIN" bench "${bench_args[@]}" "$@" | tee "$OUT_DIR/last.md"

if [[ -n $criterion_summary ]]; then
  printf '\n## pure parts (criterion)\n\n| figure | value | command |\n| --- | --- | --- |\n%s\n' \
    "$criterion_summary" | tee -a "$OUT_DIR/last.md"
fi
printf '\nMachine: %s cores, %s, %s GiB memory; %s. scripts/bench.sh took %d s.\n' \
  "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
  "$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)" "$(date -u +%Y-%m-%dT%H:%MZ)" \
  "$SECONDS" | tee -a "$OUT_DIR/last.md"
