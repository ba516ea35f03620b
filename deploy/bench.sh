#!/usr/bin/env bash
# bench.sh - `make bench`: throughput and latency of one kinfer-worker on this
# machine.  Starts a private stack (redis-server on a free loopback port, the
# dev broker, one worker), runs the reference workloads W1-W3 (drain, the
# compute-only limit, open loop at 10, 25 and 50% of drain), samples the worker's RSS,
# prints a table.  Everything it starts is stopped by PID on exit.  The CPU
# figures come from kinfer bench --cpu-pids WORKER,BROKER,REDIS (/proc/PID/stat
# of each process, all its threads); Redis' us/job is the redis-server line.
#
# Settings (environment):
#   BENCH_REPEAT=3         runs per measurement; the table quotes medians
#   BENCH_CORES=$(nproc)   cores given to the worker: its --compute-threads (or,
#                          for a worker without them, its --blas-threads), and
#                          the same for the compute-only limit
#   BENCH_BATCH_ROWS=256   the worker's --batch-max-rows and the compute batch
#   BENCH_PARTITIONS=64    dev broker partitions (each keeps only ~5 MiB!)
#   BENCH_W1_JOBS=300000 BENCH_W2_JOBS=60000 BENCH_W3_JOBS=960   drain sizes
#   BENCH_OPEN_S=8         seconds of each open-loop run
#   BENCH_OPEN_PCT="10 25 50"  open-loop rates, in % of the measured drain throughput
#   BENCH_LINGER_MS=1      the open loop's producer linger.ms (kinfer submit: 5)
#   BENCH_FETCH_WAIT_MS=5  the worker's fetch.wait.max.ms.  The dev broker holds
#                          a fetch that found no data for all of it, even when
#                          data arrives meanwhile; a real broker answers then.
#                          5 ms (instead of the worker's 50) keeps that
#                          artefact out of the latencies, at some broker CPU.
#   BENCH_SOAK_S=0         > 0: then an open-loop soak this long, RSS every 10 s
#   BENCH_SOAK_PCT=25      the soak's rate, in % of the drain throughput
#   BENCH_WORKER_ARGS=     extra worker arguments, e.g. "-X fetch.wait.max.ms=1"
#   BENCH_ONLY="W1 W2 W3"  the workloads to run
#   BENCH_PROFILE=1        also profile one more drain per workload: perf on the
#                          worker (top symbols) and Redis' per-command times
#   BENCH_KEEP=1           keep the run directory (logs, JSON lines)
#   BENCH_OUT=DIR          where the JSON lines and the table go (default BIN/bench)
#   BENCH_RATE_FROM=DIR    take the open-loop rates from the drain JSON lines in DIR
#                          (W1.drain.json, ...) instead of this run's drains
#   BENCH_BIN_OLD=DIR      old against new in one run: see "Old against new" below
#   BENCH_RESULTS=1        the result topic's cost: each workload three times on a
#                          genuine Kafka (BENCH_KAFKA=real), the worker without a
#                          result topic, with --results-topic, and with
#                          --exactly-once too; a table of the three closes (in
#                          /tmp/kinfer-bench-results-*/)
#   BENCH_SIGN=ALG         hmac or ed25519: the worker runs --require-signatures and
#                          kinfer bench signs every job (--sign ALG)
#   BENCH_SIGN_AB=ALG      unsigned against signed in one run: see "Unsigned
#                          against signed" below
#   BENCH_KAFKA=dev        the broker: dev (kinfer-devbroker, the mock cluster), real
#                          (a genuine single-node Apache Kafka 4.x started with
#                          deploy/kafka-local in the run directory, JVM options
#                          BENCH_KAFKA_JAVA_OPTS, default those of Kafka's own
#                          kafka-server-start.sh), or both: see "Dev against real"
#
# The charge records of a run are found (memory report) and deleted at the
# periods of the workers' charge horizon: to change it, set
# KINFER_CHARGE_HORIZON (worker and kinfer bench both read it) rather than
# passing --charge-horizon in BENCH_WORKER_ARGS.
#
# Old against new (BENCH_BIN_OLD=/path/to/old/build): each build is driven by
# its own kinfer CLI (a build of another protocol version cannot read the
# other's results), so this script runs itself once per workload and build,
# each time with a fresh stack of that build's worker and broker: for W1 the
# old build, then the new one, then W2 old, W2 new, ...  The new build's open
# loops run at the old build's rates (BENCH_RATE_FROM), so both see the same
# offered load.  Alternating per workload spreads slow changes of the machine
# over both; the old build always goes first within a workload.  Each run
# prints its own table as it ends; a side-by-side table closes, and all of it
# stays in /tmp/kinfer-bench-ab-*/.  The old build's kinfer bench must take
# this script's options (those of before protocol v2 do); its JSON lines lack
# the Redis memory figures (-).  BENCH_SOAK_S is ignored there.
#
# Dev against real (BENCH_KAFKA=both): this script once per workload and
# broker, like old against new: W1 on the dev broker, then on a genuine Kafka
# (at the dev broker's open-loop rates), then W2, ...  A table of both closes,
# and all of it stays in /tmp/kinfer-bench-kafka-*/.
#
# Unsigned against signed (BENCH_SIGN_AB=hmac or ed25519): this script once
# per workload and side, like old against new: W1 unsigned (the worker
# without --require-signatures), then W1 signed (BENCH_SIGN), at the unsigned
# run's open-loop rates, then W2, ...  The side-by-side table closes; the
# worker's us/job column is the cost of verifying.  All of it stays in
# /tmp/kinfer-bench-sign-*/.
set -euo pipefail
BIN=${1:-build}
BIN=$(cd "$BIN" && pwd)
REPEAT=${BENCH_REPEAT:-3}
CORES=${BENCH_CORES:-$(nproc)}
BATCH_ROWS=${BENCH_BATCH_ROWS:-256}
PARTITIONS=${BENCH_PARTITIONS:-64}
OPEN_S=${BENCH_OPEN_S:-8}
OPEN_PCT=${BENCH_OPEN_PCT:-10 25 50}
LINGER_MS=${BENCH_LINGER_MS:-1}
FETCH_WAIT_MS=${BENCH_FETCH_WAIT_MS:-5}
SOAK_PCT=${BENCH_SOAK_PCT:-25}
SOAK_S=${BENCH_SOAK_S:-0}
ONLY=${BENCH_ONLY:-W1 W2 W3}
declare -A JOBS=([W1]=${BENCH_W1_JOBS:-300000} [W2]=${BENCH_W2_JOBS:-60000}
                 [W3]=${BENCH_W3_JOBS:-960})
declare -A MODEL=([W1]=tiny [W2]=mnist [W3]=mnist)
declare -A ROWS=([W1]=1 [W2]=1 [W3]=64)
declare -A WHAT=([W1]="MLP 16-32-4, 1 row/job" [W2]="MLP 784-512-512-10, 1 row/job"
                 [W3]="MLP 784-512-512-10, 64 rows/job")
PY=/usr/bin/python3

KAFKA=${BENCH_KAFKA:-dev}
case "$KAFKA" in dev | real | both) ;; *) echo "bench: BENCH_KAFKA=$KAFKA: dev, real or both" >&2; exit 2 ;; esac

# ---- dev against real: this script once per workload and broker -------------
if [ "$KAFKA" = both ]; then
  AB=$(mktemp -d /tmp/kinfer-bench-kafka-XXXXXX)
  rc=0
  for w in $ONLY; do
    for side in dev real; do
      from=$([ $side = real ] && echo "$AB/dev/$w" || echo "")
      printf '\n======== %s, %s broker\n' "$w" "$side" >&2
      BENCH_KAFKA=$side BENCH_ONLY=$w BENCH_OUT=$AB/$side/$w BENCH_RATE_FROM=$from \
        BENCH_SOAK_S=0 bash "$0" "$BIN" || { echo "bench: the $side broker's $w run failed" >&2; rc=1; }
    done
  done
  $PY "$(dirname "$0")/bench_compare.py" "$AB" "$ONLY" "$OPEN_PCT" dev:kinfer-devbroke real:java \
    "One worker on the dev broker against a genuine Apache Kafka (one node): medians; per workload the dev broker first." \
    | tee "$AB/compare.md"
  echo "bench: dev against real: JSON lines and tables in $AB/{dev,real}/W*/, this table in" \
    "$AB/compare.md" >&2
  exit $rc
fi

# ---- the result topic: off, on, exactly once, on the genuine Kafka ----------
if [ "${BENCH_RESULTS:-0}" = 1 ]; then
  AB=$(mktemp -d /tmp/kinfer-bench-results-XXXXXX)
  rc=0
  declare -A VARIANT=([off]="" [on]="--results-topic kinfer.results"
                      [eos]="--results-topic kinfer.results --exactly-once")
  for w in $ONLY; do
    for side in off on eos; do
      from=$([ $side != off ] && echo "$AB/off/$w" || echo "")
      printf '\n======== %s, result topic %s\n' "$w" "$side" >&2
      BENCH_RESULTS=0 BENCH_KAFKA=real KINFER_RESULTS_TOPIC=kinfer.results BENCH_ONLY=$w \
        BENCH_OUT=$AB/$side/$w BENCH_RATE_FROM=$from BENCH_SOAK_S=0 \
        BENCH_WORKER_ARGS="${BENCH_WORKER_ARGS:-} ${VARIANT[$side]}" bash "$0" "$BIN" ||
        { echo "bench: the $w run with the result topic $side failed" >&2; rc=1; }
    done
  done
  $PY "$(dirname "$0")/bench_compare.py" "$AB" "$ONLY" "$OPEN_PCT" off:java on:java eos:java \
    "One worker on a genuine Kafka: no result topic (off), --results-topic (on), and --exactly-once (eos); medians, per workload in that order." \
    | tee "$AB/compare.md"
  echo "bench: result topic off/on/eos: JSON lines and tables in $AB/{off,on,eos}/W*/, this" \
    "table in $AB/compare.md" >&2
  exit $rc
fi

# ---- unsigned against signed: this script once per workload and side ---------
if [ -n "${BENCH_SIGN_AB:-}" ]; then
  AB=$(mktemp -d /tmp/kinfer-bench-sign-XXXXXX)
  rc=0
  for w in $ONLY; do
    for side in plain signed; do
      sign=$([ $side = signed ] && echo "$BENCH_SIGN_AB" || echo "")
      from=$([ $side = signed ] && echo "$AB/plain/$w" || echo "")
      printf '\n======== %s, %s\n' "$w" "$([ $side = signed ] && echo "signed ($sign)" || echo unsigned)" >&2
      BENCH_SIGN_AB='' BENCH_SIGN=$sign BENCH_ONLY=$w BENCH_OUT=$AB/$side/$w \
        BENCH_RATE_FROM=$from BENCH_SOAK_S=0 bash "$0" "$BIN" ||
        { echo "bench: the $side $w run failed" >&2; rc=1; }
    done
  done
  $PY "$(dirname "$0")/bench_compare.py" "$AB" "$ONLY" "$OPEN_PCT" plain:kinfer-devbroke signed:kinfer-devbroke \
    "Unsigned against signed ($BENCH_SIGN_AB, worker --require-signatures): medians; each on its own stack, per workload the unsigned one first." \
    | tee "$AB/compare.md"
  echo "bench: unsigned against signed: JSON lines and tables in $AB/{plain,signed}/W*/, this" \
    "table in $AB/compare.md" >&2
  exit $rc
fi

# With BENCH_SIGN, every job is signed and the worker requires it.
SIGN_ARGS=()
SIGN_WORKER=()
case "${BENCH_SIGN:-}" in
  "") ;;
  hmac | ed25519) SIGN_ARGS=(--sign "$BENCH_SIGN"); SIGN_WORKER=(--require-signatures) ;;
  *) echo "bench: BENCH_SIGN=$BENCH_SIGN: hmac or ed25519" >&2; exit 2 ;;
esac

# ---- old against new: this script once per workload and build --------------
if [ -n "${BENCH_BIN_OLD:-}" ]; then
  OLD=$(cd "$BENCH_BIN_OLD" && pwd)
  AB=$(mktemp -d /tmp/kinfer-bench-ab-XXXXXX)
  rc=0
  for w in $ONLY; do
    for side in old new; do
      bin=$([ $side = old ] && echo "$OLD" || echo "$BIN")
      from=$([ $side = new ] && echo "$AB/old/$w" || echo "")
      printf '\n======== %s, %s build (%s)\n' "$w" "$side" "$bin" >&2
      BENCH_BIN_OLD='' BENCH_ONLY=$w BENCH_OUT=$AB/$side/$w BENCH_RATE_FROM=$from BENCH_SOAK_S=0 \
        bash "$0" "$bin" || { echo "bench: the $side build's $w run failed" >&2; rc=1; }
    done
  done
  # the side-by-side table, from both builds' JSON lines
  $PY "$(dirname "$0")/bench_compare.py" "$AB" "$ONLY" "$OPEN_PCT" old:kinfer-devbroke new:kinfer-devbroke \
    "Old ($OLD) against new ($BIN): medians; each build on its own stack, per workload the old one first." \
    | tee "$AB/compare.md"
  echo "bench: old against new: JSON lines and tables in $AB/{old,new}/W*/, this table in" \
    "$AB/compare.md" >&2
  exit $rc
fi

RUN=$(mktemp -d /tmp/kinfer-bench-XXXXXX)
PIDS=()

say() { printf '\n== %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  if [ -n "${SAMPLER_PID:-}" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  # The worker first, and alone: SIGTERM makes it finish in-flight jobs,
  # commit and leave the group, which needs the broker still up.  A worker
  # that has not exited after 20 s gets a second SIGTERM (exit at once).
  for pid in "${PIDS[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "bench: pid $pid did not stop within 20 s; signalling it again" >&2
      kill -TERM "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "bench: logs and JSON lines kept in $RUN" >&2
  else
    rm -rf "$RUN"
  fi
  exit $rc
}
trap cleanup EXIT INT TERM

free_port() {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# median FILE FIELD: the median of a numeric field over the JSON lines of FILE
median() {
  $PY -c 'import json,statistics,sys
v=[json.loads(l).get(sys.argv[2]) for l in open(sys.argv[1]) if l.strip()]
v=[x for x in v if x is not None]
print(round(statistics.median(v), 3) if v else "-")' "$1" "$2"
}

# sum FILE FIELD: the sum of a numeric field over the JSON lines of FILE
sum() {
  $PY -c 'import json,sys
print(sum(json.loads(l)[sys.argv[2]] for l in open(sys.argv[1]) if l.strip()))' "$1" "$2"
}

# median_cpu FILE PROC FIELD: the median of "cpu": {PROC: {FIELD: x}} (the CPU
# kinfer bench --cpu-pids saw each process use while the jobs ran)
median_cpu() {
  $PY -c 'import json,statistics,sys
v=[json.loads(l).get("cpu",{}).get(sys.argv[2],{}).get(sys.argv[3]) for l in open(sys.argv[1])]
v=[x for x in v if x is not None]
print(round(statistics.median(v), 2) if v else "-")' "$1" "$2" "$3"
}

rss_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# busy_cores: how many cores the machine keeps busy over 2 s (/proc/stat)
busy_cores() {
  local a b
  a=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat)
  sleep 2
  b=$(awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat)
  $PY -c "print(round(($b - $a) / $(getconf CLK_TCK) / 2, 2))"
}

# The numbers mean something only on an otherwise idle machine: wait up to
# BENCH_QUIET_WAIT_S (60) seconds for it to become idle, then go on anyway.
wait_quiet() {
  local busy waited=0
  while busy=$(busy_cores); [ "$($PY -c "print(int($busy > 0.2))")" = 1 ]; do
    if [ "$waited" -ge "${BENCH_QUIET_WAIT_S:-60}" ]; then
      echo "bench: the machine stays busy ($busy cores used by others): numbers will be" \
        "unreliable" >&2
      return
    fi
    echo "bench: the machine is busy ($busy cores); waiting for it to settle" >&2
    sleep 3; waited=$((waited + 5))
  done
}

# ---- the machine ------------------------------------------------------------
say "machine"
{
  vm=$(lscpu | sed -n 's/^Hypervisor vendor: *\(.*\)/\1 guest/p')
  echo "cpus:       $(nproc) ($(lscpu | sed -n 's/^Model name: *//p'), family $(lscpu |
    sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p'), ${vm:-bare metal})"
  echo "memory:     $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "kernel:     $(uname -r)"
  echo "librdkafka: $(pkg-config --modversion rdkafka)  openblas: $(pkg-config --modversion \
openblas) ($(OPENBLAS_VERBOSE=2 "$BIN/kinfer" --help 2>&1 | sed -n 's/^Core: //p')\
 kernels)  hiredis: $(pkg-config --modversion hiredis)"
  echo "redis:      $(redis-server --version | sed 's/^Redis server v=\([^ ]*\).*/\1/')"
  echo "load:       $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
} | tee "$RUN/machine.txt" >&2

# ---- the stack ----------------------------------------------------------------
say "starting redis-server, the $([ "$KAFKA" = real ] && echo "Kafka broker" || echo "dev broker") ($PARTITIONS partitions), one worker"
PORT=$(free_port)
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN" \
  >"$RUN/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export KINFER_REDIS="redis://127.0.0.1:$PORT/0"

if [ "$KAFKA" = real ]; then
  # deploy/kafka-local: the real-Kafka tests' broker, here with Kafka's own
  # JVM settings rather than the tests' small, quickly started JVM.
  KINFER_KAFKA_PORT=$(free_port) KINFER_KAFKA_PARTITIONS=$PARTITIONS \
    KINFER_KAFKA_JAVA_OPTS=${BENCH_KAFKA_JAVA_OPTS:-"-Xmx1G -Xms1G -server -XX:+UseG1GC \
-XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent"} \
    BUILD="$BIN" bash "$(dirname "$0")/kafka-local" start "$RUN/kafka" >"$RUN/broker.out" \
    2>"$RUN/broker.log" || { cat "$RUN/broker.log" >&2; exit 1; }
  BROKER_PID=$(cat "$RUN/kafka/kafka.pid")
else
  "$BIN/kinfer-devbroker" --partitions "$PARTITIONS" </dev/null >"$RUN/broker.out" \
    2>"$RUN/broker.log" &
  BROKER_PID=$!
  for _ in $(seq 50); do [ -s "$RUN/broker.out" ] && break; sleep 0.1; done
fi
KINFER_BROKERS=$(head -1 "$RUN/broker.out")
export KINFER_BROKERS
unset KINFER_TOPIC KINFER_PREFIX

mkdir -p "$RUN/models"
"$BIN/kinfer" model init tiny --dims 16,32,4 --seed 1 -o "$RUN/models/tiny.kmodel" 2>/dev/null
"$BIN/kinfer" model init mnist --dims 784,512,512,10 --seed 1 -o "$RUN/models/mnist.kmodel" \
  2>/dev/null

# The cores go to compute threads with one OpenBLAS thread each when the
# worker has them, else to OpenBLAS threads; the compute-only limit runs the
# same way.
# (--help read whole first: under pipefail, `--help | grep -q` fails whenever
# grep exits before the worker has written all of it)
worker_help=$("$BIN/kinfer-worker" --help 2>&1 || true)
if grep -q -- '--compute-threads' <<<"$worker_help"; then
  WORKER_THREADS=(--compute-threads "$CORES" --blas-threads 1)
  COMPUTE_THREADS=(--threads "$CORES" --blas-threads 1)
else
  WORKER_THREADS=(--blas-threads "$CORES")
  COMPUTE_THREADS=(--threads 1 --blas-threads "$CORES")
fi

# The worker's flags only: KINFER_RESULTS_TOPIC, set for kafka-local to
# create the topic, is also the worker's --results-topic variable, and would
# turn the result topic on in BENCH_RESULTS' "off" run.
# shellcheck disable=SC2086 # BENCH_WORKER_ARGS is a list of arguments
env -u KINFER_RESULTS_TOPIC "$BIN/kinfer-worker" --models "$RUN/models" --worker-id bench "${WORKER_THREADS[@]}" \
  --batch-max-rows "$BATCH_ROWS" --log-level warn -X "fetch.wait.max.ms=$FETCH_WAIT_MS" \
  ${SIGN_WORKER[@]+"${SIGN_WORKER[@]}"} ${BENCH_WORKER_ARGS:-} >"$RUN/worker.log" 2>&1 &
WORKER_PID=$!
PIDS=("$WORKER_PID" "$BROKER_PID" "$REDIS_PID")
CPU_PIDS="$WORKER_PID,$BROKER_PID,$REDIS_PID"
echo "redis $KINFER_REDIS (pid $REDIS_PID), brokers $KINFER_BROKERS (pid $BROKER_PID)," \
  "worker pid $WORKER_PID: ${WORKER_THREADS[*]} --batch-max-rows $BATCH_ROWS" \
  "-X fetch.wait.max.ms=$FETCH_WAIT_MS ${SIGN_WORKER[*]:-} ${BENCH_WORKER_ARGS:-}" >&2

# Backlog sizing: a job is about rows*cols*4 bytes plus ~200 of msgpack, key
# and framing; users are spread evenly, so each partition holds 1/PARTITIONS.
for w in $ONLY; do
  cols=$([ "${MODEL[$w]}" = tiny ] && echo 16 || echo 784)
  per=$(( JOBS[$w] * (ROWS[$w] * cols * 4 + 200) / PARTITIONS ))
  if [ "$KAFKA" = dev ] && [ "$per" -gt $((4 * 1024 * 1024)) ]; then
    echo "bench: $w's backlog is ~$((per / 1024)) KiB per partition, over the dev broker's" \
      "~5 MiB retention: raise BENCH_PARTITIONS or lower BENCH_${w}_JOBS" >&2
    exit 2
  fi
done

# The first join of a new consumer group takes the mock 3 s; a few jobs of
# each model also load the models before anything is timed.
wait_quiet
say "warm-up (group join, model loads)"
"$BIN/kinfer" bench -q --model-file "$RUN/models/tiny.kmodel" --jobs 200 --timeout 30 \
  ${SIGN_ARGS[@]+"${SIGN_ARGS[@]}"} >/dev/null
"$BIN/kinfer" bench -q --model-file "$RUN/models/mnist.kmodel" --jobs 200 --timeout 30 \
  ${SIGN_ARGS[@]+"${SIGN_ARGS[@]}"} >/dev/null
RSS_START=$(rss_kb "$WORKER_PID" VmRSS)

# RSS sampler: every second during the runs
( while kill -0 "$WORKER_PID" 2>/dev/null; do
    echo "$(date +%s) $(rss_kb "$WORKER_PID" VmRSS) $(rss_kb "$WORKER_PID" VmHWM)"
    sleep 1
  done >"$RUN/rss.log" ) &
SAMPLER_PID=$!

# ---- drain and compute-only, interleaved so both see the same machine ------
for w in $ONLY; do
  say "$w: ${WHAT[$w]}: drain ${JOBS[$w]} jobs vs compute-only, $REPEAT times"
  mf="$RUN/models/${MODEL[$w]}.kmodel"
  for _ in $(seq "$REPEAT"); do
    "$BIN/kinfer" bench --mode compute --model-file "$mf" --rows-per-job "${ROWS[$w]}" \
      --jobs "${JOBS[$w]}" --batch-rows "$BATCH_ROWS" "${COMPUTE_THREADS[@]}" \
      | tee -a "$RUN/$w.compute.json" >&2 || echo "bench: a $w compute run failed" >&2
    "$BIN/kinfer" bench --mode drain --model-file "$mf" --rows-per-job "${ROWS[$w]}" \
      --jobs "${JOBS[$w]}" --users "$PARTITIONS" --pause-pid "$WORKER_PID" --cpu-pids "$CPU_PIDS" \
      ${SIGN_ARGS[@]+"${SIGN_ARGS[@]}"} \
      | tee -a "$RUN/$w.drain.json" >&2 || echo "bench: a $w drain run failed" >&2
  done
  rss_kb "$WORKER_PID" VmRSS >"$RUN/$w.rss_after"
done

# ---- optional profile: one more drain each, perf on the worker ---------------
if [ "${BENCH_PROFILE:-0}" = 1 ]; then
  for w in $ONLY; do
    say "$w: profiling a drain (perf record -e cpu-clock on the worker, Redis commandstats)"
    redis-cli -p "$PORT" CONFIG RESETSTAT >/dev/null
    perf record -q -e cpu-clock -F 999 -o "$RUN/$w.perf" -p "$WORKER_PID" -- sleep 3600 \
      2>"$RUN/$w.perf.log" &
    perf_pid=$!
    sleep 0.5
    "$BIN/kinfer" bench -q --mode drain --model-file "$RUN/models/${MODEL[$w]}.kmodel" \
      --rows-per-job "${ROWS[$w]}" --jobs "${JOBS[$w]}" --users "$PARTITIONS" \
      --pause-pid "$WORKER_PID" --keep >/dev/null || true
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    top=$(perf report -i "$RUN/$w.perf" --sort dso,symbol --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' | sed 's/ *- *- *$//' | head -20 || true)
    { echo "== $w: worker CPU by symbol (perf, cpu-clock)"
      echo "${top:-(perf recorded nothing: see $RUN/$w.perf.log)}"
      echo "== $w: Redis time per command during the drain (INFO commandstats)"
      redis-cli -p "$PORT" INFO commandstats | grep '^cmdstat' | tr -d '\r' |
        sed 's/^cmdstat_//;s/,rejected_calls.*//'
      redis-cli -p "$PORT" FLUSHALL >/dev/null
    } >"$RUN/$w.profile.txt"
  done
fi

# rate W PCT: PCT% of W's median drain throughput (this run's, or BENCH_RATE_FROM's), in jobs/s
rate() {
  local f=$RUN/$1.drain.json
  if [ -n "${BENCH_RATE_FROM:-}" ] && [ -s "$BENCH_RATE_FROM/$1.drain.json" ]; then
    f=$BENCH_RATE_FROM/$1.drain.json
  fi
  $PY -c "print(max(1, int($(median "$f" jobs_per_s) * $2 / 100)))"
}

# ---- open loop at a fraction of the measured drain throughput ----------------
for w in $ONLY; do
  for pct in $OPEN_PCT; do
    r=$(rate "$w" "$pct")
    say "$w: open loop at $r jobs/s ($pct% of drain) for $OPEN_S s, $REPEAT times"
    for _ in $(seq "$REPEAT"); do
      "$BIN/kinfer" bench --mode open --model-file "$RUN/models/${MODEL[$w]}.kmodel" \
        --rows-per-job "${ROWS[$w]}" --rate "$r" --duration "$OPEN_S" --users "$PARTITIONS" \
        -X "linger.ms=$LINGER_MS" --cpu-pids "$CPU_PIDS" ${SIGN_ARGS[@]+"${SIGN_ARGS[@]}"} |
        tee -a "$RUN/$w.open$pct.json" >&2 ||
        echo "bench: a $w open-loop run failed" >&2
    done
  done
done
RSS_AFTER=$(rss_kb "$WORKER_PID" VmRSS)

# ---- optional soak: W1..W3 in turn, 60 s open-loop runs, RSS every 10 s -----
if [ "$SOAK_S" -gt 0 ]; then
  say "soak: $SOAK_S s of open loop at $SOAK_PCT% of drain, W1/W2/W3 in turn, RSS every 10 s"
  ( t0=$(date +%s)
    while kill -0 "$WORKER_PID" 2>/dev/null; do
      echo "$(( $(date +%s) - t0 )) $(rss_kb "$WORKER_PID" VmRSS) $(rss_kb "$WORKER_PID" VmHWM)"
      sleep 10
    done >"$RUN/soak_rss.log" ) &
  SOAK_SAMPLER=$!
  end=$(( $(date +%s) + SOAK_S )); k=0
  read -r -a ws <<<"$ONLY"
  while [ "$(date +%s)" -lt "$end" ]; do
    w=${ws[$((k % ${#ws[@]}))]}
    left=$(( end - $(date +%s) )); d=$(( left < 60 ? left : 60 ))
    [ "$d" -lt 1 ] && break
    "$BIN/kinfer" bench -q --mode open --model-file "$RUN/models/${MODEL[$w]}.kmodel" \
      --rows-per-job "${ROWS[$w]}" --rate "$(rate "$w" "$SOAK_PCT")" --duration "$d" \
      --users "$PARTITIONS" --cpu-pids "$CPU_PIDS" \
      | tee -a "$RUN/soak.json" >&2 || echo "bench: a $w soak run failed" >&2
    k=$((k + 1))
  done
  kill "$SOAK_SAMPLER" 2>/dev/null || true
  wait "$SOAK_SAMPLER" 2>/dev/null || true
fi
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=

# ---- the table ------------------------------------------------------------------
say "results (medians of $REPEAT runs)"
W=kinfer-worker R=redis-server   # /proc/PID/comm names
K=$([ "$KAFKA" = real ] && echo java || echo kinfer-devbroke)   # the broker's: a JVM is "java"
{
  echo "Drain (a backlog published while the worker is stopped, then timed until every"
  echo "result can be read; write lag: how long after the last \`done\`) against the"
  echo "compute-only limit (the same rows through model_forward in"
  echo "batches of $BATCH_ROWS rows, ${COMPUTE_THREADS[*]}, no queue or Redis).  Worker:"
  echo "${WORKER_THREADS[*]}.  CPU: µs per job each process used during the drain; cores:"
  echo "busy cores (worker, whole machine, and 'other': processes that are not part of the"
  echo "benchmark: should be ~0).  Redis memory once every result of a drain exists: bytes"
  echo "per result (its key, value, keyspace and expire entries, share of the hash tables)"
  echo "and per charge record (one field of the user's record hash); a v1 build has no such"
  echo "figures (-)."
  echo
  echo "| workload | drain jobs/s | drain rows/s | compute-only rows/s | drain/compute |" \
    "write lag ms | worker µs/job | broker µs/job | redis µs/job | redis B/result |" \
    "B/charge record | worker cores | machine cores | other cores (drain/compute) | errors |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
  for w in $ONLY; do
    d=$RUN/$w.drain.json c=$RUN/$w.compute.json
    dr=$(median "$d" rows_per_s) cr=$(median "$c" rows_per_s)
    printf '| %s (%s) | %s | %s | %s | %s%% | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n' \
      "$w" "${WHAT[$w]}" "$(median "$d" jobs_per_s)" "$dr" "$cr" \
      "$($PY -c "print(round(100 * $dr / $cr, 1) if $cr else 0)")" "$(median "$d" write_lag_ms)" \
      "$(median_cpu "$d" $W us_per_job)" "$(median_cpu "$d" $K us_per_job)" \
      "$(median_cpu "$d" $R us_per_job)" "$(median "$d" redis_bytes_per_result)" \
      "$(median "$d" redis_bytes_per_charge_record)" "$(median_cpu "$d" $W cores)" \
      "$(median_cpu "$d" machine cores)" "$(median_cpu "$d" other cores)" \
      "$(median_cpu "$c" other cores)" "$(( $(sum "$d" errors) + $(sum "$d" missing) ))"
  done
  echo
  echo "Open loop at ${OPEN_PCT// /, }% of the drain throughput, $OPEN_S s per run, producer"
  echo "linger.ms=$LINGER_MS, worker fetch.wait.max.ms=$FETCH_WAIT_MS; latency = the"
  echo "result's \`done\` (when it was computed) minus the job's scheduled produce time;"
  echo "visible = until the result could be read (the job's id popped from its inbox, for"
  echo "1000 jobs per run; every job names the run's inbox).  ms; \`done\` has 1 ms"
  echo "resolution.  achieved < rate: the queue grew."
  echo
  echo "| workload | rate jobs/s | achieved jobs/s | p50 ms | p90 ms | p99 ms | max ms |" \
    "visible p50 | visible p99 | worker cores | broker cores | machine cores | other cores |" \
    "errors |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
  for w in $ONLY; do
    for pct in $OPEN_PCT; do
      o=$RUN/$w.open$pct.json
      printf '| %s @%s%% | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$w" "$pct" "$(median "$o" rate)" "$(median "$o" jobs_per_s)" "$(median "$o" p50_ms)" \
        "$(median "$o" p90_ms)" "$(median "$o" p99_ms)" "$(median "$o" max_ms)" \
        "$(median "$o" visible_p50_ms)" "$(median "$o" visible_p99_ms)" \
        "$(median_cpu "$o" $W cores)" "$(median_cpu "$o" $K cores)" \
        "$(median_cpu "$o" machine cores)" "$(median_cpu "$o" other cores)" \
        "$(( $(sum "$o" errors) + $(sum "$o" missing) ))"
    done
  done
  echo
  echo "worker RSS: $((RSS_START / 1024)) MiB after warm-up, peak" \
    "$(( $(awk 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$RUN/rss.log") / 1024 )) MiB" \
    "during the runs (VmHWM $(( $(tail -1 "$RUN/rss.log" | cut -d' ' -f3) / 1024 )) MiB)," \
    "$((RSS_AFTER / 1024)) MiB after them;" \
    "$(for w in $ONLY; do printf '%s ' "after $w $(( $(cat "$RUN/$w.rss_after") / 1024 )) MiB"; done)"
  if [ "$SOAK_S" -gt 0 ]; then
    echo
    echo "soak ($SOAK_S s, $(wc -l <"$RUN/soak.json") open-loop runs, errors+missing" \
      "$(( $(sum "$RUN/soak.json" errors) + $(sum "$RUN/soak.json" missing) ))), worker VmRSS" \
      "MiB every 10 s:"
    awk '{printf "%s%d", (NR > 1 ? " " : ""), $2 / 1024} END {print ""}' "$RUN/soak_rss.log"
  fi
  other=$(cat "$RUN"/W*.json 2>/dev/null | $PY -c 'import json,statistics,sys
v=[json.loads(l).get("cpu",{}).get("other",{}).get("cores") for l in sys.stdin if l.strip()]
v=[x for x in v if x is not None]
print(round(statistics.median(v), 2) if v else 0)')
  echo
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg); median CPU of other processes" \
    "during the runs: $other cores"
  if [ "$($PY -c "print(int($other > 0.1))")" = 1 ]; then
    echo
    echo "WARNING: other processes kept $other cores busy during the runs: these numbers are" \
      "not reliable; rerun on an idle machine."
  fi
} | tee "$RUN/results.md"
if [ "${BENCH_PROFILE:-0}" = 1 ]; then
  echo
  cat "$RUN"/W*.profile.txt
fi
OUT=${BENCH_OUT:-$BIN/bench}
mkdir -p "$OUT"
cp "$RUN"/*.json "$RUN"/*.txt "$RUN"/results.md "$RUN"/rss.log "$OUT/" 2>/dev/null || true
rm -f "$RUN"/*.perf
[ "$SOAK_S" -gt 0 ] && cp "$RUN/soak_rss.log" "$OUT/"
echo >&2
echo "bench: JSON lines and this table are in $OUT/" >&2
