"""The op graph: vertices (ops), their outputs, and how one op is marshalled to bytes."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from buildkitpy.api import ops_pb2

from .constraints import Constraints, Metadata
from .errors import LLBError
from .platform import Platform
from .sourcemap import SourceLocation


def serialize_op(op: ops_pb2.Op) -> bytes:
    """Bytes of ``op`` exactly as Go's deterministic marshalling writes them.

    Go emits the fields outside a oneof in field-number order and the ``op`` oneof after them
    (inputs=1, platform=10, constraints=11, then exec/source/file=2..8), while Python's upb writes
    strictly by field number. Protobuf allows any order, but the op digest is over these bytes, so
    we write the two halves separately and concatenate them.
    """
    which = op.WhichOneof("op")
    if which is None:
        return op.SerializeToString(deterministic=True)
    head = ops_pb2.Op()
    head.CopyFrom(op)
    head.ClearField(which)
    tail = ops_pb2.Op()
    getattr(tail, which).CopyFrom(getattr(op, which))
    return head.SerializeToString(deterministic=True) + tail.SerializeToString(deterministic=True)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class MarshalContext:
    """Marshal-wide settings (the base constraints every op merges onto) and the per-call cache."""

    constraints: Constraints
    default_platform: Platform
    caps: Collection[str] | None = None
    local_unique_id: str = ""
    _cache: dict[int, tuple[Vertex, MarshalledOp]] = field(default_factory=dict)

    def cached(self, vertex: Vertex, build: Callable[[], MarshalledOp]) -> MarshalledOp:
        hit = self._cache.get(id(vertex))
        if hit is None:
            hit = (vertex, build())
            self._cache[id(vertex)] = hit
        return hit[1]


@dataclass(frozen=True)
class MarshalledOp:
    digest: str
    data: bytes
    metadata: Metadata
    locations: tuple[SourceLocation, ...]

    @classmethod
    def of(cls, op: ops_pb2.Op, metadata: Metadata, locations: tuple[SourceLocation, ...]) -> MarshalledOp:
        data = serialize_op(op)
        return cls(digest_of(data), data, metadata, locations)


class Vertex(ABC):
    """One LLB op. Vertices are compared by identity, like client/llb's pointers."""

    @abstractmethod
    def inputs(self) -> list[Output]:
        """Outputs this op consumes, in the order the marshaller visits them."""

    @abstractmethod
    def _marshal(self, ctx: MarshalContext) -> MarshalledOp: ...

    def marshal(self, ctx: MarshalContext) -> MarshalledOp:
        try:
            return ctx.cached(self, lambda: self._marshal(ctx))
        except UnicodeEncodeError:  # a str holding bytes that were not UTF-8 (surrogate escapes)
            err = LLBError("the op contains bytes that are not valid UTF-8 (LLB strings must be UTF-8)")
            constraints = getattr(self, "constraints", None)
            err.locations = tuple(constraints.locations) if constraints is not None else ()
            raise err from None


class Output:
    """One output of a vertex: what a ``State`` points at and what ``pb.Input`` references."""

    __slots__ = ("vertex", "_index", "platform", "error")

    def __init__(self, vertex: Vertex, index: Callable[[], int] | int = 0, *,
                 platform: Platform | None = None, error: str | None = None) -> None:
        self.vertex = vertex
        self._index = index
        self.platform = platform
        self.error = error

    def index(self) -> int:
        return self._index() if callable(self._index) else self._index

    def to_input(self, ctx: MarshalContext) -> ops_pb2.Input:
        if self.error:
            raise LLBError(self.error)
        index = self.index()
        return ops_pb2.Input(digest=self.vertex.marshal(ctx).digest, index=index)
