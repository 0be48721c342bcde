#!/usr/bin/env python3
"""Latency of other clients' calls while one client sends a hostile Dockerfile.

Sends a Dockerfile of SIZE MiB of continuation lines to the daemon at ADDR (dockerfile.v0) and,
until that build ends, times ``ListWorkers`` (what ``buildctl debug workers`` calls) every 50 ms
from a separate connection. Prints the latencies and how the hostile build ended.

    hack/bench/hostile_latency.py --addr unix:///tmp/bk.sock --size-mb 1
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from buildkitpy.api import control_pb2, control_pb2_grpc


def hostile_dockerfile(size: int) -> bytes:
    line = b"  abc \\\n"
    return b"FROM scratch\nRUN a \\\n" + line * (size // len(line)) + b"  end\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", required=True)
    p.add_argument("--size-mb", type=float, default=1.0)
    p.add_argument("--client", default=str(Path(sys.executable).parent / "buildkitpy"),
                   help="buildctl-compatible client for the hostile build")
    args = p.parse_args()
    target = args.addr.replace("unix://", "unix:", 1) if args.addr.startswith("unix://") else \
        args.addr.removeprefix("tcp://")
    stub = control_pb2_grpc.ControlStub(grpc.insecure_channel(target))
    stub.ListWorkers(control_pb2.ListWorkersRequest(), timeout=30)  # connect first
    with tempfile.TemporaryDirectory() as ctx, tempfile.TemporaryFile() as log:
        Path(ctx, "Dockerfile").write_bytes(hostile_dockerfile(int(args.size_mb * (1 << 20))))
        started = time.monotonic()
        hostile = subprocess.Popen([args.client, "--addr", args.addr, "build", "--frontend", "dockerfile.v0",
                                    "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
                                    "--progress", "plain"],
                                   stdout=subprocess.DEVNULL, stderr=log)
        latencies = []
        while hostile.poll() is None:
            t = time.monotonic()
            stub.ListWorkers(control_pb2.ListWorkersRequest(), timeout=120)
            latencies.append(time.monotonic() - t)
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        log.seek(0)
        last = (log.read().decode(errors="replace").strip().splitlines() or [""])[-1]
    latencies.sort()
    print(f"hostile {args.size_mb} MiB Dockerfile: ended after {elapsed:.1f}s (exit {hostile.returncode}): "
          f"{last[:200]}")
    if latencies:
        median = statistics.median(latencies) * 1000
        print(f"ListWorkers during it: {len(latencies)} calls, median {median:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
