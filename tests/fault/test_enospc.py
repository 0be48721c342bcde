"""A full disk: the daemon's root on a small loop-mounted filesystem. A build that runs out of
space fails with a clear error (no traceback, no Python type name), and the store stays usable:
the next build on the same daemon works."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.helpers import Runner, base, sh
from tests.conftest import start_daemon, stop_daemon

pytestmark = pytest.mark.root


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A 96 MiB ext4 filesystem mounted at ``tmp_path/small``."""
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(96 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    point = tmp_path / "small"
    point.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-R", "-l", str(point)], check=False)


def _assert_clear(stderr: str) -> None:
    assert "Traceback" not in stderr and "Error:" not in stderr.replace("error:", ""), stderr[-2000:]


def test_a_full_disk_fails_the_build_cleanly_and_the_store_stays_usable(small_fs, busybox_dir, tmp_path):
    daemon = start_daemon(small_fs / "d")
    try:
        runner = Runner(daemon, busybox_dir)
        runner.build(sh(base(), "true").root(), None)

        # a step that fills the disk: it fails with its own exit code
        fill = sh(base(), f": {uuid.uuid4().hex}; dd if=/dev/zero of=/big bs=1M count=200").root()
        res = runner.build(fill, None, check=False)
        assert not res.ok
        assert b"No space left on device" in res.logs(), res.logs()[-2000:]
        assert res.stderr.strip().endswith("did not complete successfully: exit code: 1"), res.stderr[-2000:]
        _assert_clear(res.stderr)

        # a context larger than the disk: the transfer fails, naming the cause
        big = tmp_path / "bigctx"
        big.mkdir()
        with open(big / "blob", "wb") as f:
            f.truncate(150 << 20)
        res = runner.build(sh(base(), "true").root(), None, check=False, locals={"rootfs": big})
        assert not res.ok
        assert "no space left on device" in res.stderr.lower(), res.stderr[-2000:]
        _assert_clear(res.stderr)

        assert daemon.alive()
        out = tmp_path / "out"
        runner.build(sh(base(), f": {uuid.uuid4().hex}; echo still-works > /ok").root(), out)
        assert (out / "ok").read_text() == "still-works\n"
    finally:
        stop_daemon(daemon)
