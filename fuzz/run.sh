#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer on the *stable* toolchain and runs
# one of them. cargo-fuzz needs nightly for its sanitizer flags; the coverage
# instrumentation libFuzzer needs (SanitizerCoverage) is reachable on stable
# through -Cpasses/-Cllvm-args, which is all this script adds.
#
#   fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags…]
#   fuzz/run.sh parse_command 600
#
# Targets: parse_command, cursor, since, ws_frame. The corpus grows in
# fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET); crashes land in
# fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
target="${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer flags…]}"
seconds="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))

export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks --cfg fuzzing"
# A target dir of its own: these flags must not leak into the workspace build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# An explicit --target keeps the flags off build scripts and proc macros,
# which run on the host and have no libFuzzer to link against.
triple="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --target "$triple" --bin "$target"

mkdir -p "corpus/$target" "artifacts/$target"
seeds=()
[ -d "seeds/$target" ] && seeds=("seeds/$target")
exec "$CARGO_TARGET_DIR/$triple/release/$target" "corpus/$target" "${seeds[@]}" \
  -artifact_prefix="artifacts/$target/" -max_total_time="$seconds" \
  -max_len=4096 -print_final_stats=1 "$@"
