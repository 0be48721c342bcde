"""The image config the Dockerfile frontend builds up (``containerimage.config``).

Kept as a plain dict in the JSON shape of an OCI image config with Docker's extensions
(Healthcheck, OnBuild, Shell); ``to_json`` writes it with the key order and omissions of Go's
``encoding/json`` for BuildKit's ``DockerOCIImage`` so clients see the same bytes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Set as AbstractSet
from typing import Any

from buildkitpy.llb import Platform

from .errors import DockerfileError, printable

HISTORY_COMMENT = "buildkit.dockerfile.v0"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Image = dict[str, Any]

# Go struct order: the embedded ocispec Image fields, then the outer (Docker) config.
_IMAGE_KEYS = (
    "created",
    "author",
    "architecture",
    "os",
    "os.version",
    "os.features",
    "variant",
    "rootfs",
    "history",
    "config",
)
_ALWAYS = {"architecture", "os", "rootfs", "config"}
_CONFIG_KEYS = (
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "ArgsEscaped",
    "Healthcheck",
    "OnBuild",
    "Shell",
)
_HEALTH_KEYS = ("Test", "Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")
_HISTORY_KEYS = ("created", "created_by", "author", "comment", "empty_layer")


class ImageConfigError(DockerfileError):
    """A base image config that is not a JSON image config."""


def empty_image(platform: Platform) -> Image:
    """The config of ``FROM scratch``."""
    img: Image = {
        "architecture": platform.architecture,
        "os": platform.os,
        "rootfs": {"type": "layers", "diff_ids": None},
        "config": {"WorkingDir": "/"},
    }
    if platform.os_version:
        img["os.version"] = platform.os_version
    if platform.os_features:
        img["os.features"] = list(platform.os_features)
    if platform.variant:
        img["variant"] = platform.variant
    if platform.os != "windows":
        img["config"]["Env"] = ["PATH=" + DEFAULT_PATH]
    return img


def parse_image(data: bytes | str) -> Image:
    """Load a registry image config, keeping only the fields BuildKit's struct knows."""
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise ImageConfigError(f"failed to parse image config: {e}") from None
    if not isinstance(raw, dict):
        raise ImageConfigError("failed to parse image config: not a JSON object")
    img: Image = {k: copy.deepcopy(raw[k]) for k in _IMAGE_KEYS if k in raw and raw[k] is not None}
    cfg = raw.get("config") or {}
    if not isinstance(cfg, dict):
        raise ImageConfigError("failed to parse image config: config is not an object")
    img["config"] = {k: copy.deepcopy(cfg[k]) for k in _CONFIG_KEYS if cfg.get(k) is not None}
    rootfs = raw.get("rootfs") or {}
    img["rootfs"] = {"type": rootfs.get("type", ""), "diff_ids": rootfs.get("diff_ids")}
    img.setdefault("architecture", "")
    img.setdefault("os", "")
    return img


def platform_of(img: Image) -> Platform | None:
    if not img.get("architecture") or not img.get("os"):
        return None
    return Platform(
        img["os"],
        img["architecture"],
        img.get("variant", ""),
        img.get("os.version", ""),
        tuple(img.get("os.features") or ()),
    )


def is_scratch(img: Image) -> bool:
    """An image without layers (BuildKit then uses an empty state instead of pulling it)."""
    if img["rootfs"].get("diff_ids"):
        return False
    return all(h.get("empty_layer") for h in img.get("history") or ())


def add_env(env: list[str], key: str, value: str) -> list[str]:
    """Replace ``key`` in place or append it."""
    out = list(env)
    for i, entry in enumerate(out):
        if entry.partition("=")[0] == key:
            out[i] = f"{key}={value}"
            return out
    out.append(f"{key}={value}")
    return out


def commit_to_history(img: Image, message: str, *, with_layer: bool, built: bool = False) -> None:
    """Append a history entry; ``built`` marks steps that ran in the builder (``# buildkit``)."""
    if built:
        message += " # buildkit"
    entry: dict[str, Any] = {"created_by": message, "comment": HISTORY_COMMENT}
    if not with_layer:
        entry["empty_layer"] = True
    img.setdefault("history", []).append(entry)


def _ordered(obj: dict[str, Any], keys: tuple[str, ...],
             always: AbstractSet[str] = frozenset()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        v = obj.get(k)
        if k in always or (v not in (None, "", [], {}, 0, False)):
            out[k] = v
    return out


def to_go_json(value: Any) -> bytes:
    """Compact JSON with Go's HTML-safe escapes and sorted map keys."""
    text = printable(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()


def to_json(img: Image) -> bytes:
    """``json.Marshal(DockerOCIImage)``."""
    cfg = dict(img.get("config") or {})
    for key in ("ExposedPorts", "Volumes", "Labels"):
        if cfg.get(key):
            cfg[key] = dict(sorted(cfg[key].items()))
    if cfg.get("Healthcheck"):
        cfg["Healthcheck"] = _ordered(cfg["Healthcheck"], _HEALTH_KEYS)
    out = _ordered(img, _IMAGE_KEYS, _ALWAYS)
    out["config"] = _ordered(cfg, _CONFIG_KEYS)
    rootfs = img.get("rootfs") or {}
    out["rootfs"] = {"type": rootfs.get("type", ""), "diff_ids": rootfs.get("diff_ids")}
    if out.get("history"):
        out["history"] = [_ordered(h, _HISTORY_KEYS) for h in out["history"]]
    return to_go_json(out)
