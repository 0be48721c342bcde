"""Running ssh-forwarding builds through the daemon with the CLI (optionally with a chosen env)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from buildkitpy import llb
from tests.acceptance.helpers import ROOTFS
from tests.conftest import BIN, Daemon


def build(daemon: Daemon, rootfs: Path, state: llb.State, out: Path | None, *args: str,
          env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``buildkitpy build`` of ``state`` (LLB on stdin) with ``rootfs`` as the local ``rootfs``."""
    cmd = [str(BIN / "buildkitpy"), "--addr", daemon.unix_addr, "build", "--progress", "plain",
           "--local", f"{ROOTFS}={rootfs}"]
    if out is not None:
        cmd += ["--output", f"type=local,dest={out}"]
    cmd += list(args)
    full_env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    full_env.update(env or {})
    proc = subprocess.run(cmd, input=state.marshal().SerializeToString(), capture_output=True,
                          env=full_env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"build failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}"
                             f"\n--- daemon log ---\n{daemon.log_text()[-3000:]}")
    return proc
