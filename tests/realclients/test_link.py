"""The proxy-to-proxy link (issue 15) with real clients: Telethon and TDLib connect to a bridge
node whose own DC addresses are dead; the bridge carries their sessions over the link to an exit
node, which reaches the fake DC.  One bridge and exit pair per cipher, each pinned to it, rekeying
every second.  Then the
refusals an operator meets: a wrong token (the exit fronts the bridge like a prober) and lists with
no cipher in common, each with its entry in the audit trail and its count in /metrics."""
from __future__ import annotations

import base64
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from harness import (FAKE_DC_BIN, clients, MTGATE_BIN, Acceptor, MaskSink, Secrets, Service,
                     _recv, _relay, assert_tdlib_got_dc_answer,
                     assert_telethon_got_dc_answer, fmt_addr, free_port, proxy_config,
                     random_key_hex, require, tdlib, telethon)

CIPHERS = ["aes-256-gcm", "aes-128-gcm", "chacha20-poly1305", "xchacha20-poly1305"]


def keys() -> tuple[str, str, str]:
    """(exit secret key, exit public key, token), base64, from `mtgate link-keys`."""
    import subprocess
    out = subprocess.run([str(MTGATE_BIN), "link-keys", "--bridge", "msk"], check=True,
                         capture_output=True, timeout=30).stdout.decode()
    val = {}
    for line in out.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            val[k.strip()] = v.strip()
    token = val["token"].strip('"')
    return val["key"].strip('"'), val["exit_key"].strip('"'), token


class HelloMeddler(Acceptor):
    """Between a bridge and its exit: flips one byte in the middle of the bridge's hello (inside
    the encrypted payload that carries its cipher offer), then relays both ways."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        super().__init__("127.0.0.1", name="meddler")

    def serve(self, c, conn) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=10)
            head = _recv(c, 2)
            hello = bytearray(_recv(c, int.from_bytes(head, "big")))
        except (OSError, ValueError):
            c.close()
            return
        hello[len(hello) // 2] ^= 0x01
        up.sendall(head + bytes(hello))
        _relay(c, up)


class Pair(Secrets):
    """A fake DC, an exit in front of it and a bridge linked to the exit."""

    def __init__(self, tmp: Path, exit_ciphers: list[str], bridge_ciphers: list[str],
                 bridge_token: str | None = None, bridge_exit_key: str | None = None,
                 meddle: bool = False):
        require(MTGATE_BIN, FAKE_DC_BIN)
        self.key_hex = random_key_hex()
        self.mask = MaskSink("127.0.0.1")
        self.services: list[Service] = []
        secret, public, token = keys()
        self.link_port = free_port()
        self.exit_admin, self.bridge_admin = free_port(), free_port()
        self.meddler = None
        try:
            self.fake_dc = self._start("fake-dc", [str(FAKE_DC_BIN), "--listen", "127.0.0.1:0"], tmp)
            dc = fmt_addr(*self.fake_dc.addrs[0])
            names = ", ".join(f'"{c}"' for c in exit_ciphers)
            self.exit_state = self._config(tmp, "exit", [dc], f"""
[admin]
listen = "127.0.0.1:{self.exit_admin}"

[link.exit]
listen = "127.0.0.1:{self.link_port}"
key = "{secret}"
tokens = {{ msk = "{token}" }}
ciphers = [{names}]
rekey_interval = "1s"
""")
            self.exit = self._start("exit", [str(MTGATE_BIN), "run", "--config",
                                             str(tmp / "exit.toml")], tmp)
            names = ", ".join(f'"{c}"' for c in bridge_ciphers)
            exit_addr = f"127.0.0.1:{self.link_port}"
            if meddle:
                self.meddler = HelloMeddler(("127.0.0.1", self.link_port))
                exit_addr = fmt_addr(*self.meddler.addr)
            self.bridge_state = self._config(tmp, "bridge", ["127.0.0.1:1"], f"""
[admin]
listen = "127.0.0.1:{self.bridge_admin}"

[link.bridge]
exit = "{exit_addr}"
exit_key = "{bridge_exit_key or public}"
token = "{bridge_token or token}"
ciphers = [{names}]
rekey_interval = "1s"
""")
            self.bridge = self._start("bridge", [str(MTGATE_BIN), "run", "--config",
                                                 str(tmp / "bridge.toml")], tmp)
            self.host, self.port = self.bridge.addrs[0]
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, argv: list[str], tmp: Path) -> Service:
        s = Service(name, argv, tmp)
        self.services.append(s)
        return s

    def _config(self, tmp: Path, name: str, dcs: list[str], extra: str) -> Path:
        state = tmp / f"{name}-state"
        state.mkdir(exist_ok=True)
        (tmp / f"{name}.toml").write_text(proxy_config(
            key_hex=self.key_hex, state_dir=state, mask_addr=fmt_addr(*self.mask.addr), dcs=dcs,
            extra=extra))
        return state

    def diag(self) -> str:
        return "\n".join(s.diag() for s in self.services)

    def stop(self):
        for s in reversed(self.services):
            s.stop()
        self.mask.stop()
        if self.meddler is not None:
            self.meddler.stop()

    def audit(self, state: Path) -> list[dict]:
        path = state / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def metrics(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of `name` with exactly these labels (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.split()[-1])
    return 0.0


def wait_for(check, what: str, limit: float = 10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {limit}s: {what}")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_real_clients_through_bridge_and_exit(tmp_path, cipher):
    # The bridge offers every cipher with this one last; the exit has only it.
    order = [c for c in CIPHERS if c != cipher] + [cipher]
    p = Pair(tmp_path, [cipher], order)
    try:
        res = telethon(p.host, p.port, p.dd_secret, "randomized")
        assert_telethon_got_dc_answer(res, p)
        res = tdlib(p.host, p.port, p.ee_secret)
        assert_tdlib_got_dc_answer(res, p)
        for port, role in ((p.exit_admin, "exit"), (p.bridge_admin, "bridge")):
            text = p.metrics(port)
            assert metric(text, "mtgate_link_cipher_total", role=role, cipher=cipher) >= 1, text
            assert metric(text, "mtgate_link_streams_total", role=role) >= 2, text
            assert metric(text, "mtgate_link_up", role=role) >= 1, text
        for state, role in ((p.exit_state, "exit"), (p.bridge_state, "bridge")):
            ups = [e for e in p.audit(state) if e.get("action") == "link.up"]
            assert ups and ups[0]["after"]["cipher"] == cipher, p.audit(state)
            assert ups[0]["after"]["role"] == role
        exit_up = [e for e in p.audit(p.exit_state) if e.get("action") == "link.up"][0]
        assert exit_up["after"]["bridge"] == "msk"
        # Keys rotate after a second (rekey_interval) at the next record each side sends: the
        # clients' traffic or, at the latest, the 15 s keepalive.
        for state in (p.exit_state, p.bridge_state):
            wait_for(lambda: any(e.get("action") == "link.rekey" and e["after"]["direction"] == "out"
                                 for e in p.audit(state)), f"link.rekey in {state}", 20)
        for port, role in ((p.exit_admin, "exit"), (p.bridge_admin, "bridge")):
            assert metric(p.metrics(port), "mtgate_link_rekeys_total", role=role) >= 2
        for s in p.services:
            assert s.alive(), p.diag()
    finally:
        p.stop()


@pytest.mark.parametrize("fault", ["wrong-token", "unknown-exit-key", "tampered-offer"])
def test_a_bad_hello_is_fronted_and_audited_on_the_bridge(tmp_path, fault):
    """A wrong token, a bridge pinning another exit's key, and an offer changed in flight all
    leave the exit unable to read the hello: it fronts it like a prober's bytes, the bridge gets
    no link and says so in its audit trail, and nothing crashes."""
    other = keys()[1]
    p = Pair(tmp_path, CIPHERS, CIPHERS,
             bridge_token=base64.b64encode(os.urandom(32)).decode() if fault == "wrong-token" else None,
             bridge_exit_key=other if fault == "unknown-exit-key" else None,
             meddle=fault == "tampered-offer")
    try:
        res = telethon(p.host, p.port, p.dd_secret, "randomized", timeout=5)
        assert res.get("ok") is not True, res
        # The exit handed the bridge's hello to its mask site, like any prober's bytes.
        wait_for(lambda: p.mask.count() >= 1, "the exit fronted the bridge")
        wait_for(lambda: any(e.get("action") == "link.refused"
                             for e in p.audit(p.bridge_state)), "link.refused on the bridge", 20)
        refused = [e for e in p.audit(p.bridge_state) if e.get("action") == "link.refused"][0]
        assert "token" in refused["result"], refused
        assert metric(p.metrics(p.bridge_admin), "mtgate_link_refused_total", role="bridge") >= 1
        assert metric(p.metrics(p.exit_admin), "mtgate_link_refused_total", role="exit") >= 1
        assert metric(p.metrics(p.exit_admin), "mtgate_link_established_total", role="exit") == 0
        for s in p.services:
            assert s.alive(), p.diag()
    finally:
        p.stop()


def test_lists_with_no_common_cipher_are_refused_and_audited_on_both(tmp_path):
    p = Pair(tmp_path, ["aes-256-gcm", "aes-128-gcm"], ["chacha20-poly1305", "xchacha20-poly1305"])
    try:
        res = tdlib(p.host, p.port, p.ee_secret, timeout=5)
        assert res.get("error_message") != clients.TDLIB_EXPECTED_ERROR, res
        for state in (p.exit_state, p.bridge_state):
            wait_for(lambda: any(e.get("action") == "link.refused" for e in p.audit(state)),
                     f"link.refused in {state}")
            refused = [e for e in p.audit(state) if e.get("action") == "link.refused"][0]
            assert "no cipher in common" in refused["result"], refused
        # The bridge knew the token: it was told why, not fronted.
        assert p.mask.count() == 0
        for s in p.services:
            assert s.alive(), p.diag()
    finally:
        p.stop()
