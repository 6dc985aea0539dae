"""Issue 13: the admin API against its own OpenAPI document, by an independent tool.

Schemathesis (PyPI) reads ``/api/v1/openapi.json`` from a running mtgate and generates requests
for every operation, valid and invalid (bodies, headers, methods, a missing bearer), checking the
answers against the document: statuses, content types, response schemas, ``Allow`` on 405, 401
without credentials, invalid bodies refused.  One check is left out: ``positive_data_acceptance``
expects every schema-valid body to succeed, but a token name must be unique and a network must
parse, which a JSON schema cannot say (such bodies get a documented 400 or 409).
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from harness import MTGATE_BIN, Service, require

TOKEN = "schemathesis-superuser-token-0001"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_admin_api_matches_its_openapi_document(tmp_path: Path):
    require(MTGATE_BIN, modules=("schemathesis",))
    port = _free_port()
    dcs = "".join(f'{i} = ["127.0.0.1:9"]\n' for i in (1, 2, 3, 4, 5))
    cfg = tmp_path / "mtgate.toml"
    cfg.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\npublic_host = "127.0.0.1"\nstate_dir = "{tmp_path}"\n'
        f'[admin]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
        # Schemathesis sends many requests without a bearer on purpose.
        "auth_failures_per_minute = 100000\n"
        '[tls]\ndomains = ["mask.test"]\nmask_host = "127.0.0.1:1"\nfronting = false\n'
        "learn_profile = false\n"
        f"[dcs]\n{dcs}"
        '[users.alice]\nsecret = "7d1f0c9a5be24e3186a0f4c2d9b8e617"\nmodes = ["dd"]\n'
    )
    svc = Service("mtgate", [str(MTGATE_BIN), "run", "--no-qr", "--config", str(cfg)], tmp_path)
    try:
        cli = Path(sys.executable).parent / "schemathesis"
        run = subprocess.run(
            [str(cli), "run", f"http://127.0.0.1:{port}/api/v1/openapi.json",
             "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "30",
             "--exclude-checks", "positive_data_acceptance", "--seed", "1"],
            capture_output=True, text=True, timeout=240,
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "Tested: 27" in run.stdout, run.stdout[-3000:]
    finally:
        svc.stop()
