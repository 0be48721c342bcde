"""The fuzz targets (``fuzz_targets.py``). The default suite runs each for a few seconds on the same
inputs every time (a failure in CI is reproducible); the slow suite and ``hack/fuzz --seconds N``
draw new inputs on every run."""

from __future__ import annotations

import pytest
from fuzz_targets import TARGETS, Target, run_target


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz(target: Target) -> None:
    run_target(target, target.examples, derandomize=True)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz_long(target: Target) -> None:
    run_target(target, target.examples * 20)
