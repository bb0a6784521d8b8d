#!/usr/bin/env bash
# Gateway benchmark, end to end, on loopback:
#   mock upstream (Rust, examples/mock_upstream.rs)  ←  nginx (proxy_pass, keep-alive, 1 worker)
#                                                   ←  gatehouse (release, SQLite)
# Load: oha (crates.io). Measures, in one run:
#   1. latency at a fixed rate (default 1,000 requests/s, 1 KiB prompt, non-streaming) going to the
#      mock directly, through nginx and through the gateway — the gateway's added p50/p99;
#   2. maximum throughput of each path (64 connections; nginx and the gateway in alternation,
#      ROUNDS times, the median ratio reported, with the gateway's CPU time per request);
#   3. streaming: time to first byte and each chunk's delay from upstream write to client read,
#      directly and through the gateway (examples/stream_probe.rs; 200 streams of 20 chunks);
#      the gateway's peak resident memory while it carries 1,000 concurrent 10-second streams
#      (on the fresh process, before the other phases, and again after them);
#   4. latency and throughput again through the gateway with the organization's 20 policy rules of
#      bench/policies.json on (requests and answers checked) — the policies' own overhead.
# Installs what it needs if missing: nginx (apt-get), oha (cargo install into ./target/tools).
# Usage: bench/gateway.sh            RATE=1000 SECS=10 CONNS=64 ROUNDS=5 bench/gateway.sh
#        PROFILE=/tmp/perf.data bench/gateway.sh   (also samples the gateway with perf)
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-1000}
SECS=${SECS:-10}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-5}
MOCK=127.0.0.1:19101
GATE=127.0.0.1:19100
NGINX=127.0.0.1:19102

OHA=${OHA:-$(command -v oha || true)}
if [ -z "$OHA" ]; then
  if [ ! -x target/tools/bin/oha ]; then
    echo "installing oha (load generator) into target/tools…" >&2
    cargo install oha --locked --root target/tools >&2
  fi
  OHA=target/tools/bin/oha
fi
if ! command -v nginx >/dev/null; then
  echo "installing nginx-light…" >&2
  apt-get install -y -qq nginx-light >&2
fi

cargo build --release --quiet --bin gatehouse
cargo build --release --quiet --features bench-tools --example mock_upstream --example stream_probe
. bench/stage.sh

target/release/examples/mock_upstream "$MOCK" 2>/dev/null & pids+=($!)
# The mock upstream is on loopback: the gateway must be allowed to connect there.
export GATEHOUSE_LISTEN=$GATE GATEHOUSE_DATABASE_URL="sqlite://$work/bench.db" GATEHOUSE_LOG_LEVEL=error \
  GATEHOUSE_BOOTSTRAP_ADMIN=false GATEHOUSE_ALLOW_PRIVATE_PROVIDER_TARGETS=true
target/release/gatehouse admin create --email admin@bench.local --password load-test-passphrase-9 >/dev/null
target/release/gatehouse >/dev/null 2>&1 & gate_pid=$!; pids+=($gate_pid)

start_nginx

for addr in $MOCK $GATE $NGINX; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$addr/" && break; sleep 0.1; done
done

# An organization, a live key (no rate limit in the way) and the mock as its provider.
. bench/org.sh

PROBE=target/release/examples/stream_probe
rss() { awk '/VmRSS/{print $2}' "/proc/$gate_pid/status"; }
# 1,000 concurrent 10 s streams through the gateway, its resident memory sampled every 200 ms.
hold_streams() { # label
  echo "memory ($1): 1,000 concurrent 10 s streams through the gateway" >&2
  rss > "$work/rss-idle-$1"
  "$PROBE" hold "http://$GATE/openai/v1/chat/completions" "$key" 1000 > "$work/hold-$1.json" & probe=$!
  local peak=0 now
  while kill -0 "$probe" 2>/dev/null; do
    now=$(rss); [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.2
  done
  wait "$probe"
  echo "$peak" > "$work/rss-peak-$1"
}
# First on the fresh process, then again after the load phases.
hold_streams fresh

# A 1 KiB prompt.
python3 - "$work/body.json" <<'EOF'
import json, sys
prompt = ("lorem ipsum dolor sit amet " * 40)[:1024]
json.dump({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}, open(sys.argv[1], "w"))
EOF

run() { # name url extra-oha-args…
  local name=$1 url=$2; shift 2
  "$OHA" --no-tui --output-format json -z "${SECS}s" -m POST -H "content-type: application/json" \
    -H "authorization: Bearer $key" -D "$work/body.json" "$@" "$url" > "$work/$name.json"
}

echo "fixed rate: $RATE requests/s for ${SECS}s" >&2
run direct-rate "http://$MOCK/v1/chat/completions" -q "$RATE" -c 32
run nginx-rate "http://$NGINX/v1/chat/completions" -q "$RATE" -c 32
cpu_ticks() { awk '{print $14+$15}' "/proc/$gate_pid/stat"; }
cpu_before=$(cpu_ticks)
run gateway-rate "http://$GATE/openai/v1/chat/completions" -q "$RATE" -c 32
echo $(( $(cpu_ticks) - cpu_before )) > "$work/gateway-cpu-ticks"
echo "maximum throughput: $CONNS connections for ${SECS}s, nginx and gateway alternated $ROUNDS times" >&2
run direct-max "http://$MOCK/v1/chat/completions" -c "$CONNS"
# This machine's speed drifts by tens of percent within minutes: nginx and the gateway are
# measured in alternation, and the round with the median ratio is reported.
for i in $(seq 1 "$ROUNDS"); do
  run "nginx-max-$i" "http://$NGINX/v1/chat/completions" -c "$CONNS"
  if [ -n "${PROFILE:-}" ] && [ "$i" = 1 ]; then # PROFILE=perf.data: sample the gateway's first round
    perf record -F 999 -g -p "$gate_pid" -o "$PROFILE" -- sleep "$SECS" 2>/dev/null & perf_pid=$!
  fi
  cpu_before=$(cpu_ticks)
  run "gateway-max-$i" "http://$GATE/openai/v1/chat/completions" -c "$CONNS"
  echo $(( $(cpu_ticks) - cpu_before )) > "$work/gateway-max-$i-cpu-ticks"
  [ -n "${PROFILE:-}" ] && [ "$i" = 1 ] && wait "$perf_pid"
done
python3 - "$work" "$ROUNDS" <<'PY'
import json, shutil, sys
work, rounds = sys.argv[1], int(sys.argv[2])
rps = lambda n: json.load(open(f"{work}/{n}.json"))["summary"]["requestsPerSec"]
ratios = sorted((rps(f"gateway-max-{i}") / rps(f"nginx-max-{i}"), i) for i in range(1, rounds + 1))
median = ratios[len(ratios) // 2][1]
for name in ["nginx-max", "gateway-max"]:
    shutil.copy(f"{work}/{name}-{median}.json", f"{work}/{name}.json")
with open(f"{work}/rounds.txt", "w") as out:
    for i in range(1, rounds + 1):
        served = sum(json.load(open(f"{work}/gateway-max-{i}.json")).get("statusCodeDistribution", {}).values())
        ticks = int(open(f"{work}/gateway-max-{i}-cpu-ticks").read())
        out.write(f"round {i}: nginx {rps(f'nginx-max-{i}'):.0f}/s, gateway {rps(f'gateway-max-{i}'):.0f}/s = "
                  f"{rps(f'gateway-max-{i}') / rps(f'nginx-max-{i}') * 100:.0f} % "
                  f"(gateway CPU {ticks * 10_000 / max(served, 1):.0f} µs per request)\n")
PY

echo "streaming: 200 streams of 20 chunks 2 ms apart, direct and through the gateway" >&2
"$PROBE" latency "http://$MOCK/v1/chat/completions" "$key" 200 > "$work/stream-direct.json"
"$PROBE" latency "http://$GATE/openai/v1/chat/completions" "$key" 200 > "$work/stream-gateway.json"
hold_streams after-load
echo "the same through the gateway with 20 policy rules" >&2
python3 -c 'import json,sys; [print(json.dumps(r)) for r in json.load(open("bench/policies.json"))]' |
  while read -r rule; do
    api POST "/v1/organizations/$org/policies" "$owner" "$rule" | grep -q '"id"' || { echo "policy refused: $rule" >&2; exit 1; }
  done
run policies-rate "http://$GATE/openai/v1/chat/completions" -q "$RATE" -c 32
run policies-max "http://$GATE/openai/v1/chat/completions" -c "$CONNS"

python3 - "$work" "$RATE" "$CONNS" <<'EOF'
import json, sys
work, rate, conns = sys.argv[1], sys.argv[2], sys.argv[3]
def load(n): return json.load(open(f"{work}/{n}.json"))
def ms(d, p): return d["latencyPercentiles"][p] * 1000
def ok(d):
    codes = d.get("statusCodeDistribution", {})
    return sum(v for k, v in codes.items() if k.startswith("2")), sum(codes.values())
print(f"| path | p50 ms @ {rate}/s | p99 ms @ {rate}/s | 2xx/all | max requests/s ({conns} conns) |")
print("|---|---|---|---|---|")
rows = {}
for name in ["direct", "nginx", "gateway", "policies"]:
    r, m = load(f"{name}-rate"), load(f"{name}-max")
    rows[name] = (ms(r, "p50"), ms(r, "p99"), m["summary"]["requestsPerSec"])
    good, total = ok(r)
    label = "gateway + 20 policies" if name == "policies" else name
    print(f"| {label} | {ms(r,'p50'):.3f} | {ms(r,'p99'):.3f} | {good}/{total} | {m['summary']['requestsPerSec']:.0f} |")
d, g, n, p = rows["direct"], rows["gateway"], rows["nginx"], rows["policies"]
print()
print(f"gateway added latency at {rate}/s: p50 {g[0]-d[0]:+.3f} ms, p99 {g[1]-d[1]:+.3f} ms (targets ≤ 0.2 / ≤ 1 ms)")
print(f"gateway throughput: {g[2]/n[2]*100:.0f}% of nginx (target ≥ 60%; the median of the rounds below), {g[2]/d[2]*100:.0f}% of direct")
print(open(f"{work}/rounds.txt").read().rstrip())
ticks = int(open(f"{work}/gateway-cpu-ticks").read())
served = sum(load("gateway-rate").get("statusCodeDistribution", {}).values())
print(f"gateway CPU per request at {rate}/s: {ticks * 10_000 / max(served, 1):.0f} µs (user + system, /proc/<pid>/stat)")
print(f"20 policy rules add at {rate}/s: p50 {p[0]-g[0]:+.3f} ms, p99 {p[1]-g[1]:+.3f} ms; throughput {p[2]/g[2]*100:.0f}% of the gateway without them")
sd, sg = load("stream-direct"), load("stream-gateway")
print()
print("| streaming (200 × 20 chunks) | TTFB p50 ms | TTFB p99 ms | chunk delay p50 ms | chunk delay p99 ms | chunk delay max ms |")
print("|---|---|---|---|---|---|")
for label, x in [("direct", sd), ("gateway", sg)]:
    t, c = x["ttfb_us"], x["chunk_delay_us"]
    print(f"| {label} | {t['p50']/1000:.3f} | {t['p99']/1000:.3f} | {c['p50']/1000:.3f} | {c['p99']/1000:.3f} | {c['max']/1000:.3f} |")
print(f"gateway adds to TTFB: p50 {(sg['ttfb_us']['p50']-sd['ttfb_us']['p50'])/1000:+.3f} ms, p99 {(sg['ttfb_us']['p99']-sd['ttfb_us']['p99'])/1000:+.3f} ms (target ≤ 1 ms); "
      f"to each chunk: p50 {(sg['chunk_delay_us']['p50']-sd['chunk_delay_us']['p50'])/1000:+.3f} ms, p99 {(sg['chunk_delay_us']['p99']-sd['chunk_delay_us']['p99'])/1000:+.3f} ms (target ≤ 1 ms)")
for label in ["fresh", "after-load"]:
    hold = load(f"hold-{label}")
    idle, peak = int(open(f"{work}/rss-idle-{label}").read()), int(open(f"{work}/rss-peak-{label}").read())
    print(f"1,000 concurrent streams ({label}): {hold['completed']}/{hold['streams']} completed in {hold['seconds']:.1f} s; gateway RSS {idle/1024:.1f} MiB before, peak {peak/1024:.1f} MiB (target ≤ 100 MB); errors: {hold['errors']}")
EOF
