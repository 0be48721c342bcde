"""Cache-mount contents in a remote cache (beyond BuildKit: its issue #1474).

Opt-in on the export: ``cache-mounts=true`` carries every named cache mount the build used
(``RUN --mount=type=cache,id=…``, without ``from=``), ``cache-mounts=<id>;<id>`` the ones named.
Each travels as one more gzip layer blob in the cache manifest (registry and local backends), with
its diffID and the annotation ``buildkitpy.cachemount.id``; BuildKit ignores such entries (no record
names them). Importing a cache seeds each carried mount the importing daemon does not have yet
(an existing mount is never overwritten); the blob is checked against its digest and diffID.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from buildkitpy.api import ops_pb2
from buildkitpy.errors import BuildkitpyError, InvalidArgument
from buildkitpy.image import compression as comp
from buildkitpy.image import mediatypes
from buildkitpy.image.registry import Descriptor
from buildkitpy.remotecache.chains import ANNOTATION_UNCOMPRESSED

log = logging.getLogger(__name__)

ANNOTATION_ID = "buildkitpy.cachemount.id"
ATTR = "cache-mounts"


@dataclass(frozen=True)
class MountBlob:
    id: str
    digest: str
    size: int
    diff_id: str

    def to_json(self, oci: bool) -> dict[str, Any]:
        ann = {ANNOTATION_UNCOMPRESSED: self.diff_id, ANNOTATION_ID: self.id}
        return {"mediaType": comp.layer_media_type(comp.GZIP, oci), "digest": self.digest,
                "size": self.size, "annotations": ann}


def wanted(attrs: dict[str, str], used: set[str]) -> list[str]:
    """The cache ids an export carries (none unless the attribute asks)."""
    raw = attrs.get(ATTR, "").strip()
    if not raw or raw.lower() in ("false", "0"):
        return []
    if raw.lower() in ("true", "1", "all"):
        return sorted(used)
    return [x for x in (s.strip() for s in raw.split(";")) if x]


def used_ids(op: Any) -> set[str]:
    """Named cache mounts of an exec op (those without a source input)."""
    if not op.HasField("exec"):
        return set()
    return {m.cacheOpt.ID for m in op.exec.mounts
            if m.mountType == ops_pb2.CACHE and m.cacheOpt.ID and m.input < 0}


async def pack(worker: Any, cache_mounts: Any, ids: list[str]) -> list[MountBlob]:
    """Each existing cache mount of ``ids`` as a gzip layer blob in the worker's content store."""
    from buildkitpy.exporter.imagebuild.blobs import compress_layer

    store = worker.image_puller.store
    out = []
    for cache_id in ids:
        path = cache_mounts.named_dir(cache_id)
        if not path.is_dir():
            continue
        blob = await anyio.to_thread.run_sync(compress_layer, path, store, comp.CompressionConfig())
        out.append(MountBlob(cache_id, blob.digest, blob.size, blob.diff_id))
    return out


def from_entries(entries: list[Any]) -> list[MountBlob]:
    out = []
    for entry in entries:
        ann = entry.get("annotations") if isinstance(entry, dict) else None
        if isinstance(ann, dict) and ann.get(ANNOTATION_ID) and ann.get(ANNOTATION_UNCOMPRESSED):
            desc = Descriptor.from_json(entry, "cache mount entry")
            out.append(MountBlob(str(ann[ANNOTATION_ID]), desc.digest, desc.size,
                                 str(ann[ANNOTATION_UNCOMPRESSED])))
    return out


async def seed(worker: Any, cache_mounts: Any, source: Any, ref: Any, mounts: list[MountBlob],
               name: str) -> list[str]:
    """Seed the mounts this daemon does not have; returns the ids seeded. A mount that cannot be
    fetched or does not check out is logged and skipped (the build then starts it empty)."""
    store = worker.image_puller.store
    seeded = []
    for m in mounts:
        target: Path = cache_mounts.named_dir(m.id)
        if target.exists():
            continue
        try:
            with store.ingest(m.digest, m.size) as writer:
                if writer is not None:
                    desc = Descriptor(mediatypes.OCI_MANIFEST, m.digest, m.size)
                    await source.fetch_blob(ref, desc, writer.write)
                    writer.commit()

            await anyio.to_thread.run_sync(_unpack, store.path(m.digest), m.diff_id, target)
            seeded.append(m.id)
        except (BuildkitpyError, OSError, InvalidArgument) as exc:
            log.warning("%s: cache mount %s not seeded: %s", name, m.id, exc)
    return seeded


def _unpack(blob: Path, diff_id: str, target: Path) -> None:
    """The gzip layer ``blob`` as the new directory ``target`` (appears complete or not at all)."""
    from buildkitpy.image.unpack import apply_layer_blob
    from buildkitpy.snapshot.fs import remove_tree

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".seed-", dir=target.parent))
    try:
        apply_layer_blob(blob, mediatypes.GZIP, tmp, diff_id)
        os.chmod(tmp, 0o755)
        os.rename(tmp, target)
    except BaseException:
        remove_tree(tmp)
        raise
