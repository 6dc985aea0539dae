"""Real Telegram clients (Telethon, TDLib via tdjson) through the running mtgate proxy to the
project's fake DC, all on loopback.  See README.md in this directory; the harness is harness.py,
the ``stack`` fixtures are in conftest.py.
"""
from __future__ import annotations

import pytest

from harness import (TLS_DOMAIN, ProxyProtocolFront, assert_tdlib_got_dc_answer,
                     assert_telethon_got_dc_answer, clients, tdlib, telethon)


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


def test_real_clients_through_a_socks5_upstream(stack_socks):
    """Direct mode with [upstream] socks5: TDLib (ee) and Telethon (dd) reach the fake DC through
    a SOCKS5 proxy with a password, which was asked for the fake DC each time."""
    st = stack_socks
    res = tdlib(st.host, st.port, st.ee_secret)
    assert_tdlib_got_dc_answer(res, st)
    res = telethon(st.host, st.port, st.dd_secret, "randomized")
    assert_telethon_got_dc_answer(res, st)
    dc = f"{st.dc_host}:{st.dc_port}"
    assert len(st.socks.targets) >= 2 and set(st.socks.targets) == {dc}, st.socks.targets
    st.check_alive()


def test_real_clients_behind_a_proxy_protocol_front_end(stack_pp):
    """Behind a trusted front end sending PROXY v2: TDLib (ee) and Telethon (dd) are served; the
    same front end announcing a client the ACL blocks gets nothing through."""
    st = stack_pp
    front = ProxyProtocolFront((st.host, st.port), "127.0.0.2", ("198.51.100.7", 40000))
    blocked = ProxyProtocolFront((st.host, st.port), "127.0.0.2", ("198.51.100.66", 40000))
    try:
        fh, fp = front.addr
        res = tdlib(fh, fp, st.ee_secret)
        assert_tdlib_got_dc_answer(res, st)
        res = telethon(fh, fp, st.dd_secret, "randomized")
        assert_telethon_got_dc_answer(res, st)
        bh, bp = blocked.addr
        r = tdlib(bh, bp, st.ee_secret, timeout=4.0)
        assert r.get("error_message") != clients.TDLIB_EXPECTED_ERROR, r
    finally:
        front.stop()
        blocked.stop()
    st.check_alive()


def test_real_clients_through_the_websocket_upstream(stack_ws):
    """[upstream.websocket]: TDLib (ee) and Telethon (dd) reach the fake DC through its ws:// apiws
    endpoint; the DCs' TCP addresses are dead, so no other way exists."""
    st = stack_ws
    res = tdlib(st.host, st.port, st.ee_secret)
    assert_tdlib_got_dc_answer(res, st)
    res = telethon(st.host, st.port, st.dd_secret, "randomized")
    assert_telethon_got_dc_answer(res, st)
    st.check_alive()
