"""Concurrency through the daemon: independent execs of one graph run in parallel, and concurrent
builds sharing cache mounts all succeed with consistent contents (``locked`` serialises a
read-modify-write; ``shared`` lets everyone write their own file)."""

from __future__ import annotations

import subprocess
import time
import uuid
from datetime import datetime

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import ROOTFS, base, sh
from tests.conftest import BIN

pytestmark = pytest.mark.root


def _ts(value: str) -> float:
    head, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def test_two_independent_sleeps_run_together(bb, tmp_path):
    bb.build(sh(base(), "true").root(), None)  # warm the base so only the sleeps are measured
    token = uuid.uuid4().hex
    a = sh(base(), f": {token}; sleep 2; echo a > /a", custom_name="sleep a").root()
    b = sh(base(), f": {token}; sleep 2; echo b > /b", custom_name="sleep b").root()
    started = time.monotonic()
    r = bb.build(llb.merge([a, b]), tmp_path / "out")
    wall = time.monotonic() - started
    va, vb = r.vertices()["sleep a"], r.vertices()["sleep b"]
    span = max(_ts(va["completed"]), _ts(vb["completed"])) - min(_ts(va["started"]), _ts(vb["started"]))
    assert span < 3.5, f"the two sleeps took {span:.2f}s together (serial would be 4s+)"
    assert abs(_ts(va["started"]) - _ts(vb["started"])) < 1.0
    assert (tmp_path / "out" / "a").exists() and (tmp_path / "out" / "b").exists()
    print(f"two sleep-2 execs: {span:.2f}s in the solver, {wall:.2f}s wall for the whole build")


@pytest.mark.parametrize("n_builds", [pytest.param(4, id="4"),
                                      pytest.param(16, id="16", marks=pytest.mark.slow)])
def test_concurrent_builds_share_cache_mounts(bb, tmp_path, n_builds):
    run_id = uuid.uuid4().hex
    shared_id, locked_id = f"shared-{run_id}", f"locked-{run_id}"
    bb.build(sh(base(), "true").root(), None)
    procs = []
    for i in range(n_builds):
        script = (f": {run_id}; echo {i} > /shared/{i};"
                  "n=$(cat /locked/count 2>/dev/null || echo 0); sleep 0.05;"
                  f"echo $((n+1)) > /locked/count; echo {i} >> /locked/log")
        st = sh(base(), script, mounts=[llb.cache("/shared", shared_id, sharing="shared"),
                                        llb.cache("/locked", locked_id, sharing="locked")]).root()
        cmd = [str(BIN / "buildkitpy"), "--addr", bb.daemon.unix_addr, "build", "--progress", "quiet",
               "--local", f"{ROOTFS}={bb.rootfs}"]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
        procs[-1].stdin.write(st.marshal().SerializeToString())
        procs[-1].stdin.close()
    failures = []
    for p in procs:
        p.wait(180)
        if p.returncode != 0:
            failures.append(p.stderr.read().decode(errors="replace")[-800:])
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert failures == [], failures

    check = sh(base(), f": {run_id} check; ls /shared | sort -n > /shared.ls; cat /locked/count > /count;"
                       "sort -n /locked/log > /log;"
                       "for f in /shared/*; do cat $f; done | sort -n > /contents",
               mounts=[llb.cache("/shared", shared_id, sharing="shared"),
                       llb.cache("/locked", locked_id, sharing="locked")]).root()
    out = tmp_path / "out"
    bb.build(check, out)
    expected = "".join(f"{i}\n" for i in range(n_builds))
    assert (out / "shared.ls").read_text() == expected
    assert (out / "contents").read_text() == expected
    assert (out / "count").read_text() == f"{n_builds}\n"  # no lost update under sharing=locked
    assert (out / "log").read_text() == expected
