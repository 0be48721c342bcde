"""Fixtures for remote cache tests: a real ``docker-registry`` with a busybox base image, and
helpers to build a Dockerfile with our CLI and see which steps ran."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from image.registryfixture import REGISTRY_BIN, busybox_rootfs
from push.registries import PushRegistry, start_push_registry


@pytest.fixture(scope="session")
def cache_registry(tmp_path_factory) -> PushRegistry:
    if not Path(REGISTRY_BIN).exists():
        pytest.fail("tests/remotecache need docker-registry (hack/setup installs it)")
    reg = start_push_registry(tmp_path_factory.mktemp("cache-registry"))
    reg.push_image("base/busybox", "latest", [(busybox_rootfs(), "gzip")])
    yield reg
    reg.stop()


@pytest.fixture
def base_image(cache_registry: PushRegistry) -> str:
    return f"{cache_registry.host}/base/busybox:latest"


@dataclass
class BuildRun:
    proc: subprocess.CompletedProcess
    out: Path

    @property
    def text(self) -> str:
        return self.proc.stdout.decode(errors="replace") + self.proc.stderr.decode(errors="replace")

    def step_ids(self, marker: str) -> set[str]:
        """Names of the steps (``[n/m] RUN …``) reported with ``marker`` (``CACHED`` or ``DONE``)."""
        names: dict[str, str] = {}
        for m in re.finditer(r"^#(\d+) (\[.*)$", self.text, re.M):
            names.setdefault(m.group(1), m.group(2).strip())
        return {
            names[m.group(1)]
            for m in re.finditer(rf"^#(\d+) {marker}\b", self.text, re.M)
            if m.group(1) in names
        }

    def ran(self) -> set[str]:
        """RUN/COPY steps that executed (not cached)."""
        cached = self.step_ids("CACHED")
        return {n for n in self.step_ids("DONE") if n not in cached and ("RUN" in n or "COPY" in n)}

    def cached(self) -> set[str]:
        return {n for n in self.step_ids("CACHED") if "RUN" in n or "COPY" in n}


def build(daemon, ctx: Path, out: Path, *extra: str, check: bool = True, timeout: float = 300,
          output: str | None = None) -> BuildRun:
    """A Dockerfile build of ``ctx``; exported to the local directory ``out`` unless ``output`` is given."""
    try:
        res = daemon.client(
            "build",
            "--progress",
            "plain",
            "--frontend",
            "dockerfile.v0",
            "--local",
            f"context={ctx}",
            "--local",
            f"dockerfile={ctx}",
            "--output",
            output or f"type=local,dest={out}",
            *extra,
            check=check,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"build timed out:\n{(exc.stdout or b'').decode(errors='replace')}\n"
            f"--- daemon log ---\n{daemon.log_text()[-6000:]}"
        ) from None
    return BuildRun(res, out)


def write_context(ctx: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctx / name).write_text(text)
    return ctx
