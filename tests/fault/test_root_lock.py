"""One daemon per ``--root``: a second one refuses to start and leaves the first one's builds,
containers and mounts alone (buildkitd's ``buildkitd.lock``)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from buildkitpy.daemon.rootlock import RootLockedError, acquire_root_lock
from tests.acceptance.helpers import ROOTFS, Runner, base, sh
from tests.conftest import BIN, start_daemon, stop_daemon
from tests.fault.helpers import mounts_under, runc_containers, wait_for


def test_lock_is_exclusive_and_released(tmp_path):
    first = acquire_root_lock(tmp_path)
    with pytest.raises(RootLockedError, match=r"could not lock .*buildkitd.lock, another instance running "
                                              rf"\(pid {os.getpid()}\)\?"):
        acquire_root_lock(tmp_path)
    first.release()
    acquire_root_lock(tmp_path).release()


def test_lock_dies_with_its_holder(tmp_path):
    """A SIGKILLed holder leaves no stale lock: the kernel drops a flock with its last descriptor."""
    holder = subprocess.Popen(
        ["python3", "-c", "import sys, time; from buildkitpy.daemon.rootlock import acquire_root_lock; "
         f"acquire_root_lock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, executable=str(BIN / "python"))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RootLockedError):
            acquire_root_lock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    acquire_root_lock(tmp_path).release()


@pytest.mark.root
def test_second_daemon_on_the_same_root_refuses_to_start(tmp_path, busybox_dir):
    first = start_daemon(tmp_path / "first")
    state = first.root / "state"
    try:
        runner = Runner(first, busybox_dir)
        runner.build(sh(base(), "true").root(), None)  # warm the base
        out = tmp_path / "out"
        st = sh(base(), f": {uuid.uuid4().hex}; sleep 3; echo survived > /ok").root()
        build = subprocess.Popen(
            [str(BIN / "buildkitpy"), "--addr", first.unix_addr, "build", "--progress", "plain",
             "--local", f"{ROOTFS}={busybox_dir}", "--output", f"type=local,dest={out}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert build.stdin is not None
        build.stdin.write(st.marshal().SerializeToString())
        build.stdin.close()
        assert wait_for(lambda: runc_containers(state), 30), "the RUN never started"
        mounts_before = mounts_under(state)
        containers_before = runc_containers(state)

        second = subprocess.Popen([str(BIN / "buildkitpyd"), "--root", str(state),
                                   "--addr", f"unix://{tmp_path / 'second.sock'}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = second.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            second.kill()
            output, _ = second.communicate()
            pytest.fail(f"the second daemon kept running on a locked root:\n{output}")
        assert second.returncode != 0
        assert "could not lock" in output and "another instance running" in output, output
        assert "Traceback" not in output, output

        assert runc_containers(state) == containers_before
        assert mounts_under(state) == mounts_before
        assert build.stdout is not None
        log = build.stdout.read()
        build.wait(60)
        assert build.returncode == 0, log.decode(errors="replace")
        assert (out / "ok").read_text() == "survived\n"
        assert first.alive()
    finally:
        stop_daemon(first)
