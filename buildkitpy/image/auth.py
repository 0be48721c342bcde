"""Registry authorization: the ``WWW-Authenticate`` challenge flow of the distribution spec.

A request goes out without credentials; on ``401`` the challenge says what to do:

- ``Basic realm=...``: send ``Authorization: Basic`` with the credentials for the host;
- ``Bearer realm=...,service=...,scope=...``: get a token from the realm (a GET with basic auth
  when there are credentials, a POST with ``refresh_token`` for an identity token) and send
  ``Authorization: Bearer <token>``.

Credentials come from a callback (``host -> (username, secret)``; empty strings mean anonymous),
e.g. ``buildkitpy.session.auth.credentials`` bound to the build's session.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

CredentialsFn = Callable[[str], Awaitable[tuple[str, str]]]

_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass
class Challenge:
    scheme: str  # "basic" or "bearer" (lower case)
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (several challenges may be comma-separated)."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = re.match(r"\s*([A-Za-z]+)\s+", text[pos:])
        if not m:
            m2 = re.match(r"\s*([A-Za-z]+)\s*$", text[pos:])
            if m2:
                out.append(Challenge(m2.group(1).lower()))
            break
        challenge = Challenge(m.group(1).lower())
        pos += m.end()
        while pos < len(text):
            pm = _PARAM.match(text, pos)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            challenge.params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = pm.end()
            # A new challenge starts with "<scheme> <param>=": stop parameter parsing there.
            if re.match(r"\s*[A-Za-z]+\s+[A-Za-z0-9_.-]+\s*=", text[pos:]):
                break
        out.append(challenge)
    return out


def basic_header(username: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()


def repository_scope(repository: str, actions: str = "pull") -> str:
    return f"repository:{repository}:{actions}"
