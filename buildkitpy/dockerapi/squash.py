"""``squash`` for classic builds: the layers a build added on top of its last stage's base image
merged into one, as the Engine's image squash does.

The new image has the base image's layers plus one layer holding the build's net change (later
layers win, whiteouts applied; whiteouts and opaque markers that may hide base content are kept),
the built image's config, every history entry of the build marked ``empty_layer`` and a last entry
``merge <built id> to <base id>`` (``create new from <built id>`` on ``scratch``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from buildkitpy.dockerapi.imagestore import ImageRecord, ImageStore
from buildkitpy.errors import InvalidArgument

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass
class _Entry:
    info: tarfile.TarInfo
    data: Path | None  # spooled content of a regular file


def _open_layer(store: ImageStore, digest: str) -> IO[bytes]:
    f = store.content.open(digest)
    head = f.read(4)
    f.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    if head == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(f)  # type: ignore[return-value]
    return f


def _clean(name: str) -> str:
    """A member name relative to the root ("" for the root itself)."""
    return posixpath.normpath("/" + name).lstrip("/")


def _below(path: str, parent: str) -> bool:
    return path.startswith(parent + "/")


class _Merge:
    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.entries: dict[str, _Entry] = {}
        self.whiteouts: set[str] = set()
        self.opaques: set[str] = set()
        self._n = 0

    def _drop_below(self, parent: str, *, including: bool) -> None:
        for table in (self.entries, self.whiteouts, self.opaques):
            for path in [p for p in table if _below(p, parent) or (including and p == parent)]:
                if isinstance(table, dict):
                    table.pop(path)
                else:
                    table.discard(path)

    def add_layer(self, stream: IO[bytes]) -> None:
        """One layer: its whiteouts act on the layers below it, then its entries are added (a layer
        may hold both ``.wh.x`` and a new ``x``)."""
        added: list[_Entry] = []
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = _clean(member.name)
                if not name:
                    continue
                parent, leaf = posixpath.split(name)
                if leaf == OPAQUE:
                    self._drop_below(parent, including=False)
                    self.opaques.add(parent)
                    continue
                if leaf.startswith(WHITEOUT):
                    target = posixpath.join(parent, leaf[len(WHITEOUT):])
                    self._drop_below(target, including=True)
                    self.whiteouts.add(target)
                    continue
                member.name = name
                if member.islnk():
                    member.linkname = _clean(member.linkname)
                data = None
                if member.isfile():
                    self._n += 1
                    data = self.spool / str(self._n)
                    src = tar.extractfile(member)
                    assert src is not None
                    with open(data, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                added.append(_Entry(member, data))
        for entry in added:
            name = entry.info.name
            old = self.entries.get(name)
            if old is not None and old.info.isdir() and not entry.info.isdir():
                self._drop_below(name, including=False)
            self.entries[name] = entry

    def write(self, out: IO[bytes]) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            markers = [(p, OPAQUE) for p in self.opaques] + \
                [posixpath.split(p) for p in self.whiteouts]
            ordered = [e for _, e in sorted(self.entries.items())]
            for entry in [e for e in ordered if not e.info.islnk()] + [e for e in ordered if e.info.islnk()]:
                if entry.data is not None:
                    with open(entry.data, "rb") as f:
                        tar.addfile(entry.info, f)
                else:
                    tar.addfile(entry.info)
            for parent, leaf in sorted(markers):
                info = tarfile.TarInfo(posixpath.join(parent, leaf if leaf == OPAQUE else WHITEOUT + leaf))
                info.mtime = 0
                tar.addfile(info, io.BytesIO(b""))


class _Hashing:
    """A file object that hashes what passes through it."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def squash(store: ImageStore, image: ImageRecord, base: ImageRecord | None, base_config: dict[str, Any],
           base_layers: list[dict[str, Any]], tmp: Path) -> ImageRecord:
    """Record and return the squashed image of ``image`` over ``base`` (blocking)."""
    config = store.config(image)
    manifest = store.manifest(image)
    base_diff_ids = list((base_config.get("rootfs") or {}).get("diff_ids") or [])
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    layers = list(manifest.get("layers") or [])
    if diff_ids[:len(base_diff_ids)] != base_diff_ids or len(layers) != len(diff_ids):
        raise InvalidArgument("cannot squash: the built image does not extend its base image's layers")
    tmp.mkdir(parents=True, exist_ok=True)
    with store.holding() as holding:
        for layer in base_layers:
            store.hold(holding, layer["digest"])
        with tempfile.TemporaryDirectory(dir=tmp) as spool:
            merge = _Merge(Path(spool))
            for layer in layers[len(base_diff_ids):]:
                with _open_layer(store, layer["digest"]) as stream:
                    merge.add_layer(stream)
            blob_path = store.content.ingest_path()
            with open(blob_path, "wb") as raw:
                compressed = _Hashing(raw)
                with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as gz:  # type: ignore[arg-type]
                    plain = _Hashing(gz)  # type: ignore[arg-type]
                    merge.write(plain)  # type: ignore[arg-type]
            layer_digest = "sha256:" + compressed.sha.hexdigest()
            diff_id = "sha256:" + plain.sha.hexdigest()
            store.hold(holding, layer_digest)
            store.content.adopt(blob_path, layer_digest)
        base_history = base_config.get("history") or []
        history = []
        for i, entry in enumerate(config.get("history") or []):
            entry = dict(entry)
            if i >= len(base_history):
                entry["empty_layer"] = True
            history.append(entry)
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        comment = f"merge {image.id} to {base.id}" if base else f"create new from {image.id}"
        history.append({"created": now, "comment": comment})
        config["history"] = history
        config["created"] = now
        config["rootfs"] = {"type": "layers", "diff_ids": [*base_diff_ids, diff_id]}
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        config_digest = store.write_held(holding, config_bytes)
        oci = manifest.get("mediaType", "").startswith("application/vnd.oci") or \
            "vnd.oci" in (manifest.get("config") or {}).get("mediaType", "")
        layer_type = "application/vnd.oci.image.layer.v1.tar+gzip" if oci else \
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        new_manifest = dict(manifest)
        new_manifest["config"] = {**manifest["config"], "digest": config_digest, "size": len(config_bytes)}
        new_manifest["layers"] = [*base_layers, {"mediaType": layer_type, "digest": layer_digest,
                                                 "size": store.content.info(layer_digest).size}]
        manifest_digest = store.write_held(holding, json.dumps(new_manifest, separators=(",", ":")).encode())
        return store.add(config_digest, manifest_digest, base.id if base else "")
