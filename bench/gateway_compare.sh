#!/usr/bin/env bash
# Two builds of the gateway against each other in one run, on loopback: maximum throughput
# (CONNS connections, non-streaming, 1 KiB prompt) of BASE and NEW in alternating rounds (the
# order flips every round, so the machine's drift falls on both), with nginx in front of the
# same mock as the yardstick, plus the gateway's CPU time per request of each.
#   mock upstream (examples/mock_upstream.rs)  ←  nginx  |  gatehouse BASE  |  gatehouse NEW
# Each gatehouse has its own SQLite database, organization, provider and key (bench/org.sh).
# Usage: BASE=/tmp/old/gatehouse NEW=target/release/gatehouse [MOCK_BIN=…] \
#          ROUNDS=7 SECS=10 CONNS=64 bench/gateway_compare.sh
# Needs oha and nginx as bench/gateway.sh does (OHA=path to use a given oha).
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
OHA=${OHA:-$(command -v oha || echo target/tools/bin/oha)}
[ -x "$OHA" ] || { echo "oha not found (cargo install oha --locked --root target/tools)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx not found (apt-get install nginx-light)" >&2; exit 1; }
[ -x "$MOCK_BIN" ] || cargo build --release --quiet --features bench-tools --example mock_upstream
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$MOCK_BIN" "$MOCK" 2>/dev/null & pids+=($!)
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream mock { server $MOCK; keepalive 128; }
  server {
    listen $NGINX;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
EOF
nginx -c "$work/nginx.conf" -p "$work"

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

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # label url key pid(optional)
  local label=$1 url=$2 key=$3 pid=${4:-} before=0
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  "$OHA" --no-tui --output-format json -z "${SECS}s" -c "$CONNS" -m POST -H "content-type: application/json" \
    -H "authorization: Bearer $key" -D "$work/body.json" "$url" > "$work/$label.json"
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
def rps(n): return load(n)["summary"]["requestsPerSec"]
def ok(n):
    codes = load(n).get("statusCodeDistribution", {})
    return sum(v for k, v in codes.items() if k.startswith("2")), sum(codes.values())
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
