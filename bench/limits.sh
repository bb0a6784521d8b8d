#!/usr/bin/env bash
# Rate-limiter benchmarks: decisions per second in memory (criterion, `benches/limits.rs`) and on
# Redis, and the number of Redis round trips per request (commands counted by the server with
# INFO commandstats around N requests). Starts its own redis-server on a free port (so the
# counts are not mixed with anyone else's traffic) and stops it at the end.
#
#   bench/limits.sh            # everything; results as tables on stdout
#   N=5000 bench/limits.sh     # more requests for the round-trip count (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-1000}"
PORT="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
command -v redis-server >/dev/null || { echo "redis-server is required" >&2; exit 1; }

redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
  >/dev/null 2>&1 &
REDIS_PID=$!
trap 'kill "$REDIS_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export GATEHOUSE_BENCH_REDIS="redis://127.0.0.1:$PORT"
rcli() { redis-cli -p "$PORT" "$@"; }

echo "== decisions per second (criterion; Redis on 127.0.0.1:$PORT, one connection, sequential)"
rm -rf "${CARGO_TARGET_DIR:-target}/criterion/memory" "${CARGO_TARGET_DIR:-target}/criterion/redis"
cargo bench --bench limits -- --noplot >/tmp/gatehouse-bench-limits.log 2>&1 \
  || { tail -40 /tmp/gatehouse-bench-limits.log; exit 1; }
python3 - "${CARGO_TARGET_DIR:-target}/criterion" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
rows = []
for est in sorted(root.glob("*/*/*/new/estimates.json")):
    bench = json.loads((est.parent / "benchmark.json").read_text())
    mean = json.loads(est.read_text())["mean"]["point_estimate"]  # ns per decision
    rows.append((bench["full_id"], mean))
print(f"| {'benchmark':<52} | {'ns/decision':>11} | {'decisions/s':>12} |")
print(f"|{'-'*54}|{'-'*13}|{'-'*14}|")
for name, ns in rows:
    print(f"| {name:<52} | {ns:>11.1f} | {1e9/ns:>12,.0f} |")
PY

echo
echo "== Redis round trips per request ($N requests each, counted by the server)"
printf '| %-19s | %-8s | %-7s | %-11s | %-24s | %-26s |\n' "limits per request" requests EVALSHA "SCRIPT LOAD" "client commands/request" "in-script commands/request"
printf '|%s|%s|%s|%s|%s|%s|\n' "---------------------" "----------" "---------" "-------------" "--------------------------" "----------------------------"
for K in 1 3; do
  rcli config resetstat >/dev/null
  GATEHOUSE_BENCH_ROUNDTRIPS="$N" GATEHOUSE_BENCH_LIMITS="$K" \
    cargo bench --bench limits -q >/tmp/gatehouse-bench-rt.log 2>&1 \
    || { cat /tmp/gatehouse-bench-rt.log; exit 1; }
  rcli info commandstats | tr -d '\r' | python3 -c '
import sys
n, k = int(sys.argv[1]), sys.argv[2]
calls = {}
for line in sys.stdin:
    if line.startswith("cmdstat_"):
        name, rest = line[len("cmdstat_"):].split(":", 1)
        calls[name] = int(rest.split(",")[0].split("=")[1])
inside = sum(calls.get(c, 0) for c in ("get", "set", "time"))
ours = ("info", "config|resetstat")
client = sum(v for c, v in calls.items() if c not in ("get", "set", "time") + ours)
evalsha, load = calls.get("evalsha", 0), calls.get("script|load", 0)
print(f"| {k:<19} | {n:<8} | {evalsha:<7} | {load:<11} | {client / n:<24.3f} | {inside / n:<26.2f} |")
' "$N" "$K"
done
echo
echo "(machine: $(nproc) cores, $(uname -sr); redis-server $(redis-server --version | grep -o 'v=[^ ]*'))"
