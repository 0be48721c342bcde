"""Go ``fmt`` renderings the Dockerfile frontend writes into image history and vertex names."""

from __future__ import annotations

import math

from buildkitpy.gocompat import quote


def go_list(values: list[str]) -> str:
    """``fmt.Sprintf("%v", []string)``."""
    return "[" + " ".join(values) + "]"


def go_quoted_list(values: list[str] | None) -> str:
    """``fmt.Sprintf("%q", []string)``."""
    return "[" + " ".join(quote(v) for v in values or []) + "]"


def go_duration(ns: int) -> str:
    """``time.Duration.String()``."""
    if ns == 0:
        return "0s"
    neg = ns < 0
    u = -ns if neg else ns
    if u < 1_000_000_000:
        for unit, size in (("ns", 1), ("µs", 1_000), ("ms", 1_000_000)):
            if u < size * 1000:
                return ("-" if neg else "") + _frac(u, size) + unit
    out = ""
    hours, rem = divmod(u, 3_600_000_000_000)
    minutes, rem = divmod(rem, 60_000_000_000)
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    out += _frac(rem, 1_000_000_000) + "s"
    return ("-" if neg else "") + out


def _frac(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}." + str(frac).rjust(digits, "0").rstrip("0")


def step_width(total: int) -> int:
    """Width of the step counter in ``[2/10]`` (``1 + log10(total)``)."""
    return int(1 + math.log10(total))


def summarize_heredoc(doc: str) -> str:
    lines = doc.strip().replace("\r\n", "\n").split("\n")
    return lines[0] + ("..." if len(lines) > 1 else "")
