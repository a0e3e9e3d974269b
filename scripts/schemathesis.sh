#!/usr/bin/env bash
# Property-based tests of the HTTP API against its own OpenAPI description
# (issue 10.2): starts the herald binary on an ephemeral port with a fresh
# embedded store, and runs Schemathesis (pinned, from PyPI, in a venv under
# the cache dir) against GET /api/openapi.json. Fails on any 5xx, any answer
# whose status is not described, and any body that breaks its schema.
#
#   scripts/schemathesis.sh [path/to/herald]     (default target/debug/herald)
#
# SCHEMATHESIS_MAX_EXAMPLES (default 40) bounds the cases per operation,
# SCHEMATHESIS_MAX_TIME (default 90 s) the whole run (its fuzzing and
# stateful phases repeat until that is spent), and SCHEMATHESIS_SEED
# (default 1) makes the cases repeatable. One worker: CPython 3.11.7's
# ast.parse is not thread-safe, and Hypothesis calls it while generating.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
HERALD_BIN=${1:-target/debug/herald}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-40}
SEED=${SCHEMATHESIS_SEED:-1}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-90}
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/herald/schemathesis-$VERSION"

if [ ! -x "$HERALD_BIN" ]; then
  echo "no herald binary at $HERALD_BIN (cargo build -p herald-realtime)" >&2
  exit 1
fi
HERALD_BIN=$(realpath "$HERALD_BIN")

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "installing schemathesis $VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

SECRET=schemathesis-secret-0123456789abcdef
API_KEY=schemathesis-api-key
cat > "$WORK/herald.toml" <<TOML
listen = "127.0.0.1:0"
[auth]
hmac_secret = "$SECRET"
api_keys = ["$API_KEY"]
allow_anonymous = true
[engine]
kind = "embedded"
path = "$WORK/data"
[limits]
# Long polls answer at once (their waiting is tested in the Rust suites):
# a generated wait=59 would otherwise hold each such case for a minute.
max_long_poll_waiters = 0
# One client polls thousands of times; past the default rate most polls
# would test only the 429 answer.
poll_requests_per_second = 100000
poll_burst = 100000
# Presence where the description's example channel is, so its reads
# answer 200 with a body to check (elsewhere they are 404 / 1012).
[[namespaces]]
name = "venue"
subscribe = "authenticated"
presence = true
TOML

# The server prints "herald listening on http://127.0.0.1:PORT" once bound.
HERALD_LOG=warn "$HERALD_BIN" serve --config "$WORK/herald.toml" \
  >"$WORK/stdout.log" 2>"$WORK/stderr.log" &
SERVER_PID=$!
ORIGIN=
for _ in $(seq 1 300); do
  ORIGIN=$(sed -n 's/^herald listening on //p' "$WORK/stdout.log" | head -n 1)
  [ -n "$ORIGIN" ] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$ORIGIN" ]; then
  echo "herald did not start:" >&2
  cat "$WORK/stderr.log" >&2
  exit 1
fi

# A client token (HS256, an hour) for the polls, signed with the config's secret.
JWT=$(SECRET=$SECRET python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "user-1", "exp": int(time.time()) + 3600}).encode())
mac = hmac.new(os.environ["SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(mac)}")
PY
)

# Messages where the description's examples point (channel venue:42, user
# user-1), so the polls that use them answer pages with messages in them.
publish() {
  curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $API_KEY" \
    -H "Content-Type: application/json" -d "$2" "$ORIGIN$1"
}
for ch in venue:42 venue_updates vibe_checks:42 promotions:42; do
  publish "/api/channels/$ch/messages" '{"seeded":true,"n":[1,2.5,null,"x"]}'
  publish "/api/channels/$ch/messages" '"second"'
done
publish /api/users/user-1/notifications '{"title":"hello"}'

# Each credential goes where its security scheme is asked for: the API key
# for the server API, the client token for polls.
cat > "$WORK/schemathesis.toml" <<TOML
[auth.openapi.api_key]
bearer = "$API_KEY"

[auth.openapi.client_jwt]
bearer = "$JWT"
TOML

echo "schemathesis $VERSION against $ORIGIN/api/openapi.json (max $MAX_EXAMPLES examples per operation, seed $SEED)"
started=$(date +%s)
status=0
# Run from the scratch dir: Schemathesis keeps its example database in the
# working directory, and the run should depend on the seed alone.
(cd "$WORK" && "$VENV/bin/st" --config-file "$WORK/schemathesis.toml" run "$ORIGIN/api/openapi.json" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 1 \
  --request-timeout 20 \
  --max-time "$MAX_TIME" \
  --suppress-health-check too_slow \
  --no-color) || status=$?
echo "schemathesis took $(( $(date +%s) - started ))s"
if [ "$status" != 0 ]; then
  echo "server stderr (last 50 lines):" >&2
  tail -n 50 "$WORK/stderr.log" >&2
fi
exit "$status"
