"""Errors always reach the client: at the RPC boundary a message that repeats a huge input is cut
(its end, with the exit code, kept) and source snippets are trimmed, so the trailers fit the
strictest gRPC peer (grpc-core's 16 KiB hard limit, here our own Python client); anything
unexpected arrives as "internal error (id …)" with the traceback in the daemon log."""

from __future__ import annotations

import errno
import io
import logging
import re

import grpc
import pytest

from buildkitpy import errors as daemon_errors
from buildkitpy.api import control_pb2, control_pb2_grpc
from buildkitpy.client.connection import Client
from buildkitpy.client.rpc_errors import from_rpc_error, print_error

LONG_RUN = " ".join(f"word{i}" for i in range(3000))
EXIT = "did not complete successfully: exit code: 3"


def _dockerfile_with_a_64k_line() -> bytes:
    lines = ["FROM busybox", "RUN " + "x" * 65536, "RUN true"] + [f"# filler {i}" for i in range(5000)]
    return "\n".join(lines).encode()


class _Raising(control_pb2_grpc.ControlServicer):
    """Each call raises what the test put in ``to_raise``, through the daemon's real boundary."""

    to_raise: BaseException

    @daemon_errors.unary_handler("Control")
    async def Solve(self, request, context):
        raise self.to_raise


@pytest.fixture
async def call(tmp_path):
    servicer = _Raising()
    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServicer_to_server(servicer, server)
    sock = tmp_path / "d.sock"
    server.add_insecure_port(f"unix:{sock}")
    await server.start()

    async def raise_through_grpc(exc: BaseException):
        servicer.to_raise = exc
        async with Client.connect(f"unix://{sock}") as client:
            with pytest.raises(grpc.RpcError) as info:
                await client.control.Solve(control_pb2.SolveRequest(Ref="x"))
        return info.value

    yield raise_through_grpc
    await server.stop(None)


@pytest.mark.anyio
async def test_a_huge_failing_run_keeps_its_exit_code_and_snippet(call):
    err = daemon_errors.SolveError(
        f'process "/bin/sh -c {LONG_RUN}" {EXIT}', vertex="sha256:" + "a" * 64,
        sources=[daemon_errors.SourceLocation("Dockerfile", _dockerfile_with_a_64k_line(), [(2, 0, 2, 0)])])
    rpc = await call(err)
    assert rpc.code() == grpc.StatusCode.UNKNOWN, rpc.details()
    client_err = from_rpc_error(rpc, context="failed to solve")
    text = str(client_err)
    assert text.startswith('failed to solve: process "/bin/sh -c word0 word1')
    assert text.endswith(EXIT)
    assert re.search(r"\[\.\.\. \d+ characters omitted \.\.\.\]", text)
    assert client_err.vertex == "sha256:" + "a" * 64
    out = io.StringIO()
    print_error(client_err, out)
    printed = out.getvalue()
    assert "Dockerfile:2" in printed and "   1 |     FROM busybox" in printed
    assert "   2 | >>> RUN xxxx" in printed and "   3 |     RUN true" in printed


@pytest.mark.anyio
async def test_a_source_too_big_even_trimmed_is_dropped_not_the_error(call):
    many_ranges = [(i, 0, i, 0) for i in range(1, 3000, 2)]
    data = "\n".join("RUN " + "y" * 100 for _ in range(3000)).encode()
    err = daemon_errors.SolveError(f"bad {EXIT}", sources=[daemon_errors.SourceLocation("Dockerfile", data,
                                                                                      many_ranges)])
    client_err = from_rpc_error(await call(err), context="failed to solve")
    assert str(client_err) == f"failed to solve: bad {EXIT}"


@pytest.mark.anyio
@pytest.mark.parametrize("message", [
    "é" * 20000 + " " + EXIT,          # percent-encoded: 6 wire bytes a character
    "\x01\x02" * 9000 + " " + EXIT,    # control characters: 3 wire bytes each
    "bad name \udcff\udcfe " + EXIT,   # lone surrogates (undecodable file names) cannot be sent as is
])
async def test_messages_of_any_content_arrive(call, message):
    rpc = await call(daemon_errors.InvalidArgument(message))
    assert rpc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc.details().endswith(EXIT)
    assert len(rpc.details().encode()) <= 3 * daemon_errors.MAX_MESSAGE_WIRE_BYTES


@pytest.mark.anyio
async def test_an_unexpected_exception_is_an_internal_error_with_an_id(call, caplog):
    caplog.set_level(logging.ERROR, logger="buildkitpy")
    rpc = await call(KeyError("config"))
    assert rpc.code() == grpc.StatusCode.INTERNAL
    match = re.fullmatch(r"internal error \(id ([0-9a-f]{12})\), see the daemon log", rpc.details())
    assert match, rpc.details()
    assert "KeyError" not in rpc.details()
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is KeyError


@pytest.mark.anyio
async def test_an_unexpected_os_error_keeps_its_cause(call):
    rpc = await call(OSError(errno.ENOSPC, "No space left on device", "/var/lib/x"))
    assert rpc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.fullmatch(r"no space left on device \(internal error id [0-9a-f]{12}\)", rpc.details())


def test_bounded_message_keeps_short_text_and_bounds_long_text():
    assert daemon_errors.bounded_message("exit code: 3") == "exit code: 3"
    cut = daemon_errors.bounded_message("a" * 10_000 + "END")
    assert cut.startswith("aaa") and cut.endswith("END") and len(cut) <= daemon_errors.MAX_MESSAGE_WIRE_BYTES


@pytest.mark.anyio
async def test_a_run_of_many_continuation_lines_keeps_its_snippet(call):
    # a frontend gives one range per line (as BuildKit's does): the 100,000 ranges are joined and the
    # snippet shows the instruction's first lines (it was dropped, after seconds of encoding a 1 MiB
    # detail with 100,000 ranges on the event loop)
    lines = ["FROM busybox", "RUN a \\"] + ["  abc \\"] * 100_000 + ["  end"]
    err = daemon_errors.SolveError(f"bad {EXIT}", sources=[daemon_errors.SourceLocation(
        "Dockerfile", "\n".join(lines).encode(), [(n, 0, n, 0) for n in range(2, len(lines) + 1)])])
    client_err = from_rpc_error(await call(err), context="failed to solve")
    assert [s.ranges for s in client_err.sources] == [[(2, 10)]]
    out = io.StringIO()
    print_error(client_err, out)
    assert "Dockerfile:2" in out.getvalue() and "   2 | >>> RUN a \\" in out.getvalue()
