"""Where RUN steps' secret files (and SSH agent sockets) live while the step runs.

In memory (``/dev/shm``, a tmpfs) when the machine has it, so a secret never reaches a disk; under a
directory named after the daemon's root, so that a daemon started on the same root after a crash
(``kill -9`` leaves the running steps' directories behind) can remove exactly its predecessor's
leftovers and nothing of other daemons on the machine. Only the root lock's holder calls
:func:`remove_leftovers`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

SHM = Path("/dev/shm")


def base_for(root: Path) -> Path:
    """The directory holding the secret directories of the daemon on ``root``."""
    if SHM.is_dir():
        tag = hashlib.sha256(os.fsencode(Path(root).absolute())).hexdigest()[:16]
        return SHM / f"buildkitpy-secrets-{tag}"
    return Path(root) / "executor" / "secrets"


def create(root: Path) -> Path:
    """A new private (0700) directory for one step's secrets."""
    base = base_for(root)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="step-", dir=base))


def remove_leftovers(root: Path) -> int:
    """Delete what a previous daemon on ``root`` left; returns how many step directories there were."""
    base = base_for(root)
    try:
        count = sum(1 for _ in base.iterdir())
    except FileNotFoundError:
        return 0
    shutil.rmtree(base, ignore_errors=True)
    return count
