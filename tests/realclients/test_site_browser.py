"""Issue 25: mtgate's own port is a real website.

A real headless browser (Debian's ``chromium``, driven by Playwright, trusting a test CA through
its NSS database) loads the site through mtgate's client port while TDLib (``ee``, FakeTLS) and
Telethon (``dd``: Telethon has no FakeTLS) go through the proxy on the same port at the same time.  Then the site's certificate is
replaced on disk while the browser's connection and clients are open: neither is dropped, and new
connections get the new certificate.
"""
from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import _start_stack
from harness import (FAKE_DC_BIN, MTGATE_BIN, TLS_DOMAIN, _missing, assert_tdlib_got_dc_answer,
                     assert_telethon_got_dc_answer, require, tdlib, telethon)

SITE = "site.test"
CHROMIUM = Path(os.environ.get("MTGATE_CHROMIUM", "/usr/bin/chromium"))
TITLE = "mtgate test site"


def _ca():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mtgate test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SITE)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=20))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SITE)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_leaf(dir: Path, ca_key, ca_cert):
    """A fresh leaf for SITE, written as a web server's files are replaced (rename)."""
    key, cert = _leaf(ca_key, ca_cert)
    for name, data in (("site.key", _key_pem(key)), ("site.pem", _pem(cert))):
        tmp = dir / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(dir / name)
    return cert


class SiteStack:
    pass


def trusting_home(tmp: Path, ca_pem: Path) -> Path:
    """A HOME whose NSS database (what Chromium trusts) holds the test CA and nothing else."""
    home = tmp / "home"
    nss = home / ".pki" / "nssdb"
    nss.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nss}", "-N", "--empty-password"], check=True)
    subprocess.run(["certutil", "-d", f"sql:{nss}", "-A", "-t", "C,,", "-n", "mtgate-test",
                    "-i", str(ca_pem)], check=True)
    return home


@pytest.fixture(scope="module")
def site_stack(tmp_path_factory):
    require(MTGATE_BIN, FAKE_DC_BIN, modules=("telethon", "tdjson", "playwright", "cryptography"))
    if not CHROMIUM.is_file():
        _missing(f"{CHROMIUM} not found (Debian package chromium; scripts/test.sh installs it)")
    if shutil.which("certutil") is None:
        _missing("certutil not found (Debian package libnss3-tools; scripts/test.sh installs it)")
    tmp = tmp_path_factory.mktemp("site")
    s = SiteStack()
    s.ca_key, s.ca_cert = _ca()
    (tmp / "ca.pem").write_bytes(_pem(s.ca_cert))
    s.leaf = _write_leaf(tmp, s.ca_key, s.ca_cert)
    www = tmp / "www"
    www.mkdir()
    (www / "index.html").write_text(f"<!DOCTYPE html><html><head><title>{TITLE}</title></head>"
                                    "<body><h1>hello</h1></body></html>")
    # The browser's own trust store: the test CA, nothing else added.
    s.home = trusting_home(tmp, tmp / "ca.pem")
    extra = (f'\n[site]\nhosts = ["{SITE}"]\ndir = "{www}"\n'
             f'cert = "{tmp / "site.pem"}"\nkey = "{tmp / "site.key"}"\n')
    s.stack = _start_stack(tmp, "127.0.0.1", extra=extra)
    s.dir = tmp
    s.port = s.stack.port
    yield s
    s.stack.stop()


def _browser(p, s: SiteStack):
    return p.chromium.launch(
        executable_path=str(CHROMIUM),
        env={**os.environ, "HOME": str(s.home)},
        args=[f"--host-resolver-rules=MAP {SITE} 127.0.0.1", "--no-sandbox",
              "--disable-dev-shm-usage"])


def _clients_in_background(s: SiteStack) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        st = s.stack
        t1 = threading.Thread(target=lambda: out.__setitem__(
            "telethon", telethon(st.host, st.port, st.dd_secret, "randomized")))
        t2 = threading.Thread(target=lambda: out.__setitem__(
            "tdlib", tdlib(st.host, st.port, st.ee_secret)))
        t1.start()
        t2.start()
        t1.join()
        t2.join()

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _served_serial(s: SiteStack) -> int:
    """The serial of the certificate a new TLS connection for SITE gets (verified by the CA)."""
    from cryptography import x509
    ctx = ssl.create_default_context(cafile=str(s.dir / "ca.pem"))
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=SITE) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_a_browser_loads_the_site_while_ee_clients_use_the_port(site_stack):
    from playwright.sync_api import sync_playwright
    s = site_stack
    clients, results = _clients_in_background(s)
    with sync_playwright() as p:
        browser = _browser(p, s)
        page = browser.new_page()
        resp = page.goto(f"https://{SITE}:{s.port}/")
        assert resp is not None and resp.status == 200
        assert page.title() == TITLE
        details = resp.security_details() or {}
        assert details.get("issuer") == "mtgate test CA", details
        missing = page.goto(f"https://{SITE}:{s.port}/no-such-page")
        assert missing is not None and missing.status == 404
        browser.close()
    clients.join(timeout=120)
    assert_telethon_got_dc_answer(results.get("telethon", {}), s.stack)
    assert_tdlib_got_dc_answer(results.get("tdlib", {}), s.stack)
    # The ee secret names the FakeTLS domain; the site answers for its own host.
    assert s.stack.ee_secret.endswith(TLS_DOMAIN.encode().hex())
    s.stack.check_alive()


def test_a_certificate_replaced_on_disk_drops_nobody(site_stack):
    from playwright.sync_api import sync_playwright
    s = site_stack
    before = _served_serial(s)
    with sync_playwright() as p:
        browser = _browser(p, s)
        page = browser.new_page()
        assert page.goto(f"https://{SITE}:{s.port}/").status == 200
        clients, results = _clients_in_background(s)
        new = _write_leaf(s.dir, s.ca_key, s.ca_cert)
        deadline = time.time() + 15
        while _served_serial(s) != new.serial_number:
            assert time.time() < deadline, "the new certificate is not served"
            time.sleep(0.2)
        # The page's open connection still works after the swap.
        status = page.evaluate("fetch('/').then(r => r.status)")
        assert status == 200
        # And a fresh browser connection trusts the new certificate.
        page2 = browser.new_context().new_page()
        assert page2.goto(f"https://{SITE}:{s.port}/").status == 200
        browser.close()
    clients.join(timeout=120)
    assert_telethon_got_dc_answer(results.get("telethon", {}), s.stack)
    assert_tdlib_got_dc_answer(results.get("tdlib", {}), s.stack)
    assert before != new.serial_number
    s.stack.check_alive()
