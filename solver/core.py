"""The solver core: cache keys first, results only when something needs their bytes.

This follows BuildKit's edge model (``solver/jobs.go``, ``edge.go``, ``cachemanager.go``) in two
phases per vertex, each a task of the build's task group that runs at most once per build:

- **keys**: wait for the inputs' keys, get the op's ``CacheMap`` and derive the vertex's keys, one
  ``CacheKey`` per output, from the cache-map digest and the inputs' keys -- no input result is
  loaded. Then look the keys up. Only when that misses and the op hashes input content (a COPY's
  source paths) are those inputs' results loaded, their checksums taken and the content-based
  ("slow") keys looked up. A hit is reported as cached at once.
- **result**: asked for only by a consumer that runs, by a checksum, or by the build's result. A hit
  is loaded from its storage (from a read-only layer: pulled, then recorded in the writable base);
  a miss waits for its inputs' results and runs the op.

So a hit at any depth skips everything below it: those vertices compute keys (cheap, no I/O beyond
the lookups) and nothing else. Each phase is its own task (no recursion), so chains of any length
work; the first failure cancels the build, and cancelling the caller cancels every task the build
started.

Identical work in concurrent builds runs once: ``SolverCore`` (one per solver) keeps the durable
key of every op being run; another build reaching the same key waits for it and then loads the
result from the storage instead of running the op. If the running build is cancelled or fails,
the waiter runs the op itself.

The core knows nothing about LLB, snapshots or progress: a ``Runtime`` supplies ops and events, and
result values are anything with ``clone()`` and ``release()`` (snapshot handles; plain test
doubles in ``tests/solver/test_scheduler_core.py``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from buildkitpy.solver.asyncutil import blocking, waiting_on_loop
from buildkitpy.solver.cachekey import CacheKey, CacheMap, OutputKeys
from buildkitpy.solver.cachestorage import CacheLink, CacheResult, CacheResultGone, CacheStorage


class CoreInput(Protocol):
    digest: str
    index: int


class CoreVertex(Protocol):
    digest: str
    name: str
    num_outputs: int

    @property
    def inputs(self) -> Sequence[CoreInput]: ...


@dataclass
class Settled:
    """What a vertex's cache decision was based on (for observers)."""

    cache_map: CacheMap
    input_keys: list[OutputKeys]
    inputs: list[Any]  # input values, None where not loaded (borrowed)
    content: list[str | None] | None  # per input: content checksum, when computed
    cached: bool
    lookup_skipped: bool
    outputs: list[Any] | None = None  # the vertex's values (borrowed), None when never loaded


class Runtime(Protocol):
    """The ops of one build and what the build reports."""

    async def cache_map(self, v: Any) -> CacheMap: ...

    def skip_lookup(self, v: Any, cm: CacheMap) -> bool:
        """No lookup at all (no-cache, ignore-cache, an op that always runs)."""

    async def checksum(self, v: Any, cm: CacheMap, index: int, value: Any) -> str:
        """The content checksum of input ``index`` over ``cm.deps[index].content``."""

    # Optional: ``async def checksum_many(self, items: list[tuple[Any, CacheMap, int, Any]])
    # -> list[str | Exception]``, the checksums of many ``(v, cm, index, value)`` at once (in one
    # worker-thread trip), each item's failure in its place.

    async def execute(self, v: Any, inputs: list[Any]) -> list[Any]:
        """Run the op (inputs borrowed); returns one new value per output (owned by the caller)."""

    def scope(self, v: Any) -> AbstractContextManager[object]:
        """Entered around running a vertex and around reporting a hit."""

    def started(self, v: Any) -> None: ...

    def completed(self, v: Any) -> None: ...

    def cached(self, v: Any) -> None: ...

    def failed(self, v: Any, exc: BaseException) -> BaseException:
        """Report a failure; returns the error the build fails with."""

    async def settled(self, v: Any, facts: Settled) -> None: ...

    # Optional: ``async def settled_many(self, items: list[tuple[Any, Settled]]) -> None``, the
    # vertices settling together below a hit (cached), in order, each in its own scope.

    async def remote_has(self, v: Any, cm: CacheMap, content: list[str | None] | None,
                         lookup: bool) -> bool:
        """Told every vertex's final cache map and checksums (inputs first); with ``lookup``, whether
        a remote cache outside the storages has the vertex's results (``remote_load`` gets them)."""

    async def remote_load(self, v: Any) -> list[Any] | None:
        """The vertex's outputs from that remote cache (new values), or None."""

    @property
    def eager(self) -> bool:
        """Load or run every vertex, also those below a hit (a build exporting its cache)."""

    @property
    def settle_outputs(self) -> bool:
        """Observers want the outputs of local hits below a hit (handles only: no bytes move)."""


@dataclass
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    ok: bool = False


class SolverCore:
    """Per solver: the writable cache storage, the parallelism limit and the ops in flight."""

    def __init__(self, storage: CacheStorage, limiter: Callable[[], anyio.CapacityLimiter]) -> None:
        self.storage = storage
        self.limiter = limiter
        self.flights: dict[str, _Flight] = {}  # durable key id -> the build running that op


class _Aborted(Exception):
    """A phase this task waited for failed; the build is being cancelled already."""


class _Once:
    __slots__ = ("done", "value", "failed", "_then")

    def __init__(self) -> None:
        # asyncio's own event (the daemon and the tests run on asyncio): anyio's wrapper cost a
        # tenth of a cached graph's time, made twice per vertex
        self.done = asyncio.Event()
        self.value: Any = None
        self.failed = False
        self._then: list[Callable[[_Once], None]] | None = None

    async def get(self) -> Any:
        await self.done.wait()
        if self.failed:
            raise _Aborted
        return self.value

    def then(self, fn: Callable[[_Once], None]) -> None:
        """``fn(self)`` once the phase is over (at once if it is)."""
        if self.done.is_set():
            fn(self)
        elif self._then is None:
            self._then = [fn]
        else:
            self._then.append(fn)

    def finish(self) -> None:
        self.done.set()
        then, self._then = self._then, None
        for fn in then or ():
            fn(self)


@dataclass
class _Keys:
    cm: CacheMap
    outputs: list[OutputKeys]
    input_keys: list[OutputKeys]
    skip: bool
    content: list[str | None] | None = None
    hit: dict[int, tuple[str, CacheResult]] | None = None  # output -> (key id in storage, result)
    hit_keys: list[CacheKey] | None = None  # the keys (one per output) that hit
    remote: bool = False  # the runtime's remote cache has the results


@dataclass(frozen=True)
class _Ref:
    digest: str
    index: int


class CoreBuild:
    """One build over a graph of vertices (digest -> vertex)."""

    def __init__(self, core: SolverCore, vertices: dict[str, Any], runtime: Runtime,
                 layers: Sequence[CacheStorage] = ()) -> None:
        self.core = core
        self.vertices = vertices
        self.runtime = runtime
        self.base = core.storage
        self.layers = list(layers)
        self.executed: list[str] = []  # digests whose op ran in this build
        self.error: BaseException | None = None
        self.result_keys: OutputKeys | None = None
        self._keys: dict[str, _Once] = {}
        self._results: dict[str, _Once] = {}
        self._held: list[Any] = []
        self._layer_ids: dict[tuple[str, str], list[str]] = {}
        self._pending: list[tuple[list[Any], asyncio.Event]] = []
        self._flushing = False
        self._sums: list[tuple[list[Any], asyncio.Event]] = []
        self._summing = False
        self._needed: dict[str, set[int]] = {}
        for v in vertices.values():
            for inp in v.inputs:
                self._needed.setdefault(inp.digest, set()).add(inp.index)

    async def run(self, result: CoreInput) -> Any:
        """The value of ``result`` (a new handle the caller releases)."""
        self._needed.setdefault(result.digest, set()).add(result.index)
        out: list[Any] = []
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg

                async def root() -> None:
                    if self.runtime.eager:  # everything loaded or run (an exporter of the build's
                        # cache sees every record, as the previous scheduler gave it)
                        for digest in self.vertices:
                            self._result(digest)
                    values = await self._result(result.digest).get()
                    keys = await self._key_phase(result.digest).get()
                    self.result_keys = keys.outputs[result.index]
                    out.append(values[result.index].clone())
                tg.start_soon(self._guard, root, None)
            if self.error is not None:
                raise self.error
            await self._settle_skipped()
            return out[0]
        finally:
            held, self._held = self._held, []
            if self.error is not None or not out:
                held.extend(out)
            _release(held)

    async def _settle_skipped(self) -> None:
        """Vertices whose result nobody needed (they sit below a hit) were not run: observers hear
        of them now, as cached. With ``settle_outputs``, hits in the local store come with their
        outputs (taking a handle moves no bytes; provenance lists their layers); results in layers
        or remote caches are never pulled for this."""
        skipped = [(self.vertices[d], once.value) for d, once in self._keys.items()
                   if d not in self._results and once.done.is_set() and not once.failed]
        local = [(v, keys) for v, keys in skipped
                 if self.runtime.settle_outputs and keys.hit is not None and self._local(keys)]
        outputs: dict[str, list[Any]] = {}

        def load() -> None:
            for v, keys in local:
                values: list[Any] = [None] * v.num_outputs
                try:
                    for o, (kid, res) in keys.hit.items():
                        values[o] = self.base.load(kid, res)
                except CacheResultGone:
                    pass
                self._held.extend(x for x in values if x is not None)
                if all(values[o] is not None for o in keys.hit):
                    outputs[v.digest] = values
        if local:
            await blocking(load)
        settled: list[tuple[Any, Settled]] = []
        for v, keys in skipped:
            if keys.remote or (keys.hit is not None and not self._local(keys)):
                self.runtime.cached(v)
            settled.append((v, self._facts(v, keys, cached=True, outputs=outputs.get(v.digest))))
        many = getattr(self.runtime, "settled_many", None)
        if many is not None:  # all in one go: observers hand the work of hundreds of vertices
            await many(settled)  # below a hit to their worker thread in one trip, not one each
        else:
            for v, facts in settled:
                with self.runtime.scope(v):
                    await self.runtime.settled(v, facts)

    # -- tasks -----------------------------------------------------------------------------------

    async def _guard(self, fn: Callable[[], Awaitable[None]], v: Any) -> None:
        try:
            await fn()
        except _Aborted:
            pass
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the build's error
            err = self.runtime.failed(v, exc) if v is not None else exc
            if self.error is None:
                self.error = err
            self._tg.cancel_scope.cancel()

    def _spawn(self, table: dict[str, _Once], digest: str,
               fn: Callable[[Any], Awaitable[Any]]) -> _Once:
        once = table.get(digest)
        if once is None:
            once = table[digest] = _Once()
            v = self.vertices[digest]

            async def task() -> None:
                try:
                    once.value = await fn(v)
                except BaseException:
                    once.failed = True
                    raise
                finally:
                    once.finish()
            self._tg.start_soon(self._guard, task, v, name=f"vertex {digest}")
        return once

    def _key_phase(self, digest: str) -> _Once:
        return self._spawn(self._keys, digest, self._compute_keys)

    def _result(self, digest: str) -> _Once:
        return self._spawn(self._results, digest, self._compute_result)

    # -- keys ------------------------------------------------------------------------------------

    async def _compute_keys(self, v: Any) -> _Keys:
        pending = [self._key_phase(inp.digest) for inp in v.inputs]
        cm = await self.runtime.cache_map(v)
        if len(cm.deps) != len(v.inputs):
            raise ValueError(f"internal error: cache map of {v.name} has {len(cm.deps)} deps for "
                             f"{len(v.inputs)} inputs")
        self._start_content_when_fresh(v, cm, pending)
        input_keys = [(await p.get()).outputs[inp.index] for p, inp in zip(pending, v.inputs, strict=True)]
        skip = self.runtime.skip_lookup(v, cm)
        n = v.num_outputs
        fresh = skip or any(ik.fresh and not dep.content for ik, dep in zip(input_keys, cm.deps, strict=True))
        fast_eph = cm.ephemeral or any(ik.primary.ephemeral for ik in input_keys)
        fast = [CacheKey(cm.digest, o, tuple((ik.primary, dep.selector)
                                             for ik, dep in zip(input_keys, cm.deps, strict=True)), fast_eph)
                for o in range(n)]
        fast_trusted = not cm.always_run and not any(ik.fresh for ik in input_keys)
        keys = _Keys(cm, [OutputKeys((k,), fresh) for k in fast], input_keys, skip)
        needed = sorted(self._needed.get(v.digest, ())) or [0]
        if not skip and fast_trusted and not fast_eph:
            keys.hit = await self._lookup(fast, needed)
            if keys.hit is not None:
                keys.hit_keys = fast
        multi = any(len(ik.keys) > 1 for ik in input_keys)
        if keys.hit is None and (multi or any(d.content for d in cm.deps)):
            keys.content = await self._content(v, cm)
            deps: list[tuple[CacheKey, str]] = []
            slow_eph, slow_trusted = cm.ephemeral, not cm.always_run
            for ik, dep, checksum in zip(input_keys, cm.deps, keys.content, strict=True):
                if checksum is not None:  # BuildKit's slow key: a root of the checksum, output -1
                    deps.append((CacheKey(checksum, -1), ""))
                else:
                    deps.append((ik.stable, dep.selector))
                    slow_eph |= ik.stable.ephemeral
                    slow_trusted &= not ik.fresh
            slow = [CacheKey(cm.digest, o, tuple(deps), slow_eph) for o in range(n)]
            if slow[0].id != fast[0].id:
                keys.outputs = [OutputKeys((f, s), fresh) for f, s in zip(fast, slow, strict=True)]
                if not skip and slow_trusted and not slow_eph:
                    keys.hit = await self._lookup(slow, needed)
                    if keys.hit is not None:
                        keys.hit_keys = slow
        lookup = keys.hit is None and not skip
        keys.remote = await self.runtime.remote_has(v, cm, keys.content, lookup) and lookup
        if keys.hit is not None and self._local(keys):
            # a hit in a layer or a remote cache is reported once loaded (a bad blob makes it run).
            # No scope here: the vertex's one scope (its span) is entered when it settles, loaded
            # or skipped below a hit, as BuildKit traces a cached vertex once.
            self.runtime.cached(v)
        return keys

    def _start_content_when_fresh(self, v: Any, cm: CacheMap, pending: list[_Once]) -> None:
        """A fresh input key (a local source: transferred every build) rules out the fast lookup,
        so the content of every content dep will be needed: their results start as soon as one
        input's key says so, not once the slowest input's key is known (a cached noop build's
        context transfer waited for the cache lookups of its base image's steps)."""
        content = [inp.digest for inp, dep in zip(v.inputs, cm.deps, strict=True) if dep.content]
        if not content:
            return

        def start(once: _Once, index: int) -> None:
            if not once.failed and once.value.outputs[index].fresh:
                for digest in content:
                    self._result(digest)
        for once, inp in zip(pending, v.inputs, strict=True):
            once.then(functools.partial(start, index=inp.index))

    def _local(self, keys: _Keys) -> bool:
        hit = keys.hit
        return hit is not None and all(res.source in ("", self.base.name) for _, res in hit.values())

    async def _content(self, v: Any, cm: CacheMap) -> list[str | None]:
        wanted = [self._result(inp.digest) if dep.content else None
                  for inp, dep in zip(v.inputs, cm.deps, strict=True)]
        out: list[str | None] = []
        for i, (once, inp) in enumerate(zip(wanted, v.inputs, strict=True)):
            if once is None:
                out.append(None)
                continue
            value = (await once.get())[inp.index]
            out.append(await self._checksum(v, cm, i, value))
        return out

    async def _checksum(self, v: Any, cm: CacheMap, index: int, value: Any) -> str:
        """The runtime's checksum; with ``checksum_many``, the checksums asked for while one batch
        is in a worker thread go together in the next (the COPYs of a cached graph all ask once
        the context arrives: one trip, not one each)."""
        many = getattr(self.runtime, "checksum_many", None)
        if many is None:
            return await self.runtime.checksum(v, cm, index, value)
        slot: list[Any] = [(v, cm, index, value), None]
        done = asyncio.Event()
        self._sums.append((slot, done))
        if not self._summing:
            self._summing = True
            self._tg.start_soon(self._flush_checksums, many)
        await done.wait()
        if isinstance(slot[1], Exception):
            raise slot[1]
        return slot[1]

    async def _flush_checksums(self, many: Callable[[list[Any]], Awaitable[list[Any]]]) -> None:
        try:
            while self._sums:
                await anyio.sleep(0)  # let the vertices that are ready now queue theirs
                batch, self._sums = self._sums, []
                try:
                    results = await many([slot[0] for slot, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each waiter fails with it
                    results = [exc] * len(batch)
                for (slot, done), res in zip(batch, results, strict=True):
                    slot[1] = res
                    done.set()
        finally:
            self._summing = False

    async def _lookup(self, keys: list[CacheKey],
                      outputs: list[int]) -> dict[int, tuple[str, CacheResult]] | None:
        """A result for every needed output, or None: the writable base by our own key ids, then the
        read-only layers by following links. Lookups made while one is in a worker thread are
        batched into the next trip (one query for the base), so a wide graph does not pay a thread
        hop and a query per vertex."""
        slot: list[Any] = [keys, outputs, None]
        done = asyncio.Event()
        self._pending.append((slot, done))
        if not self._flushing:
            self._flushing = True
            self._tg.start_soon(self._flush_lookups)
        await done.wait()
        return slot[2]

    async def _flush_lookups(self) -> None:
        try:
            while self._pending:
                await anyio.sleep(0)  # let the vertices that are ready now queue their lookups
                batch, self._pending = self._pending, []
                await blocking(self._lookup_batch, [slot for slot, _ in batch])
                for _, done in batch:
                    done.set()
        finally:
            self._flushing = False

    def _lookup_batch(self, slots: list[list[Any]]) -> None:
        ids = list({keys[o].id: None for keys, outputs, _ in slots for o in outputs})
        many = getattr(self.base, "results_many", None)
        if many is not None:
            base = many(ids)
        else:
            base = {kid: res for kid in ids if (res := self.base.results(kid))}
        for slot in slots:
            keys, outputs, _ = slot
            slot[2] = self._lookup_sync(keys, outputs, base)

    def _lookup_sync(self, keys: list[CacheKey], outputs: list[int],
                     base: dict[str, list[CacheResult]]) -> dict[int, tuple[str, CacheResult]] | None:
        found: dict[int, tuple[str, CacheResult]] = {}
        for o in outputs:
            key = keys[o]
            res = base.get(key.id)
            if res:
                found[o] = (key.id, res[0])
                continue
            for layer in self.layers:
                hit = next(((kid, r) for kid in self._ids_in(layer, key) for r in layer.results(kid)), None)
                if hit is not None:
                    found[o] = (hit[0], CacheResult(hit[1].id, hit[1].created, layer.name))
                    break
            else:
                return None
        return found

    def _ids_in(self, layer: CacheStorage, key: CacheKey) -> list[str]:
        """The ids ``key`` has in ``layer``: roots by their well-known id, others by walking the
        links from their inputs' ids (iteratively: key chains can be long)."""
        stack = [key]
        while stack:
            k = stack[-1]
            memo = (layer.name, k.id)
            if memo in self._layer_ids:
                stack.pop()
                continue
            if not k.deps:
                self._layer_ids[memo] = [k.id]
                stack.pop()
                continue
            missing = [d for d, _ in k.deps if (layer.name, d.id) not in self._layer_ids]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            matches: set[str] | None = None
            for i, (dk, sel) in enumerate(k.deps):
                link = CacheLink(i, k.output, k.digest, sel)
                srcs = self._layer_ids[(layer.name, dk.id)]
                targets = {t for src in srcs for t in layer.walk_links(src, link)}
                matches = targets if matches is None else matches & targets
                if not matches:
                    break
            self._layer_ids[memo] = sorted(matches or ())
        return self._layer_ids[(layer.name, key.id)]

    # -- results ---------------------------------------------------------------------------------

    async def _compute_result(self, v: Any) -> list[Any]:
        keys: _Keys = await self._key_phase(v.digest).get()
        if keys.hit is not None:
            local = self._local(keys)
            values = await self._load(v, keys)
            if values is not None:
                with self.runtime.scope(v):
                    if not local:
                        self.runtime.cached(v)
                    await self._settled(v, keys, cached=True, outputs=values)
                return values
        if keys.remote:
            values = await self.runtime.remote_load(v)
            if values is not None:
                self._held.extend(values)
                saved = [(k, values[o]) for o, ok in enumerate(keys.outputs) for k in ok.keys
                         if not k.ephemeral]
                if saved:
                    await blocking(self.base.save, *_save_entries([k for k, _ in saved],
                                                                  [x for _, x in saved]))
                with self.runtime.scope(v):
                    self.runtime.cached(v)
                    await self._settled(v, keys, cached=True, outputs=values)
                return values
        durable = [k for ok in keys.outputs for k in ok.keys if not k.ephemeral]
        flight_key = durable[0].id if durable and not keys.skip else None
        while flight_key is not None and (flight := self.core.flights.get(flight_key)) is not None:
            await flight.done.wait()
            if flight.ok:
                needed = sorted(self._needed.get(v.digest, ())) or [0]
                for ok_keys in zip(*(ok.keys for ok in keys.outputs), strict=False):
                    hit = await self._lookup(list(ok_keys), needed)
                    if hit is not None:
                        keys.hit, keys.hit_keys = hit, list(ok_keys)
                        values = await self._load(v, keys)
                        if values is not None:
                            with self.runtime.scope(v):
                                self.runtime.cached(v)
                                await self._settled(v, keys, cached=True, outputs=values)
                            return values
        flight = _Flight()
        if flight_key is not None:
            self.core.flights[flight_key] = flight
        try:
            values = await self._execute(v, keys, durable)
            flight.ok = True
            return values
        finally:
            if flight_key is not None:
                del self.core.flights[flight_key]
            flight.done.set()

    async def _load(self, v: Any, keys: _Keys) -> list[Any] | None:
        """The hit's values (None for outputs nobody needs), or None when a result is gone."""
        assert keys.hit is not None and keys.hit_keys is not None
        hit, hit_keys = keys.hit, keys.hit_keys
        storages = {s.name: s for s in (self.base, *self.layers)}
        values: list[Any] = [None] * v.num_outputs

        def load() -> None:
            for o, (kid, res) in hit.items():
                values[o] = storages[res.source or self.base.name].load(kid, res)
        try:
            # (a remote cache's load waits for its pull on the event loop)
            await waiting_on_loop(load)
        except CacheResultGone:
            _release([x for x in values if x is not None])
            keys.hit = keys.hit_keys = None
            return None
        self._held.extend(x for x in values if x is not None)
        # Keep it locally under every durable key it is now known by: a result pulled from a layer,
        # or found by its content key while the fast key missed, hits directly next time.
        save_keys: list[CacheKey] = []
        save_values: list[Any] = []
        for o, (_, res) in hit.items():
            remote = res.source not in ("", self.base.name)
            for k in keys.outputs[o].keys:
                if not k.ephemeral and (remote or k.id != hit_keys[o].id):
                    save_keys.append(k)
                    save_values.append(values[o])
        if save_keys:
            await blocking(self.base.save, *_save_entries(save_keys, save_values))
        return values

    async def _execute(self, v: Any, keys: _Keys, durable: list[CacheKey]) -> list[Any]:
        pending = [self._result(inp.digest) for inp in v.inputs]
        inputs = [(await p.get())[inp.index] for p, inp in zip(pending, v.inputs, strict=True)]
        with self.runtime.scope(v):
            async with self.core.limiter():
                self.runtime.started(v)
                outs = await self.runtime.execute(v, inputs)
            try:
                if len(outs) != v.num_outputs:
                    raise ValueError(f"internal error: {v.name} returned {len(outs)} outputs, expected "
                                     f"{v.num_outputs}")
                by_output = [[k for k in ok.keys if not k.ephemeral] for ok in keys.outputs]
                flat_keys = [k for o, ks in enumerate(by_output) for k in ks]
                flat_vals = [outs[o] for o, ks in enumerate(by_output) for _ in ks]
                if flat_keys:
                    await blocking(self.base.save, *_save_entries(flat_keys, flat_vals))
            except BaseException:
                _release(outs)
                raise
            self._held.extend(outs)
            self.executed.append(v.digest)
            self.runtime.completed(v)
            await self._settled(v, keys, cached=False, inputs=inputs, outputs=outs)
        return outs

    async def _settled(self, v: Any, keys: _Keys, *, cached: bool, inputs: list[Any] | None = None,
                       outputs: list[Any] | None = None) -> None:
        await self.runtime.settled(v, self._facts(v, keys, cached=cached, inputs=inputs, outputs=outputs))

    def _facts(self, v: Any, keys: _Keys, *, cached: bool, inputs: list[Any] | None = None,
               outputs: list[Any] | None = None) -> Settled:
        if inputs is None:
            inputs = [self._loaded(inp) for inp in v.inputs]
        return Settled(keys.cm, keys.input_keys, inputs, keys.content, cached, keys.skip, outputs)

    def _loaded(self, inp: CoreInput) -> Any:
        once = self._results.get(inp.digest)
        if once is None or not once.done.is_set() or once.failed:
            return None
        return once.value[inp.index]


def _save_entries(keys: list[CacheKey], values: list[Any]
                  ) -> tuple[list[tuple[str, CacheLink, str]], list[tuple[str, Any]]]:
    """The links making each key findable from its inputs' keys, and the results (BuildKit's
    ``ensurePersistentKey`` + ``AddResult``; the inputs' own links were saved with their results)."""
    links = list({(dk.id, CacheLink(i, k.output, k.digest, sel), k.id)
                  for k in keys for i, (dk, sel) in enumerate(k.deps)})
    return links, list(zip((k.id for k in keys), values, strict=True))


def _release(values: list[Any]) -> None:
    """Drop the handles here, on the event loop: a release is a reference count (the snapshot API
    promises it never blocks), and a worker-thread trip for it ended every build."""
    for x in values:
        if x is not None:
            x.release()


__all__ = ["CoreBuild", "Runtime", "Settled", "SolverCore"]
