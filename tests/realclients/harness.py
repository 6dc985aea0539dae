"""Shared harness of the real-client tests: the binaries and their paths, a service that announces
``LISTENING`` lines, a loopback accept loop (mask sinks, taps), the proxy's config file, the
secrets of a stack, and the client runners (each client in its own subprocess: a hard wall-clock
bound and crash isolation).  The pytest fixtures built on it are in conftest.py.

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

import clients  # noqa: E402,F401  (re-exported for the tests)

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




def require(*binaries: Path, modules: tuple[str, ...] = ("telethon", "tdjson")):
    """Fails (or skips, when optional) unless every binary exists and every module imports."""
    for b in binaries:
        if not Path(b).is_file():
            _missing(f"binary {b} not found; run `cargo build` first")
    for m in modules:
        _require_python_module(m)


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
        terminate(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._stderr.close()


def terminate(proc: subprocess.Popen):
    """SIGTERM, then SIGKILL if it has not exited within 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def parse_addr(s: str) -> tuple[str, int]:
    s = s.strip()
    host, port = s.rsplit(":", 1)
    return host.strip("[]"), int(port)


def fmt_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"



class Acceptor:
    """A loopback listener whose accept loop runs in a thread and hands each connection, with a
    record made by ``new_conn(index)``, to ``serve(sock, record)`` in a thread of its own."""

    def __init__(self, host: str = "127.0.0.1", name: str = "acceptor", backlog: int = 64):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.addr = self.sock.getsockname()[:2]
        self.conns: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._accept_loop, daemon=True, name=name)
        self._t.start()

    def new_conn(self, index: int):
        return index

    def serve(self, c: socket.socket, conn) -> None:
        raise NotImplementedError

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                conn = self.new_conn(len(self.conns))
                self.conns.append(conn)
            threading.Thread(target=self.serve, args=(c, conn), daemon=True).start()

    @property
    def connections(self) -> int:
        return self.count()

    def count(self) -> int:
        with self._lock:
            return len(self.conns)

    def since(self, n: int) -> list:
        with self._lock:
            return list(self.conns[n:])

    def stop(self):
        self._stop.set()
        self._t.join(timeout=2)
        self.sock.close()


class MaskSink(Acceptor):
    """Loopback stand-in for the fronting site: the proxy may forward bad clients here (it must never
    reach the real www.example.com from a test).  Accepts, reads until EOF, counts connections."""

    def __init__(self, host: str):
        super().__init__(host, "mask-sink", 16)

    def serve(self, c: socket.socket, conn) -> None:
        c.settimeout(15)
        try:
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            c.close()


class Socks5Proxy(Acceptor):
    """A SOCKS5 proxy (RFC 1928 CONNECT, RFC 1929 password) on loopback for mtgate's upstream:
    records the targets it was asked for and relays both ways."""

    def __init__(self, user: str, password: str):
        self.user, self.password = user.encode(), password.encode()
        self.targets: list[str] = []
        super().__init__("127.0.0.1", "socks5")

    def serve(self, c: socket.socket, conn) -> None:
        c.settimeout(30)
        try:
            ver, n = _recv(c, 2)
            methods = _recv(c, n)
            if ver != 5 or 2 not in methods:
                c.sendall(b"\x05\xff")
                return
            c.sendall(b"\x05\x02")
            _, ulen = _recv(c, 2)
            user = _recv(c, ulen)
            password = _recv(c, _recv(c, 1)[0])
            if (user, password) != (self.user, self.password):
                c.sendall(b"\x01\x01")
                return
            c.sendall(b"\x01\x00")
            _, cmd, _, atyp = _recv(c, 4)
            if cmd != 1 or atyp not in (1, 4):
                return
            ip = socket.inet_ntop(socket.AF_INET if atyp == 1 else socket.AF_INET6,
                                  _recv(c, 4 if atyp == 1 else 16))
            port = int.from_bytes(_recv(c, 2), "big")
            with self._lock:
                self.targets.append(fmt_addr(ip, port))
            up = socket.create_connection((ip, port), timeout=10)
            c.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
            _relay(c, up)
        except (OSError, ValueError):
            pass
        finally:
            c.close()


class ProxyProtocolFront(Acceptor):
    """A load balancer stand-in: accepts clients on 127.0.0.1, connects to mtgate from
    ``source`` (a trusted front end there), sends a PROXY v2 header naming ``client`` as the
    connection's client, then relays both ways."""

    def __init__(self, upstream: tuple[str, int], source: str, client: tuple[str, int]):
        self.upstream, self.source, self.client = upstream, source, client
        super().__init__("127.0.0.1", "pp-front")

    def header(self) -> bytes:
        sig = b"\r\n\r\n\x00\r\nQUIT\n"
        body = (socket.inet_aton(self.client[0]) + socket.inet_aton(self.upstream[0]) +
                self.client[1].to_bytes(2, "big") + self.upstream[1].to_bytes(2, "big"))
        return sig + bytes([0x21, 0x11]) + len(body).to_bytes(2, "big") + body

    def serve(self, c: socket.socket, conn) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=10, source_address=(self.source, 0))
            up.sendall(self.header())
            _relay(c, up)
        except OSError:
            pass
        finally:
            c.close()


def _recv(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d:
            raise ValueError("closed")
        out += d
    return out


def _relay(c: socket.socket, up: socket.socket):
    """Both ways between ``c`` and ``up`` until each side has closed; closes ``up``."""
    for s in (c, up):
        s.settimeout(60)
    t = threading.Thread(target=_pipe, args=(up, c), daemon=True)
    t.start()
    _pipe(c, up)
    t.join(timeout=60)
    up.close()


def _pipe(src: socket.socket, dst: socket.socket):
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            dst.sendall(d)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def proxy_config(*, key_hex: str, state_dir: Path, mask_addr: str, dcs: list[str],
                 listen: str = "127.0.0.1:0", public_host: str = "127.0.0.1",
                 extra: str = "") -> str:
    """mtgate's config for a stack: user alice in every mode, DCs 1..5 at ``dcs``, masking to a
    loopback sink (nothing may leave loopback), ``public_host`` set so the proxy never looks for its
    public address; ``extra`` tables are appended."""
    dc_list = ", ".join(f'"{d}"' for d in dcs)
    dc_lines = "\n".join(f"{i} = [{dc_list}]" for i in range(1, 6))
    return f"""[server]
listen = ["{listen}"]
public_host = "{public_host}"
state_dir = "{state_dir}"

[tls]
domains = ["{TLS_DOMAIN}"]
mask_host = "{mask_addr}"
learn_profile = false

[users.alice]
secret = "{key_hex}"
modes = ["classic", "dd", "ee"]

[dcs]
{dc_lines}
{extra}"""


def random_key_hex() -> str:
    """A random 16-byte secret as 32 hex digits, never starting with a ``dd`` or ``ee`` byte:
    Telethon reads a plain secret that starts so as that form and refuses it (mtgate's own
    generator leaves them out for the same reason)."""
    while True:
        key = os.urandom(16)
        if key[0] not in (0xDD, 0xEE):
            return key.hex()


class Secrets:
    """The three secrets of a stack's user (``key_hex``)."""

    key_hex: str

    @property
    def plain_secret(self) -> str:
        return self.key_hex

    @property
    def dd_secret(self) -> str:
        return "dd" + self.key_hex

    @property
    def ee_secret(self) -> str:
        return "ee" + self.key_hex + TLS_DOMAIN.encode().hex()


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


def assert_telethon_got_dc_answer(res: dict, st):
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


def assert_tdlib_got_dc_answer(res: dict, st):
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
# The admin API
# ------------------------------------------------------------------------------------------

def free_port() -> int:
    """A loopback port free now (for an admin listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_api(port: int, method: str, path: str, token: str, body: dict | None = None):
    """One admin API call: (status, JSON answer)."""
    import urllib.error
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    if data is None and method == "POST":
        data = b""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
