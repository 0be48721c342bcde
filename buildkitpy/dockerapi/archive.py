"""``docker save`` / ``docker load`` archives.

A saved archive is both an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/…``) and
a Docker archive (``manifest.json`` naming the config and layer blobs, ``repositories``), as the
Docker Engine writes them since 25.0. Loading accepts either form; layers may be compressed or not.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from buildkitpy.dockerapi.http import HTTPError
from buildkitpy.dockerapi.imagestore import ImageRecord, ImageStore, familiar, normalize_tag
from buildkitpy.image import mediatypes

_OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def write_save(store: ImageStore, selected: list[tuple[str, ImageRecord]], dest: Path) -> None:
    """Write the archive of ``selected`` (name asked for, image) to ``dest`` (blocking)."""
    written: set[str] = set()
    manifests_json = []
    index_entries = []
    repositories: dict[str, dict[str, str]] = {}
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o444
            tar.addfile(info, io.BytesIO(data))

        def add_blob(digest: str) -> None:
            if digest in written:
                return
            written.add(digest)
            path = store.content.path(digest)
            info = tar.gettarinfo(str(path), arcname=_blob_name(digest))
            info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = 0o444, 0, 0, "", "", 0
            with open(path, "rb") as f:
                tar.addfile(info, f)

        for name, record in selected:
            manifest = store.manifest(record)
            tags = [t for t in record.tags if _asked_for(name, t)] or \
                ([] if name.removeprefix("sha256:") in record.id else record.tags[:1])
            add_blob(record.manifest_digest)
            add_blob(record.id)
            layers = [entry["digest"] for entry in manifest.get("layers") or []]
            for digest in layers:
                add_blob(digest)
            manifests_json.append({"Config": _blob_name(record.id),
                                   "RepoTags": [familiar(t) for t in tags],
                                   "Layers": [_blob_name(d) for d in layers]})
            for tag in tags:
                entry = {"mediaType": manifest.get("mediaType", mediatypes.OCI_MANIFEST),
                         "digest": record.manifest_digest,
                         "size": store.content.info(record.manifest_digest).size,
                         "annotations": {"io.containerd.image.name": tag,
                                         "org.opencontainers.image.ref.name": tag.rsplit(":", 1)[1]}}
                index_entries.append(entry)
                repo, _, tag_name = familiar(tag).rpartition(":")
                repositories.setdefault(repo, {})[tag_name] = record.id.split(":", 1)[1]
            if not tags:
                index_entries.append({"mediaType": manifest.get("mediaType", mediatypes.OCI_MANIFEST),
                                      "digest": record.manifest_digest,
                                      "size": store.content.info(record.manifest_digest).size})
        add_bytes("oci-layout", _OCI_LAYOUT)
        add_bytes("index.json", json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                                            "manifests": index_entries}).encode())
        add_bytes("manifest.json", json.dumps(manifests_json).encode())
        if repositories:
            add_bytes("repositories", json.dumps(repositories).encode())


def _asked_for(name: str, tag: str) -> bool:
    try:
        wanted = normalize_tag(name)
    except Exception:  # noqa: BLE001 - an ID, not a name
        return False
    if ":" in name.rsplit("/", 1)[-1]:
        return wanted == tag
    return tag.rsplit(":", 1)[0] == wanted.rsplit(":", 1)[0]


def _read_member(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> bytes:
    info = members.get(name)
    if info is None or not info.isfile():
        raise HTTPError(400, f"invalid image archive: {name} is missing")
    f = tar.extractfile(info)
    assert f is not None
    return f.read()


def load(store: ImageStore, path: Path) -> list[tuple[str, list[str]]]:
    """Import the images of a saved archive; returns (image ID, tags) per image (blocking)."""
    try:
        with tarfile.open(path, mode="r:*") as tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers()}
            if "manifest.json" in members:
                return _load_docker(store, tar, members)
            if "index.json" in members:
                return _load_oci(store, tar, members)
            raise HTTPError(400, "invalid image archive: neither manifest.json nor index.json found")
    except HTTPError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise HTTPError(400, f"invalid image archive: {exc}") from None


def _store_member(store: ImageStore, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                  name: str) -> tuple[str, int, bytes]:
    data = _read_member(tar, members, name)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.content.write_bytes(data, digest)
    return digest, len(data), data[:4]


def _layer_media_type(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "application/vnd.oci.image.layer.v1.tar+gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.oci.image.layer.v1.tar"


def _load_docker(store: ImageStore, tar: tarfile.TarFile,
                 members: dict[str, tarfile.TarInfo]) -> list[tuple[str, list[str]]]:
    entries = json.loads(_read_member(tar, members, "manifest.json"))
    if not isinstance(entries, list):
        raise HTTPError(400, "invalid image archive: manifest.json is not a list")
    out = []
    for entry in entries:
        config_digest, config_size, _ = _store_member(store, tar, members, entry["Config"])
        config = json.loads(store.content.read(config_digest))
        layers = []
        for layer_name in entry.get("Layers") or []:
            digest, size, head = _store_member(store, tar, members, layer_name)
            layers.append({"mediaType": _layer_media_type(head), "digest": digest, "size": size})
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(layers):
            raise HTTPError(400, f"invalid image archive: {len(layers)} layers for {len(diff_ids)} diff_ids")
        manifest = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                               "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": config_digest,
                                          "size": config_size},
                               "layers": layers}, separators=(",", ":")).encode()
        manifest_digest = _existing_manifest(store, members, tar, config_digest) or \
            store.content.write_bytes(manifest)
        store.add(config_digest, manifest_digest)
        tags = [store.tag(config_digest, t) for t in entry.get("RepoTags") or []]
        out.append((config_digest, tags))
    return out


def _existing_manifest(store: ImageStore, members: dict[str, tarfile.TarInfo], tar: tarfile.TarFile,
                       config_digest: str) -> str:
    """The manifest of the OCI half of the archive for this config, so a reload keeps its digest."""
    if "index.json" not in members:
        return ""
    try:
        index = json.loads(_read_member(tar, members, "index.json"))
        for entry in index.get("manifests") or []:
            name = _blob_name(entry["digest"])
            if name not in members:
                continue
            manifest = json.loads(_read_member(tar, members, name))
            if (manifest.get("config") or {}).get("digest") == config_digest:
                digest, _, _ = _store_member(store, tar, members, name)
                return digest
    except (ValueError, KeyError, TypeError, HTTPError):
        return ""
    return ""


def _load_oci(store: ImageStore, tar: tarfile.TarFile,
              members: dict[str, tarfile.TarInfo]) -> list[tuple[str, list[str]]]:
    index = json.loads(_read_member(tar, members, "index.json"))
    out = []
    for entry in index.get("manifests") or []:
        manifest_digest, _, _ = _store_member(store, tar, members, _blob_name(entry["digest"]))
        manifest = json.loads(store.content.read(manifest_digest))
        if "manifests" in manifest:
            raise HTTPError(400, "invalid image archive: nested indexes are not supported")
        config_digest, _, _ = _store_member(store, tar, members, _blob_name(manifest["config"]["digest"]))
        for layer in manifest.get("layers") or []:
            _store_member(store, tar, members, _blob_name(layer["digest"]))
        store.add(config_digest, manifest_digest)
        name = (entry.get("annotations") or {}).get("io.containerd.image.name", "")
        tags = [store.tag(config_digest, name)] if name else []
        out.append((config_digest, tags))
    return out

