#!/usr/bin/env bash
# The local stack in one command: installs what it needs, builds ci-worker, starts the Apache Pulsar
# standalone broker, the CI emulator and the worker, publishes a sample DigitalWatermark request,
# prints its normalized results (the `submitted` event, then the final result), and stops everything
# it started (a broker that was already running is left running).
#
#   scripts/local-stack.sh [REQUEST.json]     default: schemas/examples/request.json (fresh request_id)
#
# Environment: PROFILE [debug|release] (default debug: faster to build), KEEP_RUNNING=1 leaves the
# stack up (stop it with Ctrl-C), PULSAR_PORT / PULSAR_HTTP_PORT as for scripts/pulsar.sh,
# EMULATOR_PORT [9000], EMULATOR_CMQ_PORT [9100], WORKER_HTTP_PORT [9464], JOB_DURATION_MS [2000],
# CALLBACK [cmq|kafka], KAFKA_PORT as for scripts/kafka.sh.
#
# CALLBACK=cmq (the default) is CI's documented path: the emulator writes each completion event into
# its TDMQ for CMQ queue (CMQ API 2.0 on EMULATOR_CMQ_PORT) and the worker's cmq ingress reads it from
# there. CALLBACK=kafka: jobs carry CallBackType=Kafka, the emulator produces each event into the
# topic ci-callbacks of a local Apache Kafka broker (scripts/kafka.sh, started here if it is not
# running; the topic is created if missing) and the worker's kafka ingress reads it from there.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
say() { echo "local-stack: $*" >&2; }

PROFILE=${PROFILE:-debug}
EMULATOR_PORT=${EMULATOR_PORT:-9000}
EMULATOR_CMQ_PORT=${EMULATOR_CMQ_PORT:-9100}
WORKER_HTTP_PORT=${WORKER_HTTP_PORT:-9464}
JOB_DURATION_MS=${JOB_DURATION_MS:-2000}
CALLBACK=${CALLBACK:-cmq}
case $CALLBACK in cmq | kafka) ;; *) echo "local-stack: CALLBACK must be cmq or kafka (got '$CALLBACK')" >&2; exit 2 ;; esac
REQUEST=${1:-schemas/examples/request.json}
RUN_DIR="$REPO_ROOT/.cache/local-stack"
mkdir -p "$RUN_DIR"

bash scripts/setup.sh
say "building ci-worker ($PROFILE)"
if [[ $PROFILE == release ]]; then
  cargo build --release --quiet
else
  cargo build --quiet
fi
BIN="$REPO_ROOT/target/$PROFILE/ci-worker"

pids=()
started_broker=0
started_kafka=0
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((started_broker)); then bash scripts/pulsar.sh stop >/dev/null 2>&1 || true; fi
  if ((started_kafka)); then bash scripts/kafka.sh stop >/dev/null 2>&1 || true; fi
  say "stopped"
}
trap cleanup EXIT

if ! bash scripts/pulsar.sh status >/dev/null 2>&1; then
  started_broker=1
  PULSAR_WIPE=1 bash scripts/pulsar.sh start >&2
fi
eval "$(bash scripts/pulsar.sh env)"
if [[ $CALLBACK == kafka ]]; then
  if ! bash scripts/kafka.sh status >/dev/null 2>&1; then
    started_kafka=1
    bash scripts/kafka.sh start >&2
  fi
  eval "$(bash scripts/kafka.sh env)"
  # CKafka topics are made by their owner, and so is this one (the broker creates none itself).
  bash scripts/kafka.sh topic ci-callbacks 3
fi

# Demo credentials shared by the emulator (which verifies signatures) and the worker (which signs).
export TENCENTCLOUD_SECRET_ID=AKIDlocalstackdemo0000000000000000
export TENCENTCLOUD_SECRET_KEY=localstackdemosecretkey000000000
export CI_WORKER__PULSAR__URL="$PULSAR_URL"
export CI_WORKER__EMULATOR__LISTEN="127.0.0.1:$EMULATOR_PORT"
export CI_WORKER__EMULATOR__JOB_DURATION="${JOB_DURATION_MS}ms"
export CI_WORKER__CI__ENDPOINT="http://127.0.0.1:$EMULATOR_PORT"
export CI_WORKER__CI__MQ_NAME=ci-callbacks
# TDMQ callbacks through CMQ, as CI delivers them (the defaults, spelled out).
export CI_WORKER__EMULATOR__TDMQ_DELIVERY=cmq
export CI_WORKER__EMULATOR__CMQ_LISTEN="127.0.0.1:$EMULATOR_CMQ_PORT"
export CI_WORKER__EMULATOR__CMQ_QUEUES=ci-callbacks
export CI_WORKER__WORKER__CALLBACK_INGRESS=cmq
export CI_WORKER__CMQ__ENDPOINT="http://127.0.0.1:$EMULATOR_CMQ_PORT"
if [[ $CALLBACK == kafka ]]; then
  # CallBackKafkaConfig on every job; the emulator stands for the CKafka instance.
  export CI_WORKER__CI__CALLBACK_TYPE=Kafka
  export CI_WORKER__CI__KAFKA_REGION=ap-guangzhou
  export CI_WORKER__CI__KAFKA_INSTANCE_ID=ckafka-localstack
  export CI_WORKER__CI__KAFKA_TOPIC=ci-callbacks
  export CI_WORKER__EMULATOR__KAFKA_BROKERS="$KAFKA_BROKERS"
  export CI_WORKER__WORKER__CALLBACK_INGRESS=kafka
  export CI_WORKER__KAFKA__BROKERS="$KAFKA_BROKERS"
fi
export CI_WORKER__PULSAR__CALLBACK_TOPIC=persistent://public/default/ci-callbacks
export CI_WORKER__HTTP__LISTEN="127.0.0.1:$WORKER_HTTP_PORT"

"$BIN" emulator >"$RUN_DIR/emulator.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$EMULATOR_PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$RUN_DIR/emulator.log" >&2; exit 1; }
  sleep 0.1
done
if [[ $CALLBACK == kafka ]]; then
  say "emulator on http://127.0.0.1:$EMULATOR_PORT, events into Kafka $KAFKA_BROKERS topic ci-callbacks (log: $RUN_DIR/emulator.log)"
else
  say "emulator on http://127.0.0.1:$EMULATOR_PORT, its CMQ on http://127.0.0.1:$EMULATOR_CMQ_PORT (log: $RUN_DIR/emulator.log)"
fi

"$BIN" run >"$RUN_DIR/worker.log" 2>&1 &
pids+=($!)
say "worker started (log: $RUN_DIR/worker.log)"

# A fresh request_id per run, so the printed results are this run's.
request_file="$RUN_DIR/request.json"
python3 - "$REQUEST" "$request_file" <<'PY'
import json, sys, uuid
req = json.load(open(sys.argv[1]))
req["request_id"] = f"{req.get('request_id', 'demo')}-{uuid.uuid4().hex[:8]}"
json.dump(req, open(sys.argv[2], "w"))
PY
say "publishing $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["request_id"])' "$request_file") and waiting for its result"
"$BIN" submit "$request_file" --wait --timeout 120

if [[ ${KEEP_RUNNING:-0} == 1 ]]; then
  say "stack is up; Ctrl-C stops it"
  wait
fi
