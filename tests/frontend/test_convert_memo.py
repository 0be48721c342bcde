"""Remembered conversions (``convert_memo``): the definitions of an earlier session's conversion,
given the new session, are byte for byte those a conversion in the new session makes."""

from __future__ import annotations

import json

import pytest

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.frontend.dockerfile import convert_memo
from buildkitpy.frontend.dockerfile.convert import convert
from buildkitpy.llb.marshal import new_id

pytestmark = pytest.mark.anyio
AMD64 = llb.Platform("linux", "amd64")
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]}}).encode()

DOCKERFILE = b"""\
FROM busybox AS a
COPY a/f /f
RUN --mount=type=cache,target=/c echo hi > /g
FROM busybox
COPY --from=a /g /g
COPY <<EOF /h
doc
EOF
ADD b /b
"""


async def resolve(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
    return "sha256:" + "a" * 64, CONFIG


def _args(session: str) -> dict:
    source = llb.local("dockerfile", session_id=session, shared_key_hint="dockerfile", differ="none",
                       follow_paths=["Dockerfile"], custom_name="[internal] load build definition")
    return dict(opts={"platform": "linux/amd64,linux/arm64", "build-arg:X": "1"}, context_ignore=["*.tmp"],
                session_id=session, named_contexts={}, llb_caps=None, build_platform=AMD64,
                dockerfile_source=source, filename="Dockerfile", main_context=None)


def _bytes(d: ops_pb2.Definition) -> bytes:
    return d.SerializeToString(deterministic=True)


async def test_rebound_definitions_are_those_of_a_conversion_in_the_new_session() -> None:
    old, new = new_id(), new_id()
    calls: list = []
    first = await convert(DOCKERFILE, resolve_image=convert_memo.recording(resolve, calls), **_args(old))
    key = convert_memo.memo_key(DOCKERFILE, **_args(old))
    assert key is not None and key == convert_memo.memo_key(DOCKERFILE, **_args(new))
    convert_memo.remember(key, old, calls, first)
    entry = convert_memo.recall(key)
    busybox = "docker.io/library/busybox:latest"
    assert entry is not None and [(c[0], str(c[1])) for c in entry.resolved] == [
        (busybox, "linux/amd64"), (busybox, "linux/arm64")]
    assert await convert_memo.answers_match(entry, resolve)

    async def other(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
        return "sha256:" + "c" * 64, CONFIG
    assert not await convert_memo.answers_match(entry, other)

    fresh = await convert(DOCKERFILE, resolve_image=resolve, **_args(new))
    again = convert_memo.rebound(entry, new)
    assert again is not None and len(again.results) == len(fresh.results) == 2 and again.multi_platform
    for got, want in zip(again.results, fresh.results, strict=True):
        assert _bytes(got.definition) == _bytes(want.definition)
        assert (got.platform, got.image_config, got.base_config) == (want.platform, want.image_config,
                                                                      want.base_config)
        assert old.encode() not in _bytes(got.definition)
    assert _bytes(first.results[0].definition) != _bytes(fresh.results[0].definition)
    assert convert_memo.rebound(entry, new + "x") is None  # an id of another length


async def test_not_rebound_when_the_session_is_elsewhere_and_not_kept_without_one() -> None:
    old = new_id()
    result = await convert(b"FROM busybox\nRUN echo " + old.encode() + b"\n", resolve_image=resolve,
                           **_args(old))
    assert convert_memo.rebind(result.single.definition, old.encode(), new_id().encode()) is None
    assert convert_memo.memo_key(DOCKERFILE, **dict(_args(old), session_id="")) is None
    assert convert_memo.memo_key(DOCKERFILE, **dict(_args(old), named_contexts={"x": object()})) is None
