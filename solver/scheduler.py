"""Running one loaded LLB graph on the solver core (``solver/core.py``).

``Build`` is the core's ``Runtime`` for LLB: it makes each vertex's op (``solver/ops``), resolves
sources whose cache key needs the network, takes content checksums of snapshots, runs ops, and
reports progress, tracing spans and why-rebuild facts. Which vertices run, which load from the
cache and which are skipped entirely is the core's decision.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from buildkitpy.errors import BuildkitpyError, Canceled, SolveError, internal_error
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.asyncutil import blocking
from buildkitpy.solver.cachekey import CacheMap, OutputKeys
from buildkitpy.solver.core import CoreBuild, Settled
from buildkitpy.solver.loader import LoadedGraph, Vertex
from buildkitpy.solver.observe import StepFacts
from buildkitpy.solver.ops import OpContext, op_for
from buildkitpy.solver.ops.base import Op

if TYPE_CHECKING:
    from buildkitpy.solver.solver import Job, Solver


class Build:
    def __init__(self, solver: Solver, graph: LoadedGraph, job: Job) -> None:
        self.solver = solver
        self.graph = graph
        self.job = job
        self._ops: dict[str, tuple[Op, OpContext]] = {}
        self._nodes: dict[str, list[Any]] = {}  # vertex -> its keys in the job's remote cache
        self._core = CoreBuild(solver.core, graph.vertices, self, job.cache_layers)

    @property
    def executed(self) -> list[str]:
        """Digests whose op actually ran in this build (for tests and the bench)."""
        return self._core.executed

    @property
    def result_keys(self) -> OutputKeys | None:
        """The cache keys of the build's result (for cache exporters), once it ran."""
        return self._core.result_keys

    async def run(self) -> ImmutableSnapshot | None:
        assert self.graph.result is not None
        return await self._core.run(self.graph.result)

    # -- Runtime ---------------------------------------------------------------------------------

    def _op(self, v: Vertex) -> tuple[Op, OpContext]:
        got = self._ops.get(v.digest)
        if got is None:
            ctx = OpContext(worker=self.solver.worker, job=self.job, vertex=v, shared=self.solver)
            got = self._ops[v.digest] = (op_for(v), ctx)
        return got

    async def cache_map(self, v: Vertex) -> CacheMap:
        op, ctx = self._op(v)
        resolve = getattr(op, "resolve", None)
        if resolve is not None:  # sources whose cache key needs the network (http, git) look it up here
            await resolve(ctx)
        return op.cache_map(ctx)

    def skip_lookup(self, v: Vertex, cm: CacheMap) -> bool:
        return self.job.no_cache or v.ignore_cache or cm.always_run

    async def checksum(self, v: Vertex, cm: CacheMap, index: int, value: Any) -> str:
        return _raised(await self.checksum_many([(v, cm, index, value)]))[0]

    async def checksum_many(self, items: list[tuple[Vertex, CacheMap, int, Any]]) -> list[str | Exception]:
        def run() -> list[str | Exception]:
            out: list[str | Exception] = []
            for v, cm, index, value in items:
                try:
                    src = self.graph.vertices.get(v.inputs[index].digest)
                    synced = src is not None and src.kind == "source" and \
                        src.op.source.identifier.startswith("local://")
                    out.append(self.solver.checksums.snapshot_checksum(value, cm.deps[index].content, synced))
                except SolveError as exc:
                    err = SolveError(f"failed to compute cache key: {exc}")
                    err.__cause__ = exc
                    out.append(err)
                except Exception as exc:  # noqa: BLE001 - the vertex fails with it, not the batch
                    out.append(exc)
            return out
        return await blocking(run)

    async def execute(self, v: Vertex, inputs: list[Any]) -> list[Any]:
        op, ctx = self._op(v)
        return await op.execute(ctx, inputs)

    def scope(self, v: Vertex) -> AbstractContextManager[object]:
        observer = self.solver.observer
        return nullcontext() if observer is None else observer.vertex_scope(self.job, v)

    def started(self, v: Vertex) -> None:
        self.job.progress.vertex(v.digest, v.name, [i.digest for i in v.inputs], cached=False, started=True,
                                 progress_group=v.progress_group)

    def completed(self, v: Vertex) -> None:
        self.job.progress.vertex(v.digest, v.name, [i.digest for i in v.inputs], completed=True)

    def cached(self, v: Vertex) -> None:
        self.job.progress.vertex(v.digest, v.name, [i.digest for i in v.inputs], cached=True, started=True,
                                 completed=True, progress_group=v.progress_group)

    def failed(self, v: Vertex, exc: BaseException) -> BaseException:
        err = _as_solve_error(exc, v)
        self.job.progress.vertex(v.digest, v.name, [i.digest for i in v.inputs], started=True,
                                 completed=True, error=str(err))
        return err

    async def remote_has(self, v: Vertex, cm: CacheMap, content: list[str | None] | None,
                         lookup: bool) -> bool:
        remote = self.job.remote_cache
        if remote is None:
            return False
        nodes = self._nodes[v.digest] = remote.nodes_for(v, cm, content)
        return lookup and remote.has(nodes)

    async def remote_load(self, v: Vertex) -> list[Any] | None:
        return await self.job.remote_cache.load(v, self._nodes[v.digest], self.job.progress)

    @property
    def eager(self) -> bool:
        remote = self.job.remote_cache
        return remote is not None and bool(remote.keep_results)

    @property
    def settle_outputs(self) -> bool:
        return self.solver.observer is not None

    async def settled(self, v: Vertex, facts: Settled) -> None:
        remote = self.job.remote_cache
        if remote is not None and facts.outputs is not None and v.digest in self._nodes:
            await remote.settled(self._nodes[v.digest], facts.outputs)
        observer = self.solver.observer
        if observer is not None:
            await observer.settled(self._step_facts(v, facts))

    async def settled_many(self, items: list[tuple[Vertex, Settled]]) -> None:
        remote = self.job.remote_cache
        if remote is not None:
            for v, facts in items:
                if facts.outputs is not None and v.digest in self._nodes:
                    await remote.settled(self._nodes[v.digest], facts.outputs)
        observer = self.solver.observer
        if observer is not None and items:
            await observer.settled_many(self.job, [self._step_facts(v, facts) for v, facts in items])

    def _step_facts(self, v: Vertex, facts: Settled) -> StepFacts:
        names = [self.graph.vertices[i.digest].name for i in v.inputs]
        return StepFacts(job=self.job, vertex=v, input_names=names, cache_map=facts.cache_map,
                         input_keys=facts.input_keys, inputs=facts.inputs, content=facts.content,
                         cached=facts.cached, lookup_skipped=facts.lookup_skipped,
                         op=self._ops[v.digest][0] if v.digest in self._ops else None, outputs=facts.outputs)


def _raised(results: list[str | Exception]) -> list[str]:
    for res in results:
        if isinstance(res, Exception):
            raise res
    return results  # type: ignore[return-value]


def _as_solve_error(exc: BaseException, v: Vertex) -> BuildkitpyError:
    if isinstance(exc, SolveError):
        err = SolveError(str(exc), vertex=exc.vertex or v.digest, sources=exc.sources or v.sources,
                         exit_code=exc.exit_code)
        err.grpc_code = exc.grpc_code
    elif isinstance(exc, BuildkitpyError):
        err = SolveError(str(exc), vertex=v.digest, sources=v.sources)
        err.grpc_code = exc.grpc_code
    elif isinstance(exc, BaseExceptionGroup):
        inner = exc.exceptions[0]
        return _as_solve_error(inner, v)
    elif isinstance(exc, OSError):
        err = SolveError(f"{v.name}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                         vertex=v.digest, sources=v.sources)
    else:
        err = SolveError(f"{v.name}: {internal_error(exc, v.name)}", vertex=v.digest, sources=v.sources)
    err.__cause__ = exc
    return err


__all__ = ["Build", "Canceled"]
