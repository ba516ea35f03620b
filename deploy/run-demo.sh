#!/usr/bin/env bash
# run-demo.sh - `make run`: a private kinfer stack on this machine, a short
# demo, then a clean shutdown.  Starts a real redis-server on a free loopback
# port and the dev broker (librdkafka's mock cluster), two workers in one
# consumer group, submits jobs with the kinfer CLI and prints the results and
# the usage counters.  Everything it starts is stopped by PID on exit.
set -euo pipefail
BIN=${1:-build}
BIN=$(cd "$BIN" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
RUN=$(mktemp -d /tmp/kinfer-run-XXXXXX)
PIDS=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  local rc=$?
  say "shutting down"
  # workers first (SIGTERM: finish in-flight jobs, commit, leave the group)
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped ${#PIDS[@]} processes; logs were in $RUN"
  rm -rf "$RUN"
  exit $rc
}
trap cleanup EXIT INT TERM

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

say "starting redis-server on a free loopback port"
PORT=$(free_port)
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" \
  >"$RUN/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export KINFER_REDIS="redis://127.0.0.1:$PORT/0"
echo "redis: $KINFER_REDIS (pid $REDIS_PID)"

say "starting the dev broker (librdkafka mock cluster, 4 partitions)"
mkfifo "$RUN/broker.ctl"
"$BIN/kinfer-devbroker" --partitions 4 <"$RUN/broker.ctl" >"$RUN/broker.out" 2>"$RUN/broker.log" &
BROKER_PID=$!
exec 3>"$RUN/broker.ctl"   # keep its control channel open
for _ in $(seq 50); do [ -s "$RUN/broker.out" ] && break; sleep 0.1; done
KINFER_BROKERS=$(head -1 "$RUN/broker.out")
export KINFER_BROKERS
echo "brokers: $KINFER_BROKERS (pid $BROKER_PID)"

say "building demo models into $RUN/models"
mkdir -p "$RUN/models"
"$BIN/kinfer" model build "$HERE/demo/xor.json" -o "$RUN/models/xor.kmodel"
"$BIN/kinfer" model build "$HERE/demo/c2f.json" -o "$RUN/models/c2f.kmodel"
"$BIN/kinfer" model init iris --dims 4,16,3 --act relu,softmax --seed 7 -o "$RUN/models/iris.kmodel"

say "starting two workers in consumer group kinfer-workers"
for i in 1 2; do
  "$BIN/kinfer-worker" --models "$RUN/models" --worker-id "demo-worker-$i" \
    >"$RUN/worker$i.log" 2>&1 &
  PIDS+=($!)
done
PIDS+=("$BROKER_PID" "$REDIS_PID")

say "xor: 4 rows as arguments, waiting for the result"
echo "\$ kinfer submit --model xor --user alice --wait 0,0 0,1 1,0 1,1"
"$BIN/kinfer" submit --model xor --user alice --wait 0,0 0,1 1,0 1,1

say "c2f: Celsius to Fahrenheit (-40 -> -40, 0 -> 32, 100 -> 212)"
echo "\$ kinfer submit --model c2f --user bob --wait -- -40 0 37 100"
"$BIN/kinfer" submit --model c2f --user bob --wait -- -40 0 37 100

say "iris (random weights): one job per CSV line, argmax output"
echo "\$ kinfer submit --model iris --user alice --file iris-like.csv --output argmax --wait"
"$BIN/kinfer" submit --model iris --user alice --file "$HERE/demo/iris-like.csv" \
  --output argmax --wait

say "asynchronous: submit now, fetch later"
ID=$("$BIN/kinfer" submit --model xor --user carol 1,1)
echo "submitted $ID"
echo "\$ kinfer wait --user carol $ID"
"$BIN/kinfer" wait --user carol "$ID"

say "a bad job gets an error result, the worker carries on"
"$BIN/kinfer" submit --model xor --user carol --wait 1,2,3 || echo "(exit status $?: the job failed, as it should)"

say "a quota: dave may run 2 jobs per hour; the third is refused, not charged"
"$BIN/kinfer" quota set dave --jobs 2 --window 3600
printf '[0,1]\n[1,0]\n[1,1]\n' > "$RUN/dave.jsonl"
echo "\$ kinfer submit --model xor --user dave --file dave.jsonl --wait"
"$BIN/kinfer" submit --model xor --user dave --file "$RUN/dave.jsonl" --wait ||
  echo "(exit status $?: one job was over quota)"

say "usage counters"
for u in alice bob carol dave; do echo "-- $u"; "$BIN/kinfer" usage "$u"; done
