"""``buildkitpy dial-stdio`` carries a real gRPC connection to the daemon over its stdio, as buildx's
docker-container and kubernetes drivers use ``buildctl dial-stdio``: a listener hands each accepted
connection to a dial-stdio process as its stdin and stdout."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import grpc

from buildkitpy.api import control_pb2, control_pb2_grpc
from tests.conftest import BIN


def test_grpc_through_dial_stdio(daemon, tmp_path: Path) -> None:  # noqa: ANN001
    listener = socket.socket(socket.AF_UNIX)
    path = tmp_path / "proxy.sock"
    listener.bind(str(path))
    listener.listen()
    procs: list[subprocess.Popen] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            procs.append(subprocess.Popen([str(BIN / "buildkitpy"), "--addr", daemon.unix_addr, "dial-stdio"],
                                          stdin=conn.fileno(), stdout=conn.fileno()))

    threading.Thread(target=serve, daemon=True).start()
    with grpc.insecure_channel(f"unix:{path}") as ch:
        res = control_pb2_grpc.ControlStub(ch).ListWorkers(control_pb2.ListWorkersRequest(), timeout=30)
    assert len(res.record) == 1 and res.record[0].platforms
    listener.close()
    assert procs and procs[0].wait(10) == 0  # the client hung up: dial-stdio ends cleanly


def test_dial_stdio_refuses_tcp_and_missing_sockets(tmp_path: Path) -> None:
    res = subprocess.run([str(BIN / "buildkitpy"), "--addr", "tcp://127.0.0.1:1", "dial-stdio"],
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert res.returncode != 0 and b"expected unix://" in res.stderr
    res = subprocess.run([str(BIN / "buildkitpy"), "--addr", f"unix://{tmp_path}/none.sock", "dial-stdio"],
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    assert res.returncode != 0 and b"none.sock" in res.stderr and b"Traceback" not in res.stderr
