"""Resolving LLB paths inside a snapshot root: wildcards and root-confined symlink resolution.

``secure_join`` itself is ``buildkitpy.snapshot.fs.secure_join``; this adds what file ops and
checksums share on top of it.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from buildkitpy.fsutil.patterns import contains_wildcards, glob_match
from buildkitpy.snapshot.fs import secure_join

__all__ = ["secure_join", "root_path", "resolve_wildcards", "clean_path", "split_wildcards"]


def clean_path(p: str) -> str:
    """Absolute clean path that keeps a trailing '/' or '/.' (they change copy semantics)."""
    cleaned = posixpath.normpath(posixpath.join("/", p))
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if p.endswith("/.") and cleaned != "/":
        return cleaned + "/."
    if p.endswith("/.") and cleaned == "/":
        return "/."
    if p.endswith("/") and cleaned != "/":
        return cleaned + "/"
    return cleaned


def root_path(root: str | os.PathLike[str], p: str, follow_links: bool) -> Path:
    """``p`` inside ``root``; the last component's symlink is followed only if asked."""
    p = posixpath.normpath(posixpath.join("/", p))
    if p == "/":
        return Path(root)
    return secure_join(root, p, follow_final=follow_links)


def split_wildcards(p: str) -> tuple[str, str]:
    """('/dir/without/wildcards', 'rest/with*/wildcards')."""
    parts = posixpath.normpath(posixpath.join("/", p)).split("/")[1:]
    for i, part in enumerate(parts):
        if contains_wildcards(part):
            return "/" + "/".join(parts[:i]), "/".join(parts[i:])
    return "/" + "/".join(parts), ""


def resolve_wildcards(root: str | os.PathLike[str], src: str, follow_links: bool) -> list[str]:
    """Absolute in-root paths matching ``src`` (unchanged if it has no wildcard), sorted."""
    base, pattern = split_wildcards(src)
    if not pattern:
        return [base]
    base_dir = root_path(root, base, follow_links)
    depth = pattern.count("/") + 1
    matches: list[str] = []
    if not base_dir.is_dir():
        return matches

    def walk(directory: Path, rel_parts: list[str]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            parts = [*rel_parts, entry.name]
            rel = "/".join(parts)
            if len(parts) == depth:
                if glob_match(pattern, rel):
                    matches.append(posixpath.join(base, rel))
            elif entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), parts)

    walk(base_dir, [])
    return matches
