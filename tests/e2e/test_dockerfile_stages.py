"""Multi-stage Dockerfiles end to end (through the daemon, runc and our CLI): chains of stages built on
stages, ONBUILD children, and what a RUN sees of the frontend options (``hostname``) and the built-in
build args. Expected values are what real BuildKit (v0.32 buildkitd + buildctl) gives for the same
builds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.image.conftest import _need_registry
from tests.image.registryfixture import Registry, busybox_rootfs, start_registry

pytestmark = needs_root


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need_registry()
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    reg.push_image("stages/busybox", "latest", [(busybox_rootfs(), "gzip")])
    yield reg
    reg.stop()


def build(daemon, tmp_path: Path, dockerfile: str, *extra: str) -> Path:  # noqa: ANN001
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    out = tmp_path / "out"
    daemon.client("build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
                  "--local", f"dockerfile={ctx}", "--output", f"type=local,dest={out}", *extra)
    return out


def test_three_chained_stages_and_an_onbuild_child(daemon, tmp_path: Path,  # noqa: ANN001
                                                    registry: Registry) -> None:
    base = f"{registry.host}/stages/busybox:latest"
    out = build(daemon, tmp_path, f"FROM {base} AS s0\nENV A=0\nRUN echo 0 > /s0\n"
                "ONBUILD RUN echo trigger > /trig\n"
                "FROM s0 AS s1\nRUN echo 1 > /s1\n"
                "FROM s1\nRUN echo \"$A\" > /a && cat /s0 /s1 /trig > /all\n")
    assert (out / "all").read_text() == "0\n1\ntrigger\n"
    assert (out / "a").read_text() == "0\n"


def test_hostname_option_and_builtin_args_reach_run(daemon, tmp_path: Path,  # noqa: ANN001
                                                    registry: Registry) -> None:
    args = ("BUILDPLATFORM BUILDOS BUILDARCH BUILDVARIANT TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT "
            "TARGETSTAGE")
    out = build(daemon, tmp_path, f"FROM {registry.host}/stages/busybox:latest AS work\nARG {args}\n"
                "RUN cat /etc/hosts > /hosts && busybox hostname > /hostname && env > /env\n",
                "--opt", "hostname=myhost", "--opt", "add-hosts=extra=10.1.2.3")
    assert (out / "hosts").read_text() == (
        "127.0.0.1\tlocalhost myhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.1.2.3\textra\n")
    assert (out / "hostname").read_text() == "myhost\n"
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    assert {k: env[k] for k in args.split()} == {
        "BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux", "BUILDARCH": "amd64", "BUILDVARIANT": "",
        "TARGETPLATFORM": "linux/amd64", "TARGETOS": "linux", "TARGETARCH": "amd64", "TARGETVARIANT": "",
        "TARGETSTAGE": "work",
    }
