"""Media types of manifests, indexes, configs and layers (OCI and Docker schema 2)."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
# What we send as Accept for manifests, most preferred first.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST, "*/*"])

GZIP = "gzip"
ZSTD = "zstd"
UNCOMPRESSED = ""


def layer_compression(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``""`` for a layer media type; ValueError for non-layer types."""
    mt = media_type.lower()
    if mt in ("application/vnd.docker.image.rootfs.diff.tar.gzip",
              "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
              "application/vnd.oci.image.layer.v1.tar+gzip",
              "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"):
        return GZIP
    if mt in ("application/vnd.oci.image.layer.v1.tar+zstd",
              "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"):
        return ZSTD
    if mt in ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar",
              "application/vnd.oci.image.layer.nondistributable.v1.tar"):
        return UNCOMPRESSED
    raise ValueError(f"unsupported layer media type {media_type!r}")


def sniff_kind(media_type: str, parsed: dict) -> str:
    """``"index"`` or ``"manifest"`` for a fetched manifest document (media type from the HTTP
    header or the document; old registries send neither for OCI, so the shape decides)."""
    mt = media_type or str(parsed.get("mediaType", ""))
    if mt in DOCKER_SCHEMA1 or parsed.get("schemaVersion") == 1:
        raise ValueError("Docker schema 1 manifests are not supported")
    if mt in INDEXES:
        return "index"
    if mt in MANIFESTS:
        return "manifest"
    if "manifests" in parsed:
        return "index"
    if "layers" in parsed and "config" in parsed:
        return "manifest"
    raise ValueError(f"unsupported manifest media type {mt!r}")
