"""The ``dockerfile.v0`` frontend: read the Dockerfile (and ``.dockerignore``) through the LLBBridge
API, convert it, solve the result and return it with its image config.

It is a gateway client and nothing else: :func:`build` takes a
:class:`~buildkitpy.gateway.client.FrontendClient`, so the same code runs inside the daemon
(:func:`register`) and standalone in a frontend image (``python -m buildkitpy.frontend.dockerfile``,
LLBBridge over stdio). A ``# syntax=`` directive (or ``BUILDKIT_SYNTAX``) forwards the build to that
frontend image through ``gateway.v0``.
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Any

from buildkitpy import llb
from buildkitpy.api import ops_pb2
from buildkitpy.attest import sbom
from buildkitpy.errors import (
    BuildkitpyError,
    InvalidArgument,
    NotFound,
    SolveError,
    SourceLocation,
    Unimplemented,
)
from buildkitpy.frontend.dockerignore import read_ignore_file
from buildkitpy.gateway.bridge import FrontendResult

from . import convert_memo
from . import lint as checks
from . import subrequests as subreq
from .convert import ConvertError, NamedContext
from .convert_named import SUPPORTED_KINDS, input_image_config
from .convert_opts import ConvertOptions, OptionError
from .convert_thread import check_size, convert_off_loop, off_loop_unless_small
from .errors import DockerfileError
from .remote_context import detect as detect_remote_context

if TYPE_CHECKING:
    from buildkitpy.gateway.bridge import GatewayBridge
    from buildkitpy.gateway.client import FrontendClient

FRONTEND_NAME = "dockerfile.v0"
DOCKERFILE_LOCAL = "dockerfile"
CONTEXT_LOCAL = "context"
DOCKERIGNORE = ".dockerignore"


def register() -> None:
    """Make ``dockerfile.v0`` available to ``LLBBridge.Solve`` / ``Control.Solve``."""
    from buildkitpy.gateway import bridge

    bridge.FRONTENDS[FRONTEND_NAME] = build_in_process


async def build_in_process(bridge: GatewayBridge, opts: dict[str, str],
                           inputs: dict[str, ops_pb2.Definition]) -> FrontendResult:
    from buildkitpy.gateway.client import InProcessClient

    return await build(InProcessClient(bridge, opts, inputs))


async def _solve_ref(client: FrontendClient, state: llb.State) -> Any:
    result = await client.solve(definition=llb.marshal(state, caps=client.llb_caps))
    return result.ref


async def _read_optional(client: FrontendClient, ref: Any, path: str) -> bytes | None:
    if ref is None:
        return None
    try:
        return await client.read_file(ref.id, path)
    except BuildkitpyError:  # as BuildKit's dockerui: any failure means "not there" (real
        return None          # buildkitd reports a missing file with code Unknown)


async def _read_ignore(client: FrontendClient, session_id: str, local: str, shared_key: str,
                       name: str) -> list[str]:
    st = llb.local(
        local,
        session_id=session_id or None,
        follow_paths=[DOCKERIGNORE],
        shared_key_hint=shared_key,
        differ="none",
        custom_name=name,
    )
    data = await _read_optional(client, await _solve_ref(client, st), DOCKERIGNORE)
    return read_ignore_file(data) if data else []


async def _named_context(
    client: FrontendClient, session_id: str, name: str, spec: str, opts: dict[str, str],
    inputs: dict[str, Any]) -> NamedContext:
    """What ``context:NAME=spec`` needs before conversion: a local directory's ``.dockerignore``,
    an input's definition and image config (``input-metadata:KEY``)."""
    nc = NamedContext(spec)
    kind, sep, value = spec.partition(":")
    if not sep:
        raise InvalidArgument(f"invalid context specifier {spec} for {name}")
    if nc.kind == "local":
        progress = f"[context {name}] load {DOCKERIGNORE}"
        key = f"context:{name}-{DOCKERIGNORE}"
        nc.excludes = await _read_ignore(client, session_id, value, key, progress)
    elif nc.kind == "input":
        if value not in inputs:
            raise InvalidArgument(f"invalid input {value} for {name}")
        nc.definition = inputs[value]
        metadata = opts.get("input-metadata:" + value)
        if metadata is not None:
            try:
                nc.image_config = input_image_config(metadata)
            except DockerfileError as e:
                raise InvalidArgument(str(e)) from None
    elif nc.kind == "oci-layout":
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


def _syntax(opts: dict[str, str], dockerfile: bytes) -> tuple[str, str]:
    """The frontend image a build asks for and its command line (``BUILDKIT_SYNTAX`` first, then
    the ``# syntax=`` directive), or ("", "") to build here. A build that already is the forwarded
    one (``cmdline`` set) never forwards again."""
    from .parser import DockerfileParseError, parse

    if "cmdline" in opts:
        return "", ""
    cmdline = opts.get("build-arg:BUILDKIT_SYNTAX", "").strip()
    if not cmdline:
        try:
            cmdline = (parse(dockerfile).directive("syntax") or "").strip()
        except DockerfileParseError:
            return "", ""  # the converter reports parse errors with their line
    return (cmdline.split()[0], cmdline) if cmdline else ("", "")


async def _forward(client: FrontendClient, image: str, cmdline: str, vertex: str) -> FrontendResult | None:
    """Build with the frontend image ``image`` (through ``gateway.v0``). For the Dockerfile
    frontend's own images, a pull that fails (an offline machine) falls back to this frontend,
    with a warning; None means: build here."""
    try:
        repo = llb.reference.parse_normalized(image).name
    except InvalidArgument as e:
        raise InvalidArgument(f"invalid syntax directive {cmdline!r}: {e}") from None
    try:
        await client.resolve_image_config(image)
    except BuildkitpyError as e:
        if repo not in BUILTIN_SYNTAX_REPOS:
            raise InvalidArgument(f"failed to resolve frontend image {image} "
                                  f"(syntax {cmdline!r}): {e}") from None
        await client.warn(vertex, f"syntax {image}: the frontend image could not be pulled ({e}); "
                                  "building with buildkitpy's built-in Dockerfile frontend")
        return None
    inputs = await client.inputs() if "frontend.inputs" in client.gateway_caps else {}
    return await client.solve(frontend="gateway.v0",
                              frontend_opt={**client.opts, "source": image, "cmdline": cmdline},
                              frontend_inputs=inputs)


# what this frontend implements of what a build may ask for (``frontend.caps``)
ENABLED_CAPS = ("moby.buildkit.frontend.inputs", subreq.SUBREQUESTS_CAP,
                "moby.buildkit.frontend.contexts", "moby.buildkit.frontend.gitquerystring")


def _check_caps(wanted: str) -> tuple[bool, BuildkitpyError | None]:
    """BuildKit's ``validateCaps``: an unknown cap fails the build unless marked ``+forward`` (then
    only when the build is not forwarded to a ``# syntax=`` frontend)."""
    forward, error = False, None
    for cap in wanted.split(",") if wanted else ():
        name = cap.split("+", 1)[0]
        if name not in ENABLED_CAPS:
            error = Unimplemented(f"unsupported frontend capability {name}")
            if "+forward" not in cap:
                return False, error
            forward = True
    return forward, error


def _source_info(filename: str, dockerfile: bytes, source: llb.State) -> ops_pb2.SourceInfo:
    return ops_pb2.SourceInfo(filename=filename, data=dockerfile, language="Dockerfile",
                              definition=llb.marshal(source))


async def _send_warnings(client: FrontendClient, linter: checks.Linter, vertex: str,
                         info: ops_pb2.SourceInfo) -> None:
    """The build's lint warnings as progress warnings, worded as BuildKit's (``Rule: text (line N)``)."""
    for w in linter.warnings:
        short = f"{w.rule.name}: {w.detail}"
        ranges = []
        if w.lines is not None:
            short += f" (line {w.lines[0]})"
            ranges = [ops_pb2.Range(start=ops_pb2.Position(line=n), end=ops_pb2.Position(line=n))
                      for n in range(w.lines[0], max(w.lines) + 1)]
        await client.warn(vertex, short, [w.rule.description.encode()], level=1, url=w.rule.url,
                          info=info, ranges=ranges)


async def _parse_tree_checks(dockerfile: bytes, linter: checks.Linter) -> None:
    """The checks on the parse tree, parsed on a worker thread as the conversion is (unless small):
    a huge Dockerfile (2 MiB of continuation lines parse in seconds) must not stall the event loop."""
    from .parser import DockerfileParseError, parse

    if not dockerfile:
        return
    try:
        ast = await off_loop_unless_small(len(dockerfile), parse, dockerfile)
    except DockerfileParseError:
        return  # the conversion reports it
    checks.check_parse_tree(ast, linter)


async def build(client: FrontendClient) -> FrontendResult:
    opts = client.opts
    forward_caps, caps_error = _check_caps(opts.get("frontend.caps", ""))
    if caps_error is not None and not forward_caps:
        raise caps_error
    if "build-arg:BUILDKIT_DOCKERFILE_CHECK" in opts:
        try:
            checks.linter_config(opts, b"")
        except checks.LintConfigError as e:
            raise InvalidArgument(str(e)) from None
    try:
        options = ConvertOptions.parse(opts)
    except OptionError as e:
        raise InvalidArgument(str(e)) from None
    sbom_request = sbom.sbom_request(opts)
    session_id = client.session_id
    filename = options.filename
    remote = await detect_remote_context(client, opts, filename)
    dockerfile_local = opts.get("dockerfilekey", "")  # a local Dockerfile even with a remote context
    if remote is not None and not dockerfile_local:
        filename = remote.filename
        source = remote.dockerfile
    else:
        dockerfile_local = dockerfile_local or DOCKERFILE_LOCAL
        follow = [filename, filename + ".dockerignore"]
        if posixpath.basename(filename) == "Dockerfile":
            follow.append(posixpath.join(posixpath.dirname(filename), "dockerfile"))
        source = llb.local(
            dockerfile_local,
            session_id=session_id or None,
            follow_paths=follow,
            shared_key_hint=dockerfile_local,
            differ="none",
            custom_name=f"[internal] load build definition from {filename}",
        )
    ref = await _solve_ref(client, source)
    dockerfile = await _read_optional(client, ref, filename)
    if dockerfile is None and posixpath.basename(filename) == "Dockerfile":
        lower = posixpath.join(posixpath.dirname(filename), "dockerfile")  # moby/moby#10858
        dockerfile = await _read_optional(client, ref, lower)
    if dockerfile is None:
        raise NotFound(f"failed to read dockerfile: open {filename}: no such file or directory")

    too_big = check_size(len(dockerfile), filename)
    if too_big is not None:
        raise InvalidArgument(too_big)
    image, cmdline = await off_loop_unless_small(len(dockerfile), _syntax, opts, dockerfile)
    if image:
        forwarded = await _forward(client, image, cmdline, _result_vertex(ref))
        if forwarded is not None:
            return forwarded
    if caps_error is not None:
        raise caps_error
    request = opts.get(subreq.REQUEST_ID)
    if request == subreq.DESCRIBE:
        return FrontendResult(metadata=subreq.describe_result())
    if request == subreq.TARGETS:
        return FrontendResult(metadata=_targets(filename, dockerfile))
    if request is not None and request not in (subreq.LINT, subreq.OUTLINE):
        raise Unimplemented(f"unsupported request {request}")
    inputs = await client.inputs() if options.named_contexts else {}

    ignore_data = None
    if remote is None:
        ignore_data = await _read_optional(client, ref, filename + ".dockerignore")
    if remote is not None:
        excludes: list[str] = []  # no .dockerignore applies to a remote context (BuildKit's dockerui)
    elif ignore_data is not None:
        excludes = read_ignore_file(ignore_data)
    else:
        excludes = await _read_ignore(
            client,
            session_id,
            CONTEXT_LOCAL,
            f"{CONTEXT_LOCAL}-{DOCKERIGNORE}",
            f"[internal] load {DOCKERIGNORE}",
        )
    named: dict[str, NamedContext] = {}
    for name, spec in options.named_contexts.items():
        named[name] = await _named_context(client, session_id, name, spec, opts, inputs)

    multi = len(options.platforms) > 1 or options.multi_platform
    resolve_mode = "" if options.image_resolve_mode == "default" else options.image_resolve_mode

    resolved: dict[tuple[str, str], tuple[str, bytes]] = {}

    async def resolver(ref: str, platform: llb.Platform) -> tuple[str, bytes]:
        """``FROM``'s image config, shown as BuildKit's frontend names it; asked once per image and
        platform in this build, as its stages resolve the same name alike (graph-500's 25 ``FROM
        busybox`` were 25 registry requests in a row; BuildKit's concurrent resolutions of them
        collapse into one)."""
        key = (ref, str(platform))
        got = resolved.get(key)
        if got is None:
            prefix = f"[{platform} internal]" if multi and platform is not None else "[internal]"
            got = resolved[key] = await client.resolve_image_config(
                ref, platform, resolve_mode=resolve_mode, log_name=f"{prefix} load metadata for {ref}")
        return got
    vertex = _result_vertex(ref)
    try:
        lint_config = checks.linter_config(opts, dockerfile)
    except checks.LintConfigError as e:
        if request == subreq.LINT:
            results = subreq.LintResults(subreq.LintSource(filename, dockerfile, llb.marshal(source)))
            results.error = str(e)
            return FrontendResult(metadata=results.to_result())
        raise InvalidArgument(str(e)) from None
    linter = checks.Linter(lint_config)
    convert_args: dict[str, Any] = dict(
        opts=opts,
        resolve_image=resolver,
        context_ignore=excludes,
        session_id=session_id,
        named_contexts=named,
        llb_caps=client.llb_caps,
        build_platform=client.build_platforms[0] if client.build_platforms else None,
        dockerfile_source=source,
        filename=filename,
        main_context=remote.context if remote is not None else None,
    )
    if request == subreq.LINT:
        return FrontendResult(metadata=await _lint(dockerfile, filename, source, options.target, linter,
                                                   convert_args))
    if request == subreq.OUTLINE:
        return FrontendResult(metadata=await _outline(client, dockerfile, filename, source, vertex, linter,
                                                      convert_args))
    await _parse_tree_checks(dockerfile, linter)
    scanner = await _sbom_scanner(client, sbom_request, resolve_mode)
    # a remembered conversion has no states of this build: not when a scan needs them
    memo_key = convert_memo.memo_key(dockerfile, **convert_args) if scanner is None else None
    converted = None
    if memo_key is not None and (entry := convert_memo.recall(memo_key)) is not None \
            and await convert_memo.answers_match(entry, resolver):
        # rewrites the ops of a conversion of this Dockerfile: work in proportion to it
        converted = await off_loop_unless_small(len(dockerfile), convert_memo.rebound, entry, session_id)
    try:
        if converted is None:
            calls: list[Any] = []
            warned = len(linter.warnings)
            converted = await convert_off_loop(
                dockerfile,
                **dict(convert_args, resolve_image=convert_memo.recording(resolver, calls)),
                linter=linter,
            )
            if memo_key is not None and len(linter.warnings) == warned:
                convert_memo.remember(memo_key, session_id, calls, converted)
    except ConvertError as e:
        sources = []
        if e.lines:
            sources = [SourceLocation(filename, dockerfile, [(e.lines[0], 0, e.lines[1], 0)])]
        raise SolveError(str(e), sources=sources) from None
    finally:
        if linter.warnings:
            await _send_warnings(client, linter, vertex, _source_info(filename, dockerfile, source))

    if not converted.multi_platform:
        one = converted.single
        metadata = {"containerimage.config": one.image_config}
        if one.base_config is not None:
            metadata["containerimage.base.config"] = one.base_config
        res = await client.solve(definition=one.definition)
        result = FrontendResult(ref=res.ref, metadata=metadata)
        if scanner is not None:
            await _scan(client, scanner, one, result)
        return result

    refs: dict[str, Any] = {}
    metadata = {}
    platforms = []
    for one in converted.results:
        key = str(one.platform)
        res = await client.solve(definition=one.definition)
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
    result = FrontendResult(refs=refs, metadata=metadata)
    if scanner is not None:
        for one in converted.results:
            await _scan(client, scanner, one, result)
    return result


async def _sbom_scanner(client: FrontendClient, request: sbom.SBOMRequest | None,
                        resolve_mode: str) -> sbom.Scanner | None:
    """The SBOM scanner image of ``attest:sbom``, resolved for the build platform (BuildKit runs
    it there whatever the target platforms)."""
    if request is None:
        return None
    platform = client.build_platforms[0] if client.build_platforms else llb.default_platform()
    try:
        _, config = await client.resolve_image_config(request.generator, platform, resolve_mode=resolve_mode)
    except BuildkitpyError as e:
        raise type(e)(f"failed to resolve sbom scanner image {request.generator}: {e}") from None
    return sbom.scanner_from_config(request, config, platform)


async def _scan(client: FrontendClient, scanner: sbom.Scanner, one: Any, result: FrontendResult) -> None:
    """Attach the scan of one platform's result (and its extras) as a bundle attestation; the
    scan runs when the result is exported."""
    key = str(one.platform)
    assert one.state is not None  # (a conversion is remembered only for builds without a scan)
    state = scanner.scan(key, one.state, one.sbom_extras, ignore_cache=one.sbom_ignore_cache)
    res = await client.solve(definition=llb.marshal(state, platform=one.platform, caps=client.llb_caps))
    result.attestations.setdefault(key, []).append(sbom.bundle_attestation(res.ref))


def _targets(filename: str, dockerfile: bytes) -> dict[str, bytes]:
    from .parser import DockerfileParseError

    try:
        return subreq.targets_result(dockerfile)
    except DockerfileParseError as e:  # as BuildKit: a subrequest's error carries no source excerpt
        raise SolveError(str(e)) from None


async def _outline(client: FrontendClient, dockerfile: bytes, filename: str, source: llb.State, vertex: str,
                   linter: checks.Linter, convert_args: dict[str, Any]) -> dict[str, bytes]:
    """``frontend.outline``: convert the target without building and list what it takes from outside
    (the build's warnings are sent as for a build, as BuildKit does)."""
    from .outline import collect

    await _parse_tree_checks(dockerfile, linter)
    try:
        converted = await convert_off_loop(dockerfile, **convert_args, linter=linter)
    except ConvertError as e:  # as BuildKit: a subrequest's error carries no source excerpt
        raise SolveError(str(e)) from None
    finally:
        if linter.warnings:
            await _send_warnings(client, linter, vertex, _source_info(filename, dockerfile, source))
    target = converted.single.target
    assert target is not None
    args, secrets, ssh = collect(target)
    return subreq.outline_result(dockerfile, target.stage.name, target.stage.doc_comment, args, secrets, ssh)


async def _lint(dockerfile: bytes, filename: str, source: llb.State, target: str, linter: checks.Linter,
                convert_args: dict[str, Any]) -> dict[str, bytes]:
    """``frontend.lint``: convert without building (every stage when no target is asked for) and
    report the warnings, and the error that would fail the build."""
    results = subreq.LintResults(subreq.LintSource(filename, dockerfile, llb.marshal(source)))
    await _parse_tree_checks(dockerfile, linter)
    try:
        await convert_off_loop(dockerfile, **convert_args, linter=linter, all_stages=not target)
    except ConvertError as e:
        results.error = str(e)
        results.error_lines = e.lines
    results.warnings = list(linter.warnings)
    return results.to_result()
