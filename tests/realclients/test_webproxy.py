"""Issue 26: Telegram's WEB proxy type served from mtgate's own site, with an independent client
from PyPI: ``telethon-webproxy`` (Telethon's ``ConnectionWebProxy``) fetches the bridge page,
opens a session and carries its MTProxy stream over the ``websocket`` and the
``websocket-lanes`` carrier to the fake DC.

What it does differently from the apps: it sends no ``Origin`` on its HTTPS calls (mtgate accepts
a missing Origin and refuses a wrong one), it always speaks the ``dd`` tag inside, and its URLs
are fixed to port 443 (the test sends its connections to mtgate's loopback port instead, as a
hosts-file entry would).
"""
from __future__ import annotations

import pytest

from conftest import _start_stack
from harness import (FAKE_DC_BIN, MTGATE_BIN, SUBPROCESS_SLACK, assert_telethon_got_dc_answer,
                     require, run_client)
from test_site_browser import SITE, _ca, _pem, _write_leaf


class WebStack:
    pass


@pytest.fixture(scope="module", params=["websocket", "websocket-lanes", "https"])
def web_stack(request, tmp_path_factory):
    require(MTGATE_BIN, FAKE_DC_BIN, modules=("telethon", "telethon_webproxy", "cryptography"))
    tmp = tmp_path_factory.mktemp("webproxy")
    s = WebStack()
    ca_key, ca_cert = _ca()
    (tmp / "ca.pem").write_bytes(_pem(ca_cert))
    _write_leaf(tmp, ca_key, ca_cert)
    extra = (f'\n[site]\nhosts = ["{SITE}"]\ncert = "{tmp / "site.pem"}"\nkey = "{tmp / "site.key"}"\n'
             f'\n[site.webproxy]\nenabled = true\ncarrier = "{request.param}"\n')
    s.stack = _start_stack(tmp, "127.0.0.1", extra=extra)
    s.ca = tmp / "ca.pem"
    s.carrier = request.param
    yield s
    s.stack.stop()


def test_telethon_webproxy_through_each_websocket_carrier(web_stack):
    st = web_stack.stack
    res = run_client(["webproxy", SITE, str(st.port), st.dd_secret, "--carrier", web_stack.carrier,
                      "--ca", str(web_stack.ca)], 10 * 2 + SUBPROCESS_SLACK)
    assert_telethon_got_dc_answer(res, st)
    st.check_alive()
