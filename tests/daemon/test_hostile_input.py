"""One hostile request never stalls the others: an oversized Dockerfile is refused at once with a
clear error, and converting a large (accepted) one runs off the daemon's event loop, so other
clients' calls stay quick meanwhile."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc

from buildkitpy.api import control_pb2, control_pb2_grpc
from buildkitpy.frontend.dockerfile.convert_thread import MAX_DOCKERFILE_BYTES
from tests.conftest import BIN, Daemon

LINE = b"  abc \\\n"


def _hostile(ctx: Path, size: int) -> Path:
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_bytes(b"FROM scratch\nRUN a \\\n" + LINE * (size // len(LINE)) + b"  end\n")
    return ctx


def _build(daemon: Daemon, ctx: Path) -> subprocess.Popen:
    """The build in the background; its output (the huge step name, several times) goes to a file,
    a pipe nobody reads meanwhile would block the client."""
    log = open(ctx.parent / f"{ctx.name}.log", "w+b")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([str(BIN / "buildkitpy"), "--addr", daemon.unix_addr, "build", "--frontend",
                             "dockerfile.v0", "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
                             "--progress", "plain"], stdout=subprocess.DEVNULL, stderr=log)


def _stderr(proc: subprocess.Popen, ctx: Path) -> str:
    proc.wait(120)
    return (ctx.parent / f"{ctx.name}.log").read_text(errors="replace")


def test_an_oversized_dockerfile_is_refused_with_a_clear_error(daemon, tmp_path):
    ctx = _hostile(tmp_path / "big", MAX_DOCKERFILE_BYTES + 4096)
    started = time.monotonic()
    proc = _build(daemon, ctx)
    err = _stderr(proc, ctx)
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: failed to solve: "), last
    assert last.endswith("Dockerfile is 2.0 MiB, more than the 2 MiB this daemon accepts "
                         "for a Dockerfile"), last
    print(f"refused after {time.monotonic() - started:.1f}s")


def test_other_clients_stay_quick_while_a_large_dockerfile_converts(daemon, tmp_path):
    stub = control_pb2_grpc.ControlStub(grpc.insecure_channel(daemon.unix_addr.replace("unix://", "unix:")))
    stub.ListWorkers(control_pb2.ListWorkersRequest(), timeout=30)
    ctx = _hostile(tmp_path / "large", 512 << 10)
    proc = _build(daemon, ctx)
    started = time.monotonic()
    latencies = []
    while proc.poll() is None:
        t = time.monotonic()
        stub.ListWorkers(control_pb2.ListWorkersRequest(), timeout=120)
        latencies.append(time.monotonic() - t)
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    err = _stderr(proc, ctx)
    # converted, then the RUN fails (scratch has no shell): the conversion itself went through
    assert 'exec: "/bin/sh": stat /bin/sh: no such file or directory' in err, err[-2000:]
    worst = max(latencies)
    print(f"conversion build took {elapsed:.1f}s; ListWorkers: {len(latencies)} calls, "
          f"worst {worst * 1000:.0f} ms")
    assert elapsed > 1.0, "the Dockerfile is too small to show anything"
    # With the conversion on the event loop, one call waited for (nearly) all of it.
    assert worst < elapsed / 3, f"a call waited {worst:.1f}s of a {elapsed:.1f}s conversion"
