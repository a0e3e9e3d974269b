#!/usr/bin/env bash
# Runs every test Herald has: formatting and lints, the Rust workspace (unit
# and integration tests against real servers), Schemathesis against the
# server's OpenAPI description, then the TypeScript SDK
# (type check, demo-bundle freshness, vitest against the real binary, and
# browser tests in headless Chromium), then the Next.js example against the
# real binary. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

# Debian's Chromium for the browser tests (never a downloaded browser build).
if ! command -v chromium >/dev/null 2>&1; then
  say "installing chromium"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
# promtool, nginx and docker-compose (v1, for its schema check) validate
# deploy/ (Debian's packages); their services must not start, so
# policy-rc.d refuses that for the install.
if ! command -v promtool >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
  say "installing prometheus (promtool), nginx and docker-compose"
  sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  sudo_if apt-get update -qq
  sudo_if env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus nginx docker-compose >/dev/null
  sudo_if rm -f /usr/sbin/policy-rc.d
fi
# jq for the docs test's examples.
if ! command -v jq >/dev/null 2>&1; then
  say "installing jq"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
  else
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
  fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "cargo test"
cargo test --workspace --locked

say "deploy/ (promtool, nginx -t, systemd-analyze)"
cargo build -p herald-realtime --locked
bash deploy/check.sh target/debug/herald

# Every operation of /api/openapi.json against the real binary: no 5xx, no
# undescribed status, no answer that breaks its schema.
say "schemathesis (the HTTP API against its OpenAPI description)"
bash scripts/schemathesis.sh target/debug/herald

# Every command shown in docs/ against the real binary, and every relative
# link in docs/ and README.md.
say "docs (scripts/docs-test.sh)"
bash scripts/docs-test.sh target/debug/herald

say "SDK (clients/js)"
cargo build -p herald-realtime --locked
export HERALD_BIN="$PWD/target/debug/herald"
cd clients/js
npm ci --no-audit --no-fund
npm run typecheck
npm run check:demo
npm run build
npm test
# The tarball as npm would publish it: no reference to a file it lacks, then
# ESM, CommonJS, TypeScript (node10 / node16 / nodenext / bundler), Vite,
# Jest (ts-jest) and Metro (React Native; package exports on and off)
# scratch projects, each installing what it needs.
node scripts/pack-check.mjs

# The seed's shape in a real Next.js app: the SDK packed as published, next
# build (with its type check), the API route publishing to a subscriber.
say "examples/nextjs"
cd ../..
node examples/nextjs/e2e.mjs
