"""Fixtures for executor tests: a busybox rootfs (from Debian's busybox-static) in a snapshot."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildkitpy.executor.runc import RuncExecutor
from buildkitpy.snapshot.manager import OverlaySnapshotManager

PASSWD = """root:x:0:0:root:/root:/bin/sh
builder:x:1000:1000:builder:/home/builder:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
wheel:x:10:builder
staff:x:50:builder,root
builder:x:1000:
nogroup:x:65534:
"""


def build_busybox_rootfs(dest: Path) -> Path:
    """A minimal rootfs: static busybox with all applets linked, users root/builder/nobody."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home/builder", "proc", "sys", "dev"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").mkdir(mode=0o1777, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    subprocess.run(["chroot", str(dest), "/bin/busybox", "--install", "-s"], check=True)
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    os.chown(dest / "home" / "builder", 1000, 1000)
    return dest


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, mounts)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc)")


@pytest.fixture(scope="session")
def busybox_snapshots(tmp_path_factory) -> Iterator[tuple[OverlaySnapshotManager, str]]:
    """A snapshot manager holding one committed busybox rootfs; yields (manager, snapshot id)."""
    need_root()
    mgr = OverlaySnapshotManager(tmp_path_factory.mktemp("snapshots"))
    mut = mgr.new_mutable(None, "busybox")
    with mut.mount() as root:
        build_busybox_rootfs(root)
    base = mut.commit()
    yield mgr, base.id
    base.release()
    mgr.close()


@pytest.fixture
def rootfs(busybox_snapshots) -> Iterator[Path]:
    """A fresh read-write busybox rootfs (a mutable snapshot mounted for the test)."""
    mgr, base_id = busybox_snapshots
    base = mgr.get(base_id)
    mut = mgr.new_mutable(base)
    with mut.mount() as path:
        yield path
    mut.release()
    base.release()


@pytest.fixture
def executor(tmp_path) -> RuncExecutor:
    need_root()
    return RuncExecutor(tmp_path / "executor")
