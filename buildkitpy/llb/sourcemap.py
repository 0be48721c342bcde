"""Source maps: tie LLB vertices to places in a frontend file (the Dockerfile) for error reports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from buildkitpy.api import ops_pb2

if TYPE_CHECKING:
    from .state import State

RangeLike = ops_pb2.Range | tuple[int, int] | tuple[int, int, int, int]


@dataclass(eq=False)
class SourceMap:
    """A source file. ``state`` (e.g. the local source the file was read from) is marshalled into
    ``SourceInfo.definition``."""

    filename: str
    data: bytes
    language: str = ""
    state: State | None = None

    def location(self, ranges: Iterable[RangeLike]) -> SourceLocation:
        """A location in this file; a range is a ``pb.Range``, ``(start_line, end_line)`` or
        ``(start_line, start_char, end_line, end_char)``."""
        return SourceLocation(self, tuple(_to_range(r) for r in ranges))

    def same_file(self, other: SourceMap) -> bool:
        return (self.filename, self.language, self.data) == (other.filename, other.language, other.data)


@dataclass(frozen=True)
class SourceLocation:
    source_map: SourceMap
    ranges: tuple[ops_pb2.Range, ...] = field(default=())


def _to_range(r: RangeLike) -> ops_pb2.Range:
    if isinstance(r, ops_pb2.Range):
        return r
    if len(r) == 2:
        return ops_pb2.Range(start=ops_pb2.Position(line=r[0]), end=ops_pb2.Position(line=r[1]))
    return ops_pb2.Range(start=ops_pb2.Position(line=r[0], character=r[1]),
                         end=ops_pb2.Position(line=r[2], character=r[3]))
