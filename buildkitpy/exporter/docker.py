"""The ``docker`` exporter: the image as a ``docker load``-able tar (an OCI layout plus Docker's
``manifest.json`` with ``RepoTags`` from ``name``), Docker media types unless ``oci-mediatypes=true``.
Single-platform only, as BuildKit's."""

from __future__ import annotations

from buildkitpy.exporter import ExportContext
from buildkitpy.exporter.oci import export_archive


async def export(ctx: ExportContext) -> dict[str, str]:
    return await export_archive(ctx, docker=True)
