"""Reaching BuildKit through a Docker Engine API socket, as buildx's ``docker`` driver does.

The Engine serves BuildKit's Control API on ``POST /grpc`` and takes a client's session on
``POST /session``; both answer ``101 Switching Protocols`` and then carry HTTP/2 (``h2c``) on the
same connection. :func:`connect` gives a :class:`~buildkitpy.client.connection.Client` whose gRPC
channel runs over one such ``/grpc`` connection and whose sessions are dialed on ``/session``::

    async with engine.connect("unix:///var/run/docker.sock") as client:
        await client.solve(opt)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio

from buildkitpy.client.connection import AddressError, Client
from buildkitpy.client.rpc_errors import BuildkitError

if TYPE_CHECKING:
    from buildkitpy.session.pipechannel import PipeChannel

# Like the docker CLI's (and Go's net/http), a request line and its headers.
MAX_RESPONSE_HEAD = 1 << 20


class EngineAPIError(BuildkitError):
    """The Engine refused the upgrade (its status and ``message``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def open_connection(host: str, tls: ssl.SSLContext | None = None
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``host`` (``DOCKER_HOST`` form: ``unix:///path`` or ``tcp://host:port``)."""
    parts = urlsplit(host)
    try:
        if parts.scheme == "unix":
            path = host[len("unix://"):]
            if not path:
                raise AddressError(f"invalid Engine address {host!r}: no socket path")
            return await asyncio.open_unix_connection(path, limit=MAX_RESPONSE_HEAD)
        if parts.scheme == "tcp":
            if not parts.hostname:
                raise AddressError(f"invalid Engine address {host!r}: expected tcp://host:port")
            port = parts.port or (2376 if tls else 2375)
            return await asyncio.open_connection(parts.hostname, port, ssl=tls, limit=MAX_RESPONSE_HEAD)
    except OSError as exc:
        raise EngineAPIError(0, f"cannot connect to the Docker Engine API at {host}: "
                                f"{exc.strerror or exc}") from None
    raise AddressError(f"unsupported Engine address {host!r} (use unix:// or tcp://)")


async def dial_hijack(host: str, path: str, proto: str, headers: Sequence[tuple[str, str]] = (), *,
                      tls: ssl.SSLContext | None = None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``POST path`` asking to upgrade to ``proto``, as the docker client's ``DialHijack``; returns
    the connection positioned after the ``101`` answer. Any other answer raises
    :class:`EngineAPIError` with the Engine's message."""
    reader, writer = await open_connection(host, tls)
    try:
        lines = [f"POST {path} HTTP/1.1", "Host: docker", "User-Agent: buildkitpy",
                 "Connection: Upgrade", f"Upgrade: {proto}", "Content-Length: 0"]
        for name, value in headers:
            if "\r" in name + value or "\n" in name + value:
                raise ValueError(f"header {name!r} has a line break")
            lines.append(f"{name}: {value}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise EngineAPIError(0, f"the Engine closed the connection instead of answering POST {path}"
                                 ) from None
        except asyncio.LimitOverrunError:
            raise EngineAPIError(0, f"the Engine's answer to POST {path} has too long a header") from None
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ", 2)[1])
        except (IndexError, ValueError):
            raise EngineAPIError(0, f"not an HTTP answer to POST {path}: {status_line[:80]!r}") from None
        if status != 101:
            fields = dict(_header(line) for line in header_lines if ":" in line)
            body = b""
            length = fields.get("content-length", "")
            with contextlib.suppress(asyncio.IncompleteReadError, ValueError, TimeoutError):
                async with asyncio.timeout(5):
                    body = await reader.readexactly(min(int(length), 1 << 16)) if length else b""
            raise EngineAPIError(status, _message(status, body))
    except BaseException:
        writer.close()
        raise
    return reader, writer


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


def _message(status: int, body: bytes) -> str:
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace").strip()
    return f"the Engine answered {status}: {message}" if message else f"the Engine answered {status}"


@contextlib.asynccontextmanager
async def grpc_channel(host: str, *, api_version: str = "", tls: ssl.SSLContext | None = None
                       ) -> AsyncIterator[PipeChannel]:
    """A channel (used like a ``grpc.aio.Channel``) to the Engine's BuildKit over one ``POST /grpc``
    connection (it does not redial: when the connection ends, calls fail with UNAVAILABLE)."""
    from buildkitpy.session.bridge import in_background
    from buildkitpy.session.client import read_chunks, write_chunks
    from buildkitpy.session.pipechannel import channel_over_pipe

    reader, writer = await dial_hijack(host, _versioned(api_version, "/grpc"), "h2c", tls=tls)
    send, receive = anyio.create_memory_object_stream[bytes](16)
    try:
        async with in_background(write_chunks, receive, writer):
            async with channel_over_pipe(read_chunks(reader), send) as (channel, _pipe):
                yield channel
    finally:
        send.close()
        writer.close()


@contextlib.asynccontextmanager
async def connect(host: str, *, api_version: str = "", tls: ssl.SSLContext | None = None
                  ) -> AsyncIterator[Client]:
    """A :class:`Client` of the Engine's BuildKit: Control over ``/grpc``, sessions on ``/session``."""

    async def dial_session(headers: list[tuple[str, str]]
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await dial_hijack(host, _versioned(api_version, "/session"), "h2c", headers, tls=tls)

    async with grpc_channel(host, api_version=api_version, tls=tls) as channel:
        yield Client(channel, session_dialer=dial_session)


def _versioned(api_version: str, path: str) -> str:
    return f"/v{api_version}{path}" if api_version else path


__all__ = ["EngineAPIError", "connect", "dial_hijack", "grpc_channel", "open_connection"]
