#!/usr/bin/env bash
# demo.sh - the Compose file's one-shot `demo` service (kinfer-demo in the CLI
# image): builds the XOR demo model, pushes it to the registry in Redis as the
# active version, submits JOBS jobs (default 200) and waits for every result,
# then prints the demo user's usage.  Exits non-zero if any step fails or any
# result is not ok, so `docker compose run demo` is a smoke test of the stack.
# Settings: KINFER_BROKERS, KINFER_REDIS (as every kinfer program), JOBS,
# DEMO_USER, and DEMO_DIR (where the demo JSON lives).
set -euo pipefail

jobs=${JOBS:-200}
user=${DEMO_USER:-demo}
demo_dir=${DEMO_DIR:-/usr/share/kinfer/demo}
case $jobs in '' | *[!0-9]*) echo "kinfer-demo: JOBS must be a number, not '$jobs'" >&2; exit 2 ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kinfer model build "$demo_dir/xor.json" -o "$work/xor.kmodel"
kinfer model push "$work/xor.kmodel" --activate

# One job per line, the four XOR inputs in turn.
for ((i = 0; i < jobs; i++)); do
  echo "[$((i & 1)),$(((i >> 1) & 1))]"
done >"$work/jobs.jsonl"

kinfer submit --model xor --user "$user" --file "$work/jobs.jsonl" --wait --timeout 120 \
  >"$work/results.jsonl"
ok=$(grep -c '"status":"ok"' "$work/results.jsonl" || true)
head -n 4 "$work/results.jsonl"
echo "kinfer-demo: $ok of $jobs results ok"
kinfer usage "$user"
[ "$ok" -eq "$jobs" ]
