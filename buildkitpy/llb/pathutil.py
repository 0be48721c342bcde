"""Go ``path`` package semantics (``Clean``/``Join``) that LLB paths are built with."""

import posixpath


def clean(p: str) -> str:
    """Like Go's ``path.Clean``: unlike ``posixpath.normpath`` it folds a leading ``//``."""
    out = posixpath.normpath(p) if p else "."
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out


def join(*parts: str) -> str:
    """Like Go's ``path.Join``: empty parts are ignored, the result is cleaned."""
    joined = "/".join(p for p in parts if p)
    return clean(joined) if joined else ""


def is_abs(p: str) -> bool:
    return p.startswith("/")
