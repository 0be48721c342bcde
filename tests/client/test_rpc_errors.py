"""Error rendering: a daemon error with an ``errdefs.Source`` detail prints the Dockerfile snippet,
then ``error: failed to solve: ...``, like buildctl. The status travels over a real gRPC call."""

from __future__ import annotations

import io

import anyio
import grpc
import pytest
from google.rpc import status_pb2

from buildkitpy import errors as daemon_errors
from buildkitpy.api import control_pb2, control_pb2_grpc
from buildkitpy.client.connection import Client
from buildkitpy.client.rpc_errors import (
    SourceSnippet,
    from_rpc_error,
    from_status,
    go_code_name,
    print_error,
)

DOCKERFILE = b"FROM busybox\nRUN echo hi\nRUN false\nCOPY a.txt /a.txt\n"

EXPECTED = """\
Dockerfile:3
--------------------
   1 |     FROM busybox
   2 |     RUN echo hi
   3 | >>> RUN false
   4 |     COPY a.txt /a.txt
   5 |{TRAILING}
--------------------
error: failed to solve: process "/bin/sh -c false" did not complete successfully: exit code: 1
""".replace("{TRAILING}", "     ")  # Go prints the empty last line as " %3d | %s %s"


def _solve_error() -> daemon_errors.SolveError:
    return daemon_errors.SolveError(
        'process "/bin/sh -c false" did not complete successfully: exit code: 1',
        vertex="sha256:" + "a" * 64,
        sources=[daemon_errors.SourceLocation("Dockerfile", DOCKERFILE, [(3, 0, 3, 0)])])


def test_source_detail_is_rendered_like_buildctl():
    err = from_status(daemon_errors.to_rpc_status(_solve_error()), context="failed to solve")
    assert err.vertex == "sha256:" + "a" * 64
    out = io.StringIO()
    print_error(err, out)
    assert out.getvalue() == EXPECTED


def test_snippet_of_a_multi_line_range_pads_two_lines():
    text = b"\n".join(f"line{i}".encode() for i in range(1, 11))
    snippet = SourceSnippet("Dockerfile", text, [(4, 5)])
    assert snippet.render() == (
        "Dockerfile:4\n--------------------\n"
        "   3 |     line3\n   4 | >>> line4\n   5 | >>> line5\n   6 |     line6\n"
        "--------------------\n")
    assert SourceSnippet("Dockerfile", text, [(40, 40)]).render() == ""
    assert SourceSnippet("Dockerfile", text, []).render() == ""


def test_codes_other_than_unknown_are_named_like_go():
    st = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="no such job")
    assert str(from_status(st, context="failed to solve")) == "failed to solve: NotFound: no such job"
    assert go_code_name(grpc.StatusCode.INVALID_ARGUMENT) == "InvalidArgument"
    assert go_code_name(grpc.StatusCode.OK) == "OK"


def test_undecodable_details_are_ignored():
    st = status_pb2.Status(code=2, message="boom")
    st.details.add(type_url="github.com/moby/buildkit/errdefs.Source+json", value=b"{not json")
    st.details.add(type_url="github.com/moby/buildkit/stack.Stack+json", value=b"{}")
    err = from_status(st)
    assert err.sources == [] and str(err) == "boom"


class _FailingControl(control_pb2_grpc.ControlServicer):
    async def Solve(self, request, context):
        await daemon_errors.abort_with(context, _solve_error())

    async def ListWorkers(self, request, context):
        await context.abort(grpc.StatusCode.UNAVAILABLE, "worker is starting")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_rich_status_survives_a_real_grpc_call(tmp_path):
    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServicer_to_server(_FailingControl(), server)
    sock = tmp_path / "d.sock"
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    try:
        async with Client.connect(f"unix://{sock}") as client:
            with pytest.raises(grpc.RpcError) as info:
                await client.control.Solve(control_pb2.SolveRequest(Ref="x"))
            err = from_rpc_error(info.value, context="failed to solve")
            out = io.StringIO()
            print_error(err, out)
            assert out.getvalue() == EXPECTED
            # the status can be handed on unchanged (e.g. in LLBBridge.Return{error})
            assert err.rpc_status().details[0].type_url.endswith("errdefs.Vertex+json")

            with pytest.raises(Exception) as plain:
                with anyio.fail_after(10):
                    await client.list_workers()
            assert str(plain.value) == "Unavailable: worker is starting"
    finally:
        await server.stop(None)
