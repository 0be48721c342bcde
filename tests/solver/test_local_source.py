"""local:// sources over a real client session (gRPC over a unix socket), and the cache hit of
``COPY . /`` after a fresh upload of an unchanged context."""

from __future__ import annotations

import os
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from buildkitpy.api import ops_pb2
from buildkitpy.client.solve import dirs_shared_key
from buildkitpy.control import usage
from buildkitpy.errors import SolveError
from buildkitpy.progress import ProgressBus
from buildkitpy.session.client import ClientSession
from buildkitpy.session.filesync import FileSyncAttachable
from buildkitpy.session.secrets import SecretsAttachable
from buildkitpy.solver import Job
from buildkitpy.solver.ops import source as source_ops
from buildkitpy.solver.ops.local_reuse import SharedKeyIndex
from tests.session.conftest import start_daemon, stop_daemon
from tests.solver.conftest import describe
from tests.solver.llbutil import LLB, copy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def local(b: LLB, session_id: str, name: str = "ctx", **attrs: str) -> str:
    op = ops_pb2.Op(source=ops_pb2.SourceOp(identifier=f"local://{name}",
                                            attrs={"local.session": session_id, **attrs}))
    return b.add(op)


async def build_with_session(env, short_dir, ctx_dir, make_defn, secrets=None):  # noqa: ANN001, ANN201
    daemon = await start_daemon(f"{short_dir}/d.sock")
    env.worker.sessions = daemon.sessions
    try:
        attachables = [FileSyncAttachable({"ctx": ctx_dir})]
        if secrets is not None:
            attachables.append(SecretsAttachable(secrets))
        session = ClientSession(attachables)
        async with session.run(daemon.control):
            defn = make_defn(session.session_id)
            res = await env.solver.solve(defn, Job(id="j", progress=ProgressBus(),
                                                   session_ids=[session.session_id]))
            try:
                with res.ref.mount() as root:
                    return {p.relative_to(root).as_posix(): p.read_bytes()
                            for p in root.rglob("*") if p.is_file()}
            finally:
                res.ref.release()
    finally:
        await stop_daemon(daemon)


@pytest.mark.anyio
async def test_fresh_upload_of_unchanged_context_hits_cache(env, short_dir, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "a.txt").write_bytes(b"A")
    (ctx / "sub" / "b.txt").write_bytes(b"B")
    (ctx / "skip.log").write_bytes(b"no")

    def make(sid: str):  # noqa: ANN202
        b = LLB()
        src = local(b, sid, **{"local.excludepatterns": '["*.log"]'})
        c = b.file([copy("/", "/app", dirCopyContents=True, createDestPath=True)], inputs=[src])
        return b.definition(c), src, c

    holder = {}

    def defn(sid: str):  # noqa: ANN202
        d, src, c = make(sid)
        holder.update(src=src, copy=c)
        return d

    tree = await build_with_session(env, short_dir, ctx, defn)
    assert tree == {"app/a.txt": b"A", "app/sub/b.txt": b"B"}
    tree = await build_with_session(env, short_dir, ctx, defn)  # a new session: a fresh upload
    assert tree == {"app/a.txt": b"A", "app/sub/b.txt": b"B"}
    assert env.executed() == [holder["src"]]  # the copy hit the cache by content
    (ctx / "a.txt").write_bytes(b"changed")
    tree = await build_with_session(env, short_dir, ctx, defn)
    assert tree["app/a.txt"] == b"changed"
    assert sorted(env.executed()) == sorted([holder["src"], holder["copy"]])


@pytest.mark.anyio
async def test_unknown_session_and_scheme_fail_clearly(env, short_dir, tmp_path):
    b = LLB()
    img = b.add(ops_pb2.Op(source=ops_pb2.SourceOp(identifier="oci-layout://store/x")))
    with pytest.raises(SolveError, match="oci-layout:// scheme is not supported"):
        await env.solver.solve(b.definition(img), env.job())


# -- incremental transfers: the previous copy with the same shared key is reused ------------------


class Transfers:
    """One client session serving ``ctx``; ``build`` solves just the local source."""

    def __init__(self, env, session_id: str) -> None:  # noqa: ANN001
        self.env = env
        self.session_id = session_id

    async def build(self, **attrs: str):  # noqa: ANN201
        b = LLB()
        src = local(b, self.session_id, **attrs)
        res = await self.env.solver.solve(b.definition(src), Job(id=f"j{attrs}", progress=ProgressBus(),
                                                                 session_ids=[self.session_id]))
        try:
            with res.ref.mount() as root:
                tree = describe(root)
            own_layer = res.ref.layers()[-1]
            fetched = sorted(p.relative_to(own_layer).as_posix() for p in own_layer.rglob("*")
                             if p.is_file() and not p.is_symlink() and p.stat().st_size)
            return Built(res.ref.id, res.ref.parent_id, tree, fetched)
        finally:
            res.ref.release()


@dataclass
class Built:
    id: str
    parent_id: str | None
    tree: dict
    fetched: list[str]  # non-empty regular files in the snapshot's own layer (overlay mode)


@asynccontextmanager
async def serving(env, short_dir: str, ctx_dir: Path, shared_key: str = "node-1"):  # noqa: ANN001, ANN201
    daemon = await start_daemon(f"{short_dir}/d.sock")
    env.worker.sessions = daemon.sessions
    try:
        session = ClientSession([FileSyncAttachable({"ctx": ctx_dir})], shared_key=shared_key)
        async with session.run(daemon.control):
            yield Transfers(env, session.session_id)
    finally:
        await stop_daemon(daemon)


def make_context(ctx: Path) -> None:
    for i in range(50):
        (ctx / f"d{i // 10}").mkdir(parents=True, exist_ok=True)
        (ctx / f"d{i // 10}" / f"f{i}").write_bytes(b"x" * (100 + i))
    (ctx / "sub").mkdir()
    (ctx / "sub" / "inner").write_text("inner")


@pytest.mark.anyio
async def test_unchanged_and_changed_transfers_reuse_the_previous_copy(env, short_dir, tmp_path):
    ctx = tmp_path / "ctx"
    make_context(ctx)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("untouched")
    overlay = env.snapshots.mode == "overlay"
    async with serving(env, short_dir, ctx) as client:
        first = await client.build()
        assert first.parent_id is None and first.tree == describe(ctx)
        # Nothing changed: the same copy, and no snapshot was made (and discarded) for it, nor a
        # mount point (a directory entry made or removed there would give the directory a new mtime).
        made_here = [env.snapshots.root / "snapshots", env.snapshots.root / "mounts"]
        for d in made_here:
            os.utime(d, ns=(10**18, 10**18))
        second = await client.build()
        assert second.id == first.id and second.tree == describe(ctx)
        assert [d.stat().st_mtime_ns for d in made_here] == [10**18, 10**18]
        if overlay:
            assert len(first.fetched) == 51
        (ctx / "d1" / "f13").write_bytes(b"changed")
        (ctx / "d2" / "f20").unlink()
        shutil.rmtree(ctx / "sub")
        os.symlink(outside, ctx / "sub")  # a directory of the previous copy becomes a symlink out
        (ctx / "new").write_text("new")
        third = await client.build()
        assert third.parent_id == first.id and third.tree == describe(ctx)
        assert third.tree["sub"] == ("link", str(outside))
        if overlay:
            assert third.fetched == ["d1/f13", "new"]
        os.unlink(ctx / "sub")
        (ctx / "sub").mkdir()
        (ctx / "sub" / "precious").write_text("from the client")  # would land outside via the link
        fourth = await client.build()
        assert fourth.tree == describe(ctx)
    assert sorted(os.listdir(outside)) == ["precious"] and (outside / "precious").read_text() == "untouched"
    # results are copy-on-write: the earlier snapshots still hold their own trees
    with env.snapshots.get(first.id).mount() as root:
        assert describe(root) == first.tree
    assert env.mutables() == []


@pytest.mark.anyio
async def test_a_failed_transfer_onto_the_previous_copy_keeps_it_and_leaks_nothing(env, short_dir, tmp_path):
    ctx = tmp_path / "ctx"
    make_context(ctx)
    async with serving(env, short_dir, ctx) as client:
        first = await client.build()
        moved = tmp_path / "moved"
        ctx.rename(moved)  # the client cannot walk its directory: the transfer fails midway
        with pytest.raises(SolveError):
            await client.build()
        assert env.mutables() == []
        moved.rename(ctx)
        (ctx / "new").write_text("new")
        again = await client.build()
        assert again.parent_id == first.id and again.tree == describe(ctx)  # still the previous copy
        if env.snapshots.mode == "overlay":
            assert again.fetched == ["new"]
    with env.snapshots.get(first.id).mount() as root:
        assert "new" not in describe(root)
    assert env.mutables() == []


@pytest.mark.anyio
async def test_reuse_survives_a_restart_and_falls_back_after_prune(env, short_dir, tmp_path):
    ctx = tmp_path / "ctx"
    make_context(ctx)
    async with serving(env, short_dir, ctx) as client:
        first = await client.build()
    env.restart()
    (ctx / "d0" / "f0").write_bytes(b"changed")
    async with serving(env, short_dir, ctx) as client:
        second = await client.build()
        assert second.parent_id == first.id and second.tree == describe(ctx)
    env.restart()  # drops the solver's in-memory hold on the last results
    removed = usage.prune(env.worker, env.solver.cache, usage.PruneOptions(all=True))
    assert {first.id, second.id} <= {r.id for r in removed}
    async with serving(env, short_dir, ctx) as client:
        third = await client.build()
        assert third.parent_id is None and third.tree == describe(ctx)


@pytest.mark.anyio
async def test_keys_differ_none_and_deep_chains(env, short_dir, tmp_path, monkeypatch):
    ctx = tmp_path / "ctx"
    make_context(ctx)
    monkeypatch.setattr(source_ops, "MAX_REUSE_LAYERS", 2)
    async with serving(env, short_dir, ctx) as client:
        a = await client.build()
        other_hint = await client.build(**{"local.sharedkeyhint": "other"})
        assert other_hint.parent_id is None  # another key: no previous copy
        full = await client.build(**{"local.differ": "none"})
        assert full.parent_id is None and full.tree == describe(ctx)
        unchanged = await client.build()
        assert unchanged.id == full.id  # differ=none recorded its copy too
        (ctx / "d0" / "f1").write_bytes(b"changed")
        b = await client.build()
        assert b.parent_id == full.id
        (ctx / "d0" / "f2").write_bytes(b"changed")
        c = await client.build()  # b's chain has 2 layers: flattened into a fresh snapshot first
        assert c.parent_id is None and c.tree == describe(ctx)
        if env.snapshots.mode == "overlay":
            assert a.fetched and len(c.fetched) == 51  # a local copy, not a transfer: the tree is whole
        with pytest.raises(SolveError, match="local.differ"):
            await client.build(**{"local.differ": "content"})


@pytest.mark.anyio
async def test_concurrent_transfers_with_one_key_are_serialised(env, short_dir, tmp_path):
    ctx = tmp_path / "ctx"
    make_context(ctx)
    async with serving(env, short_dir, ctx) as client:
        initial = await client.build()
        (ctx / "d0" / "f0").write_bytes(b"changed")
        results: list[Built] = []

        async def one(unique: str) -> None:
            results.append(await client.build(**{"local.unique": unique}))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, str(i))
        assert all(r.tree == describe(ctx) for r in results)
        # the first fetched the change; the others waited, found nothing new and got its copy
        assert {(r.id, r.parent_id) for r in results} == {(results[0].id, initial.id)}
    assert env.mutables() == []


def describe_with_metadata(root: Path) -> dict[str, object]:
    """``describe`` plus every entry's permission bits and every file's mtime."""
    out: dict[str, object] = {}
    for rel, what in describe(root).items():
        st = os.lstat(root / rel)
        mtime = st.st_mtime_ns if isinstance(what, bytes) else None
        out[rel] = (what, st.st_mode & 0o7777, mtime)
    return out


SECOND = 1_000_000_000


@pytest.mark.anyio
async def test_sessions_without_a_shared_key_reuse_any_previous_copy_correctly(env, short_dir, tmp_path):
    """buildctl sends no shared key, so (as in BuildKit) its transfers sync against the last copy
    of the same name, whatever directory it came from; the result is still exactly the new tree."""
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        (d / "sub").mkdir(parents=True)
    fine = 1_700_000_000 * SECOND + 123_456_789

    def put(path: Path, data: bytes, mtime: int, mode: int = 0o644) -> None:
        path.write_bytes(data)
        path.chmod(mode)
        os.utime(path, ns=(mtime, mtime))

    for d in (one, two):  # the same file in both directories (like a copy with cp -a)
        put(d / "same", b"same contents", fine)
        put(d / "sub" / "same", b"same below", fine + 7)
    put(one / "coarse", b"AAAA", 1_600_000_000 * SECOND)  # same size and whole-second mtime,
    put(two / "coarse", b"BBBB", 1_600_000_000 * SECOND)  # other contents
    put(one / "mode", b"mode", fine)
    put(two / "mode", b"mode", fine, 0o755)
    put(one / "mtime", b"AAAA", fine)
    put(two / "mtime", b"BBBB", fine + 1)
    put(one / "content", b"short", fine)
    put(two / "content", b"longer contents", fine)
    put(one / "gone", b"only in one", fine)
    (one / "gonedir").mkdir()
    put(one / "gonedir" / "f", b"only in one", fine)
    put(two / "new", b"only in two", fine)
    async with serving(env, short_dir, one, "") as client:
        first = await client.build()
    assert first.parent_id is None and first.tree == describe(one)
    async with serving(env, short_dir, two, "") as client:
        second = await client.build()
    assert second.parent_id == first.id  # reused across sessions and directories
    with env.snapshots.get(second.id).mount() as root:
        assert describe_with_metadata(root) == describe_with_metadata(two)
    if env.snapshots.mode == "overlay":  # only what differs was fetched
        assert second.fetched == ["coarse", "content", "mode", "mtime", "new"]
    with env.snapshots.get(first.id).mount() as root:  # the first copy is untouched
        assert describe_with_metadata(root) == describe_with_metadata(one)
    async with serving(env, short_dir, one, "") as client:  # and back
        third = await client.build()
    assert third.parent_id == second.id and third.tree == describe(one)


@pytest.mark.anyio
async def test_other_shared_keys_never_mix(env, short_dir, tmp_path):
    """Same name, size, mode and mtime, other content: different keys never share a copy."""
    trees = {}
    for name, content in (("one", b"AAAA"), ("two", b"BBBB")):
        ctx = trees[name] = tmp_path / name
        ctx.mkdir()
        (ctx / "f").write_bytes(content)
        os.utime(ctx / "f", ns=(1_600_000_000_123_456_789,) * 2)
    key_one, key_two = dirs_shared_key({"ctx": trees["one"]}), dirs_shared_key({"ctx": trees["two"]})
    assert key_one and key_one != key_two
    async with serving(env, short_dir, trees["one"], key_one) as client:
        one = await client.build()
    async with serving(env, short_dir, trees["two"], key_two) as client:
        two = await client.build()
    assert one.tree == {"f": b"AAAA"} and two.tree == {"f": b"BBBB"}
    assert two.parent_id is None


@pytest.mark.anyio
async def test_claims_belong_to_their_index(tmp_path):
    """A key held on one worker's index does not hold up another worker (another root) with the
    same key; on its own index a second claim that will not wait gets False at once, and once the
    claim ends the key is free again and nothing is left behind."""
    one, other = SharedKeyIndex(tmp_path / "w1"), SharedKeyIndex(tmp_path / "w2")
    try:
        async with one.claim("k") as first:
            assert first
            async with other.claim("k", wait=False) as elsewhere:
                assert elsewhere
            async with one.claim("k", wait=False) as second:
                assert not second
        async with one.claim("k", wait=False) as again:
            assert again
        assert one._claims == {} and other._claims == {}
    finally:
        one.close()
        other.close()
