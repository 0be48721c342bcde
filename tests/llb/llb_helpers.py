"""Decode a marshalled definition back into ops for assertions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from buildkitpy import llb
from buildkitpy.api import ops_pb2


@dataclass
class Decoded:
    definition: ops_pb2.Definition
    ops: dict[str, ops_pb2.Op]  # digest -> op, in definition order (terminal excluded)
    terminal: ops_pb2.Op

    def of_kind(self, kind: str) -> list[ops_pb2.Op]:
        return [op for op in self.ops.values() if op.WhichOneof("op") == kind]

    def one(self, kind: str) -> tuple[str, ops_pb2.Op]:
        found = [(d, op) for d, op in self.ops.items() if op.WhichOneof("op") == kind]
        assert len(found) == 1, f"expected one {kind} op, got {len(found)}"
        return found[0]

    def caps(self, digest: str) -> set[str]:
        return set(self.definition.metadata[digest].caps)

    @property
    def head(self) -> tuple[str, ops_pb2.Op]:
        d = self.terminal.inputs[0].digest
        return d, self.ops[d]


def decode(state: llb.State, **kw) -> Decoded:
    kw.setdefault("platform", "linux/amd64")
    definition = llb.marshal(state, **kw)
    # round trip through the wire format
    definition = ops_pb2.Definition.FromString(definition.SerializeToString())
    ops: dict[str, ops_pb2.Op] = {}
    raw = list(getattr(definition, "def"))
    for data in raw[:-1]:
        op = ops_pb2.Op.FromString(data)
        ops["sha256:" + hashlib.sha256(data).hexdigest()] = op
    terminal = ops_pb2.Op.FromString(raw[-1])
    return Decoded(definition, ops, terminal)
