"""The private socket a frontend container's LLBBridge is served on: it must work whatever the
daemon's root (a deep ``--root`` made its path longer than a unix socket address can be, and every
frontend image build failed with an internal error), and it leaves nothing behind."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from grpc_health.v1 import health, health_pb2_grpc

from buildkitpy.gateway.stdio import serve_over_pipes

pytestmark = pytest.mark.anyio


def fe_dirs(*places: Path) -> set[Path]:
    return {p for place in places if place.exists() for p in place.glob("fe-*")}


@pytest.mark.parametrize("depth", [0, 6])
async def test_bridge_socket_serves_under_short_and_deep_roots(tmp_path: Path, depth: int) -> None:
    base = tmp_path if depth else Path(tempfile.mkdtemp(prefix="r-"))
    socket_dir = base.joinpath(*["a-rather-long-directory-name"] * depth) / "frontend-sockets"
    assert (len(str(socket_dir)) > 110) == (depth == 6)
    system_tmp = Path(tempfile.gettempdir())
    before = fe_dirs(socket_dir, system_tmp)

    def add(server) -> None:  # noqa: ANN001
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)

    async with serve_over_pipes(add, socket_dir) as conn:
        during = fe_dirs(socket_dir, system_tmp) - before
        assert len(during) == 1 and (next(iter(during)) / "bridge.sock").is_socket()
        assert len(str(next(iter(during)) / "bridge.sock")) <= 107
        # an HTTP/2 client preface: the gRPC server behind the socket answers with its settings
        await conn.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        assert await anext(aiter(conn.output()))
    assert fe_dirs(socket_dir, system_tmp) == before
    if not depth:
        shutil.rmtree(base)
