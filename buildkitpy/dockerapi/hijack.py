"""The Engine API's upgraded connections: ``POST /grpc`` (BuildKit's Control API, spliced onto our
own gRPC server) and ``POST /session`` (a client session whose HTTP/2 connection is the socket
itself, handed to the daemon's session manager). buildx's docker driver builds through these."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio

from buildkitpy.dockerapi.http import HTTPError, Request

log = logging.getLogger(__name__)

READ_SIZE = 256 << 10


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass


def check_upgrade(req: Request) -> None:
    """Both endpoints take only an upgrade to HTTP/2 over cleartext, as moby's."""
    proto = req.header("upgrade").strip()
    if not proto:
        raise HTTPError(400, f"no upgrade proto in request: {req.path} needs Connection: Upgrade and "
                             "Upgrade: h2c")
    if proto.lower() != "h2c":
        raise HTTPError(400, f"protocol {proto} not supported (only h2c)")
    if "upgrade" not in [v.strip().lower() for v in req.header("connection").split(",")]:
        raise HTTPError(400, f"{req.path} needs Connection: Upgrade")


async def grpc_proxy(req: Request, control_socket: str) -> None:
    """``POST /grpc``: splice the upgraded connection onto our Control API's private socket."""
    check_upgrade(req)
    try:
        reader, writer = await asyncio.open_unix_connection(control_socket)
    except OSError as exc:
        raise HTTPError(500, f"the BuildKit API is not reachable: {exc}") from None
    try:
        leftover = await req.connection.hijack("h2c")
        if leftover:
            writer.write(leftover)
        client = req.connection
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump, client.reader, writer)
            await _pump(reader, client.writer)
            tg.cancel_scope.cancel()
    finally:
        writer.close()
        await req.connection.close()


async def session(req: Request, sessions: Any) -> None:
    """``POST /session``: the client serves its attachables over this connection (HTTP/2 with the
    roles reversed); the daemon's session manager dials them as for ``Control.Session``."""
    from buildkitpy.errors import BuildkitpyError
    from buildkitpy.session.manager import HEADER_SESSION_ID, SessionHeader

    check_upgrade(req)
    if not req.header(HEADER_SESSION_ID).strip():
        raise HTTPError(400, f"POST /session without a session id: the {HEADER_SESSION_ID} header is "
                             "missing or empty")
    try:
        header = SessionHeader.from_metadata(list(req.headers.items()))
    except BuildkitpyError as exc:
        raise HTTPError(400, str(exc)) from None
    if sessions.get_nowait(header.id) is not None:
        raise HTTPError(409, f"session {header.id} already exists")
    leftover = await req.connection.hijack("h2c")
    conn = req.connection
    send, receive = anyio.create_memory_object_stream[bytes](16)

    async def incoming() -> AsyncIterator[bytes]:
        if leftover:
            yield leftover
        while True:
            try:
                data = await conn.reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            yield data

    async def outgoing() -> None:
        async with receive:
            async for chunk in receive:
                conn.writer.write(chunk)
                try:
                    await conn.writer.drain()
                except (ConnectionError, OSError):
                    return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(outgoing)
            try:
                await sessions.attach(header, incoming(), send)
            except BuildkitpyError as exc:
                log.info("session %s over the Engine API ended: %s", header.id, exc)
            finally:
                send.close()
    finally:
        await conn.close()
