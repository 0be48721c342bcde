"""Converter behaviour outside the recorded corpus: errors name the Dockerfile line, FROM scratch needs no
registry, options (target, platform, build args, labels) shape the result."""

from __future__ import annotations

import json

import pytest

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.frontend.dockerfile.convert import ConvertError, convert

pytestmark = pytest.mark.anyio
AMD64 = llb.Platform("linux", "amd64")


def ops(definition: ops_pb2.Definition) -> list[ops_pb2.Op]:
    return [ops_pb2.Op.FromString(b) for b in getattr(definition, "def")]


async def test_from_scratch_needs_no_resolver_and_records_history() -> None:
    df = b'FROM scratch\nENV A=1\nWORKDIR /app\nCOPY --chown=5 x y ./\nCMD ["run"]\n'
    result = await convert(df, opts={"label:team": "core"}, session_id="s1", build_platform=AMD64)
    img = json.loads(result.single.image_config)
    assert img["config"]["WorkingDir"] == "/app"
    assert img["config"]["Env"][-1] == "A=1"
    assert img["config"]["Labels"] == {"team": "core"}
    assert [h["created_by"] for h in img["history"]] == [
        "ENV A=1",
        "WORKDIR /app",
        "COPY --chown=5 x y ./ # buildkit",
        'CMD ["run"]',
    ]
    assert result.single.base_config is None
    names = [
        op.source.attrs.get("local.followpaths")
        for op in ops(result.single.definition)
        if op.HasField("source")
    ]
    assert names == ['["x","y"]']
    copies = [
        a.copy
        for op in ops(result.single.definition)
        if op.HasField("file")
        for a in op.file.actions
        if a.HasField("copy")
    ]
    assert [(c.src, c.dest, c.owner.user.byID) for c in copies] == [("/x", "/app/", 5), ("/y", "/app/", 5)]


async def test_registry_image_without_resolver_is_a_clear_error_on_its_line() -> None:
    with pytest.raises(ConvertError) as err:
        await convert(b"FROM scratch AS a\nFROM busybox\n", opts={}, build_platform=AMD64)
    assert "FROM busybox needs registry support" in str(err.value)
    assert err.value.lines == (2, 2)


async def test_unreachable_stages_are_not_resolved() -> None:
    df = b"FROM busybox AS unused\nFROM scratch AS wanted\nENV X=1\n"
    result = await convert(df, opts={"target": "wanted"}, build_platform=AMD64)
    assert json.loads(result.single.image_config)["config"]["Env"][-1] == "X=1"


@pytest.mark.parametrize(
    "dockerfile,opts,message,lines",
    [
        (b"FROM scratch\nCOPY --from=nope/x:1 a b\n", {}, "needs registry support", (2, 2)),
        (b"FROM scratch\nCOPY --from=$X a b\n", {}, "variable expansion is not supported for --from", (2, 2)),
        (b"FROM scratch\n\nENV A=${B:?missing}\n", {}, "missing", (3, 3)),
        (b"FROM scratch\nSTOPSIGNAL BOGUS\n", {}, "invalid signal", (2, 2)),
        (b"FROM scratch\nCOPY --chmod=999 a b\n", {}, "invalid chmod parameter", (2, 2)),
        (b"FROM scratch\nCOPY http://example.com/x /x\n", {}, "source can't be a URL for COPY", (2, 2)),
        (b"FROM scratch AS a\n", {"target": "b"}, 'target stage "b" could not be found', None),
        (
            b"FROM scratch AS first\nRUN --mount=type=bind,from=later,target=/m true\n"
            b"FROM scratch AS later\n",
            {"target": "first"},
            'cannot mount from stage "later"',
            (2, 2),
        ),
    ],
)
async def test_errors_name_the_cause_and_line(
    dockerfile: bytes, opts: dict, message: str, lines: tuple[int, int] | None
) -> None:
    with pytest.raises(ConvertError) as err:
        await convert(dockerfile, opts=opts, build_platform=AMD64)
    assert message in str(err.value)
    if lines is not None:
        assert err.value.lines == lines


async def test_platform_option_sets_target_args_and_image_platform() -> None:
    df = b"FROM scratch\nARG TARGETARCH\nARG BUILDARCH\nRUN echo $TARGETARCH\n"
    result = await convert(df, opts={"platform": "linux/arm64"}, build_platform=AMD64)
    one = result.single
    img = json.loads(one.image_config)
    assert (img["os"], img["architecture"]) == ("linux", "arm64")
    assert [h["created_by"] for h in img["history"][:2]] == ["ARG TARGETARCH=arm64", "ARG BUILDARCH=amd64"]
    (run,) = [op for op in ops(one.definition) if op.HasField("exec")]
    assert "TARGETARCH=arm64" in run.exec.meta.env
    assert run.platform.Architecture == "arm64"


async def test_multi_platform_prefixes_names() -> None:
    result = await convert(
        b"FROM scratch\nRUN true\n", opts={"platform": "linux/amd64,linux/arm64"}, build_platform=AMD64
    )
    assert result.multi_platform and [str(r.platform) for r in result.results] == [
        "linux/amd64",
        "linux/arm64",
    ]
    names = [md.description.get("llb.customname") for md in result.results[1].definition.metadata.values()]
    assert "[linux/arm64 1/1] RUN true" in names


async def test_build_arg_overrides_and_run_history_lists_args() -> None:
    df = b"FROM scratch\nARG V=default\nRUN echo $V\n"
    result = await convert(df, opts={"build-arg:V": "given"}, build_platform=AMD64)
    history = [h["created_by"] for h in json.loads(result.single.image_config)["history"]]
    assert history == ["ARG V=given", "RUN |1 V=given /bin/sh -c echo $V # buildkit"]
