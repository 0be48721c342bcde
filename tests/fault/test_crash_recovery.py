"""A daemon killed with SIGKILL in the middle of a RUN: the container runs on without it, and the
next daemon on the same root kills and deletes it, unmounts its rootfs and drops its bundle and
its secrets directory (in /dev/shm)."""

from __future__ import annotations

import os
import signal

import pytest

from buildkitpy.executor import secretdirs
from tests.acceptance.helpers import Runner, base, sh
from tests.conftest import start_daemon, stop_daemon
from tests.fault.helpers import (
    container_pids,
    mounts_under,
    pid_alive,
    runc_containers,
    start_hanging_run,
    wait_for,
)

pytestmark = pytest.mark.root


def test_restart_kills_containers_a_crashed_daemon_left_running(tmp_path, busybox_dir):
    daemon = start_daemon(tmp_path / "d")
    state = daemon.root / "state"
    Runner(daemon, busybox_dir).build(sh(base(), "true").root(), None)  # warm the base
    client = start_hanging_run(daemon, busybox_dir, seconds=60)
    try:
        assert wait_for(lambda: container_pids(state), 30), "the RUN never started"
        pids = container_pids(state)
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait()
        assert all(pid_alive(p) for p in pids), "the step should outlive a SIGKILLed daemon"
        assert mounts_under(state), "its rootfs should still be mounted"
        secrets = secretdirs.base_for(state)
        assert list(secrets.iterdir()), "the running step's secrets directory should be left behind"

        daemon = start_daemon(tmp_path / "d")
        assert wait_for(lambda: not any(pid_alive(p) for p in pids), 5), \
            f"container processes {pids} survived the restart"
        assert "left running by a previous daemon" in daemon.log_text()
        assert runc_containers(state) == []
        assert mounts_under(state) == []
        assert list((state / "executor" / "bundles").iterdir()) == []
        assert not secrets.exists(), f"{list(secrets.iterdir())} survived the restart"

        out = tmp_path / "out"
        Runner(daemon, busybox_dir).build(sh(base(), "echo after > /ok").root(), out)
        assert (out / "ok").read_text() == "after\n"
    finally:
        client.kill()
        client.wait()
        stop_daemon(daemon)
