"""kill -9 at random points of a build, restarting on the same root each time: no container and
no mount outlives a restart, the cache stays consistent (a finished build stays cached and its
result identical) and the daemon builds again. A bounded quick run by default, a longer one slow."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid

import pytest

from tests.acceptance.helpers import Runner, base, sh
from tests.conftest import start_daemon, stop_daemon
from tests.fault.helpers import mounts_under, runc_containers, start_hanging_run, wait_for

pytestmark = pytest.mark.root


def _kill_rounds(tmp_path, busybox_dir, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    daemon = start_daemon(tmp_path / "d")
    state = daemon.root / "state"
    finished = sh(base(), "echo finished > /result; mkdir -p /dir && echo x > /dir/y").root()
    try:
        first = Runner(daemon, busybox_dir).build(finished, tmp_path / "first")
        assert first.ok
        for round_no in range(rounds):
            # a build that writes, then sleeps: killed somewhere in transfer, mount, run or commit
            seconds = 5 if round_no == 0 else rng.choice([0, 1, 5])
            client = start_hanging_run(daemon, busybox_dir, seconds=seconds)
            if round_no == 0:  # the first kill always lands while the step's container runs
                assert wait_for(lambda: runc_containers(state), 30), "the RUN never started"
            else:
                time.sleep(rng.uniform(0.0, 2.5))
            os.kill(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait()
            client.kill()
            client.wait()
            daemon = start_daemon(tmp_path / "d")
            assert runc_containers(state) == [], f"round {round_no}: containers survived the restart"
            assert mounts_under(state) == [], f"round {round_no}: mounts survived the restart"
            again = Runner(daemon, busybox_dir).build(finished, tmp_path / f"again{round_no}")
            run = [v for name, v in again.vertices().items() if "echo finished" in name]
            assert run and run[0].get("cached"), f"round {round_no}: the finished build lost its cache"
            assert (tmp_path / f"again{round_no}" / "result").read_text() == "finished\n"
            fresh = sh(base(), f": {uuid.uuid4().hex}; echo ok > /ok").root()
            Runner(daemon, busybox_dir).build(fresh, tmp_path / f"fresh{round_no}")
            assert (tmp_path / f"fresh{round_no}" / "ok").read_text() == "ok\n"
    finally:
        stop_daemon(daemon)


def test_kill_9_rounds_quick(tmp_path, busybox_dir):
    _kill_rounds(tmp_path, busybox_dir, rounds=2, seed=8)


@pytest.mark.slow
def test_kill_9_rounds_long(tmp_path, busybox_dir):
    _kill_rounds(tmp_path, busybox_dir, rounds=12, seed=int(os.environ.get("FAULT_SEED", "1")))
