"""One build's view of remote caches: what the solver asks while it runs.

The scheduler tells a ``JobCache`` (``solver Job.remote_cache``) each vertex's cache map and
content checksums (``nodes_for``), asks it for results the local cache does not have (``load``: the
imported caches, read-only, queried by key and pulled layer by layer into snapshots), and tells it
each settled result (``settled``: kept, when the build exports cache, until the export is done).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from buildkitpy.errors import BuildkitpyError, SolveError, leaf_errors
from buildkitpy.image.platforms import default_platform
from buildkitpy.image.reference import Reference
from buildkitpy.image.registry import Descriptor
from buildkitpy.image.resolve import ResolvedImage
from buildkitpy.remotecache.cachemounts import used_ids
from buildkitpy.remotecache.chains import LayerDesc, RemoteIndex
from buildkitpy.remotecache.keys import KeyNode, vertex_nodes
from buildkitpy.snapshot.api import ImmutableSnapshot

log = logging.getLogger(__name__)


def first_error(raised: BaseException) -> BuildkitpyError:
    """The error to report for a failed import or export: the first real failure of a task group
    (several layers may fail at once); anything that is not a ``BuildkitpyError`` is re-raised."""
    if isinstance(raised, BuildkitpyError):
        return raised
    cancelled = anyio.get_cancelled_exc_class()
    leaves = [e for e in leaf_errors(raised) if not isinstance(e, cancelled)]  # type: ignore[arg-type]
    if leaves and isinstance(leaves[0], BuildkitpyError):
        return leaves[0]
    raise raised


class BlobSource(Protocol):
    """Where an imported cache's blobs come from (a registry client, a session content store...)."""

    async def fetch_blob(self, ref: Reference, desc: Descriptor, sink: Any, progress: Any = None) -> None:
        ...


@dataclass
class ImportedCache:
    index: RemoteIndex
    source: BlobSource
    ref: Reference  # names the cache in errors and registry requests
    name: str  # e.g. "registry 127.0.0.1:5000/cache:latest"
    ignore_error: bool = False
    mounts: list[Any] = field(default_factory=list)  # cachemounts.MountBlob carried by the cache


@dataclass
class JobCache:
    worker: Any
    imports: list[ImportedCache] = field(default_factory=list)
    keep_results: bool = False  # the build exports cache: hold every settled result until then
    inline: bool = False  # image exporters add the inline cache to the image config
    used_mounts: set[str] = field(default_factory=set)  # named cache mounts the build's execs use
    nodes: dict[str, list[KeyNode]] = field(default_factory=dict)  # vertex digest -> key per output
    results: dict[int, tuple[KeyNode, ImmutableSnapshot]] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)  # vertex digests whose result came from an import
    fetched: list[str] = field(default_factory=list)  # blob digests downloaded from imports

    async def image_config(self, config: bytes, layers: list[Any], blobs: list[Any]) -> bytes:
        """An image exporter's ``config`` with this build's inline cache when it exports one
        (else unchanged): the exporter asks its build's JobCache, never imports this package."""
        from buildkitpy.remotecache.inline import config_with_cache

        return await config_with_cache(self, config, layers, blobs)

    def nodes_for(self, vertex: Any, cache_map: Any, content: list[str | None] | None) -> list[KeyNode]:
        """The key nodes of ``vertex`` (its inputs must have been given theirs)."""
        inputs = []
        for inp in vertex.inputs:
            outs = self.nodes.get(inp.digest)
            if outs is None or inp.index >= len(outs):
                raise SolveError(f"internal error: no cache key for input {inp.digest} of {vertex.name}")
            inputs.append(outs[inp.index])
        nodes = vertex_nodes(cache_map.digest, cache_map.ephemeral or cache_map.always_run,
                             vertex.num_outputs, inputs, [d.selector for d in cache_map.deps], content)
        self.nodes[vertex.digest] = nodes
        self.used_mounts |= used_ids(vertex.op)
        return nodes

    def has(self, nodes: list[KeyNode]) -> bool:
        """Whether an import has results for every output (no blob is fetched: ``load`` does)."""
        return any(all(imp.index.result_chains(imp.index.match(n)) for n in nodes) for imp in self.imports)

    async def load(self, vertex: Any, nodes: list[KeyNode], progress: Any) -> list[ImmutableSnapshot] | None:
        """Every output of ``vertex`` from the first import that has them all, or None."""
        for imp in self.imports:
            chains = [imp.index.result_chains(imp.index.match(n)) for n in nodes]
            if not all(chains):
                continue
            try:
                snaps = await self._pull_all(imp, vertex, [c[0] for c in chains], progress)
            except (BuildkitpyError, BaseExceptionGroup) as raised:
                exc = first_error(raised)
                if imp.ignore_error:
                    log.warning("cache import from %s: %s (ignored: running the step)", imp.name, exc)
                    progress.warning(vertex.digest, f"cache import from {imp.name} failed, step runs: {exc}")
                    continue
                raise SolveError(f"importing cache from {imp.name} for {vertex.name}: {exc}") from exc
            self.loaded.append(vertex.digest)
            return snaps
        return None

    async def _pull_all(self, imp: ImportedCache, vertex: Any, chains: list[list[LayerDesc]],
                        progress: Any) -> list[ImmutableSnapshot]:
        puller = self.worker.image_puller
        out: list[ImmutableSnapshot] = []

        def report(status_id: str, current: int, total: int, done: bool) -> None:
            progress.status(vertex.digest, status_id, name=status_id, current=current, total=total,
                            completed=done)

        try:
            for chain in chains:
                image = ResolvedImage(
                    ref=imp.ref, digest="", manifest_digest="", manifest={}, config_digest="",
                    config_bytes=b"",
                    layers=[Descriptor(d.media_type, d.digest, d.size) for d in chain],
                    diff_ids=[d.diff_id for d in chain], platform=default_platform())
                result = await puller.pull(imp.source, image, report)  # type: ignore[arg-type]
                self.fetched.extend(result.fetched)
                if result.snapshot is None:
                    raise SolveError("imported cache result has no layers")
                out.append(result.snapshot)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for snap in out:
                    await anyio.to_thread.run_sync(snap.release)
            raise
        return out

    async def settled(self, nodes: list[KeyNode], snaps: list[ImmutableSnapshot]) -> None:
        """A vertex's results are known (borrowed handles: kept as clones when exporting)."""
        if not self.keep_results:
            return
        for node, snap in zip(nodes, snaps, strict=False):
            if snap is not None and id(node) not in self.results and not node.random:
                self.results[id(node)] = (node, await anyio.to_thread.run_sync(snap.clone))

    async def release(self) -> None:
        held = [snap for _, snap in self.results.values()]
        self.results.clear()
        for snap in held:
            await anyio.to_thread.run_sync(snap.release)
