#!/usr/bin/env bash
# Account enumeration by timing (issue #20 item 17): how long `forgot-password` and
# `otp/request` take to answer for a known and for an unknown address. Starts the server on a
# fresh SQLite file (throttles raised so every request is served), registers one account, then
# sends N pairs of requests over one keep-alive connection, alternating which address goes
# first, and prints the medians and how many pairs the known address was the slower of.
#
#   bench/identity_timing.sh               # debug build (what `cargo build` made), N=200
#   PROFILE=release N=500 bench/identity_timing.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-200}"
PROFILE="${PROFILE:-debug}"
PORT="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"
if [ "$PROFILE" = release ]; then cargo build -q --release --bin gatehouse; else cargo build -q --bin gatehouse; fi
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE/gatehouse"

DIR="$(mktemp -d)"
export GATEHOUSE_LISTEN="127.0.0.1:$PORT"
export GATEHOUSE_DATABASE_URL="sqlite://$DIR/gatehouse.db"
export GATEHOUSE_MASTER_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
export GATEHOUSE_BOOTSTRAP_ADMIN=false
export GATEHOUSE_RATE_LIMITS__PASSWORD_RESET_PER_HOUR=1000000
export GATEHOUSE_RATE_LIMITS__UNAUTHENTICATED_PER_MINUTE=1000000
export RUST_LOG=warn
"$BIN" serve >"$DIR/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done

python3 - "$PORT" "$N" <<'PY'
import http.client, json, statistics, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
def post(path, body):
    t = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    res = conn.getresponse()
    data = res.read()
    return time.perf_counter() - t, res.status, data
status = post("/v1/auth/register", {"email": "known@example.com", "password": "correct-horse-battery-staple"})[1]
assert status == 201, status
print(f"| request | known median | unknown median | known slower in | answers identical |")
print(f"|---------|--------------|----------------|-----------------|-------------------|")
for path in ["/v1/auth/forgot-password", "/v1/auth/otp/request"]:
    for _ in range(20):  # warm-up
        post(path, {"email": "known@example.com"}); post(path, {"email": "nobody@example.com"})
    known, unknown, slower, same = [], [], 0, True
    for i in range(n):
        order = [("known", "known@example.com"), ("unknown", "nobody@example.com")]
        if i % 2:
            order.reverse()
        got = {}
        for name, email in order:
            got[name] = post(path, {"email": email})
        known.append(got["known"][0]); unknown.append(got["unknown"][0])
        slower += got["known"][0] > got["unknown"][0]
        same &= got["known"][1:] == got["unknown"][1:]
    k, u = statistics.median(known) * 1e3, statistics.median(unknown) * 1e3
    print(f"| {path} | {k:.3f} ms | {u:.3f} ms | {slower} of {n} pairs | {same} |")
PY
