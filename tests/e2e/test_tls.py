"""TCP with mutual TLS: the daemon's --tlscert/--tlskey/--tlscacert against the client's TLS flags."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path) -> Path:
    d = tmp_path / "certs"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d


def test_mutual_tls(make_daemon, certs):
    daemon = make_daemon("--tlscert", str(certs / "server.pem"), "--tlskey", str(certs / "server.key"),
                     "--tlscacert", str(certs / "ca.pem"))
    ok = daemon.client("--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "client.pem"),
                       "--tlskey", str(certs / "client.key"), "debug", "workers", addr=daemon.tcp_addr)
    assert "linux/" in ok.stdout.decode()
    # Without a client certificate the handshake is refused.
    denied = daemon.client("--tlscacert", str(certs / "ca.pem"), "debug", "workers",
                           addr=daemon.tcp_addr, check=False, timeout=60)
    assert denied.returncode != 0
    # The unix socket stays plain.
    assert "linux/" in daemon.client("debug", "workers").stdout.decode()
