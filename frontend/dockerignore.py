"""``.dockerignore``: reading the file and matching paths with moby/patternmatcher semantics.

These are not gitignore rules. A pattern is anchored at the context root (``*.go`` only matches at
the top level; write ``**/*.go`` for any depth), ``*`` and ``?`` never cross ``/``, ``**`` crosses any
number of directories, ``[...]`` is a character class and ``\\`` escapes. A path is ignored when the
last pattern that matches it, or one of its parent directories, is not an exclusion (``!pattern``).

The frontend sends ``DockerIgnore.patterns`` verbatim as the local source's exclude patterns; the
matcher is for places that filter files themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .dockerfile.gocompat import trim_space


class PatternError(ValueError):
    """A pattern Go's ``filepath.Match`` rejects (``syntax error in pattern``) or a lone ``!``."""


def clean_path(path: str) -> str:
    """Go's ``filepath.Clean`` for slash-separated paths (``posixpath.normpath`` keeps ``//``)."""
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


def read_ignore_file(data: bytes | str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, normalised as moby's ``ignorefile.ReadAll`` does.

    Lines whose first character is ``#`` are comments (an indented ``#`` is a pattern); blank lines
    are skipped; each pattern is trimmed and cleaned, ``/`` and ``./`` prefixes dropped, and a leading
    ``!`` kept in front of the cleaned pattern.
    """
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    patterns: list[str] = []
    for line in lines:
        line = line.removesuffix("\r")
        if line.startswith("#"):
            continue
        pattern = trim_space(line)
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = trim_space(pattern[1:])
        if pattern:
            pattern = clean_path(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def _validate(pattern: str) -> None:
    """Raise ``PatternError`` where ``filepath.Match`` would report ``ErrBadPattern``.

    Bad are a trailing ``\\`` and malformed classes: unclosed, empty (``[]``), or a range missing an
    end (``[a-]``, ``[-a]``).
    """
    bad = PatternError("syntax error in pattern")
    n = len(pattern)

    def class_char(i: int) -> int:
        if i >= n or pattern[i] in "-]":
            raise bad
        if pattern[i] == "\\":
            i += 1
            if i >= n:
                raise bad
        i += 1
        if i >= n:
            raise bad
        return i

    i = 0
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise bad
            i += 2
        elif ch == "[":
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


# Characters escaped before use in the regexp: regexp syntax with no meaning in filepath.Match.
_REGEX_ESCAPE = frozenset(".+()|{}$")


@dataclass
class Pattern:
    """One compiled pattern. Simple shapes skip the regexp, as patternmatcher does: ``exact``,
    ``prefix`` (``dir/**``), ``suffix`` (``**/name``); anything else is a ``regexp``."""

    text: str
    exclusion: bool = False
    kind: str = field(init=False, default="")
    _regex: re.Pattern[str] | None = field(init=False, default=None, repr=False)
    _regex_error: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        self._compile()

    def _compile(self) -> None:
        out = ["^"]
        kind = "exact"
        p = self.text
        i = 0
        step = 0
        while i < len(p):
            ch = p[i]
            i += 1
            if ch == "*":
                if i < len(p) and p[i] == "*":
                    i += 1
                    if i < len(p) and p[i] == "/":
                        i += 1  # "**/" is the same as "**"
                    if i >= len(p):
                        # a trailing "**" matches everything below, like .gitignore
                        if kind == "exact":
                            kind = "prefix"
                        else:
                            out.append(".*")
                            kind = "regexp"
                    else:
                        out.append("(.*/)?")
                        kind = "regexp"
                    if step == 0:
                        kind = "suffix"
                else:
                    out.append("[^/]*")
                    kind = "regexp"
            elif ch == "?":
                out.append("[^/]")
                kind = "regexp"
            elif ch in _REGEX_ESCAPE:
                out.append("\\" + ch)
            elif ch == "\\":
                if i < len(p):
                    nxt = p[i]
                    i += 1
                    # Go's regexp gives \d, \w ... their class meaning; \z is Python's \Z.
                    out.append("\\Z" if nxt == "z" else "\\" + nxt if nxt.isalnum() else re.escape(nxt))
                    kind = "regexp"
                else:
                    out.append("\\\\")
            elif ch in "[]":
                out.append(ch)
                kind = "regexp"
            else:
                out.append(ch)  # includes "^", an anchor in both regexp dialects
            step += 1
        self.kind = kind
        if kind == "regexp":
            try:
                self._regex = re.compile("".join(out) + r"\Z", re.ASCII)
            except re.error:
                self._regex_error = True

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        if self._regex is None:
            raise PatternError("syntax error in pattern")
        return self._regex.match(path) is not None


class DockerIgnore:
    """Ordered ignore patterns; later patterns override earlier ones."""

    def __init__(self, patterns: list[str]):
        self.patterns = list(patterns)
        self.compiled: list[Pattern] = []
        for raw in patterns:
            p = trim_space(raw)
            if not p:
                continue
            p = clean_path(p)
            exclusion = p.startswith("!")
            if exclusion:
                if len(p) == 1:
                    raise PatternError('illegal exclusion pattern: "!"')
                p = p[1:]
            _validate(p)
            self.compiled.append(Pattern(p, exclusion))

    @classmethod
    def parse(cls, data: bytes | str) -> DockerIgnore:
        """From the content of a ``.dockerignore`` file."""
        return cls(read_ignore_file(data))

    @property
    def exclusions(self) -> bool:
        """Whether any ``!`` pattern exists (a walker cannot skip an ignored directory then)."""
        return any(p.exclusion for p in self.compiled)

    def matches(self, path: str) -> bool:
        """Whether ``path`` (slash-separated, relative to the context root) is ignored."""
        file = clean_path(path)
        if file == ".":
            return False  # the context root itself is never ignored
        parent = file.rpartition("/")[0] if "/" in file else "."
        parent = clean_path(parent) if parent else "/"
        parent_dirs = parent.split("/")
        matched = False
        for pattern in self.compiled:
            # Only an inclusion can ignore a path not yet ignored, only an exclusion re-include one.
            if pattern.exclusion != matched:
                continue
            hit = pattern.match(file)
            if not hit and parent != ".":
                hit = any(pattern.match("/".join(parent_dirs[: i + 1])) for i in range(len(parent_dirs)))
            if hit:
                matched = not pattern.exclusion
        return matched
