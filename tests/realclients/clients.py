#!/usr/bin/env python3
"""Real Telegram client libraries driven against an MTProto proxy.

Two entry points, each usable as a function or from the command line (one JSON object on stdout):

* ``telethon_req_pq(host, port, secret_hex, mode)`` -- Telethon's own MTProxy connection classes
  (abridged / intermediate / randomized intermediate) send ``req_pq_multi`` through the proxy with
  Telethon's ``MTProtoPlainSender`` and read back the ``resPQ``.  A second round trip then sends
  ``req_DH_params`` (p, q and fingerprint taken from the resPQ, random 256-byte payload) and reads the
  fake DC's ``server_DH_params_ok`` answer.

* ``tdjson_test_proxy(host, port, secret, dc_id, timeout)`` -- TDLib (PyPI ``tdjson`` wheel) runs
  ``testProxy``.  TDLib performs the start of a real auth-key exchange through the proxy; against the
  project's fake DC the expected final answer is the error ``Bad padding for encrypted part`` (see
  README.md: only reachable after two full round trips through the proxy).

CLI::

    python clients.py telethon HOST PORT SECRET_HEX MODE [--dc-id N] [--timeout S] [--no-dh]
    python clients.py tdjson   HOST PORT SECRET      [--dc-id N] [--timeout S]

MODE is one of ``abridged``, ``intermediate``, ``randomized`` (through an MTProxy) or ``direct``
(no proxy: Telethon's plain obfuscated2 straight to a DC; SECRET_HEX is ignored).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time

# Values the project's fake DC uses (tests/realclients/README.md, "Fake DC behaviour").
FAKE_DC_PQ = 0x17ED48941A08F981
FAKE_DC_P = 1229739323
FAKE_DC_Q = 1402015859
# Fingerprint of Telegram's production RSA key (the only key TDLib's testProxy accepts).
FAKE_DC_FINGERPRINT = 0xD09D1D85DE64FD85
FAKE_DC_DH_ANSWER_LEN = 15
# testProxy result when the resPQ and the server_DH_params_ok both came back through the proxy.
TDLIB_EXPECTED_ERROR = "Bad padding for encrypted part"

TELETHON_MODES = ("abridged", "intermediate", "randomized", "direct")


def _u64(x: int) -> int:
    return x & 0xFFFFFFFFFFFFFFFF


def _hex128(x: int) -> str:
    return (x & ((1 << 128) - 1)).to_bytes(16, "little").hex()


# --------------------------------------------------------------------------------------------
# Telethon
# --------------------------------------------------------------------------------------------

class _Loggers(dict):
    """Telethon's connection classes want a dict of loggers keyed by module name."""

    def __missing__(self, key):
        return logging.getLogger(key)


async def _telethon_async(host, port, secret_hex, mode, dc_id, timeout, dh):
    from telethon.network.connection import (
        ConnectionTcpObfuscated,
        ConnectionTcpMTProxyAbridged,
        ConnectionTcpMTProxyIntermediate,
        ConnectionTcpMTProxyRandomizedIntermediate,
    )

    classes = {
        "abridged": ConnectionTcpMTProxyAbridged,
        "intermediate": ConnectionTcpMTProxyIntermediate,
        "randomized": ConnectionTcpMTProxyRandomizedIntermediate,
        "direct": ConnectionTcpObfuscated,
    }
    cls = classes[mode]
    out = {"client": "telethon", "mode": mode, "connection_class": cls.__name__, "dc_id": dc_id, "ok": False}
    loggers = _Loggers()
    if mode == "direct":
        # Plain obfuscated2 (no secret, abridged), i.e. what a Telegram DC itself expects.
        conn = cls(host, port, dc_id, loggers=loggers)
    else:
        conn = cls(host, port, dc_id, loggers=loggers, proxy=(host, port, secret_hex))
    # Telethon's MTProxy connect() waits 2 s for the proxy to close on a bad header.
    await asyncio.wait_for(conn.connect(timeout=timeout), timeout + 3)
    return await _exchange(conn, loggers, out, timeout, dh)


async def _exchange(conn, loggers, out, timeout, dh):
    """req_pq_multi (and, if ``dh``, req_DH_params) on a connected Telethon connection."""
    from telethon.network.mtprotoplainsender import MTProtoPlainSender
    from telethon.tl.functions import ReqDHParamsRequest, ReqPqMultiRequest
    try:
        sender = MTProtoPlainSender(conn, loggers=loggers)
        nonce = int.from_bytes(os.urandom(16), "big", signed=True)
        out["sent_nonce"] = _hex128(nonce)
        res = await asyncio.wait_for(sender.send(ReqPqMultiRequest(nonce=nonce)), timeout)
        out["res_pq"] = {
            "type": type(res).__name__,
            "nonce": _hex128(res.nonce),
            "server_nonce": _hex128(res.server_nonce),
            "pq": int.from_bytes(res.pq, "big"),
            "fingerprints": [_u64(f) for f in res.server_public_key_fingerprints],
        }
        out["nonce_match"] = res.nonce == nonce
        if not out["nonce_match"]:
            out["error"] = "resPQ nonce differs from the nonce sent"
            return out
        if dh:
            # Second round trip.  The fake DC cannot decrypt the RSA payload (it does not have
            # Telegram's private key), so random bytes are as good as a real encryption here.
            req = ReqDHParamsRequest(
                nonce=nonce,
                server_nonce=res.server_nonce,
                p=FAKE_DC_P.to_bytes(4, "big"),
                q=FAKE_DC_Q.to_bytes(4, "big"),
                public_key_fingerprint=res.server_public_key_fingerprints[0],
                encrypted_data=os.urandom(256),
            )
            dh_res = await asyncio.wait_for(sender.send(req), timeout)
            out["dh_params"] = {
                "type": type(dh_res).__name__,
                "nonce_match": getattr(dh_res, "nonce", None) == nonce,
                "server_nonce_match": getattr(dh_res, "server_nonce", None) == res.server_nonce,
                "encrypted_answer_len": len(getattr(dh_res, "encrypted_answer", b"") or b""),
            }
        out["ok"] = True
        return out
    finally:
        await conn.disconnect()




async def _webproxy_async(site_host, port, secret_hex, carrier, ca_file, dc_id, timeout, dh):
    """Telethon through Telegram's WEB proxy type with ``telethon-webproxy``: the bridge page,
    a session and the ``carrier`` at https://site_host/ (port 443 in its URLs; the TCP
    connections are sent to 127.0.0.1:``port``, as a hosts-file entry would), the site's
    certificate trusted through ``ca_file``."""
    # Before aiohttp makes its default TLS context.
    os.environ["SSL_CERT_FILE"] = ca_file
    import aiohttp
    from aiohttp.abc import AbstractResolver
    from telethon_webproxy import ConnectionWebProxy

    class _Here(AbstractResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):
            return [{"hostname": host, "host": "127.0.0.1", "port": port if host != site_host else int(PORT[0]),
                     "family": socket.AF_INET, "proto": 0, "flags": 0}]

        async def close(self):
            pass

    PORT = [port]
    real = aiohttp.ClientSession

    def session(*a, **kw):
        kw.setdefault("connector", aiohttp.TCPConnector(resolver=_Here()))
        return real(*a, **kw)

    aiohttp.ClientSession = session
    out = {"client": "telethon-webproxy", "mode": carrier, "dc_id": dc_id, "ok": False}
    loggers = _Loggers()
    conn = ConnectionWebProxy(site_host, 443, dc_id, loggers=loggers,
                              proxy=(site_host, secret_hex, {"mode": carrier}))
    await asyncio.wait_for(conn.connect(timeout=timeout), timeout + 3)
    return await _exchange(conn, loggers, out, timeout, dh)


def webproxy_req_pq(site_host, port, secret_hex, carrier, ca_file, *, dc_id=2, timeout=10.0,
                    dh=True) -> dict:
    try:
        return asyncio.run(_webproxy_async(site_host, port, secret_hex, carrier, ca_file, dc_id,
                                           timeout, dh))
    except Exception as e:  # noqa: BLE001
        return {"client": "telethon-webproxy", "ok": False, "error": f"{type(e).__name__}: {e}"}


def telethon_req_pq(host: str, port: int, secret_hex: str, mode: str, *, dc_id: int = 2,
                    timeout: float = 10.0, dh: bool = True) -> dict:
    """Send req_pq_multi (and, if ``dh``, req_DH_params) through an MTProxy with Telethon.

    ``secret_hex`` is passed to Telethon as is (``dd`` + 32 hex for randomized intermediate, or the
    plain 32 hex digits).  Mode ``direct`` ignores the secret and speaks plain obfuscated2 (abridged)
    straight to a DC -- used to check the fake DC without a proxy.  Returns a dict; ``ok`` is True when a resPQ with the sent nonce came back
    (and, with ``dh``, a server_DH_params answer too).  Errors are reported in ``error``.
    """
    if mode not in TELETHON_MODES:
        raise ValueError(f"mode must be one of {TELETHON_MODES}")
    t0 = time.monotonic()
    try:
        out = asyncio.run(_telethon_async(host, int(port), secret_hex, mode, dc_id, timeout, dh))
    except Exception as e:  # noqa: BLE001 -- report every failure as data
        out = {"client": "telethon", "mode": mode, "dc_id": dc_id, "ok": False,
               "error": f"{type(e).__name__}: {e}"}
    out["elapsed"] = round(time.monotonic() - t0, 3)
    try:
        import telethon
        out["telethon_version"] = telethon.__version__
    except Exception:  # noqa: BLE001
        pass
    return out


# --------------------------------------------------------------------------------------------
# TDLib (tdjson wheel)
# --------------------------------------------------------------------------------------------

def tdjson_test_proxy(host: str, port: int, secret: str, dc_id: int = 2, timeout: float = 10.0,
                      *, verbosity: int = 1) -> dict:
    """Run TDLib's ``testProxy`` against an MTProto proxy.

    ``secret`` is the client-side secret string TDLib accepts (hex or base64url; 32 hex = classic,
    ``dd``+32 hex, ``ee``+32 hex+hex(domain)).  No setTdlibParameters is needed.  Returns a dict
    with the raw TDLib ``response`` plus ``result`` ("ok" / "error" / "no-response") and
    ``error_message``.
    """
    import tdjson

    out = {"client": "tdjson", "dc_id": dc_id, "timeout": timeout, "result": "no-response",
           "error_message": None, "response": None}
    tdjson.td_execute(json.dumps({"@type": "setLogVerbosityLevel",
                                  "new_verbosity_level": verbosity}).encode())
    v = tdjson.td_execute(json.dumps({"@type": "getOption", "name": "version"}).encode())
    if v:
        out["tdlib_version"] = json.loads(v).get("value")
    out["tdjson_version"] = getattr(tdjson, "__version__", None)
    client = tdjson.td_create_client_id()
    extra = "testProxy-%d" % os.getpid()
    # TDLib >= 1.8.5x: testProxy takes a `proxy` object (server, port, type).
    request = {
        "@type": "testProxy",
        "proxy": {"@type": "proxy", "server": host, "port": int(port),
                  "type": {"@type": "proxyTypeMtproto", "secret": secret}},
        "dc_id": int(dc_id),
        "timeout": float(timeout),
        "@extra": extra,
    }
    t0 = time.monotonic()
    tdjson.td_send(client, json.dumps(request).encode())
    deadline = t0 + timeout + 5.0
    while time.monotonic() < deadline:
        raw = tdjson.td_receive(0.5)
        if raw is None:
            continue
        obj = json.loads(raw)
        if obj.get("@extra") != extra:
            continue
        out["response"] = obj
        if obj.get("@type") == "ok":
            out["result"] = "ok"
        elif obj.get("@type") == "error":
            out["result"] = "error"
            out["error_message"] = obj.get("message")
            out["error_code"] = obj.get("code")
        else:
            out["result"] = obj.get("@type")
        break
    out["elapsed"] = round(time.monotonic() - t0, 3)
    out["got_dc_answer"] = out["error_message"] == TDLIB_EXPECTED_ERROR
    # Close the instance (bounded), so the process exits cleanly.
    tdjson.td_send(client, b'{"@type":"close"}')
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        raw = tdjson.td_receive(0.5)
        if raw and b"authorizationStateClosed" in raw:
            break
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="client", required=True)
    t = sub.add_parser("telethon")
    t.add_argument("host")
    t.add_argument("port", type=int)
    t.add_argument("secret_hex")
    t.add_argument("mode", choices=TELETHON_MODES)
    t.add_argument("--dc-id", type=int, default=2)
    t.add_argument("--timeout", type=float, default=10.0)
    t.add_argument("--no-dh", action="store_true", help="stop after the resPQ")
    d = sub.add_parser("tdjson")
    d.add_argument("host")
    d.add_argument("port", type=int)
    d.add_argument("secret")
    d.add_argument("--dc-id", type=int, default=2)
    d.add_argument("--timeout", type=float, default=10.0)
    d.add_argument("--verbosity", type=int, default=1)
    w = sub.add_parser("webproxy")
    w.add_argument("site_host")
    w.add_argument("port", type=int)
    w.add_argument("secret_hex")
    w.add_argument("--carrier", default="websocket")
    w.add_argument("--ca", required=True)
    w.add_argument("--dc-id", type=int, default=2)
    w.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    if a.client == "webproxy":
        res = webproxy_req_pq(a.site_host, a.port, a.secret_hex, a.carrier, a.ca, dc_id=a.dc_id,
                              timeout=a.timeout)
        ok = res.get("ok", False)
    elif a.client == "telethon":
        res = telethon_req_pq(a.host, a.port, a.secret_hex, a.mode, dc_id=a.dc_id, timeout=a.timeout,
                              dh=not a.no_dh)
        ok = res.get("ok", False)
    else:
        res = tdjson_test_proxy(a.host, a.port, a.secret, a.dc_id, a.timeout, verbosity=a.verbosity)
        ok = res.get("got_dc_answer", False)
    print(json.dumps(res, sort_keys=True), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
