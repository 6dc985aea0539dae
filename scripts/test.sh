#!/usr/bin/env bash
# Runs every test of mtgate on a fresh machine: Rust unit, property and
# end-to-end tests, then the real-client tests (Telethon and TDLib through the
# proxy to the project's fake DC). Creates the Python venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

# apt_get WHY PACKAGE...: installs Debian packages (refreshing the package
# lists only if the first try fails), or says who needs them and stops.
apt_get() {
    local why="$1"; shift
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$* needed by $why: install them" >&2
        exit 1
    fi
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get install -y -qq "$@" >/dev/null 2>&1 \
        || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@" >/dev/null; }
}

echo "== system packages (nginx: the real mask site of the default-config probe suite) (${SECONDS}s)"
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && [ -z "${MTGATE_NGINX:-}" ]; then
    apt_get "crates/mtgate/tests/probes_default.rs (or set MTGATE_NGINX)" nginx-light
fi

echo "== system packages (pebble: the ACME test CA of crates/mtgate/tests/site_acme.rs) (${SECONDS}s)"
if [ ! -x /usr/bin/pebble ] || [ ! -x /usr/bin/pebble-challtestsrv ]; then
    apt_get crates/mtgate/tests/site_acme.rs pebble
fi

echo "== system packages (chromium, certutil: the browser of tests/realclients/test_site_browser.py) (${SECONDS}s)"
if [ ! -x /usr/bin/chromium ] || ! command -v certutil >/dev/null 2>&1; then
    apt_get "the browser tests in tests/realclients" chromium libnss3-tools
fi

echo "== system packages (softhsm2: the PKCS#11 token of tests/realclients/test_hsm.py) (${SECONDS}s)"
if [ ! -f /usr/lib/softhsm/libsofthsm2.so ] || ! command -v softhsm2-util >/dev/null 2>&1; then
    apt_get tests/realclients/test_hsm.py softhsm2
fi

echo "== system packages (redis-server: the shared store of crates/mtgate/tests/shared_redis.rs) (${SECONDS}s)"
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${MTGATE_REDIS_SERVER:-}" ]; then
    apt_get crates/mtgate/tests/shared_redis.rs redis-server
fi

echo "== cargo build (binaries used by the real-client tests) (${SECONDS}s)"
cargo build --workspace --bins

echo "== Python venv for the fake middle-end oracle (ME-mode tests) (${SECONDS}s)"
FAKE_ME_REQ="${MTGATE_FAKE_ME_DIR:-../shared/oracles/fake_me}/requirements.txt"
if [ ! -x .venv-me/bin/python ] || ! .venv-me/bin/python -c "import cryptography" 2>/dev/null; then
    python3 -m venv .venv-me
    .venv-me/bin/pip install --quiet --disable-pip-version-check -r "$FAKE_ME_REQ"
fi
export MTGATE_ME_REQUIRED=1

echo "== cargo test (${SECONDS}s)"
cargo test --workspace

echo "== real clients (Telethon, TDLib) (${SECONDS}s)"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import telethon, tdjson, pytest, yaml, playwright, telethon_webproxy" 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/realclients/requirements.txt
fi
.venv/bin/python -m pytest -q tests/realclients

echo "== packaging (systemd unit, Helm chart, Grafana dashboard) (${SECONDS}s)"
MTGATE_BIN="$PWD/target/debug/mtgate" .venv/bin/python -m pytest -q tests/deploy
