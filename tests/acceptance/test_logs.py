"""Step output through the daemon: BuildKit's live-log limit, and the full log kept on disk."""

from __future__ import annotations

import pytest

from tests.acceptance.helpers import base, sh

pytestmark = pytest.mark.root


def test_large_output_is_clipped_live_but_kept_whole(bb, daemon):
    # 3 MiB of numbered lines on stdout: over the 2 MiB step limit (the 200 KiB/s speed budget
    # clips even earlier on a fast step, which is what BuildKit does as well).
    step = sh(base(), "i=0; while [ $i -lt 3 ]; do head -c 1048576 /dev/zero | tr '\\0' x; i=$((i+1)); done;"
                      " echo; echo tail-marker")
    res = bb.build(step.root(), None, args=("--no-cache",))
    live = res.logs()
    assert b"[output clipped, log limit" in live
    assert b"tail-marker" not in live
    assert len(live) < 2 * 1024 * 1024 + 1024
    full = [p for p in (daemon.root / "state" / "logs").rglob("*.log")
            if p.stat().st_size > 3 * 1024 * 1024]
    assert full, "the step's full output is kept under <root>/logs"
    data = max(full, key=lambda p: p.stat().st_mtime).read_bytes()
    assert data.count(b"x") == 3 * 1024 * 1024 and data.rstrip().endswith(b"tail-marker")
