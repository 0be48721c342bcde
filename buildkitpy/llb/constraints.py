"""Per-op constraints and metadata (BuildKit's ``llb.Constraints`` / ``llb.OpMetadata``).

Every op builder takes the keyword options of :class:`OpOptions` (``custom_name=``,
``ignore_cache=``, ``progress_group=``, ...). ``marshal()`` takes the same options as defaults for
all ops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypedDict

from buildkitpy.api import ops_pb2

from .platform import Platform
from .sourcemap import SourceLocation


@dataclass(frozen=True)
class ProgressGroup:
    id: str
    name: str = ""
    weak: bool = False


class OpOptions(TypedDict, total=False):
    """Keyword options accepted by every op builder."""

    custom_name: str  # description["llb.customname"], the vertex name shown in progress
    description: Mapping[str, str]
    ignore_cache: bool
    export_cache: bool  # True/False forces exporting (or not) this vertex's cache
    progress_group: ProgressGroup
    platform: Platform
    worker_constraints: Sequence[str]
    locations: Sequence[SourceLocation]
    linux_resources: ops_pb2.LinuxResources


@dataclass
class Metadata:
    """Mutable working copy of ``pb.OpMetadata``."""

    ignore_cache: bool = False
    description: dict[str, str] = field(default_factory=dict)
    export_cache: bool | None = None
    caps: set[str] = field(default_factory=set)
    progress_group: ProgressGroup | None = None
    linux_resources: ops_pb2.LinuxResources | None = None

    def merged(self, other: Metadata) -> Metadata:
        """``other`` on top of ``self``, like client/llb's ``mergeMetadata``."""
        return Metadata(
            ignore_cache=self.ignore_cache or other.ignore_cache,
            description={**self.description, **other.description},
            export_cache=other.export_cache if other.export_cache is not None else self.export_cache,
            caps=self.caps | other.caps,
            progress_group=other.progress_group or self.progress_group,
            linux_resources=other.linux_resources or self.linux_resources,
        )

    def to_pb(self) -> ops_pb2.OpMetadata:
        md = ops_pb2.OpMetadata(ignore_cache=self.ignore_cache, description=self.description,
                                caps={c: True for c in self.caps})
        if self.export_cache is not None:
            md.export_cache.Value = self.export_cache
        if self.progress_group is not None:
            pg = self.progress_group
            md.progress_group.CopyFrom(ops_pb2.ProgressGroup(id=pg.id, name=pg.name, weak=pg.weak))
        if self.linux_resources is not None:
            md.linux_resources.CopyFrom(self.linux_resources)
        return md


@dataclass
class Constraints:
    platform: Platform | None = None
    worker_constraints: tuple[str, ...] = ()
    metadata: Metadata = field(default_factory=Metadata)
    locations: tuple[SourceLocation, ...] = ()

    @classmethod
    def from_options(cls, options: OpOptions) -> Constraints:
        unknown = set(options) - set(OpOptions.__annotations__)
        if unknown:
            raise TypeError(f"unknown op option(s): {', '.join(sorted(unknown))}")
        md = Metadata(
            ignore_cache=bool(options.get("ignore_cache", False)),
            description=dict(options.get("description", {})),
            export_cache=options.get("export_cache"),
            progress_group=options.get("progress_group"),
            linux_resources=options.get("linux_resources"),
        )
        if "custom_name" in options:
            md.description["llb.customname"] = options["custom_name"]
        platform = options.get("platform")
        return cls(platform=platform.normalized() if platform else None,
                   worker_constraints=tuple(options.get("worker_constraints", ())),
                   metadata=md, locations=tuple(options.get("locations", ())))

    def with_cap(self, *caps: str) -> Constraints:
        return replace(self, metadata=replace(self.metadata, caps=self.metadata.caps | set(caps)))


def marshal_constraints(base: Constraints, override: Constraints,
                        default: Platform) -> tuple[ops_pb2.Op, Metadata]:
    """An ``Op`` carrying platform + worker constraints, and the merged metadata (``MarshalConstraints``)."""
    platform = override.platform or base.platform or default
    op = ops_pb2.Op(platform=platform.to_pb())
    op.constraints.filter.extend(base.worker_constraints + override.worker_constraints)
    op.constraints.SetInParent()
    return op, base.metadata.merged(override.metadata)
