"""Stages built on stages (``FROM s0 AS s1`` / ``FROM s1``), with and without ONBUILD: each stage
inherits its base's state, environment, working directory and image config whatever the order the
stages are reached in (shapes checked against real BuildKit's results, see tests/e2e)."""

from __future__ import annotations

import json

import pytest

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.frontend.dockerfile.convert import convert

pytestmark = pytest.mark.anyio
AMD64 = llb.Platform("linux", "amd64")
BASE_DIGEST = "sha256:" + "a" * 64


async def resolve(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "OnBuild": None},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]},
    }
    return BASE_DIGEST, json.dumps(config).encode()


def execs(definition: ops_pb2.Definition) -> list[ops_pb2.ExecOp]:
    ops = [ops_pb2.Op.FromString(b) for b in getattr(definition, "def")]
    return [op.exec for op in ops if op.HasField("exec")]


async def build(dockerfile: str, **opts: str) -> tuple[list[ops_pb2.ExecOp], dict]:
    result = await convert(dockerfile.encode(), opts=opts, resolve_image=resolve, build_platform=AMD64)
    return execs(result.single.definition), json.loads(result.single.image_config)


async def test_three_chained_stages_inherit_everything() -> None:
    runs, img = await build(
        "FROM busybox AS s0\nENV A=0\nWORKDIR /w\nRUN echo 0\n"
        "FROM s0 AS s1\nENV B=1\nRUN echo 1\n"
        "FROM s1\nRUN echo 2\n"
    )
    assert [r.meta.args[-1] for r in runs] == ["echo 0", "echo 1", "echo 2"]
    assert runs[-1].meta.cwd == "/w"
    assert {"A=0", "B=1"} <= set(runs[-1].meta.env)
    assert img["config"]["WorkingDir"] == "/w"
    assert img["config"]["Env"][-2:] == ["A=0", "B=1"]


@pytest.mark.parametrize("depth", [3, 5, 12])
async def test_long_chains_of_stages(depth: int) -> None:
    lines = ["FROM busybox AS s0", "ENV S0=0"]
    for i in range(1, depth):
        lines += [f"FROM s{i - 1} AS s{i}", f"ENV S{i}={i}"]
    lines += [f"FROM s{depth - 1}", "RUN env"]
    runs, img = await build("\n".join(lines) + "\n")
    assert {f"S{i}={i}" for i in range(depth)} <= set(runs[0].meta.env)
    assert len(img["config"]["Env"]) == depth + 1


async def test_chain_of_scratch_stages() -> None:
    result = await convert(
        b"FROM scratch AS s0\nENV A=1\nFROM s0 AS s1\nFROM s1\nENV B=2\n",
        opts={},
        build_platform=AMD64,
    )
    assert json.loads(result.single.image_config)["config"]["Env"][-2:] == ["A=1", "B=2"]


async def test_onbuild_triggers_run_in_the_child_only() -> None:
    runs, img = await build(
        "FROM busybox AS p\nONBUILD RUN echo trigger\n"
        "FROM p AS c\nRUN echo child\n"
        "FROM c AS g\nRUN echo grandchild\n"
    )
    assert [r.meta.args[-1] for r in runs] == ["echo trigger", "echo child", "echo grandchild"]
    assert "OnBuild" not in img["config"]


async def test_onbuild_copy_from_another_stage_through_a_chain() -> None:
    result = await convert(
        b"FROM busybox AS x\nRUN echo x\nFROM busybox AS p\nONBUILD COPY --from=x /x /fromx\n"
        b"FROM p AS c\nFROM c\nRUN cat /fromx\n",
        opts={},
        resolve_image=resolve,
        build_platform=AMD64,
    )
    ops = [ops_pb2.Op.FromString(b) for b in getattr(result.single.definition, "def")]
    copies = [a.copy for op in ops if op.HasField("file") for a in op.file.actions if a.HasField("copy")]
    assert [(c.src, c.dest) for c in copies] == [("/x", "/fromx")]
    assert [r.meta.args[-1] for r in execs(result.single.definition)] == ["echo x", "cat /fromx"]


async def test_copy_from_the_end_of_a_chain_and_targets_inside_it() -> None:
    df = (
        "FROM busybox AS s0\nRUN echo a\nFROM s0 AS s1\nFROM s1 AS s2\nRUN echo c\n"
        "FROM busybox\nCOPY --from=s2 /a /b\n"
    )
    runs, _ = await build(df)
    assert [r.meta.args[-1] for r in runs] == ["echo a", "echo c"]
    runs, _ = await build(df, target="s1")
    assert [r.meta.args[-1] for r in runs] == ["echo a"]
