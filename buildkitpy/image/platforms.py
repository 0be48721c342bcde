"""Platform matching for multi-platform indexes, like containerd's ``platforms.Only``.

A requested platform also accepts the platforms its CPU runs natively, less preferred the further
down the list: ``linux/arm64`` accepts ``arm64``, then ``arm/v8``, ``arm/v7``, ``arm/v6``,
``arm/v5``; ``linux/arm/v7`` accepts ``v7`` then ``v6``, ``v5``; ``linux/amd64`` also ``386``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from buildkitpy.llb.platform import Platform, default_platform

__all__ = ["Platform", "default_platform", "from_oci", "acceptable", "rank", "best_match"]

_ARM_VARIANTS = ["v8", "v7", "v6", "v5"]


def from_oci(spec: Mapping[str, Any] | None) -> Platform | None:
    """A normalised ``Platform`` from an OCI ``platform`` object (``None`` if absent/invalid)."""
    if not isinstance(spec, Mapping):
        return None
    os_name, arch = spec.get("os"), spec.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    variant = spec.get("variant") or ""
    version = spec.get("os.version") or ""
    return Platform(os_name, arch, variant if isinstance(variant, str) else "",
                    version if isinstance(version, str) else "").normalized()


def acceptable(wanted: Platform) -> list[Platform]:
    """Platforms that satisfy ``wanted``, most preferred first."""
    wanted = wanted.normalized()
    out = [Platform(wanted.os, wanted.architecture, wanted.variant)]
    if wanted.architecture == "arm64":
        out += [Platform(wanted.os, "arm", v) for v in _ARM_VARIANTS]
    elif wanted.architecture == "arm" and wanted.variant in _ARM_VARIANTS:
        lower = _ARM_VARIANTS[_ARM_VARIANTS.index(wanted.variant) + 1:]
        out += [Platform(wanted.os, "arm", v) for v in lower]
    elif wanted.architecture == "amd64":
        out.append(Platform(wanted.os, "386"))
    return out


def rank(candidate: Platform, wanted: Platform) -> int | None:
    """Position of ``candidate`` in ``acceptable(wanted)``; ``None`` when it does not match."""
    plain = Platform(candidate.os, candidate.architecture, candidate.variant)
    try:
        return acceptable(wanted).index(plain)
    except ValueError:
        return None


def best_match(candidates: Sequence[Platform | None], wanted: Platform) -> int | None:
    """Index of the best candidate for ``wanted`` (first one on ties), or ``None``."""
    best: tuple[int, int] | None = None
    for i, cand in enumerate(candidates):
        if cand is None:
            continue
        r = rank(cand, wanted)
        if r is not None and (best is None or r < best[0]):
            best = (r, i)
    return best[1] if best else None
