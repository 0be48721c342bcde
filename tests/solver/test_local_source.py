"""local:// sources over a real client session (gRPC over a unix socket), and the cache hit of
``COPY . /`` after a fresh upload of an unchanged context."""

from __future__ import annotations

import pytest

from buildkitpy.api import ops_pb2
from buildkitpy.errors import SolveError
from buildkitpy.progress import ProgressBus
from buildkitpy.session.client import ClientSession
from buildkitpy.session.filesync import FileSyncAttachable
from buildkitpy.session.secrets import SecretsAttachable
from buildkitpy.solver import Job
from tests.session.conftest import start_daemon, stop_daemon
from tests.solver.llbutil import LLB, copy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def short_dir():  # noqa: ANN201 - unix socket paths are limited to 107 bytes
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="bkpy-s")
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
