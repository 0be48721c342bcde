"""MergeOp: the inputs' trees stacked in order (later inputs win), without copying data."""

from __future__ import annotations

from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.asyncutil import blocking
from buildkitpy.solver.cachekey import CacheMap, Dep, digest_json
from buildkitpy.solver.loader import Vertex
from buildkitpy.solver.ops.base import OpContext, register_op


def _op_json(vertex: Vertex) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(getattr(vertex.op, vertex.kind), preserving_proto_field_name=True)


@register_op("merge")
class MergeOp:
    def __init__(self, vertex: Vertex) -> None:
        self.vertex = vertex

    def cache_map(self, ctx: OpContext) -> CacheMap:
        return CacheMap(digest=digest_json({"type": "buildkit.merge.v0", "op": _op_json(self.vertex)}),
                        deps=[Dep() for _ in self.vertex.inputs])

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        layers = [inputs[m.input] for m in self.vertex.op.merge.inputs]
        return [await blocking(ctx.worker.snapshots.merge, layers, self.vertex.name)]
