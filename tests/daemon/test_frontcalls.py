"""Calls the front server answers with the servicers' own handlers (buildkitpy.daemon.frontcalls):
answered without the grpc.aio server, with the same results, statuses and trailers as it gives."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from buildkitpy.api import control_pb2, control_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from buildkitpy.daemon.front import FrontServer
from buildkitpy.daemon.frontcalls import MethodTable
from buildkitpy.session.manager import SessionManager
from tests.daemon.test_front import channel, health_traffic

BIG_MESSAGE = b"x" * (256 << 10)


async def _big(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(64):  # 16 MiB: four times the stream window
        yield BIG_MESSAGE


async def _count(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return str(len([r async for r in requests])).encode()


async def _abort(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not like this: 100% ünïcode",
                        trailing_metadata=(("why-bin", b"\x00\xff"), ("hint", "retry later")))
    return b""


async def _crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("a bug")


async def _huge(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"x" * (16 << 20 | 1)  # one byte over gRPC's message limit


@contextlib.asynccontextmanager
async def front_with_methods(short_dir: str) -> AsyncIterator[tuple[FrontServer, str]]:
    """The front server in this process in front of a real grpc.aio server, the health service and
    ``t.T`` registered through a MethodTable (as the daemon registers its services)."""
    backend = grpc.aio.server()
    methods = MethodTable()
    registering = methods.recording(backend)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), registering)
    handlers = {"Big": grpc.unary_stream_rpc_method_handler(_big),
                "Count": grpc.stream_unary_rpc_method_handler(_count),
                "Abort": grpc.unary_unary_rpc_method_handler(_abort),
                "Crash": grpc.unary_unary_rpc_method_handler(_crash),
                "Huge": grpc.unary_unary_rpc_method_handler(_huge)}
    registering.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", handlers)])
    registering.add_registered_method_handlers("t.T", handlers)
    backend.add_insecure_port(f"unix:{short_dir}/grpc.sock")
    await backend.start()
    front = FrontServer(SessionManager(), f"{short_dir}/grpc.sock", methods)
    await front.listen_unix(f"{short_dir}/front.sock")
    try:
        yield front, f"unix:{short_dir}/front.sock"
    finally:
        await front.close()
        await backend.stop(0)


@pytest.mark.anyio
async def test_unary_and_server_streaming_calls_are_answered_by_the_front(short_dir, caplog):
    async with front_with_methods(short_dir) as (front, addr), grpc.aio.insecure_channel(addr) as ch:
        await health_traffic(health_pb2_grpc.HealthStub(ch), checks=200, watches=50)
        # 16 MiB of answers through the client's windows, in order
        big = ch.unary_stream("/t.T/Big")(b"", timeout=30)
        assert [m async for m in big] == [BIG_MESSAGE] * 64
        # an abort's status, message and trailing metadata reach the client as they were given
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/t.T/Abort")(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == "not like this: 100% ünïcode"
        assert list(err.value.trailing_metadata()) == [("why-bin", b"\x00\xff"), ("hint", "retry later")]
        # an unexpected exception: UNKNOWN for the client, its traceback in the log
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/t.T/Crash")(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert "a bug" in err.value.details()
        assert any(r.exc_info and "/t.T/Crash" in r.getMessage() for r in caplog.records)
        # an answer over the limit: gRPC's own status for it, not a bug (nothing logged)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/t.T/Huge")(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == "grpc: trying to send message larger than max (16777217 vs. 16777216)"
        assert not any("/t.T/Huge" in r.getMessage() for r in caplog.records)
        (conn,) = front.connections
        assert conn.link is None  # nothing went to the grpc.aio server
        for _ in range(100):  # the cancellations' RST_STREAMs may still be on their way
            if not (conn.routes or conn.peer.streams):
                break
            await asyncio.sleep(0.02)
        assert (len(conn.routes), len(conn.peer.streams)) == (0, 0)
        # a method that streams its requests is relayed
        count = ch.stream_unary("/t.T/Count")
        assert await count(iter([b"a", b"b", b"c"]), timeout=30) == b"3"
        assert conn.link is not None


def _outcome(call) -> tuple:  # noqa: ANN001
    """What a client sees of a finished call: code, message, trailing metadata, answer."""
    try:
        answer = call()
    except grpc.RpcError as err:
        trailers = sorted((k, v) for k, v in err.trailing_metadata() or () if k != "grpc-status-details-bin")
        details_bin = [v for k, v in err.trailing_metadata() or () if k == "grpc-status-details-bin"]
        return err.code(), err.details(), trailers, details_bin, None
    return grpc.StatusCode.OK, "", [], [], answer.SerializeToString(deterministic=True)


def test_the_daemons_calls_end_as_grpc_aio_ends_them(daemon):
    """Each call twice: as it is (answered by the front) and with a gzip-compressed request (which
    the front relays to the grpc.aio server): the same outcome both ways."""
    with channel(daemon) as ch:
        control = control_pb2_grpc.ControlStub(ch)
        bridge = gateway_pb2_grpc.LLBBridgeStub(ch)
        checks = health_pb2_grpc.HealthStub(ch)
        calls = {
            "ListWorkers": lambda **kw: control.ListWorkers(control_pb2.ListWorkersRequest(), **kw),
            "Info": lambda **kw: control.Info(control_pb2.InfoRequest(), timeout=30, **kw),
            "Status past its deadline": lambda **kw: list(
                control.Status(control_pb2.StatusRequest(Ref="frontcalls-no-such"), timeout=0.5, **kw)),
            "Solve of a broken definition": lambda **kw: control.Solve(control_pb2.SolveRequest(
                Ref="frontcalls-broken", Definition={"def": [b"\xff not llb"]}), timeout=30, **kw),
            "Ping without a build": lambda **kw: bridge.Ping(gateway_pb2.PingRequest(), timeout=30, **kw),
            "Ping of no build": lambda **kw: bridge.Ping(
                gateway_pb2.PingRequest(), metadata=(("buildkit-frontend-build-id", "frontcalls-none"),),
                timeout=30, **kw),
            "health": lambda **kw: checks.Check(health_pb2.HealthCheckRequest(), timeout=30, **kw),
        }
        for name, call in calls.items():
            native = _outcome(call)
            relayed = _outcome(lambda call=call: call(compression=grpc.Compression.Gzip))
            if name == "Status past its deadline":  # (not the same text: the client's own)
                assert native[0] == relayed[0] == grpc.StatusCode.DEADLINE_EXCEEDED
                continue
            assert native == relayed, name
        assert _outcome(calls["Solve of a broken definition"])[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert _outcome(calls["Ping of no build"])[3]  # the rich status rides along


def test_a_call_under_way_when_the_daemon_stops_ends_with_a_status(fresh_daemon):
    """SIGTERM: a call the front serves, still waiting (Status of a build that never comes), gets
    UNAVAILABLE after the grace period, and the daemon exits 0."""
    outcome: list[grpc.RpcError] = []
    started = threading.Event()

    def wait_for_status() -> None:
        with channel(fresh_daemon) as ch:
            call = control_pb2_grpc.ControlStub(ch).Status(control_pb2.StatusRequest(Ref="frontcalls-stop"),
                                                            timeout=60)
            started.set()
            try:
                list(call)
            except grpc.RpcError as err:
                outcome.append(err)

    waiter = threading.Thread(target=wait_for_status)
    waiter.start()
    started.wait(30)
    with channel(fresh_daemon) as ch:  # the call has reached the daemon once another one is answered
        control_pb2_grpc.ControlStub(ch).ListWorkers(control_pb2.ListWorkersRequest(), timeout=30)
    fresh_daemon.proc.send_signal(signal.SIGTERM)
    waiter.join(60)
    assert fresh_daemon.proc.wait(30) == 0
    (err,) = outcome
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert err.details() == "the daemon is shutting down"
