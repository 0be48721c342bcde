"""The ``attest:<type>`` frontend attributes, parsed as BuildKit's ``frontend/attestations``.

Values are CSV ``key=value`` fields (``attest:provenance=mode=max,version=v1``); the
``build-arg:BUILDKIT_ATTEST_<TYPE>`` build args are the same. buildx sends
``attest:provenance=mode=min,inline-only=true`` by default.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field

from buildkitpy.errors import InvalidArgument

PROVENANCE = "provenance"
SBOM = "sbom"
SLSA_V1 = "v1"
SLSA_V02 = "v0.2"
DEFAULT_SBOM_GENERATOR = "docker/buildkit-syft-scanner:stable-1"

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


@dataclass(frozen=True)
class ProvenanceRequest:
    """``attest:provenance``: what to write and how."""

    mode: str = "max"  # BuildKit's default when the attribute names no mode
    version: str = SLSA_V1
    builder_id: str = ""
    reproducible: bool = False
    inline_only: bool = False  # only attached where the exporter inlines attestations (image)
    complete_materials: bool = False  # fail when a material (e.g. a local context) has no digest
    filename: str = "provenance.json"
    params: dict[str, str] = field(default_factory=dict)


def _fields(kind: str, value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not value:
        return out
    try:
        rows = list(csv.reader([value], skipinitialspace=False))
    except csv.Error as exc:
        raise InvalidArgument(f"failed to parse {kind}: {exc}") from None
    for item in rows[0] if rows else []:
        key, _, val = item.partition("=")
        out[key] = val
    return out


def parse(attrs: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Attestation type → its fields (defaults filled), or ``InvalidArgument`` for unknown types."""
    raw: dict[str, str] = {}
    for key, value in attrs.items():
        if key.startswith("attest:"):
            raw[key[len("attest:"):].lower()] = value
        elif key.startswith("build-arg:BUILDKIT_ATTEST_"):
            raw[key[len("build-arg:BUILDKIT_ATTEST_"):].lower()] = value
    out: dict[str, dict[str, str]] = {}
    for kind, value in raw.items():
        if kind not in (PROVENANCE, SBOM):
            raise InvalidArgument(f'unknown attestation type "{kind}"')
        fields = {"version": SLSA_V1} if kind == PROVENANCE else {"generator": DEFAULT_SBOM_GENERATOR}
        fields.update(_fields(kind, value))
        out[kind] = fields
    return out


def _bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f'failed to parse {key} flag "{value}"')


def provenance_request(attrs: Mapping[str, str]) -> ProvenanceRequest | None:
    """The build's provenance request (None when it asks for none); ``InvalidArgument`` for bad
    values, before anything is built. (``attest:sbom``: ``buildkitpy.attest.sbom``.)"""
    parsed = parse(attrs)
    fields = parsed.get(PROVENANCE)
    if fields is None:
        return None
    version = fields.get("version", "")
    if version == "":
        raise InvalidArgument("provenance SLSA version cannot be empty")
    if version not in (SLSA_V1, SLSA_V02):
        raise InvalidArgument(f"invalid provenance SLSA version: {version}")
    mode = fields.get("mode", "max")
    if mode == "full":
        mode = "max"
    if mode not in ("min", "max"):
        raise InvalidArgument(f'invalid mode "{mode}"')
    inline_only = fields.get("inline-only", "") in _TRUE
    reproducible = _bool("reproducible", fields["reproducible"]) if "reproducible" in fields else False
    complete = _bool("complete-materials", fields["complete-materials"]) if "complete-materials" in fields \
        else False
    return ProvenanceRequest(mode=mode, version=version, builder_id=fields.get("builder-id", ""),
                             reproducible=reproducible, inline_only=inline_only,
                             complete_materials=complete,
                             filename=fields.get("filename", "") or "provenance.json",
                             params={k: v for k, v in fields.items() if k != "version"})
