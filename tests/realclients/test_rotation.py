"""Issue 13: secret rotation through the admin API, with real clients.

A user made through ``POST /api/v1/users`` is reached at once by TDLib (``ee``) and Telethon
(``dd``). ``POST /api/v1/users/bob/rotate`` gives a new secret valid now and lets the old one run
out after a grace: inside the grace both secrets serve; after it the old secret gets no DC answer
(the proxy fronts it like any stranger, crates/mtgate/tests/rotation.rs shows the mask site
answering), while the new one still serves.
"""
from __future__ import annotations

import time
import urllib.parse
from datetime import datetime
from pathlib import Path

from conftest import _start_stack
from harness import (admin_api, assert_tdlib_got_dc_answer, assert_telethon_got_dc_answer,
                     clients, free_port, tdlib, telethon)

TOKEN = "rotation-superuser-token-000001"


def _secrets(user_or_secret: dict) -> dict:
    """The secret of each kind in the links of a user or a secret: {"ee": ..., "dd": ...}."""
    out = {}
    for link in user_or_secret["links"]:
        s = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)["secret"][0]
        out[s[:2]] = s
    return out


def test_rotation_through_the_api_with_real_clients(tmp_path: Path):
    port = free_port()
    st = _start_stack(tmp_path, "127.0.0.1",
                      extra=f'\n[admin]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n')
    try:
        status, bob = admin_api(port, "POST", "/api/v1/users", TOKEN, {"name": "bob", "modes": ["ee", "dd"]})
        assert status == 201, bob
        old = _secrets(bob)
        assert_tdlib_got_dc_answer(tdlib(st.host, st.port, old["ee"]), st)
        assert_telethon_got_dc_answer(telethon(st.host, st.port, old["dd"], "randomized"), st)

        status, new_secret = admin_api(port, "POST", "/api/v1/users/bob/rotate", TOKEN, {"grace": 8})
        assert status == 201, new_secret
        assert new_secret["current"] is True and new_secret["state"] == "in_force", new_secret
        new = _secrets(new_secret)
        assert new["ee"] != old["ee"]
        # Inside the grace: the old secret still serves, and the new one does.
        assert_telethon_got_dc_answer(telethon(st.host, st.port, old["dd"], "randomized"), st)
        assert_tdlib_got_dc_answer(tdlib(st.host, st.port, new["ee"]), st)
        assert_telethon_got_dc_answer(telethon(st.host, st.port, new["dd"], "randomized"), st)

        status, listed = admin_api(port, "GET", "/api/v1/users/bob/secrets", TOKEN)
        assert status == 200 and len(listed) == 2, listed
        ends = max(datetime.fromisoformat(s["not_after"]).timestamp()
                   for s in listed if s["not_after"])
        while time.time() < ends + 1.2:  # not_after is the last second it serves
            time.sleep(0.2)

        # After the grace: no DC answer for the old secret, in either client.
        r = tdlib(st.host, st.port, old["ee"], timeout=4.0)
        assert r.get("error_message") != clients.TDLIB_EXPECTED_ERROR, r
        r = telethon(st.host, st.port, old["dd"], "randomized", timeout=4.0)
        assert r.get("ok") is not True, r
        assert_tdlib_got_dc_answer(tdlib(st.host, st.port, new["ee"]), st)
        status, listed = admin_api(port, "GET", "/api/v1/users/bob/secrets", TOKEN)
        assert sorted(s["state"] for s in listed) == ["in_force", "run_out"], listed
        st.check_alive()
    finally:
        st.stop()
