"""The docker-image:// source through the real solver (LLB in, snapshot out)."""

from __future__ import annotations

import anyio
import pytest

import buildkitpy.solver.ops.source_image  # noqa: F401  (registers docker-image://; see the report)
from buildkitpy import llb
from buildkitpy.errors import InvalidArgument
from buildkitpy.progress import ProgressBus
from buildkitpy.solver import Job, Solver
from buildkitpy.worker import Worker

from .registryfixture import BUSYBOX


@pytest.fixture
def env(tmp_path, snapshots):
    worker = Worker(id="test", root=tmp_path / "state", snapshots=snapshots, sessions=None)
    solver = Solver(worker)
    yield solver
    solver.close()


def solve(solver, state, platform="linux/amd64"):
    job = Job(id="job", progress=ProgressBus())
    res = anyio.run(solver.solve, state.marshal(platform=platform), job)
    return res, job, solver.last_build.executed


def test_image_source_then_file_op(env, registry):
    digest = registry.pushed["test/layered:latest"]
    state = llb.image(f"{registry.host}/test/layered@{digest}").file(
        llb.mkfile("/added", 0o644, b"on top\n"))
    res, job, executed = solve(env, state)
    with res.ref.mount() as root:
        assert (root / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
        assert (root / "data/zstd").read_text() == "zstd layer\n"
        assert (root / "added").read_bytes() == b"on top\n"
    res.ref.release()
    assert len(executed) == 2
    # Digest-pinned: the second build is a pure cache hit (no pull, no file op).
    res, _, executed = solve(env, state)
    res.ref.release()
    assert list(executed) == []


def test_tag_reference_and_layer_limit(env, registry):
    res, job, _ = solve(env, llb.image(f"{registry.host}/test/layered:latest", layer_limit=1))
    with res.ref.mount() as root:
        assert (root / "data/gone").exists()  # only the base layer
        assert not (root / "data/zstd").exists()
    res.ref.release()


def test_platform_of_the_vertex_selects_the_manifest(env, registry):
    res, _, _ = solve(env, llb.image(f"{registry.host}/test/multi"), platform="linux/arm/v7")
    with res.ref.mount() as root:
        assert (root / "arch").read_text() == "armv7\n"
    res.ref.release()


def test_bad_identifier_is_invalid_argument(env):
    from buildkitpy.api import ops_pb2
    from buildkitpy.solver.ops.source_image import ImageSource

    op = ops_pb2.Op(source=ops_pb2.SourceOp(identifier="docker-image://UPPER/Case"))
    vertex = type("V", (), {"op": op})()
    with pytest.raises(InvalidArgument):
        ImageSource(vertex)
