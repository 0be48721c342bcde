"""The daemon's front server on its real socket: Control.Session served by it, the other calls
answered by it (test_frontcalls) or relayed to the grpc.aio server behind it, and clients that break
HTTP/2 or gRPC told why without harm to the daemon or to other clients."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from buildkitpy.api import control_pb2, control_pb2_grpc, ops_pb2
from buildkitpy.daemon.front import FrontServer
from buildkitpy.daemon.h2peer import H2Peer
from buildkitpy.session.h2 import DATA, PREFACE, PROTOCOL_ERROR, SETTINGS, frame
from buildkitpy.session.manager import SessionManager
from tests.conftest import BIN, Daemon
from tests.daemon.test_h2peer import Recorder, goaway_of

SESSION_ID = "x-docker-expose-session-uuid"


def channel(daemon: Daemon, **kwargs) -> grpc.Channel:
    return grpc.insecure_channel(daemon.unix_addr.replace("unix://", "unix:"), **kwargs)


def raw_exchange(daemon: Daemon, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the daemon closes it."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(daemon.unix_addr.removeprefix("unix://"))
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def list_workers(ch: grpc.Channel) -> control_pb2.ListWorkersResponse:
    return control_pb2_grpc.ControlStub(ch).ListWorkers(control_pb2.ListWorkersRequest(), timeout=30)


def assert_serving(daemon: Daemon) -> None:
    with channel(daemon) as ch:
        assert list_workers(ch).record


@pytest.mark.parametrize("garbage, why", [
    (b"GET /v1.45/version HTTP/1.1\r\nHost: docker\r\n\r\n", b"client preface"),
    (PREFACE + frame(SETTINGS, 0, 0) + frame(DATA, 0, 0, b"x"), b"DATA on stream 0"),
    (PREFACE + frame(SETTINGS, 0, 0) + frame(DATA, 0, 1, b"x" * 20_000), b"maximum frame size"),
])
def test_a_client_that_breaks_http2_is_told_why_and_others_are_served(daemon, garbage, why):
    code, debug = goaway_of(raw_exchange(daemon, garbage))
    assert why in debug, debug
    assert code in (PROTOCOL_ERROR, 6)  # 6: FRAME_SIZE_ERROR
    assert_serving(daemon)
    assert daemon.alive()


def test_a_session_without_its_id_fails_with_invalid_argument(daemon):
    with channel(daemon) as ch:
        call = control_pb2_grpc.ControlStub(ch).Session(iter(()), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert SESSION_ID in err.value.details()


def test_a_compressed_session_message_fails_the_call_not_the_connection(daemon):
    with channel(daemon, compression=grpc.Compression.Gzip) as ch:
        call = control_pb2_grpc.ControlStub(ch).Session(
            iter([control_pb2.BytesMessage(data=b"x" * 100)]), metadata=((SESSION_ID, "gzip-session"),),
            timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "compressed" in err.value.details()
        # The same connection goes on serving.
        assert list_workers(ch).record


def test_a_second_session_with_a_live_sessions_id_is_refused(daemon):
    release = threading.Event()

    def idle():
        release.wait(30)
        return
        yield  # a request iterator that sends nothing until released

    with channel(daemon) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        first = stub.Session(idle(), metadata=((SESSION_ID, "twice"),), timeout=60)
        assert first.initial_metadata() is not None  # the daemon accepted it (headers came)
        second = stub.Session(iter(()), metadata=((SESSION_ID, "twice"),), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            list(second)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        release.set()
        first.cancel()


def test_calls_through_the_front_keep_their_semantics(daemon):
    options = [("grpc.max_send_message_length", 32 << 20)]
    with channel(daemon, options=options) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        # A 12 MiB request: three times the stream window, credited as it arrives; the service's
        # own error comes back.
        definition = ops_pb2.Definition(**{"def": [b"x" * (12 << 20)]})
        with pytest.raises(grpc.RpcError) as err:
            stub.Solve(control_pb2.SolveRequest(Ref="front-big", Definition=definition), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        # The client's deadline reaches the service.
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Status(control_pb2.StatusRequest(Ref="front-no-such-build"), timeout=1))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Many calls at once on one connection.
        futures = [stub.ListWorkers.future(control_pb2.ListWorkersRequest(), timeout=60) for _ in range(300)]
        assert all(f.result().record for f in futures)


def test_a_root_too_long_for_a_unix_socket_still_serves(tmp_path, short_dir):
    """The grpc.aio server's private socket goes elsewhere when ``<root>/grpc.sock`` would not fit
    in a unix socket address (108 bytes)."""
    root = tmp_path / ("r" * 60) / ("o" * 60)
    sock = Path(short_dir) / "d.sock"
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "buildkitpyd"), "--root", str(root), "--addr", f"unix://{sock}"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            assert list_workers(ch).record, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert not (root / "grpc.sock").exists()


BIG_MESSAGE = b"x" * (256 << 10)


async def _big(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(64):  # 16 MiB: four times the stream window on each hop
        yield BIG_MESSAGE


@contextlib.asynccontextmanager
async def front_before_health(short_dir: str) -> AsyncIterator[tuple[FrontServer, str, grpc.aio.Server]]:
    """The front server in this process (its route maps can be looked at) in front of a real
    grpc.aio server that serves gRPC's health service and ``/t.T/Big`` (64 messages of 256 KiB);
    yields the front, its socket's address and the grpc.aio server."""
    backend = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), backend)
    backend.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "t.T", {"Big": grpc.unary_stream_rpc_method_handler(_big)})])
    backend.add_insecure_port(f"unix:{short_dir}/grpc.sock")
    await backend.start()
    front = FrontServer(SessionManager(), f"{short_dir}/grpc.sock")
    await front.listen_unix(f"{short_dir}/front.sock")
    try:
        yield front, f"unix:{short_dir}/front.sock", backend
    finally:
        await front.close()
        await backend.stop(0)


async def health_traffic(stub: health_pb2_grpc.HealthStub, checks: int, watches: int) -> None:
    """Health checks (SERVING, and NOT_FOUND for an unknown service), then server-streaming calls
    the client cancels, or that run out of time."""
    for _ in range(checks):
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)).status == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(health_pb2.HealthCheckRequest(service="no-such"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(watches):
        call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert (await call.read()).status == 1
        call.cancel()
        late = stub.Watch(health_pb2.HealthCheckRequest(), timeout=0.05)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while True:
                await late.read()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.anyio
async def test_a_long_lived_connection_keeps_nothing_of_the_calls_that_are_over(short_dir):
    async with front_before_health(short_dir) as (front, addr, _), grpc.aio.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        await health_traffic(stub, checks=300, watches=100)
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=30)).status == 1
        (conn,) = front.connections
        for _ in range(100):  # the cancellations' RST_STREAMs may still be on their way
            if not (conn.routes or conn.peer.streams or conn.link.relays or conn.link.peer.streams):
                break
            await asyncio.sleep(0.02)
        assert (len(conn.routes), len(conn.peer.streams)) == (0, 0)
        assert (len(conn.link.relays), len(conn.link.peer.streams)) == (0, 0)


@pytest.mark.anyio
async def test_a_call_on_a_link_the_server_said_goaway_on_goes_on_after_a_new_call(short_dir):
    """The grpc.aio server stopping with a grace period says GOAWAY and lets calls under way
    finish; a new call meanwhile goes to a new link (and fails: nothing listens). The call under
    way must still get the window credits its client gives it, on the old link."""
    async with front_before_health(short_dir) as (_, addr, backend), grpc.aio.insecure_channel(addr) as ch:
        call = ch.unary_stream("/t.T/Big")(b"", timeout=30)
        assert await call.read() == BIG_MESSAGE
        stopping = asyncio.create_task(backend.stop(20))
        await asyncio.sleep(0.3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        received = 1
        async with asyncio.timeout(10):  # (before: stuck after ~35 messages until the grace ran out)
            while (await call.read()) is not grpc.aio.EOF:
                received += 1
        assert received == 64 and await call.code() == grpc.StatusCode.OK
        await stopping


def test_an_answer_waiting_for_the_clients_window_outlives_the_servers_reset_after_it(daemon):
    """A gRPC server that ends a call before the client half-closed sends RST_STREAM(NO_ERROR)
    after its trailers (RFC 9113 8.1: stop sending, the answer is complete). The answer still
    queued for the client's window must reach it all the same, then the reset."""
    rec = Recorder()
    client = H2Peer(rec, client=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(0.1)
        s.connect(daemon.unix_addr.removeprefix("unix://"))
        s.sendall(client.data_to_send() + frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 0)))  # windows: 0
        sid = client.open_stream()
        client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b"te", b"trailers"),
                                  (b":path", b"/grpc.health.v1.Health/Check"), (b":authority", b"x"),
                                  (b"content-type", b"application/grpc")])
        client.send_data(sid, b"\0\0\0\0\0")  # one empty HealthCheckRequest, and no half-close

        def exchange(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                s.sendall(client.data_to_send())
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    continue
                assert data, "the daemon closed the connection"
                client.receive(data)

        exchange(1.5)  # the answer's headers come; its message and trailers wait for the window
        assert [e[0] for e in rec.events] == ["headers"], rec.events
        s.sendall(frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 65535)))
        exchange(1.0)
    assert rec.events[1] == ("headers", sid, {b"grpc-status": b"0", b"grpc-message": b""}, True), rec.events
    assert bytes(rec.data[sid]) == b"\0\0\0\0\x02\x08\x01"  # status: SERVING
    assert rec.events[2:] == [("reset", sid, 0)]  # then the server's NO_ERROR: stop sending


def test_a_session_open_when_the_daemon_stops_ends_with_a_status(fresh_daemon):
    """SIGTERM: the daemon exits 0, and a session still open gets UNAVAILABLE and why, not a
    connection that just closes (as grpc.aio ended such calls before the front server)."""
    release = threading.Event()

    def idle():
        release.wait(30)
        return
        yield

    with channel(fresh_daemon) as ch:
        call = control_pb2_grpc.ControlStub(ch).Session(idle(), metadata=((SESSION_ID, "stopping"),),
                                                         timeout=60)
        assert call.initial_metadata() is not None
        fresh_daemon.proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        release.set()
    assert fresh_daemon.proc.wait(30) == 0
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "the daemon is shutting down"


@pytest.mark.anyio
async def test_a_session_that_does_not_read_its_answers_gets_no_credit_until_it_does():
    """The front's session inbox pushes each socket read into the session's pipe and credits the
    client's stream for it; while the pipe's answers wait for a client that does not read them,
    the reads wait too, uncredited, and go on in order once it reads."""
    from buildkitpy.daemon.front import _Inbox
    from buildkitpy.session import h2
    from buildkitpy.session.pipechannel import channel_over_pipe
    from tests.session.test_pipechannel import _Sink

    credited: list[int] = []
    inbox = _Inbox(credited.append)
    sink = _Sink()
    inbox.put(h2.frame(h2.SETTINGS, 0, 0), 100)  # before the pipe runs: kept, credited when taken
    async with channel_over_pipe(inbox, sink) as (_channel, pipe):
        for _ in range(100):
            await asyncio.sleep(0.01)
            if credited:
                break
        assert credited == [100]
        sink.room = anyio.Event()  # the client stops reading
        sent = 0
        while len(credited) == sent + 1:
            inbox.put(h2.frame(h2.PING, 0, 0, sent.to_bytes(8, "big")), 17)
            sent += 1
            assert sent < 100_000, "the inbox kept crediting a client that reads nothing"
        held = 5
        for i in range(sent, sent + held):  # the client's data in flight: queued, not credited
            inbox.put(h2.frame(h2.PING, 0, 0, i.to_bytes(8, "big")), 17)
        await asyncio.sleep(0.05)
        assert len(credited) == sent  # the last pushed and the held ones wait for the drain
        sink.room.set()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(credited) == sent + held + 1:
                break
        assert credited == [100] + [17] * (sent + held)
        acks = [int.from_bytes(f[3], "big") for f in sink.frames() if f[0] == h2.PING]
        assert acks == list(range(sent + held))
        inbox.close()
        with anyio.fail_after(5):
            await pipe.closed.wait()
        assert pipe.error is None
