#!/usr/bin/env python3
"""Exec start latency and snapshot overhead (needs root, runc, busybox-static).

    .venv/bin/python hack/bench/bench_exec.py [-n 20]

Prints p50/p90 for: running ``true`` in a busybox container through RuncExecutor; the same via
bare ``runc run`` on a prepared bundle (the floor); new_mutable+mount+write+unmount+commit; a
read-only mount of a 2-layer chain; in overlay and copy snapshot modes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "executor"))
from conftest import build_busybox_rootfs  # noqa: E402

from buildkitpy.executor import ExecSpec  # noqa: E402
from buildkitpy.executor.runc import RuncExecutor  # noqa: E402
from buildkitpy.snapshot.manager import OverlaySnapshotManager  # noqa: E402


def report(name: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    print(f"{name:<48} n={len(ms):<3} p50={statistics.median(ms):7.1f} ms  p90={p90:7.1f} ms")


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_mode(base_dir: Path, mode: str, n: int) -> None:
    mgr = OverlaySnapshotManager(base_dir / f"snap-{mode}", mode=mode)
    mut = mgr.new_mutable(None)
    with mut.mount() as root:
        build_busybox_rootfs(root)
    base = mut.commit()

    def commit_cycle() -> None:
        m = mgr.new_mutable(base)
        with m.mount() as r:
            (r / "file").write_text("x")
        m.commit().release()

    report(f"[{mode}] new_mutable+mount+write+commit", timed(commit_cycle, n))
    m = mgr.new_mutable(base)
    with m.mount() as r:
        (r / "f").write_text("x")
    top = m.commit()

    def ro_mount() -> None:
        with top.mount():
            pass

    report(f"[{mode}] read-only mount+unmount (2 layers)", timed(ro_mount, n))

    executor = RuncExecutor(base_dir / f"exec-{mode}")
    exec_mut = mgr.new_mutable(base)
    with exec_mut.mount() as rootfs:
        spec = ExecSpec(rootfs=rootfs, args=["true"])

        async def run_many() -> list[float]:
            samples = []
            for _ in range(n):
                t = time.perf_counter()
                code = await executor.run(spec, stdout=lambda b: None, stderr=lambda b: None)
                samples.append(time.perf_counter() - t)
                assert code == 0
            return samples

        report(f"[{mode}] RuncExecutor.run(true)", anyio.run(run_many))
        if mode == "overlay":
            bundle = base_dir / "bare-bundle"
            bundle.mkdir()
            subprocess.run(["runc", "spec"], cwd=bundle, check=True)
            config = json.loads((bundle / "config.json").read_text())
            config["process"]["terminal"] = False
            config["process"]["args"] = ["true"]
            config["root"] = {"path": str(rootfs), "readonly": False}
            (bundle / "config.json").write_text(json.dumps(config))
            state = base_dir / "bare-state"
            i = iter(range(10**6))
            report("[floor] bare `runc run` (prepared bundle)", timed(lambda: subprocess.run(
                ["runc", "--root", str(state), "run", "-b", str(bundle), f"bare{next(i)}"],
                check=True, stdin=subprocess.DEVNULL), n))
    exec_mut.release()
    top.release()
    base.release()
    mgr.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
        base_dir = Path(tmp)
        for mode in ("overlay", "copy"):
            bench_mode(base_dir, mode, n)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
