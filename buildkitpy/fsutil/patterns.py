"""Include/exclude pattern matching with the semantics of moby/patternmatcher (dockerignore syntax).

The one implementation for ``.dockerignore``, local-source include/exclude patterns, COPY
``--include``/``--exclude`` and content checksums, as BuildKit uses patternmatcher for all of them.

Why not pathspec: patternmatcher's rules differ from gitignore in ways that change what gets sent
(patterns are anchored at the root, ``*`` never crosses ``/``, a pattern matching a directory
matches everything below it, later ``!`` exceptions re-include, ``**`` at the start or end is a
suffix/prefix test). A faithful port is shorter than proving pathspec equivalent.

Paths and patterns are ``/``-separated and relative to the transfer root.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from buildkitpy.errors import InvalidArgument
from buildkitpy.gocompat import trim_space

__all__ = ["PatternError", "Pattern", "PatternMatcher", "go_clean", "MatchInfo", "check_glob_syntax",
           "glob_match", "contains_wildcards"]

# What Go's filepath.Match (and so patternmatcher) says about any malformed pattern.
GO_SYNTAX_ERROR = "syntax error in pattern"

# Characters that are special in a regexp but plain in a filepath glob.
_REGEX_ESCAPE = set(".+()|{}$")


class PatternError(InvalidArgument, ValueError):
    """A malformed include/exclude pattern.

    The message names the pattern and the cause; ``go_message`` is the terser text BuildKit itself
    reports (``syntax error in pattern`` for every syntax problem), which ``.dockerignore`` users see.
    """

    def __init__(self, message: str, go_message: str = GO_SYNTAX_ERROR) -> None:
        super().__init__(message)
        self.go_message = go_message


def go_clean(path: str) -> str:
    """Go's ``path.Clean``: lexical shortest form (``//a/./b/../c`` → ``/a/c``, ``""`` → ``.``)."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(comp)
    out = "/".join(parts)
    if rooted:
        return "/" + out
    return out or "."


def check_glob_syntax(pattern: str) -> None:
    """Raise ``PatternError`` where Go's ``filepath.Match`` would report ``ErrBadPattern``."""
    i, n = 0, len(pattern)

    def bad(why: str) -> PatternError:
        return PatternError(f"invalid pattern {pattern!r}: {why}")

    def class_char(j: int) -> int:
        # One (possibly escaped) character of a [...] class; returns the index after it.
        if j >= n or pattern[j] in "-]":
            raise bad("malformed character class")
        if pattern[j] == "\\":
            j += 1
            if j >= n:
                raise bad("trailing backslash in character class")
        j += 1
        if j >= n:
            raise bad("unterminated character class")
        return j

    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise bad("trailing backslash")
            i += 2
        elif c == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            ranges = 0
            while True:
                if i < n and pattern[i] == "]" and ranges > 0:
                    i += 1
                    break
                i = class_char(i)
                if pattern[i] == "-":
                    i = class_char(i + 1)
                ranges += 1
        else:
            i += 1


@dataclass
class Pattern:
    """One cleaned pattern; ``exclusion`` is a ``!`` exception.

    Simple shapes skip the regexp, as patternmatcher does: ``exact``, ``prefix`` (``dir/**``),
    ``suffix`` (``**/name``); anything else is a ``regexp``. A regexp Go would fail to compile is an
    error only when the pattern is consulted, as in Go (an earlier match can make it moot).
    """

    text: str
    exclusion: bool = False
    kind: str = field(init=False, default="exact")
    _regexp: re.Pattern[str] | None = field(init=False, default=None, repr=False)
    _error: str = field(init=False, default="", repr=False)

    def __post_init__(self) -> None:
        self._compile()

    def __str__(self) -> str:
        return self.text

    def _compile(self) -> None:
        regex = "^"
        kind = "exact"
        p = self.text
        i, n = 0, len(p)
        iteration = 0
        error = ""
        while i < n:
            ch = p[i]
            i += 1
            if ch == "*":
                if i < n and p[i] == "*":
                    i += 1
                    if i < n and p[i] == "/":  # "**/" is the same as "**"
                        i += 1
                    if i >= n:  # trailing "**" matches everything below
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            regex += ".*"
                            kind = "regexp"
                    else:
                        regex += "(.*/)?"
                        kind = "regexp"
                    if iteration == 0:
                        kind = "suffix"
                else:
                    regex += "[^/]*"
                    kind = "regexp"
            elif ch == "?":
                regex += "[^/]"
                kind = "regexp"
            elif ch in _REGEX_ESCAPE:
                regex += "\\" + ch
            elif ch == "\\":
                if i < n:
                    escaped = _go_escape(p[i])
                    if escaped is None:
                        error = error or f"invalid escape sequence \\{p[i]}"
                    regex += escaped or ""
                    i += 1
                    kind = "regexp"
                else:
                    regex += "\\\\"
            elif ch in "[]":
                regex += ch
                kind = "regexp"
            else:
                regex += ch  # includes "^", an anchor in both regexp dialects
            iteration += 1
        self.kind = kind
        if error:
            self._error = error
        elif kind == "regexp":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    self._regexp = re.compile(regex + r"\Z", re.ASCII)
            except re.error as e:
                self._error = str(e)

    def without_trailing_glob(self) -> str:
        """The pattern minus a trailing ``/**`` or ``/*`` (used for directory-skip decisions)."""
        s = self.text
        if s.endswith("/**"):
            s = s[:-3]
        if s.endswith("/*"):
            s = s[:-2]
        return s

    def match(self, path: str) -> bool:
        kind = self.kind
        if kind == "exact":
            return path == self.text
        if kind == "prefix":
            return path.startswith(self.text[:-2])
        if kind == "suffix":
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix[:1] == "/" and path == suffix[1:]
        if self._regexp is None:
            raise PatternError(f"invalid pattern {self.text!r}: {self._error}")
        return self._regexp.match(path) is not None


# Backslash escapes that mean the same in Go's regexp and Python's re (with re.ASCII).
_SHARED_ESCAPES = frozenset("dDsSwWbBAaftnrvx")


def _go_escape(ch: str) -> str | None:
    """Python regexp text for Go's regexp ``\\`` + ``ch``; None where Go rejects the escape (or means
    something re cannot express, like ``\\pL``)."""
    if ch.isascii() and not ch.isalnum():
        return re.escape(ch)
    if ch == "z":
        return r"\Z"
    if ch in _SHARED_ESCAPES:
        return "\\" + ch
    return None


# Per-pattern "did the parent directory match" flags; None = nothing known about the parent.
MatchInfo = list[bool] | None


class PatternMatcher:
    """An ordered list of patterns; a later ``!pattern`` can re-include what an earlier one matched."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: list[Pattern] = []
        self.exclusions = False
        for raw in patterns:
            p = trim_space(raw)
            if not p:
                continue
            p = go_clean(p)
            exclusion = False
            if p[0] == "!":
                if len(p) == 1:
                    raise PatternError('illegal exclusion pattern: "!"', 'illegal exclusion pattern: "!"')
                exclusion = True
                p = p[1:]
                self.exclusions = True
            check_glob_syntax(p)
            self.patterns.append(Pattern(p, exclusion))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches_or_parent_matches(self, path: str) -> bool:
        """Whether ``path`` or any of its parent directories is matched (after exceptions)."""
        matched = False
        parent = _dirname(path)
        parent_dirs = parent.split("/") if parent != "." else []
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue
            m = pattern.match(path)
            if not m:
                for i in range(len(parent_dirs)):
                    if pattern.match("/".join(parent_dirs[: i + 1])):
                        m = True
                        break
            if m:
                matched = not pattern.exclusion
        return matched

    def could_match_below(self, dir_path: str) -> bool:
        """Whether an inclusion pattern might match something under ``dir_path`` (which itself is not
        matched): False lets a walk skip the directory. Conservative: True whenever unsure."""
        depth = len(dir_path.split("/"))
        for pattern in self.patterns:
            if pattern.exclusion:
                continue
            if "**" in pattern.text:
                return True
            head = Pattern("/".join(pattern.text.split("/")[:depth]))
            try:
                if head.match(dir_path):
                    return True
            except PatternError:
                return True  # e.g. a class or escape cut at a "/": cannot rule it out
        return False

    def matches_using_parent_results(self, path: str, parent_info: MatchInfo) -> tuple[bool, list[bool]]:
        """Like ``matches_or_parent_matches`` but reuses the parent directory's per-pattern results.

        Returns the verdict and the per-pattern info to hand to this path's children.
        """
        if parent_info is not None and len(parent_info) not in (0, len(self.patterns)):
            raise ValueError("wrong number of values in parent match info")
        known_parent = bool(parent_info)
        matched = False
        info = [False] * len(self.patterns)
        parent_dirs: Sequence[str] | None = None
        for i, pattern in enumerate(self.patterns):
            m = parent_info[i] if parent_info else False
            if not m:
                if pattern.exclusion != matched:
                    continue
                m = pattern.match(path)
                if not m and not known_parent:
                    if parent_dirs is None:
                        parent = _dirname(path)
                        parent_dirs = parent.split("/") if parent != "." else []
                    for j in range(len(parent_dirs)):
                        if pattern.match("/".join(parent_dirs[: j + 1])):
                            m = True
                            break
            info[i] = m
            if m:
                matched = not pattern.exclusion
        return matched, info


def _dirname(path: str) -> str:
    i = path.rfind("/")
    if i < 0:
        return "."
    return go_clean(path[:i]) if i > 0 else "/"


def contains_wildcards(name: str) -> bool:
    """fsutil's test for glob characters in a follow path component (``\\`` escapes one char)."""
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


def glob_match(pattern: str, name: str) -> bool:
    """Go ``filepath.Match`` of one path component (``*``/``?`` never match ``/``); False if malformed."""
    try:
        check_glob_syntax(pattern)
    except PatternError:
        return False
    regex = ""
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            regex += "[^/]*"
        elif c == "?":
            regex += "[^/]"
        elif c == "\\":
            regex += re.escape(pattern[i])
            i += 1
        elif c == "[":
            body = ""
            if pattern[i] == "^":
                body = "^"
                i += 1
            while pattern[i] != "]":  # a class never starts with "]" (check_glob_syntax)
                ch = pattern[i]
                if ch == "\\":
                    i += 1
                    body += re.escape(pattern[i])
                else:
                    body += ch if ch == "-" else re.escape(ch)
                i += 1
            regex += "[" + body + "]"
            i += 1
        else:
            regex += re.escape(c)
    try:
        return re.fullmatch(regex, name) is not None
    except re.error:
        return False
