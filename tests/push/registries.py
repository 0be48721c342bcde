"""Real ``docker-registry`` instances on loopback for push tests: plain HTTP, token auth (with a small
JWT token server of our own) and TLS with a test CA. Keys and certificates are made with ``openssl``."""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from image.registryfixture import REGISTRY_BIN, Registry, free_port

SERVICE = "test-registry"
ISSUER = "test-issuer"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path) -> tuple[Path, Path]:
    """A self-signed CA: (cert, key)."""
    d.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=buildkitpy test CA", cwd=d)
    return d / "ca.pem", d / "ca.key"


def make_server_cert(d: Path, ca: tuple[Path, Path], ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A server certificate for ``ip`` signed by ``ca``: (cert, key)."""
    (d / "san.cnf").write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", f"/CN={ip}", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)
    return d / "server.pem", d / "server.key"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Issues RS256 JWTs the way Docker's token spec describes: ``GET /token?service=&scope=`` with
    basic auth, or ``POST /token`` with an OAuth2 ``refresh_token`` grant. Only ``users`` (and
    ``refresh_tokens``) get the access they ask for; anonymous requests get a token without access."""

    key: Path
    cert: Path
    users: dict[str, str]
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    requests: list[dict] = field(default_factory=list)  # what was asked, for assertions
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, claims: dict) -> str:
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             capture_output=True, check=True).stdout
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing_input.encode(), capture_output=True, check=True).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def token_for(self, user: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            for item in scope.split(" "):
                parts = item.split(":")
                if len(parts) >= 3 and user:
                    access.append({"type": parts[0], "name": ":".join(parts[1:-1]),
                                   "actions": parts[-1].split(",")})
        now = int(time.time())
        return self.sign({"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 600, "nbf": now - 60,
                          "iat": now, "jti": secrets.token_hex(8), "access": access})

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(name) != password:
                        server.requests.append({"method": "GET", "user": name, "denied": True})
                        self._answer(401, {"details": "bad credentials"})
                        return
                    user = name
                scopes = query.get("scope", [])
                server.requests.append({"method": "GET", "user": user, "scopes": scopes,
                                        "service": query.get("service", [""])[0]})
                token = server.token_for(user, scopes)
                self._answer(200, {"token": token, "access_token": token, "expires_in": 600})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                refresh = form.get("refresh_token", [""])[0]
                user = server.refresh_tokens.get(refresh, "")
                server.requests.append({"method": "POST", "user": user, "grant": form.get("grant_type"),
                                        "scopes": form.get("scope", [])})
                if form.get("grant_type") != ["refresh_token"] or not user:
                    self._answer(401, {"error": "invalid_grant"})
                    return
                token = server.token_for(user, form.get("scope", []))
                self._answer(200, {"access_token": token, "expires_in": 600})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def make_token_server(d: Path, users: dict[str, str], refresh_tokens: dict[str, str]) -> TokenServer:
    d.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "token.key", "-out", "token.pem",
            "-days", "2", "-subj", "/CN=buildkitpy test token issuer", cwd=d)
    server = TokenServer(d / "token.key", d / "token.pem", users, refresh_tokens)
    server.start()
    return server


@dataclass
class PushRegistry(Registry):
    scheme: str = "http"
    ca: Path | None = None
    token_server: TokenServer | None = None

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else None

    def stop(self) -> None:
        super().stop()
        if self.token_server is not None:
            self.token_server.stop()


def start_push_registry(data: Path, *, tls: tuple[Path, Path] | None = None, ca: Path | None = None,
                        token_server: TokenServer | None = None) -> PushRegistry:
    """``docker-registry`` on a free loopback port, optionally with TLS and token auth."""
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    extra = ""
    if tls:
        extra += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    auth = ""
    if token_server:
        auth = (f"auth:\n  token:\n    realm: {token_server.realm}\n    service: {SERVICE}\n"
                f"    issuer: {ISSUER}\n    rootcertbundle: {token_server.cert}\n")
    (data / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {data / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{extra}{auth}")
    log = open(data / "registry.log", "ab")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(data / "config.yml")], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    reg = PushRegistry(proc, port, data, scheme="https" if tls else "http", ca=ca, token_server=token_server)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{reg.base}/v2/", context=reg.ssl_context()).close()
            return reg
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return reg
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    reg.stop()
    raise RuntimeError(f"docker-registry did not start: {(data / 'registry.log').read_text()[-2000:]}")
