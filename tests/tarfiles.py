"""Hand-made tar archives for tests of what unpacks them (hostile members included)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def write_tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    """``path`` holding ``members`` in order, each with its data (sizes set from it)."""
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    """A header named ``name`` of type ``kind`` with ``attrs`` (linkname, mode, uid, ...) set."""
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info
