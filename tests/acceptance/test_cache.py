"""Cache behaviour seen by a client: changing one context file re-runs only the vertices that depend
on it (Status ``cached`` flags), and a daemon restart on the same --root keeps the cache."""

from __future__ import annotations

import uuid

import pytest

from buildkitpy import llb
from tests.acceptance.helpers import Runner, base, sh
from tests.conftest import start_daemon, stop_daemon

pytestmark = pytest.mark.root


def two_branch_graph(token: str) -> llb.State:
    ctx = llb.local("ctx")
    branches = []
    for name in ("a", "b"):
        picked = llb.scratch().file(llb.copy(ctx, f"/{name}.txt", f"/{name}.txt"), custom_name=f"copy {name}")
        run = sh(base(), f": {token}; tr a-z A-Z < /in/{name}.txt > /{name}.upper",
                 mounts=[llb.bind("/in", picked, readonly=True)], custom_name=f"run {name}")
        branches.append(llb.diff(base(), run.root(), custom_name=f"diff {name}"))
    return llb.merge(branches, custom_name="merge")


def cached_flags(result) -> dict[str, bool]:
    return {name: bool(v.get("cached")) for name, v in result.vertices().items()
            if not name.startswith(("local://", "exporting", "sending"))}


def test_changing_one_file_reruns_only_its_dependents(bb, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("alpha\n")
    (ctx / "b.txt").write_text("beta\n")
    graph = two_branch_graph(uuid.uuid4().hex)
    first = bb.build(graph, tmp_path / "out1", locals={"ctx": ctx})
    flags = cached_flags(first)
    for name in ("copy a", "run a", "copy b", "run b", "merge"):
        assert flags[name] is False, (name, flags)

    (ctx / "b.txt").write_text("beta, changed\n")
    second = bb.build(graph, tmp_path / "out2", locals={"ctx": ctx})
    flags = cached_flags(second)
    assert flags["[base] busybox rootfs"] and flags["copy a"] and flags["run a"] and flags["diff a"], flags
    assert not flags["copy b"] and not flags["run b"] and not flags["diff b"] and not flags["merge"], flags
    assert (tmp_path / "out2" / "a.upper").read_text() == "ALPHA\n"
    assert (tmp_path / "out2" / "b.upper").read_text() == "BETA, CHANGED\n"

    # touching a file without changing its content keeps everything cached (no mtimes in keys)
    (ctx / "a.txt").write_text("alpha\n")
    third = bb.build(graph, tmp_path / "out3", locals={"ctx": ctx})
    assert all(cached_flags(third).values()), cached_flags(third)


def test_daemon_restart_keeps_the_cache(busybox_dir, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("alpha\n")
    (ctx / "b.txt").write_text("beta\n")
    graph = two_branch_graph(uuid.uuid4().hex)
    root = tmp_path / "daemon"
    daemon = start_daemon(root)
    try:
        first = Runner(daemon, busybox_dir).build(graph, tmp_path / "out1", locals={"ctx": ctx})
        assert not any(cached_flags(first).values())
    finally:
        stop_daemon(daemon)
    assert daemon.proc.returncode == 0
    daemon = start_daemon(root)
    try:
        second = Runner(daemon, busybox_dir).build(graph, tmp_path / "out2", locals={"ctx": ctx})
        flags = cached_flags(second)
        assert flags and all(flags.values()), flags
        assert (tmp_path / "out2" / "b.upper").read_text() == "BETA\n"
    finally:
        stop_daemon(daemon)
