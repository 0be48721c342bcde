"""Docker image reference normalisation (``docker.io/library/...:latest``), like
distribution/reference's ``ParseNormalizedNamed`` + ``TagNameOnly``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import LLBError

_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")

DEFAULT_DOMAIN = "docker.io"


@dataclass(frozen=True)
class ImageReference:
    name: str  # domain/path
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def familiar(self) -> str:
        """distribution/reference's ``FamiliarString``: ``docker.io/library/alpine:3`` → ``alpine:3``."""
        name = self.name
        if name.startswith(DEFAULT_DOMAIN + "/"):
            name = name[len(DEFAULT_DOMAIN) + 1:]
            if name.startswith("library/") and name.count("/") == 1:
                name = name[len("library/"):]
        return name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_normalized(ref: str) -> ImageReference:
    """Fully qualify ``ref`` (``busybox`` → ``docker.io/library/busybox``); raises ``LLBError``."""
    if _HEX64.match(ref):
        raise LLBError(f"invalid image reference {ref!r}: cannot specify 64-byte hexadecimal strings")
    first, slash, rest = ref.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if not slash or not looks_like_host:
        domain, remainder = DEFAULT_DOMAIN, ref
    else:
        domain, remainder = first, rest
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = "library/" + remainder
    remote_name = remainder.split(":", 1)[0]
    if remote_name.lower() != remote_name:
        raise LLBError(f"invalid image reference {ref!r}: repository name ({remote_name}) must be lowercase")
    m = _REFERENCE.match(f"{domain}/{remainder}")
    if not m:
        raise LLBError(f"invalid image reference {ref!r}: invalid reference format")
    if len(m["name"]) > 255:
        raise LLBError(f"invalid image reference {ref!r}: repository name longer than 255 characters")
    return ImageReference(m["name"], m["tag"] or "", m["digest"] or "")


def normalize_image_ref(ref: str) -> str:
    """``parse_normalized`` plus ``:latest`` when neither tag nor digest is given."""
    parsed = parse_normalized(ref)
    if not parsed.tag and not parsed.digest:
        parsed = ImageReference(parsed.name, "latest")
    return str(parsed)
