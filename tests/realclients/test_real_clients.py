"""Real Telegram clients (Telethon, TDLib via tdjson) through the running mtgate proxy to the
project's fake DC, all on loopback.  See README.md in this directory.

Binaries (build first with ``cargo build``):
  MTGATE_BIN          default <repo>/target/debug/mtgate
  MTGATE_FAKE_DC_BIN  default <repo>/target/debug/mtgate-fake-dc
Set MTGATE_REALCLIENTS_OPTIONAL=1 to skip (instead of fail) when a binary or a client library is
missing.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import clients  # noqa: E402

MTGATE_BIN = Path(os.environ.get("MTGATE_BIN", REPO / "target" / "debug" / "mtgate"))
FAKE_DC_BIN = Path(os.environ.get("MTGATE_FAKE_DC_BIN", REPO / "target" / "debug" / "mtgate-fake-dc"))
OPTIONAL = os.environ.get("MTGATE_REALCLIENTS_OPTIONAL") == "1"

TLS_DOMAIN = "www.example.com"
STARTUP_TIMEOUT = 30.0      # seconds to wait for a "LISTENING" line
CLIENT_TIMEOUT = 10.0       # per-request timeout given to the client libraries
SUBPROCESS_SLACK = 20.0     # extra wall-clock allowed for a client subprocess


def _missing(what: str):
    if OPTIONAL:
        pytest.skip(what)
    pytest.fail(what + " (set MTGATE_REALCLIENTS_OPTIONAL=1 to skip instead)", pytrace=False)


def _require_python_module(name: str):
    try:
        __import__(name)
    except Exception as e:  # noqa: BLE001
        _missing(f"python module {name!r} not importable ({e}); pip install telethon tdjson")


# ------------------------------------------------------------------------------------------
# Subprocess management
# ------------------------------------------------------------------------------------------

class Service:
    """A long-running binary that announces ``LISTENING <ip:port>`` lines on stdout."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, n_listeners: int = 1):
        self.name = name
        self.argv = argv
        self.lines: list[str] = []
        self.addrs: list[tuple[str, int]] = []
        self._q: queue.Queue = queue.Queue()
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, cwd=str(REPO))
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len(self.addrs) < n_listeners:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError(f"{name}: no LISTENING line within {STARTUP_TIMEOUT}s\n{self.diag()}")
            try:
                line = self._q.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with {self.proc.returncode}\n{self.diag()}")
                continue
            if line is None:
                continue
            if line.startswith("LISTENING "):
                self.addrs.append(parse_addr(line.split()[1]))

    def _pump(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def diag(self, tail: int = 40) -> str:
        try:
            err = self.stderr_path.read_bytes().decode("utf-8", "replace").splitlines()[-tail:]
        except OSError:
            err = []
        return (f"--- {self.name} argv: {' '.join(map(str, self.argv))}\n"
                f"--- {self.name} stdout (tail):\n" + "\n".join(self.lines[-tail:]) +
                f"\n--- {self.name} stderr (tail):\n" + "\n".join(err))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


def parse_addr(s: str) -> tuple[str, int]:
    s = s.strip()
    host, port = s.rsplit(":", 1)
    return host.strip("[]"), int(port)


def fmt_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MaskSink:
    """Loopback stand-in for the fronting site: the proxy may forward bad clients here (it must never
    reach the real www.example.com from a test).  Accepts, reads until EOF, counts connections."""

    def __init__(self, host: str):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.5)
        self.addr = (host, self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._drain, args=(c,), daemon=True).start()

    @staticmethod
    def _drain(c):
        c.settimeout(15)
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self._stop.set()
        self._t.join(timeout=2)
        self.sock.close()


def proxy_config(listen: str, dc_addr: str, key_hex: str, state_dir: Path, mask_addr: str,
                 public_host: str) -> str:
    # Every DC index points at the fake DC and masking goes to a loopback sink: nothing may leave
    # loopback.  public_host is set so the proxy never tries to discover its public address.
    dcs = "\n".join(f'{i} = ["{dc_addr}"]' for i in range(1, 6))
    return f"""[server]
listen = ["{listen}"]
public_host = "{public_host}"
state_dir = "{state_dir}"

[tls]
domains = ["{TLS_DOMAIN}"]
mask_host = "{mask_addr}"

[users.alice]
secret = "{key_hex}"
modes = ["classic", "dd", "ee"]

[dcs]
{dcs}

[upstream]
fallback_dc = 2
"""


class Stack:
    def __init__(self, fake_dc: Service, proxy: Service, key_hex: str, mask: MaskSink):
        self.fake_dc = fake_dc
        self.proxy = proxy
        self.mask = mask
        self.key_hex = key_hex
        self.host, self.port = proxy.addrs[0]
        self.dc_host, self.dc_port = fake_dc.addrs[0]

    @property
    def plain_secret(self) -> str:
        return self.key_hex

    @property
    def dd_secret(self) -> str:
        return "dd" + self.key_hex

    @property
    def ee_secret(self) -> str:
        return "ee" + self.key_hex + TLS_DOMAIN.encode().hex()

    def diag(self) -> str:
        return (self.fake_dc.diag() + "\n" + self.proxy.diag() +
                f"\n--- mask sink connections: {self.mask.connections}")

    def stop(self):
        self.proxy.stop()
        self.fake_dc.stop()
        self.mask.stop()

    def check_alive(self):
        for s in (self.fake_dc, self.proxy):
            assert s.alive(), f"{s.name} died (rc={s.proc.returncode})\n{self.diag()}"


def _start_stack(tmp: Path, host: str) -> Stack:
    for b in (MTGATE_BIN, FAKE_DC_BIN):
        if not b.is_file():
            _missing(f"binary {b} not found; run `cargo build` first")
    _require_python_module("telethon")
    _require_python_module("tdjson")
    key_hex = os.urandom(16).hex()
    mask = MaskSink(host)
    fake_dc = None
    try:
        fake_dc = Service("fake-dc", [str(FAKE_DC_BIN), "--listen", fmt_addr(host, 0)], tmp)
        state = tmp / "state"
        state.mkdir(exist_ok=True)
        cfg = tmp / "mtgate.toml"
        cfg.write_text(proxy_config(fmt_addr(host, 0), fmt_addr(*fake_dc.addrs[0]), key_hex, state,
                                    fmt_addr(*mask.addr), host))
        proxy = Service("mtgate", [str(MTGATE_BIN), "run", "--config", str(cfg)], tmp)
    except BaseException:
        if fake_dc is not None:
            fake_dc.stop()
        mask.stop()
        raise
    return Stack(fake_dc, proxy, key_hex, mask)


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


# ------------------------------------------------------------------------------------------
# Client runners (each client runs in its own subprocess: hard wall-clock bound, crash isolation)
# ------------------------------------------------------------------------------------------

def run_client(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / "clients.py"), *args]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, cwd=str(HERE))
    except subprocess.TimeoutExpired as e:
        return {"ok": False, "error": f"client subprocess timed out after {timeout}s",
                "stderr": (e.stderr or b"").decode("utf-8", "replace")[-3000:]}
    out = p.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        res = json.loads(out[-1])
    except (IndexError, json.JSONDecodeError):
        res = {"ok": False, "error": f"no JSON from client (rc={p.returncode})"}
    res["stderr"] = p.stderr.decode("utf-8", "replace")[-3000:]
    return res


def telethon(host, port, secret, mode, timeout=CLIENT_TIMEOUT, dc_id=2) -> dict:
    return run_client(["telethon", host, str(port), secret, mode, "--timeout", str(timeout),
                       "--dc-id", str(dc_id)], timeout * 2 + SUBPROCESS_SLACK)


def tdlib(host, port, secret, timeout=CLIENT_TIMEOUT, dc_id=2) -> dict:
    return run_client(["tdjson", host, str(port), secret, "--timeout", str(timeout),
                       "--dc-id", str(dc_id)], timeout + SUBPROCESS_SLACK)


def assert_telethon_got_dc_answer(res: dict, st: Stack):
    msg = f"client result: {json.dumps(res, indent=1, sort_keys=True)}\n{st.diag()}"
    assert res.get("ok") is True, msg
    assert res["nonce_match"] is True, msg
    assert res["res_pq"]["nonce"] == res["sent_nonce"], msg
    # The answer is the fake DC's resPQ, not something else.
    assert res["res_pq"]["type"] == "ResPQ", msg
    assert res["res_pq"]["pq"] == clients.FAKE_DC_PQ, msg
    assert clients.FAKE_DC_FINGERPRINT in res["res_pq"]["fingerprints"], msg
    # Second round trip: the fake DC checked req_DH_params and echoed nonce + server_nonce.
    dh = res["dh_params"]
    assert dh["type"] == "ServerDHParamsOk", msg
    assert dh["nonce_match"] and dh["server_nonce_match"], msg
    assert dh["encrypted_answer_len"] == clients.FAKE_DC_DH_ANSWER_LEN, msg


def assert_tdlib_got_dc_answer(res: dict, st: Stack):
    msg = f"client result: {json.dumps(res, indent=1, sort_keys=True)}\n{st.diag()}"
    # TDLib reaches this error only after: resPQ with its own nonce + known fingerprint + a pq it
    # could factorise came back through the proxy, its req_DH_params went out through the proxy,
    # the fake DC validated it, and the DC's server_DH_params_ok (matching nonce and server_nonce,
    # 15-byte encrypted_answer) came back.  "Timeout expired", "Connection closed", "Nonce
    # mismatch", "Server nonce mismatch", "Unknown ... fingerprints", "Response hash mismatch" etc.
    # all mean the path is broken somewhere.
    assert res.get("result") == "error", msg
    assert res.get("error_message") == clients.TDLIB_EXPECTED_ERROR, msg


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------

def test_fake_dc_direct_with_telethon(stack):
    """Sanity check of the fake DC alone: Telethon's plain obfuscated2 (no proxy)."""
    res = telethon(stack.dc_host, stack.dc_port, "-", "direct")
    assert_telethon_got_dc_answer(res, stack)


@pytest.mark.parametrize("mode", ["abridged", "intermediate", "randomized"])
def test_telethon_through_proxy(stack, mode):
    secret = stack.dd_secret if mode == "randomized" else stack.plain_secret
    res = telethon(stack.host, stack.port, secret, mode)
    assert_telethon_got_dc_answer(res, stack)
    stack.check_alive()


def test_telethon_randomized_with_plain_secret(stack):
    """Telethon also allows the padded-intermediate tag with a secret given without the dd prefix."""
    res = telethon(stack.host, stack.port, stack.plain_secret, "randomized")
    assert_telethon_got_dc_answer(res, stack)


@pytest.mark.parametrize("kind", ["ee", "dd", "classic"])
def test_tdlib_test_proxy(stack, kind):
    secret = {"ee": stack.ee_secret, "dd": stack.dd_secret, "classic": stack.plain_secret}[kind]
    res = tdlib(stack.host, stack.port, secret)
    assert_tdlib_got_dc_answer(res, stack)
    stack.check_alive()


def test_tdlib_ee_base64url_secret(stack):
    """TDLib's exported form of an ee secret (base64url, no padding) must work the same."""
    import base64
    raw = bytes.fromhex(stack.ee_secret)
    secret = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    res = tdlib(stack.host, stack.port, secret)
    assert_tdlib_got_dc_answer(res, stack)


@pytest.mark.parametrize("dc_id", [1, 4, 5])
def test_tdlib_other_dc_ids(stack, dc_id):
    """TDLib writes the requested dc_id into the obfuscated2 header; every DC maps to the fake DC."""
    res = tdlib(stack.host, stack.port, stack.dd_secret, dc_id=dc_id)
    assert_tdlib_got_dc_answer(res, stack)


def test_wrong_secret_gets_no_dc_answer(stack):
    """Negative control: with a secret the proxy does not know, no client may see the DC's answer."""
    bad = bytes(b ^ 0xFF for b in bytes.fromhex(stack.key_hex)).hex()
    r1 = tdlib(stack.host, stack.port, "dd" + bad, timeout=4.0)
    assert r1.get("error_message") != clients.TDLIB_EXPECTED_ERROR, r1
    r2 = tdlib(stack.host, stack.port, "ee" + bad + TLS_DOMAIN.encode().hex(), timeout=4.0)
    assert r2.get("error_message") != clients.TDLIB_EXPECTED_ERROR, r2
    r3 = telethon(stack.host, stack.port, bad, "intermediate", timeout=4.0)
    assert r3.get("ok") is not True, r3
    stack.check_alive()


def test_ipv6_loopback(stack6):
    res = tdlib(stack6.host, stack6.port, stack6.ee_secret)
    assert_tdlib_got_dc_answer(res, stack6)
    res = telethon(stack6.host, stack6.port, stack6.dd_secret, "randomized")
    assert_telethon_got_dc_answer(res, stack6)
