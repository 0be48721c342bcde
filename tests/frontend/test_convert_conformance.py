"""Our Dockerfile converter against the LLB real BuildKit's frontend produced for every conformance case
(/work/shared/conformance/llb): the definitions must be byte-identical, op by op, with the same
metadata and source locations; the image config and history must match the golden results."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from google.protobuf import json_format

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.frontend.dockerfile.convert import ConvertError, NamedContext, convert
from buildkitpy.frontend.dockerignore import read_ignore_file
from buildkitpy.llb import caps as capids

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
CASES = sorted(p.stem for p in (CONFORMANCE / "llb").glob("*.json")) if CONFORMANCE.is_dir() else []
GOLDEN = json.loads((CONFORMANCE / "golden.json").read_text()) if CONFORMANCE.is_dir() else {}
BUSYBOX_CONFIG = json.dumps(
    {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "busybox-static rootfs"}],
        "created": "1970-01-01T00:00:00Z",
    },
    sort_keys=True,
).encode()
# what a BuildKit daemon advertises (Pong.LLBCaps) as far as the Dockerfile frontend looks at it
FULL_CAPS = frozenset(
    {v for k, v in vars(capids).items() if k.isupper() and isinstance(v, str)}
    | {
        "exec.mount.bind.readwrite-nooutput",
        "mergeop",
        "exec.meta.ulimit",
        "exec.mount.tmpfs.size",
        "exec.meta.cgroup.parent",
    }
)
PLATFORM = llb.Platform("linux", "amd64")

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not CASES, reason="conformance corpus not present")]


def recorded(case: str) -> ops_pb2.Definition:
    data = json.loads((CONFORMANCE / "llb" / f"{case}.json").read_text())
    return json_format.ParseDict(data["definition"], ops_pb2.Definition())


def ops_of(definition: ops_pb2.Definition) -> list[ops_pb2.Op]:
    return [ops_pb2.Op.FromString(b) for b in getattr(definition, "def")]


def session_of(definition: ops_pb2.Definition) -> str:
    for info in definition.Source.infos:
        for op in ops_of(info.definition):
            if op.HasField("source") and "local.session" in op.source.attrs:
                return op.source.attrs["local.session"]
    return ""


def image_digests(definition: ops_pb2.Definition) -> dict[str, str]:
    out = {}
    for op in ops_of(definition):
        m = re.match(r"docker-image://([^@]+)@(sha256:[0-9a-f]{64})$", op.source.identifier)
        if m:
            out[m.group(1)] = m.group(2)
    return out


async def convert_case(case: str, expected: ops_pb2.Definition | None = None):
    folder = CONFORMANCE / "cases" / case
    spec = json.loads((folder / "case.json").read_text()) if (folder / "case.json").exists() else {}
    opts = dict(spec.get("opts") or {})
    expected = expected or recorded(case)
    session = session_of(expected)
    digests = image_digests(expected)

    async def resolve(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
        assert platform == PLATFORM
        return digests.get(ref, "sha256:" + hashlib.sha256(ref.encode()).hexdigest()), BUSYBOX_CONFIG

    def ignore_of(directory: Path) -> list[str] | None:
        f = directory / ".dockerignore"
        return read_ignore_file(f.read_bytes()) if f.exists() else None

    named = {}
    for key, value in opts.items():
        if key.startswith("context:") and value.startswith("local:"):
            local = value.split(":", 1)[1]
            named[key.split(":", 1)[1]] = NamedContext(value, ignore_of(folder / spec["locals"][local]) or [])
    dockerfile = (folder / "Dockerfile").read_bytes()
    source = llb.local(
        "dockerfile",
        session_id=session,
        shared_key_hint="dockerfile",
        differ="none",
        follow_paths=["Dockerfile", "Dockerfile.dockerignore", "dockerfile"],
        custom_name="[internal] load build definition from Dockerfile",
    )
    return await convert(
        dockerfile,
        opts=opts,
        resolve_image=resolve,
        context_ignore=ignore_of(folder / "context"),
        session_id=session,
        named_contexts=named,
        llb_caps=FULL_CAPS,
        dockerfile_source=source,
        build_platform=PLATFORM,
    )


def describe(definition: ops_pb2.Definition) -> list[str]:
    out = []
    for data in getattr(definition, "def"):
        dgst = "sha256:" + hashlib.sha256(data).hexdigest()
        md = definition.metadata[dgst]
        out.append(
            # map iteration order is not part of the message (upb's hash order varies per process)
            f"{dgst[:19]} {dict(sorted(md.description.items()))} caps={sorted(md.caps)}\n"
            f"{ops_pb2.Op.FromString(data)}"
        )
    return out


@pytest.mark.parametrize("case", CASES)
async def test_definition_is_identical_to_buildkits(case: str) -> None:
    expected = recorded(case)
    if not getattr(expected, "def"):
        pytest.fail(f"{case}: no recorded definition")
    result = await convert_case(case, expected)
    got = result.single.definition
    assert describe(got) == describe(expected)
    assert dict(got.metadata) == dict(expected.metadata)
    assert got.Source == expected.Source
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("case", [c for c in CASES if GOLDEN.get(c, {}).get("ok")])
async def test_image_config_and_history_match_golden(case: str) -> None:
    golden = GOLDEN[case]
    golden_keys = (
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
        "Healthcheck",
        "Shell",
        "OnBuild",
    )  # what the golden run recorded
    result = await convert_case(case)
    img = json.loads(result.single.image_config)
    assert {k: v for k, v in img["config"].items() if k in golden_keys} == golden["config"]
    assert [[h.get("created_by", ""), bool(h.get("empty_layer"))] for h in img["history"]] == golden[
        "history"
    ]
    assert [img["os"], img["architecture"], img.get("variant")] == golden["platform"]


async def test_parse_failure_names_the_line() -> None:
    with pytest.raises(ConvertError) as err:
        await convert(b"FROM scratch\nBOGUS x\n", opts={})
    assert err.value.lines == (2, 2)
    assert "unknown instruction" in str(err.value)
