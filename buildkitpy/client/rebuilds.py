"""Printing why steps rebuilt (from the build's history record) after ``build --progress plain``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TextIO

from buildkitpy.client.rpc_errors import BuildkitError

if TYPE_CHECKING:
    from buildkitpy.client.connection import Client

REBUILDS_KEY = "buildkitpy.rebuilds"


async def rebuild_reports(client: Client, ref: str) -> list[dict]:
    """The why-rebuild reports in the history record of ``ref`` ([] when the daemon keeps none)."""
    try:
        async for event in client.build_history(ref=ref):
            raw = event.record.ExporterResponse.get(REBUILDS_KEY)
            if raw:
                reports = json.loads(raw)
                return reports if isinstance(reports, list) else []
    except (BuildkitError, ValueError):
        return []
    return []


def format_rebuilds(reports: list[dict]) -> str:
    if not reports:
        return ""
    lines = ["", "rebuilt steps (why each ran instead of coming from the cache):"]
    for r in reports:
        lines.append(f" => {r.get('name') or r.get('vertex', '?')}: {r.get('reason', '?')}")
    return "\n".join(lines) + "\n"


async def print_rebuilds(client: Client, ref: str, out: TextIO) -> None:
    out.write(format_rebuilds(await rebuild_reports(client, ref)))
    out.flush()
