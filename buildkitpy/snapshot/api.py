"""The snapshot contract shared by the solver, the executor and the exporters.

A snapshot is a filesystem tree stored as a chain of layers (overlayfs "diff" directories, lowest
first). Immutable snapshots are content that never changes once committed; mutable snapshots are a
writable upper directory on top of an immutable parent, used while an op runs and then committed.

Everything here is synchronous and thread-safe: the solver calls it through
``anyio.to_thread.run_sync`` because mounting and copying block.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class ImmutableSnapshot(Protocol):
    """A committed, read-only tree. Reference counted: ``release`` when done with a handle."""

    id: str
    parent_id: str | None

    def layers(self) -> list[Path]:
        """Diff directories of the whole chain, lowest first (overlay whiteouts inside)."""

    def layer_dirs(self) -> list[str]:
        """``layers()`` as strings (cheaper: provenance reads the chain of every settled step)."""

    def mount(self) -> AbstractContextManager[Path]:
        """A read-only view of the merged tree, valid until the context exits."""

    def size(self) -> int:
        """Bytes used by this snapshot's own layer."""

    def clone(self) -> ImmutableSnapshot:
        """A new handle on the same snapshot (takes a reference)."""

    def release(self) -> None:
        """Drop this handle's reference; the data stays while the cache or others hold it. Never
        blocks (it only counts: deleting is the garbage collector's job), so async code may call
        it directly."""


class MutableSnapshot(Protocol):
    """A writable tree on top of an optional immutable parent."""

    id: str

    def mount(self) -> AbstractContextManager[Path]:
        """A read-write view of the merged tree (overlay upper over the parent's layers)."""

    def commit(self) -> ImmutableSnapshot:
        """Freeze it; the mutable handle is unusable afterwards."""

    def release(self) -> None:
        """Discard without committing (removes the upper dir)."""


@dataclass(frozen=True)
class LinkLayer:
    """One layer of a ``LinkSource``: its id, its directory, and the inodes it shares with older
    layers, each mapped to the layer that first held it (``SnapshotManager.record_shared``)."""

    id: str
    path: Path
    shared: Mapping[int, str]


@dataclass(frozen=True)
class LinkSource:
    """Where the files of a snapshot's tree live (``SnapshotManager.link_source``): its layers,
    topmost first. A regular file of ``mount()`` at path ``p`` is the file ``layer.path / p`` of
    the topmost layer that has ``p``, when both report the same inode number."""

    layers: tuple[LinkLayer, ...]


class SnapshotManager(Protocol):
    def new_mutable(self, parent: ImmutableSnapshot | None, description: str = "") -> MutableSnapshot:
        ...

    def get(self, snapshot_id: str) -> ImmutableSnapshot:
        """A new handle on a committed snapshot; KeyError if unknown."""

    def merge(self, inputs: list[ImmutableSnapshot], description: str = "") -> ImmutableSnapshot:
        """A snapshot whose layers are the inputs' layers stacked in order (MergeOp)."""

    def diff(self, lower: ImmutableSnapshot | None, upper: ImmutableSnapshot,
             description: str = "") -> ImmutableSnapshot:
        """A snapshot holding only the changes from lower to upper (DiffOp)."""

    def link_source(self, snapshot: ImmutableSnapshot) -> LinkSource | None:
        """The layers holding the files of ``snapshot.mount()``, which a copy may hard-link into
        a ``link_target``, or None."""

    def link_target(self, mutable: MutableSnapshot) -> bool:
        """Whether ``mutable.mount()`` is its own layer's directory (no lower layers), so a file
        of a ``link_source`` can be hard-linked into it."""

    def record_shared(self, mutable: MutableSnapshot, shared: Mapping[int, str]) -> None:
        """Before ``commit``: the inodes hard-linked into ``mutable`` from other layers, each
        mapped to the layer that first held it. Merges read it to keep one inode out of two
        paths of one tree."""

    def walk_ids(self) -> Iterator[str]:
        """Every committed snapshot id (for disk usage and prune)."""

    def lower_layers(self, layer: Path) -> list[Path] | None:
        """The layers a layer directory (from ``ImmutableSnapshot.layers``) was made on, lowest
        first, or None when they are unknown (copy mode, computed diffs)."""

    def usage(self) -> list[Any]:
        """One record per snapshot: id, parent, mutable, in_use, size, description, created,
        last_used (``buildkitpy.snapshot.manager.SnapshotUsage``)."""

    def delete(self, snapshot_id: str) -> None:
        """Remove a committed snapshot; an error if it is held, mounted or built upon."""

    def prune(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Delete every committed snapshot not in ``keep`` that nothing holds or needs; returns
        the removed ids."""

    def close(self) -> None:
        """Unmount everything and close the metadata database."""
