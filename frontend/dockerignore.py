"""``.dockerignore``: reading the file and matching paths with moby/patternmatcher semantics.

These are not gitignore rules. A pattern is anchored at the context root (``*.go`` only matches at
the top level; write ``**/*.go`` for any depth), ``*`` and ``?`` never cross ``/``, ``**`` crosses any
number of directories, ``[...]`` is a character class and ``\\`` escapes. A path is ignored when the
last pattern that matches it, or one of its parent directories, is not an exclusion (``!pattern``).

The frontend sends ``DockerIgnore.patterns`` verbatim as the local source's exclude patterns; the
matcher (``buildkitpy.fsutil.patterns``, shared with the daemon) is for places that filter files
themselves.
"""

from __future__ import annotations

from buildkitpy.fsutil.patterns import Pattern, PatternError, PatternMatcher
from buildkitpy.fsutil.patterns import go_clean as clean_path
from buildkitpy.gocompat import trim_space

__all__ = ["DockerIgnore", "PatternError", "clean_path", "read_ignore_file"]


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


class DockerIgnore:
    """Ordered ignore patterns; later patterns override earlier ones.

    Errors carry BuildKit's own wording (``syntax error in pattern``), as ``docker build`` shows it.
    """

    def __init__(self, patterns: list[str]):
        self.patterns = list(patterns)
        try:
            self._matcher = PatternMatcher(self.patterns)
        except PatternError as e:
            raise PatternError(e.go_message, e.go_message) from None

    @classmethod
    def parse(cls, data: bytes | str) -> DockerIgnore:
        """From the content of a ``.dockerignore`` file."""
        return cls(read_ignore_file(data))

    @property
    def compiled(self) -> list[Pattern]:
        return self._matcher.patterns

    @property
    def exclusions(self) -> bool:
        """Whether any ``!`` pattern exists (a walker cannot skip an ignored directory then)."""
        return self._matcher.exclusions

    def matches(self, path: str) -> bool:
        """Whether ``path`` (slash-separated, relative to the context root) is ignored."""
        file = clean_path(path)
        if file == ".":
            return False  # the context root itself is never ignored
        try:
            return self._matcher.matches_or_parent_matches(file)
        except PatternError as e:
            raise PatternError(e.go_message, e.go_message) from None
