"""Text formatting helpers that reproduce what buildctl prints: byte sizes (the ``units.Bytes``
``%.2f`` / ``%g`` forms), Go durations and times, platforms, and Go's elastic tabstop writer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TextIO

from google.protobuf.timestamp_pb2 import Timestamp

_DECIMAL_UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]


def _scaled(n: int) -> tuple[float, str] | None:
    """``n`` in the largest decimal unit ≥ 1, or None when plain bytes read better (|n| < 1000)."""
    i = 0
    base = 1 if n >= 0 else -1
    while True:
        nxt = base * 1000
        if (base > 0 and n >= nxt) or (base < 0 and n <= nxt):
            i += 1
            base = nxt
            continue
        if i == 0:
            return None
        return n / abs(base), _DECIMAL_UNITS[i]


def format_bytes(n: int, precision: int = 2) -> str:
    """Like Go's ``fmt.Sprintf("%.2f", units.Bytes(n))``: ``123B``, ``1.23kB``, ``662.60MB``."""
    scaled = _scaled(n)
    if scaled is None:
        return f"{n}B"
    value, unit = scaled
    return f"{value:.{precision}f}{unit}"


def format_bytes_short(n: int) -> str:
    """Like Go's ``%g`` of ``units.Bytes``: the shortest exact form, ``512MB``, ``1.5GB``."""
    scaled = _scaled(n)
    if scaled is None:
        return f"{n}B"
    value, unit = scaled
    text = repr(value)
    if text.endswith(".0"):
        text = text[:-2]
    return text + unit


def format_go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()`` for the whole-second-or-larger values we print."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for div, unit in ((1_000_000, "ms"), (1_000, "µs"), (1, "ns")):
            if ns >= div:
                return sign + _trim_float(ns / div) + unit
    hours, rem = divmod(ns, 3600 * 1_000_000_000)
    minutes, rem = divmod(rem, 60 * 1_000_000_000)
    seconds = _trim_float(rem / 1_000_000_000)
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{sign}{minutes}m{seconds}s"
    return f"{sign}{seconds}s"


def _trim_float(v: float) -> str:
    text = f"{v:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def format_go_time(ts: Timestamp) -> str:
    """Go's ``time.Time.String()`` of a UTC time: ``2026-11-27 18:30:06.727405833 +0000 UTC``."""
    dt = datetime.fromtimestamp(ts.seconds, tz=UTC)
    text = dt.strftime("%Y-%m-%d %H:%M:%S")
    if ts.nanos:
        text += "." + f"{ts.nanos:09d}".rstrip("0")
    return text + " +0000 UTC"


def format_rfc3339_nano(ts: Timestamp) -> str:
    """Go's JSON encoding of a UTC ``time.Time`` (RFC 3339 with trailing zeros trimmed)."""
    dt = datetime.fromtimestamp(ts.seconds, tz=UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ts.nanos:
        text += "." + f"{ts.nanos:09d}".rstrip("0")
    return text + "Z"


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386",
                 "armhf": "arm", "armel": "arm"}


def format_platform(os_name: str, arch: str, variant: str = "") -> str:
    """``os/arch[/variant]`` after the usual normalization (x86_64 → amd64, arm64/v8 → arm64)."""
    os_name = (os_name or "unknown").lower()
    arch = _ARCH_ALIASES.get(arch.lower(), arch.lower()) if arch else "unknown"
    if arch == "arm64" and variant in ("8", "v8"):
        variant = ""
    if arch == "arm" and variant in ("", "7"):
        variant = "v7"
    return "/".join(p for p in (os_name, arch, variant) if p)


class TabWriter:
    """Go's ``text/tabwriter`` (left-aligned, no flags): tab-terminated cells of consecutive lines
    form columns padded to the widest cell plus ``padding``. A line without tabs ends the block,
    as in Go. With ``padchar='\\t'`` padding is done with tabs of ``tabwidth`` columns."""

    def __init__(self, out: TextIO, minwidth: int, tabwidth: int, padding: int, padchar: str) -> None:
        self._out = out
        self._minwidth = minwidth
        self._tabwidth = tabwidth
        self._padding = padding
        self._padchar = padchar
        self._lines: list[list[str]] = []
        self._partial = ""

    def write(self, text: str) -> None:
        text = self._partial + text
        *complete, self._partial = text.split("\n")
        for line in complete:
            cells = line.split("\t")
            self._lines.append(cells)
            if len(cells) == 1:  # a line without cells ends every column block
                self._emit(self._lines, trailing_newline=True)
                self._lines = []

    def flush(self) -> None:
        lines = self._lines
        trailing = True
        if self._partial:
            lines = lines + [self._partial.split("\t")]
            trailing = False
        self._emit(lines, trailing_newline=trailing)
        self._lines, self._partial = [], ""
        self._out.flush()

    def _emit(self, lines: list[list[str]], *, trailing_newline: bool) -> None:
        if not lines:
            return
        parts: list[str] = []
        self._format(parts, lines, 0, len(lines), [])
        text = "".join(parts)
        if not trailing_newline and text.endswith("\n"):
            text = text[:-1]
        self._out.write(text)

    def _format(self, parts: list[str], lines: list[list[str]], line0: int, line1: int,
                widths: list[int]) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            self._write_lines(parts, lines, line0, this, widths)
            line0 = this
            width = self._minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + self._padding)
                this += 1
            self._format(parts, lines, line0, this, widths + [width])
            line0 = this
        self._write_lines(parts, lines, line0, line1, widths)

    def _write_lines(self, parts: list[str], lines: list[list[str]], line0: int, line1: int,
                     widths: list[int]) -> None:
        for cells in lines[line0:line1]:
            for j, cell in enumerate(cells):
                parts.append(cell)
                if j < len(widths) and j < len(cells) - 1:
                    parts.append(self._pad(len(cell), widths[j]))
            parts.append("\n")

    def _pad(self, text_width: int, cell_width: int) -> str:
        if self._padchar == "\t":
            if self._tabwidth == 0:
                return ""
            cell_width = -(-cell_width // self._tabwidth) * self._tabwidth
            return "\t" * -(-(cell_width - text_width) // self._tabwidth)
        return self._padchar * (cell_width - text_width)


_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                   "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` (``1h30m``, ``90s``, ``1.5h``, ``0``) → nanoseconds."""
    import re

    s = text.strip()
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    pos = 0
    pattern = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
    while pos < len(s):
        m = pattern.match(s, pos)
        if m is None:
            if re.match(r"\d+\.?\d*|\.\d+", s[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * int(round(total))
