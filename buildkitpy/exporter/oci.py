"""The ``oci`` exporter (and the archive writing it shares with ``docker``): the image as a tar
streamed to the client, as ``buildctl --output type=oci,dest=FILE`` expects.

Archive layout (like containerd's archive exporter, which BuildKit uses)::

    blobs/sha256/<hex>   every blob: index, manifests, configs, layers
    index.json           an OCI index of the exported descriptor, once per name, with
                         ``io.containerd.image.name`` / ``org.opencontainers.image.ref.name``
    manifest.json        docker variant only: ``docker load``'s Config/RepoTags/Layers
    oci-layout           ``{"imageLayoutVersion":"1.0.0"}``

Entries are sorted, owned by root with mtime 0: the archive is a pure function of the image.
"""

from __future__ import annotations

import base64
import datetime
import io
import secrets
import tarfile
import time
from collections.abc import Callable
from typing import Any

import anyio

from buildkitpy.errors import InvalidArgument
from buildkitpy.exporter import ExportContext
from buildkitpy.exporter.handoff import Handoff, HandoffClosed
from buildkitpy.exporter.imagebuild import AssembledImage, ImageOptions, assemble_image
from buildkitpy.exporter.imagebuild.config import go_json
from buildkitpy.image import mediatypes
from buildkitpy.llb.errors import LLBError
from buildkitpy.llb.reference import DEFAULT_DOMAIN, normalize_image_ref, parse_normalized
from buildkitpy.session import filesync

CHUNK = 1 << 20
# Chunks the archive thread may have ready before it waits for the session to take one.
HANDOFF_DEPTH = 4
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def normalized_names(value: str) -> list[str]:
    """``name`` option: comma-separated references, fully qualified, ``:latest`` when neither tag
    nor digest is given."""
    names = []
    for raw in value.split(","):
        raw = raw.strip()
        if not raw:
            continue
        try:
            names.append(normalize_image_ref(raw))
        except LLBError as exc:
            raise InvalidArgument(f"invalid image name {raw!r}: {exc}") from None
    return names


def familiar_tag(name: str) -> str:
    """``docker.io/library/busybox:1`` → ``busybox:1`` (``:latest`` when untagged), for RepoTags."""
    ref = parse_normalized(name)
    short = ref.name
    prefix = DEFAULT_DOMAIN + "/"
    if short.startswith(prefix):
        short = short[len(prefix):]
        if short.startswith("library/") and short.count("/") == 1:
            short = short[len("library/"):]
    return f"{short}:{ref.tag or 'latest'}"


def _ref_name(name: str) -> str:
    ref = parse_normalized(name)
    return ref.tag or ref.digest


def index_entries(top: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    if not names:
        return [top]
    out = []
    for name in names:
        desc = dict(top)
        annotations = dict(top.get("annotations") or {})
        annotations[ANNOTATION_IMAGE_NAME] = name
        if ref_name := _ref_name(name):
            annotations[ANNOTATION_REF_NAME] = ref_name
        desc["annotations"] = dict(sorted(annotations.items()))
        out.append(desc)
    return out


def archive_members(image: AssembledImage, top: dict[str, Any], names: list[str],
                    docker: bool) -> list[tuple[str, bytes | None, str | None]]:
    """(name, inline bytes, blob digest) for every member, sorted by name; directories have neither."""
    members: list[tuple[str, bytes | None, str | None]] = [("blobs/", None, None),
                                                           ("blobs/sha256/", None, None)]
    for blob in sorted(image.blobs(), key=lambda d: d["digest"]):
        members.append((f"blobs/sha256/{blob['digest'][7:]}", None, blob["digest"]))
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": index_entries(top, names)}
    members.append(("index.json", go_json(index).encode(), None))
    if docker:
        m = image.manifests[0]
        entry = {"Config": f"blobs/sha256/{m.config_digest[7:]}",
                 "RepoTags": [familiar_tag(n) for n in names] or None,
                 "Layers": [f"blobs/sha256/{d['digest'][7:]}" for d in m.layers]}
        members.append(("manifest.json", go_json([entry]).encode(), None))
    members.append(("oci-layout", OCI_LAYOUT, None))
    return members


class _Out:
    """The archive as chunks for the client: headers gathered, blob contents (read by tarfile in
    ``CHUNK`` pieces) passed on as they are, without another copy."""

    _LARGE = 64 * 1024

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._buf = bytearray()
        self._n = 0

    def write(self, data: bytes) -> int:
        self._n += len(data)
        if len(data) >= self._LARGE and isinstance(data, bytes):
            self.flush()
            self._emit(data)
            return len(data)
        self._buf += data
        if len(self._buf) >= CHUNK:
            self.flush()
        return len(data)

    def tell(self) -> int:
        return self._n

    def flush(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()


def write_archive(image: AssembledImage, top: dict[str, Any], names: list[str], docker: bool,
                  out: _Out) -> None:
    """Write the archive tar into ``out`` (blocking)."""
    # typeshed's _Fileobj asks for read/seek/close too; TarFile in mode "w" only calls write and
    # tell (and never closes a fileobj it was handed)
    tar = tarfile.TarFile(fileobj=out, mode="w",  # type: ignore[arg-type]
                          format=tarfile.PAX_FORMAT, copybufsize=CHUNK)
    for name, data, digest in archive_members(image, top, names, docker):
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        if data is None and digest is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            continue
        info.mode = 0o444
        if data is not None:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            with image.store.open(digest) as f:  # type: ignore[arg-type]
                f.seek(0, 2)
                info.size = f.tell()
                f.seek(0)
                tar.addfile(info, f)
    out.write(b"\0" * (2 * tarfile.BLOCKSIZE))
    # the end marker is ours: tarfile would pad to a 10 KiB record. TarFile.closed is a plain
    # attribute set in __init__ that typeshed does not declare
    tar.closed = True  # type: ignore[attr-defined]
    out.flush()


def exporter_response(image: AssembledImage, top: dict[str, Any], names: list[str]) -> dict[str, str]:
    resp = {"containerimage.digest": image.digest,
            "containerimage.descriptor": base64.b64encode(go_json(top).encode()).decode()}
    if image.config_digest:
        resp["containerimage.config.digest"] = image.config_digest
    if names:
        resp["image.name"] = ",".join(names)
    return resp


def _created_annotation(image: AssembledImage) -> str:
    tm = image.epoch if image.epoch is not None else int(time.time())
    return datetime.datetime.fromtimestamp(tm, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_attrs(attrs: dict[str, str], *, docker: bool) -> ImageOptions:
    """The image options of ``attrs``, or ``InvalidArgument`` (checked before the build)."""
    kind = "docker" if docker else "oci"
    if attrs.get("tar", "true").strip().lower() in ("false", "0", "no"):
        raise InvalidArgument(f"{kind} exporter: tar=false (a directory layout) is not supported")
    options = ImageOptions.from_attrs(attrs, default_oci=not docker)
    if attrs.get("name", "") != "*":
        normalized_names(attrs.get("name", ""))
    return options


async def export_archive(ctx: ExportContext, *, docker: bool) -> dict[str, str]:
    kind = "docker" if docker else "oci"
    attrs = ctx.attrs
    options = validate_attrs(attrs, docker=docker)
    if docker and ctx.provenance is not None and ctx.provenance.requested and "oci-mediatypes" not in attrs:
        options.oci_mediatypes = True  # BuildKit: attestations make OCI media types the default
    session = ctx.require_session(kind)
    name_attr = attrs.get("name", "")
    if name_attr == "*":
        name_attr = ctx.result.metadata.get("image.name", b"").decode()
    names = normalized_names(name_attr)

    vertex = "sha256:" + secrets.token_hex(32)
    ctx.progress.vertex(vertex, f"exporting to {kind} image format", started=True)
    try:
        image = await assemble_image(ctx, options, vertex=vertex, allow_index=not docker)
        top = dict(image.descriptor)
        annotations = dict(top.get("annotations") or {})
        annotations.setdefault(ANNOTATION_CREATED, _created_annotation(image))
        top["annotations"] = dict(sorted(annotations.items()))
        response = exporter_response(image, top, names)

        ctx.progress.status(vertex, "sending tarball", name="sending tarball")
        handoff = Handoff[bytes](HANDOFF_DEPTH)

        async def produce() -> None:
            # Only a complete archive is finished: on a failure the task group cancels the sending
            # task, so the client's call fails instead of ending with an archive cut short.
            try:
                await anyio.to_thread.run_sync(write_archive, image, top, names, docker, _Out(handoff.put))
            except HandoffClosed:
                return  # the client stopped reading (it answered early); send_bytes reports why
            handoff.finish()

        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            async with handoff:  # leaving it stops the thread's put()s
                await filesync.send_bytes(session.channel, handoff, exporter_id=str(ctx.index),
                                          metadata=response)
        ctx.progress.status(vertex, "sending tarball", name="sending tarball", completed=True)
    except BaseException as exc:
        ctx.progress.vertex(vertex, error=str(exc) or type(exc).__name__, completed=True)
        raise
    ctx.progress.vertex(vertex, completed=True)
    return response


async def export(ctx: ExportContext) -> dict[str, str]:
    return await export_archive(ctx, docker=False)

