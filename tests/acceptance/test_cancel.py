"""Cancellation: killing the client in the middle of a RUN kills the container and releases every
mount within 5 s, and the daemon keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.acceptance.helpers import ROOTFS, Runner, base, sh
from tests.conftest import BIN

pytestmark = pytest.mark.root


def runc_containers(state_root: Path) -> list[str]:
    res = subprocess.run(["runc", "--root", str(state_root / "executor" / "runc-state"), "list", "-q"],
                         capture_output=True, text=True, check=True)
    return res.stdout.split()


def mounts_under(pid: int, path: Path) -> list[str]:
    prefix = str(path.resolve())
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return [line for line in lines if line.split()[4].startswith(prefix)]


def wait_for(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_killing_the_client_mid_run_leaves_nothing(make_daemon, busybox_dir, tmp_path):
    daemon = make_daemon()
    state = daemon.root / "state"
    runner = Runner(daemon, busybox_dir)
    runner.build(sh(base(), "true").root(), None)  # warm the base
    token = uuid.uuid4().hex
    st = sh(base(), f": {token}; echo started; sleep 100").root()
    cmd = [str(BIN / "buildkitpy"), "--addr", daemon.unix_addr, "build", "--progress", "plain",
           "--local", f"{ROOTFS}={busybox_dir}"]
    client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    client.stdin.write(st.marshal().SerializeToString())
    client.stdin.close()
    try:
        assert wait_for(lambda: runc_containers(state), 30), "the RUN never started a container"
        assert mounts_under(daemon.proc.pid, state), "a running step should hold mounts under the root"
    finally:
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
    killed_at = time.monotonic()
    assert wait_for(lambda: not runc_containers(state) and not mounts_under(daemon.proc.pid, state), 5.0), \
        f"left behind: containers {runc_containers(state)}, mounts {mounts_under(daemon.proc.pid, state)}"
    print(f"cleaned up {time.monotonic() - killed_at:.2f}s after the client was killed")
    assert daemon.alive()
    out = tmp_path / "after"
    runner.build(sh(base(), "echo still-serving > /ok").root(), out)
    assert (out / "ok").read_text() == "still-serving\n"
