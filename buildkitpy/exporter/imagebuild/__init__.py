"""Turning a build result into an OCI image: layer blobs, config, manifests (``assemble_image``)."""

from buildkitpy.exporter.imagebuild.assemble import (
    AssembledImage,
    BuiltManifest,
    ImageOptions,
    assemble_image,
)

__all__ = ["AssembledImage", "BuiltManifest", "ImageOptions", "assemble_image"]
