"""Small re-creations of Go standard-library behaviour that leaks into user-visible results.

BuildKit's messages quote values with ``%q`` (``strconv.Quote``), trims with Go's notion of white space,
and parses durations, booleans, integers and memory sizes with Go's rules; matching those exactly is
what lets our errors and results equal BuildKit's.
"""

from __future__ import annotations

import datetime
import json
import re
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

# unicode.IsSpace: Latin-1 white space plus the Unicode White_Space property. Python's str.isspace()
# also accepts U+001C..U+001F, which Go does not.
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_GO_SPACE_CHARS = "".join(sorted(_GO_SPACE))


def is_space(ch: str) -> bool:
    """``unicode.IsSpace`` for one character."""
    return ch in _GO_SPACE


# A run of ``unicode.IsSpace`` characters.
SPACE_RUN = re.compile("[" + re.escape(_GO_SPACE_CHARS) + "]+")


def fields(s: str) -> list[str]:
    """``strings.Fields``: the runs of non-space characters."""
    return [f for f in SPACE_RUN.split(s) if f]


def trim_space(s: str) -> str:
    """``strings.TrimSpace``."""
    return s.strip(_GO_SPACE_CHARS)


def trim_left_space(s: str) -> str:
    """``strings.TrimLeftFunc(s, unicode.IsSpace)``."""
    return s.lstrip(_GO_SPACE_CHARS)


def is_letter(ch: str) -> bool:
    """``unicode.IsLetter`` (general category L*)."""
    return ch.isalpha()


def is_digit(ch: str) -> bool:
    """``unicode.IsDigit`` (general category Nd); ``str.isdigit`` would also accept superscripts."""
    return ch.isdecimal()


_SIMPLE_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}


def quote(s: str) -> str:
    """``strconv.Quote``: a double-quoted Go string literal.

    Text decoded with ``surrogateescape`` keeps invalid UTF-8 bytes as U+DC80..U+DCFF; Go prints those
    bytes as ``\\xNN``, so we do too.
    """
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0xDC80 <= cp <= 0xDCFF:
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"\\x{cp:02x}")
        elif 0xD800 <= cp <= 0xDFFF:
            out.append("\\ufffd")
        elif cp < 0x10000:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


# --- strconv ---------------------------------------------------------------------------------------

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(s: str) -> bool:
    """``strconv.ParseBool``; raises ``ValueError`` on anything else."""
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"strconv.ParseBool: parsing {quote(s)}: invalid syntax")


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _parse_digits(fn: str, s: str, digits: str, base: int) -> int:
    if not digits or any(c.lower() not in _DIGITS[:base] for c in digits):
        raise ValueError(f"strconv.{fn}: parsing {quote(s)}: invalid syntax")
    return int(digits, base)


def parse_uint(s: str, base: int, bits: int) -> int:
    """``strconv.ParseUint`` for an explicit base (no prefixes, no underscores, no sign)."""
    value = _parse_digits("ParseUint", s, s, base)
    if value >= 1 << bits:
        raise ValueError(f"strconv.ParseUint: parsing {quote(s)}: value out of range")
    return value


def parse_int(s: str, base: int, bits: int) -> int:
    """``strconv.ParseInt`` for an explicit base."""
    digits = s[1:] if s[:1] in ("+", "-") else s
    value = _parse_digits("ParseInt", s, digits, base)
    if s.startswith("-"):
        value = -value
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError(f"strconv.ParseInt: parsing {quote(s)}: value out of range")
    return value


_GO_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def parse_float(s: str) -> float:
    """``strconv.ParseFloat`` for decimal input (Python's ``float`` also takes ``1_0``, ``inf`` ...)."""
    if not _GO_FLOAT.match(s):
        raise ValueError(f"strconv.ParseFloat: parsing {quote(s)}: invalid syntax")
    return float(s)


# --- time.ParseDuration ----------------------------------------------------------------------------

_NS = 1
_DURATION_UNITS = {
    "ns": _NS,
    "us": 1000 * _NS,
    "\u00b5s": 1000 * _NS,  # U+00B5 micro sign
    "\u03bcs": 1000 * _NS,  # U+03BC Greek small letter mu
    "ms": 1000_000 * _NS,
    "s": 1000_000_000 * _NS,
    "m": 60 * 1000_000_000 * _NS,
    "h": 3600 * 1000_000_000 * _NS,
}
_MAX = 1 << 63


def parse_duration(s: str) -> int:
    """``time.ParseDuration``: returns nanoseconds, raises ``ValueError`` with Go's message."""
    orig = s
    invalid = ValueError(f"time: invalid duration {quote(orig)}")
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise invalid
        i = 0
        value = 0
        while i < len(s) and "0" <= s[i] <= "9":
            value = value * 10 + int(s[i])
            if value > _MAX:
                raise invalid
            i += 1
        pre = i > 0
        s = s[i:]
        post = False
        frac, scale = 0, 1.0
        if s.startswith("."):
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    nxt = frac * 10 + int(s[i])
                    if frac > (_MAX - 1) // 10 or nxt > _MAX:
                        overflow = True
                    else:
                        frac = nxt
                        scale *= 10
                i += 1
            post = i > 0
            s = s[i:]
        if not pre and not post:
            raise invalid
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {quote(orig)}")
        unit_name, s = s[:i], s[i:]
        unit = _DURATION_UNITS.get(unit_name)
        if unit is None:
            raise ValueError(f"time: unknown unit {quote(unit_name)} in duration {quote(orig)}")
        if value > _MAX // unit:
            raise invalid
        value *= unit
        if frac > 0:
            value += int(float(frac) * (float(unit) / scale))
            if value > _MAX:
                raise invalid
        total += value
        if total > _MAX:
            raise invalid
    if neg:
        return -total
    if total > _MAX - 1:
        raise invalid
    return total


# --- github.com/docker/go-units ----------------------------------------------------------------------

_BINARY = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def ram_in_bytes(size: str) -> int:
    """``units.RAMInBytes``: ``64m``, ``1.5GiB``, ``512 kb`` ... with binary multipliers."""
    sep = max(size.rfind(c) for c in "0123456789. ")
    if sep == -1:
        raise ValueError(f"invalid size: '{size}'")
    if size[sep] != " ":
        num, sfx = size[: sep + 1], size[sep + 1 :]
    else:
        num, sfx = size[:sep], size[sep + 1 :]
    value = parse_float(num)
    if value < 0:
        raise ValueError(f"invalid size: '{size}'")
    if not sfx:
        return int(value)
    low = sfx.lower()
    if len(sfx) > 3:
        raise ValueError(f"invalid suffix: '{sfx}'")
    if low[0] == "b":
        if len(low) > 1:
            raise ValueError(f"invalid suffix: '{low}'")
        return int(value)
    mul = _BINARY.get(low[0])
    if mul is None or (len(low) == 2 and low[1] != "b") or (len(low) == 3 and low[1:] != "ib"):
        raise ValueError(f"invalid suffix: '{low}'")
    return int(value * mul)


# --- github.com/moby/buildkit/util/suggest -------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit costs, over characters."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def suggest(value: str, options: list[str], case_sensitive: bool) -> str | None:
    """The closest option within edit distance 2, BuildKit's "did you mean" rule.

    BuildKit walks a Go map, so among equally close options its pick is arbitrary; we take the first in
    sorted order to stay deterministic. An exact match means the value was fine: no suggestion.
    """
    val = value if case_sensitive else value.lower()
    match, best = None, 3
    for opt in sorted(options):
        cand = opt if case_sensitive else opt.lower()
        if cand == val:
            return None
        dist = levenshtein(val, cand)
        if dist < best:
            best = dist
            if case_sensitive:
                match = cand
            elif value == value.lower():
                match = cand.lower()
            elif value == value.upper():
                match = cand.upper()
            else:
                match = cand
    return match


def with_suggestion(message: str, value: str, options: list[str], case_sensitive: bool) -> str:
    """``suggest.WrapError``: append `` (did you mean X?)`` when an option is close enough."""
    match = suggest(value, options, case_sensitive)
    return f"{message} (did you mean {match}?)" if match else message


# --- encoding/json and time.Time as Go writes them into manifests, configs and attestations ---


def go_json(value: Any) -> str:
    """Compact JSON with Go's HTML-safe escaping of ``<``, ``>`` and ``&``."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def go_json_indent(value: Any) -> bytes:
    """``json.MarshalIndent(v, "", "  ")`` for manifests and indexes."""
    text = json_indent(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _json_float(f: float) -> str:
    if f != f:
        return "NaN"
    if f == float("inf"):
        return "Infinity"
    if f == -float("inf"):
        return "-Infinity"
    return float.__repr__(f)

def _json_key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if k is True:
        return "true"
    if k is False:
        return "false"
    if k is None:
        return "null"
    if isinstance(k, int):
        return int.__repr__(k)
    if isinstance(k, float):
        return _json_float(k)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")

def json_indent(value: Any, *, ensure_ascii: bool = True) -> str:
    """``json.dumps(value, indent=2, ensure_ascii=...)``, the same text 3x faster: with an indent,
    the json module leaves its C encoder for a generator per container (a build's trace and
    provenance are thousands of them)."""
    enc = encode_basestring_ascii if ensure_ascii else encode_basestring
    out: list[str] = []
    append = out.append

    def write(o: Any, pad: str) -> None:
        if isinstance(o, str):
            append(enc(o))
        elif o is None:
            append("null")
        elif o is True:
            append("true")
        elif o is False:
            append("false")
        elif isinstance(o, int):
            append(int.__repr__(o))
        elif isinstance(o, float):
            append(_json_float(o))
        elif isinstance(o, dict):
            if not o:
                append("{}")
                return
            inner = pad + "  "
            sep = "{\n" + inner
            for k, v in o.items():
                append(sep)
                append(enc(_json_key(k)))
                append(": ")
                write(v, inner)
                sep = ",\n" + inner
            append("\n" + pad + "}")
        elif isinstance(o, (list, tuple)):
            if not o:
                append("[]")
                return
            inner = pad + "  "
            sep = "[\n" + inner
            for v in o:
                append(sep)
                write(v, inner)
                sep = ",\n" + inner
            append("\n" + pad + "]")
        else:
            raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
    write(value, "")
    return "".join(out)


def format_time(ts: float | int) -> str:
    """RFC 3339 with nanoseconds, trailing zeros dropped (Go's ``time.Time`` JSON form), in UTC."""
    ns = round(ts * 1_000_000_000) if isinstance(ts, float) else ts * 1_000_000_000
    sec, frac = divmod(ns, 1_000_000_000)
    base = datetime.datetime.fromtimestamp(sec, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return base + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"
