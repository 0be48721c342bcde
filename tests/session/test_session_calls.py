"""Daemon → client calls through a real session: lookup, methods, secrets, health, load."""

from __future__ import annotations

import os
import re
import time

import anyio
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from session_fixtures import ECHO_STREAM, ECHO_UNARY, EchoAttachable

from buildkitpy import errors
from buildkitpy.api import secrets_pb2, secrets_pb2_grpc
from buildkitpy.session.client import ClientSession, new_session_id
from buildkitpy.session.secrets import (
    GET_SECRET_METHOD,
    MAX_SECRET_SIZE,
    SecretNotFound,
    SecretsAttachable,
    SecretsNotServed,
    get_secret,
)

pytestmark = pytest.mark.anyio


def test_session_ids_look_like_buildkit_ids():
    ids = {new_session_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[0-9a-z]{25}", i) for i in ids)


async def test_get_finds_the_session_with_its_metadata(daemon):
    client = ClientSession([SecretsAttachable({"a": b"1"})], shared_key="ctx:node1", name="main")
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        assert session.id == client.session_id
        assert session.shared_key == "ctx:node1"
        assert session.name == "main"
        assert list(session.methods) == client.method_names()
        assert await daemon.sessions.get(f"somecontext:{client.session_id}") is session
        assert daemon.sessions.active() == [session]
        assert not session.closed.is_set()


async def test_methods_list_and_case_insensitive_supports(daemon):
    client = ClientSession([SecretsAttachable({}), EchoAttachable()])
    assert client.method_names() == [GET_SECRET_METHOD, ECHO_UNARY, ECHO_STREAM,
                                     "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"]
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        assert session.supports("/moby.buildkit.secrets.v1.Secrets/GetSecret")
        assert session.supports("/MOBY.BUILDKIT.SECRETS.V1.SECRETS/getsecret")
        assert session.supports("/grpc.health.v1.health/check")
        assert not session.supports("/moby.filesync.v1.FileSync/DiffCopy")
        assert not session.supports("")


async def test_get_waits_for_a_session_that_opens_later(daemon):
    client = ClientSession()

    async def open_later():
        await anyio.sleep(0.3)
        async with client.run(daemon.control):
            await anyio.sleep(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(open_later)
        session = await daemon.sessions.get(client.session_id, timeout=5)
        assert session.id == client.session_id
        tg.cancel_scope.cancel()


async def test_get_for_an_unknown_id_times_out_clearly(daemon):
    started = time.monotonic()
    with pytest.raises(errors.SessionNotFound, match="no active session for nosuchsession.*0.3s"):
        await daemon.sessions.get("name:nosuchsession", timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2
    with pytest.raises(errors.SessionNotFound):
        await daemon.sessions.get("", timeout=0)


async def test_health_check_through_the_session(daemon):
    client = ClientSession()
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        reply = await health_pb2_grpc.HealthStub(session.channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_secrets(daemon):
    big = os.urandom(MAX_SECRET_SIZE)
    client = ClientSession([SecretsAttachable({"token": b"s3cr3t", "big": big})])
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        assert await get_secret(session, "token") == b"s3cr3t"
        assert await get_secret(session, "big") == big
        with pytest.raises(SecretNotFound, match=f"secret missing not found in session {session.id}"):
            await get_secret(session, "missing")
        # A bare channel works too (the older contract), with the same errors.
        assert await get_secret(session.channel, "token") == b"s3cr3t"
        with pytest.raises(SecretNotFound):
            await get_secret(session.channel, "missing")
        # BuildKit's provider answers NotFound itself.
        stub = secrets_pb2_grpc.SecretsStub(session.channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetSecret(secrets_pb2.GetSecretRequest(ID="missing"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_secret_from_a_session_without_secrets(daemon):
    client = ClientSession([EchoAttachable()])
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        with pytest.raises(SecretsNotServed, match="serves no secrets"):
            await get_secret(session, "token")
        with pytest.raises(SecretsNotServed):  # learnt from UNIMPLEMENTED
            await get_secret(session.channel, "token")


def test_secrets_attachable_rejects_bad_secrets():
    with pytest.raises(ValueError, match="limit"):
        SecretsAttachable({"x": b"0" * (MAX_SECRET_SIZE + 1)})
    with pytest.raises(TypeError, match="must be bytes"):
        SecretsAttachable({"x": "text"})
    with pytest.raises(ValueError, match="non-empty"):
        SecretsAttachable({"": b""})


def test_client_session_rejects_bad_attachables():
    with pytest.raises(TypeError, match="not an attachable"):
        ClientSession([object()])

    class BadNames(EchoAttachable):
        def method_names(self):
            return ["Echo"]

    with pytest.raises(ValueError, match="invalid gRPC method 'Echo'"):
        ClientSession([BadNames()])


async def test_many_concurrent_calls(daemon):
    client = ClientSession([SecretsAttachable({f"s{i}": f"v{i}".encode() for i in range(50)}),
                            EchoAttachable()])
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        echo = session.channel.unary_unary(ECHO_UNARY)
        results: dict[int, bytes] = {}

        async def one(i: int) -> None:
            if i % 2:
                results[i] = await get_secret(session, f"s{i % 50}")
            else:
                results[i] = await echo(i.to_bytes(4, "big") * 1000)

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(one, i)
        for i in range(300):
            assert results[i] == (f"v{i % 50}".encode() if i % 2 else i.to_bytes(4, "big") * 1000)


async def test_multi_mib_payloads(daemon):
    client = ClientSession([EchoAttachable()])
    async with client.run(daemon.control):
        session = await daemon.sessions.get(client.session_id)
        payload = os.urandom(12 << 20)
        assert await session.channel.unary_unary(ECHO_UNARY)(payload) == payload

        chunk = os.urandom(1 << 20)
        total = 64 << 20
        received = 0
        started = time.monotonic()
        call = session.channel.stream_stream(ECHO_STREAM)(iter([chunk] * (total // len(chunk))))
        async for reply in call:
            assert reply == chunk
            received += len(reply)
        elapsed = time.monotonic() - started
        assert received == total
        print(f"echoed {total >> 20} MiB both ways in {elapsed:.2f}s "
              f"({2 * total / elapsed / (1 << 20):.0f} MiB/s through the pipe)")
