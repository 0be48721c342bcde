"""DiskUsage, Prune and automatic GC over real sockets: raw gRPC as buildx and buildctl send it, and
our CLI; BuildKit's filter syntax and keep options (``cache/manager.go``)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from buildkitpy import llb
from buildkitpy.api import control_pb2, control_pb2_grpc
from tests.acceptance.helpers import Runner, base, sh
from tests.conftest import start_daemon, stop_daemon
from tests.executor.conftest import build_busybox_rootfs, need_root

MB = 1000 * 1000


def blob_graph(tag: str, size: int, ctx: bool = True):
    """A build whose own data is ``size`` random bytes (a file op, so no runc needed)."""
    state = llb.scratch().file(llb.mkfile(f"/{tag}.bin", 0o644, os.urandom(size)))
    if ctx:
        state = state.file(llb.copy(llb.local("context"), "/", "/ctx/", copy_dir_contents=True,
                                    create_dest_path=True))
    return state.marshal().SerializeToString()


def build(daemon, tmp_path: Path, tag: str, size: int, *, output: str = "oci") -> None:
    ctx = tmp_path / f"ctx-{tag}"
    ctx.mkdir(exist_ok=True)
    (ctx / "f").write_text(tag)
    dest = tmp_path / f"out-{tag}"
    out = f"type=oci,dest={dest}.tar" if output == "oci" else f"type=local,dest={dest}"
    daemon.client("build", "--local", f"context={ctx}", "--output", out, input=blob_graph(tag, size))


def stub(daemon) -> tuple[grpc.Channel, control_pb2_grpc.ControlStub]:
    channel = grpc.insecure_channel(daemon.unix_addr.replace("unix://", "unix:"))
    return channel, control_pb2_grpc.ControlStub(channel)


def du(control, *filters: str, age_limit: int = 0) -> list[control_pb2.UsageRecord]:
    request = control_pb2.DiskUsageRequest(filter=list(filters), ageLimit=age_limit)
    return list(control.DiskUsage(request).record)


def prune(control, **kw) -> list[control_pb2.UsageRecord]:
    return list(control.Prune(control_pb2.PruneRequest(**kw)))


def total(records) -> int:
    return sum(r.Size for r in records)


def tree_bytes(root: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def test_du_and_prune_accept_buildx_filters_and_keep_options(make_daemon, tmp_path):
    d = make_daemon()
    build(d, tmp_path, "one", 2 * MB)
    build(d, tmp_path, "two", 1 * MB)
    channel, control = stub(d)
    with channel:
        everything = du(control, "")  # buildx sends one empty filter string without --filter
        assert everything and {r.ID for r in everything} == {r.ID for r in du(control)}
        types = {r.RecordType for r in everything}
        assert {"regular", "source.local"} <= types, types
        for r in everything:
            assert r.UsageCount >= 1 and r.HasField("LastUsedAt") and r.HasField("CreatedAt")
            assert not r.InUse and not r.Shared and not r.Mutable
        blobs = [r for r in everything if "one.bin" in r.Description]
        assert len(blobs) == 1 and blobs[0].Size >= 4 * MB  # its layer and the exported blob
        child = [r for r in everything if r.Parents == [blobs[0].ID]]
        assert child and "copy" in child[0].Description.lower()

        assert {r.RecordType for r in du(control, "type==source.local")} == {"source.local"}
        assert {r.RecordType for r in du(control, "type!=source.local")} == {"regular"}
        # a comma joins selectors (all must match); several strings are alternatives
        assert [r.ID for r in du(control, "type==regular,description~=one\\.bin")] == [blobs[0].ID]
        both = du(control, "description~=one.bin", "description~=two.bin")
        assert len(both) == 2
        assert [r.ID for r in du(control, f"id~={blobs[0].ID[:6]}")] == [blobs[0].ID]
        assert du(control, "inuse") == [] and du(control, "shared") == []
        assert len(du(control, "private")) == len(everything)
        assert du(control, age_limit=3600 * 10**9) == []  # everything was used within the hour

        for bad, cause in [("type=", "expected an operator"), ("type==a,", "expected a field"),
                           ('description~="x', "not terminated"), ("description~=(", "regular expression")]:
            with pytest.raises(grpc.RpcError) as err:
                du(control, bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert cause in err.value.details() and "Error" not in err.value.details()

        # nothing goes: recently used (keep-duration), below the reserved space, or under the cap
        assert prune(control, keepDuration=3600 * 10**9) == []
        assert prune(control, reservedSpace=total(everything) + 1) == []
        assert prune(control, maxUsedSpace=300 * MB) == []
        assert prune(control, minFreeSpace=1) == []  # the disk has more than one byte free
        assert len(du(control)) == len(everything)

        # the cap: least recently used first, down to below the limit, newest build's data kept
        cap = total(everything) - 1 * MB
        removed = prune(control, maxUsedSpace=cap)
        left = du(control)
        assert removed and total(left) <= cap
        assert any("two.bin" in r.Description for r in left)
        assert not any("one.bin" in r.Description for r in left)

        removed = prune(control, filter=["type==source.local"])
        assert removed and {r.RecordType for r in removed} == {"source.local"}
        assert du(control, "type==source.local") == []

        prune(control, filter=[""])
        assert du(control) == []


def test_cli_prune_keep_storage_keeps_data_below_the_limit(make_daemon, tmp_path):
    d = make_daemon()
    build(d, tmp_path, "a", 1 * MB, output="local")
    before = d.client("du").stdout.decode()
    out = d.client("prune", "--keep-storage", "300").stdout.decode()
    assert out.strip().splitlines()[-1].split() == ["Total:", "0B"], out
    assert d.client("du").stdout.decode() == before
    out = d.client("du", "--filter", "type==source.local", "--verbose").stdout.decode()
    assert "Type:\tsource.local" in out.replace("\t\t", "\t") and "Usage count:" in out


@pytest.mark.parametrize("builds,each_mb,ceiling_mb", [
    (10, 6, 30),
    pytest.param(40, 8, 100, marks=pytest.mark.slow),
])
def test_gc_policy_ceiling_holds_over_a_soak_of_distinct_builds(make_daemon, tmp_path, builds, each_mb,
                                                                ceiling_mb):
    """Beyond BuildKit (its issue #1962): after every build the store is back under maxUsedSpace
    plus the newest build's own data (its layer and its exported blob: twice ``each_mb``)."""
    ceiling = ceiling_mb * MB
    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\n  gc = true\n  [[worker.oci.gcpolicy]]\n    all = true\n'
                      f'    maxUsedSpace = "{ceiling_mb}MB"\n')
    d = make_daemon("--config", str(config))
    state = d.root / "state"
    newest = 2 * each_mb * MB
    overhead = 5 * MB  # SQLite databases (their write-ahead logs) and logs, outside the build cache
    stores = []
    channel, control = stub(d)
    with channel:
        for i in range(builds):
            build(d, tmp_path, f"soak{i}", each_mb * MB)
            deadline = time.monotonic() + 20
            while total(du(control)) > ceiling and time.monotonic() < deadline:
                time.sleep(0.1)
            assert total(du(control)) <= ceiling
            time.sleep(0.2)  # the pass ends with the content store's collection
            stores.append(tree_bytes(state))
        print(f"soak: {builds * newest / MB:.0f} MB written, store after each build (MB): "
              f"{[round(p / MB, 1) for p in stores]}, ceiling {ceiling_mb} MB")
        assert max(stores) <= ceiling + newest + overhead, stores
        # the newest build's result is still cached
        assert any(f"soak{builds - 1}.bin" in r.Description for r in du(control))


def wait_within(control, ceiling: int, seconds: float = 20) -> int:
    deadline = time.monotonic() + seconds
    while (used := total(du(control))) > ceiling and time.monotonic() < deadline:
        time.sleep(0.1)
    return used


def test_gc_ceiling_holds_after_many_builds_below_it_and_a_restart(tmp_path):
    """The check after a build works from running totals (``control.gc``): builds below the ceiling
    remove nothing, and once the store crosses it, the ceiling holds again, also after a restart
    (the totals then start from what the store holds, not from zero)."""
    ceiling_mb = 30
    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\n  gc = true\n  [[worker.oci.gcpolicy]]\n    all = true\n'
                      f'    maxUsedSpace = "{ceiling_mb}MB"\n')
    ceiling = ceiling_mb * MB
    d = start_daemon(tmp_path / "d", "--config", str(config))
    try:
        channel, control = stub(d)
        with channel:
            for i in range(8):
                build(d, tmp_path, f"small{i}", MB // 2)
            below = du(control)
            assert total(below) <= ceiling
            for i in range(8):  # below the ceiling nothing goes
                assert any(f"small{i}.bin" in r.Description for r in below), i
    finally:
        stop_daemon(d)
    d = start_daemon(tmp_path / "d", "--config", str(config))
    try:
        channel, control = stub(d)
        with channel:
            assert total(du(control)) == total(below)  # the pass at startup had nothing to do
            for i in range(4):
                build(d, tmp_path, f"big{i}", 6 * MB)
                assert wait_within(control, ceiling) <= ceiling, i
                assert any(f"big{i}.bin" in r.Description for r in du(control)), i
            # what went first were the least recently used: the builds before the restart
            assert not any("small0.bin" in r.Description for r in du(control))
    finally:
        stop_daemon(d)


def test_gc_policy_without_a_size_limit_removes_records_once_past_keep_duration(make_daemon, tmp_path):
    """A policy without a size limit removes what was not used within its keepDuration; the check
    after a build knows when the oldest record it keeps expires and runs the pass then."""
    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\n  gc = true\n  [[worker.oci.gcpolicy]]\n    all = true\n'
                      '    keepDuration = "6s"\n')
    d = make_daemon("--config", str(config))
    channel, control = stub(d)
    with channel:
        build(d, tmp_path, "old", MB // 2)
        assert any("old.bin" in r.Description for r in du(control))
        time.sleep(7)
        build(d, tmp_path, "new", MB // 2)
        deadline = time.monotonic() + 20
        while any("old.bin" in r.Description for r in du(control)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any("old.bin" in r.Description for r in du(control))


def test_gc_ceiling_holds_while_a_cache_mount_grows(make_daemon, tmp_path):
    """A cache mount grows with no new snapshot or blob: the check after a build measures cache
    mounts again once a build has used one, and the pass brings the store back under the ceiling."""
    need_root()
    ceiling_mb = 20
    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\n  gc = true\n  [[worker.oci.gcpolicy]]\n    all = true\n'
                      f'    maxUsedSpace = "{ceiling_mb}MB"\n')
    d = make_daemon("--config", str(config))
    runner = Runner(d, build_busybox_rootfs(tmp_path / "rootfs"))
    channel, control = stub(d)
    with channel:
        grew = False
        for i in range(5):
            runner.build(sh(base(), f"head -c 6000000 /dev/urandom > /c/part{i}",
                            mounts=[llb.cache("/c", "growing")]).root(), None)
            mounts = du(control, "type==exec.cachemount")
            grew = grew or total(mounts) > 6 * MB
            assert wait_within(control, ceiling_mb * MB) <= ceiling_mb * MB, i
        assert grew  # it held more than one build's data before the ceiling was reached
