"""The solver core on fake vertices doing arithmetic, in memory (BuildKit's scheduler_test.go way).

Every value is a reference-counted integer, so each test also checks that nothing leaks; every op
counts its runs and every storage load is recorded, so the tests see exactly what ran, what came
from the cache and what was never touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import anyio
import pytest

from buildkitpy.solver.cachekey import CacheKey, CacheMap, Dep, Selector, root_key_id
from buildkitpy.solver.cachestorage import CacheLink, CacheResult, CacheResultGone, InMemoryCacheStorage
from buildkitpy.solver.core import CoreBuild, Settled, SolverCore


class Refs(dict):
    def live(self) -> dict[str, int]:
        return {k: v for k, v in self.items() if v}


class Val:
    _ids = 0

    def __init__(self, n: int, refs: Refs, id: str | None = None) -> None:
        if id is None:
            Val._ids += 1
            id = f"v{Val._ids}"
        self.n, self.id, self._refs = n, id, refs
        refs[id] = refs.get(id, 0) + 1

    def clone(self) -> Val:
        return Val(self.n, self._refs, self.id)

    def release(self) -> None:
        assert self._refs[self.id] > 0, f"double release of {self.id}"
        self._refs[self.id] -= 1


@dataclass(frozen=True)
class In:
    digest: str
    index: int = 0


@dataclass
class V:
    """A fake vertex: ``fn`` maps input numbers to output numbers; ``op`` is its cache digest."""

    digest: str
    fn: Callable[[list[int]], list[int]]
    inputs: list[In] = field(default_factory=list)
    op: str = ""
    content: tuple[bool, ...] = ()  # per input: the key depends on the input's value, not its key
    num_outputs: int = 1
    delay: float = 0
    fail: bool = False
    name: str = ""
    always_run: bool = False  # like a local source: never looked up, its keys are fresh
    map_delay: float = 0  # its cache map takes this long (a source resolving over the network)

    def __post_init__(self) -> None:
        self.op = self.op or "sha256:" + hashlib.sha256(self.digest.encode()).hexdigest()
        self.name = self.name or self.digest


class Graph:
    def __init__(self) -> None:
        self.vertices: dict[str, V] = {}

    def add(self, digest: str, fn: Callable[[list[int]], list[int]], *inputs: str | In, **kw: object) -> str:
        ins = [i if isinstance(i, In) else In(i) for i in inputs]
        self.vertices[digest] = V(digest, fn, ins, **kw)  # type: ignore[arg-type]
        return digest

    def const(self, digest: str, n: int, **kw: object) -> str:
        return self.add(digest, lambda _: [n], op=f"sha256:const-{digest}-{n}", **kw)


class Runtime:
    def __init__(self, refs: Refs, no_cache: bool = False) -> None:
        self.refs = refs
        self.no_cache = no_cache
        self.ran: list[str] = []
        self.cached_: list[str] = []
        self.running: set[str] = set()
        self.cancelled: list[str] = []
        self.settled_: list[tuple[str, bool]] = []
        self.started_at: dict[str, float] = {}

    async def cache_map(self, v: V) -> CacheMap:
        if v.map_delay:
            await anyio.sleep(v.map_delay)
        content = v.content or (False,) * len(v.inputs)
        return CacheMap(v.op, [Dep(content=[Selector("/")] if c else None) for c in content],
                        always_run=v.always_run)

    def skip_lookup(self, v: V, cm: CacheMap) -> bool:
        return self.no_cache or cm.always_run

    async def checksum(self, v: V, cm: CacheMap, index: int, value: Val) -> str:
        return "sha256:" + hashlib.sha256(str(value.n).encode()).hexdigest()

    async def execute(self, v: V, inputs: list[Val]) -> list[Val]:
        self.started_at[v.digest] = anyio.current_time()
        self.running.add(v.digest)
        try:
            if v.delay:
                await anyio.sleep(v.delay)
            if v.fail:
                raise RuntimeError(f"{v.digest} failed")
            self.ran.append(v.digest)
            return [Val(n, self.refs) for n in v.fn([i.n for i in inputs])]
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(v.digest)
            raise
        finally:
            self.running.discard(v.digest)

    def scope(self, v: V) -> nullcontext[None]:
        return nullcontext()

    def started(self, v: V) -> None:
        pass

    def completed(self, v: V) -> None:
        pass

    def cached(self, v: V) -> None:
        self.cached_.append(v.digest)

    def failed(self, v: V, exc: BaseException) -> BaseException:
        return exc

    async def settled(self, v: V, facts: Settled) -> None:
        self.settled_.append((v.digest, facts.cached))

    async def remote_has(self, v: V, cm: CacheMap, content: list[str | None] | None, lookup: bool) -> bool:
        return False

    async def remote_load(self, v: V) -> list[Val] | None:
        return None

    eager = False
    settle_outputs = False


class CountingStorage(InMemoryCacheStorage):
    """An in-memory storage that records which keys had a result loaded."""

    def __init__(self, name: str = "memory", **kw: object) -> None:
        super().__init__(name, **kw)  # type: ignore[arg-type]
        self.loads: list[str] = []

    def load(self, key: str, result: CacheResult) -> object:
        self.loads.append(key)
        return super().load(key, result)


class Env:
    def __init__(self) -> None:
        self.refs = Refs()
        self.storage = CountingStorage()
        self.core = SolverCore(self.storage, lambda: self.limiter)
        self.limiter = anyio.CapacityLimiter(4)

    async def build(self, g: Graph, result: str | In, *, layers: tuple = (), no_cache: bool = False,
                    runtime: Runtime | None = None) -> tuple[int, Runtime, CoreBuild]:
        rt = runtime or Runtime(self.refs, no_cache)
        b = CoreBuild(self.core, g.vertices, rt, layers)
        val = await b.run(result if isinstance(result, In) else In(result))
        try:
            return val.n, rt, b
        finally:
            val.release()

    def solve(self, g: Graph, result: str | In, **kw: object) -> tuple[int, Runtime, CoreBuild]:
        return anyio.run(lambda: self.build(g, result, **kw))  # type: ignore[arg-type]

    def held_by_storage(self) -> int:
        return len(self.storage._values)

    def leaks(self) -> dict[str, int]:
        """References not owned by the storage."""
        live = self.refs.live()
        for held in self.storage._values.values():
            live[held.value.id] -= 1
        return {k: v for k, v in live.items() if v}


def add(xs: list[int]) -> list[int]:
    return [sum(xs)]


def mul(xs: list[int]) -> list[int]:
    out = 1
    for x in xs:
        out *= x
    return [out]


def chain(g: Graph, n: int, start: int = 1, prefix: str = "c") -> list[str]:
    """c0 = start, c{i} = c{i-1} + 1."""
    names = [g.const(f"{prefix}0", start)]
    for i in range(1, n):
        names.append(g.add(f"{prefix}{i}", lambda xs: [xs[0] + 1], names[-1]))
    return names


@pytest.fixture
def env() -> Env:
    return Env()


def test_computes_and_caches(env: Env) -> None:
    g = Graph()
    a, b = g.const("a", 2), g.const("b", 3)
    s = g.add("s", add, a, b)
    top = g.add("top", mul, s, b)
    n, rt, _ = env.solve(g, top)
    assert n == 15
    assert sorted(rt.ran) == ["a", "b", "s", "top"]
    assert env.leaks() == {}
    n, rt, _ = env.solve(g, top)
    assert n == 15 and rt.ran == []
    assert env.leaks() == {}


def test_a_hit_at_any_depth_skips_everything_below(env: Env) -> None:
    g = Graph()
    names = chain(g, 30)
    assert env.solve(g, names[-1])[0] == 30
    env.storage.loads.clear()
    # a new op over the cached chain: only it runs, only the chain's tip is loaded
    top = g.add("top", lambda xs: [xs[0] * 2], names[-1])
    n, rt, _ = env.solve(g, top)
    assert n == 60 and rt.ran == ["top"]
    tip_key = CacheKey(g.vertices[names[-1]].op, 0, ((_key_of(g, names[-2]), ""),)).id
    assert env.storage.loads == [tip_key]
    # the whole chain is reported cached (keys were looked up), nothing below the tip was loaded
    assert set(rt.cached_) == set(names)
    assert env.leaks() == {}


def _key_of(g: Graph, digest: str) -> CacheKey:
    v = g.vertices[digest]
    if not v.inputs:
        return CacheKey(v.op)
    return CacheKey(v.op, 0, tuple((_key_of(g, i.digest), "") for i in v.inputs))


def test_a_hit_in_the_middle_only_runs_what_is_above(env: Env) -> None:
    g = Graph()
    names = chain(g, 10)
    env.solve(g, names[4])  # c0..c4 cached
    env.storage.loads.clear()
    n, rt, _ = env.solve(g, names[-1])
    assert n == 10
    assert rt.ran == names[5:]
    assert env.storage.loads == [_key_of(g, names[4]).id]


def test_partial_hits_after_changing_one_input(env: Env) -> None:
    g = Graph()
    x, y = g.const("x", 1), g.const("y", 10)
    xa = g.add("xa", lambda v: [v[0] + 1], x)
    ya = g.add("ya", lambda v: [v[0] + 1], y)
    top = g.add("top", add, xa, ya)
    assert env.solve(g, top)[0] == 13
    g.const("y", 20)  # same vertex digest, new op: like a changed file
    n, rt, _ = env.solve(g, top)
    assert n == 23
    assert sorted(rt.ran) == ["top", "y", "ya"]  # x and xa came from the cache
    assert env.leaks() == {}


def test_content_keys_hit_when_an_input_changes_but_its_value_does_not(env: Env) -> None:
    g = Graph()
    src = g.add("src", lambda _: [7], op="sha256:session-1")
    use = g.add("use", lambda v: [v[0] * 3], src, content=(True,))
    assert env.solve(g, use)[0] == 21
    g.add("src", lambda _: [7], op="sha256:session-2")  # new key, same content
    n, rt, _ = env.solve(g, use)
    assert n == 21 and rt.ran == ["src"]
    # the hit was recorded under the new fast key too: no checksum (no load of src) needed now
    env.storage.loads.clear()
    n, rt, _ = env.solve(g, use)
    assert n == 21 and rt.ran == []
    assert env.storage.loads == [_key_of(g, use).id]
    g.add("src", lambda _: [8], op="sha256:session-3")  # new content
    n, rt, _ = env.solve(g, use)
    assert n == 24 and rt.ran == ["src", "use"]


def test_multiple_outputs_and_selecting_one(env: Env) -> None:
    g = Graph()
    a = g.const("a", 5)
    split = g.add("split", lambda v: [v[0] // 2, v[0] % 2], a, num_outputs=2)
    top = g.add("top", lambda v: [v[0] * 100 + v[1]], In(split, 0), In(split, 1))
    assert env.solve(g, top)[0] == 201
    assert env.solve(g, In(split, 1))[0] == 1
    n, rt, _ = env.solve(g, top)
    assert n == 201 and rt.ran == []
    assert env.leaks() == {}


def test_a_failing_vertex_fails_the_build_and_keeps_what_finished(env: Env) -> None:
    g = Graph()
    ok = g.const("ok", 1)
    slow = g.add("slow", lambda v: v, ok, delay=5)
    bad = g.add("bad", add, ok, fail=True)
    top = g.add("top", add, slow, bad)
    rt = Runtime(env.refs)
    with pytest.raises(RuntimeError, match="bad failed"):
        anyio.run(lambda: env.build(g, top, runtime=rt))
    assert rt.cancelled == ["slow"]  # its sibling was stopped, not waited for
    assert env.leaks() == {}
    g.add("bad", add, ok, fail=False)
    g.add("slow", lambda v: v, ok)
    n, rt, _ = env.solve(g, top)
    assert n == 2
    assert sorted(rt.ran) == ["bad", "slow", "top"]  # "ok" was kept from the failed build


def test_identical_vertices_run_once_across_concurrent_builds(env: Env) -> None:
    g1, g2 = Graph(), Graph()
    for g in (g1, g2):
        base = g.add("base", lambda _: [4], delay=0.2)
        g.add("mid", lambda v: [v[0] + 1], base, delay=0.1)
    g1.add("top1", lambda v: [v[0] * 2], "mid")
    g2.add("top2", lambda v: [v[0] * 3], "mid")
    runtimes = [Runtime(env.refs), Runtime(env.refs)]
    got: dict[str, int] = {}

    async def main() -> None:
        async def one(g: Graph, top: str, rt: Runtime) -> None:
            got[top] = (await env.build(g, top, runtime=rt))[0]
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, g1, "top1", runtimes[0])
            tg.start_soon(one, g2, "top2", runtimes[1])
    anyio.run(main)
    assert got == {"top1": 10, "top2": 15}
    ran = runtimes[0].ran + runtimes[1].ran
    assert sorted(ran) == ["base", "mid", "top1", "top2"]  # base and mid ran once in all
    assert env.core.flights == {}
    assert env.leaks() == {}


def test_cancelling_a_build_stops_everything_it_started(env: Env) -> None:
    g = Graph()
    a = g.add("a", lambda _: [1], delay=30)
    b = g.add("b", lambda _: [2], delay=30)
    top = g.add("top", add, a, b)
    rt = Runtime(env.refs)

    async def main() -> None:
        with anyio.move_on_after(0.3):
            await env.build(g, top, runtime=rt)
        assert rt.running == set()
    anyio.run(main)
    assert sorted(rt.cancelled) == ["a", "b"]
    assert rt.ran == []
    assert env.core.flights == {}
    assert env.leaks() == {}


def test_a_build_waiting_on_a_cancelled_build_runs_the_op_itself(env: Env) -> None:
    g = Graph()
    slow = g.add("slow", lambda _: [6], delay=0.5)
    top = g.add("top", lambda v: [v[0] + 1], slow)
    first, second = Runtime(env.refs), Runtime(env.refs)
    got: list[int] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            async def cancelled() -> None:
                with anyio.move_on_after(0.2):
                    await env.build(g, top, runtime=first)

            async def waiting() -> None:
                await anyio.sleep(0.05)  # the first build owns "slow" by now
                got.append((await env.build(g, top, runtime=second))[0])
            tg.start_soon(cancelled)
            tg.start_soon(waiting)
    anyio.run(main)
    assert got == [7]
    assert first.cancelled == ["slow"] and first.ran == []
    assert sorted(second.ran) == ["slow", "top"]
    assert env.leaks() == {}


def test_no_cache_runs_everything(env: Env) -> None:
    g = Graph()
    names = chain(g, 3)
    env.solve(g, names[-1])
    n, rt, _ = env.solve(g, names[-1], no_cache=True)
    assert n == 3 and rt.ran == names


def test_a_result_that_is_gone_is_a_miss(env: Env) -> None:
    g = Graph()
    names = chain(g, 4)
    env.solve(g, names[-1])
    # the tip's result disappears (pruned): the tip runs again, from its input's cached result
    tip = _key_of(g, names[-1]).id
    env.storage._results[tip].clear()
    n, rt, _ = env.solve(g, names[-1])
    assert n == 4 and rt.ran == [names[-1]]

    class Broken(CountingStorage):
        def load(self, key: str, result: CacheResult) -> object:
            raise CacheResultGone("blob missing")
    broken = Broken("broken")
    broken.add_result(_key_of(g, names[0]).id, Val(1, env.refs))
    broken.readonly = True
    env2 = Env()
    env2.refs = env.refs
    n, rt, _ = anyio.run(lambda: env2.build(g, names[-1], layers=(broken,)))
    assert n == 4 and rt.ran == names
    broken.release_all()


def test_a_read_only_layer_with_its_own_ids_supplies_hits(env: Env) -> None:
    """A remote cache knows keys by its own record ids, found by links from the root keys; only the
    result that is needed is loaded, and it is then kept in the writable base."""
    g = Graph()
    names = chain(g, 5)
    remote = CountingStorage("remote")
    prev = root_key_id(g.vertices[names[0]].op, 0)
    for i, name in enumerate(names[1:], 1):
        rec = f"record-{i}"
        remote.add_link(prev, CacheLink(0, 0, g.vertices[name].op, ""), rec)
        remote.add_result(rec, Val(i + 1, env.refs))
        prev = rec
    remote.readonly = True
    top = g.add("top", lambda v: [v[0] * 10], names[-1])
    n, rt, _ = anyio.run(lambda: env.build(g, top, layers=(remote,)))
    assert n == 50
    assert rt.ran == ["top"]  # c0 is not in the remote cache, but nothing needs its bytes
    assert sorted(rt.settled_) == sorted([(n, True) for n in names] + [("top", False)])
    assert remote.loads == ["record-4"]
    # now local: the next build without the layer only runs the new top
    assert env.storage.results(_key_of(g, names[-1]).id)
    n, rt, _ = env.solve(g, top)
    assert n == 50 and rt.ran == []
    remote.release_all()


def test_long_chains_do_not_recurse(env: Env) -> None:
    g = Graph()
    names = chain(g, 3000)
    assert env.solve(g, names[-1])[0] == 3000
    n, rt, _ = env.solve(g, names[-1])
    assert n == 3000 and rt.ran == []


def test_a_fresh_content_input_runs_while_the_other_inputs_keys_are_still_being_computed(env: Env) -> None:
    """A COPY from a local source (always run, fresh keys) onto a base whose key takes time: the
    fast key cannot be trusted once the source's key is fresh, so the source's content is needed
    whatever the base's key turns out to be, and its transfer starts at once."""
    g = Graph()
    base = g.const("base", 1, map_delay=0.3)
    src = g.add("src", lambda _: [5], always_run=True)
    copy = g.add("copy", add, base, src, content=(False, True))

    async def run() -> tuple[int, Runtime, float]:
        started = anyio.current_time()
        n, rt, _ = await env.build(g, copy)
        return n, rt, started

    for _ in range(2):  # cold, then with base and copy cached (the source always runs)
        n, rt, started = anyio.run(run)
        assert n == 6
        assert rt.started_at["src"] - started < 0.15, "the source waited for the base's key"
    assert rt.ran == ["src"]
    assert env.leaks() == {}
