"""Fixtures of the real-client tests: ``stack`` and ``stack6``, the fake DC and mtgate (with a
loopback mask sink) on 127.0.0.1 and ::1, one per test module.  The helpers they are built on are
in harness.py; the ME and replay suites build their own stacks from the same pieces."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from harness import (FAKE_DC_BIN, MTGATE_BIN, MaskSink, Secrets, Service, Socks5Proxy, fmt_addr,
                     proxy_config, random_key_hex, require)


class Stack(Secrets):
    def __init__(self, fake_dc: Service, proxy: Service, key_hex: str, mask: MaskSink,
                 socks: Socks5Proxy | None = None):
        self.fake_dc = fake_dc
        self.proxy = proxy
        self.mask = mask
        self.socks = socks
        self.key_hex = key_hex
        self.host, self.port = proxy.addrs[0]
        self.dc_host, self.dc_port = fake_dc.addrs[0]

    def diag(self) -> str:
        return (self.fake_dc.diag() + "\n" + self.proxy.diag() +
                f"\n--- mask sink connections: {self.mask.connections}")

    def stop(self):
        self.proxy.stop()
        self.fake_dc.stop()
        self.mask.stop()
        if self.socks is not None:
            self.socks.stop()

    def check_alive(self):
        for s in (self.fake_dc, self.proxy):
            assert s.alive(), f"{s.name} died (rc={s.proc.returncode})\n{self.diag()}"


def _ws_upstream(fake_dc: Service) -> str:
    """[upstream.websocket] pointing every DC (and its media name) at the fake DC's ws:// front."""
    ws = next(line.split()[1] for line in fake_dc.lines if line.startswith("LISTENING-WS "))
    names = [f"dc{n}.ws.test" for n in range(1, 6)] + [f"dc{n}-1.ws.test" for n in range(1, 6)]
    hosts = ", ".join(f'"{n}" = "dc{n}.ws.test"' for n in range(1, 6))
    resolve = ", ".join(f'"{name}" = "{ws}"' for name in names)
    return (f"\n[upstream.websocket]\nenabled = true\ntls = false\n"
            f"hosts = {{ {hosts} }}\nresolve = {{ {resolve} }}\n")


def _start_stack(tmp: Path, host: str, socks: Socks5Proxy | None = None, extra: str = "",
                 ws_front: bool = False, echo: bool = False) -> Stack:
    """The fake DC and mtgate (with a loopback mask sink) on ``host``. ``socks``: DC connections
    through it; ``ws_front``: only through the fake DC's ws:// endpoint (DC addresses dead);
    ``echo``: the fake DC echoes the decrypted stream instead of answering MTProto."""
    require(MTGATE_BIN, FAKE_DC_BIN)
    key_hex = random_key_hex()
    mask = MaskSink(host)
    fake_dc = None
    upstream = "\n[upstream]\nfallback_dc = 2\n"
    if socks is not None:
        upstream += f'socks5 = ["socks5://{socks.user.decode()}:{socks.password.decode()}@{fmt_addr(*socks.addr)}"]\n'
    try:
        args = [str(FAKE_DC_BIN), "--listen", fmt_addr(host, 0)]
        if echo:
            args.append("--echo")
        if ws_front:
            args += ["--ws-front", "127.0.0.1:0"]
        fake_dc = Service("fake-dc", args, tmp)
        dcs = [fmt_addr(*fake_dc.addrs[0])]
        if ws_front:
            dcs, upstream = ["127.0.0.1:1"], upstream + _ws_upstream(fake_dc)
        state = tmp / "state"
        state.mkdir(exist_ok=True)
        cfg = tmp / "mtgate.toml"
        cfg.write_text(proxy_config(listen=fmt_addr(host, 0), dcs=dcs,
                                    key_hex=key_hex, state_dir=state,
                                    mask_addr=fmt_addr(*mask.addr), public_host=host,
                                    extra=upstream + extra))
        proxy = Service("mtgate", [str(MTGATE_BIN), "run", "--config", str(cfg)], tmp)
    except BaseException:
        if fake_dc is not None:
            fake_dc.stop()
        mask.stop()
        raise
    return Stack(fake_dc, proxy, key_hex, mask, socks)


def _ipv6_loopback_ok() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = _start_stack(tmp_path_factory.mktemp("stack4"), "127.0.0.1")
    yield st
    st.stop()


@pytest.fixture(scope="module")
def stack6(tmp_path_factory):
    if not _ipv6_loopback_ok():
        pytest.skip("no IPv6 loopback")
    st = _start_stack(tmp_path_factory.mktemp("stack6"), "::1")
    yield st
    st.stop()



@pytest.fixture(scope="module")
def stack_socks(tmp_path_factory):
    """The stack with mtgate's DC connections going through a SOCKS5 proxy with a password."""
    socks = Socks5Proxy("mtgate", "pw-" + os.urandom(4).hex())
    try:
        st = _start_stack(tmp_path_factory.mktemp("stack_socks"), "127.0.0.1", socks)
    except BaseException:
        socks.stop()
        raise
    yield st
    st.stop()


@pytest.fixture(scope="module")
def stack_pp(tmp_path_factory):
    """The stack with mtgate trusting a PROXY-protocol front end at 127.0.0.2, whose clients are
    announced as 198.51.100.7; an ACL blocks 198.51.100.66 to show the policy sees them."""
    st = _start_stack(tmp_path_factory.mktemp("stack_pp"), "127.0.0.1",
                      extra='\n[proxy_protocol]\ntrusted = ["127.0.0.2"]\n'
                            '[policy]\nrefuse_action = "close"\n'
                            '[policy.acl]\nrules = [ { cidr = "198.51.100.66/32", level = "blocked" } ]\n')
    yield st
    st.stop()


@pytest.fixture(scope="module")
def stack_ws(tmp_path_factory):
    """mtgate reaching the fake DC only through a ws:// WebSocket endpoint in front of it
    ([upstream.websocket]); every DC's TCP address is dead."""
    st = _start_stack(tmp_path_factory.mktemp("stack_ws"), "127.0.0.1", ws_front=True)
    yield st
    st.stop()
