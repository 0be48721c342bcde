"""Image config, manifest and index documents, patched and serialised the way BuildKit writes them.

The frontend's config (``containerimage.config``) is kept as raw JSON except for the fields the
exporter owns: ``rootfs`` (the layers' diffIDs), ``history`` (one non-empty entry per layer; entries
the frontend did not provide are added from the layers' snapshot descriptions with the comment
``buildkit.exporter.image.v0``; missing ``created`` times filled in) and ``created``. A
SOURCE_DATE_EPOCH clamps every time after it, except history the base image already had.
Top-level keys are sorted and output is compact, as Go's ``json.Marshal`` of a map writes it.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

from buildkitpy.errors import InvalidArgument
from buildkitpy.gocompat import format_time, go_json, go_json_indent
from buildkitpy.image import mediatypes

HISTORY_COMMENT = "buildkit.exporter.image.v0"
_HISTORY_KEYS = ("created", "created_by", "author", "comment", "empty_layer")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds beyond microseconds are dropped)."""
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    if "." in t:
        head, _, rest = t.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac, zone = rest[:digits], rest[digits:]
        t = f"{head}.{(frac + '000000')[:6]}{zone}"
    try:
        return datetime.datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise InvalidArgument(f"invalid time {text!r} in image config") from None


def default_config(platform: dict[str, str]) -> dict[str, Any]:
    """The config of a result without one (a plain LLB build), for ``platform``."""
    cfg: dict[str, Any] = {"architecture": platform.get("architecture", ""), "os": platform.get("os", "")}
    if platform.get("variant"):
        cfg["variant"] = platform["variant"]
    cfg["config"] = {"Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"} \
        if cfg["os"] != "windows" else {"WorkingDir": "/"}
    cfg["rootfs"] = {"type": "layers", "diff_ids": None}
    return cfg


@dataclass(frozen=True)
class LayerMeta:
    """What the snapshot knows about a layer, for history entries the frontend did not give."""

    created: float
    description: str


def _ordered_history(entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: entry[k] for k in _HISTORY_KEYS if entry.get(k) not in (None, "", False)}
    return out


def normalize_history(history: list[dict[str, Any]], metas: list[LayerMeta]) -> list[dict[str, Any]]:
    """One non-empty history entry per layer, every entry with a ``created`` time."""
    history = [dict(h) for h in history]
    layers = len(metas)
    with_layer = sum(1 for h in history if not h.get("empty_layer"))
    if with_layer > layers:  # more layer entries than layers: the extra ones become empty
        seen = 0
        for h in history:
            if seen >= layers:
                h["empty_layer"] = True
            if not h.get("empty_layer"):
                seen += 1
    elif layers > with_layer:
        for meta in metas[with_layer:]:
            history.append({"created": format_time(meta.created),
                            "created_by": meta.description or "created by buildkit",
                            "comment": HISTORY_COMMENT})
    index = 0
    for h in history:
        if not h.get("empty_layer"):
            if not h.get("created"):
                h["created"] = format_time(metas[index].created)
            index += 1
    # Entries without a time get the first new layer's time (or the previous entry's).
    created = None
    missing = False
    for h in history:
        if h.get("created"):
            created = h["created"]
            if missing:
                break
        else:
            missing = True
    missing = False
    for h in history:
        if h.get("created"):
            if missing:
                created = h["created"]
        else:
            missing = True
            h["created"] = created
    return [_ordered_history(h) for h in history]


def patch_config(raw: bytes | None, diff_ids: list[str], metas: list[LayerMeta], *,
                 platform: dict[str, str], epoch: int | None = None,
                 base_config: bytes | None = None) -> bytes:
    """The final image config bytes."""
    if raw:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise InvalidArgument(f"invalid image config for export: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument("invalid image config for export: not a JSON object")
    else:
        doc = default_config(platform)
    if not doc.get("os"):
        raise InvalidArgument("invalid image config for export: missing os")
    if not doc.get("architecture"):
        raise InvalidArgument("invalid image config for export: missing architecture")
    history = doc.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise InvalidArgument("invalid image config for export: history is not a list of objects")
    history = normalize_history(history, metas)
    doc["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids) or None}

    if epoch is not None:
        base_history: list[Any] = []
        if base_config:
            try:
                base_history = json.loads(base_config).get("history") or []
            except (ValueError, AttributeError):
                base_history = []
        diverged = False
        for i, h in enumerate(history):
            if not diverged and i < len(base_history) and _same_history(h, base_history[i]):
                continue  # the base image's own history keeps its times
            diverged = True
            if not h.get("created") or parse_time(h["created"]) > epoch:
                h["created"] = format_time(epoch)
        history = [_ordered_history(h) for h in history]
    doc["history"] = history
    if "created" in doc and epoch is not None and doc["created"] and parse_time(doc["created"]) > epoch:
        doc["created"] = format_time(epoch)
    if "created" not in doc:
        last = None
        for h in history:
            if h.get("created"):
                last = h["created"]
        doc["created"] = last
    return ("{" + ",".join(f"{json.dumps(k)}:{go_json(doc[k])}" for k in sorted(doc)) + "}").encode()


def _same_history(a: dict[str, Any], b: Any) -> bool:
    if not isinstance(b, dict):
        return False
    if any(bool(a.get(k)) != bool(b.get(k)) or (a.get(k) and a.get(k) != b.get(k))
           for k in _HISTORY_KEYS if k != "created"):
        return False
    if bool(a.get("created")) != bool(b.get("created")):
        return False
    return not a.get("created") or parse_time(a["created"]) == parse_time(b["created"])


def descriptor(media_type: str, digest: str, size: int, *, annotations: dict[str, str] | None = None,
               platform: dict[str, str] | None = None) -> dict[str, Any]:
    """An OCI descriptor in Go's field order (mediaType, digest, size, annotations, platform)."""
    out: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        out["annotations"] = dict(sorted(annotations.items()))
    if platform:
        out["platform"] = {k: platform[k] for k in ("architecture", "os", "os.version", "os.features",
                                                    "variant") if platform.get(k)}
    return out


def manifest_json(config_desc: dict[str, Any], layers: list[dict[str, Any]], *, oci: bool,
                  annotations: dict[str, str] | None = None) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2,
                           "mediaType": mediatypes.OCI_MANIFEST if oci else mediatypes.DOCKER_MANIFEST,
                           "config": config_desc, "layers": layers}
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return go_json_indent(doc)


def index_json(manifests: list[dict[str, Any]], *, oci: bool,
               annotations: dict[str, str] | None = None) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2,
                           "mediaType": mediatypes.OCI_INDEX if oci else mediatypes.DOCKER_MANIFEST_LIST,
                           "manifests": manifests}
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return go_json_indent(doc)
