"""Image references split the way a registry client needs them (domain, repository, tag/digest).

Parsing and normalisation (``busybox`` → ``docker.io/library/busybox:latest``) reuse
``buildkitpy.llb.reference``; this adds the registry host Docker Hub is actually served from.
"""

from __future__ import annotations

from dataclasses import dataclass

from buildkitpy.errors import InvalidArgument
from buildkitpy.llb.errors import LLBError
from buildkitpy.llb.reference import DEFAULT_DOMAIN, parse_normalized

DOCKER_HUB_REGISTRY = "registry-1.docker.io"


@dataclass(frozen=True)
class Reference:
    domain: str  # as written after normalisation: docker.io, localhost:5000, ...
    repository: str  # library/busybox
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.repository}"

    @property
    def object(self) -> str:
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag

    @property
    def registry_host(self) -> str:
        return DOCKER_HUB_REGISTRY if self.domain == DEFAULT_DOMAIN else self.domain

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.repository, self.tag, digest)

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(ref: str) -> Reference:
    """Normalise ``ref``; ``:latest`` is implied when neither tag nor digest is given."""
    try:
        parsed = parse_normalized(ref)
    except LLBError as exc:
        raise InvalidArgument(str(exc)) from None
    domain, _, repository = parsed.name.partition("/")
    tag = parsed.tag or ("" if parsed.digest else "latest")
    if parsed.digest and not parsed.digest.startswith("sha256:"):
        raise InvalidArgument(f"image reference {ref!r}: only sha256 digests are supported")
    return Reference(domain, repository, tag, parsed.digest.lower())
