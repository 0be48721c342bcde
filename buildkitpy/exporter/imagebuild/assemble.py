"""``assemble_image``: a build result as an OCI image (layers, config, manifest, index) in the
content store. Shared by the ``oci``, ``docker`` and ``image`` exporters."""

from __future__ import annotations

import functools
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from buildkitpy.content.store import ContentStore
from buildkitpy.errors import InvalidArgument
from buildkitpy.exporter.imagebuild import config as cfgdoc
from buildkitpy.exporter.imagebuild.blobs import compress_layer, layer_key
from buildkitpy.image import compression as comp
from buildkitpy.image import mediatypes
from buildkitpy.image.layerblobs import BlobCache, LayerBlob

EPOCH_METADATA = "source.date.epoch"
# Part of every cached layer blob's variant: blobs written before layers were diffed against
# their lower layers (see layertar) are not reused.
LAYER_FORMAT = ":changes=v2"


def _parse_epoch(value: str, where: str) -> int:
    try:
        epoch = int(value.strip())
    except ValueError:
        raise InvalidArgument(f"invalid SOURCE_DATE_EPOCH {value!r} ({where}): not an integer") from None
    if epoch < 0:
        raise InvalidArgument(f"invalid SOURCE_DATE_EPOCH {value!r} ({where}): negative")
    return epoch


@dataclass
class ImageOptions:
    """The exporter attributes that shape the image (BuildKit's image commit options)."""

    oci_mediatypes: bool = True
    compression: comp.CompressionConfig = field(default_factory=comp.CompressionConfig)
    rewrite_timestamp: bool = False
    epoch: int | None = None  # ``source-date-epoch`` attribute; else from the build (metadata/build-arg)
    manifest_annotations: dict[str, str] = field(default_factory=dict)
    index_annotations: dict[str, str] = field(default_factory=dict)
    descriptor_annotations: dict[str, str] = field(default_factory=dict)
    oci_artifact: bool | None = None  # attestation manifests as OCI artifacts (default: with OCI types)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, str], *, default_oci: bool) -> ImageOptions:
        """Parse ``oci-mediatypes``, ``compression*``, ``rewrite-timestamp``, ``source-date-epoch``
        and ``annotation[-manifest|-index|-manifest-descriptor].KEY`` (other keys are ignored:
        each exporter checks its own)."""
        opts = cls(oci_mediatypes=default_oci, compression=comp.parse_options(attrs))
        if "oci-mediatypes" in attrs:
            opts.oci_mediatypes = comp.parse_bool(attrs["oci-mediatypes"], "oci-mediatypes")
        if "oci-artifact" in attrs:
            opts.oci_artifact = comp.parse_bool(attrs["oci-artifact"], "oci-artifact")
            if opts.oci_artifact and not opts.oci_mediatypes:
                raise InvalidArgument(
                    'exporter option "oci-artifact=true" conflicts with "oci-mediatypes=false"')
        if "rewrite-timestamp" in attrs:
            opts.rewrite_timestamp = comp.parse_bool(attrs["rewrite-timestamp"], "rewrite-timestamp")
        if attrs.get("source-date-epoch", "").strip():
            opts.epoch = _parse_epoch(attrs["source-date-epoch"], "source-date-epoch option")
        for key, value in attrs.items():
            if not key.startswith("annotation"):
                continue
            kind, _, name = key.partition(".")
            if not name:
                raise InvalidArgument(f"invalid annotation option {key!r}: no annotation key")
            if "[" in kind:
                raise InvalidArgument(
                    f"annotation option {key!r}: per-platform annotations are not supported")
            target = {"annotation": opts.manifest_annotations,
                      "annotation-manifest": opts.manifest_annotations,
                      "annotation-index": opts.index_annotations,
                      "annotation-manifest-descriptor": opts.descriptor_annotations}.get(kind)
            if target is None:
                raise InvalidArgument(f"unknown annotation option {key!r}")
            target[name] = value
        if opts.compression.kind == comp.ZSTD and not opts.oci_mediatypes:
            raise InvalidArgument('exporter option "compression=zstd" conflicts with "oci-mediatypes=false" '
                                  '(Docker media types have no zstd layers)')
        if opts.index_annotations and not opts.oci_mediatypes:
            raise InvalidArgument("index annotations need oci-mediatypes=true")
        return opts


@dataclass
class BuiltManifest:
    """One platform's image."""

    platform: dict[str, str]
    descriptor: dict[str, Any]  # the manifest's descriptor (with platform when in an index)
    manifest: bytes
    config: bytes
    config_digest: str
    layers: list[dict[str, Any]]  # layer descriptors as in the manifest


@dataclass
class AssembledImage:
    """The result of ``assemble_image``: every blob is in ``store``."""

    descriptor: dict[str, Any]  # the top object: the manifest, or the index for multi-platform
    config_digest: str  # of the single platform's config ("" for an index)
    manifests: list[BuiltManifest]
    index: bytes | None
    store: ContentStore
    epoch: int | None = None
    attestations: list[dict[str, Any]] = field(default_factory=list)  # attestation manifests in the index

    @property
    def digest(self) -> str:
        return self.descriptor["digest"]

    def blobs(self) -> list[dict[str, Any]]:
        """Descriptors of every blob the image references, each once: the index, then per manifest
        the manifest, its config and its layers."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()

        def add(desc: dict[str, Any]) -> None:
            if desc["digest"] not in seen:
                seen.add(desc["digest"])
                out.append({k: desc[k] for k in ("mediaType", "digest", "size")})

        if self.index is not None:
            add(self.descriptor)
        for m in self.manifests:
            add(m.descriptor)
            add(json.loads(m.manifest)["config"])
            for layer in m.layers:
                add(layer)
        for desc in self.attestations:
            add(desc)
            doc = json.loads(self.store.path(desc["digest"]).read_bytes())
            add(doc["config"])
            for layer in doc["layers"]:
                add(layer)
        return out

    def blob_path(self, digest: str) -> Path:
        return self.store.path(digest)


def _worker(ctx: Any) -> Any:
    return ctx.bridge.solver.worker


def _platform_refs(ctx: Any) -> list[tuple[str | None, Any, dict[str, str]]]:
    """(platform key or None, result ref, platform) for each image to build."""
    from buildkitpy.worker import host_platform

    result = ctx.result
    worker = _worker(ctx)
    platforms = list(getattr(worker, "platforms", None) or [host_platform()])
    default = dict(platforms[0])
    raw = result.metadata.get("refs.platforms")
    if result.refs is None or (raw is None and len(result.refs) <= 1):
        ref = result.ref if result.refs is None else next(iter(result.refs.values()), None)
        key = None if result.refs is None else next(iter(result.refs), None)
        return [(key, ref, default)]
    if raw is None:
        raise InvalidArgument("result has several refs but no refs.platforms metadata naming their platforms")
    try:
        entries = json.loads(raw)["platforms"]
        out = []
        for entry in entries:
            key = entry["id"]
            if key not in result.refs:
                raise InvalidArgument(f"refs.platforms names {key!r}, which is not a result ref")
            p = entry.get("platform") or {}
            out.append((key, result.refs[key], {k: str(v) for k, v in p.items() if isinstance(v, str)}))
        return out
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"invalid refs.platforms metadata: {exc}") from None


def _metadata(result: Any, name: str, key: str | None) -> bytes | None:
    md = result.metadata
    if key is not None and f"{name}/{key}" in md:
        return md[f"{name}/{key}"]
    return md.get(name)


def _epoch(ctx: Any, options: ImageOptions, key: str | None) -> int | None:
    if options.epoch is not None:
        return options.epoch
    raw = _metadata(ctx.result, EPOCH_METADATA, key)
    if raw:
        return _parse_epoch(raw.decode(errors="replace"), f"{EPOCH_METADATA} metadata")
    attrs = getattr(getattr(ctx.bridge, "job", None), "frontend_attrs", None) or {}
    value = attrs.get("build-arg:SOURCE_DATE_EPOCH", "")
    if value.strip():
        return _parse_epoch(value, "build-arg")
    return None


def _layer_metas(worker: Any, layers: list[Path]) -> list[cfgdoc.LayerMeta]:
    # each layer's own record (listing every snapshot made an export's cost grow with the store)
    usage_of = getattr(worker.snapshots, "usage_of", None)
    if usage_of is None:
        by_id = {u.id: u for u in worker.snapshots.usage()} if hasattr(worker.snapshots, "usage") else {}
        usage_of = by_id.get
    out = []
    for path in layers:
        usage = usage_of(path.parent.name)
        out.append(cfgdoc.LayerMeta(usage.created if usage else os.stat(path).st_mtime,
                                    usage.description if usage else ""))
    return out


class _LayerExporter:
    """Produces each distinct layer's blob once per export, several layers at a time."""

    def __init__(self, worker: Any, options: ImageOptions, progress: Any, vertex: str) -> None:
        puller = worker.image_puller
        self.store: ContentStore = puller.store
        self.chains = puller.chains
        self.cache: BlobCache = worker.blob_cache
        self.options = options
        self.progress = progress
        self.vertex = vertex
        self.limiter = anyio.CapacityLimiter(max(2, min(os.cpu_count() or 2, 8)))
        self.blobs: dict[tuple[str, int | None], LayerBlob] = {}
        # Copy-mode snapshots have no per-layer dirs (``layers()`` is the whole tree): a pulled
        # snapshot's blob then stands for its top layer only and cannot be reused.
        self.per_layer = getattr(worker.snapshots, "mode", "overlay") == "overlay"
        self.snapshots = worker.snapshots

    def _reused(self, path: Path) -> LayerBlob | None:
        pulled = self.chains.layer_blob(path.parent.name) if self.per_layer and path.name == "fs" else None
        if pulled is None:
            return None
        digest, media_type, size, diff_id = pulled
        try:
            kind = comp.kind_of(media_type)
        except InvalidArgument:
            return None
        wanted = self.options.compression
        if wanted.force and kind != wanted.kind:
            return None
        if not self.store.exists(digest):
            return None
        return LayerBlob(digest, size, diff_id, kind, media_type=media_type, reused=True)

    def _blocking(self, path: Path, clamp: int | None) -> LayerBlob:
        reused = self._reused(path)  # base layers keep their times, as BuildKit leaves them
        if reused is not None:
            return reused
        key = layer_key(path)
        lowers = self.snapshots.lower_layers(path) if hasattr(self.snapshots, "lower_layers") else None
        variant = self.options.compression.variant + (f":clamp={clamp}" if clamp is not None else "")
        variant += LAYER_FORMAT
        cached = self.cache.get(key, variant)
        if cached is not None and self.store.exists(cached.digest):
            return cached
        blob = compress_layer(path, self.store, self.options.compression, clamp, lowers)
        self.cache.put(key, variant, blob)
        return blob

    async def one(self, path: Path, clamp: int | None) -> None:
        blob = await anyio.to_thread.run_sync(self._blocking, path, clamp, limiter=self.limiter)
        self.blobs[(str(path), clamp)] = blob

    async def run(self, wanted: list[tuple[Path, int | None]]) -> None:
        """The blobs of ``wanted``, in parallel, under one "exporting layers" status (BuildKit's)."""
        todo = list(dict.fromkeys((p, c) for p, c in wanted))
        self.progress.status(self.vertex, "exporting layers", name="exporting layers")
        async with anyio.create_task_group() as tg:
            for path, clamp in todo:
                tg.start_soon(self.one, path, clamp)
        self.progress.status(self.vertex, "exporting layers", name="exporting layers", completed=True)


async def assemble_image(ctx: Any, options: ImageOptions | Mapping[str, str], *, vertex: str | None = None,
                         allow_index: bool = True) -> AssembledImage:
    """Build the image of ``ctx.result`` (an ``ExportContext``) into the worker's content store.

    ``options`` is an ``ImageOptions`` or the exporter attributes to parse into one (then OCI media
    types are the default).

    Single-platform results give a manifest; results with ``refs`` and ``refs.platforms``
    metadata give an index of per-platform manifests (``allow_index=False`` rejects them, as the
    docker exporter does). Layer blobs are compressed in parallel, cached per layer and
    compression, and pulled base layers are reused as their registry blobs. ``vertex`` is the
    progress vertex the layer statuses are reported under (a new "exporting layers" vertex when
    not given).
    """
    if not isinstance(options, ImageOptions):
        options = ImageOptions.from_attrs(options, default_oci=True)
    if vertex is None:
        vertex = "sha256:" + secrets.token_hex(32)
        ctx.progress.vertex(vertex, "exporting layers", started=True)
        try:
            image = await assemble_image(ctx, options, vertex=vertex, allow_index=allow_index)
        except BaseException as exc:
            ctx.progress.vertex(vertex, error=str(exc) or type(exc).__name__, completed=True)
            raise
        ctx.progress.vertex(vertex, completed=True)
        return image
    worker = _worker(ctx)
    targets = _platform_refs(ctx)
    if len(targets) > 1 and not allow_index:
        raise InvalidArgument("docker exporter does not currently support exporting manifest lists")
    layers_per_target: list[list[Path]] = []
    for _, ref, _ in targets:
        snapshot = await ctx.bridge.evaluate(ref) if ref is not None else None
        layers_per_target.append(await anyio.to_thread.run_sync(snapshot.layers) if snapshot else [])
    epochs = [_epoch(ctx, options, key) for key, _, _ in targets]
    clamps = [e if options.rewrite_timestamp else None for e in epochs]

    exporter = _LayerExporter(worker, options, ctx.progress, vertex)
    await exporter.run([(p, clamps[i]) for i, layers in enumerate(layers_per_target) for p in layers])
    store = exporter.store
    oci = options.oci_mediatypes
    provenance = getattr(ctx, "provenance", None)
    attach = provenance is not None and provenance.attach(len(targets) > 1)

    job_cache = getattr(getattr(ctx.bridge, "solver_job", None), "remote_cache", None)  # a JobCache
    built: list[BuiltManifest] = []
    for i, (key, _, platform) in enumerate(targets):
        layers = layers_per_target[i]
        blobs = [exporter.blobs[(str(p), clamps[i])] for p in layers]
        metas = await anyio.to_thread.run_sync(_layer_metas, worker, layers)
        config = cfgdoc.patch_config(_metadata(ctx.result, "containerimage.config", key),
                                     [b.diff_id for b in blobs], metas, platform=platform, epoch=epochs[i],
                                     base_config=_metadata(ctx.result, "containerimage.base.config", key))
        if job_cache is not None:  # type=inline cache export: the build's cache records in the config
            config = await job_cache.image_config(config, layers, blobs)
        config_type = mediatypes.OCI_CONFIG if oci else mediatypes.DOCKER_CONFIG
        config_digest = await anyio.to_thread.run_sync(store.write_bytes, config)
        config_desc = cfgdoc.descriptor(config_type, config_digest, len(config))
        layer_descs = [cfgdoc.descriptor(comp.convert_media_type(b.media_type, oci) if b.media_type
                                         else comp.layer_media_type(b.kind, oci), b.digest, b.size)
                       for b in blobs]
        manifest = cfgdoc.manifest_json(config_desc, layer_descs, oci=oci,
                                        annotations=options.manifest_annotations or None)
        labels = {"containerd.io/gc.ref.content.0": config_digest}
        labels.update({f"containerd.io/gc.ref.content.{n + 1}": d["digest"]
                       for n, d in enumerate(layer_descs)})
        manifest_digest = await anyio.to_thread.run_sync(store.write_bytes, manifest, None, labels)
        ctx.progress.status(vertex, f"exporting manifest {manifest_digest}",
                            name=f"exporting manifest {manifest_digest}", completed=True)
        ctx.progress.status(vertex, f"exporting config {config_digest}",
                            name=f"exporting config {config_digest}", completed=True)
        media_type = mediatypes.OCI_MANIFEST if oci else mediatypes.DOCKER_MANIFEST
        in_index = len(targets) > 1 or attach
        desc = cfgdoc.descriptor(media_type, manifest_digest, len(manifest),
                                 annotations=None if in_index else (options.descriptor_annotations or None),
                                 platform=platform)  # (also alone: BuildKit's index.json entry has it)
        built.append(BuiltManifest(platform, desc, manifest, config, config_digest, layer_descs))

    if provenance is not None:  # the history record's provenance lists the exported layers
        for (key, _, _), m, paths in zip(targets, built, layers_per_target, strict=True):
            provenance.maker.exported[key] = list(zip([str(p) for p in paths], m.layers, strict=True))
    if len(built) == 1 and not attach:
        return AssembledImage(built[0].descriptor, built[0].config_digest, built, None, store, epochs[0])
    entries = [m.descriptor for m in built]
    if attach:
        entries += await _attestation_manifests(ctx, provenance, options, targets, built, store, vertex)
    index = cfgdoc.index_json(entries, oci=oci, annotations=options.index_annotations or None)
    labels = {f"containerd.io/gc.ref.content.m.{n}": m["digest"] for n, m in enumerate(entries)}
    index_digest = await anyio.to_thread.run_sync(store.write_bytes, index, None, labels)
    ctx.progress.status(vertex, f"exporting manifest list {index_digest}",
                        name=f"exporting manifest list {index_digest}", completed=True)
    media_type = mediatypes.OCI_INDEX if oci else mediatypes.DOCKER_MANIFEST_LIST
    top = cfgdoc.descriptor(media_type, index_digest, len(index),
                            annotations=options.descriptor_annotations or None)
    return AssembledImage(top, "", built, index, store,
                          epochs[0] if len(set(epochs)) == 1 else None, attestations=entries[len(built):])


async def _attestation_manifests(ctx: Any, provenance: Any, options: ImageOptions, targets: list,
                                 built: list[BuiltManifest], store: ContentStore, vertex: str) -> list[dict]:
    """One attestation manifest per platform manifest (``ctx.provenance``, a
    ``buildkitpy.attest.manifest.ExportProvenance``)."""
    names = provenance.subject_names(ctx.attrs, ctx.result.metadata or {})
    artifact = options.oci_artifact if options.oci_artifact is not None else options.oci_mediatypes
    out = []
    for (key, _, platform), m in zip(targets, built, strict=True):
        desc = await anyio.to_thread.run_sync(functools.partial(
            provenance.attestation_manifest, store, key, m.descriptor, platform, names,
            oci=options.oci_mediatypes, oci_artifact=artifact))
        if desc is None:  # nothing attested for this platform
            continue
        ctx.progress.status(vertex, f"exporting attestation manifest {desc['digest']}",
                            name=f"exporting attestation manifest {desc['digest']}", completed=True)
        out.append(desc)
    return out
