"""Whether the daemon runs in a user namespace (rootless, e.g. under rootlesskit).

Several parts adapt to it: runc configs (``executor/oci.py``), overlay mounts (``userxattr``) and the
xattr namespace overlayfs keeps its opaque markers in (``snapshot/layer.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def running_in_user_namespace() -> bool:
    """True when this process's user namespace is not the initial one (only part of the uid range
    is mapped). The daemon never moves itself to another user namespace, so the answer is kept."""
    try:
        fields = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return fields != ["0", "0", "4294967295"]
