import os
from pathlib import Path

import pytest

from buildkitpy.snapshot.manager import OverlaySnapshotManager
from buildkitpy.snapshot.mount import mounted_under


@pytest.fixture(params=["overlay", "copy"])
def manager(request, tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("snapshot manager tests need root (mount, chown, mknod)")
    mgr = OverlaySnapshotManager(tmp_path / "state", mode=request.param)
    assert mgr.mode == request.param
    yield mgr
    mgr.close()
    assert mounted_under(tmp_path) == [], "a test left a mount behind"
