"""The Engine API listener: addresses, TLS, version negotiation, routing and error replies.

This API is root-equivalent (it runs containers as root), so a unix socket is created mode 0660 and a
tcp listener needs TLS unless the operator explicitly asked for an insecure one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import h11

from buildkitpy.dockerapi.http import ClientGone, HTTPConnection, HTTPError, Request
from buildkitpy.errors import BuildkitpyError, InvalidArgument, NotFound, PermissionDenied, Unimplemented

log = logging.getLogger(__name__)

API_VERSION = "1.50"  # what the docker 28.x CLI speaks; older clients are served at their version
MIN_API_VERSION = "1.24"
ENGINE_VERSION = "28.2.0-buildkitpy"

Handler = Callable[[Request], Awaitable[None]]

_VERSION_PREFIX = re.compile(r"^/v(\d+\.\d+)(/.*)$")


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def status_for(exc: BaseException) -> int:
    if isinstance(exc, HTTPError):
        return exc.status
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InvalidArgument):
        return 400
    if isinstance(exc, PermissionDenied):
        return 403
    if isinstance(exc, Unimplemented):
        return 501
    return 500


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        """``path`` with ``{name}`` (one segment) or ``{name:.*}`` (image names with slashes)."""
        regex = re.sub(r"\{(\w+)(?::([^}]*))?\}",
                       lambda m: f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})", path)
        self.routes.append(Route(method, re.compile(f"^{regex}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route.handler, found.groupdict()
            allowed = True
        if allowed:
            raise HTTPError(405, "method not allowed")
        raise HTTPError(404, "page not found")


class EngineAPIServer:
    """Accepts connections and dispatches requests to ``router``."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.servers: list[asyncio.base_events.Server] = []
        self.connections: set[asyncio.Task[None]] = set()

    async def listen(self, addr: str, *, tls: ssl.SSLContext | None, insecure: bool) -> str:
        url = urlparse(addr)
        if url.scheme == "unix":
            path = Path(url.path or url.netloc)
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(path)
            server = await asyncio.start_unix_server(self._accept, path=str(path), limit=1 << 20)
            os.chmod(path, 0o660)
            self.servers.append(server)
            return f"unix://{path}"
        if url.scheme == "tcp":
            if tls is None and not insecure:
                raise InvalidArgument(
                    f"--docker-addr {addr}: a tcp listener for the Engine API needs TLS (--tlscert/--tlskey, "
                    "with --tlscacert to verify clients) or --docker-addr-insecure: this API can run "
                    "anything as root")
            host = url.hostname or "127.0.0.1"
            port = url.port or (2376 if tls else 2375)
            server = await asyncio.start_server(self._accept, host=host, port=port, ssl=tls, limit=1 << 20)
            self.servers.append(server)
            bound = server.sockets[0].getsockname()
            return f"tcp://{bound[0]}:{bound[1]}"
        raise InvalidArgument(f"unsupported Engine API address {addr!r} (use unix:// or tcp://)")

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.connections):
            task.cancel()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except (TimeoutError, asyncio.CancelledError):
                pass

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        conn = HTTPConnection(reader, writer)
        try:
            await self._serve(conn)
        except (ClientGone, ConnectionError):
            pass
        except Exception:  # the boundary: log and drop this connection, keep serving others
            log.exception("Engine API connection failed")
        finally:
            self.connections.discard(task)
            if not conn.hijacked:
                await conn.close()

    async def _serve(self, conn: HTTPConnection) -> None:
        while True:
            try:
                request = await conn.next_request()
            except ClientGone as exc:
                if "too long" in str(exc) or "Receive buffer" in str(exc):
                    await _reply_raw(conn, 431, "request header fields too large")
                elif "bad" in str(exc).lower() or "illegal" in str(exc).lower():
                    await _reply_raw(conn, 400, f"malformed HTTP request: {exc}")
                return
            if request is None:
                return
            await self._handle(conn, request)
            if conn.hijacked:
                return
            if conn.h11.our_state is not h11.DONE:
                return  # a failed stream: the connection cannot be reused
            try:
                await conn.discard_body()
            except ClientGone:
                return
            if conn.h11.their_state is not h11.DONE:
                return

    async def _handle(self, conn: HTTPConnection, request: Request) -> None:
        log.debug("Engine API %s %s", request.method, request.target)
        headers = [("Api-Version", API_VERSION), ("Ostype", "linux"),
                   ("Server", f"Docker/{ENGINE_VERSION} (linux)"), ("Docker-Experimental", "false")]
        try:
            path = request.path
            found = _VERSION_PREFIX.match(path)
            version = API_VERSION
            if found:
                version, path = found.group(1), found.group(2)
            if version_tuple(version) > version_tuple(API_VERSION):
                raise HTTPError(400, f"client version {version} is too new. Maximum supported API version "
                                     f"is {API_VERSION}")
            if version_tuple(version) < version_tuple(MIN_API_VERSION):
                raise HTTPError(400, f"client version {version} is too old. Minimum supported API version "
                                     f"is {MIN_API_VERSION}, please upgrade your client to a newer version")
            request.api_version = version
            handler, params = self.router.match(request.method, path.rstrip("/") or "/")
            request.route_params = params
            request.response_headers = headers  # type: ignore[attr-defined]
            await handler(request)
        except ClientGone:
            raise
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the API boundary
            status = status_for(exc)
            if status == 500 and not isinstance(exc, BuildkitpyError):
                log.exception("Engine API %s %s failed", request.method, request.path)
                message = f"internal error: {exc}"
            else:
                message = getattr(exc, "message", None) or str(exc)
            if conn.response_started:
                raise ClientGone(message) from None  # nothing sane to send mid-response
            await conn.respond_json(status, {"message": message}, headers=headers)


def response_headers(request: Request) -> list[tuple[str, str]]:
    return list(getattr(request, "response_headers", []))


async def _reply_raw(conn: HTTPConnection, status: int, message: str) -> None:
    """An answer to a request h11 could not parse: written by hand, then the connection closes."""
    body = ('{"message":"' + message.replace('"', "'") + '"}\n').encode()
    reason = {400: "Bad Request", 431: "Request Header Fields Too Large"}.get(status, "Error")
    try:
        conn.writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await conn.writer.drain()
        await _linger(conn)
    except (ConnectionError, OSError):
        pass


async def _linger(conn: HTTPConnection, seconds: float = 2.0, limit: int = 8 << 20) -> None:
    """Close our side, then read and drop what the client is still sending for a moment: closing with
    unread data resets the connection and the client would lose our answer (Go's server lingers too)."""
    if conn.writer.can_write_eof():
        conn.writer.write_eof()
    drained = 0
    try:
        async with asyncio.timeout(seconds):
            while drained < limit:
                chunk = await conn.reader.read(1 << 16)
                if not chunk:
                    return
                drained += len(chunk)
    except TimeoutError:
        return


def _remove_stale_socket(path: Path) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
    else:
        raise InvalidArgument(f"{path} is in use by another daemon")
    finally:
        probe.close()


def tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
