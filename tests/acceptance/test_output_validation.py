"""Exporters in two phases: a bad ``--output`` fails when the Solve arrives, before any step runs."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.acceptance.helpers import base, sh

pytestmark = pytest.mark.root


@pytest.mark.parametrize("output, message", [
    ("type=image,name=Invalid_Upper/Name:tag:x", "invalid image name"),
    ("type=image,push=true", "push=true needs an image name"),
    ("type=oci,dest=/tmp/h8daemon-unused.tar,name=UPPER", "invalid image name"),
    ("type=docker,name=bad name", "invalid image name"),
])
def test_a_bad_output_fails_before_the_build_runs(bb, output, message):
    slow = sh(base(), f": {uuid.uuid4().hex}; sleep 30").root()
    started = time.monotonic()
    res = bb.build(slow, None, args=("--output", output), check=False, timeout=60)
    elapsed = time.monotonic() - started
    assert not res.ok
    assert message in res.stderr, res.stderr[-2000:]
    assert elapsed < 20, f"failed only after {elapsed:.0f}s: the build ran first"
    assert "sleep 30" not in res.stderr, "the RUN step should never have started"
