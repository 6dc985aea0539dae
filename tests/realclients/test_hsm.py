"""Issue 13: secrets that exist only in an HSM (SoftHSM2 through PKCS#11), with real clients.

``mtgate hsm`` makes a key inside a SoftHSM2 token, sensitive and not extractable; the user's
secret is ``hsm:bob`` in the config, so the key is in neither the config nor the state directory,
nor ever in the proxy's memory: in the default digest mode the handshake's digests are computed
inside the token. TDLib (``ee``) and Telethon (``dd``) go through the proxy with it. The key
leaving the token during the run fronts its clients like strangers, counts the failures in
``/metrics`` and records ``hsm.error`` in the audit trail, and a reload is then refused with a
clear ``hsm:`` error; a bad PIN refuses the start the same way (and records it), as does a module
that is not there: never a crash.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import _start_stack
from harness import (FAKE_DC_BIN, MTGATE_BIN, _missing, admin_api, assert_tdlib_got_dc_answer,
                     assert_telethon_got_dc_answer, free_port, require, tdlib, telethon)

MODULE = Path(os.environ.get("MTGATE_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so"))
TOKEN = "hsm-test-superuser-token-000001"


def _reload(port: int) -> tuple[int, dict]:
    return admin_api(port, "POST", "/api/v1/config/reload", TOKEN)


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _move_keys(tokens: Path, aside: Path) -> list[Path]:
    """Moves the token's key objects (every ``*.object`` but ``token.object``) to ``aside``."""
    aside.mkdir()
    moved = []
    for f in sorted(tokens.glob("*/*.object")):
        if f.name != "token.object":
            f.rename(aside / f.name)
            moved.append(f)
    return moved


def _trail(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "audit.log").read_text().splitlines()]


def test_secrets_that_exist_only_in_the_hsm(tmp_path: Path, monkeypatch):
    require(MTGATE_BIN, FAKE_DC_BIN)
    if not MODULE.is_file() or shutil.which("softhsm2-util") is None:
        _missing(f"SoftHSM2 not found ({MODULE}; Debian package softhsm2, scripts/test.sh installs it)")
    # A token of this test's own.
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "mtgate-test",
                    "--pin", "1234", "--so-pin", "5678"], check=True, capture_output=True)
    pin = tmp_path / "hsm.pin"
    pin.write_text("1234\n")
    hsm = (f'\n[hsm]\nmodule = "{MODULE}"\ntoken = "mtgate-test"\npin_file = "{pin}"\n')

    # The key is made inside the token; its forms are printed once, for the clients.
    (tmp_path / "hsm.toml").write_text(f'[server]\nstate_dir = "{tmp_path / "hsm-state"}"\n{hsm}')
    made = subprocess.run([str(MTGATE_BIN), "hsm", "--config", str(tmp_path / "hsm.toml"),
                           "--label", "bob"], capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    forms = dict(line.split(":", 1) for line in made.stdout.splitlines() if ":" in line)
    dd = forms["dd (secure)"].strip()
    key_hex = dd[2:]
    assert len(key_hex) == 32

    port = free_port()
    extra = (hsm + f'\n[admin]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
             '\n[users.bob]\nsecret = "hsm:bob"\nmodes = ["ee", "dd"]\n')
    st = _start_stack(tmp_path, "127.0.0.1", extra=extra)
    state = tmp_path / "state"
    try:
        ee = "ee" + key_hex + "www.example.com".encode().hex()
        assert_tdlib_got_dc_answer(tdlib(st.host, st.port, ee), st)
        assert_telethon_got_dc_answer(telethon(st.host, st.port, dd, "randomized"), st)
        # The key is in neither the config nor the state directory.
        files = [tmp_path / "mtgate.toml", *[p for p in state.rglob("*") if p.is_file()]]
        for f in files:
            assert key_hex not in f.read_text(errors="replace"), f

        # The key leaves the token during the run (its objects moved out): the digests fail,
        # the client gets no answer from the DC, the failures are counted and recorded; the
        # proxy keeps running.
        moved = _move_keys(tmp_path / "tokens", tmp_path / "aside")
        assert len(moved) == 2, moved  # the key and its HMAC form
        r = telethon(st.host, st.port, dd, "randomized", timeout=3)
        assert not r.get("ok"), r
        assert _metric(port, "mtgate_hsm_digest_failures_total") > 0
        deadline = time.monotonic() + 10
        while not any(e["action"] == "hsm.error" for e in _trail(state)):
            assert time.monotonic() < deadline, _trail(state)
            time.sleep(0.2)
        error = next(e for e in _trail(state) if e["action"] == "hsm.error")
        assert "key `bob`" in error["result"], error
        # A reload now is refused with a clear error (the key is not in the token), recorded.
        status, answer = _reload(port)
        assert status == 400, answer
        assert "hsm: no secret key labelled `bob`" in answer["error"], answer
        refused = [e for e in _trail(state)
                   if e["action"] == "config.reload" and "hsm:" in e["result"]]
        assert refused, _trail(state)
        st.check_alive()
    finally:
        st.stop()

    # At start: a PIN that does not work refuses the start, clearly, and records it.
    pin.write_text("0000\n")
    run = subprocess.run([str(MTGATE_BIN), "run", "--no-qr", "--config", str(tmp_path / "mtgate.toml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "hsm: logging in to token `mtgate-test` failed" in run.stderr, run.stderr
    assert "panicked" not in run.stderr, run.stderr
    assert any(e["action"] == "hsm.error" for e in _trail(state)), _trail(state)
    # A module that is not there: as clear.
    cfg = (tmp_path / "mtgate.toml").read_text().replace(str(MODULE), "/nonexistent/libpkcs11.so")
    (tmp_path / "mtgate.toml").write_text(cfg)
    pin.write_text("1234\n")
    run = subprocess.run([str(MTGATE_BIN), "run", "--no-qr", "--config", str(tmp_path / "mtgate.toml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "hsm: cannot load the PKCS#11 module /nonexistent/libpkcs11.so" in run.stderr, run.stderr
