"""WalkMemo: walks remembered by key and root, the least recently used dropped past its bound."""

from __future__ import annotations

from pathlib import Path

from buildkitpy.fsutil.walk import WalkMemo, walk


def _tree(root: Path, n: int) -> list:
    root.mkdir()
    for i in range(n):
        (root / f"f{i}").write_text(str(i))
    return walk(root)


def test_a_walk_is_given_back_for_its_key_at_its_root_only(tmp_path: Path) -> None:
    memo = WalkMemo()
    entries = _tree(tmp_path / "a", 3)
    assert memo.get("snap-a", str(tmp_path / "a")) is None
    memo.put("snap-a", str(tmp_path / "a"), entries)
    assert memo.get("snap-a", str(tmp_path / "a")) is entries
    assert memo.get("snap-a", str(tmp_path / "elsewhere")) is None  # its paths are under its root
    assert memo.get("snap-b", str(tmp_path / "a")) is None


def test_past_its_bound_the_least_recently_used_walks_go(tmp_path: Path) -> None:
    memo = WalkMemo(max_entries=10)
    walks = {k: _tree(tmp_path / k, 4) for k in "abc"}  # 4 entries each
    assert all(len(w) == 4 for w in walks.values())
    memo.put("a", "ra", walks["a"])
    memo.put("b", "rb", walks["b"])
    assert memo.get("a", "ra") is walks["a"]  # a is now the most recent
    memo.put("c", "rc", walks["c"])
    assert memo.get("b", "rb") is None
    assert memo.get("a", "ra") is walks["a"] and memo.get("c", "rc") is walks["c"]
    memo.put("big", "rbig", _tree(tmp_path / "big", 20))  # larger than the bound: not kept
    assert memo.get("big", "rbig") is None
    assert memo.get("a", "ra") is walks["a"]
