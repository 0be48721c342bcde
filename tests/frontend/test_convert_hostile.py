"""Hostile but possible Dockerfiles: bytes that are not UTF-8, NUL bytes, deep nesting, long chains,
odd owners and platforms. Each gives a result or a clear error naming the line, never another Python
exception (what the fuzz targets in tests/fuzz check at random)."""

from __future__ import annotations

import json

import pytest

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.frontend.dockerfile import convert_dispatch
from buildkitpy.frontend.dockerfile.convert import ConvertError, convert
from buildkitpy.frontend.dockerfile.errors import DockerfileError

pytestmark = pytest.mark.anyio
AMD64 = llb.Platform("linux", "amd64")


async def resolve(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
    config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]}}
    return "sha256:" + "a" * 64, json.dumps(config).encode()


async def run(dockerfile: bytes, **opts: str):  # noqa: ANN201
    return await convert(dockerfile, opts=opts, resolve_image=resolve, build_platform=AMD64)


def ops(result) -> list[ops_pb2.Op]:  # noqa: ANN001
    return [ops_pb2.Op.FromString(b) for b in getattr(result.single.definition, "def")]


@pytest.mark.parametrize("dockerfile,message,line", [
    (b"FROM busybox\nRUN echo \xff\xfe\n", "not valid UTF-8", 2),
    (b"FROM busybox\nWORKDIR /\xff\n", "not valid UTF-8", 2),
    (b"FROM busybox\nCOPY a\xff /b\n", "source path 'a\ufffd' is not valid UTF-8", 2),
    (b"FROM bus\xffbox\n", 'failed to parse stage name "bus\ufffdbox": invalid reference format', 1),
    (b"FROM busybox\n\xffRUN x\n", "unknown instruction: \ufffdRUN", 2),
    (b"FROM busybox\nRUN echo a\x00b\n", "RUN contains a NUL byte", 2),
    (b"FROM busybox\nCOPY a\x00 /b\n", "COPY contains a NUL byte", 2),
    (b"FROM busybox\nWORKDIR /a\x00b\n", "WORKDIR contains a NUL byte", 2),
    (b"FROM --platform=../../ busybox\n", "failed to parse platform ../../", 1),
    (b"FROM --platform=linux/am\x00d64 busybox\n", "'am\\x00d64' is not a valid component", 1),
    (b"FROM --platform=linux/.. busybox\n", "'..' is not a valid component", 1),
    (b"FROM scratch\nENV B=" + b"${A:-" * 500 + b"x" + b"}" * 500 + b"\n", "nested more than 100", 2),
    # 700 bytes asking for terabytes: every line doubles A, A16 is 1 MiB, A17 (line 19) too long
    (b"FROM scratch\nARG A0=xxxxxxxxxxxxxxxx\n"
     + b"".join(b"ARG A%d=$A%d$A%d\n" % (i, i - 1, i - 1) for i in range(1, 40)),
     'failed to process "$A16$A16": the expansion is longer than 1 MiB', 19),
    # each word within its MiB, but every line after the doubling adds one: 3 KB asking for GBs,
    # stopped once the expansions added 16 MiB (A0..A16 about 2, then 14 lines)
    (b"FROM scratch\nARG A0=xxxxxxxxxxxxxxxx\n"
     + b"".join(b"ARG A%d=$A%d$A%d\n" % (i, i - 1, i - 1) for i in range(1, 17))
     + b"".join(b"ENV B%d=x$A16\n" % i for i in range(200)),
     'failed to process "x$A16": the expansions of this Dockerfile add more than 16 MiB in all', 33),
    # a replacement multiplies a value: 2 KiB of x, each replaced by 1 KiB
    (b"FROM scratch\nARG X=" + b"x" * 2048 + b"\nARG Y=" + b"y" * 1024 + b"\nENV Z=${X//x/$Y}\n",
     "the expansion is longer than 1 MiB", 4),
])
async def test_clear_errors_with_the_line(dockerfile: bytes, message: str, line: int) -> None:
    with pytest.raises(ConvertError) as err:
        await run(dockerfile)
    text = str(err.value)
    assert message in text, text
    assert err.value.lines is not None and err.value.lines[0] == line
    text.encode()  # no surrogate escapes left: it can go over gRPC as it is


async def test_image_config_strings_that_are_not_utf8_become_replacement_characters() -> None:
    # as BuildKit (Go's JSON encoder writes U+FFFD for each byte that is not UTF-8)
    result = await run(b"FROM busybox\nENV A=\xff\xfeb\nLABEL a=\xc3x\n")
    img = json.loads(result.single.image_config)
    assert "A=\ufffd\ufffdb" in img["config"]["Env"]
    assert img["config"]["Labels"] == {"a": "\ufffdx"}


async def test_negative_chown_ids_are_sent_as_go_does() -> None:
    # client/llb: ParseInt(-1) then uint32(-1); the daemon leaves the owner unchanged, like lchown(-1)
    result = await run(b"FROM busybox\nCOPY --chown=-1:-1 a /b\nCOPY --chown=1_0:+2 a /c\n")
    copies = [a.copy for op in ops(result) if op.HasField("file") for a in op.file.actions]
    assert copies[0].owner.user.byID == 0xFFFFFFFF and copies[0].owner.group.byID == 0xFFFFFFFF
    assert copies[1].owner.user.byName.name == "1_0"  # Go's ParseInt takes no underscores: a name
    assert copies[1].owner.group.byID == 2


@pytest.mark.parametrize("dockerfile", [
    b"FROM scratch\n" + b"WORKDIR a\n" * 1100,
    b"FROM busybox\n" + b"RUN true\n" * 1100,
    b"FROM scratch AS s0\n" + b"".join(b"FROM s%d AS s%d\n" % (i, i + 1) for i in range(1100)),
    b"FROM scratch AS s0\n" + b"".join(b"FROM scratch AS s%d\nCOPY --from=s%d / /\n" % (i + 1, i)
                                       for i in range(1000)),
])
async def test_long_chains_convert_without_recursion_errors(dockerfile: bytes) -> None:
    result = await run(dockerfile)
    assert json.loads(result.single.image_config)["config"]


async def test_circular_stage_dependencies_are_found_iteratively() -> None:
    with pytest.raises(ConvertError, match="circular dependency detected"):
        await run(b"FROM busybox AS a\nCOPY --from=b / /\nFROM busybox AS b\nCOPY --from=a / /\n")


def test_frontend_errors_are_not_python_value_errors() -> None:
    # the converter reports DockerfileError (and LLBError) as "Dockerfile:N"; a ValueError from a bug
    # in our code must not be mistaken for one
    assert not issubclass(DockerfileError, ValueError)
    assert issubclass(ConvertError, DockerfileError)
    assert ValueError not in convert_dispatch.USER_ERRORS
    assert all(issubclass(e, DockerfileError | llb.LLBError) for e in convert_dispatch.USER_ERRORS)
