"""Running one loaded LLB graph: every needed vertex once, inputs first, in parallel.

Each vertex gets a task in one anyio task group; a task waits for its inputs, computes the vertex's
cache keys, loads a cached result or runs the op (bounded by the solver's capacity limiter), and
publishes its outputs. The first failure cancels the whole group; cancelling the caller cancels
everything too. Every snapshot handle taken during the build is released at the end, except the
clone handed back as the result.

Identical work in concurrent builds (same cache key) runs once: the first build registers the key
in a process-wide in-flight map, the others wait for it and then load its result from the cache.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from buildkitpy.errors import BuildkitpyError, Canceled, SolveError, internal_error
from buildkitpy.snapshot.api import ImmutableSnapshot
from buildkitpy.solver.asyncutil import blocking, release_all
from buildkitpy.solver.cachekey import CacheMap, OutputKeys, VertexKey, compute_keys, output_keys
from buildkitpy.solver.loader import LoadedGraph, Vertex
from buildkitpy.solver.observe import StepFacts
from buildkitpy.solver.ops import OpContext, op_for

if TYPE_CHECKING:
    from buildkitpy.solver.solver import Job, Solver


@dataclass
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False


# (id of the snapshot manager, vertex cache key) -> the build currently producing it.
_IN_FLIGHT: dict[tuple[int, str], _Flight] = {}


@dataclass
class VertexOutputs:
    snapshots: list[ImmutableSnapshot]
    keys: list[OutputKeys]
    cached: bool


class Build:
    def __init__(self, solver: Solver, graph: LoadedGraph, job: Job) -> None:
        self.solver = solver
        self.graph = graph
        self.job = job
        self.outputs: dict[str, VertexOutputs] = {}
        self.done: dict[str, anyio.Event] = {d: anyio.Event() for d in graph.order}
        self.error: BaseException | None = None
        self.executed: list[str] = []  # digests whose op actually ran in this build (for tests/bench)

    async def run(self) -> ImmutableSnapshot | None:
        assert self.graph.result is not None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for dgst in self.graph.order:
                    tg.start_soon(self._run_vertex, self.graph.vertices[dgst], name=f"vertex {dgst}")
            if self.error is not None:
                raise self.error
            res = self.graph.result
            return await blocking(self.outputs[res.digest].snapshots[res.index].clone)
        finally:
            held = [s for out in self.outputs.values() for s in out.snapshots]
            self.outputs.clear()
            await release_all(held)

    # -- one vertex ------------------------------------------------------------------------------

    async def _run_vertex(self, v: Vertex) -> None:
        for inp in v.inputs:
            await self.done[inp.digest].wait()
        try:
            with self._observed(v):
                await self._solve_vertex(v)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the build's error
            err = _as_solve_error(exc, v)
            self.job.progress.vertex(v.digest, v.name, [i.digest for i in v.inputs], started=True,
                                     completed=True, error=str(err))
            if self.error is None:
                self.error = err
            self._tg.cancel_scope.cancel()
            return
        self.done[v.digest].set()

    async def _solve_vertex(self, v: Vertex) -> None:
        ctx = OpContext(worker=self.solver.worker, job=self.job, vertex=v, shared=self.solver)
        op = op_for(v)
        resolve = getattr(op, "resolve", None)
        if resolve is not None:  # sources whose cache key needs the network (http, git) look it up here
            await resolve(ctx)
        cm = op.cache_map(ctx)
        in_keys = [self.outputs[i.digest].keys[i.index] for i in v.inputs]
        in_snaps = [self.outputs[i.digest].snapshots[i.index] for i in v.inputs]
        skip_lookup = self.job.no_cache or v.ignore_cache or cm.always_run
        keys = compute_keys(cm, in_keys)
        content: list[str | None] | None = None
        hit: list[ImmutableSnapshot] | None = None
        if not skip_lookup:
            hit = await self._lookup(keys)
        if hit is None and (any(d.content for d in cm.deps) or any(len(k.keys) > 1 for k in in_keys)):
            content = await self._content_checksums(cm, in_snaps)
            keys = compute_keys(cm, in_keys, content)
            if not skip_lookup and len(keys) > 1:
                hit = await self._lookup(keys[1:])
        remote = self.job.remote_cache
        nodes = remote.nodes_for(v, cm, content) if remote is not None else []
        if hit is None and remote is not None and not skip_lookup:
            hit = await remote.load(v, nodes, self.job.progress)
        if hit is not None:
            self._publish(v, hit, keys, cached=True, fresh=False)
            if remote is not None:
                await remote.settled(nodes, hit)
            self.job.progress.vertex(v.digest, v.name, [i.digest for i in v.inputs], cached=True,
                                     started=True, completed=True, progress_group=v.progress_group)
            await blocking(self.solver.cache.record, [k.key for k in keys if not k.ephemeral], hit)
            await self._settled(v, cm, in_keys, in_snaps, content, cached=True, lookup_skipped=skip_lookup,
                                op=op, outputs=hit)
            return
        fresh = skip_lookup or any(inp.fresh and not dep.content
                                   for inp, dep in zip(in_keys, cm.deps, strict=True))
        outs, shared = await self._execute_once(v, op, ctx, in_snaps, keys)
        self._publish(v, outs, keys, cached=shared, fresh=fresh)
        if remote is not None:
            await remote.settled(nodes, outs)
        await self._settled(v, cm, in_keys, in_snaps, content, cached=shared, lookup_skipped=skip_lookup,
                            op=op, outputs=outs)

    def _publish(self, v: Vertex, snaps: list[ImmutableSnapshot], keys: list[VertexKey], *, cached: bool,
                 fresh: bool) -> None:
        out_keys = [output_keys(keys, i, fresh) for i in range(len(snaps))]
        self.outputs[v.digest] = VertexOutputs(snaps, out_keys, cached)

    async def _lookup(self, keys: list[VertexKey]) -> list[ImmutableSnapshot] | None:
        for k in keys:
            if k.trusted and not k.ephemeral:
                hit = await blocking(self.solver.cache.load, k.key)
                if hit is not None:
                    return hit
        return None

    async def _content_checksums(self, cm: CacheMap, snaps: list[ImmutableSnapshot]) -> list[str | None]:
        out: list[str | None] = []
        for dep, snap in zip(cm.deps, snaps, strict=True):
            if not dep.content:
                out.append(None)
                continue
            try:
                out.append(await blocking(self.solver.checksums.snapshot_checksum, snap, dep.content))
            except SolveError as exc:
                raise SolveError(f"failed to compute cache key: {exc}") from exc
        return out

    async def _execute_once(self, v: Vertex, op, ctx: OpContext, in_snaps: list[ImmutableSnapshot],  # noqa: ANN001
                            keys: list[VertexKey]) -> tuple[list[ImmutableSnapshot], bool]:
        """Run the op, unless a concurrent build is already producing the same key: then wait for
        it and take its result from the cache. Returns (outputs, produced_by_another_build)."""
        durable = [k for k in keys if not k.ephemeral]
        if not durable:
            return await self._execute(v, op, ctx, in_snaps, keys), False
        flight_key = (id(self.solver.worker.snapshots), durable[0].key)
        while True:
            flight = _IN_FLIGHT.get(flight_key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.ok:
                hit = await blocking(self.solver.cache.load, durable[0].key)
                if hit is not None:
                    self.job.progress.vertex(v.digest, v.name, [i.digest for i in v.inputs], cached=True,
                                             started=True, completed=True, progress_group=v.progress_group)
                    return hit, True
        flight = _Flight()
        _IN_FLIGHT[flight_key] = flight
        try:
            outs = await self._execute(v, op, ctx, in_snaps, keys)
            flight.ok = True
            return outs, False
        finally:
            del _IN_FLIGHT[flight_key]
            flight.done.set()

    async def _execute(self, v: Vertex, op, ctx: OpContext, in_snaps: list[ImmutableSnapshot],  # noqa: ANN001
                       keys: list[VertexKey]) -> list[ImmutableSnapshot]:
        inputs = [i.digest for i in v.inputs]
        async with self.solver.limiter:
            self.job.progress.vertex(v.digest, v.name, inputs, cached=False, started=True,
                                     progress_group=v.progress_group)
            outs = await op.execute(ctx, in_snaps)
        try:
            if len(outs) != v.num_outputs:
                raise SolveError(f"internal error: {v.kind} op returned {len(outs)} outputs, expected "
                                 f"{v.num_outputs}")
            await blocking(self.solver.cache.record, [k.key for k in keys if not k.ephemeral], outs)
        except BaseException:
            await release_all(outs)
            raise
        self.executed.append(v.digest)
        self.job.progress.vertex(v.digest, v.name, inputs, completed=True)
        return outs

    # -- observer hooks (solver/observe.py: tracing spans, why-a-step-rebuilt) --------------------

    def _observed(self, v: Vertex) -> AbstractContextManager[object]:
        observer = self.solver.observer
        return nullcontext() if observer is None else observer.vertex_scope(self.job, v)

    async def _settled(self, v: Vertex, cm: CacheMap, in_keys: list[OutputKeys],
                       in_snaps: list[ImmutableSnapshot], content: list[str | None] | None, *,
                       cached: bool, lookup_skipped: bool, op: object = None,
                       outputs: list[ImmutableSnapshot] | None = None) -> None:
        observer = self.solver.observer
        if observer is None:
            return
        names = [self.graph.vertices[i.digest].name for i in v.inputs]
        await observer.settled(StepFacts(job=self.job, vertex=v, input_names=names, cache_map=cm,
                                         input_keys=in_keys, inputs=in_snaps, content=content,
                                         cached=cached, lookup_skipped=lookup_skipped, op=op,
                                         outputs=outputs))


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
