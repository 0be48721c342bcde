"""Tag cache keys and the resolve modes (default, pull, local) of docker-image:// sources, through the
real solver against a real registry whose tags move (and which is stopped to prove who asks it)."""

from __future__ import annotations

import anyio
import pytest

import buildkitpy.solver.ops.source_image  # noqa: F401  (registers docker-image://)
from buildkitpy import llb
from buildkitpy.errors import BuildkitpyError, InvalidArgument
from buildkitpy.image.platforms import Platform
from buildkitpy.progress import ProgressBus
from buildkitpy.solver import Job, Solver
from buildkitpy.solver.ops.source_image import resolve_image_config
from buildkitpy.worker import Worker

from .conftest import _need_registry
from .registryfixture import TarBuilder, start_registry

AMD64 = Platform("linux", "amd64")


@pytest.fixture
def moving(tmp_path):
    """A registry of its own (its tags move, and some tests stop it)."""
    _need_registry()
    reg = start_registry(tmp_path / "registry")
    yield reg
    reg.stop()


@pytest.fixture
def solver(tmp_path, snapshots):
    worker = Worker(id="test", root=tmp_path / "state", snapshots=snapshots, sessions=None)
    s = Solver(worker)
    yield s
    s.close()


def push_version(reg, version: str, repo: str = "app/moving", tag: str = "latest") -> str:
    layer = TarBuilder().add("version", data=f"{version}\n".encode()).bytes()
    digest, _ = reg.push_image(repo, tag, [(layer, "gzip")])
    return digest


def build(solver, ref: str, mode: str | None = None) -> tuple[str, list[str]]:
    """(content of /version on top of the image, vertices executed)."""
    state = llb.image(ref, resolve_mode=mode).file(llb.mkfile("/marker", 0o644, b"x"))
    job = Job(id="job", progress=ProgressBus())
    res = anyio.run(solver.solve, state.marshal(platform="linux/amd64"), job)
    try:
        with res.ref.mount() as root:
            version = (root / "version").read_text().strip()
    finally:
        res.ref.release()
    return version, list(solver.last_build.executed)


def test_rebuild_from_unmoved_tag_is_cached_and_moved_tag_is_not(solver, moving):
    ref = f"{moving.host}/app/moving:latest"
    push_version(moving, "v1")
    version, executed = build(solver, ref)
    assert version == "v1" and len(executed) == 2
    version, executed = build(solver, ref)
    assert version == "v1" and executed == []  # the tag resolved to the same digest: all cached
    push_version(moving, "v2")
    version, executed = build(solver, ref)
    assert version == "v2" and len(executed) == 2  # the tag moved: new key, new pull, file op rerun
    # A digest-pinned reference to what the tag names now shares the tag's cache key.
    pinned = f"{moving.host}/app/moving@{moving.pushed['app/moving:latest']}"
    version, executed = build(solver, pinned)
    assert version == "v2" and executed == []


def test_local_uses_what_the_tag_last_resolved_to_pull_and_default_ask_the_registry(solver, moving):
    ref = f"{moving.host}/app/moving:latest"
    push_version(moving, "v1")
    assert build(solver, ref)[0] == "v1"
    push_version(moving, "v2")
    assert build(solver, ref, "local")[0] == "v1"  # the registry is not asked
    assert build(solver, ref, "pull")[0] == "v2"
    assert build(solver, ref, "local")[0] == "v2"  # the pull recorded the tag's new digest
    push_version(moving, "v3")
    assert build(solver, ref)[0] == "v3"  # default asks the registry first
    # local falls back to the registry for a tag never resolved here (BuildKit's "prefer local")
    push_version(moving, "other", repo="app/other")
    assert build(solver, f"{moving.host}/app/other:latest", "local")[0] == "other"


def test_without_the_registry(solver, moving):
    ref = f"{moving.host}/app/moving:latest"
    push_version(moving, "v1")
    assert build(solver, ref)[0] == "v1"
    moving.stop()
    # default: the registry fails, what the tag last resolved to is used
    assert build(solver, ref, "default")[0] == "v1"
    assert build(solver, ref, "local")[0] == "v1"
    # pull: the registry is required and its failure is reported
    with pytest.raises(BuildkitpyError, match=moving.host):
        build(solver, ref, "pull")
    # a tag never resolved here cannot be found without the registry, in any mode
    for mode in ("default", "local"):
        with pytest.raises(BuildkitpyError, match=f"{moving.host}.*app/never"):
            build(solver, f"{moving.host}/app/never:v1", mode)


def test_resolve_image_config_honours_resolve_mode(solver, moving):
    ref = f"{moving.host}/app/moving:latest"
    first = push_version(moving, "v1")
    worker = solver.worker
    assert anyio.run(resolve_image_config, worker, ref, AMD64, [], "").digest == first
    second = push_version(moving, "v2")
    assert anyio.run(resolve_image_config, worker, ref, AMD64, [], "local").digest == first
    assert anyio.run(resolve_image_config, worker, ref, AMD64, [], "pull").digest == second
    assert anyio.run(resolve_image_config, worker, ref, AMD64, [], "local").digest == second
    with pytest.raises(InvalidArgument, match="ResolveMode 'sometimes'"):
        anyio.run(resolve_image_config, worker, ref, AMD64, [], "sometimes")


def test_unknown_resolve_mode_attr_is_invalid(solver, moving):
    from buildkitpy.api import ops_pb2
    from buildkitpy.solver.ops.source_image import ImageSource

    op = ops_pb2.Op(source=ops_pb2.SourceOp(identifier=f"docker-image://{moving.host}/a/b:c",
                                            attrs={"image.resolvemode": "never"}))
    with pytest.raises(InvalidArgument, match="image.resolvemode.*'never'"):
        ImageSource(type("V", (), {"op": op})())
