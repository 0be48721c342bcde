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
    """The result of ``definition`` as a state (scratch for an empty one). Ops may come in any order,
    as BuildKit's ``NewDefinitionOp`` takes them; each is found by digest (no recursion, so no depth
    limit)."""
    ops = list(getattr(definition, "def"))
    if not ops:
        return State()
    by_digest = {digest_of(data): data for data in ops[:-1]}
    parsed: dict[str, ops_pb2.Op] = {}
    vertices: dict[str, _DefinedOp] = {}

    def op_of(dgst: str, user: str) -> ops_pb2.Op:
        if dgst not in parsed:
            if dgst not in by_digest:
                raise LLBError(f"invalid definition: op {user} uses {dgst}, which is not one of its ops")
            parsed[dgst] = ops_pb2.Op.FromString(by_digest[dgst])
        return parsed[dgst]

    def build(root: str, user: str) -> _DefinedOp:
        stack = [root]
        op_of(root, user)
        while stack:
            dgst = stack[-1]
            if dgst in vertices:
                stack.pop()
                continue
            missing = [i.digest for i in parsed[dgst].inputs if i.digest not in vertices]
            if missing:  # (inputs are digests of other ops' bytes: they cannot form a cycle)
                for m in missing:
                    op_of(m, dgst)
                stack.extend(missing)
                continue
            md = definition.metadata[dgst] if dgst in definition.metadata else None
            inputs = [Output(vertices[i.digest], int(i.index)) for i in parsed[dgst].inputs]
            vertices[dgst] = _DefinedOp(by_digest[dgst], _metadata(md), inputs)
            stack.pop()
        return vertices[root]

    for dgst in by_digest:  # every op, reachable or not, must be well formed
        build(dgst, dgst)
    terminal = ops_pb2.Op.FromString(ops[-1])
    if not terminal.inputs:
        return State()
    head = terminal.inputs[0]
    return State.from_output(Output(build(head.digest, digest_of(ops[-1])), int(head.index)))
