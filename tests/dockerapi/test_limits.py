"""``docker build --memory/--memory-swap/--cpu-*``: the limits reach the RUN containers (a RUN using
more memory than allowed is killed), bad values get the Engine's errors, and the build's cgroup is
gone afterwards."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from buildkitpy.dockerapi.limits import PARENT_PREFIX, Limits, unified

from .test_build import _write
from .test_cache_and_sdk import _tar_of


def _leftover_cgroups() -> list[str]:
    from pathlib import Path

    bases = [Path("/sys/fs/cgroup")] if unified() else [Path("/sys/fs/cgroup") / c
                                                         for c in ("memory", "cpu", "cpuset")]
    return [str(p) for base in bases for p in (base / PARENT_PREFIX).glob("*") if p.is_dir()]


def test_memory_limit_kills_a_greedy_run(engine, tmp_path):
    ctx = tmp_path / "mem"
    # busybox dd touches its whole bs-sized buffer: 16 MiB fits in 48 MiB, 200 MiB does not.
    _write(ctx, {"Dockerfile": "FROM busybox\n"
                               "RUN dd if=/dev/zero of=/dev/null bs=16M count=2 && echo small-ok\n"
                               "RUN dd if=/dev/zero of=/dev/null bs=200M count=1 && echo big-ok\n"})
    res = engine.docker("build", "--memory", "48m", "--memory-swap", "48m", str(ctx), check=False)
    out, err = res.stdout.decode(), res.stderr.decode()
    assert "small-ok" in out.splitlines(), out + err
    assert "big-ok" not in out.splitlines() and "Killed" in out.splitlines()
    assert res.returncode == 137, out + err
    assert "returned a non-zero code: 137" in err
    # Without the limit the same step succeeds.
    res = engine.docker("build", "--memory", "400m", str(ctx))
    assert "big-ok" in res.stdout.decode().splitlines()
    assert _leftover_cgroups() == []


def test_cpuset_and_cpu_quota_reach_the_container(engine, tmp_path):
    ctx = tmp_path / "cpu"
    _write(ctx, {"Dockerfile": "FROM busybox\nRUN grep Cpus_allowed_list /proc/self/status && "
                               "cat /proc/self/cgroup\n"})
    out = engine.docker("build", "--no-cache", "--cpuset-cpus", "0", "--cpu-quota", "50000", "--cpu-period",
                        "100000", "--cpu-shares", "512", str(ctx)).stdout.decode()
    allowed = [ln for ln in out.splitlines() if ln.startswith("Cpus_allowed_list")]
    assert allowed and allowed[0].split()[-1] == "0", out
    name = Limits(cpu_shares=512, cpu_period=100000, cpu_quota=50000, cpuset_cpus="0").cgroup_name()
    assert f"{name}/buildkit/" in out, out  # the RUN container's cgroup is below the build's
    out = engine.docker("build", "--no-cache", str(ctx)).stdout.decode()
    assert f"{PARENT_PREFIX}/" not in out  # no limits: no build cgroup
    assert _leftover_cgroups() == []


@pytest.mark.parametrize("query,needle", [
    ({"memory": "1000"}, "Minimum memory limit allowed is 6MB"),
    ({"memory": str(64 << 20), "memswap": str(32 << 20)}, "Minimum memoryswap limit should be larger"),
    ({"memswap": str(64 << 20)}, "You should always set the Memory limit when using Memoryswap"),
    ({"cpuperiod": "10"}, "CPU cfs period can not be less than 1ms"),
    ({"cpuquota": "10"}, "CPU cfs quota can not be less than 1ms"),
    ({"cpusetcpus": "0-4096"}, "Requested CPUs are not available"),
    ({"cpusetcpus": "zero"}, "Invalid value zero for cpuset cpus"),
    ({"memory": "lots"}, "is not an integer"),
])
def test_bad_limits_get_the_engine_errors(engine, query, needle):
    body = _tar_of({"Dockerfile": b"FROM busybox\nRUN true\n"})
    raw = engine.raw((f"POST /v1.47/build?{urllib.parse.urlencode(query)} HTTP/1.1\r\nHost: d\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    assert raw.startswith(b"HTTP/1.1 400"), raw[:300]
    assert needle in json.loads(raw.partition(b"\r\n\r\n")[2])["message"]


def test_cgroup_parent_places_the_run_containers(engine, tmp_path):
    import os
    from pathlib import Path

    parent = "h12-cgroup-parent-test"
    ctx = tmp_path / "parent"
    _write(ctx, {"Dockerfile": "FROM busybox\nRUN cat /proc/self/cgroup\n"})
    try:
        out = engine.docker("build", "--no-cache", "--cgroup-parent", parent, str(ctx)).stdout.decode()
        assert f"/{parent}/buildkit/" in out, out
        out = engine.docker("build", "--no-cache", "--cgroup-parent", parent, "--memory", "64m",
                            str(ctx)).stdout.decode()
        name = Limits(memory=64 << 20, parent=parent).cgroup_name()
        assert name.startswith(parent + "/") and f"/{name}/buildkit/" in out, out
        res = engine.docker("build", "--cgroup-parent", "../escape", str(ctx), check=False)
        assert res.returncode != 0 and "invalid cgroupparent" in res.stderr.decode()
    finally:
        bases = [Path("/sys/fs/cgroup")] if unified() else list(Path("/sys/fs/cgroup").iterdir())
        for base in bases:
            top = base / parent
            if top.is_dir():
                for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                    os.rmdir(dirpath)
