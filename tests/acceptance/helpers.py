"""Running LLB graphs through the daemon with the CLI, and reading what came back."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from buildkitpy import llb
from tests.conftest import Daemon

ROOTFS = "rootfs"


def base() -> llb.State:
    """The busybox base image: the client's ``rootfs`` directory copied out of the local source.

    As in BuildKit, a local source's own cache key names the client session, so steps run directly
    on it never hit the cache across builds; the copy's key is the content checksum of what it
    copies, so everything built on it is cached by content (as a Dockerfile's ``COPY . /`` is)."""
    return llb.scratch().file(llb.copy(llb.local(ROOTFS), "/", "/", copy_dir_contents=True),
                              custom_name="[base] busybox rootfs")


def sh(state: llb.State, script: str, **kw) -> llb.ExecState:
    return state.run(["/bin/sh", "-c", script], **kw)


@dataclass
class BuildResult:
    proc: subprocess.CompletedProcess
    out: Path | None

    @property
    def ok(self) -> bool:
        return self.proc.returncode == 0

    @property
    def stderr(self) -> str:
        return self.proc.stderr.decode(errors="replace")

    def statuses(self) -> list[dict]:
        """The rawjson progress (one SolveStatus per line) printed on stderr."""
        out = []
        for line in self.proc.stderr.decode(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def vertices(self) -> dict[str, dict]:
        """Final state of every vertex by name (later updates override earlier fields)."""
        merged: dict[str, dict] = {}
        for st in self.statuses():
            for v in st.get("vertexes") or []:
                merged.setdefault(v["digest"], {}).update(v)
        return {v.get("name", d): v for d, v in merged.items()}

    def logs(self) -> bytes:
        import base64

        return b"".join(base64.b64decode(entry.get("data", ""))
                        for st in self.statuses() for entry in st.get("logs") or [])


@dataclass
class Runner:
    daemon: Daemon
    rootfs: Path
    extra_locals: dict[str, Path] = field(default_factory=dict)

    def build(self, state: llb.State, out: Path | None = None, *, output: str = "local",
              args: tuple[str, ...] = (), check: bool = True, locals: dict[str, Path] | None = None,
              timeout: float = 120) -> BuildResult:
        """Build ``state`` (rawjson progress on stderr); export it to ``out`` unless ``out`` is None."""
        cmd = ["build", "--progress", "rawjson", "--local", f"{ROOTFS}={self.rootfs}"]
        for name, path in {**self.extra_locals, **(locals or {})}.items():
            cmd += ["--local", f"{name}={path}"]
        if out is not None:
            cmd += ["--output", f"type={output},dest={out}"]
        cmd += list(args)
        data = state.marshal().SerializeToString()
        proc = self.daemon.client(*cmd, input=data, check=check, timeout=timeout)
        return BuildResult(proc, out)
