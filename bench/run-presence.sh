#!/usr/bin/env bash
# What presence costs (issue 12 item 7), one run after the other:
#   fan-out  — `herald bench fanout` to one channel whose namespace keeps
#              no presence, presence, then join/leave pushes;
#   churn    — `herald bench presence`: clients subscribing and
#              unsubscribing in a loop while watchers count the join/leave
#              frames, on the memory engine and (if a Redis answers at
#              $REDIS_URL) on the redis engine.
# A release `herald serve` is pinned to core 0 (`taskset -c 0`), the load
# generator to core 1, over loopback. Before each fan-out the script also
# prints the server's CPU time for the whole run, setup included: with
# join/leave, N subscribers joining one channel fan out N²/2 join frames
# before the first publish.
# Usage: bash bench/run-presence.sh              (about 4 minutes)
#        SCALE=small bash bench/run-presence.sh  (a quick check)
#        JL_SUBSCRIBERS=10000 bash bench/run-presence.sh (join/leave fan-out
#        at 10,000 too: 50 million join frames during setup, minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
cargo build --release -p herald-realtime --locked >/dev/null
H="$ROOT/target/release/herald"
WORK=$(mktemp -d)
PORT=${BENCH_PORT:-8391}
URL="http://127.0.0.1:$PORT"
KEY=bench-api-key
SECRET=bench-secret-0123456789abcdef
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
if [ "${SCALE:-full}" = small ]; then
  BIG=1000 JL=500 DUR=3s CLIENTS=50 RATE=25
else
  BIG=10000 JL=${JL_SUBSCRIBERS:-2000} DUR=10s CLIENTS=200 RATE=${RATE:-25}
fi
SERVER_PID=
stop() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; fi; }
trap "stop; rm -rf \"\$WORK\"" EXIT

config() { # config ENGINE-TOML [LIMITS-TOML]: the namespaces `off`, `pres` (presence), `jl` (join_leave)
  cat <<TOML
listen = "127.0.0.1:$PORT"
[auth]
hmac_secret = "$SECRET"
api_keys = ["$KEY"]
[limits]
max_connections_per_ip = 1000000
max_connections_per_user = 1000000
commands_per_second = 1000000
burst = 1000000
${2:-}
[engine]
$1

[[namespaces]]
name = "off"
subscribe = "authenticated"

[[namespaces]]
name = "pres"
subscribe = "authenticated"
presence = true

[[namespaces]]
name = "jl"
subscribe = "authenticated"
join_leave = true
TOML
}
config 'kind = "memory"' >"$WORK/memory.toml"
# Outbound queues large enough for a mass join's pushes (see below).
config 'kind = "memory"' 'outbound_queue = 1000000
outbound_queue_bytes = 1073741824' >"$WORK/bigqueue.toml"
config "kind = \"redis\"
redis_url = \"$REDIS_URL\"
redis_prefix = \"bench-presence-$$\"" >"$WORK/redis.toml"
TOKEN=$("$H" token --user bench --secret "$SECRET")

start() { # start ENGINE
  stop
  (cd "$WORK" && exec taskset -c 0 "$H" serve --config "$WORK/$1.toml" >"$WORK/out" 2>&1) &
  SERVER_PID=$!
  for _ in $(seq 1 100); do grep -q listening "$WORK/out" 2>/dev/null && return; sleep 0.1; done
  echo "herald ($1) did not start:"; cat "$WORK/out"; exit 1
}
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$SERVER_PID/stat"; }
run() { # run LABEL ARGS...: one bench run; prints its summary line and the server's CPU for the run
  local label=$1; shift
  local t0 c0 line
  t0=$(date +%s.%N); c0=$(cpu_s)
  line=$(taskset -c 1 "$H" bench "$@" --url "$URL" --api-key "$KEY" --token "$TOKEN" --server-pid "$SERVER_PID" 2>"$WORK/err" | tail -1) || line="failed: $(tail -3 "$WORK/err")"
  echo "$label: $line"
  echo "  (whole run, setup included: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s wall, server CPU $(awk -v a="$c0" -v b="$(cpu_s)" 'BEGIN{printf "%.2f", b-a}') s; $(grep -h 'ready in' "$WORK/err" || true))"
}

start memory
run "fan-out $BIG, presence off" fanout --subscribers "$BIG" --rate 10 --duration "$DUR" --channel off:bench
start memory
run "fan-out $BIG, presence on" fanout --subscribers "$BIG" --rate 10 --duration "$DUR" --channel pres:bench
start memory
run "fan-out $JL, presence off" fanout --subscribers "$JL" --rate 10 --duration "$DUR" --channel off:bench
start memory
# With join/leave, the N subscribers joining at once push N²/2 join frames;
# past limits.outbound_queue (1024) frames behind, a subscriber is closed as
# a slow consumer: the default limits fail this run, larger queues pass.
run "fan-out $JL, join/leave on, default outbound_queue" fanout --subscribers "$JL" --rate 10 --duration "$DUR" --channel jl:bench
start bigqueue
run "fan-out $JL, presence off, outbound_queue 1000000" fanout --subscribers "$JL" --rate 10 --duration "$DUR" --channel off:bench
start bigqueue
run "fan-out $JL, join/leave on, outbound_queue 1000000" fanout --subscribers "$JL" --rate 10 --duration "$DUR" --channel jl:bench

# Unpaced, join/leave pushes go to the watchers faster than one core of
# load generator reads them, and the server closes them as slow consumers
# (outbound_queue): the join/leave runs are paced at $RATE cycles/s per client.
start memory
run "churn memory, presence off, unpaced" presence --clients "$CLIENTS" --duration "$DUR" --channel off:bench
run "churn memory, presence on, unpaced" presence --clients "$CLIENTS" --duration "$DUR" --channel pres:bench
run "churn memory, presence on, $RATE/s each" presence --clients "$CLIENTS" --rate "$RATE" --duration "$DUR" --channel pres:bench
run "churn memory, join/leave on, $RATE/s each" presence --clients "$CLIENTS" --rate "$RATE" --duration "$DUR" --channel jl:bench --join-leave
if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  start redis
  run "churn redis, presence on, $RATE/s each" presence --clients "$CLIENTS" --rate "$RATE" --duration "$DUR" --channel pres:bench
  run "churn redis, join/leave on, $RATE/s each" presence --clients "$CLIENTS" --rate "$RATE" --duration "$DUR" --channel jl:bench --join-leave
  stop
  redis-cli -u "$REDIS_URL" --scan --pattern "bench-presence-$$*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null
else
  echo "no Redis at $REDIS_URL: redis runs skipped"
fi
stop
