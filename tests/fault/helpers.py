"""Watching a daemon's runc containers and mounts from outside, and starting builds that hang."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from tests.acceptance.helpers import ROOTFS, base, sh
from tests.conftest import BIN, Daemon


def runc_containers(state_root: Path) -> list[str]:
    """Container ids runc knows under the daemon's executor state dir."""
    state_dir = state_root / "executor" / "runc-state"
    if not state_dir.is_dir():
        return []
    res = subprocess.run(["runc", "--root", str(state_dir), "list", "-q"],
                         capture_output=True, text=True, check=True)
    return res.stdout.split()


def container_pids(state_root: Path) -> list[int]:
    """Init pids of the running containers under the daemon's runc state dir."""
    state_dir = state_root / "executor" / "runc-state"
    if not state_dir.is_dir():
        return []
    res = subprocess.run(["runc", "--root", str(state_dir), "list", "-f", "json"],
                         capture_output=True, text=True, check=True)
    import json

    return [c["pid"] for c in json.loads(res.stdout or "null") or [] if c.get("pid")]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this (the host's) mount namespace."""
    prefix = str(path.resolve())
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def start_hanging_run(daemon: Daemon, busybox_dir: Path, seconds: int = 60) -> subprocess.Popen:
    """A client building ``RUN sleep <seconds>`` (unique, so never cached), in the background."""
    st = sh(base(), f": {uuid.uuid4().hex}; sleep {seconds}").root()
    proc = subprocess.Popen([str(BIN / "buildkitpy"), "--addr", daemon.unix_addr, "build",
                             "--progress", "plain", "--local", f"{ROOTFS}={busybox_dir}"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(st.marshal().SerializeToString())
    proc.stdin.close()
    return proc
