"""The image index's tag records (``ChainIndex.put_image_ref``/``image_ref``) in a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from buildkitpy.image.pull import ChainIndex

A, B, C = (f"sha256:{c * 64}" for c in "abc")


def wal(root: Path) -> bytes:
    path = root / "chains.db-wal"
    return path.read_bytes() if path.exists() else b""


def test_the_newest_record_of_a_tag_answers(tmp_path):
    index = ChainIndex(tmp_path / "chains.db")
    index.put_image_ref("r/app:1", "linux/amd64", A, A)  # resolved against the registry
    assert index.image_ref("r/app:1", "linux/amd64") == (A, A)
    index.put_image_ref("r/app:1", "", B, B)  # then given to an image the exporter made
    assert index.image_ref("r/app:1", "linux/amd64") == (B, B)
    index.put_image_ref("r/app:1", "linux/amd64", A, A)  # resolved again, to the same digest
    assert index.image_ref("r/app:1", "linux/amd64") == (A, A)
    index.put_image_ref("r/app:1", "linux/arm64", C, C)
    assert index.image_ref("r/app:1", "linux/arm64") == (C, C)
    assert index.image_ref("r/app:1", "linux/amd64") == (A, A)


def test_resolving_a_tag_to_what_it_already_names_writes_nothing(tmp_path):
    index = ChainIndex(tmp_path / "chains.db")
    index.put_image_ref("r/app:1", "linux/amd64", A, A)
    before = wal(tmp_path)
    for _ in range(3):  # every build of FROM r/app:1 resolves it
        index.put_image_ref("r/app:1", "linux/amd64", A, A)
    assert wal(tmp_path) == before
    index.put_image_ref("r/app:1", "linux/amd64", B, B)  # the tag moved: recorded
    assert wal(tmp_path) != before
    assert index.image_ref("r/app:1", "linux/amd64") == (B, B)
