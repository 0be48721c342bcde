"""Dockerfile → LLB: the converter behind the ``dockerfile.v0`` frontend.

A pure function over data: the Dockerfile bytes, the frontend options, the ``.dockerignore``
patterns, named contexts and a callback resolving base images to (digest, config). It produces the
same LLB definition BuildKit's own frontend does (same ops, names, caps and source locations) plus
the image config with its history.

Flow (as in BuildKit): parse → one ``_StageState`` per stage (and per unnamed ``--from`` image) →
resolve base images of reachable stages → ONBUILD triggers → dispatch the instructions of reachable
stages in file order → create the build-context source last, once every path the build reads from it
is known (its ``local.followpaths``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.llb import Platform
from buildkitpy.llb.vertex import MarshalContext, MarshalledOp, Output, Vertex

from . import image_config as ic
from .convert_dispatch import DispatchContext, StageState
from .convert_named import NamedContext
from .convert_opts import ConvertOptions
from .errors import DockerfileError
from .lint import Linter
from .parser import DockerfileParseError

# (normalized image ref, platform) -> (digest or "", config JSON)
ImageResolver = Callable[[str, Platform], Awaitable[tuple[str, bytes]]]


class ConvertError(DockerfileError):
    """A Dockerfile that cannot be converted; ``lines`` are the 1-based Dockerfile lines at fault."""

    def __init__(self, message: str, lines: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.lines = lines


@dataclass
class PlatformResult:
    platform: Platform
    definition: ops_pb2.Definition
    image_config: bytes
    base_config: bytes | None
    state: llb.State | None  # None from a remembered conversion (``convert_memo``: an earlier build's)
    target: StageState | None = None  # the target stage as converted (for frontend.outline)
    # What an SBOM scan mounts besides the result (``BUILDKIT_SBOM_SCAN_CONTEXT``/``_STAGE``), and
    # whether it must ignore the cache.
    sbom_extras: dict[str, llb.State] = field(default_factory=dict)
    sbom_ignore_cache: bool = False


@dataclass
class ConvertResult:
    results: list[PlatformResult]
    multi_platform: bool

    @property
    def single(self) -> PlatformResult:
        return self.results[0]


async def convert(
    dockerfile: bytes,
    *,
    opts: Mapping[str, str],
    resolve_image: ImageResolver | None = None,
    context_ignore: list[str] | None = None,
    session_id: str = "",
    named_contexts: Mapping[str, NamedContext] | None = None,
    llb_caps: set[str] | frozenset[str] | None = None,
    dockerfile_source: llb.State | None = None,
    filename: str = "Dockerfile",
    build_platform: Platform | None = None,
    linter: Linter | None = None,
    all_stages: bool = False,
    main_context: llb.State | None = None,
) -> ConvertResult:
    """Convert ``dockerfile`` for every target platform in ``opts["platform"]`` (the build platform when
    none is given). ``dockerfile_source`` is the state the file was read from (goes into the
    definition's source map). Raises :class:`ConvertError` naming the line at fault.

    ``main_context`` is a remote build context (``context=<git or http URL>``); without it the
    context is the client's ``context`` directory.

    ``linter`` runs the build checks made while converting (for the first platform only, as
    BuildKit); ``all_stages`` converts unreachable stages too (``frontend.lint`` without a target)."""
    options = ConvertOptions.parse(opts)
    build_platform = build_platform or llb.default_platform()
    targets: list[llb.Platform | None] = [*options.platforms] or [None]
    multi = len(targets) > 1 or options.multi_platform
    source_map = llb.SourceMap(filename, dockerfile, "Dockerfile", state=dockerfile_source)
    results = []
    for i, target in enumerate(targets):
        results.append(
            await _convert_one(
                dockerfile,
                options,
                target,
                build_platform,
                multi,
                source_map,
                resolve_image,
                context_ignore,
                session_id,
                dict(named_contexts or {}),
                llb_caps,
                linter if i == 0 else None,
                all_stages,
                main_context,
            )
        )
    return ConvertResult(results, multi)


async def _convert_one(
    dockerfile: bytes,
    options: ConvertOptions,
    target: Platform | None,
    build_platform: Platform,
    multi: bool,
    source_map: llb.SourceMap,
    resolve_image: ImageResolver | None,
    context_ignore: list[str] | None,
    session_id: str,
    named_contexts: dict[str, NamedContext],
    llb_caps: set[str] | frozenset[str] | None,
    linter: Linter | None = None,
    all_stages: bool = False,
    main_context: llb.State | None = None,
) -> PlatformResult:
    # without a remote context: the client's context, whose vertex is known once its paths are
    pending = Output(_PendingContext(), 0) if main_context is None else None
    context_output = pending if main_context is None else main_context.output
    dctx = DispatchContext(
        options=options,
        target_platform=target or build_platform,
        implicit_target=target is None,
        build_platforms=[build_platform],
        multi_platform=multi,
        source_map=source_map,
        resolve_image=resolve_image,
        session_id=session_id,
        named_contexts=named_contexts,
        llb_caps=llb_caps,
        build_context=llb.State.from_output(context_output),
        linter=linter,
        all_stages=all_stages,
        context_ignore=context_ignore,
    )
    try:
        target_state = await dctx.run(dockerfile)
    except ConvertError:
        raise
    except DockerfileParseError as e:
        raise ConvertError(str(e), (e.line, getattr(e, "end_line", None) or e.line)) from None
    except (DockerfileError, llb.LLBError) as e:  # anything else is a bug, not the Dockerfile's fault
        lines = getattr(e, "dockerfile_lines", None)
        raise ConvertError(_located(str(e), lines), lines) from None

    if pending is not None:  # the build context: a session local restricted to the paths read from it
        paths = _follow_paths(dctx.context_paths)
        context = llb.local(
            "context",
            session_id=session_id or None,
            exclude_patterns=context_ignore or None,
            shared_key_hint="context",
            follow_paths=paths or None,
            custom_name="[internal] load build context",
        )
        assert context.output is not None  # a source's state always has its output
        pending.vertex = context.output.vertex

    img = target_state.image
    if options.labels:
        img["config"].setdefault("Labels", {}).update(options.labels)
    platform = dctx.target_platform
    if not dctx.implicit_target:
        same = platform.os == img.get("os") and platform.architecture == img.get("architecture")
        img["os"], img["architecture"] = platform.os, platform.architecture
        if platform.variant or not same:
            img["variant"] = platform.variant
        if platform.os_version or not same:
            img["os.version"] = platform.os_version
        if platform.os_features:
            img["os.features"] = list(platform.os_features)

    try:
        definition = llb.marshal(target_state.state, platform=platform, caps=llb_caps)
    except llb.LLBError as e:
        lines = _lines_of(e.locations, source_map)
        raise ConvertError(_located(str(e), lines), lines) from None
    base = ic.to_json(target_state.base_img) if target_state.base_img is not None else None
    extras, ignore_cache = dctx.sbom_targets(target_state)
    return PlatformResult(platform, definition, ic.to_json(img), base, target_state.state, target_state,
                          extras, ignore_cache)


def _lines_of(locations: tuple[llb.SourceLocation, ...], source_map: llb.SourceMap) -> tuple[int, int] | None:
    """The Dockerfile lines of an op's source locations (the first range in the Dockerfile)."""
    for loc in locations:
        if loc.source_map is source_map and loc.ranges:
            return (loc.ranges[0].start.line, loc.ranges[-1].end.line)
    return None


def _located(message: str, lines: tuple[int, int] | None) -> str:
    if lines is None or "line" in message.split(":", 1)[0]:
        return message
    return f"Dockerfile:{lines[0]}: {message}"


def _follow_paths(paths: set[str]) -> list[str]:
    """``normalizeContextPaths``: relative, sorted; nothing when the whole context ("/") is read."""
    if "/" in paths:
        return []
    return sorted(p.lstrip("/") or "." for p in paths)


class _PendingContext(Vertex):
    """Stands in for the build-context source until the paths the build reads from it are known."""

    def inputs(self) -> list[Output]:
        return []

    def _marshal(self, ctx: MarshalContext) -> MarshalledOp:
        raise llb.LLBError("the build context was used before it was created")


__all__ = [
    "ConvertError",
    "ConvertResult",
    "ImageResolver",
    "NamedContext",
    "PlatformResult",
    "StageState",
    "convert",
]
