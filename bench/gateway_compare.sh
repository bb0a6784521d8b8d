#!/usr/bin/env bash
# Two builds of the gateway against each other in one run, on loopback: maximum throughput
# (CONNS connections, non-streaming, 1 KiB prompt) of BASE and NEW in alternating rounds (the
# order flips every round, so the machine's drift falls on both), with nginx in front of the
# same mock as the yardstick, plus the gateway's CPU time per request of each.
#   mock upstream (examples/mock_upstream.rs)  ←  nginx  |  gatehouse BASE  |  gatehouse NEW
# Each gatehouse has its own SQLite database, organization, provider and key (bench/org.sh).
# Usage: BASE=/tmp/old/gatehouse NEW=target/release/gatehouse [MOCK_BIN=…] \
#          ROUNDS=7 SECS=10 CONNS=64 bench/gateway_compare.sh
# Needs wrk and nginx (apt-get install wrk nginx-light).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:?BASE=path of the baseline gatehouse binary}
NEW=${NEW:-target/release/gatehouse}
MOCK_BIN=${MOCK_BIN:-target/release/examples/mock_upstream}
ROUNDS=${ROUNDS:-7}
SECS=${SECS:-10}
CONNS=${CONNS:-64}
MOCK=127.0.0.1:19201
NGINX=127.0.0.1:19202
BASE_ADDR=127.0.0.1:19203
NEW_ADDR=127.0.0.1:19204
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx not found (apt-get install nginx-light)" >&2; exit 1; }
[ -x "$MOCK_BIN" ] || cargo build --release --quiet --features bench-tools --example mock_upstream
. bench/stage.sh

"$MOCK_BIN" "$MOCK" 2>/dev/null & pids+=($!)
start_nginx

start() { # name binary address → sets ${name}_pid and ${name}_key
  local name=$1 bin=$2 addr=$3
  mkdir -p "$work/$name"
  export GATEHOUSE_LISTEN=$addr GATEHOUSE_DATABASE_URL="sqlite://$work/$name/bench.db" \
    GATEHOUSE_LOG_LEVEL=error GATEHOUSE_BOOTSTRAP_ADMIN=false GATEHOUSE_ALLOW_PRIVATE_PROVIDER_TARGETS=true
  "$bin" admin create --email admin@bench.local --password load-test-passphrase-9 >/dev/null
  "$bin" >/dev/null 2>&1 & pids+=($!)
  eval "${name}_pid=$!"
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$addr/health" && break; sleep 0.1; done
  GATE=$addr
  . bench/org.sh
  eval "${name}_key=$key"
}
start base "$BASE" "$BASE_ADDR"
start new "$NEW" "$NEW_ADDR"

python3 - "$work/body.json" <<'EOF'
import json, sys
prompt = ("lorem ipsum dolor sit amet " * 40)[:1024]
json.dump({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}, open(sys.argv[1], "w"))
EOF
# wrk: POST the body with the key; at the end one JSON line with the run's numbers.
cat > "$work/post.lua" <<'EOF'
wrk.method = "POST"
local f = io.open(os.getenv("BODY")); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "seconds": %f, "non2xx": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
EOF

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # label url key pid(optional)
  local label=$1 url=$2 key=$3 pid=${4:-} before=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  BODY="$work/body.json" KEY="$key" wrk -t1 -c "$CONNS" -d "${SECS}s" -s "$work/post.lua" "$url" |
    grep '^{' > "$work/$label.json"
  [ -n "$pid" ] && echo $(( $(cpu_ticks "$pid") - before )) > "$work/$label.ticks"
  return 0
}

echo "maximum throughput: $CONNS connections, ${SECS}s per run, $ROUNDS rounds (order flips each round)" >&2
for i in $(seq 1 "$ROUNDS"); do
  run "nginx-$i" "http://$NGINX/v1/chat/completions" none
  if [ $((i % 2)) = 1 ]; then
    run "base-$i" "http://$BASE_ADDR/openai/v1/chat/completions" "$base_key" "$base_pid"
    run "new-$i" "http://$NEW_ADDR/openai/v1/chat/completions" "$new_key" "$new_pid"
  else
    run "new-$i" "http://$NEW_ADDR/openai/v1/chat/completions" "$new_key" "$new_pid"
    run "base-$i" "http://$BASE_ADDR/openai/v1/chat/completions" "$base_key" "$base_pid"
  fi
done

python3 - "$work" "$ROUNDS" "$BASE" "$NEW" <<'PY'
import json, statistics, sys
work, rounds, base, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(n): return json.load(open(f"{work}/{n}.json"))
def rps(n): return load(n)["requests"] / load(n)["seconds"]
def ok(n):
    d = load(n)
    return d["requests"] - d["non2xx"], d["requests"]
def cpu_us(n):
    return int(open(f"{work}/{n}.ticks").read()) * 10_000 / max(ok(n)[1], 1)
print(f"BASE = {base}\nNEW  = {new}\n")
print("| round | nginx req/s | BASE req/s | NEW req/s | NEW/BASE | BASE % nginx | NEW % nginx | CPU µs/req BASE | NEW | 2xx/all BASE | NEW |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
ratios = []
for i in range(1, rounds + 1):
    n, b, w = rps(f"nginx-{i}"), rps(f"base-{i}"), rps(f"new-{i}")
    ratios.append(w / b)
    bo, no = ok(f"base-{i}"), ok(f"new-{i}")
    print(f"| {i} | {n:.0f} | {b:.0f} | {w:.0f} | {w/b:.3f} | {b/n*100:.0f} % | {w/n*100:.0f} % | "
          f"{cpu_us(f'base-{i}'):.0f} | {cpu_us(f'new-{i}'):.0f} | {bo[0]}/{bo[1]} | {no[0]}/{no[1]} |")
print()
print(f"NEW/BASE throughput: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}) over {rounds} rounds")
PY
