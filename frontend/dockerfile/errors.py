"""The Dockerfile frontend's own error type.

Every error the frontend raises because of its input (the Dockerfile, the frontend options, a named
context, a base image's config) is a :class:`DockerfileError`. The converter reports only these (and
the LLB builder's ``LLBError``) as "Dockerfile:N: …"; any other exception is a bug in the frontend and
travels on as such, never disguised as a problem in the user's file.
"""

from __future__ import annotations

import re

_SURROGATES = re.compile("[\udc80-\udcff]")


def printable(text: str) -> str:
    """``text`` with each byte that was not UTF-8 in the Dockerfile (decoded as a surrogate escape)
    replaced by U+FFFD, as Go prints such a string into an error or JSON."""
    return _SURROGATES.sub("\ufffd", text)


class DockerfileError(Exception):
    """Input the frontend refuses. ``dockerfile_lines`` are the 1-based lines at fault, when known."""

    dockerfile_lines: tuple[int, int] | None = None

    def __init__(self, message: str, *args: object) -> None:
        super().__init__(printable(message), *args)
