#!/usr/bin/env bash
# The redis engine on a local Redis Cluster: three masters (redis-cli
# --cluster create, no replicas, nothing persisted) and two release Herald
# nodes, A on 8091 and B on 8092, with `engine.redis_cluster`. Loopback only,
# no CPU pinning (five processes share the machine's cores), each run 5 s.
# Usage: bash scripts/bench-redis-cluster.sh        (about 1 minute)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p herald-realtime --locked >/dev/null
H="$PWD/target/release/herald"
WORK=$(mktemp -d)
PORTS=(${BENCH_REDIS_PORTS:-7301 7302 7303})
SECRET=bench-secret-0123456789abcdef
KEY=bench-api-key
cleanup() {
  pkill -f "herald serve --config $WORK" 2>/dev/null || true
  for p in "${PORTS[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for p in "${PORTS[@]}"; do
  mkdir -p "$WORK/r$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/r$p" \
    --cluster-enabled yes --cluster-config-file "$WORK/r$p/nodes.conf" --daemonize yes >/dev/null
done
for p in "${PORTS[@]}"; do until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done; done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 0 --cluster-yes >/dev/null
for p in "${PORTS[@]}"; do until redis-cli -p "$p" cluster info | grep -q cluster_state:ok; do sleep 0.1; done; done

SEEDS=$(printf '"redis://127.0.0.1:%s",' "${PORTS[@]}")
for node in 8091 8092; do
  cat >"$WORK/$node.toml" <<TOML
listen = "127.0.0.1:$node"
[auth]
hmac_secret = "$SECRET"
api_keys = ["$KEY"]
allow_anonymous = true
[limits]
max_connections_per_ip = 1000000
max_connections_per_user = 100000
[engine]
kind = "redis"
redis_cluster = [${SEEDS%,}]
[[namespaces]]
name = "bench"
subscribe = "public"
TOML
  (cd "$WORK" && "$H" serve --config "$WORK/$node.toml" >"$WORK/$node.out" 2>"$WORK/$node.err" &)
done
for node in 8091 8092; do
  until curl -sf "http://127.0.0.1:$node/ready" >/dev/null; do sleep 0.1; done
done
A=$(pgrep -f "herald serve --config $WORK/8091.toml")
B=$(pgrep -f "herald serve --config $WORK/8092.toml")
T=$("$H" token --user bench --secret "$SECRET")
bench() { echo "\$ herald bench $*"; "$H" bench "$@" --api-key "$KEY" 2>&1 | tail -1; }

bench publish --url http://127.0.0.1:8091 --clients 32 --duration 5s --server-pid "$A"
bench batch --url http://127.0.0.1:8091 --clients 4 --batch 1000 --duration 5s --server-pid "$A"
bench fanout --url http://127.0.0.1:8092 --publish-url http://127.0.0.1:8091 --subscribers 1000 --rate 10 --duration 5s --token "$T" --server-pid "$B"
bench fanout --url http://127.0.0.1:8092 --publish-url http://127.0.0.1:8091 --subscribers 1000 --rate 10 --burst 10 --duration 5s --token "$T" --server-pid "$B"
for p in "${PORTS[@]}"; do
  echo "master $p: $(redis-cli -p "$p" dbsize) keys"
done
