"""Foreign platforms through binfmt_misc emulation, end to end: the worker advertises what its probes
show it can run, a RUN of an arm64 image executes under QEMU, and a two-platform build gives one
index whose manifests carry the right platforms, configs and per-platform files.

The arm64 base image is made here from Debian's arm64 busybox-static (``hack/setup`` puts it at
``FOREIGN_BUSYBOX`` and registers qemu-user-static in binfmt_misc).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildkitpy.executor.emulation import PROBES, elf_executable
from tests.conftest import needs_root
from tests.image.conftest import _need_registry
from tests.image.registryfixture import BUSYBOX, Registry, TarBuilder, start_registry

pytestmark = needs_root

FOREIGN_BUSYBOX = Path("/var/cache/buildkitpy/busybox-static-arm64")
ELF_MACHINES = {62: "x86-64", 183: "aarch64"}


def rootfs(busybox: Path) -> bytes:
    t = TarBuilder()
    for d in ("bin", "etc", "tmp"):
        t.dir(d, mode=0o1777 if d == "tmp" else 0o755)
    t.add("bin/busybox", mode=0o755, data=busybox.read_bytes())
    for applet in ("sh", "cat", "echo", "uname"):
        t.add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
    t.add("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
    return t.bytes()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    _need_registry()
    if not FOREIGN_BUSYBOX.exists() or not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.fail(f"needs {FOREIGN_BUSYBOX} and qemu-user-static in binfmt_misc (run hack/setup)")
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    _, amd64 = reg.push_image("multi/busybox", "amd64", [(rootfs(BUSYBOX), "gzip")], arch="amd64")
    _, arm64 = reg.push_image("multi/busybox", "arm64", [(rootfs(FOREIGN_BUSYBOX), "gzip")], arch="arm64")
    reg.push_manifest("multi/busybox", "latest", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd64, arm64]})
    yield reg
    reg.stop()


def build(daemon, tmp_path: Path, dockerfile: str, output: str, *opts: str) -> None:  # noqa: ANN001
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    args = ["build", "--progress", "plain", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
            "--local", f"dockerfile={ctx}", "--output", output]
    for o in opts:
        args += ["--opt", o]
    daemon.client(*args, timeout=300)


def elf_machine(data: bytes) -> str:
    assert data[:4] == b"\x7fELF"
    return ELF_MACHINES.get(int.from_bytes(data[18:20], "little"), "other")


def test_probe_binaries_are_valid_elf() -> None:
    for probe in PROBES:
        exe = elf_executable(probe)
        assert exe[:4] == b"\x7fELF"
        assert exe[4] == (2 if probe.bits == 64 else 1)
        assert int.from_bytes(exe[18:20], "big" if probe.big_endian else "little") == probe.machine


def test_worker_advertises_emulated_platforms(daemon, registry: Registry) -> None:  # noqa: ANN001
    lines = daemon.client("debug", "workers").stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "PLATFORMS"]
    platforms = set(lines[1].split()[1].split(","))
    assert {"linux/amd64", "linux/arm64", "linux/arm/v7", "linux/386"} <= platforms


def test_arm64_run_executes_under_emulation(daemon, registry: Registry, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    build(daemon, tmp_path, f"FROM {registry.host}/multi/busybox:latest\n"
          "ARG TARGETPLATFORM\nRUN uname -m > /machine && echo $TARGETPLATFORM > /target\n",
          f"type=local,dest={out}", "platform=linux/arm64")
    assert (out / "machine").read_text() == "aarch64\n"
    assert (out / "target").read_text() == "linux/arm64\n"
    assert elf_machine((out / "bin" / "busybox").read_bytes()) == "aarch64"


def test_two_platforms_make_one_index(daemon, registry: Registry, tmp_path: Path) -> None:  # noqa: ANN001
    base = f"{registry.host}/multi/busybox:latest"
    archive = tmp_path / "image.tar"
    build(daemon, tmp_path, f"FROM --platform=$BUILDPLATFORM {base} AS tools\nARG TARGETARCH BUILDARCH\n"
          "RUN echo \"built on $BUILDARCH for $TARGETARCH\" > /note\n"
          f"FROM {base}\nCOPY --from=tools /note /note\nRUN uname -m > /machine\n",
          f"type=oci,dest={archive}", "platform=linux/amd64,linux/arm64")
    with tarfile.open(archive) as tar:
        blob = lambda d: tar.extractfile(f"blobs/sha256/{d.split(':')[1]}").read()  # noqa: E731
        index = json.loads(tar.extractfile("index.json").read())
        top = json.loads(blob(index["manifests"][0]["digest"]))
        assert top["mediaType"] == "application/vnd.oci.image.index.v1+json"
        seen = {}
        for desc in top["manifests"]:
            manifest = json.loads(blob(desc["digest"]))
            config = json.loads(blob(manifest["config"]["digest"]))
            assert config["architecture"] == desc["platform"]["architecture"]
            files = {}
            for layer in manifest["layers"]:
                import gzip
                import io
                with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"])))) as lt:
                    for m in lt.getmembers():
                        if m.isfile():
                            files[m.name.lstrip("./")] = lt.extractfile(m).read()
            seen[desc["platform"]["architecture"]] = files
    assert set(seen) == {"amd64", "arm64"}
    assert seen["amd64"]["note"] == b"built on amd64 for amd64\n"
    assert seen["arm64"]["note"] == b"built on amd64 for arm64\n"
    assert seen["amd64"]["machine"] == b"x86_64\n" and seen["arm64"]["machine"] == b"aarch64\n"
    assert elf_machine(seen["arm64"]["bin/busybox"]) == "aarch64"


def test_build_platform_is_the_workers_first_platform(make_daemon, registry: Registry,  # noqa: ANN001
                                                      tmp_path: Path) -> None:
    """A node configured for arm64 only builds with BUILDPLATFORM=linux/arm64, as BuildKit's does."""
    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\nplatforms = ["linux/arm64"]\n')
    node = make_daemon("--config", str(config))
    out = tmp_path / "out"
    build(node, tmp_path, f"FROM --platform=$BUILDPLATFORM {registry.host}/multi/busybox:latest\n"
          "ARG BUILDPLATFORM TARGETPLATFORM\nRUN echo $BUILDPLATFORM $TARGETPLATFORM $(uname -m) > /p\n",
          f"type=local,dest={out}")
    assert (out / "p").read_text() == "linux/arm64 linux/arm64 aarch64\n"
