"""The worker: the bundle of local resources a build runs on (one per daemon, like BuildKit's OCI
worker). The solver and the exporters reach snapshots, the executor, client sessions, the image
puller (content store and chain index), the network sources' records and the exported layer blobs
through it; it opens the stores under its root when first asked for and closes them in ``close``."""

from __future__ import annotations

import platform as _platform
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from buildkitpy.fsutil.walk import WalkMemo
from buildkitpy.snapshot.api import SnapshotManager

if TYPE_CHECKING:
    from buildkitpy.executor.runc import RuncExecutor
    from buildkitpy.image.layerblobs import BlobCache
    from buildkitpy.image.pull import ImagePuller
    from buildkitpy.session.manager import SessionManager
    from buildkitpy.snapshot.sourcerecords import SourceRecords

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}


def host_platform() -> dict[str, str]:
    """The host as an OCI platform (``os``, ``architecture`` and, for arm, ``variant``)."""
    arch = _ARCH.get(_platform.machine(), _platform.machine())
    plat = {"os": "linux", "architecture": arch}
    if arch == "arm":
        plat["variant"] = "v7"
    elif arch == "arm64":
        plat["variant"] = ""
    return plat


class WorkerConfig(Protocol):
    """What the worker's users read of the daemon's configuration: its ``[registry."host"]`` settings
    by host (a ``buildkitpy.daemon.config.Config``; the daemon package imports this module)."""

    @property
    def registries(self) -> Mapping[str, Any]: ...


@dataclass
class Worker:
    id: str
    root: Path
    snapshots: SnapshotManager
    sessions: SessionManager | None  # None: a worker for builds without client sessions (tests)
    executor: RuncExecutor | None = None  # None: runc is not installed (no exec ops)
    max_parallelism: int = 0  # vertices executing at once; 0: no limit
    labels: dict[str, str] = field(default_factory=dict)
    platforms: list[dict[str, str]] = field(default_factory=lambda: [host_platform()])
    insecure_entitlements: frozenset[str] = frozenset()
    config: WorkerConfig | None = None  # the daemon's configuration (registry settings, ...)
    # Content-store digests other parts still point at, kept by content GC (build history results).
    content_roots: list[Callable[[], set[str]]] = field(default_factory=list)
    # Walks of immutable snapshots for local exports (they cannot change: walked once).
    walks: WalkMemo = field(default_factory=WalkMemo, init=False, repr=False)
    # The stores under ``root`` the worker opens when first asked for (see the properties below).
    _image_puller: ImagePuller | None = field(default=None, init=False, repr=False)
    _source_records: SourceRecords | None = field(default=None, init=False, repr=False)
    _blob_cache: BlobCache | None = field(default=None, init=False, repr=False)
    _open_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def image_puller(self) -> ImagePuller:
        """The worker's puller: its content store (``<root>/content``), chain index and the
        downloads and unpacks in flight, shared by every pull."""
        with self._open_lock:
            if self._image_puller is None:
                from buildkitpy.content.store import ContentStore
                from buildkitpy.image.pull import ImagePuller

                root = Path(self.root).absolute()
                self._image_puller = ImagePuller(root, ContentStore(root), self.snapshots)
            return self._image_puller

    @property
    def source_records(self) -> SourceRecords:
        """What the network sources remember about the snapshots they made (``<root>/sources.db``)."""
        with self._open_lock:
            if self._source_records is None:
                from buildkitpy.snapshot.sourcerecords import SourceRecords

                root = Path(self.root).absolute()
                root.mkdir(parents=True, exist_ok=True)
                self._source_records = SourceRecords(root / "sources.db")
            return self._source_records

    @property
    def blob_cache(self) -> BlobCache:
        """The exported layers' blobs by (layer, variant) (``<root>/exporter/layers.db``)."""
        with self._open_lock:
            if self._blob_cache is None:
                from buildkitpy.image.layerblobs import BlobCache

                self._blob_cache = BlobCache(Path(self.root).absolute() / "exporter" / "layers.db")
            return self._blob_cache

    def close(self) -> None:
        with self._open_lock:
            puller, records, blobs = self._image_puller, self._source_records, self._blob_cache
            self._image_puller = self._source_records = self._blob_cache = None
        if puller is not None:
            puller.close()
            puller.store.close()
        if records is not None:
            records.close()
        if blobs is not None:
            blobs.close()
        self.snapshots.close()


def open_worker(cfg: Any, worker_id: str, sessions: SessionManager) -> Worker:
    """The daemon's worker over ``cfg.root``: overlay snapshots, runc when installed."""
    import shutil

    from buildkitpy.snapshot.manager import OverlaySnapshotManager

    platforms = worker_platforms(cfg.platforms, Path(cfg.root) / "tmp")
    executor = None
    if shutil.which("runc"):
        from buildkitpy.executor.runc import RuncExecutor

        # First: it kills a crashed daemon's containers, which still use their rootfs mounts.
        executor = RuncExecutor(Path(cfg.root) / "executor")
    from buildkitpy.executor import secretdirs

    secretdirs.remove_leftovers(Path(cfg.root))  # the secrets of steps a crashed daemon ran
    snapshots = OverlaySnapshotManager(Path(cfg.root))  # unmounts and drops leftover mounts
    # The manager's merge/diff take its own ImmutableRef, narrower than the protocol's snapshots.
    return Worker(id=worker_id, root=Path(cfg.root), snapshots=snapshots,  # type: ignore[arg-type]
                  sessions=sessions, executor=executor, platforms=platforms,
                  max_parallelism=cfg.max_parallelism,
                  insecure_entitlements=frozenset(cfg.insecure_entitlements), config=cfg)


def worker_platforms(configured: list[str], scratch: Path) -> list[dict[str, str]]:
    """The platforms the worker advertises: ``[worker.oci] platforms`` when given, else the host's
    and every platform a probe shows this machine runs (binfmt_misc emulation included)."""
    from buildkitpy.executor.emulation import supported_platforms
    from buildkitpy.llb.errors import LLBError
    from buildkitpy.llb.platform import Platform

    host = host_platform()
    names = configured or supported_platforms(str(Platform(host["os"], host["architecture"],
                                                           host.get("variant", "")).normalized()), scratch)
    out: list[dict[str, str]] = []
    for name in names:
        try:
            p = Platform.parse(name)
        except LLBError as exc:
            raise SystemExit(f"buildkitpyd: [worker.oci] platforms: {exc}") from None
        entry = {"os": p.os, "architecture": p.architecture}
        if p.variant:
            entry["variant"] = p.variant
        if entry not in out:
            out.append(entry)
    return out
