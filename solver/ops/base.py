"""What every op implementation provides, and the registry mapping op kinds to implementations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from buildkitpy.errors import Unimplemented
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.cachekey import CacheMap
from buildkitpy.solver.loader import Vertex

if TYPE_CHECKING:
    from buildkitpy.solver.contenthash import ChecksumStore
    from buildkitpy.solver.ops.cachemounts import CacheMounts
    from buildkitpy.solver.ops.local_reuse import SharedKeyIndex
    from buildkitpy.solver.solver import Job
    from buildkitpy.worker import Worker


class SharedState(Protocol):
    """What ops keep across builds, beside the worker's stores: the solver's (``Solver``)."""

    @property
    def cache_mounts(self) -> CacheMounts: ...  # ``--mount=type=cache`` directories

    @property
    def local_sources(self) -> SharedKeyIndex: ...  # the previous copy of each local source

    @property
    def checksums(self) -> ChecksumStore: ...  # content checksums of snapshots


@dataclass
class OpContext:
    worker: Worker
    job: Job
    vertex: Vertex
    shared: SharedState


class Op(Protocol):
    def cache_map(self, ctx: OpContext) -> CacheMap:
        """Definition digest and per-input dependencies; pure, no I/O. An op whose key needs I/O
        (an http download's checksum, a git ref's commit) may also define ``async def
        resolve(ctx)``, which the scheduler awaits before calling ``cache_map``."""

    async def execute(self, ctx: OpContext,
                      inputs: list[ImmutableSnapshot | None]) -> list[ImmutableSnapshot]:
        """Run the op on its inputs' snapshots (borrowed, do not release) and return one new
        snapshot per output (owned by the caller). Must release everything else it took, also when
        cancelled."""


_FACTORIES: dict[str, Callable[[Vertex], Op]] = {}


def register_op(kind: str) -> Callable[[Callable[[Vertex], Op]], Callable[[Vertex], Op]]:
    def deco(factory: Callable[[Vertex], Op]) -> Callable[[Vertex], Op]:
        _FACTORIES[kind] = factory
        return factory
    return deco


def op_for(vertex: Vertex) -> Op:
    # Importing the modules registers them.
    from buildkitpy.solver.ops import diff, exec, file, merge, source, source_image  # noqa: F401
    from buildkitpy.solver.ops import source_git, source_http  # noqa: F401  # isort: skip

    factory = _FACTORIES.get(vertex.kind)
    if factory is None:
        raise Unimplemented(f"{vertex.kind} ops are not supported yet")
    return factory(vertex)
