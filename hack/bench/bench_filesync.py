#!/usr/bin/env python3
"""Context-transfer throughput of FileSync.DiffCopy over a real unix-socket gRPC connection.

The build client's side (``FileSyncAttachable``, the sender) runs in a child process, as buildctl
would; this process is the daemon side (``receive_dir``). A context of ``--files`` files totalling
``--total-mb`` is generated once, then transferred into a fresh destination twice (the second time
unchanged: our receiver has no incremental mode yet, so it re-fetches everything).

    .venv/bin/python hack/bench/bench_filesync.py [--files 10000] [--total-mb 200]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import grpc

from buildkitpy.session import filesync


def generate_context(root: Path, files: int, total_bytes: int, seed: int = 1) -> int:
    """``files`` files in 100-file directories: 1% big ones carry 80% of the bytes."""
    rng = random.Random(seed)
    big = max(1, files // 100)
    big_size = int(total_bytes * 0.8) // big
    small_size = (total_bytes - big * big_size) // max(1, files - big)
    blob = rng.randbytes(big_size + small_size * 2)
    written = 0
    for i in range(files):
        d = root / f"dir{i // 100:04d}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        if i % 100 == 99 and i // 100 < big:
            size = big_size
        else:
            size = rng.randint(small_size // 2, small_size * 3 // 2)
        start = rng.randint(0, len(blob) - size)
        (d / f"file{i:06d}.dat").write_bytes(blob[start:start + size])
        written += size
    return written


async def serve(socket_path: str, context: str) -> None:
    server = grpc.aio.server()
    filesync.FileSyncAttachable({"context": Path(context)}).add_to_server(server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def measure(socket_path: str, dest: Path, disk_thread: bool) -> filesync.TransferStats:
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        return await filesync.receive_dir(channel, dest, dir_name="context", disk_thread=disk_thread)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--total-mb", type=int, default=200)
    ap.add_argument("--workdir", type=Path, help="where to generate (default: a temporary directory)")
    ap.add_argument("--disk-thread", action="store_true", help="write files from a worker thread")
    ap.add_argument("--serve", nargs=2, metavar=("SOCKET", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        anyio.run(serve, *args.serve)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-filesync-", dir=args.workdir))
    try:
        context = work / "context"
        t = time.perf_counter()
        total = generate_context(context, args.files, args.total_mb * 1024 * 1024)
        print(f"generated {args.files} files, {total / 1e6:.1f} MB in {time.perf_counter() - t:.1f}s")
        sock = str(work / "attachables.sock")
        child = subprocess.Popen([sys.executable, __file__, "--serve", sock, str(context)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            for label in ("first transfer (fresh dest)", "unchanged second transfer"):
                dest = work / f"dest-{label.split()[0]}"
                os.sync()
                if os.environ.get("BENCH_PROFILE"):
                    import cProfile
                    import pstats
                    prof = cProfile.Profile()
                    stats = prof.runcall(anyio.run, measure, sock, dest, args.disk_thread)
                    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                else:
                    stats = anyio.run(measure, sock, dest, args.disk_thread)
                print(f"{label}: {stats.entries} entries, {stats.files} files, {stats.bytes / 1e6:.1f} MB "
                      f"in {stats.seconds:.2f}s = {stats.files / stats.seconds:,.0f} files/s, "
                      f"{stats.bytes / 1e6 / stats.seconds:,.1f} MB/s")
                shutil.rmtree(dest)
        finally:
            child.terminate()
            child.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
