#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md: a release build, the server pinned
# to core 0 and `herald bench` to core 1, loopback only, each run bounded.
# Usage: bash scripts/bench.sh            (about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p herald-realtime --locked >/dev/null
H="$PWD/target/release/herald"
WORK=$(mktemp -d)
PORT=${BENCH_PORT:-8090}
URL="http://127.0.0.1:$PORT"
trap 'pkill -f "herald serve --port $PORT" 2>/dev/null || true; rm -rf "$WORK"' EXIT

start() { # start [ENV=VALUE...]: a fresh dev-mode server with an empty store
  pkill -f "herald serve --port $PORT" 2>/dev/null || true
  sleep 0.5
  rm -rf "$WORK/data"
  # Every bench client comes from 127.0.0.1 and most name a dev-mode user
  # without a token, so they all count against one address's budget: lift it.
  (cd "$WORK" && env HERALD_LIMITS_MAX_CONNECTIONS_PER_IP=1000000 "$@" taskset -c 0 "$H" serve --port "$PORT" --data-dir "$WORK/data" >"$WORK/out" 2>"$WORK/err" &)
  for _ in $(seq 1 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
  PID=$(pgrep -f "herald serve --port $PORT")
  KEY=$(sed -n 's/^HERALD_AUTH_API_KEYS=//p' "$WORK/data/dev.env")
}
bench() { echo "\$ herald bench $*"; taskset -c 1 "$H" bench "$@" --url "$URL" --api-key "$KEY" --server-pid "$PID" 2>&1 | tail -1; }

start HERALD_ENGINE_SYNC=full
bench publish --clients 32 --duration 10s
bench batch --clients 4 --batch 1000 --duration 10s
bench fanout --subscribers 1000 --rate 10 --duration 10s
bench fanout --subscribers 1000 --rate 10 --burst 10 --duration 10s
bench fanout --subscribers 10000 --rate 10 --duration 10s
start HERALD_ENGINE_SYNC=normal
bench publish --clients 32 --duration 10s
bench batch --clients 4 --batch 1000 --duration 10s
start HERALD_ENGINE_SYNC=full
bench idle --connections 19000 --settle 5s
echo "connection ceiling: $(grep -o 'connection_ceiling=[0-9]*' "$WORK/err" | head -1)"
