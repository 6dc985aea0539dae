"""Real Telegram clients (Telethon, TDLib via tdjson) through mtgate in middle-proxy (ME) mode, with an
ad tag, to the fake middle-end oracle (shared/oracles/fake_me/fake_me.py), all on loopback.

What the fake ME answers (its README §1.9): an unencrypted req_pq_multi / req_pq gets a resPQ with the
client's nonce echoed, pq = 0x17ED48941A08F981 and fingerprint 0xc3b42b026ce86b21 -- fake values a client
can parse but cannot finish a key exchange with; anything else is echoed back verbatim.  So:

* Telethon (abridged, intermediate, randomized) stops after the resPQ (``--no-dh``): it must get the fake
  ME's resPQ back with its own nonce, and the fake ME must have seen that req_pq_multi with our ad tag.
  (A req_DH_params would only be echoed, which no client accepts as an answer.)
* TDLib's testProxy (ee, dd) cannot succeed against the fake ME: TDLib parses the resPQ and then refuses
  its fingerprint ("Unknown Main fingerprints {-4344800451088585951}", TDLib only knows Telegram's real
  keys).  Checked: that exact error, and the tagged req_pq_multi seen by the fake ME.

Needs: the mtgate binary (MTGATE_BIN, default target/debug/mtgate), the fake ME's venv
(MTGATE_ME_PYTHON, default <repo>/.venv-me/bin/python) and the oracle folder (MTGATE_FAKE_ME_DIR,
default <repo>/../shared/oracles/fake_me, else <repo>/shared/oracles/fake_me).  A missing piece fails
the tests unless MTGATE_REALCLIENTS_OPTIONAL=1 (then they are skipped).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    CLIENT_TIMEOUT,
    MTGATE_BIN,
    MaskSink,
    random_key_hex,
    Secrets,
    Service,
    require,
    terminate,
    proxy_config,
    run_client,
)

AD_TAG = "0123456789abcdef0123456789abcdef"
FAKE_FP = 0xC3B42B026CE86B21  # the fake ME's resPQ fingerprint (README §1.9)
ME_PYTHON = Path(os.environ.get("MTGATE_ME_PYTHON", REPO / ".venv-me" / "bin" / "python"))


def _oracle_dir() -> Path:
    env = os.environ.get("MTGATE_FAKE_ME_DIR")
    if env:
        return Path(env)
    for d in (REPO.parent / "shared" / "oracles" / "fake_me", REPO / "shared" / "oracles" / "fake_me"):
        if (d / "fake_me.py").is_file():
            return d
    return REPO / "shared" / "oracles" / "fake_me"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeMe:
    """The oracle as a child process, logging JSON lines to a file."""

    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.secret_file = tmp / "proxy-secret"
        self.secret_file.write_bytes(os.urandom(128))
        self.log = tmp / "fake_me.jsonl"
        self._err = open(tmp / "fake_me.stderr.log", "wb")
        self.proc = subprocess.Popen(
            [str(ME_PYTHON), str(_oracle_dir() / "fake_me.py"), "--listen", f"127.0.0.1:{self.port}",
             "--secret-file", str(self.secret_file), "--log", str(self.log), "--quiet",
             "--duration", "300"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err, cwd=str(tmp))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("fake ME did not start:\n" + self.diag())

    def events(self) -> list[dict]:
        out = []
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events() if name in e.values()]

    def diag(self) -> str:
        try:
            err = (self._err.name and Path(self._err.name).read_text(errors="replace"))[-3000:]
        except OSError:
            err = ""
        return "--- fake ME log (tail):\n" + "\n".join(json.dumps(e) for e in self.events()[-30:]) + \
            "\n--- fake ME stderr:\n" + err

    def stop(self):
        terminate(self.proc)
        self._err.close()


def me_proxy_config(key_hex: str, state_dir: Path, mask_addr: str, me: FakeMe, conf: Path) -> str:
    # Direct mode is made impossible (every DC at a dead loopback port, no fallback), so an answer
    # can only have come through the fake ME.
    return proxy_config(key_hex=key_hex, state_dir=state_dir, mask_addr=mask_addr,
                        dcs=["127.0.0.1:1"], extra=f"""
[me]
enabled = true
ad_tag = "{AD_TAG}"
proxy_secret_file = "{me.secret_file}"
proxy_config_file = "{conf}"
fallback_direct = false
connections_per_addr = 1
""")


class MeStack(Secrets):
    def __init__(self, tmp: Path):
        require(MTGATE_BIN, ME_PYTHON, _oracle_dir() / "fake_me.py")
        self.key_hex = random_key_hex()
        self.me = FakeMe(tmp)
        self.mask = MaskSink("127.0.0.1")
        try:
            conf = tmp / "proxy-multi.conf"
            conf.write_text("".join(f"proxy_for {dc} 127.0.0.1:{self.me.port};\n"
                                    for dc in (1, 2, 3, 4, 5, -2)) + "default 2;\n")
            state = tmp / "state"
            state.mkdir(exist_ok=True)
            cfg = tmp / "mtgate.toml"
            cfg.write_text(me_proxy_config(self.key_hex, state,
                                           f"{self.mask.addr[0]}:{self.mask.addr[1]}", self.me, conf))
            self.proxy = Service("mtgate-me", [str(MTGATE_BIN), "run", "--config", str(cfg)], tmp)
        except BaseException:
            self.me.stop()
            self.mask.stop()
            raise
        self.host, self.port = self.proxy.addrs[0]
        # Wait (bounded) for mtgate's middle-end link: the fake ME logs the handshake.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not self._linked():
            time.sleep(0.1)

    def _linked(self) -> bool:
        return any("handshake" in str(e.values()) for e in self.me.events())

    def diag(self) -> str:
        return self.proxy.diag() + "\n" + self.me.diag()

    def reqs_since(self, n: int) -> list[dict]:
        return self.me.named("proxy_req")[n:]

    def stop(self):
        self.proxy.stop()
        self.me.stop()
        self.mask.stop()


@pytest.fixture(scope="module")
def me_stack(tmp_path_factory):
    st = MeStack(tmp_path_factory.mktemp("me_stack"))
    yield st
    st.stop()


def _tagged_req_pq(reqs: list[dict]) -> list[dict]:
    return [r for r in reqs if r.get("kind") == "req_pq_multi" and
            str(r.get("ad_tag", "")).lower() == AD_TAG]


@pytest.mark.parametrize("mode", ["abridged", "intermediate", "randomized"])
def test_telethon_gets_the_fake_me_res_pq(me_stack, mode):
    before = len(me_stack.me.named("proxy_req"))
    secret = ("dd" + me_stack.key_hex) if mode == "randomized" else me_stack.key_hex
    res = run_client(["telethon", me_stack.host, str(me_stack.port), secret, mode,
                      "--timeout", str(CLIENT_TIMEOUT), "--no-dh"], CLIENT_TIMEOUT * 2 + 20)
    msg = f"client result: {json.dumps(res, indent=1, sort_keys=True)}\n{me_stack.diag()}"
    assert res.get("ok") is True, msg
    assert res["nonce_match"] is True, msg
    assert res["res_pq"]["type"] == "ResPQ", msg
    # The fake ME's values (README §1.9), not a DC's.
    assert res["res_pq"]["pq"] == 0x17ED48941A08F981, msg
    assert FAKE_FP in res["res_pq"]["fingerprints"], msg
    assert _tagged_req_pq(me_stack.reqs_since(before)), msg


@pytest.mark.parametrize("kind", ["ee", "dd"])
def test_tdlib_test_proxy_reaches_the_fake_me(me_stack, kind):
    before = len(me_stack.me.named("proxy_req"))
    answers = len(me_stack.me.named("proxy_ans_sent"))
    secret = me_stack.ee_secret if kind == "ee" \
        else "dd" + me_stack.key_hex
    res = run_client(["tdjson", me_stack.host, str(me_stack.port), secret,
                      "--timeout", str(CLIENT_TIMEOUT)], CLIENT_TIMEOUT + 20)
    msg = f"client result: {json.dumps(res, indent=1, sort_keys=True)}\n{me_stack.diag()}"
    print("tdlib:", res.get("result"), res.get("error_message"))  # shown with pytest -rA
    # TDLib's req_pq_multi went through mtgate to the fake ME, tagged, and the resPQ went back.
    assert _tagged_req_pq(me_stack.reqs_since(before)), msg
    assert len(me_stack.me.named("proxy_ans_sent")) > answers, msg
    # TDLib parsed that resPQ (so it came back through mtgate intact) and refused its key
    # fingerprint, 0xc3b42b026ce86b21 read as a signed int64: the fake ME cannot go further.
    assert res.get("result") == "error", msg
    assert res.get("error_message") == f"Unknown Main fingerprints {{{FAKE_FP - 2**64}}}", msg

