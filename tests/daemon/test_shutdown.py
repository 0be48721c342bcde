"""SIGTERM while a build is running and its client goes away meanwhile: the daemon still exits,
cleanly, and its history is written before its databases close."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import start_daemon


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
