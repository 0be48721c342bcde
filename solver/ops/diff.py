"""DiffOp: only the changes from ``lower`` to ``upper`` (scratch lower = all of upper)."""

from __future__ import annotations

from buildkitpy.errors import Unimplemented
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.asyncutil import blocking
from buildkitpy.solver.cachekey import CacheMap, Dep
from buildkitpy.solver.loader import SCRATCH, Vertex
from buildkitpy.solver.ops.base import OpContext, register_op
from buildkitpy.solver.ops.merge import op_digest


@register_op("diff")
class DiffOp:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex

    def cache_map(self, ctx: OpContext) -> CacheMap:
        return CacheMap(digest=op_digest("buildkit.diff.v0", "Diff", self.vertex),
                        deps=[Dep() for _ in self.vertex.inputs])

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        d = self.vertex.op.diff
        lower = None if d.lower.input == SCRATCH else inputs[d.lower.input]
        snapshots = ctx.worker.snapshots
        if d.upper.input == SCRATCH:
            # Everything in lower deleted: an empty tree on top of lower, diffed against lower.
            if lower is None:
                mutable = await blocking(snapshots.new_mutable, None, self.vertex.name)
                return [await blocking(mutable.commit)]
            raise Unimplemented("diff with a scratch upper and a non-scratch lower is not supported yet")
        upper = inputs[d.upper.input]
        return [await blocking(snapshots.diff, lower, upper, self.vertex.name)]
