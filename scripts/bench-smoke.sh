#!/usr/bin/env bash
# Smoke run of the benchmark harness (CI): builds the release binaries, runs
# `mtgate-bench --smoke` (tiny sizes, well under a minute) and writes the JSON
# to bench-out/. The numbers of a smoke run mean little; missed performance
# targets never fail it. It fails only if the harness breaks: the build fails,
# a process does not start, or a test cannot produce a number.
#
# Usage: scripts/bench-smoke.sh [extra mtgate-bench flags...]
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release -p mtgate -p mtgate-bench

out=bench-out
mkdir -p "$out"
json="$out/bench-smoke.json"

# The bench bounds itself (global limit 240 s in smoke mode); this is a backstop.
timeout 300 target/release/mtgate-bench --smoke --json "$json" "$@"
echo "bench-smoke: ok ($json)"
