"""Latency of a fully cached no-op build.

Starts a real buildkitpyd on a unix socket, solves a small LLB graph once (cold), then N more times
(fully cached), over real gRPC, and prints p50/p90/mean. Two paths are measured: a raw
``Control.Solve{Definition}`` (what any-language clients do) and the ``buildkitpy build`` CLI
(process start, session, client-side gateway calls, export of nothing), and the same client flow
in-process (without Python start-up).

    .venv/bin/python hack/bench/bench_noop_build.py [-n 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from conftest import start_daemon, stop_daemon  # noqa: E402

from buildkitpy import llb  # noqa: E402
from buildkitpy.api import control_pb2, control_pb2_grpc  # noqa: E402


def graph():
    st = llb.scratch()
    for i in range(5):
        st = st.file(llb.mkfile(f"/f{i}", 0o644, f"{i}".encode()))
    return st.marshal()


def report(name: str, samples: list[float]) -> None:
    s = sorted(samples)
    p = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    print(f"{name:38s} n={len(s):3d}  p50={p(0.5):7.1f} ms  p90={p(0.9):7.1f} ms  "
          f"mean={statistics.mean(s) * 1000:7.1f} ms")


async def raw_solves(addr: str, n: int) -> tuple[float, list[float]]:
    definition = graph()
    async with grpc.aio.insecure_channel(addr.replace("unix://", "unix:")) as ch:
        stub = control_pb2_grpc.ControlStub(ch)
        times = []
        for i in range(n + 1):
            t = time.perf_counter()
            await stub.Solve(control_pb2.SolveRequest(Ref=f"bench{i}{time.time_ns()}", Definition=definition))
            times.append(time.perf_counter() - t)
    return times[0], times[1:]


async def client_builds(addr: str, n: int) -> list[float]:
    """The full client-side gateway flow in-process (session, Status, Ping/Solve/Return)."""
    from buildkitpy.client.connection import Client
    from buildkitpy.client.solve import SolveOpt, build

    definition = graph()
    times = []
    async with Client.connect(addr) as client:
        for _ in range(n):
            t = time.perf_counter()
            await build(client, SolveOpt(), definition=definition)
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as tmp:
        daemon = start_daemon(Path(tmp) / "d")
        try:
            cold, warm = asyncio.run(raw_solves(daemon.unix_addr, args.n))
            print(f"{'raw Control.Solve, cold':38s} {cold * 1000:7.1f} ms")
            report("raw Control.Solve, fully cached", warm)
            in_process = asyncio.run(client_builds(daemon.unix_addr, args.n))
            report("client build (session+gateway), cached", in_process)
            data = graph().SerializeToString()
            cli = []
            for _ in range(max(5, args.n // 3)):
                t = time.perf_counter()
                subprocess.run([str(REPO / ".venv/bin/buildkitpy"), "--addr", daemon.unix_addr, "build",
                                "--progress", "plain"], input=data, check=True, capture_output=True)
                cli.append(time.perf_counter() - t)
            report("buildkitpy build CLI, fully cached", cli)
        finally:
            stop_daemon(daemon)


if __name__ == "__main__":
    main()
