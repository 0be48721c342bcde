"""Merge and diff ops (client/llb ``merge.go``, ``diff.go``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

from buildkitpy.api import ops_pb2

from . import caps
from .constraints import Constraints, OpOptions, marshal_constraints
from .errors import LLBError
from .state import State, scratch
from .vertex import MarshalContext, MarshalledOp, Output, Vertex


class MergeOp(Vertex):
    def __init__(self, inputs: Sequence[Output], constraints: Constraints) -> None:
        if len(inputs) < 2:
            raise LLBError("merge must have at least 2 inputs")
        self._inputs = list(inputs)
        self.constraints = constraints
        self.output = Output(self, 0)

    def inputs(self) -> list[Output]:
        return list(self._inputs)

    def _marshal(self, ctx: MarshalContext) -> MarshalledOp:
        op, md = marshal_constraints(ctx.constraints, self.constraints, ctx.default_platform)
        op.ClearField("platform")
        merge = ops_pb2.MergeOp()
        for out in self._inputs:  # not deduplicated: each merge layer is its own input
            merge.inputs.add(input=len(op.inputs))
            op.inputs.append(out.to_input(ctx))
        op.merge.CopyFrom(merge)
        return MarshalledOp.of(op, md, self.constraints.locations)


def merge(states: Sequence[State], **options: Unpack[OpOptions]) -> State:
    """Layer ``states`` on top of each other (first at the bottom); scratch inputs are dropped."""
    layers = [s for s in states if s.output is not None]
    if not layers:
        return scratch()
    if len(layers) == 1:
        return layers[0]
    c = Constraints.from_options(options).with_cap(caps.MERGE_OP)
    return layers[0].with_output(MergeOp([s.output for s in layers if s.output], c).output)


class DiffOp(Vertex):
    def __init__(self, lower: Output | None, upper: Output | None, constraints: Constraints) -> None:
        self.lower, self.upper = lower, upper
        self.constraints = constraints.with_cap(caps.DIFF_OP)
        self.output = Output(self, 0)

    def inputs(self) -> list[Output]:
        return [o for o in (self.lower, self.upper) if o is not None]

    def _marshal(self, ctx: MarshalContext) -> MarshalledOp:
        op, md = marshal_constraints(ctx.constraints, self.constraints, ctx.default_platform)
        op.ClearField("platform")
        diff = ops_pb2.DiffOp()
        for side, out in ((diff.lower, self.lower), (diff.upper, self.upper)):
            side.SetInParent()
            if out is None:
                side.input = -1
            else:
                side.input = len(op.inputs)
                op.inputs.append(out.to_input(ctx))
        op.diff.CopyFrom(diff)
        return MarshalledOp.of(op, md, self.constraints.locations)


def diff(lower: State, upper: State, **options: Unpack[OpOptions]) -> State:
    """The changes that turn ``lower`` into ``upper``."""
    if lower.output is None:
        return scratch() if upper.output is None else upper
    return lower.with_output(DiffOp(lower.output, upper.output, Constraints.from_options(options)).output)
