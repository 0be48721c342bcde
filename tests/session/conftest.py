"""A real daemon-side gRPC server whose Control.Session is SessionManager.serve, on a unix socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from buildkitpy.api import control_pb2_grpc
from buildkitpy.session.manager import HealthCheckConfig, SessionManager, add_control_to_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpc.aio only runs on asyncio


class SessionOnlyControl(control_pb2_grpc.ControlServicer):
    """Just enough of the Control service for sessions (the real one lives elsewhere)."""

    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions

    async def Session(self, request_iterator, context):
        async for message in self.sessions.serve(request_iterator, context):
            yield message


@dataclass
class Daemon:
    sessions: SessionManager
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    control: control_pb2_grpc.ControlStub


async def start_daemon(socket_path: str, health: HealthCheckConfig | None = None) -> Daemon:
    sessions = SessionManager(health=health)
    server = grpc.aio.server()
    add_control_to_server(SessionOnlyControl(sessions), server)
    assert server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix:{socket_path}")
    return Daemon(sessions, server, channel, control_pb2_grpc.ControlStub(channel))


async def stop_daemon(daemon: Daemon) -> None:
    await daemon.channel.close()
    await daemon.server.stop(grace=None)


@pytest.fixture
async def daemon(short_dir) -> AsyncIterator[Daemon]:
    d = await start_daemon(f"{short_dir}/buildkitd.sock")
    try:
        yield d
    finally:
        await stop_daemon(d)
