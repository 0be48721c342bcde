"""Named contexts beyond ``local:``: the LLB BuildKit's dockerui emits for ``docker-image://`` and
``input:`` contexts (namedcontext.go), how names are matched, and the kinds we refuse."""

from __future__ import annotations

import json

import pytest

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.frontend.dockerfile.convert import ConvertError, NamedContext, convert
from buildkitpy.frontend.dockerfile.convert_named import context_name, input_image_config
from buildkitpy.frontend.dockerfile.errors import DockerfileError

pytestmark = pytest.mark.anyio
AMD64 = llb.Platform("linux", "amd64")
CONFIG = {"architecture": "amd64", "os": "linux", "created": "2020-01-01T00:00:00Z",
          "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": ["sh"], "WorkingDir": "/work"},
          "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}}
DIGEST = "sha256:" + "2" * 64


def ops(definition: ops_pb2.Definition) -> list[ops_pb2.Op]:
    return [ops_pb2.Op.FromString(b) for b in getattr(definition, "def")]


class Resolver:
    """Answers every image with CONFIG and records what was asked (the registry is tested e2e)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, ref: str, platform: llb.Platform) -> tuple[str, bytes]:
        self.asked.append(ref)
        return DIGEST, json.dumps(CONFIG).encode()


async def run(df: str, contexts: dict[str, NamedContext], resolver: Resolver | None = None):  # noqa: ANN201
    return (await convert(df.encode(), opts={}, resolve_image=resolver or Resolver(), named_contexts=contexts,
                          build_platform=AMD64)).single


@pytest.mark.parametrize("name,expected", [
    ("alpine", "alpine"), ("docker.io/library/alpine:latest", "alpine"), ("alpine:3", "alpine:3"),
    ("docker.io/org/img:latest", "org/img"), ("127.0.0.1:5000/x/y:v1", "127.0.0.1:5000/x/y:v1"),
])
def test_context_name_is_the_familiar_name_without_latest(name: str, expected: str) -> None:
    assert context_name(name) == expected


async def test_from_name_resolves_to_the_image_with_its_config() -> None:
    resolver = Resolver()
    res = await run("FROM base\nRUN echo hi\n",
                    {"base": NamedContext("docker-image://127.0.0.1:5000/app/base:v1")}, resolver)
    assert resolver.asked == ["127.0.0.1:5000/app/base:v1"]
    all_ops = ops(res.definition)
    [src] = [op for op in all_ops if op.HasField("source")]
    # llb.Image(ref) with only a name and the platform: the tag, not the resolved digest
    assert src.source.identifier == "docker-image://127.0.0.1:5000/app/base:v1"
    assert (src.platform.OS, src.platform.Architecture) == ("linux", "amd64")
    dgst = llb.vertex.digest_of(getattr(res.definition, "def")[0])
    md = res.definition.metadata[dgst]
    assert dict(md.description) == {"llb.customname": "[context base] 127.0.0.1:5000/app/base:v1"}
    assert not res.definition.Source.locations[dgst].locations
    [ex] = [op.exec for op in all_ops if op.HasField("exec")]
    assert "FROM_IMAGE=yes" in ex.meta.env and ex.meta.cwd == "/work"
    img = json.loads(res.image_config)
    assert img["config"]["Cmd"] == ["sh"] and "created" not in img
    base = json.loads(res.base_config)  # dockerui drops "created" before the converter copies it
    assert base["config"]["Cmd"] == ["sh"] and "created" not in base


async def test_copy_from_name_and_platform_specific_key_wins() -> None:
    contexts = {"other": NamedContext("docker-image://example.com/plain:v1"),
                "other::linux/amd64": NamedContext("docker-image://example.com/amd:v1")}
    res = await run("FROM scratch\nCOPY --from=other /f /f\n", contexts)
    ids = [op.source.identifier for op in ops(res.definition) if op.HasField("source")]
    assert ids == ["docker-image://example.com/amd:v1"]


async def test_normalized_base_name_matches_the_short_key() -> None:
    res = await run("FROM docker.io/library/alpine:latest\n", {"alpine": NamedContext("docker-image://x.io/a:1")})
    ids = [op.source.identifier for op in ops(res.definition) if op.HasField("source")]
    assert ids == ["docker-image://x.io/a:1"]


async def test_named_stage_is_replaced_and_its_commands_are_not_dispatched() -> None:
    df = "FROM scratch AS replaced\nRUN exit 1\nFROM scratch\nCOPY --from=replaced /f /f\n"
    res = await run(df, {"replaced": NamedContext("docker-image://x.io/a:1")})
    all_ops = ops(res.definition)
    assert not any(op.HasField("exec") for op in all_ops)
    assert [op.source.identifier for op in all_ops if op.HasField("source")] == ["docker-image://x.io/a:1"]


async def test_docker_image_scratch_is_an_empty_state() -> None:
    res = await run("FROM base\nCOPY --from=base /f /f\n", {"base": NamedContext("docker-image://scratch")})
    assert not any(op.HasField("source") for op in ops(res.definition))


async def test_input_context_keeps_the_input_ops_and_applies_its_config() -> None:
    given = llb.image("busybox").file(llb.mkdir("/made", 0o755), custom_name="made by the caller")
    definition = llb.marshal(given, platform=AMD64)
    config = json.dumps(CONFIG).encode()
    contexts = {"base": NamedContext("input:prepared", definition=definition, image_config=config)}
    res = await run("FROM base\nRUN true\n", contexts)
    mine = set(getattr(res.definition, "def"))
    given_ops = list(getattr(definition, "def"))[:-1]  # all but the terminal op, byte for byte
    assert set(given_ops) <= mine
    for raw in given_ops:
        dgst = llb.vertex.digest_of(raw)
        assert res.definition.metadata[dgst].description == definition.metadata[dgst].description
    [ex] = [op.exec for op in ops(res.definition) if op.HasField("exec")]
    assert ex.meta.cwd == "/work"
    assert json.loads(res.image_config)["config"]["Cmd"] == ["sh"]


def test_input_metadata_carries_a_base64_image_config() -> None:
    import base64

    raw = json.dumps(CONFIG).encode()
    assert input_image_config(json.dumps({"containerimage.config": base64.b64encode(raw).decode()})) == raw
    assert input_image_config("{}") is None
    with pytest.raises(DockerfileError, match="failed to parse input metadata"):
        input_image_config("not json")


@pytest.mark.parametrize("spec,message", [
    ("oci-layout://store@sha256:" + "3" * 64, "oci-layout named contexts are not supported yet"),
    ("git://h/r.git?fetch-by-commit", "fetch-by-commit git contexts are not supported yet"),
    ("bogus:x", "unsupported context source bogus for base"),
    ("input:missing", "invalid input missing for base"),
    ("docker-image://bad ref", "invalid image reference"),
])
async def test_unsupported_or_bad_contexts_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ConvertError) as err:
        await run("FROM base\n", {"base": NamedContext(spec)})
    assert message in str(err.value)
    assert err.value.lines == (1, 1)
