"""Replay protection against real clients' own handshakes, captured on the wire.

A real client's handshake, captured on the wire and sent again, must be fronted to the mask host and
not served, in ``ee`` (FakeTLS) and in plain obfuscated2 modes.  The first use still works.

Topology (all loopback, everything started by the module fixture)::

    real client --> Tap (records client->proxy bytes) --> mtgate --> DC tap (counts) --> fake DC
    raw replayer ----------------------------------------> mtgate --(fronted)--> RecordingMaskSink

* ``Tap`` is a transparent TCP forwarder that records, per connection, every byte the client sent
  (and what came back, for diagnostics).  The same class in front of the fake DC counts the
  connections mtgate opens toward the DC.
* ``RecordingMaskSink`` is mtgate's ``tls.mask_host``.  It records every byte it receives per
  connection.  It never speaks first (mtgate pre-connects to it at every accept, and a mask site
  that speaks first would make mtgate front even valid clients); once a connection has delivered its
  first bytes it answers the fixed ``SINK_BANNER`` once, then only reads; it closes when it sees EOF.
  So on a fronted connection the client must receive exactly ``SINK_BANNER`` and nothing else.

Each replay test

1. runs a real client (TDLib ``testProxy`` for ``ee``; Telethon for plain/``dd``) through the tap and
   requires the fake DC's answer (same criteria as test_real_clients.py);
2. opens a raw TCP connection straight to mtgate and sends the captured client->proxy bytes of that
   connection (for ``ee``: the ClientHello record alone first, then -- once the sink has it -- the rest
   of the capture; for obfuscated2: the whole capture at once), half-closes and reads to EOF;
3. asserts: a new mask-sink connection received exactly the bytes sent (so the ClientHello /
   obfuscated2 header was fronted, byte for byte), the replayer received exactly ``SINK_BANNER`` (for
   ``ee`` that means no ServerHello from mtgate; for obfuscated2 no relayed DC answer), mtgate opened no
   DC connection for it, and mtgate logged exactly one close with reason ``replay``.

A final control runs fresh clients (TDLib ``ee`` and Telethon plain) after all the replays.
"""
from __future__ import annotations

import json
import os
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness as rc  # noqa: E402

TLS_DOMAIN = rc.TLS_DOMAIN
SINK_BANNER = b"HTTP/1.1 400 Bad Request\r\nX-Mask-Sink: mtgate-replay-test\r\nContent-Length: 0\r\n\r\n"
IO_TIMEOUT = 10.0        # bound for every raw-socket step
EVENT_TIMEOUT = 5.0      # bound for waiting on taps/sinks/logs to settle


# ------------------------------------------------------------------------------------------
# Capture forwarder
# ------------------------------------------------------------------------------------------

@dataclass
class TapConn:
    index: int
    c2s: bytearray = field(default_factory=bytearray)
    s2c: bytearray = field(default_factory=bytearray)
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class Tap(rc.Acceptor):
    """Transparent TCP forwarder on 127.0.0.1:0 recording both directions of every connection."""

    def __init__(self, name: str, upstream: tuple[str, int]):
        self.name = name
        self.upstream = upstream
        super().__init__("127.0.0.1", f"tap-{name}")

    def new_conn(self, index: int) -> TapConn:
        return TapConn(index)

    def serve(self, c: socket.socket, conn: TapConn):
        try:
            u = socket.create_connection(self.upstream, timeout=5)
        except OSError as e:
            conn.error = f"upstream connect: {e}"
            c.close()
            conn.done.set()
            return
        for s in (c, u):
            s.settimeout(60)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t1 = threading.Thread(target=self._pump, args=(c, u, conn.c2s, conn), daemon=True)
        t2 = threading.Thread(target=self._pump, args=(u, c, conn.s2c, conn), daemon=True)
        t1.start()
        t2.start()
        t1.join()
        t2.join()
        c.close()
        u.close()
        conn.done.set()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, rec: bytearray, conn: TapConn):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                rec += d
                dst.sendall(d)
            try:
                dst.shutdown(socket.SHUT_WR)  # pass the FIN on
            except OSError:
                pass
        except OSError as e:
            conn.error = conn.error or f"{type(e).__name__}: {e}"
            for s in (src, dst):  # unblock the other direction
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass



# ------------------------------------------------------------------------------------------
# Mask sink
# ------------------------------------------------------------------------------------------

@dataclass
class SinkConn:
    index: int
    data: bytearray = field(default_factory=bytearray)
    eof: threading.Event = field(default_factory=threading.Event)
    banner_sent: bool = False


class RecordingMaskSink(rc.Acceptor):
    """mtgate's mask host: records every byte per connection; never speaks first; after the first
    bytes of a connection it sends SINK_BANNER once; closes on EOF (or after 30 s)."""

    def __init__(self):
        super().__init__("127.0.0.1", "mask-sink")

    def new_conn(self, index: int) -> SinkConn:
        return SinkConn(index)

    def serve(self, c: socket.socket, conn: SinkConn):
        c.settimeout(30)
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                conn.data += d
                if not conn.banner_sent:
                    conn.banner_sent = True
                    c.sendall(SINK_BANNER)
        except OSError:
            pass
        finally:
            conn.eof.set()
            c.close()



# ------------------------------------------------------------------------------------------
# The stack
# ------------------------------------------------------------------------------------------

def proxy_config(dc_addr: str, key_hex: str, state_dir: Path, mask_addr: str) -> str:
    return rc.proxy_config(key_hex=key_hex, state_dir=state_dir, mask_addr=mask_addr,
                           dcs=[dc_addr], extra="""
[upstream]
fallback_dc = 2

[log]
# debug: a connection that never authenticated (a replay) logs its close
# only at debug (info stays bounded under floods).
level = "debug"
format = "json"

# Every replay here comes from 127.0.0.1, like the real clients: reputation
# would (rightly) block that address after a few replays. Here it only counts.
[policy.reputation]
mode = "monitor"
""")


class ReplayStack(rc.Secrets):
    def __init__(self, tmp: Path):
        self.key_hex = rc.random_key_hex()
        self.fake_dc = self.dc_tap = self.sink = self.proxy = self.tap = None
        try:
            self.fake_dc = rc.Service("fake-dc", [str(rc.FAKE_DC_BIN), "--listen", "127.0.0.1:0"], tmp)
            self.dc_tap = Tap("dc", self.fake_dc.addrs[0])
            self.sink = RecordingMaskSink()
            state = tmp / "state"
            state.mkdir(exist_ok=True)
            cfg = tmp / "mtgate.toml"
            cfg.write_text(proxy_config(rc.fmt_addr(*self.dc_tap.addr), self.key_hex, state,
                                        rc.fmt_addr(*self.sink.addr)))
            self.proxy = rc.Service("mtgate", [str(rc.MTGATE_BIN), "run", "--config", str(cfg)], tmp)
            self.host, self.port = self.proxy.addrs[0]
            self.tap = Tap("client", (self.host, self.port))
        except BaseException:
            self.stop()
            raise

    def proxy_events(self) -> list[dict]:
        out = []
        try:
            text = self.proxy.stderr_path.read_text("utf-8", "replace")
        except OSError:
            return out
        for line in text.splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def closes_with_reason(self, reason: str) -> int:
        n = 0
        for e in self.proxy_events():
            f = e.get("fields", {})
            if f.get("message") == "closed" and f.get("reason") == reason:
                n += 1
        return n

    def authenticated(self) -> int:
        return sum(1 for e in self.proxy_events() if e.get("fields", {}).get("message") == "client authenticated")

    def diag(self) -> str:
        parts = []
        for s in (self.fake_dc, self.proxy):
            if s is not None:
                parts.append(s.diag())
        if self.sink is not None:
            parts.append("--- mask sink connections: " + ", ".join(
                f"#{c.index}:{len(c.data)}B{'/eof' if c.eof.is_set() else ''}" for c in self.sink.since(0)))
        if self.dc_tap is not None:
            parts.append(f"--- DC connections: {self.dc_tap.count()}")
        return "\n".join(parts)

    def check_alive(self):
        for s in (self.fake_dc, self.proxy):
            assert s.alive(), f"{s.name} died (rc={s.proc.returncode})\n{self.diag()}"

    def stop(self):
        for x in (self.tap, self.proxy, self.sink, self.dc_tap, self.fake_dc):
            if x is not None:
                try:
                    x.stop()
                except Exception:  # noqa: BLE001 -- best-effort teardown
                    pass


@pytest.fixture(scope="module")
def rstack(tmp_path_factory):
    rc.require(rc.MTGATE_BIN, rc.FAKE_DC_BIN)
    st = ReplayStack(tmp_path_factory.mktemp("replay"))
    yield st
    st.stop()


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def wait_for(pred, timeout: float = EVENT_TIMEOUT, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def captured_session(st: ReplayStack, tap_before: int) -> TapConn:
    """The one tap connection that carried the real client's session since ``tap_before``."""
    conns = st.tap.since(tap_before)
    assert conns, f"the client made no connection through the tap\n{st.diag()}"
    for c in conns:
        assert c.done.wait(EVENT_TIMEOUT), f"tap connection #{c.index} did not finish\n{st.diag()}"
    with_data = [c for c in conns if c.c2s]
    assert len(with_data) == 1, (
        f"expected exactly one client connection with data, got {[(c.index, len(c.c2s)) for c in conns]}")
    return with_data[0]


def tls_first_record(data: bytes) -> bytes:
    assert len(data) >= 5 and data[:3] == b"\x16\x03\x01", f"capture does not start with a TLS handshake record: {data[:16].hex()}"
    n = int.from_bytes(data[3:5], "big")
    assert len(data) >= 5 + n, "capture holds a truncated ClientHello"
    return bytes(data[:5 + n])


@dataclass
class ReplayResult:
    reply: bytes
    reply_eof: bool
    sent: bytes
    sink_conn: SinkConn | None
    new_sink_conns: list[SinkConn]
    dc_conns_opened: int
    replay_closes: int
    error: str | None = None

    def describe(self) -> str:
        return (f"sent {len(self.sent)} bytes; replayer got {len(self.reply)} bytes "
                f"(eof={self.reply_eof}): {self.reply[:96].hex()}; new sink conns: "
                f"{[(c.index, len(c.data), c.eof.is_set()) for c in self.new_sink_conns]}; "
                f"DC connections opened: {self.dc_conns_opened}; replay closes logged: "
                f"{self.replay_closes}; error: {self.error}")


def raw_replay(st: ReplayStack, first: bytes, rest: bytes = b"") -> ReplayResult:
    """Send ``first`` on a raw TCP connection to mtgate; once the mask sink has it (or mtgate answered
    or closed), send ``rest``; half-close; read to EOF.  Every step bounded by IO_TIMEOUT."""
    sink_before = st.sink.count()
    dc_before = st.dc_tap.count()
    replay_before = st.closes_with_reason("replay")
    reply = bytearray()
    eof = False
    error = None
    sink_conn = None

    def find_sink():
        for c in st.sink.since(sink_before):
            if bytes(c.data[:len(first)]) == first:
                return c
        return None

    s = socket.create_connection((st.host, st.port), timeout=IO_TIMEOUT)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(first)
        # Phase 1: wait until the sink received `first`, or mtgate itself answered/closed.
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            sink_conn = find_sink()
            if sink_conn is not None:
                break
            r, _, _ = select.select([s], [], [], 0.02)
            if r:
                d = s.recv(65536)
                if not d:
                    eof = True
                else:
                    reply += d
                break
        # Phase 2: the rest of the capture, then FIN.
        try:
            if rest and not eof:
                s.sendall(rest)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            error = f"send rest: {type(e).__name__}: {e}"
        # Phase 3: read to EOF.
        deadline = time.monotonic() + IO_TIMEOUT
        while not eof and time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], 0.05)
            if not r:
                continue
            try:
                d = s.recv(65536)
            except OSError as e:
                error = error or f"recv: {type(e).__name__}: {e}"
                break
            if not d:
                eof = True
            else:
                reply += d
    finally:
        s.close()
    if sink_conn is None:
        sink_conn = find_sink()
    if sink_conn is not None:
        sink_conn.eof.wait(EVENT_TIMEOUT)
    # The proxy logs the close once the splice ended (right after our EOF): give it a moment.
    wait_for(lambda: st.closes_with_reason("replay") > replay_before)
    return ReplayResult(
        reply=bytes(reply), reply_eof=eof, sent=first + rest, sink_conn=sink_conn,
        new_sink_conns=st.sink.since(sink_before), dc_conns_opened=st.dc_tap.count() - dc_before,
        replay_closes=st.closes_with_reason("replay") - replay_before, error=error)


def assert_fronted(res: ReplayResult, st: ReplayStack, first: bytes):
    msg = f"{res.describe()}\n{st.diag()}"
    # The mask site got the replayed handshake, first byte on, exactly as sent, and nothing else.
    assert res.sink_conn is not None, "no mask-sink connection received the replayed bytes: " + msg
    assert res.sink_conn.eof.is_set(), "the fronted connection never ended at the sink: " + msg
    assert bytes(res.sink_conn.data[:len(first)]) == first, msg
    assert bytes(res.sink_conn.data) == res.sent, "sink bytes differ from the bytes replayed: " + msg
    # The replayer saw only the mask site: exactly the banner, then EOF (no ServerHello, no DC answer).
    assert res.reply == SINK_BANNER, "replayer got something other than the mask site's banner: " + msg
    assert res.reply_eof, msg
    # mtgate did not serve it: no DC connection, and it logged the close as a replay.
    assert res.dc_conns_opened == 0, "mtgate opened a DC connection for the replay: " + msg
    assert res.replay_closes == 1, "mtgate did not log exactly one close with reason replay: " + msg
    st.check_alive()


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------

def test_ee_tdlib_handshake_replayed_is_fronted(rstack):
    st = rstack
    tap_before, dc_before, replay_before = st.tap.count(), st.dc_tap.count(), st.closes_with_reason("replay")

    # First use through the capture forwarder: must work.
    res = rc.tdlib(st.tap.addr[0], st.tap.addr[1], st.ee_secret)
    rc.assert_tdlib_got_dc_answer(res, st)
    cap = captured_session(st, tap_before)
    assert st.dc_tap.count() > dc_before, st.diag()
    assert st.closes_with_reason("replay") == replay_before, "the first use was taken for a replay\n" + st.diag()
    data = bytes(cap.c2s)
    hello = tls_first_record(data)
    assert 512 <= len(hello) <= 4096, len(hello)
    assert bytes(cap.s2c[:3]) == b"\x16\x03\x03", "the real client got no ServerHello: " + cap.s2c[:16].hex()
    rest = data[len(hello):]
    assert rest[:6] == b"\x14\x03\x03\x00\x01\x01", "expected TDLib's CCS after the ClientHello: " + rest[:16].hex()

    # The same bytes again, straight to mtgate: fronted, not served.
    r = raw_replay(st, hello, rest)
    assert_fronted(r, st, hello)
    assert not r.reply.startswith(b"\x16\x03"), "mtgate answered a replayed ClientHello with a ServerHello"


@pytest.mark.parametrize("mode,secret_kind", [
    ("abridged", "plain"),
    ("intermediate", "plain"),
    ("randomized", "dd"),
])
def test_obfs2_telethon_handshake_replayed_is_fronted(rstack, mode, secret_kind):
    st = rstack
    secret = st.plain_secret if secret_kind == "plain" else st.dd_secret
    tap_before, dc_before, replay_before = st.tap.count(), st.dc_tap.count(), st.closes_with_reason("replay")

    res = rc.telethon(st.tap.addr[0], st.tap.addr[1], secret, mode)
    rc.assert_telethon_got_dc_answer(res, st)
    cap = captured_session(st, tap_before)
    assert st.dc_tap.count() > dc_before, st.diag()
    assert st.closes_with_reason("replay") == replay_before, "the first use was taken for a replay\n" + st.diag()
    data = bytes(cap.c2s)
    # obfuscated2 header + req_pq_multi frame + req_DH_params frame.
    assert len(data) >= 64 + 40, len(data)
    assert data[:3] != b"\x16\x03\x01"

    r = raw_replay(st, data)
    assert_fronted(r, st, data[:64])


def test_fresh_clients_after_replays_still_work(rstack):
    """Control: the replays did not poison anything; new handshakes are still served."""
    st = rstack
    dc_before = st.dc_tap.count()
    auth_before = st.authenticated()
    res = rc.tdlib(st.host, st.port, st.ee_secret)
    rc.assert_tdlib_got_dc_answer(res, st)
    res = rc.telethon(st.host, st.port, st.plain_secret, "intermediate")
    rc.assert_telethon_got_dc_answer(res, st)
    assert st.dc_tap.count() >= dc_before + 2, st.diag()
    assert wait_for(lambda: st.authenticated() >= auth_before + 2), st.diag()
    st.check_alive()
