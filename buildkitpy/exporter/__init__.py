"""Exporters: where a finished build's result goes (``SolveRequest.Exporters``).

Each exporter is ``async def export(ctx: ExportContext) -> dict[str, str]`` returning its part of
``SolveResponse.ExporterResponse``. Exporting has two phases: :func:`validate` checks an exporter's
attrs when the Solve arrives, so a bad ``--output`` fails at once, before anything is built; the
export itself runs on the result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from buildkitpy.errors import InvalidArgument

if TYPE_CHECKING:
    from buildkitpy.gateway.bridge import FrontendResult, GatewayBridge
    from buildkitpy.progress import ProgressBus
    from buildkitpy.session.manager import Session


@dataclass
class ExportContext:
    index: int  # position in SolveRequest.Exporters: the client's attachable exporter id
    attrs: dict[str, str]
    result: FrontendResult
    bridge: GatewayBridge
    session: Session | None  # None when the build has no session
    progress: ProgressBus
    # Attestations to attach (image, oci, docker): a buildkitpy.attest.manifest.ExportProvenance.
    provenance: Any = None

    def require_session(self, what: str) -> Session:
        if self.session is None:
            raise InvalidArgument(f"{what} exporter needs a client session, but the build has none")
        return self.session


Exporter = Callable[[ExportContext], Awaitable[dict[str, str]]]


# Exporters a service of the daemon adds: ``moby`` (the Docker Engine API's image store, what
# buildx's docker driver asks for) exists only while that API is served, as in dockerd.
_REGISTERED: dict[str, Exporter] = {}


def register(kind: str, exporter: Exporter) -> None:
    _REGISTERED[kind] = exporter


def resolve(kind: str) -> Exporter:
    from buildkitpy.exporter import docker, image, local, oci, tar

    exporters: dict[str, Exporter] = {"local": local.export, "tar": tar.export, "oci": oci.export,
                                      "docker": docker.export, "image": image.export, **_REGISTERED}
    if kind in exporters:
        return exporters[kind]
    raise InvalidArgument(f"unknown exporter type {kind!r}")


def validate(kind: str, attrs: dict[str, str]) -> None:
    """Raise ``InvalidArgument`` for attrs that exporter ``kind`` would refuse (before the build)."""
    from buildkitpy.exporter import image, oci

    resolve(kind)
    if kind == "image":
        image.validate_attrs(attrs)
    elif kind in ("oci", "docker"):
        oci.validate_attrs(attrs, docker=kind == "docker")
