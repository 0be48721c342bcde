"""Content-addressed blob storage (image manifests, configs and layers)."""

from buildkitpy.content.store import BlobInfo, ContentStore, DigestMismatch, InvalidDigest, validate_digest

__all__ = ["BlobInfo", "ContentStore", "DigestMismatch", "InvalidDigest", "validate_digest"]
