"""Fixtures for the daemon-level acceptance suite: LLB graphs built with ``buildkitpy.llb`` and run
through a real ``buildkitpyd`` by the ``buildkitpy`` CLI over real sockets, on a busybox base that
travels to the daemon as a ``local`` source."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.executor.conftest import build_busybox_rootfs


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, overlayfs)")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc)")


@pytest.fixture(scope="session")
def busybox_dir(tmp_path_factory) -> Path:
    """A busybox rootfs directory, sent to the daemon as the local source ``rootfs``."""
    _need_root()
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def bb(daemon, busybox_dir):
    """A runner bound to the session daemon (see :class:`tests.acceptance.helpers.Runner`)."""
    from tests.acceptance.helpers import Runner

    return Runner(daemon, busybox_dir)
