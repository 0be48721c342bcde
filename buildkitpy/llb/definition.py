"""A marshalled definition as a state (client/llb's ``NewDefinitionOp``): its ops are kept byte for
byte (same digests, so they are the same vertices to the solver), and new ops can build on its
result."""

from __future__ import annotations

from buildkitpy.api import ops_pb2

from .constraints import Metadata, ProgressGroup
from .errors import LLBError
from .state import State
from .vertex import MarshalContext, MarshalledOp, Output, Vertex, digest_of


class _DefinedOp(Vertex):
    """One op of a definition, as it was marshalled."""

    def __init__(self, data: bytes, metadata: Metadata, inputs: list[Output]) -> None:
        self.data = data
        self.metadata = metadata
        self._inputs = inputs

    def inputs(self) -> list[Output]:
        return list(self._inputs)

    def _marshal(self, ctx: MarshalContext) -> MarshalledOp:
        return MarshalledOp(digest_of(self.data), self.data, self.metadata, ())


def _metadata(md: ops_pb2.OpMetadata | None) -> Metadata:
    if md is None:
        return Metadata()
    out = Metadata(ignore_cache=md.ignore_cache, description=dict(md.description),
                   caps={c for c, on in md.caps.items() if on})
    if md.HasField("export_cache"):
        out.export_cache = md.export_cache.Value
    if md.HasField("progress_group"):
        pg = md.progress_group
        out.progress_group = ProgressGroup(pg.id, pg.name, pg.weak)
    if md.HasField("linux_resources"):
        out.linux_resources = md.linux_resources
    return out


def from_definition(definition: ops_pb2.Definition) -> State:
    """The result of ``definition`` as a state (scratch for an empty one)."""
    ops = list(getattr(definition, "def"))
    if not ops:
        return State()
    vertices: dict[str, _DefinedOp] = {}
    for data in ops[:-1]:
        op = ops_pb2.Op.FromString(data)
        inputs = []
        for inp in op.inputs:
            if inp.digest not in vertices:
                raise LLBError(f"invalid definition: op {digest_of(data)} uses {inp.digest}, "
                               "which is not defined before it")
            inputs.append(Output(vertices[inp.digest], int(inp.index)))
        dgst = digest_of(data)
        md = definition.metadata[dgst] if dgst in definition.metadata else None
        vertices[dgst] = _DefinedOp(data, _metadata(md), inputs)
    terminal = ops_pb2.Op.FromString(ops[-1])
    if not terminal.inputs:
        return State()
    head = terminal.inputs[0]
    if head.digest not in vertices:
        raise LLBError(f"invalid definition: its result {head.digest} is not one of its ops")
    return State.from_output(Output(vertices[head.digest], int(head.index)))
