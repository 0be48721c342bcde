"""A step whose error repeats a huge command still reports its exit code to the client (the
message is cut at the RPC boundary instead of overflowing gRPC's trailer limit)."""

from __future__ import annotations

import pytest

from tests.acceptance.helpers import base, sh

pytestmark = pytest.mark.root


def test_a_3000_word_run_fails_with_its_exit_code(bb):
    words = " ".join(f"word{i}" for i in range(3000))
    res = bb.build(sh(base(), f"exit 3 # {words}").root(), None, check=False)
    assert not res.ok
    last = res.stderr.strip().splitlines()[-1]
    assert "metadata size" not in res.stderr and "ResourceExhausted" not in res.stderr
    assert last.startswith('error: failed to solve: process "/bin/sh -c exit 3 # word0 word1'), last
    assert "characters omitted" in last
    assert last.endswith("did not complete successfully: exit code: 3"), last
