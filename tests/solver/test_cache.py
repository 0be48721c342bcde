"""Cache behaviour, concurrency and cancellation against the real solver and snapshot manager."""

from __future__ import annotations

import anyio
import pytest

from buildkitpy.progress import ProgressBus
from buildkitpy.solver import Job
from tests.solver.llbutil import LLB, copy, mkdir, mkfile


def graph(data_a: bytes = b"A", data_b: bytes = b"B") -> tuple[LLB, dict[str, str]]:
    b = LLB()
    a = b.file([mkfile("/a", data_a)])
    bb = b.file([mkfile("/b", data_b)])
    ca = b.file([mkdir("/out", output=-1), copy("/a", "/out/a", input=1, secondary=0)], inputs=[a])
    cb = b.file([copy("/b", "/b", input=0, secondary=1)], inputs=[ca, bb])
    return b, {"a": a, "b": bb, "ca": ca, "cb": cb}


def cached_flags(job: Job) -> dict[str, bool]:
    async def collect() -> dict[str, bool]:
        job.progress.close()
        out: dict[str, bool] = {}
        async for msg in job.progress.subscribe():
            for v in msg.vertexes:
                if v.HasField("completed"):
                    out[v.digest] = v.cached
        return out
    return anyio.run(collect)


def test_second_solve_fully_cached(env):
    b, d = graph()
    defn = b.definition(d["cb"])
    first = env.tree(defn)
    assert sorted(env.executed()) == sorted(d.values())
    job = env.job()
    assert env.tree(defn, job) == first
    assert env.executed() == []
    flags = cached_flags(job)
    assert flags == {v: True for v in d.values()}


def test_changed_mkfile_reruns_only_dependants(env):
    b, d = graph()
    env.tree(b.definition(d["cb"]))
    b2, d2 = graph(data_b=b"B2")
    tree = env.tree(b2.definition(d2["cb"]))
    assert tree["b"] == b"B2"
    assert sorted(env.executed()) == sorted([d2["b"], d2["cb"]])


def test_content_checksum_hits_when_source_changes_but_selected_path_does_not(env):
    # The copy only selects /a; a new unrelated file in the source must not invalidate it.
    def build(extra: bytes) -> tuple[LLB, str, str]:
        b = LLB()
        src = b.file([mkfile("/a", b"same", output=-1), mkfile("/unrelated", extra, input=0)])
        c = b.file([copy("/a", "/a", createDestPath=True)], inputs=[src])
        return b, src, c
    b, _, c = build(b"1")
    env.tree(b.definition(c))
    b2, src2, c2 = build(b"2")
    assert c2 != c
    env.tree(b2.definition(c2))
    assert env.executed() == [src2]  # the copy was a content-checksum cache hit


def test_restart_keeps_cache(env):
    b, d = graph()
    defn = b.definition(d["cb"])
    first = env.tree(defn)
    env.restart()
    assert env.tree(defn) == first
    assert env.executed() == []


def test_no_cache_and_ignore_cache(env):
    b, d = graph()
    defn = b.definition(d["cb"])
    env.tree(defn)
    env.tree(defn, env.job(no_cache=True))
    assert sorted(env.executed()) == sorted(d.values())
    # ignore_cache on one vertex re-runs it and whatever consumes it without a content check
    b2 = LLB()
    base = b2.file([mkfile("/a", b"A")], ignore_cache=True)
    top = b2.file([mkfile("/t", b"t", input=0)], inputs=[base])
    env.tree(b2.definition(top))
    env.tree(b2.definition(top))
    assert sorted(env.executed()) == sorted([base, top])


def test_concurrent_identical_solves_execute_each_vertex_once(env):
    b, d = graph()
    defn = b.definition(d["cb"])
    executed: list[list[str]] = []

    async def main() -> None:
        from buildkitpy.solver.scheduler import Build

        original = Build.execute

        async def counting(self, v, *a, **kw):  # noqa: ANN001, ANN202 - observe, do not replace
            executed.append([v.digest])
            await anyio.sleep(0.05)
            return await original(self, v, *a, **kw)

        Build.execute = counting
        try:
            results = []

            async def one() -> None:
                results.append(await env.solver.solve(defn, Job(id="j", progress=ProgressBus())))

            async with anyio.create_task_group() as tg:
                tg.start_soon(one)
                tg.start_soon(one)
            for r in results:
                with r.ref.mount() as root:
                    assert (root / "b").read_bytes() == b"B"
                r.ref.release()
        finally:
            Build.execute = original

    anyio.run(main)
    flat = [x[0] for x in executed]
    assert sorted(flat) == sorted(d.values())  # each vertex ran once across both solves


def test_cancel_mid_solve_leaks_nothing(env):
    b = LLB()
    tips = []
    for i in range(12):
        x = b.file([mkfile(f"/f{i}", b"x" * 10, output=-1), mkdir(f"/d{i}", input=0)])
        tips.append(x)
    m = b.merge(tips)
    defn = b.definition(m)

    async def main() -> bool:
        job = env.job()
        async with anyio.create_task_group() as tg:
            async def solve() -> None:
                await env.solver.solve(defn, job)

            async def cancel_after_first_vertex() -> None:
                async for msg in job.progress.subscribe():
                    if any(v.HasField("completed") for v in msg.vertexes):
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(solve)
            tg.start_soon(cancel_after_first_vertex)
        return tg.cancel_scope.cancelled_caught

    assert anyio.run(main)  # the solve really was interrupted
    assert env.live_handles() == {}
    assert env.mutables() == []
    # and the solver still works afterwards
    assert len(env.tree(defn)) == 24
    assert env.live_handles() == {}


def test_failure_releases_everything(env):
    b = LLB()
    ok = b.file([mkfile("/a", b"A")])
    bad = b.file([copy("/missing", "/x")], inputs=[ok])
    m = b.merge([ok, bad])
    from buildkitpy.errors import SolveError
    with pytest.raises(SolveError) as ei:
        env.solve(b.definition(m))
    assert ei.value.vertex == bad
    assert env.live_handles() == {}
    assert env.mutables() == []
