"""Issue 13: the web console in a real headless browser (Debian's ``chromium``, driven by Playwright).

A superuser signs in with a token, creates a user (whose page shows its QR code and links, and
whose ``dd`` link then carries Telethon through the proxy to the fake DC), blocks a range, and
signs out. A ``read_only`` token sees no edit controls, and both the console and the API refuse
its edits anyway. Every change is in the audit trail.
"""
from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path

from conftest import _start_stack
from harness import (FAKE_DC_BIN, MTGATE_BIN, _missing, admin_api, assert_telethon_got_dc_answer,
                     free_port, require, telethon)

CHROMIUM = Path(os.environ.get("MTGATE_CHROMIUM", "/usr/bin/chromium"))
TOKEN = "console-superuser-token-00000001"


def _sign_in(page, base: str, token: str):
    page.goto(f"{base}/console")
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_selector("#who")


def test_the_console_in_a_real_browser(tmp_path: Path):
    require(MTGATE_BIN, FAKE_DC_BIN, modules=("telethon", "playwright"))
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (Debian package chromium; scripts/test.sh installs it)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    st = _start_stack(tmp_path, "127.0.0.1",
                      extra=f'\n[admin]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n')
    base = f"http://127.0.0.1:{port}"
    try:
        status, viewer = admin_api(port, "POST", "/api/v1/tokens", TOKEN,
                              {"name": "viewer", "role": "read_only"})
        assert status == 201, viewer
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                        args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                # A bad token is refused on the sign-in page.
                page = browser.new_page()
                page.goto(f"{base}/console")
                page.fill("#token", "mtga_wrong")
                page.click("#sign-in")
                assert "unknown, expired" in page.inner_text(".err")
                assert page.locator("#who").count() == 0

                # Sign in, create a user, see its QR code and links.
                _sign_in(page, base, TOKEN)
                assert page.inner_text("#who") == "admin.token"
                page.fill("#new-user", "erin")
                page.uncheck("input[name=ee]")
                page.click("#create-user")
                page.wait_for_url(re.compile(r".*/console/users/erin\?msg=.*"))
                assert "user erin created" in page.inner_text(".msg")
                assert page.locator("figure.qr svg path").count() == 1
                links = page.locator("code.link").all_inner_texts()
                assert links and all(l.startswith("tg://proxy?") for l in links), links
                dd = urllib.parse.parse_qs(urllib.parse.urlparse(links[0]).query)["secret"][0]
                assert dd.startswith("dd"), links
                page.screenshot(path=str(tmp_path / "console-user.png"))
                if os.environ.get("MTGATE_CONSOLE_SHOTS"):
                    page.screenshot(path=os.environ["MTGATE_CONSOLE_SHOTS"] + "/user.png")
                # The link the console shows carries a real client through the proxy.
                assert_telethon_got_dc_answer(telethon(st.host, st.port, dd, "randomized"), st)

                # Block a range from the dashboard.
                page.goto(f"{base}/console")
                assert "erin" in page.inner_text("#users")
                page.fill("#rule-net", "203.0.113.0/24")
                page.select_option("#rule-level", "blocked")
                page.fill("input[name=note]", "from the console")
                page.click("#add-rule-button")
                assert "added: 203.0.113.0/24 blocked" in page.inner_text(".msg")
                assert "from the console" in page.inner_text("#rules")
                assert "rule.add" in page.inner_text("#audit")
                if os.environ.get("MTGATE_CONSOLE_SHOTS"):
                    page.screenshot(path=os.environ["MTGATE_CONSOLE_SHOTS"] + "/dashboard.png", full_page=True)

                # Sign out: the console asks to sign in again.
                page.click("#sign-out")
                assert "signed out" in page.inner_text(".msg")
                page.goto(f"{base}/console")
                assert page.locator("#token").count() == 1

                # read_only: no edit controls, and edits are refused anyway.
                ro = browser.new_page()
                _sign_in(ro, base, viewer["token"])
                for control in ("#add-user", "#add-rule", "#rules"):
                    assert ro.locator(control).count() == 0, control
                ro.goto(f"{base}/console/users/erin")
                assert ro.locator("#rotate").count() == 0
                assert ro.locator("code.link").count() == 0, "no secrets for read_only"
                ro.goto(f"{base}/console")
                csrf = ro.locator("header input[name=csrf]").get_attribute("value")
                forged = ro.request.post(f"{base}/console/users",
                                         form={"csrf": csrf, "name": "mallory", "dd": "on"},
                                         max_redirects=0)
                assert forged.status == 303
                assert "standard" in urllib.parse.unquote_plus(forged.headers["location"])
                stale = ro.request.post(f"{base}/console/users",
                                        form={"csrf": "0" * 32, "name": "mallory"},
                                        max_redirects=0)
                assert stale.status == 403
            finally:
                browser.close()
        status, _ = admin_api(port, "POST", "/api/v1/users", viewer["token"], {"name": "mallory"})
        assert status == 403
        status, users = admin_api(port, "GET", "/api/v1/users", TOKEN)
        assert sorted(u["name"] for u in users) == ["alice", "erin"], users
        status, rules = admin_api(port, "GET", "/api/v1/rules", TOKEN)
        assert [r["net"] for r in rules] == ["203.0.113.0/24"], rules
        trail = [json.loads(line) for line in (tmp_path / "state" / "audit.log").read_text().splitlines()]
        done = [(e["action"], e["result"]) for e in trail]
        assert ("user.create", "ok") in done and ("rule.add", "ok") in done, done
        assert ("logout", "ok") in done, done
        assert sum(1 for a, r in done if a == "user.create" and r.startswith("refused")) == 2
        st.check_alive()
    finally:
        st.stop()
