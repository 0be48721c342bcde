"""Op implementations. ``op_for(vertex)`` picks the implementation for a loaded vertex."""

from __future__ import annotations

from buildkitpy.solver.ops.base import Op, OpContext, op_for, register_op

__all__ = ["Op", "OpContext", "op_for", "register_op"]
