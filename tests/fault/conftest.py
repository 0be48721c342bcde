"""Fixtures for the fault suite: real daemons killed, restarted, starved of disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.executor.conftest import build_busybox_rootfs, need_root


@pytest.fixture(scope="session")
def busybox_dir(tmp_path_factory) -> Path:
    """A busybox rootfs directory, sent to the daemon as the local source ``rootfs``."""
    need_root()
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")
