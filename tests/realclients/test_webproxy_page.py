"""Issue 26: the bridge page's own script in a real browser.

Headless Chromium (Playwright, Debian's binary) opens a test page on http://127.0.0.1:<port> that
stands in for the app's loopback boundary: it iframes mtgate's bridge page
(``https://site.test/?bridge=<capability>``, the test CA trusted), hands it a ``MessagePort`` with
``{t:'tproxy-init',v:1}`` and then passes whole frames both ways.  The frames are made here, as
the app makes them: HELLO (→ WELCOME), OPEN, DATA carrying a ``dd`` obfuscated2 stream.  The
page's script creates the session and carries the frames over each of the four carriers
(``websocket``, ``websocket-lanes``, ``https``, and ``https-lanes`` over Chromium's HTTP/2); two
streams at once, each sent by mtgate to a fake DC that echoes it, come back through the page
intact, and a stream the app closes leaves the other one carrying.
"""
from __future__ import annotations

import http.server
import os
import shutil
import struct
import threading
import time

import pytest

from conftest import _start_stack
from harness import CLIENT_TIMEOUT, FAKE_DC_BIN, MTGATE_BIN, _missing, require
from test_site_browser import CHROMIUM, SITE, _browser, _ca, _pem, _write_leaf, trusting_home

HELLO, WELCOME, OPEN, DATA, CLOSE, WINDOW = 0x10, 0x11, 0x01, 0x02, 0x03, 0x04


def frame(kind: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">II", (kind << 24) | stream, len(payload)) + payload


def parse(body: bytes):
    out, at = [], 0
    while at + 8 <= len(body):
        head, n = struct.unpack(">II", body[at:at + 8])
        out.append((head >> 24, head & 0xFFFFFF, body[at + 8:at + 8 + n]))
        at += 8 + n
    return out


PARENT = """<!DOCTYPE html><html><body>
<iframe id="f" src="{bridge}"></iframe>
<script>
const ch = new MessageChannel();
ch.port1.onmessage = e => {{
  const d = e.data;
  if (d instanceof Uint8Array || d instanceof ArrayBuffer) pyRecv(Array.from(new Uint8Array(d)));
  else pyCtl(JSON.stringify(d));
}};
document.getElementById("f").onload = () => {{
  document.getElementById("f").contentWindow.postMessage({{t: "tproxy-init", v: 1}}, "*", [ch.port2]);
}};
window.toBridge = b => ch.port1.postMessage(new Uint8Array(b));
</script></body></html>"""


class Parent(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module", params=["websocket", "websocket-lanes", "https", "https-lanes"])
def page_stack(request, tmp_path_factory):
    require(MTGATE_BIN, FAKE_DC_BIN, modules=("playwright", "cryptography", "telethon_webproxy"))
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (Debian package chromium)")
    if shutil.which("certutil") is None:
        _missing("certutil not found (Debian package libnss3-tools)")
    tmp = tmp_path_factory.mktemp("bridge")
    s = type("S", (), {})()
    ca_key, ca_cert = _ca()
    (tmp / "ca.pem").write_bytes(_pem(ca_cert))
    _write_leaf(tmp, ca_key, ca_cert)
    s.home = trusting_home(tmp, tmp / "ca.pem")
    extra = (f'\n[site]\nhosts = ["{SITE}"]\ncert = "{tmp / "site.pem"}"\nkey = "{tmp / "site.key"}"\n'
             f'\n[site.webproxy]\nenabled = true\ncarrier = "{request.param}"\n')
    s.stack = _start_stack(tmp, "127.0.0.1", extra=extra, echo=True)
    yield s
    s.stack.stop()


def test_the_bridge_page_carries_frames_between_the_app_and_mtgate(page_stack):
    from playwright.sync_api import sync_playwright
    from telethon_webproxy.mtproxy import MTProxyObfuscator
    from telethon_webproxy.protocol import compute_capability_from_hex

    s = page_stack
    st = s.stack
    cap = compute_capability_from_hex(SITE, st.dd_secret)
    bridge = f"https://{SITE}:{st.port}/?bridge={cap}"
    Parent.page = PARENT.format(bridge=bridge).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Parent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    got: list[bytes] = []
    controls: list[dict] = []
    try:
        with sync_playwright() as p:
            browser = _browser(p, s)
            page = browser.new_page()
            page.expose_function("pyRecv", lambda b: got.append(bytes(b)))
            page.expose_function("pyCtl", lambda c: controls.append(c))
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")

            def wait(cond, what, limit=CLIENT_TIMEOUT):
                deadline = time.time() + limit
                while not cond():
                    assert time.time() < deadline, f"{what}; got {got!r}, controls {controls!r}"
                    page.wait_for_timeout(50)

            wait(lambda: any('"ready"' in c for c in controls), "the bridge took the port")
            page.evaluate("b => toBridge(b)", list(frame(HELLO, 0, b"\x01")))
            wait(lambda: any(parse(g)[:1] and parse(g)[0][0] == WELCOME for g in got), "WELCOME")
            def echoed(sid: int) -> bytes:
                return b"".join(body for g in got for kind, s_, body in parse(g)
                                if kind == DATA and s_ == sid)

            def stream(sid: int, obf: MTProxyObfuscator, payload: bytes, first: bool):
                if first:
                    page.evaluate("b => toBridge(b)", list(frame(OPEN, sid)))
                head = obf.header if first else b""
                page.evaluate("b => toBridge(b)", list(frame(DATA, sid, head + obf.encrypt(payload))))

            # Two streams at once, each its own dd connection to the echo DC.
            obfs = {sid: MTProxyObfuscator(bytes.fromhex(st.dd_secret), dc_idx=2) for sid in (1, 3)}
            sent = {sid: os.urandom(1000 + sid) for sid in obfs}
            for sid, obf in obfs.items():
                stream(sid, obf, sent[sid], True)
            for sid in obfs:
                wait(lambda: len(echoed(sid)) >= len(sent[sid]), f"the echo of stream {sid}")
            back = {sid: obfs[sid].decrypt(echoed(sid)[:len(sent[sid])]) for sid in obfs}
            assert back == sent
            # mtgate granted the credit back once the bytes reached the proxy.
            assert any(kind == WINDOW and sid == 1 for g in got for kind, sid, _ in parse(g))
            # The app closes stream 1; stream 3 goes on carrying.
            page.evaluate("b => toBridge(b)", list(frame(CLOSE, 1)))
            more = os.urandom(500)
            stream(3, obfs[3], more, False)
            total = len(sent[3]) + len(more)
            wait(lambda: len(echoed(3)) >= total, "stream 3 after stream 1 closed")
            assert obfs[3].decrypt(echoed(3)[len(sent[3]):total]) == more
            browser.close()
    finally:
        server.shutdown()
    st.check_alive()
