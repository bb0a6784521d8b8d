#!/usr/bin/env bash
# The gateway's CPU instructions per proxied request, counted by valgrind's callgrind.
#
# Wall-clock throughput on a shared 2-core machine drifts by tens of percent within minutes
# (BENCHMARKS.md, runs 11a–11e); an instruction count does not depend on what else the machine
# is doing, so it can compare two builds of the gateway at any time. It counts every thread of
# the gateway process (request path, usage-log writer, timers) over N requests after a warm-up,
# the mock upstream and the client running natively outside valgrind.
#
# Usage: bench/gateway_instructions.sh                     (builds and measures target/release)
#        BINS="/tmp/old /tmp/new" REPEAT=3 N=3000 C=8 bench/gateway_instructions.sh
#        (measures each given gatehouse binary REPEAT times, alternating; MOCK_BIN=… skips
#        building the mock upstream)
# Needs: valgrind, ab (apache2-utils), curl, python3; installs valgrind and ab with apt if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-3000}
C=${C:-8}
REPEAT=${REPEAT:-2}
WARMUP=${WARMUP:-300}
MOCK=127.0.0.1:19111
GATE=127.0.0.1:19110

for tool in valgrind:valgrind ab:apache2-utils; do
  command -v "${tool%%:*}" >/dev/null || apt-get install -y -qq "${tool#*:}" >&2
done
if [ -z "${BINS:-}" ]; then
  cargo build --release --quiet --bin gatehouse
  BINS=target/release/gatehouse
fi
if [ -z "${MOCK_BIN:-}" ]; then
  cargo build --release --quiet --features bench-tools --example mock_upstream
  MOCK_BIN=target/release/examples/mock_upstream
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$MOCK_BIN" "$MOCK" 2>/dev/null & pids+=($!)
python3 - "$work/body.json" <<'EOF'
import json, sys
prompt = ("lorem ipsum dolor sit amet " * 40)[:1024]
json.dump({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}, open(sys.argv[1], "w"))
EOF

# One measurement: a fresh database and process under callgrind; counters zeroed after the
# warm-up, dumped after N requests. Prints the instructions per request.
measure() { # binary run-number
  local bin=$1 i=$2 db="$work/bench-$2.db"
  export GATEHOUSE_LISTEN=$GATE GATEHOUSE_DATABASE_URL="sqlite://$db" GATEHOUSE_LOG_LEVEL=error \
    GATEHOUSE_BOOTSTRAP_ADMIN=false GATEHOUSE_SERVE_THREADS=1
  # The mock upstream is on loopback (builds older than the provider SSRF guard lack the switch).
  unset GATEHOUSE_ALLOW_PRIVATE_PROVIDER_TARGETS
  if grep -q allow_private_provider_targets "$bin"; then export GATEHOUSE_ALLOW_PRIVATE_PROVIDER_TARGETS=true; fi
  "$bin" admin create --email admin@bench.local --password load-test-passphrase-9 >/dev/null
  valgrind --tool=callgrind --callgrind-out-file="$work/cg-$i.out" "$bin" >/dev/null 2>"$work/vg-$i.log" &
  local vg=$!
  for _ in $(seq 1 600); do curl -s -o /dev/null "http://$GATE/health/live" && break; sleep 0.1; done
  . bench/org.sh
  local ab_args=(-q -k -c "$C" -p "$work/body.json" -T application/json -H "Authorization: Bearer $key")
  ab "${ab_args[@]}" -n "$WARMUP" "http://$GATE/openai/v1/chat/completions" >/dev/null
  callgrind_control -z "$vg" >/dev/null 2>&1
  ab "${ab_args[@]}" -n "$N" "http://$GATE/openai/v1/chat/completions" > "$work/ab-$i.txt"
  callgrind_control -d "$vg" >/dev/null 2>&1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  local failed total
  failed=$(awk '/^Failed requests:/{print $3}' "$work/ab-$i.txt")
  [ "$failed" = 0 ] || { echo "$bin: $failed failed requests" >&2; exit 1; }
  # The dump after zeroing holds the measured requests (the final dump at exit is separate).
  total=$(grep -h '^totals:' "$work"/cg-"$i".out.* 2>/dev/null | head -1 | awk '{print $2}')
  [ -n "$total" ] || total=$(grep -h '^totals:' "$work/cg-$i.out" | awk '{print $2}')
  echo $(( total / N ))
  rm -f "$work"/cg-"$i".out* "$db"*
}

run=0
declare -A results
for r in $(seq 1 "$REPEAT"); do
  for bin in $BINS; do
    run=$((run + 1))
    per=$(measure "$bin" "$run")
    results[$bin]="${results[$bin]:-} $per"
    echo "round $r: $bin: $per instructions per request" >&2
  done
done
echo "| binary | instructions per gateway request (each run) |"
echo "|---|---|"
for bin in $BINS; do echo "| \`$bin\` |${results[$bin]} |"; done
