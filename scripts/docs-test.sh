#!/usr/bin/env bash
# The docs test: runs every shell command shown in docs/*.md against a real
# Herald, and checks every relative link in docs/*.md and README.md (the file
# exists; an anchor into a Markdown file names one of its headings).
#
#   bash scripts/docs-test.sh [path/to/herald]     (default: target/debug/herald)
#
# Convention in docs/*.md: runnable commands go in ```sh blocks; output and
# snippets that are not commands go in ```text (or ```json, ```toml, …).
# ```bash and ```console blocks are refused, so nothing runnable hides from
# the test. A ```sh block that cannot run on a build machine (systemd, a real
# proxy, another host) is preceded by `<!-- docs-test: skip (reason) -->`;
# skips are counted and listed. Every curl in a ```sh block uses
# --fail-with-body (or --fail), so an HTTP error fails its block.
#
# The server the blocks run against is started here, on a free port, with a
# temporary config; the blocks see:
#   HERALD_URL      its HTTP origin, e.g. http://127.0.0.1:8080
#   HERALD_API_KEY  one of its auth.api_keys
#   HERALD_CONFIG   its config file (so `herald token` signs with its secret)
#   TOKEN           a client token for user-123
#   PATH            with the herald binary first
# Each block runs as `bash -euo pipefail` in a working directory of its own
# doc (files made by one block are there for the next blocks of that doc),
# with a time limit of 30 s. DOCS_TEST_SHOW=1 prints every block's output
# (to refresh the ```text examples after it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${1:-${HERALD_BIN:-target/debug/herald}}
case $bin in /*) ;; *) bin=$root/$bin ;; esac
[ -x "$bin" ] || { echo "docs-test: no herald binary at $bin (cargo build -p herald-realtime)" >&2; exit 1; }

SECONDS=0
tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

failures=0
fail() { printf 'FAIL %s\n' "$*" >&2; failures=$((failures + 1)); }

# --- Relative links -------------------------------------------------------
# The anchors GitHub makes for a Markdown file's headings (outside code).
anchors() {
  awk '/^```/ { inside = !inside; next } !inside && /^#+ / { sub(/^#+ +/, ""); print }' "$1" |
    tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9 _-]//g' -e 's/ /-/g'
}
links=0
for doc in README.md docs/*.md; do
  dir=$(dirname "$doc")
  # [text](target) outside code spans; targets with a scheme are not files.
  while IFS= read -r link; do
    link=${link%% *}
    case $link in http://* | https://* | mailto:* | '') continue ;; esac
    target=${link%%#*}
    anchor=
    case $link in *'#'*) anchor=${link#*#} ;; esac
    file=$dir/$target
    [ -z "$target" ] && file=$doc
    links=$((links + 1))
    if [ ! -e "$file" ]; then
      fail "$doc: link to $link: no such file"
    elif [ -n "$anchor" ] && [ "${file%.md}" != "$file" ] && ! anchors "$file" | grep -qx -- "$anchor"; then
      fail "$doc: link to $link: no such heading"
    fi
  done < <(sed -e 's/`[^`]*`//g' "$doc" | grep -o '\](\([^)]*\))' | sed -e 's/^](//' -e 's/)$//')
done

# --- The server -----------------------------------------------------------
api_key="docs-test-key-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
secret="docs-test-secret-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
cat > "$tmp/herald.toml" <<EOF
listen = "127.0.0.1:0"

[auth]
api_keys = ["$api_key"]
hmac_secret = "$secret"

[engine]
path = "$tmp/data"

[[namespaces]]
name = "chat"
subscribe = "authenticated"
client_publish = true

[[namespaces]]
name = "private"
subscribe = "claim"
EOF
HERALD_LOG=warn "$bin" serve --config "$tmp/herald.toml" > "$tmp/server.out" 2> "$tmp/server.log" &
server_pid=$!
for _ in $(seq 100); do
  grep -q '^herald listening on ' "$tmp/server.out" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; echo "docs-test: the server did not start" >&2; exit 1; }
  sleep 0.1
done
url=$(sed -n 's/^herald listening on //p' "$tmp/server.out")
[ -n "$url" ] || { cat "$tmp/server.log" >&2; echo "docs-test: the server did not start" >&2; exit 1; }

export HERALD_URL=$url HERALD_API_KEY=$api_key HERALD_CONFIG=$tmp/herald.toml
export PATH="$(dirname "$bin"):$PATH"
TOKEN=$("$bin" token --user user-123)
export TOKEN

# --- The blocks -----------------------------------------------------------
ran=0
skipped=0
skips=()
for doc in docs/*.md; do
  name=$(basename "$doc" .md)
  work=$tmp/work/$name
  blocks=$tmp/blocks/$name
  mkdir -p "$work" "$blocks"
  # Splits the doc into blocks/<n>.sh (runnable) or <n>.skip (with the
  # reason), each starting with its line number; refuses bash/console fences.
  awk -v dir="$blocks" -v doc="$doc" '
    function flush() { close(out) }
    /^```/ && !inside {
      lang = substr($0, 4); sub(/[ \t].*/, "", lang)
      inside = 1
      if (lang == "bash" || lang == "console" || lang == "shell" || lang == "zsh") {
        printf "%s:%d: ```%s block: use ```sh for commands and ```text for output\n", doc, NR, lang > "/dev/stderr"
        bad = 1
      }
      if (lang == "sh") {
        n++
        out = sprintf("%s/%03d.%s", dir, n, skip ? "skip" : "sh")
        printf "#line %d\n", NR + 1 > out
        if (skip) printf "#reason %s\n", reason > out
      } else out = ""
      skip = 0
      next
    }
    /^```/ && inside { inside = 0; if (out != "") flush(); out = ""; next }
    inside && out != "" && /(^|[ \t;|&(`$])curl[ \t]/ && !/^[ \t]*#/ && !/--fail/ {
      printf "%s:%d: curl without --fail-with-body (an HTTP error would pass unnoticed)\n", doc, NR > "/dev/stderr"
      bad = 1
    }
    inside { if (out != "") print > out; next }
    /^<!-- docs-test: skip/ {
      skip = 1; reason = $0
      sub(/^<!-- docs-test: skip[ \t]*/, "", reason); sub(/[ \t]*-->.*$/, "", reason)
      next
    }
    /[^ \t]/ { skip = 0 }
    END { exit bad }
  ' "$doc" || fail "$doc: breaks the docs conventions (see above)"
  for block in "$blocks"/*; do
    [ -e "$block" ] || continue
    line=$(sed -n '1s/^#line //p' "$block")
    case $block in
      *.skip)
        skipped=$((skipped + 1))
        skips+=("$doc:$line $(sed -n '2s/^#reason //p' "$block")")
        continue ;;
    esac
    ran=$((ran + 1))
    if ! (cd "$work" && timeout 30 bash -euo pipefail "$block") > "$tmp/out" 2>&1; then
      fail "$doc:$line: this block failed:"
      sed -e '1d' -e 's/^/    | /' "$block" >&2
      echo "    output:" >&2
      sed -e 's/^/    > /' "$tmp/out" >&2
    elif [ -n "${DOCS_TEST_SHOW:-}" ]; then
      echo "== $doc:$line"
      cat "$tmp/out"
    fi
  done
done

kill -0 "$server_pid" 2>/dev/null || fail "the server died during the docs test (log: $(tail -5 "$tmp/server.log"))"

echo "docs test: $ran blocks run, $skipped skipped, $links relative links checked, ${SECONDS}s"
for s in "${skips[@]}"; do echo "  skipped $s"; done
if [ "$failures" -gt 0 ]; then
  echo "docs test: $failures failure(s)" >&2
  exit 1
fi
