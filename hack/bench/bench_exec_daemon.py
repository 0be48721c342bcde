#!/usr/bin/env python3
"""Exec start latency through the daemon (needs root, runc, busybox-static).

    .venv/bin/python hack/bench/bench_exec_daemon.py [-n 10]

Starts a real buildkitpyd, caches a busybox base (a local rootfs copied into a content-keyed
snapshot), then builds ``RUN true`` on it with ``ignore_cache`` N times with the in-process client
(session, gateway, Status) and N times with the ``buildkitpy`` CLI. Prints p50/p90 of the exec
vertex's own started→completed time (snapshot prep, runc run, commit) and of the whole build.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import ArgumentParser
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from buildkitpy import llb  # noqa: E402
from tests.conftest import start_daemon, stop_daemon  # noqa: E402
from tests.executor.conftest import build_busybox_rootfs  # noqa: E402


def report(name: str, samples: list[float]) -> None:
    s = sorted(samples)
    p = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    print(f"{name:46s} n={len(s):3d}  p50={p(0.5):7.1f} ms  p90={p(0.9):7.1f} ms  "
          f"mean={statistics.mean(s) * 1000:7.1f} ms")


def graph() -> llb.State:
    base = llb.scratch().file(llb.copy(llb.local("rootfs"), "/", "/", copy_dir_contents=True))
    return base.run(["/bin/true"], ignore_cache=True, custom_name="RUN true").root()


def _ts(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


async def in_process(addr: str, rootfs: Path, n: int) -> tuple[list[float], list[float]]:
    from buildkitpy.client.connection import Client
    from buildkitpy.client.solve import SolveOpt, build

    definition = graph().marshal()
    vertex_times, build_times = [], []
    async with Client.connect(addr) as client:
        for i in range(n + 1):  # the first build caches the base
            seen: dict[str, float] = {}

            def on_status(msg, seen=seen) -> None:
                for v in msg.vertexes:
                    if v.name == "RUN true" and v.HasField("completed") and v.HasField("started"):
                        seen["exec"] = _ts(v.completed) - _ts(v.started)

            t = time.perf_counter()
            await build(client, SolveOpt(local_dirs={"rootfs": rootfs}), definition=definition,
                        on_status=on_status)
            if i:
                build_times.append(time.perf_counter() - t)
                vertex_times.append(seen["exec"])
    return vertex_times, build_times


def cli(addr: str, rootfs: Path, n: int) -> tuple[list[float], list[float]]:
    import json

    data = graph().marshal().SerializeToString()
    vertex_times, build_times = [], []
    for _ in range(n):
        t = time.perf_counter()
        res = subprocess.run([str(REPO / ".venv/bin/buildkitpy"), "--addr", addr, "build", "--progress",
                              "rawjson", "--local", f"rootfs={rootfs}"], input=data, check=True,
                             capture_output=True)
        build_times.append(time.perf_counter() - t)
        for line in res.stderr.decode().splitlines():
            if not line.startswith("{"):
                continue
            for v in json.loads(line).get("vertexes") or []:
                if v.get("name") == "RUN true" and v.get("completed") and v.get("started"):
                    vertex_times.append(_iso(v["completed"]) - _iso(v["started"]))
    return vertex_times, build_times


def _iso(value: str) -> float:
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def main() -> None:
    ap = ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-exec-daemon-") as tmp:
        rootfs = build_busybox_rootfs(Path(tmp) / "rootfs")
        daemon = start_daemon(Path(tmp) / "d")
        try:
            vertex, whole = asyncio.run(in_process(daemon.unix_addr, rootfs, args.n))
            report("RUN true vertex (in-process client)", vertex)
            report("whole build, cached base (in-process client)", whole)
            vertex, whole = cli(daemon.unix_addr, rootfs, args.n)
            report("RUN true vertex (buildkitpy CLI)", vertex)
            report("whole build, cached base (buildkitpy CLI)", whole)
        finally:
            stop_daemon(daemon)


if __name__ == "__main__":
    main()
