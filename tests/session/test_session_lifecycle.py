"""Sessions ending: client gone, daemon gone, failed health checks, bad streams, leaks."""

from __future__ import annotations

import asyncio
import os
import tempfile

import anyio
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from session_fixtures import ECHO_STREAM, ECHO_UNARY, EchoAttachable

from buildkitpy import errors
from buildkitpy.api import control_pb2
from buildkitpy.session.client import ClientSession, SessionRejected
from buildkitpy.session.manager import HEADER_SESSION_ID, HEADER_SESSION_METHOD
from buildkitpy.session.secrets import SecretsAttachable, get_secret
from tests.session.conftest import start_daemon, stop_daemon

pytestmark = pytest.mark.anyio


async def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(interval)


async def test_client_leaving_closes_the_daemon_session(daemon):
    client = ClientSession([SecretsAttachable({"a": b"1"})])
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
    with anyio.fail_after(5):
        await session.closed.wait()
    assert session.close_reason
    with pytest.raises(errors.SessionNotFound, match=client.session_id):
        await daemon.sessions.get(client.session_id, timeout=0.2)
    assert daemon.sessions.active() == []
    with pytest.raises(errors.SessionNotFound, match="is closed"):
        await get_secret(session, "a")
    with pytest.raises(Exception, match="Channel is closed"):  # never reconnected
        await session.channel.unary_unary(ECHO_UNARY)(b"x", timeout=2)


async def test_client_leaving_fails_calls_in_flight(daemon):
    client = ClientSession([EchoAttachable()])
    failure: list[BaseException] = []
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)

        async def endless_stream():
            async def requests():
                while True:
                    yield b"x" * 1024
                    await anyio.sleep(0.01)

            try:
                async for _ in session.channel.stream_stream(ECHO_STREAM)(requests()):
                    pass
            except grpc.aio.AioRpcError as exc:
                failure.append(exc)

        task = asyncio.ensure_future(endless_stream())
        await anyio.sleep(0.2)
        assert not task.done()
    with anyio.fail_after(5):
        await asyncio.wait([task])
    # The status depends on where grpc was when the connection dropped (UNAVAILABLE, CANCELLED,
    # or INTERNAL for a send on a dead stream); what matters is that the call ended with an error.
    assert failure, "the call did not fail"


async def test_daemon_going_away_ends_the_client_session(short_dir):
    daemon = await start_daemon(f"{short_dir}/d.sock")
    client = ClientSession()
    try:
        async with client.run(daemon.control):
            session = await daemon.sessions.get(client.session_id)
            await daemon.server.stop(grace=None)
            with anyio.fail_after(5):
                await client.closed.wait()
                await session.closed.wait()
    finally:
        await stop_daemon(daemon)


async def test_daemon_closing_sessions_ends_them_on_the_client(daemon):
    first, second = ClientSession(), ClientSession()
    async with first.run(daemon.control), second.run(daemon.control):
        one = await daemon.sessions.get(first.session_id)
        await daemon.sessions.get(second.session_id)
        one.close("no longer needed")
        with anyio.fail_after(5):
            await one.closed.wait()
            await first.closed.wait()
        assert one.close_reason == "no longer needed"
        assert [s.id for s in daemon.sessions.active()] == [second.session_id]
        with anyio.fail_after(5):
            await daemon.sessions.close_all()
            await second.closed.wait()
        assert daemon.sessions.active() == []


async def test_failing_health_checks_close_the_session(daemon):
    class StuckHealth(health_pb2_grpc.HealthServicer):
        async def Check(self, request, context):
            await anyio.sleep_forever()

    healthy = ClientSession(health_custom_timeout_ms=1000)
    stuck = ClientSession(health_servicer=StuckHealth(), health_custom_timeout_ms=1000)
    async with healthy.run(daemon.control), stuck.run(daemon.control):
        healthy_session = await daemon.sessions.get(healthy.session_id)
        stuck_session = await daemon.sessions.get(stuck.session_id)
        with anyio.fail_after(6):
            await stuck_session.closed.wait()
        assert "health check failed" in stuck_session.close_reason
        # The healthy one has been checked at least once in the meantime and stays open.
        assert not healthy_session.closed.is_set()
        assert await daemon.sessions.get(healthy.session_id, timeout=0) is healthy_session
        with pytest.raises(errors.SessionNotFound):
            await daemon.sessions.get(stuck.session_id, timeout=0)
        with anyio.fail_after(5):
            await stuck.closed.wait()  # the client notices too


async def test_duplicate_and_anonymous_sessions_are_refused(daemon):
    first = ClientSession()
    second = ClientSession()
    second.session_id = first.session_id
    async with first.run(daemon.control):
        with pytest.raises(SessionRejected, match="ALREADY_EXISTS.*already exists"):
            async with second.run(daemon.control):
                pass
        assert await daemon.sessions.get(first.session_id, timeout=0)

    call = daemon.control.Session(iter(()), metadata=[(HEADER_SESSION_METHOD, "/a.B/C")])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert HEADER_SESSION_ID in info.value.details()


async def test_garbage_on_the_stream_closes_only_that_session(daemon):
    async def garbage():
        yield control_pb2.BytesMessage(data=b"this is not HTTP/2 at all" * 100)
        await anyio.sleep(10)

    call = daemon.control.Session(garbage(), metadata=[(HEADER_SESSION_ID, "garbage1")])
    session = await daemon.sessions.get("garbage1")
    with anyio.fail_after(5):
        await session.closed.wait()
        async for _ in call:  # the daemon ends the call
            pass
    # The daemon still serves new sessions.
    client = ClientSession()
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        reply = await health_pb2_grpc.HealthStub(session.channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_half_closed_stream_ends_the_session(daemon):
    call = daemon.control.Session(iter(()), metadata=[(HEADER_SESSION_ID, "halfclosed")])
    with anyio.fail_after(5):
        async for _ in call:
            pass
    assert await call.code() == grpc.StatusCode.OK
    with pytest.raises(errors.SessionNotFound):
        await daemon.sessions.get("halfclosed", timeout=0.1)


def _bridge_dirs(root: str) -> set[str]:
    return {name for name in os.listdir(root) if name.startswith(("buildkitpy-session-",
                                                                  "buildkitpy-attach-"))}


async def test_no_fd_task_or_tempdir_leaks(daemon, short_dir, monkeypatch):
    bridge_root = os.path.join(short_dir, "tmp")
    os.mkdir(bridge_root)
    monkeypatch.setattr(tempfile, "tempdir", bridge_root)

    async def one_session(leave_early: bool) -> None:
        client = ClientSession([SecretsAttachable({"a": b"1"}), EchoAttachable()])
        async with client.run(daemon.control):
            session = await daemon.sessions.get(client.session_id)
            assert _bridge_dirs(bridge_root) == set()  # removed as soon as connected
            assert await get_secret(session, "a") == b"1"
            if leave_early:
                return
            assert await session.channel.unary_unary(ECHO_UNARY)(os.urandom(1 << 20))
        with anyio.fail_after(5):
            await session.closed.wait()

    await one_session(False)  # warm up grpc's lazily created process-wide fds and threads
    await anyio.sleep(0.2)
    fds_before = len(os.listdir("/proc/self/fd"))
    tasks_before = len(asyncio.all_tasks())

    for i in range(10):
        await one_session(leave_early=bool(i % 2))

    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before)
    await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before)
    assert _bridge_dirs(bridge_root) == set()
    assert daemon.sessions.active() == []
