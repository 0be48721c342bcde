"""MergeOp: the inputs' trees stacked in order (later inputs win), without copying data."""

from __future__ import annotations

from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.asyncutil import blocking
from buildkitpy.solver.cachekey import CacheMap, Dep, go_digest, go_marshal, go_proto_value
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.ops.base import OpContext, register_op


def op_digest(cache_type: str, field: str, vertex: Vertex) -> str:
    """BuildKit's key of a merge or diff: json.Marshal of {Type, Merge|Diff: the op}."""
    return go_digest(go_marshal({"Type": cache_type, field: go_proto_value(getattr(vertex.op, vertex.kind))}))


@register_op("merge")
class MergeOp:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex

    def cache_map(self, ctx: OpContext) -> CacheMap:
        return CacheMap(digest=op_digest("buildkit.merge.v0", "Merge", self.vertex),
                        deps=[Dep() for _ in self.vertex.inputs])

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        layers = [inputs[m.input] for m in self.vertex.op.merge.inputs]
        return [await blocking(ctx.worker.snapshots.merge, layers, self.vertex.name)]
