"""``[history]`` in buildkitd.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildkitpy.daemon.config import load_config


def test_history_limits(tmp_path: Path) -> None:
    assert (load_config(None).history.max_age, load_config(None).history.max_entries) == (48 * 3600, 50)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[history]\nmaxAge = "2h30m"\nmaxEntries = 7\n')
    h = load_config(cfg).history
    assert (h.max_age, h.max_entries) == (9000, 7)
    cfg.write_text("[history]\nmaxAge = 60\n")  # seconds; a key left out of the table is 0
    h = load_config(cfg).history
    assert (h.max_age, h.max_entries) == (60, 0)
    cfg.write_text('[history]\nmaxAge = "soon"\n')
    with pytest.raises(SystemExit, match=r"invalid \[history\] setting"):
        load_config(cfg)
    cfg.write_text("[history]\nmaxEntries = -1\n")
    with pytest.raises(SystemExit, match="cannot be negative"):
        load_config(cfg)
    cfg.write_text("[history]\nmaxEntries = 3\nfoo = 1\n")
    assert "unknown config key history.foo" in load_config(cfg).warnings
