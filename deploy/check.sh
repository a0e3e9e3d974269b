#!/usr/bin/env bash
# Validates what deploy/ ships with the tools that run it: promtool for the
# alert rules, nginx -t for the proxy config, systemd-analyze for the unit,
# docker-compose's schema check for the compose file. (The Dockerfile and
# the compose stack need a registry to build and run; see deploy/README.md.)
# Usage: deploy/check.sh path/to/herald
set -euo pipefail
herald="$(realpath "${1:?usage: deploy/check.sh path/to/herald}")"
cd "$(dirname "$0")"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

echo "-- promtool check rules"
promtool check rules prometheus/alerts.yml

echo "-- nginx -t"
cat > "$scratch/nginx.conf" <<CONF
pid $scratch/nginx.pid;
error_log stderr;
events {}
http {
    access_log off;
    client_body_temp_path $scratch;
    proxy_temp_path $scratch;
    include $PWD/nginx/herald.conf;
}
CONF
nginx -t -q -p "$scratch" -c "$scratch/nginx.conf"

echo "-- systemd-analyze verify"
sed "s#/usr/local/bin/herald#$herald#" systemd/herald.service > "$scratch/herald.service"
systemd-analyze verify "$scratch/herald.service"

echo "-- docker-compose config (schema and interpolation; no daemon needed)"
HERALD_AUTH_HMAC_SECRET=check HERALD_AUTH_API_KEYS=check \
  docker-compose -f docker-compose.yml config -q

echo "-- examples/venue-app.toml"
"$herald" config --config examples/venue-app.toml > /dev/null

echo "deploy/: all checks passed"
