"""Attestations next to exported files (``local`` and ``tar`` exporters), as BuildKit's local exporter
writes them: one indented in-toto statement per attestation, named after it (after the exporter's
``attestation-prefix``): the frontend's (the SBOMs: ``sbom.spdx.json``, ``sbom-context.spdx.json``,
…) first, then ``provenance.json`` (or the provenance's ``filename``), each with every regular file
of the output and its sha256 as subjects. Inline-only provenance (buildx's default) is not
written."""

from __future__ import annotations

import hashlib
import json
import os
import stat as statmod
from pathlib import Path
from typing import Any

from buildkitpy.attest.manifest import STATEMENT_TYPE
from buildkitpy.errors import InvalidArgument
from buildkitpy.exporter.imagebuild.config import go_json_indent


def _provenance_wanted(provenance: Any) -> bool:
    return bool(provenance.requested and not provenance.maker.request.inline_only)


def wanted(provenance: Any) -> bool:
    """Whether a files exporter writes statements (frontend attestations, or provenance requested
    and not inline-only)."""
    return provenance is not None and (_provenance_wanted(provenance) or any(provenance.statements.values()))


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


def statement_files(provenance: Any, key: str | None, root: Path,
                    attrs: dict[str, str]) -> list[tuple[str, bytes]]:
    """(file name, indented statement) for each attestation of the output tree ``root`` of result
    ref ``key`` (blocking)."""
    from buildkitpy.attest import bundle

    subjects = file_subjects(root)
    prefix = attrs.get("attestation-prefix", "")
    out: list[tuple[str, bytes]] = []
    for st in provenance.frontend_statements(key, {}):
        doc = json.loads(bundle.statement_json(st, subjects))
        out.append((prefix + os.path.basename(st.path), go_json_indent(doc)))
    if _provenance_wanted(provenance):
        maker = provenance.maker
        statement = {"_type": STATEMENT_TYPE, "predicateType": maker.predicate_type(),
                     "subject": subjects, "predicate": maker.predicate(key)}
        out.append((prefix + os.path.basename(maker.request.filename), go_json_indent(statement)))
    seen: set[str] = set()
    for name, _ in out:
        if name in seen:
            raise InvalidArgument(f"duplicate attestation path name {name}")
        seen.add(name)
    return out
