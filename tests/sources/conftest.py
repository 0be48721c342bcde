"""Fixtures for the network sources: a real worker + solver, a loopback HTTP server with ETags."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.solver.conftest import Env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path / "worker")
    yield e
    with contextlib.suppress(Exception):
        e.close()


@dataclass
class Resource:
    body: bytes
    etag: bool = True
    last_modified: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    redirect: str = ""  # answer 302 to this path instead
    auth: str = ""  # the Authorization header required (401 otherwise)
    chunk_delay: float = 0.0  # seconds between 64 KiB chunks of the body (a slow server)

    @property
    def etag_value(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


class FileServer:
    """A stdlib HTTP server on 127.0.0.1: GET/HEAD with ETag, If-None-Match (304), redirects.
    Records every request as (method, path, headers)."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                server.requests.append((self.command, self.path, dict(self.headers.items())))
                res = server.resources.get(self.path)
                if res is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if res.auth and self.headers.get("Authorization") != res.auth:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if res.redirect:
                    self.send_response(302)
                    self.send_header("Location", res.redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                inm = self.headers.get("If-None-Match", "")
                if res.etag and res.etag_value in [t.strip() for t in inm.split(",")]:
                    self.send_response(304)
                    self.send_header("ETag", res.etag_value)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(res.body)))
                if res.etag:
                    self.send_header("ETag", res.etag_value)
                if res.last_modified is not None:
                    self.send_header("Last-Modified", formatdate(res.last_modified, usegmt=True))
                for k, v in res.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not body:
                    return
                try:
                    for i in range(0, len(res.body), 65536):
                        self.wfile.write(res.body[i:i + 65536])
                        if res.chunk_delay:
                            self.wfile.flush()
                            time.sleep(res.chunk_delay)
                except OSError:  # the client went away
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def gets(self, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == "GET" and p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    s = FileServer()
    yield s
    s.close()
