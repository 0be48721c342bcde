"""The speed rows of the Speed issue, two daemons side by side, with any buildctl-compatible client.

Both daemons must resolve ``busybox`` (give each a ``docker.io`` mirror; ``--registry`` starts the
shared conformance corpus's loopback registry and prints the toml to use). Each row is prepared
once per daemon (not timed), then timed ``-n`` times per daemon, alternating A B, B A, … so drift
on a shared machine hits both alike; the table shows the medians and the ratio A/B.

    .venv/bin/python hack/bench/side_by_side.py --client buildctl \\
        --a unix:///run/buildkitpy/buildkitd.sock --b unix:///run/buildkit/buildkitd.sock \\
        [--names buildkitpyd,buildkitd] [-n 3] [--rows noop,graph-500,...] [--work DIR]

Rows (inputs are generated under --work once and reused):
  noop           fully cached FROM busybox / RUN / COPY → local
  graph-500      25 stages × 19 COPY + 25 COPY --from, cached → local
  context-first  COPY . of 10,000 files / 200 MB into scratch, first transfer, no cache → tar
  context-again  the same context unchanged, cache on → tar
  export-gzip    COPY of one 530 MB text file, no cache → oci (gzip)
  concurrent-16  16 different small RUN builds at once → local
  remote-cache-20  a daemon with an empty cache (prune --all) building a 20-step Dockerfile by
                 importing the registry cache (mode=max) it exported of the same build → local
  cold-20        the same 20 steps after prune --all, without the cache import (the baseline)

The remote-cache rows need ``--cache-registry HOST:PORT`` (e.g. the ``--registry`` one): each
daemon exports and imports its own cache there (``registry.insecure=true``; the keys are the same
for both daemons, so either could import the other's, but each row times a daemon with its own).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROWS = ("noop", "graph-500", "context-first", "context-again", "export-gzip", "concurrent-16")
CACHE_ROWS = ("remote-cache-20", "cold-20")


@dataclass
class Daemon:
    name: str
    addr: str


class Bench:
    def __init__(self, client: str, work: Path, cache_registry: str = "") -> None:
        self.client = client
        self.cache_registry = cache_registry
        self.work = work
        self.out = work / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self._fresh = 0

    # -- one build -------------------------------------------------------------------------------

    def build(self, d: Daemon, context: Path, output: str, *opts: str, no_cache: bool = False,
              flags: tuple[str, ...] = ()) -> None:
        cmd = [self.client, "--addr", d.addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0",
               "--local", f"context={context}", "--local", f"dockerfile={context}", "--output", output,
               *flags]
        for o in opts:
            cmd += ["--opt", o]
        if no_cache:
            cmd.append("--no-cache")
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            tail = "\n".join(res.stderr.splitlines()[-15:])
            raise SystemExit(f"{d.name}: build of {context.name} failed:\n{tail}")

    def local_out(self, d: Daemon) -> str:
        dest = self.out / f"{d.name}-local"
        shutil.rmtree(dest, ignore_errors=True)
        return f"type=local,dest={dest}"

    def file_out(self, d: Daemon, kind: str) -> str:
        return f"type={kind},dest={self.out / f'{d.name}.{kind}'}"

    # -- inputs ----------------------------------------------------------------------------------

    def dir(self, name: str, files: dict[str, bytes]) -> Path:
        path = self.work / name
        if not (path / ".complete").exists():
            shutil.rmtree(path, ignore_errors=True)
            for rel, data in files.items():
                (path / rel).parent.mkdir(parents=True, exist_ok=True)
                (path / rel).write_bytes(data)
            (path / ".complete").write_bytes(b"")
        return path

    def noop_ctx(self) -> Path:
        return self.dir("noop", {"Dockerfile": b"FROM busybox\nRUN echo hello > /hello\nCOPY f /f\n",
                                 "f": b"payload\n"})

    def graph_ctx(self) -> Path:
        lines: list[str] = []
        files: dict[str, bytes] = {}
        for s in range(25):
            lines.append(f"FROM busybox AS s{s}")
            for c in range(19):
                files[f"s{s}/f{c}"] = f"{s}-{c}\n".encode()
                lines.append(f"COPY s{s}/f{c} /d/f{c}")
        lines.append("FROM busybox")
        lines += [f"COPY --from=s{s} /d /s{s}" for s in range(25)]
        files["Dockerfile"] = ("\n".join(lines) + "\n").encode()
        return self.dir("graph-500", files)

    def big_ctx(self) -> Path:
        path = self.work / "context-10k"
        if not (path / ".complete").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            (path / "Dockerfile").write_bytes(b"FROM scratch\nCOPY . /\n")
            for i in range(10_000):
                sub = path / f"d{i // 100:03d}"
                sub.mkdir(exist_ok=True)
                (sub / f"f{i:05d}").write_bytes(os.urandom(20_000))
            (path / ".dockerignore").write_bytes(b".complete\n")
            (path / ".complete").write_bytes(b"")
        return path

    def fresh_copy(self, src: Path) -> Path:
        """A hard-linked copy at a new path: a context the daemon has never seen (first transfer)."""
        self._fresh += 1
        dest = self.work / f"fresh-{os.getpid()}-{self._fresh}"
        subprocess.run(["cp", "-al", str(src), str(dest)], check=True)
        return dest

    def text_ctx(self) -> Path:
        path = self.work / "export-gzip"
        if not (path / ".complete").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
            (path / "Dockerfile").write_bytes(b"FROM scratch\nCOPY big.txt /big.txt\n")
            line = b"".join(b"line %08d of a large, fairly compressible text file for the export row\n" % i
                            for i in range(100_000))
            with open(path / "big.txt", "wb") as f:
                written = 0
                while written < 530_000_000:
                    f.write(line)
                    written += len(line)
            (path / ".complete").write_bytes(b"")
        return path

    def concurrent_ctxs(self) -> list[Path]:
        return [self.dir(f"concurrent-{i}", {"Dockerfile": b"FROM busybox\nARG N\nRUN echo $N > /n\n"})
                for i in range(16)]

    def steps20_ctx(self) -> Path:
        lines = ["FROM busybox"]
        for i in range(19):  # each step: a little CPU and a 1 MB layer of its own
            lines.append(f"RUN i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
                         f"dd if=/dev/urandom of=/f{i} bs=64k count=16 2>/dev/null")
        return self.dir("steps-20", {"Dockerfile": ("\n".join(lines) + "\n").encode()})

    def prune_all(self, d: Daemon) -> None:
        res = subprocess.run([self.client, "--addr", d.addr, "prune", "--all"], capture_output=True,
                             text=True)
        if res.returncode != 0:
            raise SystemExit(f"{d.name}: prune --all failed: {res.stderr[-500:]}")

    def cache_ref(self, d: Daemon) -> str:
        if not self.cache_registry:
            raise SystemExit("the remote-cache rows need --cache-registry HOST:PORT")
        return f"{self.cache_registry}/bench/{d.name.lower()}-steps20:cache"

    # -- rows: (prepare, timed) per daemon -------------------------------------------------------

    def row(self, name: str) -> tuple[Callable[[Daemon], None], Callable[[Daemon], None]]:
        if name == "noop":
            ctx = self.noop_ctx()
            run = lambda d: self.build(d, ctx, self.local_out(d))  # noqa: E731
            return run, run
        if name == "graph-500":
            ctx = self.graph_ctx()
            run = lambda d: self.build(d, ctx, self.local_out(d))  # noqa: E731
            return run, run
        if name == "context-first":
            big = self.big_ctx()

            def first(d: Daemon) -> None:
                ctx = self.fresh_copy(big)
                try:
                    self.build(d, ctx, self.file_out(d, "tar"), no_cache=True)
                finally:
                    shutil.rmtree(ctx)
            return lambda d: None, first
        if name == "context-again":
            big = self.big_ctx()
            run = lambda d: self.build(d, big, self.file_out(d, "tar"))  # noqa: E731
            return run, run
        if name == "export-gzip":
            ctx = self.text_ctx()
            prep = lambda d: self.build(d, ctx, self.file_out(d, "oci"))  # noqa: E731
            run = lambda d: self.build(d, ctx, self.file_out(d, "oci"), no_cache=True)  # noqa: E731
            return prep, run
        if name == "concurrent-16":
            ctxs = self.concurrent_ctxs()
            self._nonce = time.time_ns()

            def many(d: Daemon) -> None:
                self._nonce += 1
                nonce = self._nonce
                with ThreadPoolExecutor(16) as pool:
                    futs = [pool.submit(self.build, d, c, f"type=local,dest={self.out / f'{d.name}-c{i}'}",
                                        f"build-arg:N={nonce}-{i}") for i, c in enumerate(ctxs)]
                    for f in futs:
                        f.result()
            return (lambda d: self.build(d, ctxs[0], self.local_out(d), "build-arg:N=warm")), many
        if name in CACHE_ROWS:
            ctx = self.steps20_ctx()

            def export(d: Daemon) -> None:
                self.prune_all(d)
                ref = f"type=registry,ref={self.cache_ref(d)},mode=max,registry.insecure=true"
                self.build(d, ctx, self.local_out(d), flags=("--export-cache", ref))

            def fresh(d: Daemon) -> None:
                self.prune_all(d)  # not timed apart: a fresh daemon starts with nothing
                flags: tuple[str, ...] = ()
                if name == "remote-cache-20":
                    ref = f"type=registry,ref={self.cache_ref(d)},registry.insecure=true"
                    flags = ("--import-cache", ref)
                self.build(d, ctx, self.local_out(d), flags=flags)
            return export, fresh
        raise SystemExit(f"unknown row {name!r} (rows: {', '.join(ROWS + CACHE_ROWS)})")


def timed(fn: Callable[[Daemon], None], d: Daemon) -> float:
    t = time.perf_counter()
    fn(d)
    return time.perf_counter() - t


def start_registry(work: Path) -> None:
    conformance = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "conformance.py"
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    subprocess.run([sys.executable, str(conformance), "registry", "--port", str(port),
                    "--data", str(work / "registry")], check=True)
    print(f"registry on 127.0.0.1:{port}; give both daemons this config:\n"
          f'[registry."docker.io"]\n  mirrors = ["127.0.0.1:{port}"]\n'
          f'[registry."127.0.0.1:{port}"]\n  http = true\n'
          f"(stop it with: kill $(cat {work / 'registry' / 'registry.pid'}))")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--client", default="buildctl", help="a buildctl-compatible client")
    p.add_argument("--a", help="address of daemon A")
    p.add_argument("--b", help="address of daemon B (the reference)")
    p.add_argument("--names", default="A,B", help="names for A and B, comma separated")
    p.add_argument("-n", type=int, default=3, help="timed runs per daemon and row")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "buildkitpy-bench")
    p.add_argument("--registry", action="store_true", help="start a loopback busybox registry and exit")
    p.add_argument("--cache-registry", default="", help="HOST:PORT for the remote-cache rows' caches")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.registry:
        start_registry(args.work)
        return
    if not args.a or not args.b:
        p.error("--a and --b are required")
    na, nb = args.names.split(",")
    daemons = [Daemon(na, args.a), Daemon(nb, args.b)]
    bench = Bench(args.client, args.work, args.cache_registry)
    results: list[tuple[str, float, float]] = []
    for row in args.rows.split(","):
        prepare, run = bench.row(row)
        for d in daemons:
            prepare(d)
        samples: dict[str, list[float]] = {d.name: [] for d in daemons}
        for i in range(args.n):
            for d in (daemons if i % 2 == 0 else daemons[::-1]):
                samples[d.name].append(timed(run, d))
        ma, mb = statistics.median(samples[na]), statistics.median(samples[nb])
        results.append((row, ma, mb))
        print(f"{row:14s} {na} {' '.join(f'{s:.2f}' for s in samples[na])}  |  "
              f"{nb} {' '.join(f'{s:.2f}' for s in samples[nb])}", flush=True)
    print(f"\n| row | {na} | {nb} | ratio |\n|---|---|---|---|")
    for row, ma, mb in results:
        print(f"| {row} | {ma:.2f} s | {mb:.2f} s | {ma / mb:.2f} |")


if __name__ == "__main__":
    main()
