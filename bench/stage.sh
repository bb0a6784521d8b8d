# Sourced by the gateway benchmarks: a scratch folder ($work), the processes to stop on exit
# ($pids, then nginx), a raised open-files limit, and start_nginx — nginx (1 worker, keep-alive
# to the upstream, no buffering) on $NGINX in front of the mock upstream on $MOCK.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_nginx() {
  cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream mock { server $MOCK; keepalive 128; }
  server {
    listen $NGINX;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
CONF
  nginx -c "$work/nginx.conf" -p "$work"
}
