#!/usr/bin/env bash
# Smoke-runs every mtgate-proto fuzz target for N seconds each (default 20).
#
#   fuzz/smoke.sh          # 20 s per target
#   fuzz/smoke.sh 10       # 10 s per target
#   TARGETS="handshake tls_records" fuzz/smoke.sh 60
#   FUZZ_PROFILE=dev fuzz/smoke.sh 5   # sanitizer build without optimisation:
#                                      # half the build time, for CI's short run
#
# Builds all targets first (sanitizer build via RUSTC_BOOTSTRAP=1 on stable),
# starts each run from fuzz/seeds/<target> plus whatever fuzz/corpus/<target>
# already holds, and exits non-zero if any target fails to build, crashes,
# leaks, times out or runs out of memory. Crash inputs land in
# fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> <file>).
set -euo pipefail

secs="${1:-20}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [seconds-per-target]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

all_targets=$(cargo fuzz list)
targets="${TARGETS:-$all_targets}"

start=$(date +%s)
profile="${FUZZ_PROFILE:-release}"
case "$profile" in
    release) build_flags=() ;;
    dev) build_flags=(--dev) ;;
    *) echo "FUZZ_PROFILE is release or dev" >&2; exit 2 ;;
esac
echo "smoke: building ($profile): $(echo $targets)" >&2
if [ -z "${TARGETS:-}" ]; then
    cargo fuzz build "${build_flags[@]}" || { echo "smoke: build failed" >&2; exit 1; }
else
    for t in $targets; do
        cargo fuzz build "${build_flags[@]}" "$t" || { echo "smoke: build of $t failed" >&2; exit 1; }
    done
fi
echo "smoke: built in $(( $(date +%s) - start ))s" >&2

# Run the binaries just built (not `cargo fuzz run`, which would rebuild, and
# pick up any source edited since) with the flags cargo-fuzz would pass.
host=$(rustc -vV | sed -n 's/^host: //p')
dir=release
[ "$profile" = dev ] && dir=debug
bindir="${CARGO_TARGET_DIR:-target}/$host/$dir"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"

logdir="$(mktemp -d "${TMPDIR:-/tmp}/mtgate-fuzz-smoke.XXXXXX")"
failed=()
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    log="$logdir/$t.log"
    # Hellos run up to 16 645 bytes and the handshake caps its buffer at 17 669:
    # let those two targets make inputs big enough to reach the limits.
    extra=()
    case "$t" in client_hello | handshake) extra=(-max_len=20000) ;; esac
    # -timeout / -rss_limit_mb: a slow or memory-hungry input is a finding too.
    if "$bindir/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}" "corpus/$t" "${seeds[@]}" >"$log" 2>&1; then
        stats=$(grep -E "^#[0-9]+" "$log" | tail -n 1 | sed -E 's/^(#[0-9]+)[[:space:]]+[A-Z]+[[:space:]]+/\1 /' || true)
        echo "smoke: ok   $t  $stats" >&2
    else
        echo "smoke: FAIL $t (log: $log)" >&2
        grep -E -A3 "panicked|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -n 20 >&2 || tail -n 30 "$log" >&2
        failed+=("$t")
    fi
done
echo "smoke: total $(( $(date +%s) - start ))s, logs in $logdir" >&2

if [ "${#failed[@]}" -ne 0 ]; then
    echo "smoke: failed: ${failed[*]}" >&2
    exit 1
fi
