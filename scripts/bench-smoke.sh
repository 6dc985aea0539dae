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
# MTGATE_BENCH_PROFILE=debug (used by CI) skips the slow LTO release build: the
# smoke run checks the harness, not the numbers.
profile="${MTGATE_BENCH_PROFILE:-release}"
if [ "$profile" = debug ]; then
    cargo build -p mtgate -p mtgate-bench
else
    cargo build --release -p mtgate -p mtgate-bench
fi

out=bench-out
mkdir -p "$out"
json="$out/bench-smoke.json"

# The bench bounds itself (global limit 240 s in smoke mode); this is a backstop.
timeout 300 "target/$profile/mtgate-bench" --smoke --json "$json" "$@"
echo "bench-smoke: ok ($json)"
