"""A vertex built on first use: sources whose attributes depend on the whole conversion (the build
context's follow paths) are referenced by earlier ops before they can be created."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from buildkitpy.llb.vertex import MarshalContext, MarshalledOp, Output, Vertex

if TYPE_CHECKING:
    from buildkitpy import llb


class LazyVertex(Vertex):
    def __init__(self, build: Callable[[], llb.State]) -> None:
        self._build = build
        self._target: Vertex | None = None

    def target(self) -> Vertex:
        if self._target is None:
            state = self._build()
            assert state.output is not None
            self._target = state.output.vertex
        return self._target

    def inputs(self) -> list[Output]:
        return self.target().inputs()

    def _marshal(self, ctx: MarshalContext) -> MarshalledOp:
        return self.target().marshal(ctx)
