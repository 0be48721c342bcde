"""SIGTERM while a build is running and its client goes away meanwhile: the daemon still exits,
cleanly, and its history is written before its databases close."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import BIN, start_daemon


@pytest.mark.parametrize("client_gone_after", [0.0, 1.0])
def test_sigterm_with_a_build_in_flight_whose_client_disconnects(tmp_path, client_gone_after):
    daemon = start_daemon(tmp_path / "d")
    sock = daemon.unix_addr.replace("unix://", "unix:")
    # A Solve with nothing to build waits for a gateway client that never comes.
    client = subprocess.Popen([sys.executable, "-c", f"""
import grpc
from buildkitpy.api import control_pb2, control_pb2_grpc
with grpc.insecure_channel({sock!r}) as ch:
    control_pb2_grpc.ControlStub(ch).Solve(control_pb2.SolveRequest(Ref='waiting'), timeout=60)
"""], stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(client_gone_after)
        client.kill()
        try:
            rc = daemon.proc.wait(30)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()
            raise AssertionError(f"still running 30 s after SIGTERM:\n{daemon.log_text()[-3000:]}") from None
    finally:
        client.kill()
        client.wait()
    assert rc == 0, daemon.log_text()[-3000:]
    assert "closed database" not in daemon.log_text()


def test_a_daemon_stopped_right_after_a_build_writes_its_trace_without_waiting_for_late_spans(tmp_path):
    """A finished build's trace waits up to TRACE_WAIT_SECONDS (3 s) for the client's late spans;
    at shutdown none can come, so the daemon writes it at once and exits (it took 3 s after every
    build). Restarted, the daemon has the record with its trace."""
    import grpc

    from buildkitpy.api import control_pb2, control_pb2_grpc

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    (ctx / "f").write_text("x\n")
    daemon = start_daemon(tmp_path / "d")
    daemon.client("build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}", "--local",
                  f"dockerfile={ctx}", "--output", f"type=local,dest={tmp_path / 'out'}")
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0, daemon.log_text()[-3000:]
    assert time.monotonic() - started < 2.0, "the daemon waited out the trace window"
    daemon = start_daemon(tmp_path / "d")
    try:
        with grpc.insecure_channel(daemon.unix_addr.replace("unix://", "unix:")) as ch:
            events = list(control_pb2_grpc.ControlStub(ch).ListenBuildHistory(
                control_pb2.BuildHistoryRequest(EarlyExit=True), timeout=30))
        (record,) = [e.record for e in events]
        assert record.trace.media_type == "application/vnd.buildkit.otlp.json.v0", record
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(30)


@pytest.mark.parametrize("bad", ["port taken", "path too long"])
def test_a_daemon_that_cannot_listen_exits_with_the_cause_and_leaves_nothing_behind(tmp_path, bad):
    """One of its addresses cannot be opened (a TCP port in use, a unix socket path over the
    kernel's 108 bytes): the daemon names it and exits without a traceback, the private directory
    of its internal socket (made when ``<root>/grpc.sock`` is too long a path) is gone, and the
    root is free for the next daemon at once."""
    state = tmp_path / ("r" * 110) / "state"  # <root>/grpc.sock is too long a path
    temp = tmp_path / "tmp"
    temp.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"tcp://127.0.0.1:{busy.getsockname()[1]}" if bad == "port taken" \
            else f"unix://{state.parent}/buildkitd.sock"
        started = time.monotonic()
        proc = subprocess.run([str(BIN / "buildkitpyd"), "--root", str(state), "--addr",
                               f"unix://{tmp_path}/d.sock", "--addr", address],
                              env={**os.environ, "TMPDIR": str(temp)}, capture_output=True, text=True,
                              timeout=60)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"buildkitpyd: cannot listen on {address}: " in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - started < 20
    assert list(temp.iterdir()) == []
    sock = tmp_path / "again.sock"
    again = subprocess.Popen([str(BIN / "buildkitpyd"), "--root", str(state), "--addr", f"unix://{sock}"],
                             env={**os.environ, "TMPDIR": str(temp)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and again.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), again.stderr.read() if again.poll() is not None else "no socket in 30 s"
    finally:
        again.send_signal(signal.SIGTERM)
        _, err = again.communicate(timeout=30)
    assert again.returncode == 0, err[-3000:]
    assert list(temp.iterdir()) == []
