"""Provenance next to exported files (``local`` and ``tar`` exporters), as BuildKit's local exporter
writes it: ``provenance.json`` (or the attestation's ``filename``, after the exporter's
``attestation-prefix``) holding the in-toto statement whose subjects are every regular file of the
output with its sha256. Inline-only provenance (buildx's default) is not written."""

from __future__ import annotations

import hashlib
import os
import stat as statmod
from pathlib import Path
from typing import Any

from buildkitpy.attest.manifest import STATEMENT_TYPE
from buildkitpy.exporter.imagebuild.config import go_json_indent


def wanted(provenance: Any) -> bool:
    """Whether a files exporter writes the statement (requested, not inline-only)."""
    return provenance is not None and provenance.requested and not provenance.maker.request.inline_only


def file_subjects(root: Path) -> list[dict[str, Any]]:
    """Every regular file under ``root`` (symlinks not followed) in walk order, with its sha256."""
    out: list[dict[str, Any]] = []

    def visit(d: Path, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            path = d / name
            r = f"{rel}/{name}" if rel else name
            mode = os.lstat(path).st_mode
            if statmod.S_ISDIR(mode):
                visit(path, r)
            elif statmod.S_ISREG(mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                out.append({"name": r, "digest": {"sha256": h.hexdigest()}})

    visit(root, "")
    return out


def statement_file(provenance: Any, key: str | None, root: Path, attrs: dict[str, str]) -> tuple[str, bytes]:
    """(file name, indented statement) for the output tree ``root`` of result ref ``key`` (blocking)."""
    maker = provenance.maker
    statement = {"_type": STATEMENT_TYPE, "predicateType": maker.predicate_type(),
                 "subject": file_subjects(root), "predicate": maker.predicate(key)}
    name = attrs.get("attestation-prefix", "") + os.path.basename(maker.request.filename)
    return name, go_json_indent(statement)
