"""The ``dockerfile.v0`` frontend: read the Dockerfile (and ``.dockerignore``) through the gateway
bridge, convert it, solve the result and return it with its image config.

Register it with :func:`register` (the daemon calls it; importing this module changes nothing).
"""

from __future__ import annotations

import functools
import json
import posixpath
from typing import Any

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.caps import EXEC_LLB_CAPS, LLB_CAPS
from buildkitpy.errors import (
    BuildkitpyError,
    InvalidArgument,
    NotFound,
    SolveError,
    SourceLocation,
    Unimplemented,
)
from buildkitpy.frontend.dockerignore import read_ignore_file

from .convert import ConvertError, NamedContext, convert
from .convert_named import SUPPORTED_KINDS, input_image_config
from .convert_opts import ConvertOptions, OptionError

FRONTEND_NAME = "dockerfile.v0"
DOCKERFILE_LOCAL = "dockerfile"
CONTEXT_LOCAL = "context"
DOCKERIGNORE = ".dockerignore"


def register() -> None:
    """Make ``dockerfile.v0`` available to ``LLBBridge.Solve`` / ``Control.Solve``."""
    from buildkitpy.gateway import bridge

    bridge.FRONTENDS[FRONTEND_NAME] = build


def _daemon_caps() -> frozenset[str]:
    return frozenset(LLB_CAPS) | frozenset(EXEC_LLB_CAPS)


async def _solve_ref(bridge: Any, state: llb.State) -> Any:
    result = await bridge.solve(definition=llb.marshal(state, caps=_daemon_caps()))
    return result.ref


async def _read_optional(bridge: Any, ref: Any, path: str) -> bytes | None:
    if ref is None:
        return None
    try:
        return await bridge.read_file(ref.id, path)
    except (NotFound, InvalidArgument):
        return None


async def _read_ignore(bridge: Any, session_id: str, local: str, shared_key: str, name: str) -> list[str]:
    st = llb.local(
        local,
        session_id=session_id or None,
        follow_paths=[DOCKERIGNORE],
        shared_key_hint=shared_key,
        differ="none",
        custom_name=name,
    )
    data = await _read_optional(bridge, await _solve_ref(bridge, st), DOCKERIGNORE)
    return read_ignore_file(data) if data else []


async def _named_context(
    bridge: Any, session_id: str, name: str, spec: str, opts: dict[str, str], inputs: dict[str, Any]
) -> NamedContext:
    """What ``context:NAME=spec`` needs before conversion: a local directory's ``.dockerignore``,
    an input's definition and image config (``input-metadata:KEY``)."""
    nc = NamedContext(spec)
    kind, sep, value = spec.partition(":")
    if not sep:
        raise InvalidArgument(f"invalid context specifier {spec} for {name}")
    if nc.kind == "local":
        progress = f"[context {name}] load {DOCKERIGNORE}"
        key = f"context:{name}-{DOCKERIGNORE}"
        nc.excludes = await _read_ignore(bridge, session_id, value, key, progress)
    elif nc.kind == "input":
        if value not in inputs:
            raise InvalidArgument(f"invalid input {value} for {name}")
        nc.definition = inputs[value]
        metadata = opts.get("input-metadata:" + value)
        if metadata is not None:
            try:
                nc.image_config = input_image_config(metadata)
            except ValueError as e:
                raise InvalidArgument(str(e)) from None
    elif nc.kind in ("oci-layout", "git", "http", "https"):
        raise Unimplemented(f"{nc.kind} named contexts are not supported yet (context {name}={spec})")
    elif nc.kind not in SUPPORTED_KINDS:
        raise InvalidArgument(f"unsupported context source {kind} for {name}")
    return nc


# Frontend images we can stand in for: the Dockerfile frontend's own releases.
BUILTIN_SYNTAX_REPOS = ("docker.io/docker/dockerfile", "docker.io/docker/dockerfile-upstream")


def _result_vertex(ref: Any) -> str:
    """The digest of the vertex a solved ref stands for (the terminal op's input)."""
    ops = getattr(ref.definition, "def") if ref is not None else []
    return ops_pb2.Op.FromString(ops[-1]).inputs[0].digest if ops else ""


def _check_syntax(bridge: Any, opts: dict[str, str], dockerfile: bytes, vertex: str) -> None:
    """A ``# syntax=`` directive (or ``build-arg:BUILDKIT_SYNTAX``) names a frontend image to run
    instead of this one. We cannot run frontend images yet, so: for the Dockerfile frontend's own
    images build with this built-in frontend and say so; for any other image fail clearly rather
    than silently building with the wrong frontend."""
    from .parser import DockerfileParseError, parse

    syntax = opts.get("build-arg:BUILDKIT_SYNTAX", "")
    if not syntax:
        try:
            syntax = parse(dockerfile).directive("syntax") or ""
        except DockerfileParseError:
            return  # the converter reports parse errors with their line
    image = syntax.split()[0] if syntax.strip() else ""
    if not image or opts.get("cmdline"):
        return
    try:
        repo = llb.reference.parse_normalized(image).name
    except InvalidArgument as e:
        raise InvalidArgument(f"invalid syntax directive {syntax!r}: {e}") from None
    if repo in BUILTIN_SYNTAX_REPOS:
        bridge.job.progress.warning(
            vertex, f"syntax {image}: frontend images are not supported yet; "
                "building with buildkitpy's built-in Dockerfile frontend")
        return
    raise Unimplemented(f"frontend image {image} (from the syntax directive) is not supported yet: "
                        "buildkitpy cannot run frontend images; remove the directive to use the built-in "
                        "Dockerfile frontend")


async def build(bridge: Any, opts: dict[str, str], inputs: dict[str, ops_pb2.Definition]) -> Any:
    from buildkitpy.gateway.bridge import FrontendResult

    try:
        options = ConvertOptions.parse(opts)
    except OptionError as e:
        raise InvalidArgument(str(e)) from None
    session_id = bridge.job.session_id or ""
    filename = options.filename
    follow = [filename, filename + ".dockerignore"]
    if posixpath.basename(filename) == "Dockerfile":
        follow.append(posixpath.join(posixpath.dirname(filename), "dockerfile"))
    source = llb.local(
        DOCKERFILE_LOCAL,
        session_id=session_id or None,
        follow_paths=follow,
        shared_key_hint=DOCKERFILE_LOCAL,
        differ="none",
        custom_name=f"[internal] load build definition from {filename}",
    )
    ref = await _solve_ref(bridge, source)
    dockerfile = await _read_optional(bridge, ref, filename)
    if dockerfile is None and posixpath.basename(filename) == "Dockerfile":
        dockerfile = await _read_optional(bridge, ref, follow[-1])
    if dockerfile is None:
        raise NotFound(f"failed to read dockerfile: open {filename}: no such file or directory")

    _check_syntax(bridge, opts, dockerfile, _result_vertex(ref))

    ignore_data = await _read_optional(bridge, ref, filename + ".dockerignore")
    if ignore_data is not None:
        excludes = read_ignore_file(ignore_data)
    else:
        excludes = await _read_ignore(
            bridge,
            session_id,
            CONTEXT_LOCAL,
            f"{CONTEXT_LOCAL}-{DOCKERIGNORE}",
            f"[internal] load {DOCKERIGNORE}",
        )
    named: dict[str, NamedContext] = {}
    for name, spec in options.named_contexts.items():
        named[name] = await _named_context(bridge, session_id, name, spec, opts, inputs)

    resolver = getattr(bridge, "resolve_image_config", None)
    if resolver is not None and options.image_resolve_mode != "default":  # as BuildKit's ResolveMode
        resolver = functools.partial(resolver, resolve_mode=options.image_resolve_mode)
    try:
        converted = await convert(
            dockerfile,
            opts=opts,
            resolve_image=resolver,
            context_ignore=excludes,
            session_id=session_id,
            named_contexts=named,
            llb_caps=_daemon_caps(),
            dockerfile_source=source,
            filename=filename,
        )
    except ConvertError as e:
        sources = []
        if e.lines:
            sources = [SourceLocation(filename, dockerfile, [(e.lines[0], 0, e.lines[1], 0)])]
        raise SolveError(str(e), sources=sources) from None
    except BuildkitpyError:
        raise

    if not converted.multi_platform:
        one = converted.single
        metadata = {"containerimage.config": one.image_config}
        if one.base_config is not None:
            metadata["containerimage.base.config"] = one.base_config
        res = await bridge.solve(definition=one.definition)
        return FrontendResult(ref=res.ref, metadata=metadata)

    refs: dict[str, Any] = {}
    metadata = {}
    platforms = []
    for one in converted.results:
        key = str(one.platform)
        res = await bridge.solve(definition=one.definition)
        refs[key] = res.ref
        metadata[f"containerimage.config/{key}"] = one.image_config
        if one.base_config is not None:
            metadata[f"containerimage.base.config/{key}"] = one.base_config
        p = one.platform
        platforms.append(
            {
                "id": key,
                "platform": {
                    "architecture": p.architecture,
                    "os": p.os,
                    **({"variant": p.variant} if p.variant else {}),
                },
            }
        )
    metadata["refs.platforms"] = json.dumps({"platforms": platforms}, separators=(",", ":")).encode()
    return FrontendResult(refs=refs, metadata=metadata)
