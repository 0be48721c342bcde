"""``POST /build/prune``: the Engine API's filters and sizes → our Control API's Prune."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

from buildkitpy.dockerapi.http import HTTPError, Request
from buildkitpy.dockerapi.options import bool_arg

# The build-cache record fields the Engine passes on to BuildKit as filters.
CACHE_FIELDS = ("id", "parent", "type", "description", "inuse", "shared", "private")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_FULL_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_filters(raw: str) -> dict[str, list[str]]:
    """The ``filters`` query value: ``{"key": ["v", ...]}`` or the older ``{"key": {"v": true}}``."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"invalid filters: {exc.msg}") from None
    if not isinstance(value, dict):
        raise HTTPError(400, "invalid filters: want a JSON object")
    out: dict[str, list[str]] = {}
    for key, values in value.items():
        if isinstance(values, dict):
            out[key] = [k for k, v in values.items() if v]
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            out[key] = list(values)
        else:
            raise HTTPError(400, f"invalid filters: values of {key!r} must be strings")
    return out


def parse_until(value: str, now: float | None = None) -> float:
    """Seconds to keep: a Go duration (``24h``, ``1h30m``) or a timestamp (RFC 3339, date, or unix
    seconds), as ``docker builder prune --filter until=`` accepts."""
    now = time.time() if now is None else now
    text = value.strip()
    if text and _FULL_DURATION.fullmatch(text):
        return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))
    try:
        return max(0.0, now - float(text))
    except ValueError:
        pass
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            parsed = datetime.strptime(text.replace("Z", "+00:00"), fmt)
        except ValueError:
            continue
        ts = parsed.timestamp()
        return max(0.0, now - ts)
    raise HTTPError(400, f'"until" filter expects a duration (e.g., \'24h\') or a timestamp, got {value!r}')


def _bytes_arg(req: Request, name: str) -> int:
    value = req.arg(name)
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise HTTPError(400, f"{name} is in bytes and expects an integer, got {value}") from None


def prune_options(req: Request) -> dict[str, Any]:
    filters = parse_filters(req.arg("filters"))
    until_values = filters.pop("until", []) + filters.pop("unused-for", [])
    if len(until_values) > 1:
        raise HTTPError(400, "filters expect only one value")
    keep = parse_until(until_values[0]) if until_values else 0.0
    translated = []
    for key, values in filters.items():
        if key not in CACHE_FIELDS:
            raise HTTPError(400, f"invalid filter {key!r}")
        if len(values) > 1:
            raise HTTPError(400, "filters expect only one value")
        if not values:
            translated.append(f"{key}==true")
        elif key == "id":
            translated.append(f"id~={values[0]}")
        else:
            translated.append(f"{key}=={values[0]}")
    max_used = _bytes_arg(req, "max-used-space") or _bytes_arg(req, "keep-storage")
    return {"all": bool_arg(req, "all"), "filters": translated, "keep_duration_ns": int(keep * 1e9),
            "reserved_space": _bytes_arg(req, "reserved-space"), "max_used_space": max_used,
            "min_free_space": _bytes_arg(req, "min-free-space")}


async def prune_request(control: Any, req: Request) -> dict[str, Any]:
    from buildkitpy.client.rpc_errors import BuildkitError

    opts = prune_options(req)
    deleted: list[str] = []
    reclaimed = 0
    try:
        async for record in control.prune(**opts):
            deleted.append(record.ID)
            reclaimed += record.Size
    except BuildkitError as exc:
        code = 400 if "filter" in exc.message else 500
        raise HTTPError(code, f"failed to prune build cache: {exc.message}") from None
    return {"CachesDeleted": deleted, "SpaceReclaimed": reclaimed}
