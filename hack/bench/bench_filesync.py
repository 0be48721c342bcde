#!/usr/bin/env python3
"""Context-transfer throughput of FileSync.DiffCopy over a real unix-socket gRPC connection.

The build client's side (``FileSyncAttachable``, the sender) runs in a child process, as buildctl
would; this process is the daemon side (``receive_dir``). A context of ``--files`` files totalling
``--total-mb`` is generated once, then transferred into a fresh destination twice (the raw
protocol: the second, unchanged transfer re-fetches everything), then once more into the first copy
in sync mode with the metadata differ (nothing is fetched).

``--through-op`` measures the real ``local://`` source op instead: a solver on an overlay-snapshot
worker, the client's session (``ClientSession`` + ``FileSyncAttachable``) in the child process over
a real ``Control.Session``, and BuildKit-style reuse of the previous copy: a first transfer, an
unchanged second one, and a third after one file changed.

    .venv/bin/python hack/bench/bench_filesync.py [--files 10000] [--total-mb 200] [--through-op]
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

from buildkitpy import llb
from buildkitpy.api import control_pb2_grpc
from buildkitpy.progress import ProgressBus
from buildkitpy.session import filesync
from buildkitpy.session.client import ClientSession
from buildkitpy.session.manager import SessionManager
from buildkitpy.snapshot.manager import OverlaySnapshotManager
from buildkitpy.solver import Job, Solver
from buildkitpy.solver.cachekey import Selector
from buildkitpy.worker import Worker


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


async def measure(socket_path: str, dest: Path, disk_thread: bool, sync: bool) -> filesync.TransferStats:
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        if sync:
            return await filesync.receive_dir(channel, dest, dir_name="context", mode="sync",
                                              differ="metadata")
        return await filesync.receive_dir(channel, dest, dir_name="context", disk_thread=disk_thread)


class _SessionControl(control_pb2_grpc.ControlServicer):
    """Only ``Control.Session`` (what the local source needs from the daemon's API)."""

    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions

    async def Session(self, request_iterator, context):  # noqa: ANN001, ANN201, N802
        async for message in self.sessions.serve(request_iterator, context):
            yield message


async def client_session(socket_path: str, context: str) -> None:
    """Child process: the build client's session sharing ``context``; prints its id, runs until
    stdin closes."""
    async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
        session = ClientSession([filesync.FileSyncAttachable({"context": Path(context)})], shared_key="bench")
        async with session.run(control_pb2_grpc.ControlStub(channel)):
            print(session.session_id, flush=True)
            await anyio.to_thread.run_sync(sys.stdin.read)


async def through_op(work: Path, context: Path, files: int) -> None:
    """Three solves of a ``local://context`` source through the solver, reusing the previous copy."""
    sessions = SessionManager()
    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServicer_to_server(_SessionControl(sessions), server)
    sock = str(work / "daemon.sock")
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    snapshots = OverlaySnapshotManager(work / "worker")
    solver = Solver(Worker(id="bench", root=work / "worker", snapshots=snapshots, sessions=sessions))
    child = subprocess.Popen([sys.executable, __file__, "--client", sock, str(context)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        session_id = (await anyio.to_thread.run_sync(child.stdout.readline)).strip()
        print(f"snapshots: {snapshots.mode} mode")
        changed = next(p for p in sorted(context.rglob("*.dat")))
        steps = [("first transfer", None), ("unchanged second transfer", None),
                 ("one file changed", changed)]
        for label, touch in steps:
            if touch is not None:
                touch.write_bytes(touch.read_bytes()[::-1] + b"!")
            definition = llb.local("context", session_id=session_id).marshal()
            os.sync()
            started = time.perf_counter()
            result = await solver.solve(definition, Job(id=label, progress=ProgressBus(),
                                                        session_ids=[session_id]))
            seconds = time.perf_counter() - started
            try:
                own = result.ref.size()
                layers = len(result.ref.layers())
                started = time.perf_counter()
                await anyio.to_thread.run_sync(solver.checksums.snapshot_checksum, result.ref,
                                               [Selector("/")])
                checksum_seconds = time.perf_counter() - started
            finally:
                result.ref.release()
            print(f"{label}: {files} files in {seconds:.2f}s = {files / seconds:,.0f} files/s "
                  f"(snapshot's own layer {own / 1e6:.1f} MB, {layers} layer(s)); then the content "
                  f"checksum a following COPY needs: {checksum_seconds:.2f}s")
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait()
        solver.close()
        solver.worker.close()
        await server.stop(grace=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--total-mb", type=int, default=200)
    ap.add_argument("--workdir", type=Path, help="where to generate (default: a temporary directory)")
    ap.add_argument("--disk-thread", action="store_true", help="write files from a worker thread")
    ap.add_argument("--through-op", action="store_true",
                    help="through the local source op, reusing the previous copy (3 transfers)")
    ap.add_argument("--serve", nargs=2, metavar=("SOCKET", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs=2, metavar=("SOCKET", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        anyio.run(serve, *args.serve)
        return
    if args.client:
        anyio.run(client_session, *args.client)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-filesync-", dir=args.workdir))
    try:
        context = work / "context"
        t = time.perf_counter()
        total = generate_context(context, args.files, args.total_mb * 1024 * 1024)
        print(f"generated {args.files} files, {total / 1e6:.1f} MB in {time.perf_counter() - t:.1f}s")
        if args.through_op:
            anyio.run(through_op, work, context, args.files)
            return
        sock = str(work / "attachables.sock")
        child = subprocess.Popen([sys.executable, __file__, "--serve", sock, str(context)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            runs = [("first transfer (fresh dest)", "first", False),
                    ("unchanged second transfer (fresh dest)", "second", False),
                    ("unchanged transfer into the first copy (sync, metadata differ)", "first", True)]
            for label, dest_name, sync in runs:
                dest = work / f"dest-{dest_name}"
                os.sync()
                if os.environ.get("BENCH_PROFILE"):
                    import cProfile
                    import pstats
                    prof = cProfile.Profile()
                    stats = prof.runcall(anyio.run, measure, sock, dest, args.disk_thread, sync)
                    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                else:
                    stats = anyio.run(measure, sock, dest, args.disk_thread, sync)
                print(f"{label}: {stats.entries} entries, {stats.files} files, {stats.bytes / 1e6:.1f} MB "
                      f"in {stats.seconds:.2f}s = {stats.entries / stats.seconds:,.0f} entries/s, "
                      f"{stats.bytes / 1e6 / stats.seconds:,.1f} MB/s ({stats.kept} kept)")
                if dest_name == "second":
                    shutil.rmtree(dest)
        finally:
            child.terminate()
            child.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
