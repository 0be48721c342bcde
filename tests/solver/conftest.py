from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import anyio
import pytest

from buildkitpy.progress import ProgressBus
from buildkitpy.snapshot.manager import OverlaySnapshotManager
from buildkitpy.solver import Job, Solver
from buildkitpy.worker import Worker


class Env:
    """A real worker (overlay snapshots in a temp root) and a solver on it; reopenable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open()

    def open(self) -> None:
        self.snapshots = OverlaySnapshotManager(self.root)
        self.worker = Worker(id="test", root=self.root, snapshots=self.snapshots, sessions=None,
                             max_parallelism=4)
        self.solver = Solver(self.worker)

    def close(self) -> None:
        self.solver.close()
        self.worker.close()  # its snapshots and the stores it opened

    def restart(self) -> None:
        self.close()
        self.open()

    def job(self, **kw: object) -> Job:
        return Job(id="job", progress=ProgressBus(), **kw)

    def solve(self, defn, job: Job | None = None):  # noqa: ANN001, ANN201
        return anyio.run(self.solver.solve, defn, job or self.job())

    def tree(self, defn, job: Job | None = None) -> dict[str, object]:  # noqa: ANN001
        """Solve and describe the result tree: path -> bytes (files), 'dir', or ('link', target)."""
        res = self.solve(defn, job)
        try:
            with res.ref.mount() as root:
                return describe(root)
        finally:
            res.ref.release()

    def executed(self) -> list[str]:
        return list(self.solver.last_build.executed)

    def live_handles(self) -> dict[str, int]:
        """Snapshot handles held by anyone except the cache."""
        held = {k: v for k, v in self.snapshots._refs.items() if v}
        for sid in self.solver.cache._held:
            if sid in held:
                held[sid] -= 1
                if not held[sid]:
                    del held[sid]
        return held

    def mutables(self) -> list[str]:
        return [u.id for u in self.snapshots.usage() if u.mutable]


def describe(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                with open(full, "rb") as f:
                    out[rel] = f.read()
    return out


@pytest.fixture
def env(tmp_path: Path):  # noqa: ANN201
    e = Env(tmp_path / "worker")
    yield e
    with contextlib.suppress(Exception):
        e.close()


@pytest.fixture
def stat_of(env: Env):  # noqa: ANN201
    def _stat(defn, path: str) -> os.stat_result:  # noqa: ANN001
        res = env.solve(defn)
        try:
            with res.ref.mount() as root:
                return os.lstat(os.path.join(root, path))
        finally:
            res.ref.release()
    return _stat
