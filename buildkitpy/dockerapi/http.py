"""HTTP/1.1 for the Engine API: h11 (sans-I/O parsing) driven over asyncio streams.

One :class:`HTTPConnection` per accepted socket serves requests one after another (keep-alive).
A handler reads the request body as a stream (``docker build`` uploads its context chunked) and
answers with a complete body, a chunked stream of JSON lines, or by taking the socket over after a
``101 Switching Protocols`` (``/session``, ``/grpc``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

# Go's net/http default (http.DefaultMaxHeaderBytes): request line and headers together.
MAX_HEADER_BYTES = 1 << 20
READ_SIZE = 64 * 1024


class HTTPError(Exception):
    """An error answered as ``{"message": ...}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client closed the connection (or broke the protocol) while we were reading from it."""


@dataclass
class Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    connection: HTTPConnection
    api_version: str = ""
    route_params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str = "") -> str:
        """The first value of query parameter ``name`` (Go's ``FormValue``)."""
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        return list(self.query.get(name, []))

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    async def body(self) -> AsyncIterator[bytes]:
        async for chunk in self.connection.read_body():
            yield chunk

    async def read_body(self, limit: int = 16 << 20) -> bytes:
        data = bytearray()
        async for chunk in self.body():
            data += chunk
            if len(data) > limit:
                raise HTTPError(413, f"request body larger than {limit} bytes")
        return bytes(data)


class HTTPConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.response_started = False
        self.hijacked = False

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise ClientGone(str(exc)) from None
            if event is h11.NEED_DATA:
                try:
                    data = await self.reader.read(READ_SIZE)
                except (ConnectionError, OSError) as exc:
                    raise ClientGone(str(exc)) from None
                self.h11.receive_data(data)
                continue
            return event

    async def next_request(self) -> Request | None:
        """The next request on this connection, None when the client is done with it."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        self.response_started = False
        event = await self._next_event()
        if isinstance(event, (h11.ConnectionClosed, h11.EndOfMessage)):
            return None
        if not isinstance(event, h11.Request):
            return None
        target = event.target.decode("latin-1")
        split = urlsplit(target)
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        return Request(method=event.method.decode("ascii"), target=target, path=unquote(split.path),
                       query=parse_qs(split.query, keep_blank_values=True), headers=headers,
                       connection=self)

    async def read_body(self) -> AsyncIterator[bytes]:
        while self.h11.their_state is h11.SEND_BODY:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise ClientGone("the client closed the connection before the end of the request body")

    async def discard_body(self) -> None:
        async for _ in self.read_body():
            pass

    async def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)
            try:
                await self.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise ClientGone(str(exc)) from None

    async def start_response(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.response_started = True
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        await self._send(h11.Response(status_code=status, reason=reason, headers=[
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]))

    async def send_data(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end_response(self) -> None:
        await self._send(h11.EndOfMessage())

    async def respond(self, status: int, body: bytes = b"", content_type: str = "application/json",
                      headers: list[tuple[str, str]] | None = None) -> None:
        all_headers = list(headers or [])
        if content_type:
            all_headers.append(("Content-Type", content_type))
        all_headers.append(("Content-Length", str(len(body))))
        await self.start_response(status, all_headers)
        await self.send_data(body)
        await self.end_response()

    async def respond_json(self, status: int, value: Any, headers: list[tuple[str, str]] | None = None
                           ) -> None:
        await self.respond(status, (json.dumps(value) + "\n").encode(), headers=headers)

    async def hijack(self, protocol: str) -> bytes:
        """Answer ``101 Switching Protocols`` and hand the raw socket to the caller; returns bytes
        the client already sent past the request. The request must have asked for the upgrade."""
        if self.h11.their_state is h11.SEND_BODY:
            await self.discard_body()
        if self.h11.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            raise HTTPError(400, f"this endpoint needs an upgraded connection (Connection: Upgrade, "
                                 f"Upgrade: {protocol})")
        await self._send(h11.InformationalResponse(status_code=101, headers=[
            (b"Connection", b"Upgrade"), (b"Upgrade", protocol.encode("latin-1"))]))
        self.hijacked = True
        self.response_started = True
        return bytes(self.h11.trailing_data[0])

    async def close(self) -> None:
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
