"""What ``Control.Solve`` does with ``CacheOptions``: check the entries before the build, load the
imports into the build's ``JobCache``, and export after the build.

Imports come from ``CacheOptions.Imports`` and from the frontend attributes a client sets for
frontends (``cache-imports``: JSON entries, ``cache-from``: comma-separated registry refs), each
entry once. An import that cannot be read (missing ref, unreachable registry, bad config) is a
warning and the build goes on without it, as in BuildKit; a result that fails to load during the
build is an error unless the import says ``ignore-error=true``. An export that fails fails the
build unless it says ``ignore-error=true`` (then it is a warning).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from buildkitpy.errors import BuildkitpyError, InvalidArgument, Unimplemented
from buildkitpy.image import compression as comp
from buildkitpy.remotecache.jobcache import ImportedCache, JobCache, first_error

if TYPE_CHECKING:
    from buildkitpy.solver.cachestorage import CacheStorage

log = logging.getLogger(__name__)

EXPORT_TYPES = ("registry", "local", "inline", "s3")
IMPORT_TYPES = ("registry", "local", "s3")
MODES = ("min", "max")


@dataclass(frozen=True)
class CacheEntry:
    type: str
    attrs: Mapping[str, str]

    def flag(self, key: str, default: bool) -> bool:
        if key not in self.attrs:
            return default
        return comp.parse_bool(self.attrs[key], key)


def _unsupported(kind: str, what: str) -> BuildkitpyError:
    if kind == "gha":
        return Unimplemented(f"cache {what} type=gha is not supported by buildkitpy (GitHub Actions cache "
                             "service); use type=registry, type=local or type=s3")
    return InvalidArgument(f"unknown cache {what} type {kind!r} (supported: "
                           f"{', '.join(EXPORT_TYPES if what == 'exporter' else IMPORT_TYPES)})")


def export_options(entry: CacheEntry) -> tuple[str, Any, bool]:
    """(mode, image options for the layers, image-manifest) of an export entry, or InvalidArgument."""
    from buildkitpy.exporter.imagebuild.assemble import ImageOptions

    mode = entry.attrs.get("mode", "min") or "min"
    if mode not in MODES:
        raise InvalidArgument(f"invalid cache export mode {mode!r} (want min or max)")
    oci = entry.flag("oci-mediatypes", True)
    image_manifest = entry.flag("image-manifest", entry.type in ("local",) and oci)
    if image_manifest and not oci:
        raise InvalidArgument("invalid cache export: image-manifest=true needs oci-mediatypes=true")
    attrs = {k: v for k, v in entry.attrs.items() if k.startswith(("compression", "force-compression"))}
    attrs["oci-mediatypes"] = "true" if oci else "false"
    return mode, ImageOptions.from_attrs(attrs, default_oci=oci), image_manifest


def validate_exports(entries: list[CacheEntry]) -> None:
    from buildkitpy.remotecache import local, registry, s3

    for e in entries:
        if e.type not in EXPORT_TYPES:
            raise _unsupported(e.type, "exporter")
        export_options(e)
        e.flag("ignore-error", False)
        if e.type == "registry":
            registry.cache_ref(dict(e.attrs))
        elif e.type == "local":
            local.dest_of(dict(e.attrs))
        elif e.type == "s3":
            s3.S3Options.from_attrs(dict(e.attrs))


def import_entries(cache_imports: list[Any], frontend_attrs: Mapping[str, str]) -> list[CacheEntry]:
    """Every import entry of the request, the frontend's ``cache-imports``/``cache-from`` included."""
    out: list[CacheEntry] = [CacheEntry(e.Type, dict(e.Attrs)) for e in cache_imports]
    raw = frontend_attrs.get("cache-imports", "")
    if raw:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise InvalidArgument(f"invalid cache-imports frontend option: {exc}") from None
        for item in doc if isinstance(doc, list) else []:
            if isinstance(item, dict):
                out.append(CacheEntry(str(item.get("Type") or item.get("type") or ""),
                                      {str(k): str(v) for k, v in (item.get("Attrs") or item.get("attrs")
                                                                   or {}).items()}))
    for ref in frontend_attrs.get("cache-from", "").split(","):
        if ref.strip():
            out.append(CacheEntry("registry", {"ref": ref.strip()}))
    unique: dict[tuple, CacheEntry] = {}
    for e in out:
        unique.setdefault((e.type, tuple(sorted(e.attrs.items()))), e)
    for e in unique.values():
        if e.type not in IMPORT_TYPES:
            raise _unsupported(e.type, "importer")
    return list(unique.values())


def _insecure(entry: CacheEntry) -> bool:
    return entry.flag("registry.insecure", False)


async def load_imports(worker: Any, session: Any, entries: list[CacheEntry],
                       progress: Any) -> list[ImportedCache]:
    from buildkitpy.remotecache import local, registry, s3

    out = []
    for e in entries:
        vertex = "sha256:" + secrets.token_hex(32)
        where = e.attrs.get("ref") or e.attrs.get("src") or e.attrs.get("name") or e.type
        name = f"importing cache manifest from {where}"
        progress.vertex(vertex, name, started=True)
        try:
            if e.type == "registry":
                imp = await registry.load(worker, session, dict(e.attrs), _insecure(e))
            elif e.type == "local":
                imp = await local.load(session, dict(e.attrs))
            else:
                imp = await s3.load(dict(e.attrs))
        except BuildkitpyError as exc:
            log.warning("cache import %s: %s", e.type, exc)
            progress.warning(vertex, f"failed to import cache ({e.type}): {exc}")
            progress.vertex(vertex, completed=True)
            continue
        progress.vertex(vertex, completed=True)
        if imp is not None:
            imp.ignore_error = e.flag("ignore-error", False)
            out.append(imp)
    return out


async def run_exports(worker: Any, session: Any, job_cache: JobCache, refs: list[Any],
                      entries: list[CacheEntry], progress: Any, cache_mounts: Any = None,
                      storage: Any = None) -> dict[str, str]:
    """Export the build's cache to every non-inline entry; returns ExporterResponse additions."""
    from buildkitpy.remotecache import cachemounts, exporter, local, registry, s3

    response: dict[str, str] = {}
    targets = exporter.result_nodes(job_cache, refs)
    for e in entries:
        if e.type == "inline":
            continue
        mode, image_options, image_manifest = export_options(e)
        mount_ids = cachemounts.wanted(dict(e.attrs), job_cache.used_mounts)
        carried = not mount_ids or e.type in ("registry", "local")
        vertex = "sha256:" + secrets.token_hex(32)
        progress.vertex(vertex, "exporting cache to " + ("client directory" if e.type == "local" else e.type),
                        started=True)
        try:
            if not carried:
                progress.warning(vertex, f"cache export ({e.type}): cache-mounts is carried by registry and "
                                         "local caches only; ignored")
            mounts = (await cachemounts.pack(worker, cache_mounts, mount_ids)
                      if mount_ids and carried and cache_mounts is not None else [])
            blobs = await exporter.prepare(worker, job_cache, targets, mode=mode, image_options=image_options,
                                           image_manifest=image_manifest, progress=progress, vertex=vertex,
                                           mounts=mounts, storage=storage)
            if blobs is None:
                progress.status(vertex, "skipping cache export for empty result",
                                name="skipping cache export for empty result", completed=True)
            elif e.type == "registry":
                response.update(await registry.export(worker, session, blobs, dict(e.attrs), _insecure(e)))
            elif e.type == "local":
                response.update(await local.export(session, blobs, dict(e.attrs)))
            else:
                response.update(await s3.export(blobs, dict(e.attrs)))
        except (BuildkitpyError, BaseExceptionGroup) as raised:
            exc = first_error(raised)
            if not e.flag("ignore-error", False):
                progress.vertex(vertex, error=str(exc), completed=True)
                raise type(exc)(f"exporting cache ({e.type}): {exc}") from exc
            progress.warning(vertex, f"cache export ({e.type}) failed, ignored: {exc}")
        progress.vertex(vertex, completed=True)
    return response


class CacheRun:
    """The cache side of one Solve: ``from_request`` (validates, before any work), ``start`` (loads
    imports, hooks the build), ``export`` (after the build), ``close`` (always)."""

    def __init__(self, exports: list[CacheEntry], imports: list[CacheEntry]) -> None:
        self.exports = exports
        self.imports = imports
        self.job_cache: JobCache | None = None
        self._worker: Any = None
        self._session: Any = None
        self._cache_mounts: Any = None
        self._storage: CacheStorage | None = None  # the solver's own (results by key id)

    @classmethod
    def from_request(cls, cache: Any, frontend_attrs: Mapping[str, str]) -> CacheRun:
        exports = [CacheEntry(e.Type, dict(e.Attrs)) for e in cache.Exports]
        if cache.ExportRefDeprecated:
            exports.append(CacheEntry("registry", {"ref": cache.ExportRefDeprecated, "mode": "min",
                                                   **dict(cache.ExportAttrsDeprecated)}))
        value = frontend_attrs.get("build-arg:BUILDKIT_INLINE_CACHE", "")
        if value and comp.parse_bool(value, "BUILDKIT_INLINE_CACHE") and not any(e.type == "inline"
                                                                                 for e in exports):
            exports.append(CacheEntry("inline", {}))  # what buildx turns the build arg into
        validate_exports(exports)
        imports = import_entries(list(cache.Imports), frontend_attrs)
        known = {(e.type, e.attrs.get("ref")) for e in imports}
        for ref in cache.ImportRefsDeprecated:
            if ("registry", ref) not in known:
                imports.append(CacheEntry("registry", {"ref": ref}))
        return cls(exports, imports)

    @property
    def active(self) -> bool:
        return bool(self.exports or self.imports)

    @property
    def inline(self) -> bool:
        return any(e.type == "inline" for e in self.exports)

    async def start(self, worker: Any, session: Any, solver_job: Any, progress: Any,
                    cache_mounts: Any = None, storage: CacheStorage | None = None) -> None:
        from buildkitpy.remotecache import cachemounts

        self._worker, self._session = worker, session
        self._cache_mounts, self._storage = cache_mounts, storage
        imports = await load_imports(worker, session, self.imports, progress) if self.imports else []
        for imp in imports:
            if imp.mounts and cache_mounts is not None:
                for cache_id in await cachemounts.seed(worker, cache_mounts, imp.source, imp.ref, imp.mounts,
                                                       imp.name):
                    log.info("%s: seeded cache mount %s", imp.name, cache_id)
        self.job_cache = JobCache(worker, imports=imports, keep_results=bool(self.exports),
                                  inline=self.inline)
        solver_job.remote_cache = self.job_cache
        if hasattr(solver_job, "cache_layers"):  # the solver core's read-only layers, one per import
            from buildkitpy.remotecache.storage import RemoteCacheStorage

            solver_job.cache_layers = [RemoteCacheStorage(imp, self.job_cache, f"import-{n}:{imp.name}")
                                       for n, imp in enumerate(imports)]

    async def export(self, refs: list[Any], progress: Any) -> dict[str, str]:
        if self.job_cache is None or not self.exports:
            return {}
        return await run_exports(self._worker, self._session, self.job_cache, refs, self.exports, progress,
                                 self._cache_mounts, self._storage)

    async def close(self) -> None:
        if self.job_cache is not None:
            await self.job_cache.release()
