#!/usr/bin/env bash
# Herald side by side with its peers, one after the other in one run: the
# same `herald bench` scenarios against
#   herald   — a release `herald serve` (memory engine: no store on the path),
#   ws       — a plain Node.js `ws` server written for the job (bench/peers),
#   socketio — a Socket.IO server written for the job (bench/peers),
#   floor    — bench/floor: one send() per delivery and nothing else.
# Each server is pinned to core 0 (`taskset -c 0`) and the load generator
# to core 1, over loopback. Writes bench/results/peers.md (the table, with
# ratios to the floor) and bench/results/latency.svg (p50/p99 against load).
# Usage: bash bench/run-peers.sh            (about 6 minutes)
#        SCALE=small bash bench/run-peers.sh (a quick check, under a minute)
#        SERVERS="herald floor" bash bench/run-peers.sh (a subset)
#        SERVER_CPUS=0,1 bash bench/run-peers.sh (servers on both cores; the
#          load generator then shares core 1 with them)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
cargo build --release -p herald-realtime --locked >/dev/null
CARGO_TARGET_DIR="$ROOT/target/floor" cargo build --release --manifest-path bench/floor/Cargo.toml >/dev/null
(cd bench/peers && npm ci --no-audit --no-fund --silent)
H="$ROOT/target/release/herald"
FLOOR="$ROOT/target/floor/release/herald-floor"
WORK=$(mktemp -d)
OUT=${BENCH_OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
PORT=${BENCH_PORT:-8390}
SERVERS=${SERVERS:-herald ws socketio floor}
CPUS=${SERVER_CPUS:-0}
URL="http://127.0.0.1:$PORT"
KEY=bench-api-key
SECRET=bench-secret-0123456789abcdef
if [ "${SCALE:-full}" = small ]; then
  BIG=1000 SMALL=200 FAST=20 DUR=3s IDLE=1000 LOADS="10 50"
else
  BIG=10000 SMALL=1000 FAST=100 DUR=10s IDLE=10000 LOADS="10 50 100 200"
fi
SERVER_PID=
stop() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; fi; }
trap 'stop; rm -rf "$WORK"' EXIT

cat >"$WORK/herald.toml" <<TOML
listen = "127.0.0.1:$PORT"
[auth]
hmac_secret = "$SECRET"
api_keys = ["$KEY"]
allow_anonymous = true
[limits]
max_connections_per_ip = 1000000
max_connections_per_user = 1000000
[engine]
kind = "memory"
TOML
TOKEN=$("$H" token --user bench --secret "$SECRET")

start() { # start NAME
  stop
  case "$1" in
    herald) (cd "$WORK" && exec taskset -c "$CPUS" "$H" serve --config "$WORK/herald.toml" >"$WORK/out" 2>&1) & ;;
    ws) (cd bench/peers && PORT=$PORT exec taskset -c "$CPUS" node ws-server.mjs >"$WORK/out" 2>&1) & ;;
    socketio) (cd bench/peers && PORT=$PORT exec taskset -c "$CPUS" node socketio-server.mjs >"$WORK/out" 2>&1) & ;;
    floor) (PORT=$PORT exec taskset -c "$CPUS" "$FLOOR" >"$WORK/out" 2>&1) & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do grep -q listening "$WORK/out" 2>/dev/null && return; sleep 0.1; done
  echo "$1 did not start:"; cat "$WORK/out"; exit 1
}
run() { # run NAME ARGS...: one bench run; prints its summary line
  local name=$1; shift
  local proto=()
  [ "$name" = socketio ] && proto=(--protocol socketio)
  taskset -c 1 "$H" bench "$@" --url "$URL" --api-key "$KEY" --server-pid "$SERVER_PID" "${proto[@]}" 2>/dev/null | tail -1 || echo "failed"
}
field() { # field LINE REGEX: the first number after REGEX
  sed -n "s/.*$2 \([0-9.]*\).*/\1/p" <<<"$1" | head -1
}

echo "| server | fan-out ${BIG} × 10/s: CPU/delivery, p50, p99 | fan-out ${SMALL} × ${FAST}/s: CPU/delivery, p50, p99 | idle ${IDLE}: KiB/connection |" >"$WORK/table"
echo "|---|---|---|---|" >>"$WORK/table"
: >"$WORK/curve"
for s in $SERVERS; do
  start "$s"
  big=$(run "$s" fanout --subscribers "$BIG" --rate 10 --duration "$DUR" --token "$TOKEN")
  start "$s"
  fast=$(run "$s" fanout --subscribers "$SMALL" --rate "$FAST" --duration "$DUR" --token "$TOKEN")
  for load in $LOADS; do
    start "$s"
    line=$(run "$s" fanout --subscribers "$SMALL" --rate "$load" --duration "$DUR" --token "$TOKEN")
    echo "$s $((SMALL * load)) $(field "$line" p50) $(field "$line" p99)" >>"$WORK/curve"
  done
  start "$s"
  idle=$(run "$s" idle --connections "$IDLE" --settle 5s --token "$TOKEN")
  echo "$s: $big" >&2
  echo "$s: $fast" >&2
  echo "$s: $idle" >&2
  cell() { echo "$(sed -n 's/.*CPU \([0-9.]*\) µs\/delivery.*/\1/p' <<<"$1") µs, $(field "$1" p50) ms, $(field "$1" p99) ms"; }
  echo "| $s | $(cell "$big") | $(cell "$fast") | $(sed -n 's/.*, \([0-9.]*\) KiB per connection.*/\1/p' <<<"$idle") |" >>"$WORK/table"
done
stop

node bench/peers/report.mjs "$WORK/table" "$WORK/curve" "$OUT" "$(date -u +%F) $(git rev-parse --short HEAD)"
cat "$OUT/peers.md"
