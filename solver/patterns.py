"""Docker-style path patterns (``.dockerignore``, COPY ``--exclude``, local include/exclude).

Semantics of moby/patternmatcher: ``*`` and ``?`` stay within one path component, ``**`` spans any
number of components, ``!pattern`` re-includes, later patterns override earlier ones, and a pattern
that matches a directory matches everything below it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from buildkitpy.errors import InvalidArgument
from buildkitpy.fsutil.patterns import glob_match


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]
    n_dirs: int


def _clean(p: str) -> str:
    p = posixpath.normpath(p.strip())
    p = p.lstrip("/")
    return "." if p in ("", ".") else p


def _compile(text: str, *, double_star: bool = True) -> re.Pattern[str]:
    out = ["^"]
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "*":
            if double_star and i + 1 < n and text[i + 1] == "*":
                i += 1
                while i + 1 < n and text[i + 1] == "*":
                    i += 1
                if i + 1 < n and text[i + 1] == "/":
                    i += 1
                    out.append("(?:.*/)?")  # "**/" matches zero or more whole directories
                else:
                    out.append(".*")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            j = text.find("]", i + 1)
            if j < 0:
                raise InvalidArgument(f"invalid pattern {text!r}: unterminated character class")
            # Go negates a class with "^" only; "[!ab]" is the class of "!", "a" and "b".
            body = text[i + 1:j]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(text[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise InvalidArgument(f"invalid pattern {text!r}: {exc}") from exc


class PatternMatcher:
    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: list[_Pattern] = []
        for raw in patterns:
            raw = raw.strip()
            if not raw:
                continue
            exclusion = raw.startswith("!")
            if exclusion:
                raw = raw[1:].strip()
                if not raw:
                    raise InvalidArgument("illegal exclusion pattern: \"!\"")
            text = _clean(raw)
            self.patterns.append(_Pattern(text, exclusion, _compile(text), len(text.split("/"))))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def matches(self, path: str) -> bool:
        """Whether ``path`` (relative, '/'-separated) or one of its parents is matched."""
        path = _clean(path)
        parent_dirs = path.split("/")[:-1]
        matched = False
        for pat in self.patterns:
            if pat.exclusion != matched:
                continue  # this pattern cannot change the outcome
            hit = bool(pat.regex.match(path))
            if not hit and parent_dirs and pat.n_dirs <= len(parent_dirs):
                hit = bool(pat.regex.match("/".join(parent_dirs[:pat.n_dirs])))
            if hit:
                matched = not pat.exclusion
        return matched

    def could_match_below(self, dir_path: str) -> bool:
        """Whether some file under ``dir_path`` might match (used to prune walks for includes)."""
        dir_path = _clean(dir_path)
        if dir_path == ".":
            return True
        depth = len(dir_path.split("/"))
        for pat in self.patterns:
            if pat.exclusion:
                continue
            if "**" in pat.text:
                return True
            prefix = "/".join(pat.text.split("/")[:depth])
            if _compile(prefix).match(dir_path):
                return True
        return False


def contains_wildcards(name: str) -> bool:
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


def path_match(pattern: str, name: str) -> bool:
    """Go ``filepath.Match``: shell globbing where no wildcard crosses a '/' (``[!x]`` is not a
    negation in Go)."""
    return glob_match(pattern, name)
