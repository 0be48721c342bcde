"""Per-vertex solver overhead on a generated graph of mkfile FileOps (no executor involved).

    .venv/bin/python hack/bench/bench_solver.py [--vertices 1000] [--root DIR]

Builds chains of mkfile ops on scratch that fan in through merges, solves it cold (everything runs)
and again fully cached, and prints milliseconds per vertex for both.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import anyio

from buildkitpy.api import ops_pb2
from buildkitpy.progress import ProgressBus
from buildkitpy.snapshot.manager import OverlaySnapshotManager
from buildkitpy.solver import Job, Solver
from buildkitpy.worker import Worker


def generate(n: int, chain: int = 10) -> ops_pb2.Definition:
    ops: list[bytes] = []

    def add(op: ops_pb2.Op) -> str:
        data = op.SerializeToString(deterministic=True)
        ops.append(data)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    tips: list[str] = []
    count = 0
    while count < n - 1:
        prev: str | None = None
        for j in range(min(chain, n - 1 - count)):
            action = ops_pb2.FileAction(input=-1 if prev is None else 0, secondaryInput=-1, output=0,
                                        mkfile=ops_pb2.FileActionMkFile(path=f"/c{count}-{j}", data=b"x",
                                                                        mode=0o644, timestamp=-1))
            op = ops_pb2.Op(file=ops_pb2.FileOp(actions=[action]))
            if prev is not None:
                op.inputs.add(digest=prev, index=0)
            prev = add(op)
            count += 1
        tips.append(prev)  # type: ignore[arg-type]
    merge = ops_pb2.Op(inputs=[ops_pb2.Input(digest=t) for t in tips],
                       merge=ops_pb2.MergeOp(inputs=[ops_pb2.MergeInput(input=i) for i in range(len(tips))]))
    result = add(merge)
    defn = ops_pb2.Definition()
    getattr(defn, "def").extend(ops + [ops_pb2.Op(inputs=[ops_pb2.Input(digest=result)]).SerializeToString()])
    return defn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vertices", type=int, default=1000)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        root = Path(tmp)
        snapshots = OverlaySnapshotManager(root)
        worker = Worker(id="bench", root=root, snapshots=snapshots, sessions=None, max_parallelism=4)
        solver = Solver(worker)
        defn = generate(args.vertices)
        n = len(getattr(defn, "def")) - 1

        async def solve() -> float:
            start = time.perf_counter()
            res = await solver.solve(defn, Job(id="bench", progress=ProgressBus()))
            elapsed = time.perf_counter() - start
            res.ref.release()
            return elapsed

        cold = anyio.run(solve)
        ran = len(solver.last_build.executed)
        warm = anyio.run(solve)
        print(f"vertices={n} snapshot-mode={snapshots.mode}")
        print(f"cold:   {cold:7.2f} s  {cold * 1000 / n:7.3f} ms/vertex  ({ran} executed)")
        print(f"cached: {warm:7.2f} s  {warm * 1000 / n:7.3f} ms/vertex  "
              f"({len(solver.last_build.executed)} executed)")
        solver.close()
        worker.close()


if __name__ == "__main__":
    main()
